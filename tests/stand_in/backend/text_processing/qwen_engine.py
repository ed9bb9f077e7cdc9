"""Stand-in for Forge Neo ``backend/text_processing/qwen_engine.py`` at the fork nolanlane/sd-webui-forge-classic
@ 6e1e0d5 (2026-02-23): ``PromptChunk``, ``QwenTextProcessingEngine.tokenize`` / ``tokenize_line`` (:33-75: the
prompt's emphasis parts each inside ``llama_template``, one chunk) and ``id_template``, the part the maps and
word weights read; the encoder and ``strip_template`` (which cuts its output from the second ``<|im_start|>``,
past ``user\\n``) are what the reader mirrors. Trimmed: images, the encoder; the emphasis is "Original" (set by
``__call__`` upstream).

``Tokenizer`` stands in for transformers' ``Qwen2TokenizerFast`` (``backend/huggingface/Qwen/Qwen-Image/
tokenizer``): ``__call__`` and ``convert_ids_to_tokens`` over the pieces and ids the real tokenizer gives for
the template's two halves and the words used (read with that tokenizer; "a " -> ["a", "Ġ"], "red" -> ["red"]); a
word it lacks raises KeyError.
"""

from backend.text_processing import parsing

TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
# the real tokenizer's pieces of TEMPLATE (the prompt at "{}"), and of the words used
TEMPLATE_PIECES = (
    [("<|im_start|>", 151644), ("system", 8948), ("Ċ", 198), ("Describe", 74785), ("Ġthe", 279), ("Ġimage", 2168),
     ("Ġby", 553), ("Ġdetailing", 44193), ("Ġthe", 279), ("Ġcolor", 1894), (",", 11), ("Ġshape", 6083), (",", 11),
     ("Ġsize", 1379), (",", 11), ("Ġtexture", 10434), (",", 11), ("Ġquantity", 12194), (",", 11), ("Ġtext", 1467),
     (",", 11), ("Ġspatial", 27979), ("Ġrelationships", 11871), ("Ġof", 315), ("Ġthe", 279), ("Ġobjects", 6171),
     ("Ġand", 323), ("Ġbackground", 4004), (":", 25), ("<|im_end|>", 151645), ("Ċ", 198), ("<|im_start|>", 151644),
     ("user", 872), ("Ċ", 198)],
    [("<|im_end|>", 151645), ("Ċ", 198), ("<|im_start|>", 151644), ("assistant", 77091), ("Ċ", 198)],
)
WORDS = {"a": ("a", 64), "Ġa": ("Ġa", 264), "Ġred": ("Ġred", 2518), "Ġhorse": ("Ġhorse", 15223), "red": ("red", 1151),
         "Ġ": ("Ġ", 220)}


class Tokenizer:
    bos_token = None

    def __init__(self):
        self.pieces = {i: p for part in TEMPLATE_PIECES for p, i in part} | {i: p for p, i in WORDS.values()}

    def _pieces(self, text):
        prefix, suffix = TEMPLATE.split("{}")
        head = TEMPLATE_PIECES[0] if text.startswith(prefix) else []
        text = text.removeprefix(prefix) if head else text
        tail = TEMPLATE_PIECES[1] if text.endswith(suffix) else []
        text = text.removesuffix(suffix) if tail else text
        words = [WORDS["Ġ" + w if k else w] for k, w in enumerate(text.split(" ")) if w or k]
        return head + words + tail

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[i for _, i in self._pieces(text)] for text in texts]}

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[int(i)] for i in ids]


class PromptChunk:
    def __init__(self):
        self.tokens = []
        self.multipliers = []


class QwenTextProcessingEngine:
    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer or Tokenizer()
        self.id_pad, self.id_template = 151643, 151644
        self.llama_template = TEMPLATE

    def tokenize(self, texts, vision=False):
        return self.tokenizer([self.llama_template.format(text) for text in texts])["input_ids"]

    def tokenize_line(self, line, images=None):
        parsed = parsing.parse_prompt_attention(line, "Original")
        chunk = PromptChunk()
        for tokens, (_, weight) in zip(self.tokenize([t for t, _ in parsed]), parsed):
            chunk.tokens += tokens
            chunk.multipliers += [weight] * len(tokens)
        return [chunk]
