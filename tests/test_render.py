"""The gallery pictures: checked pixel by pixel (region colours and blend, legend swatches and text, the heat
map's extremes and its printed min/max), and the labels from CLIP token strings."""

import pytest
import torch
from PIL import Image

from scfg_ext import render
from scfg_ext.render import (
    PALETTE,
    SPECIAL_COLOUR,
    SPECIAL_LABEL,
    VIRIDIS,
    draw_rate_map,
    draw_region_map,
    rate_map,
    region_map,
    token_labels,
)

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
TOKENS = [SOT, "a</w>", "red</w>", "sh", "irt</w>", "and</w>", "a</w>", "horse</w>", EOT] + [EOT] * 68


def gradient_image(w, h):
    """A picture with different colours everywhere (so that the blend is checked against the real pixel)."""
    x = torch.arange(w)[None, :].expand(h, w)
    y = torch.arange(h)[:, None].expand(h, w)
    rgb = torch.stack([(x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), ((x + y) * 7) % 256], -1)
    return Image.fromarray(rgb.to(torch.uint8).numpy(), "RGB")


def one_hot(owner, tokens=77):
    return torch.nn.functional.one_hot(owner, tokens).permute(2, 0, 1).float()


def non_background(img, box):
    crop = img.crop(box)
    return sum(1 for p in crop.getdata() if p != render.BG)


# ---------------------------------------------------------------- labels


def test_token_labels():
    labels = token_labels(TOKENS)
    assert labels[:9] == [SPECIAL_LABEL, "a", "red", "shirt", "shirt", "and", "a", "horse", SPECIAL_LABEL]
    assert set(labels[9:]) == {SPECIAL_LABEL} and len(labels) == 77


def test_token_labels_name_the_chunk_of_long_prompts():
    second = [SOT, "blue</w>", "sk", "y</w>", EOT] + [EOT] * 72
    labels = token_labels(TOKENS + second)
    assert labels[7] == "horse (1)" and labels[77 + 1] == "blue (2)" and labels[77 + 2: 77 + 4] == ["sky (2)"] * 2
    assert labels[77] == labels[76] == labels[77 + 4] == SPECIAL_LABEL
    # padding that is not EOT (SD2 pads with "!") is still padding, and non-ASCII bytes are decoded
    labels = token_labels([SOT, "caf", "Ã©</w>", EOT, "!</w>"] + [EOT] * 72)
    assert labels[:5] == [SPECIAL_LABEL, "café", "café", SPECIAL_LABEL, SPECIAL_LABEL]


# ---------------------------------------------------------------- region map


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_region_map_colours_blend_and_legend(alpha):
    latent, side = 16, 256  # 16 px per latent cell
    owner = torch.full((latent, latent), 7)  # "horse" on the right
    owner[:, :6] = 3  # "shirt" (piece "sh") on the left
    owner[:2, :6] = 4  # ... and its other piece "irt": same label, same colour, one legend row
    image = gradient_image(side, side)
    out, entries = draw_region_map(image, one_hot(owner), token_labels(TOKENS), alpha=alpha)
    assert out.width == side and out.height > side  # the legend strip below

    shirt, horse = PALETTE[2], PALETTE[4]  # colours by first appearance: a, red, shirt, and, horse
    for (x, y), colour in [((5, 5), shirt), ((95, 200), shirt), ((96, 0), horse), ((255, 255), horse),
                           ((150, 40), horse), ((40, 20), shirt)]:
        base = image.getpixel((x, y))
        expected = tuple(round(b * (1 - alpha) + c * alpha) for b, c in zip(base, colour, strict=True))
        got = out.getpixel((x, y))
        assert all(abs(g - e) <= 1 for g, e in zip(got, expected, strict=True)), ((x, y), got, expected)
    # the boundary between the two regions sits exactly at latent column 6 = pixel 96
    assert out.getpixel((95, 100)) != out.getpixel((96, 100))

    assert [(e.label, e.colour, e.tokens) for e in entries] == [("shirt", shirt, (3, 4)), ("horse", horse, (7,))]
    assert [e.share for e in entries] == [pytest.approx(6 / 16), pytest.approx(10 / 16)]
    for e in entries:
        x0, y0, x1, y1 = e.swatch
        assert y0 >= side  # in the legend, under the picture
        assert out.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == e.colour
        assert non_background(out, e.text) > 20  # the label was drawn in its box
        assert e.text[0] >= x1 and e.text[2] <= out.width
    # the legend's text area holds ink only where the labels are
    left, top = 0, side
    assert non_background(out, (left, top, out.width, out.height)) == sum(
        non_background(out, e.text) for e in entries) + sum(
        (e.swatch[2] - e.swatch[0]) * (e.swatch[3] - e.swatch[1]) for e in entries)


