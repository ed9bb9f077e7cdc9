"""A block a capture reads: its attention modules, its downsampling factor and how its q and k are reached. Each
model family's finder (``unet``, ``dit``, ``joint``) returns these; nothing else of a family reaches the capture."""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch


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
