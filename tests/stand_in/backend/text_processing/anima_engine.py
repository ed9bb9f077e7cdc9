"""Stand-in for Forge Neo ``backend/text_processing/anima_engine.py`` at the fork nolanlane/sd-webui-forge-classic
@ 6e1e0d5 (2026-02-23): ``PromptChunk`` and ``AnimaTextProcessingEngine.tokenize_line`` (:34-74), the part the
maps and word weights read. Trimmed: the Qwen3 side (its ids are never read), emphasis parsing (a line is one
part of weight 1), the encoder and ``anima_preprocess`` (the context: T5 tokens + ``</s>``, zeros to 512).

``T5Tokenizer`` stands in for transformers' ``T5TokenizerFast`` (``backend/huggingface/.../tokenizer_2``): its
``__call__`` and ``convert_ids_to_tokens`` over a few entries of the real vocabulary, spelled and numbered as
the real tokenizer gives them; a word it lacks raises KeyError.
"""

from types import SimpleNamespace

# piece -> id, from the real T5 tokenizer ("a red horse" -> ["▁", "a", "▁red", "▁horse"] = [3, 9, 1131, 4952])
VOCABULARY = {"<pad>": 0, "</s>": 1, "▁": 3, ",": 6, "a": 9, "▁on": 30, "▁red": 1131, "▁green": 1442,
              "▁field": 1057, "▁cat": 1712, "▁dog": 1782, "▁horse": 4952, "ze": 776, "bra": 1939}
WORDS = {"a": ["▁", "a"], "zebra": ["▁", "ze", "bra"]}  # words the tokenizer splits


class T5Tokenizer:
    eos_token = "</s>"

    def __init__(self):
        self.pieces = {i: piece for piece, i in VOCABULARY.items()}

    def _pieces(self, text):
        out = []
        for word in text.replace(",", " ,").split():
            out += [","] if word == "," else WORDS.get(word, ["▁" + word])
        return out

    def __call__(self, texts, truncation=False, add_special_tokens=False):
        return {"input_ids": [[VOCABULARY[p] for p in self._pieces(text)] for text in texts]}

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[int(i)] for i in ids]


class PromptChunk:
    def __init__(self):
        self.qwen_tokens = []
        self.qwen_multipliers = []
        self.t5_tokens = []
        self.t5_multipliers = []


class AnimaTextProcessingEngine:
    def __init__(self, t5_tokenizer=None):
        self.t5_tokenizer = t5_tokenizer or T5Tokenizer()
        self.id_end = 1

    def tokenize_line(self, line):
        parsed = [(line, 1.0)]
        chunk = PromptChunk()
        for tokens, (_, weight) in zip(self.t5_tokenizer([t for t, _ in parsed])["input_ids"], parsed):
            chunk.t5_tokens += tokens
            chunk.t5_multipliers += [weight] * len(tokens)
        chunk.t5_tokens.append(self.id_end)
        chunk.t5_multipliers.append(1.0)
        return [chunk]


def upstream_t5_tokenizer():
    """Upstream Neo's ``t5_tokenizer`` (Haoming02/sd-webui-forge-classic neo @ 1be7cc27, ``_comfy.SDTokenizer``):
    ``tokenize_with_weights(text) -> [[(id, weight), ...]]`` with the end token, around the HF one."""
    hf = T5Tokenizer()

    def tokenize_with_weights(text, disable_weights=False):
        return [[(i, 1.0) for i in hf([text])["input_ids"][0]] + [(1, 1.0)]]

    return SimpleNamespace(tokenizer=hf, tokenize_with_weights=tokenize_with_weights)