def test_region_map_groups_special_tokens_and_skips_empty_regions():
    owner = torch.zeros(8, 8, dtype=torch.long)  # SOT
    owner[4:, :] = 8  # EOT
    owner[:, 6:] = 20  # padding
    owner[0, 0] = 1  # "a": one cell
    out, entries = draw_region_map(gradient_image(64, 64), one_hot(owner), token_labels(TOKENS))
    assert [(e.label, e.colour, e.tokens) for e in entries] == [(SPECIAL_LABEL, SPECIAL_COLOUR, (0, 8, 20)),
                                                                ("a", PALETTE[0], (1,))]
    assert sum(e.share for e in entries) == pytest.approx(1.0)
    assert entries[1].share == pytest.approx(1 / 64)


def test_region_map_non_square_and_not_a_multiple():
    owner = torch.zeros(3, 5, dtype=torch.long)
    owner[:, 2:] = 7
    image = gradient_image(100, 70)  # 20 px per column, 23.3 px per row
    out = region_map(image, one_hot(owner), token_labels(TOKENS), alpha=1.0)
    assert out.size[0] == 100 and out.size[1] > 70
    assert out.getpixel((39, 69)) == SPECIAL_COLOUR and out.getpixel((40, 0)) == PALETTE[4]


@pytest.mark.parametrize("side", [256, 1024, 2048])
def test_legend_scales_with_the_image(side):
    owner = torch.zeros(8, 8, dtype=torch.long)
    owner[:, 4:] = 7
    out, entries = draw_region_map(Image.new("RGB", (side, side)), one_hot(owner), token_labels(TOKENS),
                                   title="token regions, step 10 of 20")
    swatch = entries[0].swatch[2] - entries[0].swatch[0]
    assert 12 <= swatch <= 44 and swatch >= min(44, side // 28)
    assert out.height - side < side // 2


def test_long_labels_are_cut_to_fit():
    labels = token_labels(TOKENS)
    labels[7] = "x" * 300
    out, entries = draw_region_map(Image.new("RGB", (256, 256)), one_hot(torch.full((8, 8), 7)), labels)
    assert entries[0].text[2] <= 256 and out.width == 256


@pytest.mark.parametrize("side", [128, 256])
def test_titles_are_wrapped_never_cut(side, monkeypatch):
    """At 256 px the rate map's default caption and a hires AND map's title need two lines: every word is
    drawn, no line is wider than the picture, and the picture grows to hold the lines."""
    drawn = []
    original = render.draw_text

    def spy(img, xy, text, size, fill=render.INK):
        if fill == render.MUTED:  # the titles' colour
            drawn.append((text, xy))
        return original(img, xy, text, size, fill)

    monkeypatch.setattr(render, "draw_text", spy)
    caption = "S-CFG rate (scale = CFG x rate; 1 = plain CFG)"
    title = "S-CFG: image 12, hires, AND 2, middle step"
    for draw, kw in ((draw_rate_map, {"size": (side, side)}), (draw_region_map, {"title": title})):
        drawn.clear()
        if draw is draw_rate_map:
            out, _ = draw(torch.rand(8, 8) + 0.5, **kw)
            expected = caption
        else:
            out, _ = draw(Image.new("RGB", (side, side)), one_hot(torch.full((8, 8), 7)), token_labels(TOKENS), **kw)
            expected = title
        lines = list(drawn)
        assert " ".join(text for text, _ in lines) == expected
        assert len(lines) >= 2 and len({xy[1] for _, xy in lines}) == len(lines)
        assert all(xy[0] + render.text_size(text, render._text_px((side, side)))[0] <= out.width for text, xy in lines)


def test_region_map_checks_its_input():
    with pytest.raises(ValueError, match="one label per token"):
        region_map(Image.new("RGB", (64, 64)), one_hot(torch.zeros(8, 8, dtype=torch.long)), ["x"] * 5)


def test_bitmap_font_fallback_is_scaled(monkeypatch):
    """Where neither Pillow's scalable font nor DejaVu is available: the 11 px bitmap font, scaled up."""
    from PIL import ImageFont

    monkeypatch.setattr(render, "font", lambda size: ImageFont.load_default())
    owner = torch.zeros(8, 8, dtype=torch.long)
    out, entries = draw_region_map(Image.new("RGB", (1024, 1024)), one_hot(owner), token_labels(TOKENS))
    box = entries[0].text
    assert box[3] - box[1] >= 33 and non_background(out, box) > 100


# ---------------------------------------------------------------- rate map


def test_rate_map_extremes_and_printed_values():
    gen = torch.Generator().manual_seed(0)
    rate = 0.8 + 2.2 * torch.rand(1, 16, 16, generator=gen)  # StepMaps' (1, H, W)
    out, legend = draw_rate_map(rate, size=(256, 256))
    lo, hi = float(rate.min()), float(rate.max())
    assert (legend.lo, legend.hi) == (lo, hi)
    assert legend.lo_text == f"{lo:.3f}" and legend.hi_text == f"{hi:.3f}"
    assert legend.map_box == (0, 0, 256, 256) and out.height > 256
    flat = rate[0].flatten()
    for index, colour in ((int(flat.argmin()), VIRIDIS[0]), (int(flat.argmax()), VIRIDIS[-1])):
        y, x = divmod(index, 16)
        for px, py in ((x * 16, y * 16), (x * 16 + 15, y * 16 + 15)):  # the whole 16 px cell
            assert out.getpixel((px, py)) == colour
    # nowhere else are the extreme colours
    cells = {out.getpixel((x * 16 + 8, y * 16 + 8)) for x in range(16) for y in range(16)}
    assert VIRIDIS[0] in cells and VIRIDIS[-1] in cells
    inner = [out.getpixel((x * 16 + 8, y * 16 + 8)) for y in range(16) for x in range(16)]
    assert inner.count(VIRIDIS[0]) == 1 and inner.count(VIRIDIS[-1]) == 1
    # the colour bar runs from the min colour to the max colour
    x0, y0, x1, y1 = legend.bar
    assert out.getpixel((x0, (y0 + y1) // 2)) == VIRIDIS[0]
    assert out.getpixel((x1 - 1, (y0 + y1) // 2)) == VIRIDIS[-1]
    assert legend.lo_box[1] >= y1 and legend.hi_box[2] <= out.width
    assert non_background(out, legend.lo_box) > 10 and non_background(out, legend.hi_box) > 10


def test_rate_map_flat_and_default_size():
    rate = torch.full((12, 10), 1.25)
    out, legend = draw_rate_map(rate)
    assert legend.map_box == (0, 0, 80, 96)
    assert legend.lo_text == legend.hi_text == "1.250"
    assert out.getpixel((40, 40)) == VIRIDIS[0]
    assert rate_map(rate, size=(300, 200)).width == 300


def test_rate_map_marks_plain_cfg():
    rate = torch.linspace(0.5, 2.5, 64).view(8, 8)
    out, legend = draw_rate_map(rate, size=(512, 512))
    x0, y0, x1, y1 = legend.bar
    tick = x0 + round((1.0 - 0.5) / 2.0 * (x1 - x0 - 1))
    assert out.getpixel((tick, (y0 + y1) // 2)) == render.INK
    with pytest.raises(ValueError, match="rate must be"):
        rate_map(torch.ones(2, 8, 8))
