"""Per-word guidance weights: ``horse: 1.3, sky: 0.7, red shirt: 1.2``.

Pure Python + torch, no WebUI imports. ``parse_weights`` reads the text the user typed (and the infotext
value, which ``format_weights`` writes), ``token_weights`` finds each phrase among the positive prompt's CLIP
tokens and gives one multiplier per context position, which ``masks.guidance_rate(token_weights=...)``
applies to the rate of that token's region (after the equalisation, before the clamps; ``0`` = plain CFG).

Tokens are the strings the WebUI's CLIP tokenizer gives (``convert_ids_to_tokens``): a word ends with
``</w>``, a word split by BPE is its pieces without ``</w>`` then the last one with it; the context is made of
77-token chunks, each ``<|startoftext|>``, the prompt's tokens, ``<|endoftext|>``, then padding. T5's
SentencePiece pieces (Anima) are first spelled that way by ``clip_style_tokens``; their context is one chunk.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

CHUNK = 77  # = capture.CHUNK_TOKENS (not imported: this module stays free of the capture's imports)
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_WEIGHT = 10.0
# limits that keep the infotext (and a 422's message) small; a prompt has far fewer words worth weighting
MAX_CHARACTERS = 2000
MAX_ENTRIES = 64
QUOTED = 60  # at most this many characters of the user's text are repeated in a message
_PREFIX = "S-CFG word weights: "
_SEPARATORS = "\t\n\r"  # the control characters word weights may hold (entries are cut at new lines)

# CLIP's pre-tokenisation (open_clip / transformers CLIPTokenizer), with Python's re instead of the regex
# module: letters, single digits, runs of other symbols, and the English contractions. Each of these becomes
# one word of BPE pieces, so a phrase split this way compares with the words reassembled from the tokens.
_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)  # 0-9 only: "１" is no weight
_EMPHASIS_WEIGHT_RE = re.compile(r":\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*(?=[)\]])")


class WeightsError(ValueError):
    """A malformed word-weights text; the message names the entry."""


@dataclass(frozen=True)
class WeightEntry:
    """One ``phrase: weight`` entry. ``phrase`` is canonical: emphasis brackets and their ``:number``
    removed, whitespace collapsed, case kept (matching ignores case)."""

    phrase: str
    weight: float

    @property
    def words(self) -> tuple[str, ...]:
        """The phrase split as CLIP splits text into words, lower case."""
        return phrase_words(self.phrase)


def phrase_words(phrase: str) -> tuple[str, ...]:
    """CLIP's words of ``phrase``, a run of digits joined into one number (as ``_join_numbers`` joins them in
    the context)."""
    words: list[str] = []
    for word in _WORD_RE.findall(phrase.lower()):
        if words and word.isdigit() and words[-1].isdigit():
            words[-1] += word
        else:
            words.append(word)
    return tuple(words)


def _canonical_phrase(text: str) -> str:
    # the WebUI's prompt parser removes "(word:1.2)", "(word)", "[word]" before tokenizing: do the same
    text = _EMPHASIS_WEIGHT_RE.sub("", text)
    text = re.sub(r"[()\[\]]", " ", text)
    return " ".join(text.split())


def quote(text: str, limit: int = QUOTED) -> str:
    """``text`` in double quotes, cut to ``limit`` characters (with an ellipsis)."""
    return f'"{text}"' if len(text) <= limit else f'"{text[:limit - 1]}…"'


def _check_characters(text: str) -> None:
    """Refuse what the infotext and a JSON response cannot carry: control characters (but tab and the line
    breaks, which separate entries) and lone surrogates (not encodable as UTF-8)."""
    for i, char in enumerate(text):
        category = unicodedata.category(char)
        if (category == "Cc" and char not in _SEPARATORS) or category == "Cs":
            kind = "a lone surrogate" if category == "Cs" else "a control character"
            raise WeightsError(f"{_PREFIX}character {i + 1} is {kind} (U+{ord(char):04X}); "
                               "word weights are plain text")


def _parse_entry(raw: str) -> WeightEntry:
    phrase, colon, number = raw.rpartition(":")
    number = number.strip()
    if not colon or not _NUMBER_RE.fullmatch(number):
        if colon and re.fullmatch(r"[-+]?[\d.]+", number) and not number.isascii():
            raise WeightsError(f"{_PREFIX}{quote(raw)}: write the weight with the digits 0-9")
        raise WeightsError(f'{_PREFIX}{quote(raw)} is not "word: number"')
    canonical = _canonical_phrase(phrase)
    if ":" in canonical:  # "a::1", "a:b: 1": one colon per entry, before the weight
        raise WeightsError(f'{_PREFIX}{quote(raw)} has more than one colon; write "word: number"')
    if not phrase_words(canonical):
        raise WeightsError(f"{_PREFIX}{quote(raw)} has no word before the colon")
    weight = float(number)
    if not math.isfinite(weight) or not 0.0 <= weight <= MAX_WEIGHT:
        raise WeightsError(f"{_PREFIX}{quote(raw)}: the weight must be between 0 and {MAX_WEIGHT:g} "
                           "(1 = unchanged, 0 = plain CFG there)")
    return WeightEntry(canonical, weight + 0.0)  # + 0.0 turns -0.0 into 0.0


def parse_weights(text: str) -> tuple[WeightEntry, ...]:
    """Entries of ``phrase: number`` separated by commas (or new lines); empty text = no entries, empty
    entries (a trailing comma) are ignored. Raises ``WeightsError`` naming the first problem: text longer than
    ``MAX_CHARACTERS`` or with more than ``MAX_ENTRIES`` entries, a control character (tab and line breaks
    aside) or lone surrogate, an entry with no colon or more than one (emphasis ``(word:1.2)`` aside), no
    word, a number that is not a finite 0..10 written with the digits 0-9, a phrase given twice (ignoring
    case)."""
    text = text or ""
    if len(text) > MAX_CHARACTERS:
        raise WeightsError(f"{_PREFIX}{len(text)} characters, at most {MAX_CHARACTERS} are allowed")
    _check_characters(text)
    raws = [raw.strip() for raw in re.split(r"[,\n]", text)]
    raws = [raw for raw in raws if raw]
    if len(raws) > MAX_ENTRIES:
        raise WeightsError(f"{_PREFIX}{len(raws)} entries, at most {MAX_ENTRIES} are allowed")
    entries: list[WeightEntry] = []
    seen: dict[tuple[str, ...], str] = {}
    for raw in raws:
        entry = _parse_entry(raw)
        if entry.words in seen:
            raise WeightsError(f"{_PREFIX}{quote(raw)} repeats {quote(seen[entry.words])}; give each word once")
        seen[entry.words] = raw
        entries.append(entry)
    return tuple(entries)


def _format_number(value: float) -> str:
    text = repr(float(value))  # the shortest text that reads back to the same float
    return text[:-2] if text.endswith(".0") else text


def format_weights(entries: Iterable[WeightEntry]) -> str:
    """The canonical text of ``entries`` (``parse_weights(format_weights(x)) == x``): ``horse: 1.3, sky: 0.7``."""
    return ", ".join(f"{e.phrase}: {_format_number(e.weight)}" for e in entries)


# ------------------------------------------------------------------------------------------------------
# tokens


@dataclass(frozen=True)
class Word:
    """A word reassembled from its BPE pieces: ``text`` (lower case, decoded), the context ``positions`` of
    all its pieces, and the 0-based ``chunk`` they are in."""

    text: str
    positions: tuple[int, ...]
    chunk: int


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's (GPT-2's) byte <-> printable character table: token strings spell non-ASCII bytes with these
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_UNICODE = _bytes_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_UNICODE.items()}


def _decode(pieces: str) -> str:
    if pieces.isascii():
        return pieces
    data = bytes(_UNICODE_TO_BYTE.get(c, ord("?")) for c in pieces)
    return data.decode("utf-8", errors="replace")


SENTENCEPIECE_SPACE = "\u2581"  # "▁": the piece starts a word
BYTE_LEVEL_SPACE = "\u0120"  # "Ġ": GPT-2 style byte-level BPE's space (Qwen), CLIP's byte character for " "


def _kind(char: str) -> str:
    return "letter" if char.isalpha() else "digit" if char.isdigit() else "symbol"


def clip_style_tokens(pieces: Sequence[str], end: str | None = "</s>", start: str | None = None,
                      space: str = SENTENCEPIECE_SPACE) -> list[str]:
    """Another tokenizer's pieces spelled as CLIP token strings, so one word logic serves all: SentencePiece
    (T5, Gemma: a word starts with ``▁``) or byte-level BPE (Qwen: ``space`` ``Ġ``, already in CLIP's byte
    characters). ``start``/``end`` become ``<|startoftext|>``/``<|endoftext|>``; a piece ends a word (``</w>``)
    before a piece that starts with ``space``, before a special token, and where CLIP's pre-tokenisation would
    cut (``horse`` ``,`` are two words to CLIP: letters, digits and symbols never share a word); SentencePiece's
    non-ASCII characters are spelled with CLIP's byte characters, as ``_decode`` reads them."""
    specials = {end: EOT, start: SOT}
    texts = [specials.get(p) or p.removeprefix(space) for p in pieces]
    starts = [p.startswith(space) or p in specials for p in pieces]
    out = []
    for i, text in enumerate(texts):
        if is_special(text):
            out.append(text)
            continue
        following = next((k for k in range(i + 1, len(texts)) if texts[k] or starts[k]), None)
        ends = (following is None or starts[following] or is_special(texts[following])
                or bool(text) and _kind(text[-1]) != _kind(texts[following][0]))
        if space == SENTENCEPIECE_SPACE and not text.isascii():
            text = "".join(_BYTE_TO_UNICODE[b] for b in text.encode("utf-8"))
        out.append(text + END_OF_WORD if ends else text)
    return out


