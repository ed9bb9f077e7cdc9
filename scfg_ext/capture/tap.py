"""The q and k of a diffusion transformer, taken where its attention function gets them.

A diffusion transformer of Anima's type (Forge Neo ``backend/nn/anima.py``: per block a self-attention over the
image tokens and a cross-attention to the text) applies q/k norms and, in the self-attention, a rotary embedding
after its projections, then calls its module's ``attention_function``. There the module global is replaced for
the duration by one that hands q and k to the stash, exactly as the attention gets them, and calls the original;
a forward pre-hook on each attention module says whose call it is. The joint-attention transformers (NextDiT,
MMDiT) are read the same way."""

from __future__ import annotations

import functools
import sys
import types

import torch

ATTENTION_FUNCTION = "attention_function"  # the name Forge Neo's DiT modules call (backend.attention's)


class AttentionTap:
    """Hands ``on_qk(key, q, k)`` the q and k of every call an attention module makes to its Python module's
    ``attention_function`` (Forge Neo's DiTs: ``backend.attention``'s, bound at import), as the attention gets
    them (after q/k norms and rotary embeddings; ``(B, H, L, D)``, a view where the call passes ``(B, L, H * D)``
    without ``skip_reshape``), then runs the function unchanged. ``watch(attention, key)``
    arms the wrapper while that module runs (forward pre- and post-hooks); ``remove()`` takes the hooks off and
    puts each module's function back. The capture (no grad) and the miniature's grounding losses (with grad)
    share it."""

    def __init__(self, on_qk):
        self.on_qk = on_qk
        self._armed = None
        self._handles: list = []
        self._functions: list[tuple[types.ModuleType, object]] = []  # (module, the wrapper installed in it)

    def watch(self, attention: torch.nn.Module, key, module: types.ModuleType | None = None) -> None:
        module = module or sys.modules[type(attention).__module__]
        if not any(m is module for m, _ in self._functions):
            inner = getattr(module, ATTENTION_FUNCTION)

            @functools.wraps(inner)
            def attention_function(q, k, v, heads, *args, **kwargs):
                armed, self._armed = self._armed, None
                if armed is not None and q.dim() == 3 and not kwargs.get("skip_reshape"):
                    self.on_qk(armed, q.unflatten(-1, (heads, -1)).transpose(1, 2),
                               k.unflatten(-1, (heads, -1)).transpose(1, 2))
                elif armed is not None:
                    self.on_qk(armed, q, k)
                return inner(q, k, v, heads, *args, **kwargs)

            setattr(module, ATTENTION_FUNCTION, attention_function)
            self._functions.append((module, attention_function))
        self._handles.append(attention.register_forward_pre_hook(lambda m, args: setattr(self, "_armed", key)))
        self._handles.append(attention.register_forward_hook(lambda m, args, out: setattr(self, "_armed", None)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, wrapper in self._functions:
            if getattr(module, ATTENTION_FUNCTION, None) is wrapper:
                setattr(module, ATTENTION_FUNCTION, wrapper.__wrapped__)
        self._functions.clear()
        self._armed = None
