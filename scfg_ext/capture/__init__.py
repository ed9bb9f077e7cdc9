"""Attention capture on a Stable Diffusion U-Net (ldm for SD1/SD2, sgm for SDXL, Forge's backend U-Net) or a
diffusion transformer (Anima; NextDiT: Lumina 2, Z-Image; MMDiT: Chroma, Qwen-Image), whose cost per call does
not grow with the number of captured layers (at a given memory budget).

Its parts, lowest first (each imports only those above it):

* ``layer``, ``calls``: a captured block (``AttentionLayer``); the rows' roles (``Cond``, ``Uncond``) and one
  U-Net call's maps (``_CallMaps``);
* ``tap``: a diffusion transformer's q and k, where its attention function gets them (``AttentionTap``);
* ``unet``, ``dit``, ``joint``: each model family's blocks (``find_*_layers``); ``families``: which family a
  network is (``find_attention_layers``). A new family is a finder in its own file, named there;
* ``backgrounds``: the background tokens of the foreground split, per family and per row;
* ``stash``: the projections of the current call until each layer is complete;
* ``processing``: grouping, memory-budget chunks and the batched softmax and refinement of the stashed layers;
* ``lifecycle``: ``AttentionCapture``, which attaches the hooks, plans each step's rows and returns its masks.
"""

from .backgrounds import BACKGROUNDS, CHUNK_TOKENS, TILED, _row_backgrounds, _token_and_pair, tile_backgrounds
from .calls import Cond, Role, Uncond, _CallMaps
from .dit import find_dit_layers
from .families import find_attention_layers
from .joint import find_joint_layers
from .layer import AttentionLayer
from .lifecycle import BUDGET_FRACTION, MIN_BUDGET_BYTES, AttentionCapture
from .processing import (
    MIN_POOLED_SIDE,
    _Group,
    _heads_to_maps,
    _pool_matrix,
    _refine_transposed,
    _row_index,
    _version,
    _zero,
)
from .stash import _SLOTS, JOINT
from .tap import ATTENTION_FUNCTION, AttentionTap
from .unet import _has_class, find_unet_layers

__all__ = [
    "ATTENTION_FUNCTION", "BACKGROUNDS", "BUDGET_FRACTION", "CHUNK_TOKENS", "JOINT", "MIN_BUDGET_BYTES",
    "MIN_POOLED_SIDE", "TILED", "_SLOTS", "AttentionCapture", "AttentionLayer", "AttentionTap", "Cond", "Role",
    "Uncond", "_CallMaps", "_Group", "_has_class", "_heads_to_maps", "_pool_matrix", "_refine_transposed",
    "_row_backgrounds", "_row_index", "_token_and_pair", "_version", "_zero", "find_attention_layers",
    "find_dit_layers", "find_joint_layers", "find_unet_layers", "tile_backgrounds",
]
