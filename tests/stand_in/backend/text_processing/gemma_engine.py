"""Stand-in for Forge Neo ``backend/text_processing/gemma_engine.py`` (Lumina 2 / Neta Lumina) at the fork
nolanlane/sd-webui-forge-classic @ 6e1e0d5: ``PromptChunk``, ``GemmaTextProcessingEngine.tokenize_line``
(:39-70: ``<bos>`` then the tokens of each emphasis part, a list of chunks) and ``process_template`` (:72-82,
the defaults of ``modules/shared_options.py`` :234-244 for ``opts.neta_template_*``), the parts the maps and
word weights read. Trimmed: ``BREAK``, the encoder; the emphasis is "Original" (set by ``__call__`` upstream).

``GemmaTokenizer`` stands in for the Neta Lumina tokenizer (``backend/huggingface/neta.tokenizer.json.xz``,
a SentencePiece BPE): ``__call__`` and ``convert_ids_to_tokens`` over the pieces and ids the real one gives for
the words here ("a red horse" -> ["a", "▁red", "▁horse"] = [235250, 3118, 10468]; "a " -> ["a", "▁"]; "red" ->
["red"]); a word it lacks raises KeyError.
"""

import re

from backend.text_processing import parsing

TEMPLATE_POSITIVE = ("You are an assistant designed to generate anime images with the highest degree of image-text "
                     "alignment based on danbooru tags. <Prompt Start>")
TEMPLATE_NEGATIVE = ("You are an assistant designed to generate low-quality images based on textual prompts. "
                     "<Prompt Start>")

VOCABULARY = {"<bos>": 2, "You": 2045, "▁are": 708, "▁an": 671, "▁assistant": 20409, "▁designed": 6869, "▁to": 577,
              "▁generate": 11941, "▁anime": 11046, "▁images": 5191, "▁with": 675, "▁the": 573, "▁highest": 9393,
              "▁degree": 7151, "▁of": 576, "▁image": 2416, "-": 235290, "text": 1082, "▁alignment": 30236,
              "▁based": 3482, "▁on": 611, "▁dan": 2052, "bo": 1055, "oru": 36538, "▁tags": 16323, ".": 235265,
              "▁<": 968, "Prompt": 55440, "▁Start": 7248, ">": 235313, "\n": 108, "a": 235250, "▁a": 476,
              "▁red": 3118, "▁horse": 10468, "▁cat": 4401, "red": 854, "▁": 235248}
SPLITS = {"danbooru": ["dan", "bo", "oru"], "image-text": ["image", "-", "text"], "tags.": ["tags", "."],
          "<Prompt": ["<", "Prompt"], "Start>": ["Start", ">"]}


class GemmaTokenizer:
    bos_token = "<bos>"

    def __init__(self):
        self.pieces = {i: piece for piece, i in VOCABULARY.items()}

    def _pieces(self, text):
        out = []
        for part in re.split(r"(\n)", text):
            if part == "\n":
                out.append(part)
                continue
            for k, word in enumerate(part.split(" ")):
                if not word:  # a space before nothing is a piece of its own; nothing before the first space
                    out += ["▁"] if k else []
                    continue
                split = SPLITS.get(word, [word])
                out += [("▁" if k else "") + split[0], *split[1:]]
        return out

    def __call__(self, texts, truncation=False, add_special_tokens=False):
        return {"input_ids": [[VOCABULARY[p] for p in self._pieces(text)] for text in texts]}

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[int(i)] for i in ids]


class PromptChunk:
    def __init__(self):
        self.tokens = []
        self.multipliers = []


class GemmaTextProcessingEngine:
    def __init__(self):
        self.tokenizer = GemmaTokenizer()
        self.id_start = 2

    def tokenize_line(self, line):
        parsed = parsing.parse_prompt_attention(line, "Original")
        chunk = PromptChunk()
        for tokens, (_, weight) in zip(self.tokenizer([t for t, _ in parsed])["input_ids"], parsed):
            chunk.tokens += tokens
            chunk.multipliers += [weight] * len(tokens)
        chunk.tokens, chunk.multipliers = [self.id_start] + chunk.tokens, [1.0] + chunk.multipliers
        return [chunk]

    @staticmethod
    def process_template(text, negative):
        if "<Prompt Start>" in text:
            return text
        return "\n".join([TEMPLATE_NEGATIVE if negative else TEMPLATE_POSITIVE, text])