def is_special(token: str) -> bool:
    return token in (SOT, EOT)


def context_words(tokens: Sequence[str], chunk: int = CHUNK) -> list[Word]:
    """The words of a context, in order. Special tokens, and everything after a chunk's ``<|endoftext|>``
    (padding, whatever token the model pads with), belong to no word; a word never spans two chunks (pieces
    cut by a chunk boundary make two words)."""
    words: list[Word] = []
    text, positions = "", []

    def close(at_chunk: int) -> None:
        nonlocal text, positions
        if positions and text:  # a lone "▁" before the end is no word
            words.append(Word(_decode(text).lower(), tuple(positions), at_chunk))
        text, positions = "", []

    padding = False
    for i, token in enumerate(tokens):
        c = i // chunk
        if i % chunk == 0:
            close(c - 1)
            padding = False
        if padding or is_special(token):
            close(c)
            padding = padding or token == EOT
            continue
        ends = token.endswith(END_OF_WORD)
        text += token[: -len(END_OF_WORD)] if ends else token
        positions.append(i)
        if ends:
            close(c)
    close((len(tokens) - 1) // chunk)
    return words


def _join_numbers(words: Sequence[Word]) -> list[Word]:
    """Runs of number words of one chunk as one word: CLIP makes a word of every digit, T5 one of the number."""
    out: list[Word] = []
    for word in words:
        last = out[-1] if out else None
        if last and word.text.isdigit() and last.text.isdigit() and last.chunk == word.chunk:
            out[-1] = Word(last.text + word.text, last.positions + word.positions, word.chunk)
        else:
            out.append(word)
    return out


def _find(words: Sequence[Word], phrase: tuple[str, ...]) -> list[int]:
    n = len(phrase)
    return [i for i in range(len(words) - n + 1)
            if all(words[i + k].chunk == words[i].chunk and words[i + k].text == phrase[k] for k in range(n))]


def token_weights(entries: Sequence[WeightEntry], tokens: Sequence[str], *, chunk: int = CHUNK
                  ) -> tuple[torch.Tensor, list[str]]:
    """Multiplier per context position ``(T,)`` float32 (1 where nothing matched) and the phrases that match
    no token (for the warning).

    A phrase matches, ignoring case, every run of consecutive words of one chunk equal to its words (so a
    word given twice in the prompt is weighted at both places) and covers all tokens of those words, BPE
    pieces included. Overlaps: the phrase with more words wins its tokens (``red shirt: 1.2`` beats ``red:
    2`` on "red shirt", ``red`` still counts elsewhere); between phrases of equal length the first entry
    wins. An entry found in the prompt is not reported even if longer phrases took all its tokens. A number is
    one word (``1990: 2`` weights all of "1990", not a "9" in it), whether the tokenizer splits its digits.
    """
    out = torch.ones(len(tokens), dtype=torch.float32)
    words = _join_numbers(context_words(tokens, chunk))
    taken: set[int] = set()
    found: set[int] = set()
    order = sorted(range(len(entries)), key=lambda k: (-len(entries[k].words), k))
    for k in order:
        phrase = entries[k].words
        for start in _find(words, phrase):
            found.add(k)
            for word in words[start: start + len(phrase)]:
                for pos in word.positions:
                    if pos not in taken:
                        taken.add(pos)
                        out[pos] = entries[k].weight
    return out, [e.phrase for k, e in enumerate(entries) if k not in found]
