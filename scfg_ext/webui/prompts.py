"""The batch of a sampling pass: its ``AND`` sub-prompts, their tokens (``engines``) and the word weights per cond
row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..capture import Cond
from ..weights import CHUNK, WeightEntry, token_weights
from .engines import ENGINES, prompt_engine, prompt_tokens


@dataclass
class PassPrompts:
    """The batch of one sampling pass: ``texts[i][j]`` = image i's sub-prompt j, ``tokens[i][j]`` its CLIP
    token strings (None when the tokenizer could not be used), in chunks of ``chunk`` (None: one chunk)."""

    iteration: int
    batch_size: int
    hires: bool
    texts: list[list[str]] = field(default_factory=list)
    tokens: list[list[list[str] | None]] = field(default_factory=list)
    chunk: int | None = CHUNK

    def chunk_of(self, tokens: Sequence[str]) -> int:
        return self.chunk or len(tokens)

    def tokens_of(self, key: Cond) -> list[str] | None:
        try:
            return self.tokens[key.image][key.index]
        except IndexError:
            return None


def subprompts(prompt: str) -> list[str]:
    """The ``AND`` sub-prompts of a prompt, as the WebUI splits them (``prompt_parser.get_multicond_prompt_list``)."""
    from . import host

    indexes, flat, _ = host.multicond_prompt_list([prompt])
    return [flat[index] for index, _ in indexes[0]]


def _batch_prompts(p) -> list[str]:
    hires = getattr(p, "is_hr_pass", False)
    prompts = getattr(p, "hr_prompts", None) if hires else None
    prompts = prompts or getattr(p, "prompts", None)
    if not prompts:
        b, n = p.batch_size, getattr(p, "iteration", 0)
        prompts = (getattr(p, "all_prompts", None) or [])[n * b:(n + 1) * b]
    return [str(x) for x in prompts or []]


def pass_prompts(p, notice: Callable[[str], None]) -> PassPrompts:
    """The sub-prompts and tokens of the pass about to run; never raises (a notice says what is missing)."""
    out = PassPrompts(int(getattr(p, "iteration", 0) or 0), int(p.batch_size), bool(getattr(p, "is_hr_pass", False)))
    try:
        out.texts = [subprompts(prompt) for prompt in _batch_prompts(p)]
        name, engine = prompt_engine(p.sd_model)
        if engine is None:
            raise LookupError("no prompt engine on this model")
        read, out.chunk = ENGINES.get(name, (prompt_tokens, CHUNK))
        out.tokens = [[read(engine, text) for text in image] for image in out.texts]
    except Exception as e:  # noqa: BLE001 - labels fall back to "token N", weights are not applied
        notice(f"S-CFG could not read the prompt's tokens ({type(e).__name__}: {e}): word weights are not "
               "applied and the maps name tokens by position")
        out.tokens = [[None] * len(image) for image in out.texts]
    return out


def word_weights(prompts: PassPrompts | None, entries: Sequence[WeightEntry], notice: Callable[[str], None]
                 ) -> dict[Cond, torch.Tensor]:
    """Per cond row, the multiplier of every token (``weights.token_weights``); a notice names the entries that
    match no word of any sub-prompt of the batch."""
    out: dict[Cond, torch.Tensor] = {}
    unmatched: list[str] | None = None
    for i, image in enumerate(prompts.tokens if prompts else []):
        for j, tokens in enumerate(image):
            if tokens is None:
                continue
            weights, missing = token_weights(entries, tokens, chunk=prompts.chunk_of(tokens))
            out[Cond(i, j)] = weights
            unmatched = missing if unmatched is None else [m for m in unmatched if m in missing]
    if unmatched:
        notice("S-CFG word weights: " + ", ".join(f'"{m}"' for m in unmatched) + " matches no word of the prompt")
    return out
