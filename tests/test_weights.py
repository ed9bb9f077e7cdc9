"""Per-word guidance weights: parsing, matching on CLIP token strings, and the effect on the rate map.

The token lists are written by hand as the WebUI's CLIP tokenizer gives them (``convert_ids_to_tokens``),
which is what ``token_weights`` receives: no tokenizer (and no hub access) is needed.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scfg_ext.masks import gaussian_smooth, guidance_rate, region_ratios
from scfg_ext.weights import (
    WeightEntry,
    WeightsError,
    clip_style_tokens,
    context_words,
    format_weights,
    parse_weights,
    token_weights,
)

SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def context(*words: str, chunks: int = 1) -> list[str]:
    """A padded context as A1111 lays it out: ``words`` are token strings (``</w>`` where a word ends); "|"
    ends the chunk (EOT, then EOT padding to 77) and starts the next one with SOT."""
    out: list[str] = []
    current = [SOT]
    for token in words:
        if token == "|":
            out += current + [EOT] * (77 - len(current))
            current = [SOT]
        else:
            current.append(token)
    out += current + [EOT] * (77 - len(current))
    assert len(out) % 77 == 0 and len(out) == 77 * chunks
    return out


def W(text: str, tokens) -> list[float]:
    weights, _ = token_weights(parse_weights(text), tokens)
    return weights.tolist()


def at(tokens, weights, value):
    return [i for i, w in enumerate(weights) if w == pytest.approx(value)]


# ---------------------------------------------------------------- parsing


def test_parse_good_input():
    assert parse_weights("horse: 1.3, sky: 0.7, red shirt: 1.2") == (
        WeightEntry("horse", 1.3), WeightEntry("sky", 0.7), WeightEntry("red shirt", 1.2))
    assert parse_weights("  horse :1.3 ,\n  red   shirt:  .5 ,") == (
        WeightEntry("horse", 1.3), WeightEntry("red shirt", 0.5))
    assert parse_weights("") == parse_weights("   ") == parse_weights(" , ") == ()
    assert parse_weights("a: 0, b: 10, c: 1e-2, d: +2") == (
        WeightEntry("a", 0.0), WeightEntry("b", 10.0), WeightEntry("c", 0.01), WeightEntry("d", 2.0))
    # emphasis syntax the user may copy from the prompt: brackets and their weight go
    assert parse_weights("(horse:1.2): 1.3, [sky]: 0.7, ((red shirt)): 2") == (
        WeightEntry("horse", 1.3), WeightEntry("sky", 0.7), WeightEntry("red shirt", 2.0))
    assert parse_weights("-0: 1")[0].phrase == "-0"  # a symbol is a word for CLIP too
    assert parse_weights("a: -0")[0].weight == 0.0 and str(parse_weights("a: -0")[0].weight) == "0.0"


@pytest.mark.parametrize("text,message", [
    ("sky 0.7", '"sky 0.7" is not "word: number"'),
    ("horse: 1.3, sky 0.7", '"sky 0.7" is not "word: number"'),
    ("sky: ", '"sky:" is not "word: number"'),
    ("sky: abc", '"sky: abc" is not "word: number"'),
    ("sky: 1.2.3", 'is not "word: number"'),
    ("sky: nan", 'is not "word: number"'),
    ("sky: inf", 'is not "word: number"'),
    ("sky: 1_0", 'is not "word: number"'),
    (": 1", '": 1" has no word'),
    ("(): 1", '"(): 1" has no word'),
    ("sky: -0.5", '"sky: -0.5": the weight must be between 0 and 10'),
    ("sky: 10.5", "between 0 and 10"),
    ("sky: 1e400", "between 0 and 10"),
    ("sky: 1, Sky: 2", '"Sky: 2" repeats "sky: 1"'),
    ("red  shirt: 1, (red shirt): 2", 'repeats'),
])
def test_parse_rejects_malformed_entries(text, message):
    with pytest.raises(WeightsError, match="^S-CFG word weights: ") as exc:
        parse_weights(text)
    assert message in str(exc.value)
    assert isinstance(exc.value, ValueError)


phrases = st.lists(st.text("abcxyz ()[]:-!é", min_size=1, max_size=12), min_size=0, max_size=5)


@settings(max_examples=200, deadline=None)
@given(entries=phrases, weights=st.lists(st.floats(0, 10), min_size=5, max_size=5))
def test_format_round_trips(entries, weights):
    parsed = []
    for text, w in zip(entries, weights, strict=False):
        try:
            parsed.append(parse_weights(f"{text}: {w!r}")[0])
        except WeightsError:
            continue
    if len({e.words for e in parsed}) != len(parsed):
        return
    parsed = tuple(parsed)
    assert parse_weights(format_weights(parsed)) == parsed


def test_format_is_canonical():
    entries = parse_weights("(horse:1.2): 1.30, red   shirt: 2.0, sky: 0.1")
    assert format_weights(entries) == "horse: 1.3, red shirt: 2, sky: 0.1"


# ---------------------------------------------------------------- matching

PROMPT = context("a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "sh", "irt</w>", "and</w>", "a</w>",
                 "horse</w>", ",</w>", "blue</w>", "sky</w>")  # "a photo of a red shirt and a horse, blue sky"


def test_words_are_reassembled_from_pieces():
    words = context_words(PROMPT)
    assert [w.text for w in words] == ["a", "photo", "of", "a", "red", "shirt", "and", "a", "horse", ",", "blue",
                                       "sky"]
    assert words[5].positions == (6, 7)
    assert all(w.chunk == 0 for w in words)


def test_single_words_and_phrases():
    w = W("horse: 1.3, sky: 0.7", PROMPT)
    assert at(PROMPT, w, 1.3) == [10] and at(PROMPT, w, 0.7) == [13]
    assert len(w) == 77 and sum(1 for v in w if v == 1.0) == 75
    w = W("red shirt: 1.2", PROMPT)
    assert at(PROMPT, w, 1.2) == [5, 6, 7]  # both words, all pieces
    w = W("shirt: 2", PROMPT)
    assert at(PROMPT, w, 2) == [6, 7]  # a word made of two pieces
    w = W("blue sky: 0.5", PROMPT)
    assert at(PROMPT, w, 0.5) == [12, 13]
    tokens = context("a</w>", "t</w>", "-</w>", "shirt</w>")  # punctuation is a token (a word) too
    assert at(tokens, W("T-Shirt: 3", tokens), 3) == [2, 3, 4]
    assert at(tokens, W("t - shirt: 3", tokens), 3) == [2, 3, 4]


def test_case_repeats_and_brackets():
    w = W("HORSE: 1.3, A: 0.5", PROMPT)
    assert at(PROMPT, w, 1.3) == [10]
    assert at(PROMPT, w, 0.5) == [1, 4, 9]  # every "a"
    assert W("(horse:1.4): 1.3", PROMPT) == W("horse: 1.3", PROMPT)
    assert W("[Red Shirt]: 1.2", PROMPT) == W("red shirt: 1.2", PROMPT)


def test_phrase_must_be_consecutive_words_and_whole_words():
    weights, unmatched = token_weights(parse_weights("red horse: 2, shi: 2, hors: 2, photo a: 2"), PROMPT)
    assert torch.equal(weights, torch.ones(77))
    assert unmatched == ["red horse", "shi", "hors", "photo a"]


def test_longer_phrase_wins_overlaps():
    tokens = context("red</w>", "sh", "irt</w>", "and</w>", "red</w>", "hat</w>")
    w = W("red: 2, red shirt: 1.5", tokens)
    assert at(tokens, w, 1.5) == [1, 2, 3] and at(tokens, w, 2) == [5]
    weights, unmatched = token_weights(parse_weights("shirt: 3, red shirt: 1.5"), tokens)
    assert at(tokens, weights.tolist(), 1.5) == [1, 2, 3] and unmatched == []  # found, though overridden
    # equal length: the first entry wins
    w = W("red shirt: 1.5, shirt and: 3", tokens)
    assert at(tokens, w, 1.5) == [1, 2, 3] and at(tokens, w, 3) == [4]


def test_special_tokens_and_padding_never_match():
    tokens = context("horse</w>")
    tokens[5] = "!</w>"  # SD2's open_clip pads with token 0, "!": padding after the EOT is still padding
    weights, unmatched = token_weights(parse_weights("!: 2, horse: 3"), tokens)
    assert weights.tolist()[:3] == [1, 3, 1] and weights[3:].eq(1).all()
    assert unmatched == ["!"]
    assert token_weights(parse_weights("startoftext: 2, endoftext: 2, <|endoftext|>: 2"), tokens)[1] == [
        "startoftext", "endoftext", "<|endoftext|>"]


def test_long_prompts_across_chunks():
    first = ["a</w>"] * 40 + ["horse</w>"] + ["b</w>"] * 34  # 75 prompt tokens
    tokens = context(*first, "|", "red</w>", "horse</w>", "sky</w>", chunks=2)
    assert len(tokens) == 154 and tokens[76] == EOT and tokens[77] == SOT
    w = W("horse: 1.5, red horse: 2", tokens)
    assert at(tokens, w, 1.5) == [41]
    assert at(tokens, w, 2) == [78, 79]
    assert [x.chunk for x in context_words(tokens) if x.text == "horse"] == [0, 1]


def test_no_match_across_a_chunk_boundary():
    tokens = context(*(["x</w>"] * 74 + ["red</w>"]), "|", "shirt</w>", chunks=2)
    weights, unmatched = token_weights(parse_weights("red shirt: 2"), tokens)
    assert torch.equal(weights, torch.ones(154)) and unmatched == ["red shirt"]
    # a word cut by the chunk boundary: its two halves are separate words, neither matches the whole word
    tokens = context(*(["x</w>"] * 74 + ["sh"]), "|", "irt</w>", chunks=2)
    assert [w.text for w in context_words(tokens)][-2:] == ["sh", "irt"]
    assert token_weights(parse_weights("shirt: 2"), tokens)[1] == ["shirt"]
    # a chunk of raw tokens without SOT/EOT (the caller's concern) still splits at the chunk size
    tokens = ["red</w>"] * 3 + ["shirt</w>"] * 3
    assert at(tokens, token_weights(parse_weights("red shirt: 2"), tokens, chunk=3)[0].tolist(), 2) == []


def test_non_ascii_words():
    # "café" as CLIP spells it: the UTF-8 bytes of "é" as printable byte characters
    tokens = context("caf", "Ã©</w>", "au</w>", "lait</w>")
    assert [w.text for w in context_words(tokens)] == ["café", "au", "lait"]
    assert at(tokens, W("Café au lait: 2", tokens), 2) == [1, 2, 3, 4]


def test_t5_pieces_make_the_same_words():
    """T5's SentencePiece pieces (as the real T5TokenizerFast gives them: "▁" starts a word, a lone "▁" before
    "a") spelled CLIP-style: the same words and matches as CLIP's, in one chunk as long as the context."""
    pieces = ["▁", "a", "▁red", "▁horse", "▁on", "▁", "a", "▁green", "▁field", ",", "▁café", "▁", "ze", "bra", "</s>"]
    tokens = clip_style_tokens(pieces) + ["<pad>"] * 5
    assert tokens[:4] == ["", "a</w>", "red</w>", "horse</w>"] and tokens[14] == EOT
    words = context_words(tokens, chunk=len(tokens))
    assert [w.text for w in words] == ["a", "red", "horse", "on", "a", "green", "field", ",", "café", "zebra"]
    assert words[0].positions == (0, 1) and words[-1].positions == (11, 12, 13)
    weights, missing = token_weights(parse_weights("red horse: 2, zebra: 3, field: 0, pad: 4"), tokens,
                                     chunk=len(tokens))
    assert weights.tolist() == [1, 1, 2, 2, 1, 1, 1, 1, 0, 1, 1, 3, 3, 3] + [1] * 6 and missing == ["pad"]


