"""Lean attention capture on a Stable Diffusion U-Net (ldm for SD1/SD2, sgm for SDXL).

The WebUIs replace ``CrossAttention.forward`` with fused kernels (sdp, xformers, split ...) that never form
attention probabilities, so the probabilities are recomputed here from each module's own ``to_q``/``to_k``,
in a forward hook that fires whatever forward is installed. Only what the method uses is computed:

* only the transformer blocks at latent/4 and latent/8 of the actual latent of each call;
* only the batch rows whose maps are needed (the cond rows; the uncond rows only for the foreground when
  that is taken from them, and then reduced to two channels first);
* heads averaged at once, in head chunks under a memory budget;
* streaming: a block's self map is kept only until its cross map arrives, then both are folded into a
  per-row running average (``MaskAccumulator``), so memory does not grow with layers or steps.

Which U-Net rows belong to which image is explicit (``Cond``/``Uncond`` roles), because a step may span
several U-Net calls, AND prompts give several cond rows per image and the uncond rows may be missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import masks as M

CHUNK_TOKENS = 77  # CLIP context chunk: A1111/Forge concatenate 77-token chunks, each with its own SOT
_PROB_BUDGET_BYTES = 256 * 2**20  # head-chunk size for recomputing probabilities


@dataclass(frozen=True)
class Cond:
    """A cond row: image ``image``'s ``index``-th sub-prompt (``AND``)."""

    image: int
    index: int = 0


@dataclass(frozen=True)
class Uncond:
    """The uncond (negative prompt) row of image ``image``."""

    image: int


Role = Cond | Uncond


@dataclass
class AttentionLayer:
    """A transformer block to capture: its self- and cross-attention modules and its downsampling factor."""

    name: str
    attn1: torch.nn.Module
    attn2: torch.nn.Module
    factor: int


def _has_class(module: torch.nn.Module, name: str) -> bool:
    return any(type(m).__name__ == name for m in module.modules())


def find_attention_layers(unet: torch.nn.Module, factors: Sequence[int] = (4, 8)) -> list[AttentionLayer]:
    """Transformer blocks of an ldm/sgm ``UNetModel`` at the given downsampling factors.

    The factor is read off the architecture (a ``Downsample`` doubles it, an ``Upsample`` halves it), not
    off tensor sizes, so a U-Net whose internal sizes another extension changes (Kohya deep shrink) shows
    up as a shape mismatch instead of silently wrong maps. SD1/SD2: five latent/4 blocks and the latent/8
    middle block; SDXL: its latent/4 blocks only (it has no latent/8 attention).
    """
    found: list[AttentionLayer] = []

    def collect(block: torch.nn.Module, prefix: str, factor: int) -> None:
        if factor not in factors:
            return
        for name, m in block.named_modules():
            if hasattr(m, "attn1") and hasattr(m, "attn2"):
                found.append(AttentionLayer(f"{prefix}.{name}", m.attn1, m.attn2, factor))

    factor = 1
    for i, block in enumerate(unet.input_blocks):
        collect(block, f"input_blocks.{i}", factor)
        if _has_class(block, "Downsample"):
            factor *= 2
    collect(unet.middle_block, "middle_block", factor)
    for i, block in enumerate(unet.output_blocks):
        collect(block, f"output_blocks.{i}", factor)
        if _has_class(block, "Upsample"):
            factor //= 2
    return found


