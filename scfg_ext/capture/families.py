"""Which blocks of a network a capture reads: the first model family whose finder recognises the network."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dit import find_dit_layers
from .joint import find_joint_layers
from .layer import AttentionLayer
from .unet import find_unet_layers


def find_attention_layers(unet: torch.nn.Module, factors: Sequence[int] = (4, 8)) -> list[AttentionLayer]:
    """Transformer blocks of an ldm/sgm ``UNetModel`` at the given downsampling factors (``find_unet_layers``), or
    every block of a diffusion transformer (``find_dit_layers``: Anima; ``find_joint_layers``: NextDiT, MMDiT)."""
    if not hasattr(unet, "input_blocks"):
        return find_dit_layers(unet) or find_joint_layers(unet)
    return find_unet_layers(unet, factors)
