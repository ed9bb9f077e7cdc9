"""The prompts' tokens from the WebUI's own tokenizer, one reader per prompt engine, CLIP-style.

Tokens: both WebUIs' prompt engines have ``tokenize_line(text) -> (chunks, token_count)`` with 77-id
``chunk.tokens`` (A1111 ``modules/sd_hijack_clip.py`` ``TextConditionalModel``; Forge
``backend/text_processing/classic_engine.py`` ``ClassicTextProcessingEngine``) and an HF CLIP tokenizer with
``convert_ids_to_tokens`` (A1111 SD2's open_clip: its module's ``tokenizer.decoder``). ``prompt_engine`` finds
the engine by that capability wherever the fork keeps it. Forge Neo's Anima conditions its DiT on its T5 tokens
(``backend/text_processing/anima_engine.py``): they label its context, which is one chunk. Lumina 2 and Z-Image
condition on their LLM's tokens of the prompt inside a template (``llm_prompt_tokens``), Chroma on its T5
tokens (``t5_line_tokens``), Qwen-Image on its chat template's tokens from the prompt on
(``qwen_image_tokens``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..weights import BYTE_LEVEL_SPACE, CHUNK, EOT, SENTENCEPIECE_SPACE, SOT, clip_style_tokens

_SPECIALS = {"<start_of_text>": SOT, "<end_of_text>": EOT}  # open_clip's names (A1111 SD2)
T5_CONTEXT = 512  # Anima pads its context with zeros to 512 positions (anima_engine.py)
T5_PAD = "<pad>"


def prompt_tokens(engine, text: str) -> list[str]:
    """The CLIP token strings of ``text`` as the WebUI conditions on it: all 77-token chunks of
    ``engine.tokenize_line`` (start, prompt, end, padding)."""
    chunks, _ = engine.tokenize_line(text)
    ids = [int(t) for chunk in chunks for t in chunk.tokens]
    tokenizer = getattr(engine, "tokenizer", None) or getattr(getattr(engine, "wrapped", None), "tokenizer", None)
    if tokenizer is None:  # A1111 SD2: open_clip's tokenizer, a global of modules/sd_hijack_open_clip.py
        tokenizer = getattr(sys.modules.get(type(engine).__module__), "tokenizer", None)
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        strings = tokenizer.convert_ids_to_tokens(ids)
    else:
        strings = [tokenizer.decoder[i] for i in ids]
    return [_SPECIALS.get(s, s) for s in strings]


def t5_prompt_tokens(engine, text: str) -> list[str]:
    """Anima's context positions, CLIP-style (``weights.clip_style_tokens``): its T5 tokens of ``text``, the end
    token, then padding to 512. The fork at 6e1e0d5 (nolanlane) has ``tokenize_line(text) -> [PromptChunk]``
    with ``t5_tokens`` and an HF ``t5_tokenizer``; upstream Neo's ``t5_tokenizer`` is ComfyUI-style, with
    ``tokenize_with_weights(text) -> [[(id, weight), ...]]`` around the HF one (``.tokenizer``)."""
    t5 = engine.t5_tokenizer
    if hasattr(t5, "tokenize_with_weights"):
        ids = [int(token[0]) for token in t5.tokenize_with_weights(text)[0]]
        t5 = t5.tokenizer
    else:
        ids = [int(t) for t in engine.tokenize_line(text)[0].t5_tokens]
    tokens = clip_style_tokens(t5.convert_ids_to_tokens(ids), end=t5.eos_token)
    return tokens + [T5_PAD] * (T5_CONTEXT - len(tokens))


def t5_line_tokens(engine, text: str) -> list[str]:
    """Chroma's context positions, CLIP-style: the T5 tokens of ``text_processing_engine_t5``'s chunks
    (``backend/text_processing/t5_engine.py`` ``tokenize_line(text) -> (chunks, count)``: the prompt's tokens,
    ``</s>``, then ``<pad>`` where the engine pads), as the DiT's context holds them."""
    chunks, _ = engine.tokenize_line(text)
    pieces = engine.tokenizer.convert_ids_to_tokens([int(t) for chunk in chunks for t in chunk.tokens])
    return clip_style_tokens(pieces, end=engine.tokenizer.eos_token)


def _chunks(engine, line: str) -> list:
    """``tokenize_line``'s chunks: it returns ``(chunks, count)`` at Neo 283cb2c4, ``chunks`` in the fork at 6e1e0d5."""
    result = engine.tokenize_line(line)
    return result[0] if isinstance(result, tuple) else result


TEMPLATE = "<template>"  # marks the positions of a template around the prompt (no word of the prompt's)


def _template_runs(engine) -> list[list[int]]:
    """The token ids of the fixed texts an LLM engine puts around each part of the prompt, longest first: its
    ``llama_template`` before and after ``{}`` (Qwen3, Qwen-Image), or ``process_template``'s text before the
    prompt (Gemma: the Neta system prompt and a new line)."""
    if hasattr(engine, "llama_template"):
        texts = engine.llama_template.split("{}")
    elif hasattr(engine, "process_template"):
        texts = [engine.process_template("", False)]
    else:
        texts = []
    runs = [engine.tokenizer([t], add_special_tokens=False)["input_ids"][0] for t in texts if t]
    return sorted(([int(i) for i in run] for run in runs if len(run)), key=len, reverse=True)


