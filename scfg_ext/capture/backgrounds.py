"""The background of the foreground split: which context tokens' maps make it, per model family and per row.

On a U-Net the start token of every 77-token CLIP chunk (``_token_and_pair``, one matrix for every row); on a
diffusion transformer each row's own positions (``_row_backgrounds`` from its keys, ``tile_backgrounds`` from a
joint model's context, where Forge tiled it)."""

from __future__ import annotations

import functools

import torch

from .. import masks as M

CHUNK_TOKENS = 77  # CLIP context chunk: A1111/Forge concatenate 77-token chunks, each with its own SOT


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


@functools.lru_cache(maxsize=32)
def _token_and_pair(tokens: int, device: torch.device) -> torch.Tensor:
    """``(T + 2, T)``: the identity stacked on ``pair_weights`` (every 77-token chunk's SOT as background), so
    one product gives the token maps and their [background, rest] sums."""
    eye = torch.eye(tokens, dtype=torch.float32, device=device)
    return torch.cat([eye, M.pair_weights(tokens, M.chunk_starts(tokens, CHUNK_TOKENS), device)])


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
