"""Anima-type diffusion transformers: a self-attention over the image tokens and a cross-attention to the text per
block, read through their module's ``attention_function`` (``tap``). Its text has no start token: each row's
background is its null context (Anima pads the text with zero vectors, whose keys are exactly zero)."""

from __future__ import annotations

import sys

import torch

from .layer import AttentionLayer
from .tap import ATTENTION_FUNCTION


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