def _template_marks(engine, ids: Sequence[int]) -> list[bool]:
    """Which context positions are template: every occurrence of a ``_template_runs`` run (the engines wrap each
    emphasis part of a prompt on its own) and the engine's start, template and pad ids."""
    special = {getattr(engine, name) for name in ("id_start", "id_template", "id_pad") if hasattr(engine, name)}
    marks = [i in special for i in ids]
    runs, at = _template_runs(engine), 0
    while at < len(ids):
        run = next((r for r in runs if list(ids[at:at + len(r)]) == r), None)
        if run:
            marks[at:at + len(run)] = [True] * len(run)
        at += len(run) if run else 1
    return marks


def llm_prompt_tokens(engine, text: str) -> list[str]:
    """Lumina 2's and Z-Image's context positions, CLIP-style: the engine's tokens of the prompt inside its
    template (``text_processing_engine_gemma``: ``backend/text_processing/gemma_engine.py``, ``<bos>``, the Neta
    system prompt, a new line, the prompt; ``qwen3_engine.py``, the prompt inside a chat template), with no end
    and no padding. The engines tokenize each emphasis part of the prompt on its own (``a (red:1.2) horse``: three
    parts), so the template's positions (``_template_marks``) are what is found; they hold no word. With no
    template known, every position but ``<bos>`` is read as words."""
    line = engine.process_template(text, False) if hasattr(engine, "process_template") else text
    return _llm_tokens(engine, [int(t) for chunk in _chunks(engine, line) for t in chunk.tokens])


def _llm_tokens(engine, ids: Sequence[int]) -> list[str]:
    """``llm_prompt_tokens`` of a context's ids."""
    tokenizer = engine.tokenizer
    marks = _template_marks(engine, ids)
    pieces = [TEMPLATE if m else p for p, m in zip(tokenizer.convert_ids_to_tokens(ids), marks, strict=True)]
    space = SENTENCEPIECE_SPACE if any(p.startswith(SENTENCEPIECE_SPACE) for p in pieces) else BYTE_LEVEL_SPACE
    return clip_style_tokens(pieces, end=None, start=TEMPLATE if any(marks) else tokenizer.bos_token, space=space)


QWEN_USER = (872, 198)  # "user", "\n": what follows the template's second <|im_start|>


def qwen_image_tokens(engine, text: str) -> list[str]:
    """Qwen-Image's context positions, CLIP-style: ``llm_prompt_tokens`` of its chat template
    (``text_processing_engine_qwen``, ``backend/text_processing/qwen_engine.py``) from where the engine's
    ``strip_template`` cuts the encoder's output: the second ``<|im_start|>``, and past ``user\n`` after it; so the
    prompt's tokens, then ``<|im_end|>\n<|im_start|>assistant\n`` (template: no word)."""
    ids = [int(t) for chunk in _chunks(engine, text) for t in chunk.tokens]
    starts = [i for i, t in enumerate(ids) if t == engine.id_template][:2]
    cut = starts[-1] if starts else 0
    if tuple(ids[cut + 1:cut + 3]) == QWEN_USER:
        cut += 3
    return _llm_tokens(engine, ids)[cut:]



# where each WebUI keeps its prompt engine, in the order searched, and how its tokens label the context
# (reader, chunk length; None: one chunk); SDXL's conditioner embedders come before cond_stage_model
ENGINES = {
    "text_processing_engine": (prompt_tokens, CHUNK),
    "text_processing_engine_l": (prompt_tokens, CHUNK),
    "text_processing_engine_g": (prompt_tokens, CHUNK),
    "text_processing_engine_anima": (t5_prompt_tokens, None),
    "text_processing_engine_gemma": (llm_prompt_tokens, None),
    "text_processing_engine_t5": (t5_line_tokens, None),
    "text_processing_engine_qwen": (qwen_image_tokens, None),
}


def prompt_engine(sd_model) -> tuple[str, object | None]:
    """The model's prompt engine (what has ``tokenize_line``; for SDXL its CLIP ViT-L one) and the attribute it
    was found at (its ``ENGINES`` key; ``""`` for A1111's and reForge's), or ``("", None)``.

    Where each WebUI keeps it: Forge 2 and Neo ``text_processing_engine`` (``backend/diffusion_engine/sd15.py``,
    ``sd20.py``), ``text_processing_engine_l`` (``sdxl.py``) or, for the SDXL refiner, ``text_processing_engine_g``;
    A1111 and reForge the hijacked ``cond_stage_model`` (SD1, SD2; ``modules/sd_hijack_clip.py``, reForge
    ``modules_forge/forge_loader.py`` wraps it as ``CLIP_SD_15_L``), for SDXL the first ``conditioner.embedders``
    entry with ``tokenize_line`` (reForge: ``cond_stage_model`` is that conditioner); Neo's Anima
    ``text_processing_engine_anima`` (with ``t5_tokenizer``); Lumina 2's and Z-Image's
    ``text_processing_engine_gemma``; Chroma's ``text_processing_engine_t5``; Qwen-Image's
    ``text_processing_engine_qwen``."""
    candidates = [(name, getattr(sd_model, name, None)) for name in ENGINES]
    candidates += [("", e) for e in getattr(getattr(sd_model, "conditioner", None), "embedders", None) or []]
    candidates.append(("", getattr(sd_model, "cond_stage_model", None)))
    return next(((name, e) for name, e in candidates if hasattr(e, "tokenize_line") or hasattr(e, "t5_tokenizer")),
                ("", None))