def test_a_number_is_one_word_whatever_the_tokenizer():
    clip = context("horse</w>", "1</w>", "9</w>", "9</w>", "0</w>", "s</w>")  # CLIP: a word per digit
    t5 = clip_style_tokens(["▁horse", "▁1990", "s", "</s>"])
    assert at(clip, W("1990: 2, 9: 3", clip), 2) == [2, 3, 4, 5]
    assert token_weights(parse_weights("9: 3"), clip)[1] == ["9"]
    assert token_weights(parse_weights("1990: 2"), t5, chunk=4)[0].tolist() == [1, 2, 1, 1]


def test_t5_pieces_edge_cases():
    # a piece that starts with another kind of character ends the word; a lone "▁" before the end is no word
    tokens = clip_style_tokens(["▁horse", "s", "!", "▁", "</s>"])
    assert tokens == ["horse", "s</w>", "!</w>", "</w>", EOT]
    assert [w.text for w in context_words(tokens, 5)] == ["horses", "!"]
    assert clip_style_tokens([]) == []


# ---------------------------------------------------------------- effect on the rate


def two_regions(h=12, w=12, tokens=6):
    """Tokens 1 (left half) and 3 (right half) own the latent; everything is foreground."""
    r = torch.zeros(1, tokens, h, w)
    r[:, 1, :, : w // 2] = 1
    r[:, 3, :, w // 2:] = 1
    return r, torch.ones(1, 1, h, w)


def delta_for(h=12, w=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(1, 4, h, w, generator=gen)
    d[..., w // 2:] *= 3  # the right region has larger norms: its ratio < 1, the left one's > 1
    return d


WIDE = dict(min_rate=0.0, max_rate=1e6, max_scale=None)


def test_weight_scales_the_pre_clamp_rate():
    regions, fg = two_regions()
    delta = delta_for()
    ratio, _ = region_ratios(delta, regions, fg)
    tw = torch.ones(1, 6)
    tw[0, 3] = 1.7
    weighted = guidance_rate(delta, regions, fg, 7.5, token_weights=tw, **WIDE)
    plain = guidance_rate(delta, regions, fg, 7.5, **WIDE)
    expected = gaussian_smooth(torch.einsum("bt,bthw->bhw", ratio * tw, regions)[:, None])
    torch.testing.assert_close(weighted, expected)
    # away from the border (the 3x3 smoothing), the weighted region's rate is the factor times the plain one
    torch.testing.assert_close(weighted[..., 2:-2, 8:-1], 1.7 * plain[..., 2:-2, 8:-1])
    torch.testing.assert_close(weighted[..., :, :5], plain[..., :, :5])
    # (T,) weights broadcast over the batch
    torch.testing.assert_close(guidance_rate(delta, regions, fg, 7.5, token_weights=tw[0], **WIDE), weighted)


def test_weight_is_applied_before_the_clamps():
    regions, fg = two_regions()
    delta = delta_for()
    ratio, _ = region_ratios(delta, regions, fg)
    tw = torch.ones(6)
    tw[1] = 10.0
    rate = guidance_rate(delta, regions, fg, 7.5, min_rate=0.8, max_rate=3.0, max_scale=15.0, token_weights=tw)
    assert float(ratio[0, 1]) * 10 > 3.0
    torch.testing.assert_close(rate[..., 2:-2, 1:4], torch.full((1, 1, 8, 3), 2.0))  # capped at 15 / 7.5


def test_zero_weight_is_plain_cfg():
    regions, fg = two_regions()
    delta = delta_for()
    tw = torch.ones(6)
    tw[3] = 0.0
    for gamma in (7.5, 30.0):  # also above the max_scale cap: plain CFG is rate 1, uncapped
        rate = guidance_rate(delta, regions, fg, gamma, token_weights=tw)
        plain = guidance_rate(delta, regions, fg, gamma)
        assert torch.equal(rate[..., 1:-1, 7:-1], torch.ones(1, 1, 10, 4))
        torch.testing.assert_close(rate[..., :, :5], plain[..., :, :5])


@settings(max_examples=40, deadline=None)
@given(h=st.integers(3, 24), w=st.integers(3, 24), seed=st.integers(0, 2**16), gamma=st.floats(1.0, 40.0))
def test_zero_weight_neighbourhoods_are_exactly_one(h, w, seed, gamma):
    """Every cell whose 3x3 neighbourhood (reflect-padded, as the smoothing sees it) lies in weight-0 regions has
    rate exactly 1, for any partition, scale and delta: exact by construction, not by rounding luck."""
    gen = torch.Generator().manual_seed(seed)
    tokens = 5
    owner = torch.randint(0, tokens, (1, h, w), generator=gen)
    regions = torch.nn.functional.one_hot(owner, tokens).permute(0, 3, 1, 2).float()
    delta = torch.randn(1, 4, h, w, generator=gen) * (1 + 10 * torch.rand(1, 1, h, w, generator=gen))
    tw = torch.rand(tokens, generator=gen) * 3
    tw[torch.randperm(tokens, generator=gen)[:2]] = 0.0
    rate = guidance_rate(delta, regions, torch.ones(1, 1, h, w), gamma, token_weights=tw)
    zero = (tw[owner] == 0).float()[:, None]
    padded = torch.nn.functional.pad(zero, (1, 1, 1, 1), mode="reflect")
    inside = torch.nn.functional.max_pool2d(1 - padded, 3, stride=1) == 0
    assert torch.equal(rate[inside], torch.ones(int(inside.sum())))


def test_all_zero_weights_are_plain_cfg_bit_for_bit(small_unet):
    """Weight 0 on every token: the S-CFG combination of a real U-Net call with real maps is plain CFG, bit for
    bit (the rate is exactly 1 everywhere and the guided cond passes the cond output unchanged)."""
    from scfg_ext import Cond, ScfgRun, Settings, Uncond, plain_cfg

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 32, 32, generator=gen)
    ctx = torch.randn(2, 77, 768, generator=gen)
    run = ScfgRun(Settings(enabled=True), token_weights={Cond(0): torch.zeros(77)})
    with torch.no_grad(), run.attached(small_unet):
        run.begin_step([Cond(0), Uncond(0)], 0.0)
        out = small_unet(x.expand(2, -1, -1, -1), torch.tensor([500, 500]), context=ctx)
        uncond, conds = out[1:], [[(out[0], 1.0)]]
        combined = run.combine(uncond, conds, 7.5)
    assert run.steps_applied == 1  # the maps were used, not skipped
    assert torch.equal(combined, plain_cfg(uncond, conds, 7.5))


def test_unmatched_entry_changes_nothing():
    regions, fg = two_regions(tokens=77)
    delta = delta_for()
    weights, unmatched = token_weights(parse_weights("zebra: 3"), PROMPT)
    assert unmatched == ["zebra"]
    assert torch.equal(guidance_rate(delta, regions, fg, 7.5, token_weights=weights),
                       guidance_rate(delta, regions, fg, 7.5))
    # and all-ones weights of any batch shape leave the default result bit for bit
    assert torch.equal(guidance_rate(delta, regions, fg, 7.5, token_weights=torch.ones(1, 77)),
                       guidance_rate(delta, regions, fg, 7.5))


def test_weights_from_a_prompt_reach_their_regions():
    """End to end: "horse: 2" on the prompt's tokens weights the region owned by the horse token."""
    h = w = 12
    regions = torch.zeros(1, 77, h, w)
    regions[:, 10, :, : w // 2] = 1  # "horse"
    regions[:, 13, :, w // 2:] = 1  # "sky"
    fg = torch.ones(1, 1, h, w)
    delta = delta_for()
    weights, _ = token_weights(parse_weights("horse: 2"), PROMPT)
    rate = guidance_rate(delta, regions, fg, 7.5, token_weights=weights[None], **WIDE)
    plain = guidance_rate(delta, regions, fg, 7.5, **WIDE)
    torch.testing.assert_close(rate[..., 2:-2, 1:4], 2 * plain[..., 2:-2, 1:4])
    torch.testing.assert_close(rate[..., :, 8:], plain[..., :, 8:])
