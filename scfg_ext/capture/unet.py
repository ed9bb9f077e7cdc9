"""ldm/sgm U-Nets (SD1, SD2, SDXL; Forge's backend U-Net): the transformer blocks at the captured levels.

The WebUIs replace the attention forward with fused kernels (sdp, xformers, split ...) that never form attention
probabilities; but every one of them runs the block's own ``to_q`` and ``to_k`` projections. So nothing is
recomputed: a forward hook on ``to_q``/``to_k`` of each captured block's self- (``attn1``) and cross-attention
(``attn2``) keeps a reference to the projection's output (no tensor operation at all; the keys include what a
hypernetwork did to the context)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layer import AttentionLayer


def _has_class(module: torch.nn.Module, name: str) -> bool:
    return any(type(m).__name__ == name for m in module.modules())


def find_unet_layers(unet: torch.nn.Module, factors: Sequence[int] = (4, 8)) -> list[AttentionLayer]:
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
