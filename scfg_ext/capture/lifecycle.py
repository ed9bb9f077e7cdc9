"""The capture's lifecycle: attaching the hooks for a generation, planning each step's rows, a U-Net call's start
and end, and the step's masks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .. import masks as M
from .backgrounds import BACKGROUNDS, TILED, tile_backgrounds
from .calls import Cond, Role, Uncond, _CallMaps
from .families import find_attention_layers
from .layer import AttentionLayer
from .processing import _Group, _Processing
from .stash import JOINT, _Stash
from .tap import AttentionTap

MIN_BUDGET_BYTES = 64 * 2**20  # memory budget floor for the stash and its processing
BUDGET_FRACTION = 0.04  # default budget: this fraction of the U-Net's parameter bytes (or the floor)


class AttentionCapture(_Stash, _Processing):
    """Hooks on a U-Net that turn each denoising step's attention into per-row region masks.

    Use as a context manager (``with capture.attach(unet):``) so that every hook is removed when the block
    exits, also on an exception. Per step: ``plan_step(roles)`` with the role of every U-Net row of this
    step in call order, then run the U-Net (one or several calls), then ``masks(latent_size)``.

    ``memory_budget``: bytes the stash and its processing may hold at once (default: ``BUDGET_FRACTION`` of
    the U-Net's parameter bytes, at least ``MIN_BUDGET_BYTES``); above it the layers are processed in chunks.

    ``background``: the tokens whose maps make the background of the foreground split (``BACKGROUNDS``; default
    ``"start"`` on a U-Net, the family's own on a diffusion transformer: ``AttentionLayer.background``).
    ``blocks``: the indices of the transformer blocks a diffusion transformer is read at (default all). ``pool``:
    read a diffusion transformer's maps at the segmentation grid (latent/4: every other query row and column of a
    patch-2 token grid, key columns summed per grid cell), which costs a quarter of the full token grid's
    self-attention scores; default (None): when that grid is at least ``MIN_POOLED_SIDE`` cells on its shorter
    side.
    """

    def __init__(self, refine: str = "official", foreground: str = "cond", memory_budget: int | None = None,
                 background: str | None = None, blocks: Sequence[int] | None = None, pool: bool | None = None
                 ) -> None:
        if refine not in M.REFINE_MODES:
            raise ValueError(f"refine must be one of {M.REFINE_MODES}, got {refine!r}")
        if foreground not in ("cond", "uncond"):
            raise ValueError(f"foreground must be 'cond' or 'uncond', got {foreground!r}")
        if background is not None and background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {tuple(BACKGROUNDS)}, got {background!r}")
        self.refine = refine
        self.foreground = foreground
        self.background_choice = background
        self.background = background or "start"
        self.blocks = None if blocks is None else set(blocks)
        self.pool = pool
        self._tap = AttentionTap(self._on_qk)  # a DiT's q and k, where its attention function gets them
        self.memory_budget = memory_budget
        self.budget = memory_budget or MIN_BUDGET_BYTES
        self.layers: list[AttentionLayer] = []
        self._handles: list = []
        self._plan: list[Role] = []
        self._cursor = 0
        self._call: _CallMaps | None = None
        self._latent: tuple[int, int] | None = None
        self._text: int | None = None  # the context length of the current call (a joint attention's text part)
        self._joint = False  # the layers are joint attentions (NextDiT, MMDiT)
        self._device = "cpu"
        self._open: dict[int, list] = {}  # layer index -> its four projections seen so far in this call
        self._pending: dict[tuple, list] = {}  # group key -> completed layers waiting to be processed
        self._groups: dict[tuple, _Group] = {}  # group key -> its shapes (this call)
        self._per_factor: dict[int, int] = {}  # captured blocks per level
        self._left: dict[int, int] = {}  # blocks per level not yet complete in this call
        self._calls: list[_CallMaps] = []  # this step's accumulators, one per U-Net call
        self._call_latents: set[tuple[int, int]] = set()  # latent sizes of this step's captured calls
        self.error: str | None = None  # why this step's maps are unusable, if they are
        # optional ``observer(layer, roles, self_attn, cross_attn)``: sees every captured layer's head-averaged
        # maps for the needed rows (tests, debugging, map galleries)
        self.observer = None
        # optional ``on_process(layers)``: called with the number of layers each time a chunk is processed
        self.on_process = None

    # -- hooks -------------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @contextmanager
    def attach(self, unet: torch.nn.Module) -> Iterator[AttentionCapture]:
        """Attach hooks to ``unet`` for the duration of the block: a pre- and a post-hook on the U-Net, and a
        forward hook on ``to_q``/``to_k`` of both attention modules of every captured block."""
        self.detach()
        try:
            self.layers = find_attention_layers(unet)
            dit = any(layer.function is not None for layer in self.layers)
            if dit and self.blocks is not None:
                self.layers = [layer for i, layer in enumerate(self.layers) if i in self.blocks]
            self._joint = any(layer.joint for layer in self.layers)
            self.background = self.background_choice or (self.layers[0].background if self.layers else "start")
            self._per_factor = {}
            for layer in self.layers:
                self._per_factor[layer.factor] = self._per_factor.get(layer.factor, 0) + 1
            if self.memory_budget is None:
                weights = sum(p.numel() * p.element_size() for p in unet.parameters())
                self.budget = max(MIN_BUDGET_BYTES, int(BUDGET_FRACTION * weights))
            self._handles.append(unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True))
            self._handles.append(unet.register_forward_hook(self._on_unet_done))
            for i, layer in enumerate(self.layers):
                if layer.function is not None:
                    for slot, attn in ((JOINT, layer.attn1),) if layer.joint else ((0, layer.attn1), (2, layer.attn2)):
                        self._tap.watch(attn, (i, slot), layer.function)
                    continue
                for slot, proj in enumerate((layer.attn1.to_q, layer.attn1.to_k, layer.attn2.to_q, layer.attn2.to_k)):
                    self._handles.append(proj.register_forward_hook(self._stash_hook(i, slot)))
            yield self
        finally:
            self.detach()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._tap.remove()
        self._drop()
        self._plan = []

    def _drop(self) -> None:
        self._open.clear()
        self._pending.clear()
        self._groups.clear()
        self._left.clear()

    # -- per step -----------------------------------------------------------------------------------------
    def plan_step(self, roles: Sequence[Role | None]) -> None:
        """Start a step whose U-Net rows, across all its calls in order, have these roles (``None`` = a row
        whose maps are not needed). An empty plan captures nothing."""
        self._plan = list(roles)
        self._cursor = 0
        self._calls = []
        self._call_latents = set()
        self._call = None
        self._drop()
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
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        self._text = context.shape[1] if isinstance(context, torch.Tensor) and context.dim() == 3 else None
        self._device = x.device.type
        self._drop()
        call = _CallMaps(roles, self.foreground == "uncond")
        self._call = call if call.rows else None
        if self._call is not None and self._text is not None and self._joint and self.background in (*TILED, "image"):
            # once per call, not per chunk: the context is the same in every block
            tiled = (tile_backgrounds(context, self.background) if self.background in TILED
                     else torch.zeros(context.shape[:2], dtype=torch.bool, device=context.device))[call.rows]
            call.pair_w = torch.stack([tiled, ~tiled], 1).float()
        if self._call is not None:
            self._calls.append(call)
            self._call_latents.add(self._latent)

    def _fail(self, message: str) -> None:
        self.error = message
        self._drop()

    def _on_unet_done(self, module, args, output):
        call = self._call
        if call is not None and not self.error:
            try:
                self._finish(call)
            except Exception as e:  # noqa: BLE001 - a capture problem must never fail the user's image
                self._fail(f"attention capture failed ({type(e).__name__}: {e})")
        self._call = None  # projections run outside a U-Net call are not this call's
        self._drop()

    # -- results ------------------------------------------------------------------------------------------
    def masks(self, latent_size: Sequence[int] | None = None) -> dict[Cond, tuple[torch.Tensor, torch.Tensor]]:
        """``{Cond(i, j): (regions (1, T, H, W), foreground (1, 1, H, W))}`` for every cond row captured in
        full this step. The foreground comes from the image's uncond row when so configured, else (or when
        that row is missing this step) from the cond row itself. Empty if the step's maps are unusable."""
        if self._call is not None:  # the U-Net's forward hook did not run (a wrapper called forward directly)
            self._on_unet_done(None, None, None)
        size = tuple(latent_size) if latent_size is not None else self._latent
        tiles = self._call_latents - {size}
        if tiles and not self.error:  # MultiDiffusion-style wrappers run the U-Net on parts of the latent
            h, w = next(iter(tiles))
            self._fail(f"the U-Net ran on {h}x{w} tiles of the {size[0]}x{size[1]} latent (a tiling extension "
                       "such as MultiDiffusion): S-CFG needs the whole latent in one call")
        if self.error or self._latent is None:
            return {}
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
