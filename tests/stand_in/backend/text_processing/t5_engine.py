"""Stand-in for Forge Neo ``backend/text_processing/t5_engine.py`` at the fork nolanlane/sd-webui-forge-classic
@ 6e1e0d5 (2026-02-23): ``PromptChunk`` and ``T5TextProcessingEngine.tokenize_line`` (:35-82), the part the maps
and word weights read; Chroma builds it with ``min_length=1, min_padding=0`` (``backend/diffusion_engine/
chroma.py``), so a line is its T5 tokens and ``</s>``. Trimmed: emphasis parsing (a line is one part of weight
1), ``BREAK``, the encoder. The tokenizer is the T5 one of ``anima_engine.py``'s stand-in (real pieces and ids).
"""

from .anima_engine import T5Tokenizer


class PromptChunk:
    def __init__(self):
        self.tokens = []
        self.multipliers = []


class T5TextProcessingEngine:
    def __init__(self, tokenizer=None, min_length=1, min_padding=0):
        self.tokenizer = tokenizer or T5Tokenizer()
        self.min_length, self.min_padding = min_length, min_padding
        self.id_end, self.id_pad = 1, 0

    def tokenize_line(self, line):
        parsed = [(line, 1.0)]
        chunk = PromptChunk()
        for tokens, (_, weight) in zip(self.tokenizer([t for t, _ in parsed])["input_ids"], parsed):
            chunk.tokens += tokens
            chunk.multipliers += [weight] * len(tokens)
        chunk.tokens.append(self.id_end)
        chunk.multipliers.append(1.0)
        if self.min_padding > 0:
            chunk.tokens += [self.id_pad] * self.min_padding
            chunk.multipliers += [1.0] * self.min_padding
        token_count = len(chunk.tokens)
        remaining = self.min_length - len(chunk.tokens)
        if self.min_length > 0 and remaining > 0:
            chunk.tokens += [self.id_pad] * remaining
            chunk.multipliers += [1.0] * remaining
        return [chunk], token_count
