"""Joint-attention transformers (NextDiT: Lumina 2, Z-Image; MMDiT: Chroma, Qwen-Image): one attention over
``[text | image]`` per block, read through their module's ``attention_function`` (``tap``) and split into a
self- and a cross-attention by the stash (``_stash_joint``)."""

from __future__ import annotations

import sys

import torch

from .layer import AttentionLayer
from .tap import ATTENTION_FUNCTION


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
