"""Attention capture on a Stable Diffusion U-Net (ldm for SD1/SD2, sgm for SDXL, Forge's backend U-Net) or an
Anima-type diffusion transformer, whose cost per call does not grow with the number of captured layers (at a
given memory budget).

The WebUIs replace the attention forward with fused kernels (sdp, xformers, split ...) that never form attention
probabilities; but every one of them runs the block's own ``to_q`` and ``to_k`` projections. So nothing is
recomputed: a forward hook on ``to_q``/``to_k`` of each captured block's self- (``attn1``) and cross-attention
(``attn2``) keeps a reference to the projection's output (no tensor operation at all; the keys include what a
hypernetwork did to the context).

A diffusion transformer of Anima's type (Forge Neo ``backend/nn/anima.py``: per block a self-attention over the
image tokens and a cross-attention to the text) applies q/k norms and, in the self-attention, a rotary embedding
after its projections, then calls its module's ``attention_function``. There the module global is replaced for
the duration by one that hands q and k to the stash, exactly as the attention gets them, and calls the original;
a forward pre-hook on each attention module says whose call it is. Its text has no start token: each row's
background is its null context (Anima pads the text with zero vectors, whose keys are exactly zero).

The per-layer work is batched:

* the stashed layers are grouped by shape (SD1/SD2: the latent/4 blocks, the latent/8 middle block; SDXL: its
  60 latent/4 blocks) and each group is processed with a fixed number of operations: one ``cat`` of all its
  projections, one strided copy that keeps only the needed rows (the cond rows; the uncond rows only when the
  foreground is taken from them) and splits the heads, then batched products for every layer at once;
* a group is processed when the U-Net call ends (a forward hook on the U-Net), or earlier, in layer chunks,
  as soon as the stash and the work it needs would exceed a memory budget; self-attention scores are formed in
  head chunks under the same budget;
* the refined maps of all layers are renormalised and summed over layers in one batched step
  (``MaskAccumulator.add_layers``); the foreground's [background, rest] reduction rides along as two extra
  channels (everything after the softmax is linear in the token axis).

Which U-Net rows belong to which image is explicit (``Cond``/``Uncond`` roles), because a step may span several
U-Net calls, AND prompts give several cond rows per image and the uncond rows may be missing.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import masks as M

CHUNK_TOKENS = 77  # CLIP context chunk: A1111/Forge concatenate 77-token chunks, each with its own SOT
MIN_BUDGET_BYTES = 64 * 2**20  # memory budget floor for the stash and its processing
BUDGET_FRACTION = 0.04  # default budget: this fraction of the U-Net's parameter bytes (or the floor)
_SLOTS = 4  # attn1.to_q, attn1.to_k, attn2.to_q, attn2.to_k
JOINT = -1  # the armed slot of a joint attention, whose one call fills all four
# a DiT's maps are read at latent/4 (not at its latent/2 token grid) when that grid has at least this many cells
# on its shorter side: the official code's grid for SD1.5 at 512² (16x16); Anima at 1024² gets 32x32
MIN_POOLED_SIDE = 16


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
    """A transformer block to capture: its self- and cross-attention modules and its downsampling factor.

    ``function``: for a diffusion transformer, the module whose global ``attention_function`` the attention
    modules call (q and k are taken there, as the attention uses them); None for a U-Net block, whose q and k
    are the outputs of ``to_q``/``to_k``."""

    name: str
    attn1: torch.nn.Module
    attn2: torch.nn.Module
    factor: int
    function: types.ModuleType | None = None
    joint: int = 0  # a joint attention over [text | image] (then attn1 is attn2): the image tokens' pad multiple
    background: str = "start"  # the family's default background (``BACKGROUNDS``)
    image_after_text: bool = False  # a joint attention's image tokens start right after the text (else: at the end)


def _has_class(module: torch.nn.Module, name: str) -> bool:
    return any(type(m).__name__ == name for m in module.modules())


ATTENTION_FUNCTION = "attention_function"  # the name Forge Neo's DiT modules call (backend.attention's)


def find_dit_layers(net: torch.nn.Module) -> list[AttentionLayer]:
    """The blocks of an Anima-type diffusion transformer (Forge Neo ``backend/nn/anima.py``: ``blocks[i]`` with a
    ``self_attn`` and a ``cross_attn`` that call their module's ``attention_function``); empty for any other
    network. The factor is the patch size: one image token per ``patch x patch`` latent cells."""
    blocks = getattr(net, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        return []
    patch = getattr(net, "patch_spatial", None)
    found = []
    for i, block in enumerate(blocks):
        attn1, attn2 = getattr(block, "self_attn", None), getattr(block, "cross_attn", None)
        if attn1 is None or attn2 is None or not isinstance(patch, int):
            return []
        module = sys.modules.get(type(attn1).__module__)
        if not callable(getattr(module, ATTENTION_FUNCTION, None)):
            return []
        found.append(AttentionLayer(f"blocks.{i}", attn1, attn2, patch, module, background="null"))
    return found


def find_joint_layers(net: torch.nn.Module) -> list[AttentionLayer]:
    """The blocks of a joint-attention transformer that run one attention over ``[text | image]`` through their
    module's ``attention_function``; empty for any other network.

    * NextDiT (Forge Neo ``backend/nn/lumina.py``, Lumina 2 and Z-Image): the main ``layers[i].attention``; the
      refiners before them (caption or image alone) are not read. Z-Image pads the image tokens to a multiple
      of ``pad_tokens_multiple``. Background: each row's first token (Lumina 2's ``<bos>``).
    * MMDiT with Flux's blocks (``backend/nn/chroma.py``, Chroma): ``double_blocks[i]`` (two streams joined, text
      first) and ``single_blocks[i]``; their attention is a function, so the block is what arms the capture.
    * Qwen-Image's MMDiT (``backend/nn/qwen.py``): ``transformer_blocks[i].attn`` joins the streams text first
      and passes ``(B, L, H * D)``; an edit's reference latents follow the image tokens.

    The MMDiTs' texts have no start token, and on the miniature MMDiT the end token (T5's ``</s>``, with its
    padding copies) is no background sink: the foreground it leaves matches the named regions worse than the
    whole image does, also where the caption does not name the ground (README). Their background is ``image``,
    the official code's choice for DeepFloyd IF: every region is brought to the whole image's mean norm."""
    patch = getattr(net, "patch_size", None)
    if not isinstance(patch, int):
        return []
    layers, blocks = getattr(net, "layers", None), getattr(net, "transformer_blocks", None)
    after_text = True
    if isinstance(layers, torch.nn.ModuleList) and len(layers):
        named = [(f"layers.{i}", getattr(block, "attention", None)) for i, block in enumerate(layers)]
        pad, background, after_text = getattr(net, "pad_tokens_multiple", None) or 1, "start", False
    elif isinstance(blocks, torch.nn.ModuleList) and len(blocks):
        named = [(f"transformer_blocks.{i}", getattr(block, "attn", None)) for i, block in enumerate(blocks)]
        pad, background = 1, "image"
    else:
        double, single = getattr(net, "double_blocks", None), getattr(net, "single_blocks", None)
        if not isinstance(double, torch.nn.ModuleList) or not isinstance(single, torch.nn.ModuleList):
            return []
        named = [(f"double_blocks.{i}", b) for i, b in enumerate(double)]
        named += [(f"single_blocks.{i}", b) for i, b in enumerate(single)]
        pad, background = 1, "image"
    found = []
    for name, attention in named:
        module = sys.modules.get(type(attention).__module__)
        if attention is None or not callable(getattr(module, ATTENTION_FUNCTION, None)):
            return []
        found.append(AttentionLayer(name, attention, attention, patch, module, joint=pad, background=background,
                                    image_after_text=after_text))
    return found


def find_attention_layers(unet: torch.nn.Module, factors: Sequence[int] = (4, 8)) -> list[AttentionLayer]:
    """Transformer blocks of an ldm/sgm ``UNetModel`` at the given downsampling factors, or every block of an
    Anima-type diffusion transformer (``find_dit_layers``).

    The factor is read off the architecture (a ``Downsample`` doubles it, an ``Upsample`` halves it), not
    off tensor sizes, so a U-Net whose internal sizes another extension changes (Kohya deep shrink) shows
    up as a shape mismatch instead of silently wrong maps. SD1/SD2: five latent/4 blocks and the latent/8
    middle block; SDXL: its latent/4 blocks only (it has no latent/8 attention).
    """
    if not hasattr(unet, "input_blocks"):
        return find_dit_layers(unet) or find_joint_layers(unet)
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


@functools.lru_cache(maxsize=16)
def _zero(device: torch.device) -> torch.Tensor:
    # the ignored ``input`` of baddbmm with beta=0 (cached: no tensor creation per call)
    return torch.zeros((), dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=32)
def _row_index(rows: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


@functools.lru_cache(maxsize=32)
def _token_and_pair(tokens: int, device: torch.device) -> torch.Tensor:
    """``(T + 2, T)``: the identity stacked on ``pair_weights`` (every 77-token chunk's SOT as background), so
    one product gives the token maps and their [background, rest] sums."""
    eye = torch.eye(tokens, dtype=torch.float32, device=device)
    return torch.cat([eye, M.pair_weights(tokens, M.chunk_starts(tokens, CHUNK_TOKENS), device)])


@functools.lru_cache(maxsize=32)
def _pool_matrix(hw: tuple[int, int], stride: int, device: torch.device) -> torch.Tensor:
    """``(h * w, h' * w')`` 0/1: token ``(i, j)`` of an ``h`` x ``w`` grid -> cell ``(i // stride, j // stride)``."""
    h, w = hw
    cell = (torch.arange(h)[:, None] // stride * -(-w // stride) + torch.arange(w)[None] // stride).flatten()
    return torch.nn.functional.one_hot(cell, -(-h // stride) * -(-w // stride)).float().to(device)


@functools.lru_cache(maxsize=32)
def _heads_to_maps(tokens: int, heads: int, batch: int, device: torch.device) -> torch.Tensor:
    """``(batch, T + 2, heads * T)``: ``_token_and_pair`` divided by the head count and repeated for every head,
    so that one product with the per-head maps ``(batch, heads * T, n)`` averages the heads (cached,
    expanded)."""
    return (_token_and_pair(tokens, device) / heads).repeat(1, heads).expand(batch, tokens + 2, heads * tokens)


def _version(t: torch.Tensor) -> int | None:
    return None if t.is_inference() else t._version  # inference tensors have no version counter


@dataclass(frozen=True, slots=True)
class _Group:
    """Shapes shared by the stashed layers processed together."""

    rows: int  # needed rows of the call
    n: int  # attention positions
    tokens: int  # context length
    channels: int
    heads: int
    hw: tuple[int, int]  # the layer's grid
    scale1: float  # self-attention scale
    scale2: float  # cross-attention scale
    stash_bytes: int  # one layer's four projections
    factor: int  # downsampling level
    split: bool  # stashed as (batch, heads, tokens, head dim), not (batch, tokens, channels)
    stride: int = 1  # read at every stride-th query row and column, key columns summed over stride^2 cells

    @property
    def out_hw(self) -> tuple[int, int]:
        """The grid the group's maps come out at."""
        return (-(-self.hw[0] // self.stride), -(-self.hw[1] // self.stride))

    def work_bytes(self) -> tuple[int, int, int]:
        """Float32 bytes per layer: (the head-split copy + the head-averaged self map, the cross scores and
        maps after them, one layer-row's self scores for all heads)."""
        r, n, t, c, h = self.rows, self.n, self.tokens, self.channels, self.heads
        nq = self.out_hw[0] * self.out_hw[1]  # query positions read
        held = r * ((3 * n + t) * c + nq * n) * 4
        cross = r * (h * t * nq + 3 * (t + 2) * nq) * 4
        return held, cross, h * nq * n * 4

    def cost(self, layers: int) -> int:
        """Peak bytes of processing ``layers`` stashed layers (the stash itself included): the stash and its
        ``cat``; the ``cat`` and the head-split copy; the self scores (one layer-row at least); the cross maps."""
        held, cross, scores_row = self.work_bytes()
        stash = layers * self.stash_bytes
        copy = self.rows * (3 * self.n + self.tokens) * self.channels * 4 * layers
        return max(2 * stash, stash + copy, layers * held + scores_row, layers * (held + cross))


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


class AttentionCapture:
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

    def _check(self, layer: AttentionLayer, n: int) -> tuple[int, int] | None:
        h, w = M.grid_size(self._latent, layer.factor)
        if n != h * w:
            self._fail(
                f"attention map of {n} positions in {layer.name} does not fit a {h}x{w} grid "
                f"for a {self._latent[0]}x{self._latent[1]} latent"
            )
            return None
        return h, w

    def _complete(self, i: int, tensors: list) -> None:
        """All four projections of layer ``i`` are in: check their shapes and queue the layer."""
        layer, call = self.layers[i], self._call
        q1, k1, q2, k2 = tensors
        split = layer.function is not None  # a DiT's attention function gets (batch, heads, tokens, head dim)
        if not all(isinstance(t, torch.Tensor) and t.dim() == 3 + split for t in tensors):
            shape = "(batch, heads, tokens, head dim)" if split else "(batch, tokens, channels)"
            self._fail(f"the attention q and k of {layer.name} are not {shape} tensors")
            return
        if split:
            b, heads, n, d = q1.shape
            c, t = heads * d, k2.shape[2]
            fits = k2.shape[:2] == (b, heads) and k2.shape[3] == d
        else:
            b, n, c = q1.shape
            heads, t = layer.attn1.heads, k2.shape[1]
            fits = k2.shape[0] == b and k2.shape[2] == c and layer.attn2.heads == heads
        if k1.shape != q1.shape:
            # e.g. reference-only ControlNet: extra keys appended to the self-attention context
            self._fail(f"self-attention keys {tuple(k1.shape)} of {layer.name} do not match its queries "
                       f"{tuple(q1.shape)} (another extension changed them)")
            return
        if q2.shape != q1.shape or not fits or b != len(call.roles):
            self._fail(f"unexpected attention shapes in {layer.name}: q {tuple(q2.shape)}, k {tuple(k2.shape)}, "
                       f"{len(call.roles)} rows")
            return
        hw = self._check(layer, n)
        if hw is None:
            return
        if c % heads:
            self._fail(f"{layer.name}: {c} channels do not split into {heads} heads")
            return
        d = c // heads
        scale1 = getattr(layer.attn1, "scale", d**-0.5)
        scale2 = getattr(layer.attn2, "scale", d**-0.5)
        key = (n, c, t, heads, q1.dtype, q1.device, hw, scale1, scale2, split)
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = []
            stash = sum(t.numel() * t.element_size() for t in tensors)
            stride = max(1, 4 // layer.factor) if split else 1
            pooled_side = -(-min(hw) // stride)
            if not (self.pool or (self.pool is None and pooled_side >= MIN_POOLED_SIDE)):
                stride = 1
            self._groups[key] = _Group(len(call.rows), n, t, c, heads, hw, scale1, scale2, stash, layer.factor,
                                       split, stride)
        queue.append((i, tensors, [_version(t) for t in tensors]))
        left = self._left[layer.factor] = self._left.get(layer.factor, self._per_factor[layer.factor]) - 1
        if left == 0:
            # the last block of its level: process now rather than hold the stash through the rest of the U-Net
            # (its largest activations come after the latent/4 level)
            for k in [k for k in self._pending if self._groups[k].factor == layer.factor]:
                self._process(k, call)
        elif self._groups[key].cost(len(queue) + 1) > self.budget:
            self._process(key, call)

    def _finish(self, call: _CallMaps) -> None:
        """End of a U-Net call: process what is left, then fold every layer's maps into the call's sums."""
        for key in list(self._pending):
            self._process(key, call)
            if self.error:
                return
        if call.layers != len(self.layers):
            self._fail(f"attention was captured in {call.layers} of {len(self.layers)} blocks (an attention "
                       "forward that does not call to_q/to_k?)")
            return
        call.fold(M.grid_size(self._latent))

    @torch.no_grad()
    def _process(self, key: tuple, call: _CallMaps) -> None:
        queue = self._pending.pop(key)
        group = self._groups[key]
        if any([_version(t) for t in entry[1]] != entry[2] for entry in queue):
            self._fail("the attention projections were modified in place")
            return
        layers = [self.layers[entry[0]] for entry in queue]
        stash = [entry[1] for entry in queue]
        queue.clear()  # from here on ``stash`` holds the only references: _layer_maps frees them after the cat
        with torch.autocast(self._device, enabled=False):
            refined = self._layer_maps(group, call, stash, layers)
        call.add(key, group.out_hw, refined, len(layers))
        if self.on_process is not None:
            self.on_process(len(layers))

    def _layer_maps(self, g: _Group, call: _CallMaps, stash: list, layers: list) -> torch.Tensor:
        """Refined maps of a chunk of layers: ``(L * R, T + 2, n)`` float32, layer-major; channels: the T
        token maps, then [background, rest]; transposed (positions last)."""
        n, t, c, heads = g.n, g.tokens, g.channels, g.heads
        d = c // heads
        big_l, rows = len(stash), call.rows
        r = len(rows)
        p = 3 * n + t  # positions per layer: q1, k1, q2 (n each), k2 (t)
        # (B, L * p, c), or (B, H, L * p, d) when the heads come split
        x = torch.cat([tensor for tensors in stash for tensor in tensors], dim=2 if g.split else 1)
        stash.clear()
        first = rows[0]
        if rows != list(range(first, first + r)):
            x = x.index_select(0, _row_index(tuple(rows), x.device))
            first = 0
        # one strided view (rows, heads split, layer-major) and one copy to float32: (L, R, H, p, d)
        strides = (p * d, big_l * p * c, big_l * p * d, d, 1) if g.split else (p * c, big_l * p * c, d, c, 1)
        y = x.as_strided((big_l, r, heads, p, d), strides, x.storage_offset() + first * big_l * p * c)
        z = y.to(torch.float32, copy=True, memory_format=torch.contiguous_format)
        del x, y
        g_all = big_l * r * heads
        q1 = z.as_strided((g_all, n, d), (p * d, d, 1), 0)
        k1t = z.as_strided((g_all, d, n), (p * d, 1, d), n * d)
        q2t = z.as_strided((g_all, d, n), (p * d, 1, d), 2 * n * d)
        k2 = z.as_strided((g_all, t, d), (p * d, d, 1), 3 * n * d)
        zero = _zero(z.device)
        nq = n  # query positions the maps are read at
        if g.stride > 1:  # a DiT's token grid read at the segmentation grid: every stride-th query row and column
            (h, w), st = g.hw, g.stride
            q1 = q1.view(g_all, h, w, d)[:, ::st, ::st].reshape(g_all, -1, d)
            q2t = q2t.mT.view(g_all, h, w, d)[:, ::st, ::st].reshape(g_all, -1, d).mT
            nq = q1.shape[1]

        # self-attention: s[i, j] = mean over heads of softmax_j(q_i . k_j * scale), queries first so that the
        # softmax runs along contiguous memory (3x faster on a CPU than across rows)
        held, _, scores_row = g.work_bytes()
        units = max(1, (self.budget - big_l * held) // scores_row)  # layer-rows whose scores fit at once
        if units >= big_l * r:
            s = torch.baddbmm(zero, q1, k1t, beta=0, alpha=g.scale1)
            torch.ops.aten._softmax.out(s, 2, False, out=s)
            sa = s.view(big_l * r, heads, nq, n).mean(1)
            del s
        else:
            step = units * heads
            sa = torch.empty(big_l * r, nq, n, dtype=torch.float32, device=z.device)
            buf = torch.empty(step, nq, n, dtype=torch.float32, device=z.device)
            buf4 = buf.view(units, heads, nq, n)
            for qc, kc, sc in zip(q1.split(step), k1t.split(step), sa.split(units), strict=True):
                full = qc.shape[0] == step
                out = buf if full else buf[: qc.shape[0]]
                torch.baddbmm(zero, qc, kc, beta=0, alpha=g.scale1, out=out)
                torch.ops.aten._softmax.out(out, 2, False, out=out)
                torch.mean(buf4 if full else out.view(-1, heads, nq, n), 1, out=sc)
            del buf, buf4
        if g.stride > 1:
            sa = torch.matmul(sa, _pool_matrix(g.hw, g.stride, sa.device))  # keys summed per grid cell
        if call.pair_w is not None:  # a joint model's start or end (each row's, and its tiles'), or none
            pair_w = call.pair_w.to(z.device)
        elif self.background == "start":
            pair_w = None
        else:
            pair_w = _row_backgrounds(z[0, :, 0, 3 * n :], self.background)
        # cross-attention, transposed: cm[t, i] = mean over heads of softmax_t(q_i . k_t * scale)
        pc = torch.baddbmm(zero, k2, q2t, beta=0, alpha=g.scale2)
        torch.ops.aten._softmax.out(pc, 1, False, out=pc)
        del z, q1, k1t, q2t, k2
        if self.observer is not None:
            cm = pc.view(big_l * r, heads, t, nq).mean(1)
            roles = [call.roles[i] for i in rows]
            for li, layer in enumerate(layers):
                sl = slice(li * r, (li + 1) * r)
                self.observer(layer, roles, sa[sl], cm[sl].transpose(1, 2))
        if pair_w is None:
            # the mean over heads, the token maps and their [background, rest] sums in one product: (L R, T + 2, n)
            ct = torch.bmm(_heads_to_maps(t, heads, big_l * r, pc.device), pc.view(big_l * r, heads * t, nq))
        else:  # each row's own background tokens
            tok = pc.view(big_l, r, heads, t, nq).mean(2)
            ct = torch.cat([tok, torch.matmul(pair_w, tok)], 2).view(big_l * r, t + 2, nq)
        del pc
        return _refine_transposed(sa.mT, ct, self.refine)

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


BACKGROUNDS = {
    "start": "the start-of-text token of every 77-token chunk (CLIP; the official code's); on a joint-attention "
             "model each row's first token (Lumina 2's <bos>) and its copies where Forge tiled the text",
    "null": "the context positions whose key is exactly zero (Anima's zero padding)",
    "end": "the null positions and the token before the first of them (the end-of-text token); on a "
           "joint-attention model each row's last token (Chroma's </s>), the copies of it that pad a batch's "
           "shorter rows, and its copies where Forge tiled the text",
    "image": "none: the foreground is the whole image (the official code's choice for DeepFloyd IF stage I)",
}


TILED = ("start", "end")  # the backgrounds a joint model reads per tile of its text


def tile_backgrounds(context: torch.Tensor, background: str = "start") -> torch.Tensor:
    """``(B, T)``: True at the first (``"start"``) or last (``"end"``) position of each row and of every repeat
    of it, where Forge tiled the row's context to a common length (``ConditionCrossAttn.concat``:
    ``c.repeat(1, T // len, 1)``); the period is the shortest one the row repeats with. ``"end"`` also takes the
    copies of the last vector that end a row: a batch's shorter contexts are padded with them
    (``prompt_parser.stack_conds``), and a joint attention without text positions (Chroma's) gives them the key
    of the end token itself, so they share its attention."""
    b, t = context.shape[:2]
    period = torch.full((b,), t, dtype=torch.long, device=context.device)
    for p in reversed([p for p in range(1, t) if t % p == 0]):
        repeats = (context[:, p:] == context[:, :-p]).flatten(1).all(1)
        period = torch.where(repeats, p, period)
    position = torch.arange(t, device=context.device)[None]
    phase = position % period[:, None]
    if background == "start":
        return phase == 0
    last = position - phase + period[:, None] - 1  # the last position of each position's tile
    other = (context != context.gather(1, last[..., None].expand_as(context))).flatten(2).any(2)
    others_after = torch.cat([other.flip(1).cumsum(1).flip(1), other.new_zeros(b, 1, dtype=torch.long)], 1)
    return others_after.gather(1, position.expand(b, t)) == others_after.gather(1, last + 1)


def _row_backgrounds(keys: torch.Tensor, background: str) -> torch.Tensor:
    """``(R, 2, T)`` [background, rest] weights per row from one head's keys ``(R, T, d)`` of one layer (the
    context is the same in every layer: a zero context vector has a zero key in each)."""
    null = keys.abs().amax(-1) == 0
    if background == "image":
        null = torch.zeros_like(null)
    elif background == "end":
        t = null.shape[1]
        end = torch.where(null.any(1), null.int().argmax(1) - 1, t - 1).clamp_min(0)
        null = null | torch.nn.functional.one_hot(end, t).bool()
    return torch.stack([null, ~null], 1).float()


def _refine_transposed(st: torch.Tensor, ct: torch.Tensor, mode: str) -> torch.Tensor:
    """``refine_cross`` on transposed operands: ``(R C)^T`` from ``S^T`` and ``C^T`` (positions last)."""
    if mode == "none":
        return ct
    sc = torch.bmm(ct, st)  # (S C)^T
    if mode == "official":
        return torch.baddbmm(sc, sc, st, beta=0.25, alpha=0.75)  # ((SC + 3 S(SC)) / 4)^T
    total, cur = sc, sc
    for _ in range(3):
        cur = torch.bmm(cur, st)
        total = total + cur
    return total / 4


class _CallMaps:
    """The rows of one U-Net call whose maps are needed, their refined maps per group and their sums."""

    def __init__(self, roles: list[Role | None], uncond_needed: bool):
        self.roles = roles
        wanted = {r for r in roles if isinstance(r, Cond)}
        if uncond_needed:
            wanted |= {r for r in roles if isinstance(r, Uncond)}
        self.rows = [i for i, r in enumerate(roles) if r in wanted]
        self.pair_w: torch.Tensor | None = None  # (R, 2, T) a joint model's [background, rest] weights of the rows
        self.chunks: dict[tuple, tuple[tuple[int, int], list[torch.Tensor]]] = {}
        self.layers = 0
        self.acc = M.MaskAccumulator()

    def add(self, key, hw, maps: torch.Tensor, layers: int) -> None:
        self.chunks.setdefault(key, (hw, []))[1].append(maps)
        self.layers += layers

    @torch.no_grad()
    def fold(self, grid: tuple[int, int]) -> None:
        """Every layer's maps (resized to the grid where needed) into the running sums, in one batched step."""
        with torch.autocast(self.acc_device(), enabled=False):
            maps = []
            for hw, chunks in self.chunks.values():
                m = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
                if tuple(hw) != tuple(grid):
                    m = torch.matmul(m, M.resize_matrix(tuple(hw), tuple(grid), m.device))
                maps.append(m)
            self.chunks.clear()
            m = maps[0] if len(maps) == 1 else torch.cat(maps)
            k = m.shape[1]
            self.acc.add_layers(m.view(-1, len(self.rows), k, *grid))

    def acc_device(self) -> str:
        for _, chunks in self.chunks.values():
            return chunks[0].device.type
        return "cpu"

    def results(self, expected_layers: int, tokens: dict, pairs: dict) -> None:
        """Add this call's complete rows to ``tokens`` (cond rows) and ``pairs`` (every row)."""
        if self.acc.layers != expected_layers:
            return
        tok, pair = self.acc.tokens(), self.acc.pair()
        for j, i in enumerate(self.rows):
            role = self.roles[i]
            if isinstance(role, Cond):
                tokens[role] = tok[j : j + 1]
            pairs[role] = pair[j : j + 1]
