"""mirrors modules/sd_hijack_clip.py @ v1.10.1 (82a973c): ``PromptChunk`` (:10-22) and the
``tokenize_line`` interface of ``TextConditionalModel`` (:81-174) as ``FrozenCLIPEmbedderWithCustomWords``
(:316-349) has it: ``tokenizer`` (an HF ``CLIPTokenizer``: ``convert_ids_to_tokens``), ``id_start``,
``id_end``, ``id_pad``, ``chunk_length`` 75.

Trimmed: no text encoder, emphasis parsing, comma backtracking or embeddings (``tokenize_line`` = the plain
chunking of :100-174). The tokenizer is a stand-in without CLIP's vocabulary (no hub access): CLIP's
pre-tokenisation (lower case, letters / single digits / other symbols), each word one token ``word</w>``, except
words longer than 8 letters, split like BPE into ``word[:4]`` + ``word[4:]</w>``; ids are handed out in order
of first appearance after the special tokens 49406 / 49407 (CLIP's)."""

from __future__ import annotations

import re

_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)


class PromptChunk:
    def __init__(self):
        self.tokens = []
        self.multipliers = []
        self.fixes = []


class StandInCLIPTokenizer:
    bos_token_id, eos_token_id = 49406, 49407

    def __init__(self):
        self._ids = {"<|startoftext|>": self.bos_token_id, "<|endoftext|>": self.eos_token_id}
        self._tokens = {v: k for k, v in self._ids.items()}

    def _id(self, token):
        if token not in self._ids:
            self._ids[token] = len(self._ids) - 2
            self._tokens[self._ids[token]] = token
        return self._ids[token]

    def pieces(self, text):
        out = []
        for word in _WORD_RE.findall(text.lower()):
            out += [word[:4], word[4:] + "</w>"] if len(word) > 8 else [word + "</w>"]
        return out

    def __call__(self, texts, truncation=False, add_special_tokens=False):
        return {"input_ids": [[self._id(t) for t in self.pieces(text)] for text in texts]}

    def convert_ids_to_tokens(self, ids):
        return [self._tokens[int(i)] for i in ids]


class FrozenCLIPEmbedderWithCustomWords:
    def __init__(self):
        self.tokenizer = StandInCLIPTokenizer()
        self.chunk_length = 75
        self.id_start = self.tokenizer.bos_token_id
        self.id_end = self.tokenizer.eos_token_id
        self.id_pad = self.id_end

    def tokenize(self, texts):
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def tokenize_line(self, line):
        tokenized = self.tokenize([line])
        chunks = []
        chunk = PromptChunk()
        token_count = 0

        def next_chunk(is_last=False):
            nonlocal token_count, chunk
            token_count += len(chunk.tokens) if is_last else self.chunk_length
            to_add = self.chunk_length - len(chunk.tokens)
            if to_add > 0:
                chunk.tokens += [self.id_end] * to_add
                chunk.multipliers += [1.0] * to_add
            chunk.tokens = [self.id_start] + chunk.tokens + [self.id_end]
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
            chunks.append(chunk)
            chunk = PromptChunk()

        for tokens in tokenized:
            for token in tokens:
                if len(chunk.tokens) == self.chunk_length:
                    next_chunk()
                chunk.tokens.append(token)
                chunk.multipliers.append(1.0)
        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count
