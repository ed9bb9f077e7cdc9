"""Edges of the word-weight token reading and of the settings' value objects that a mutation run over
``weights.py`` and ``settings.py`` found unchecked (issue 25): CLIP's byte characters, words cut by a chunk
boundary or by the end of the context, numbers after the first words, the chunk length, and immutability."""

from __future__ import annotations

import dataclasses
import re

import pytest

from scfg_ext.settings import FIELDS, Settings
from scfg_ext.weights import (
    BYTE_LEVEL_SPACE,
    EOT,
    SOT,
    WeightEntry,
    Word,
    clip_style_tokens,
    context_words,
    parse_weights,
    token_weights,
)


def texts(tokens, chunk=77):
    return [(w.text, w.chunk) for w in context_words(tokens, chunk)]


def test_clip_byte_characters_decode_to_utf8():
    """CLIP (GPT-2) spells every byte with a printable character: the printable ASCII and Latin-1 ones as
    themselves, the others (spaces, controls, 0x7f-0xa0, the soft hyphen) as U+0100 onwards, in byte order:
    "à" (C3 A0) is "Ãł", "€" (E2 82 AC) "âĤ¬", a soft hyphen (C2 AD) "ÂŃ"."""
    tokens = [SOT, "voilÃł</w>", "âĤ¬</w>", "Â¬Â®Â¡Ã¿~Ã©</w>", "aÂŃb</w>", EOT]
    assert [t for t, _ in texts(tokens)] == ["voilà", "€", "¬®¡ÿ~é", "a\xadb"]


def test_byte_level_pieces_are_not_encoded_twice():
    """Qwen's byte-level pieces are already in CLIP's byte characters; SentencePiece's are text."""
    assert clip_style_tokens([f"{BYTE_LEVEL_SPACE}caf", "Ã©"], end=None, space=BYTE_LEVEL_SPACE) == ["caf", "Ã©</w>"]
    assert clip_style_tokens(["▁café"], end=None) == ["cafÃ©</w>"]


def test_a_word_cut_by_a_chunk_boundary_or_the_end_keeps_its_chunk():
    cut = [SOT, *["x</w>"] * 75, "ab", SOT, "cd</w>", EOT]  # no end token in chunk 0: "ab" ends at the boundary
    words = texts(cut)
    assert words[-2:] == [("ab", 0), ("cd", 1)]
    assert texts([SOT, *["x</w>"] * 75, "ab"])[-1] == ("ab", 0)  # the context ends inside a word
    assert texts([SOT, *["x</w>"] * 76, "ab"])[-1] == ("ab", 1)
    assert texts([SOT, "ab"]) == [("ab", 0)]


def test_the_third_chunk_is_read_at_77_tokens():
    """Default chunk length: a word right after the third chunk's start token is in chunk 2 (not padding of
    chunk 1), and a phrase does not join words of two chunks."""
    tokens = [SOT, "a</w>", EOT, *[EOT] * 74, SOT, *["x</w>"] * 74, "b</w>", EOT, SOT, "c</w>", EOT]
    assert texts(tokens)[-2:] == [("b", 1), ("c", 2)]
    weights, missing = token_weights(parse_weights("c: 2, b c: 3"), tokens)
    assert weights[155] == 2 and missing == ["b c"]


def test_a_number_after_other_words_is_one_word():
    tokens = [SOT, "a</w>", "b</w>", "c</w>", "1</w>", "9</w>", "9</w>", "0</w>", EOT]
    weights, missing = token_weights(parse_weights("1990: 2, c: 3"), tokens)
    assert weights[:9].tolist() == [1, 1, 1, 3, 2, 2, 2, 2, 1] and missing == []


def test_value_objects_are_immutable():
    for obj, name in [(WeightEntry("a", 1.0), "weight"), (Word("a", (1,), 0), "chunk"), (FIELDS[1], "maximum"),
                      (Settings(), "max_rate")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 2)


def test_messages_quote_at_most_60_characters():
    from scfg_ext.settings import shown
    from scfg_ext.weights import QUOTED, quote

    assert QUOTED == 60
    assert quote("x" * 60) == '"' + "x" * 60 + '"' and quote("x" * 61) == '"' + "x" * 59 + '…"'
    assert shown("x" * 100) == "'" + "x" * 27 + "..." + "x" * 28 + "'"  # 60 characters, both ends kept
    assert shown([1, 2, 3, 4, 5]) == "[1, 2, 3, 4, ...]" and shown([[[1]]]) == "[[[...]]]"
    assert shown({k: 0 for k in "abcde"}) == "{'a': 0, 'b': 0, 'c': 0, 'd': 0, ...}"
    assert shown(10**400) == "an integer of about 401 digits" and shown(2**63) == repr(2**63)


@pytest.mark.parametrize("text, says", [("a\ud800: 1", "character 2 is a lone surrogate (U+D800)"),
                                        ("ab\x00: 1", "character 3 is a control character (U+0000)")])
def test_refused_characters_are_named(text, says):
    from scfg_ext.weights import WeightsError

    with pytest.raises(WeightsError, match=re.escape(says)):
        parse_weights(text)


def test_equal_min_and_max_rate_is_one_rate():
    assert Settings(min_rate=2.0, max_rate=2.0).as_dict()["min_rate"] == 2.0