@torch.no_grad()
def attention_probs(module: torch.nn.Module, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """Head-averaged ``softmax(q k^T * scale)`` of an attention module, ``(B, N, K)`` float32.

    Recomputed from ``module.to_q``/``module.to_k`` exactly as ldm's ``CrossAttention.forward`` does. The
    projections run as the U-Net runs them (under the WebUI's autocast, in half precision); the product and
    softmax in float32 with autocast off, all heads at once, or in head chunks when that would exceed a fixed
    memory budget (very large latents).
    """
    context = x if context is None else context
    heads = module.heads
    q = module.to_q(x)
    k = module.to_k(context)
    b, n, inner = q.shape
    d = inner // heads
    scale = getattr(module, "scale", d**-0.5)
    q = q.view(b, n, heads, d).permute(0, 2, 1, 3)  # (b, heads, n, d)
    k = k.view(b, k.shape[1], heads, d).permute(0, 2, 3, 1)  # (b, heads, d, m)
    with torch.autocast(q.device.type, enabled=False):
        q, k = q.float(), k.float()
        step = max(1, min(heads, _PROB_BUDGET_BYTES // max(b * n * k.shape[3] * 4, 1)))
        if step >= heads:
            return torch.matmul(q, k).mul_(scale).softmax(-1).mean(1)
        total = None
        for h0 in range(0, heads, step):
            p = torch.matmul(q[:, h0 : h0 + step], k[:, h0 : h0 + step]).mul_(scale).softmax(-1).sum(1)
            total = p if total is None else total.add_(p)
        return total / heads


def select_rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``x[rows]``, as a view when the rows are contiguous (the usual case: no index tensor copied to the
    device, so no implicit host-device synchronisation inside the U-Net forward)."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return x[rows[0] : rows[0] + len(rows)]
    return x[torch.tensor(rows, device=x.device)]


class AttentionCapture:
    """Hooks on a U-Net that turn each denoising step's attention into per-row region masks.

    Use as a context manager (``with capture.attach(unet):``) so that every hook is removed when the block
    exits, also on an exception. Per step: ``plan_step(roles)`` with the role of every U-Net row of this
    step in call order, then run the U-Net (one or several calls), then ``masks(latent_size)``.
    """

    def __init__(self, refine: str = "official", foreground: str = "cond") -> None:
        if refine not in M.REFINE_MODES:
            raise ValueError(f"refine must be one of {M.REFINE_MODES}, got {refine!r}")
        if foreground not in ("cond", "uncond"):
            raise ValueError(f"foreground must be 'cond' or 'uncond', got {foreground!r}")
        self.refine = refine
        self.foreground = foreground
        self.layers: list[AttentionLayer] = []
        self._handles: list = []
        self._plan: list[Role] = []
        self._cursor = 0
        self._call: _CallMaps | None = None
        self._latent: tuple[int, int] | None = None
        self._device = "cpu"
        self._pending: dict[int, torch.Tensor] = {}
        self._calls: list[_CallMaps] = []  # this step's accumulators, one per U-Net call
        self.error: str | None = None  # why this step's maps are unusable, if they are
        # optional ``observer(layer, roles, self_attn, cross_attn)``: sees every captured layer's head-averaged
        # maps for the needed rows (tests, debugging, map galleries)
        self.observer = None

    # -- hooks -------------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @contextmanager
    def attach(self, unet: torch.nn.Module) -> Iterator[AttentionCapture]:
        """Attach hooks to ``unet`` for the duration of the block."""
        self.detach()
        try:
            self.layers = find_attention_layers(unet)
            self._handles.append(unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True))
            for i, layer in enumerate(self.layers):
                self._handles.append(layer.attn1.register_forward_hook(self._self_hook(i), with_kwargs=True))
                self._handles.append(layer.attn2.register_forward_hook(self._cross_hook(i), with_kwargs=True))
            yield self
        finally:
            self.detach()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()
        self._plan = []

    # -- per step -----------------------------------------------------------------------------------------
    def plan_step(self, roles: Sequence[Role | None]) -> None:
        """Start a step whose U-Net rows, across all its calls in order, have these roles (``None`` = a row
        whose maps are not needed). An empty plan captures nothing."""
        self._plan = list(roles)
        self._cursor = 0
        self._calls = []
        self._pending.clear()
        self.error = None

    def plan_call(self, roles: Sequence[Role | None]) -> None:
        """Give the roles of the next U-Net call explicitly (for backends that know them per call)."""
        self._plan = self._plan[: self._cursor] + list(roles) + self._plan[self._cursor :]

    def _on_unet_call(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        n = x.shape[0]
        roles = self._plan[self._cursor : self._cursor + n]
        self._cursor += n
        roles += [None] * (n - len(roles))
        self._latent = tuple(x.shape[-2:])
        self._device = x.device.type
        self._pending.clear()
        call = _CallMaps(roles, self.foreground == "uncond")
        self._call = call if call.rows else None
        if self._call is not None:
            self._calls.append(call)

    def _check(self, layer: AttentionLayer, n: int) -> tuple[int, int] | None:
        h, w = M.grid_size(self._latent, layer.factor)
        if n != h * w:
            self.error = (
                f"attention map of {n} positions in {layer.name} does not fit a {h}x{w} grid "
                f"for a {self._latent[0]}x{self._latent[1]} latent"
            )
            return None
        return h, w

    def _guarded(self, fn):
        """Run a hook body; any failure marks the step unusable (plain CFG) instead of breaking the U-Net."""

        def hook(module, args, kwargs, output):
            if self.error:
                return
            try:
                fn(module, args, kwargs)
            except Exception as e:  # noqa: BLE001 - a capture problem must never fail the user's image
                self.error = f"attention capture failed ({type(e).__name__}: {e})"
                self._pending.clear()

        return hook

    def _self_hook(self, i: int):
        layer = self.layers[i]

        def hook(module, args, kwargs):
            call = self._call
            if call is None:
                return
            x = args[0]
            if self._check(layer, x.shape[1]) is not None:
                self._pending[i] = attention_probs(module, select_rows(x, call.rows))

        return self._guarded(hook)

    def _cross_hook(self, i: int):
        layer = self.layers[i]

        def hook(module, args, kwargs):
            self_attn = self._pending.pop(i, None)
            call = self._call
            if self_attn is None or call is None:
                return
            x = args[0]
            context = kwargs.get("context", args[1] if len(args) > 1 else None)
            hw = self._check(layer, x.shape[1])
            if hw is None:
                return
            context = None if context is None else select_rows(context, call.rows)
            cross = attention_probs(module, select_rows(x, call.rows), context)
            if self.observer is not None:
                self.observer(layer, [call.roles[r] for r in call.rows], self_attn, cross)
            with torch.no_grad(), torch.autocast(cross.device.type, enabled=False):
                call.fold(self_attn, cross, hw, M.grid_size(self._latent), self.refine)

        return self._guarded(hook)

    # -- results ------------------------------------------------------------------------------------------
    def masks(self, latent_size: Sequence[int] | None = None) -> dict[Cond, tuple[torch.Tensor, torch.Tensor]]:
        """``{Cond(i, j): (regions (1, T, H, W), foreground (1, 1, H, W))}`` for every cond row captured in
        full this step. The foreground comes from the image's uncond row when so configured, else (or when
        that row is missing this step) from the cond row itself. Empty if the step's maps are unusable."""
        if self.error or self._latent is None:
            return {}
        size = tuple(latent_size) if latent_size is not None else self._latent
        expected = len(self.layers)
        tokens: dict[Cond, torch.Tensor] = {}
        pairs: dict[Role, torch.Tensor] = {}
        with torch.autocast(self._device, enabled=False):
            for call in self._calls:
                call.results(expected, tokens, pairs)
            out: dict[Cond, tuple[torch.Tensor, torch.Tensor]] = {}
            for role, tok in tokens.items():
                source = pairs.get(Uncond(role.image)) if self.foreground == "uncond" else None
                pair = pairs[role] if source is None else source
                out[role] = (M.regions_from_tokens(tok, size), M.foreground_from_pair(pair, size))
        return out


class _CallMaps:
    """The rows of one U-Net call whose maps are needed, and their running sums (batched over rows)."""

    def __init__(self, roles: list[Role | None], uncond_needed: bool):
        self.roles = roles
        self.full_roles = [r for r in roles if isinstance(r, Cond)]
        self.pair_roles = [r for r in roles if isinstance(r, Uncond)] if uncond_needed else []
        wanted = set(self.full_roles) | set(self.pair_roles)
        self.rows = [i for i, r in enumerate(roles) if r in wanted]
        picked = [roles[i] for i in self.rows]
        self.full_idx = [j for j, r in enumerate(picked) if isinstance(r, Cond)]
        self.pair_idx = [j for j, r in enumerate(picked) if isinstance(r, Uncond)]
        self.full = M.MaskAccumulator()
        self.pair = M.MaskAccumulator()

    def fold(self, self_attn, cross, hw, grid, refine) -> None:
        tokens = cross.shape[-1]
        pair_w = M.pair_weights(tokens, M.chunk_starts(tokens, CHUNK_TOKENS), cross.device)
        if self.full_idx:
            s, c = select_rows(self_attn, self.full_idx), select_rows(cross, self.full_idx)
            self.full.add_tokens(M.layer_maps(s, c, hw, grid, refine), pair_w)
        if self.pair_idx:
            # uncond rows only feed the foreground: reduce to [background, rest] before the linear layer work
            s, c = select_rows(self_attn, self.pair_idx), select_rows(cross, self.pair_idx)
            self.pair.add_pair(M.layer_maps(s, M.reduce_to_pair(c, pair_w), hw, grid, refine))

    def results(self, expected_layers: int, tokens: dict, pairs: dict) -> None:
        """Add this call's complete rows to ``tokens`` (cond rows) and ``pairs`` (every row)."""
        if self.full_roles and self.full.layers == expected_layers:
            tok, pair = self.full.tokens(), self.full.pair()
            for k, role in enumerate(self.full_roles):
                tokens[role] = tok[k : k + 1]
                pairs[role] = pair[k : k + 1]
        if self.pair_roles and self.pair.layers == expected_layers:
            pair = self.pair.pair()
            for k, role in enumerate(self.pair_roles):
                pairs[role] = pair[k : k + 1]
