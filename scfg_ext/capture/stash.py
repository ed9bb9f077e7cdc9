"""The stash: every captured layer's four projections (self- and cross-attention q and k) of the current U-Net
call, kept by reference until the layer is complete. A U-Net's come from forward hooks on its projections
(``_stash_hook``); a diffusion transformer's from the attention tap (``_on_qk``), a joint attention's split into
its image-image and image-text parts (``_stash_joint``)."""

from __future__ import annotations

from .. import masks as M

_SLOTS = 4  # attn1.to_q, attn1.to_k, attn2.to_q, attn2.to_k
JOINT = -1  # the armed slot of a joint attention, whose one call fills all four


class _Stash:
    """``AttentionCapture``'s stash (its state: ``layers``, ``_call``, ``_latent``, ``_text``, ``_open``,
    ``error``); a complete layer goes on to ``_complete``."""

    def _on_qk(self, armed: tuple[int, int], q, k) -> None:
        if self._call is None or self.error:
            return
        try:
            if armed[1] == JOINT:
                self._stash_joint(armed[0], q, k)
            else:
                self._stash(armed[0], armed[1], q)
                self._stash(armed[0], armed[1] + 1, k)
        except Exception as e:  # noqa: BLE001 - a capture problem must never fail the user's image
            self._fail(f"attention capture failed ({type(e).__name__}: {e})")

    def _stash_joint(self, i: int, q, k) -> None:
        """A joint attention's q and k ``(B, H, text + image, D)``: the image queries against the image keys are
        its self-attention, against the text keys its cross-attention (views: no copy)."""
        layer = self.layers[i]
        h, w = M.grid_size(self._latent, layer.factor)
        n, text = h * w, self._text
        # the image tokens: right after the text (then Qwen-Image's reference latents), or last (then Z-Image's pads)
        start = text if layer.image_after_text else q.shape[2] - -(-n // layer.joint) * layer.joint
        if q.dim() != 4 or text is None or not 0 < text <= start or q.shape[2] < start + n:
            self._fail(f"the joint attention of {layer.name} does not hold a {text}-token text before a {h}x{w} "
                       f"image (q {tuple(q.shape)})")
            return
        image_q = q[:, :, start:start + n]
        for slot, t in enumerate((image_q, k[:, :, start:start + n], image_q, k[:, :, :text])):
            self._stash(i, slot, t)

    def _stash_hook(self, i: int, slot: int):
        def hook(module, args, output):
            self._stash(i, slot, output)

        return hook

    def _stash(self, i: int, slot: int, output) -> None:
        if self._call is None or self.error:
            return
        try:
            slots = self._open.get(i)
            if slots is None:
                slots = self._open[i] = [None] * _SLOTS
            if slots[slot] is not None:
                if self.layers[i].function is not None:
                    name = "self-attention" if slot < 2 else "cross-attention"
                else:
                    name = ("attn1.to_q", "attn1.to_k", "attn2.to_q", "attn2.to_k")[slot]
                self._fail(f"{self.layers[i].name}.{name} ran more than once in one U-Net call")
                return
            slots[slot] = output
            if all(s is not None for s in slots):
                del self._open[i]
                self._complete(i, slots)
        except Exception as e:  # noqa: BLE001 - a capture problem must never fail the user's image
            self._fail(f"attention capture failed ({type(e).__name__}: {e})")
