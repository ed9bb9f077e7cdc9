"""Pictures of what S-CFG did, for the gallery and the demo (torch + Pillow, no WebUI imports).

``region_map``: the token regions of one step blended over the decoded image, with a legend naming the prompt
word behind each colour; ``rate_map``: the rate as a heat map with its colour bar and min/max;
``token_labels``: a readable label per context position from the CLIP token strings. The ``draw_*`` variants
also return where the legend was drawn (for tests and callers that want the numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont

from .weights import CHUNK, context_words

BG = (250, 250, 248)
INK = (30, 30, 30)
MUTED = (105, 105, 105)
SPECIAL_LABEL = "start/padding"  # the label of every position that is not a prompt word
SPECIAL_COLOUR = (128, 128, 128)
PALETTE = [  # matplotlib tab10 without its grey, then tab20's light shades and two dark ones
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229), (57, 59, 121), (140, 162, 82),
]
VIRIDIS = [
    (68, 1, 84), (72, 36, 117), (65, 68, 135), (53, 95, 141), (42, 120, 142), (33, 145, 140),
    (34, 168, 132), (68, 191, 112), (122, 209, 81), (189, 223, 38), (253, 231, 37),
]
_BITMAP_PX = 11  # Pillow's built-in bitmap font height

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


# ------------------------------------------------------------------------------------------------------
# shared helpers (also used by the demo)


def font(size: int) -> ImageFont.ImageFont:
    """A font of about ``size`` px with no download: Pillow's own (>= 10.1), else DejaVu Sans where the
    system has it, else Pillow's small bitmap font (``draw_text`` scales that one up)."""
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, ValueError, OSError, ImportError):
        pass
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except (OSError, ImportError):
        return ImageFont.load_default()


def colormap(values: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Viridis (piecewise linear over 11 anchors) of ``values`` scaled from [lo, hi]; uint8 ``(..., 3)``."""
    anchors = torch.tensor(VIRIDIS, dtype=torch.float32)
    pos = ((values.float() - lo) / max(hi - lo, 1e-12)).clamp(0, 1) * (len(VIRIDIS) - 1)
    i0 = pos.floor().long().clamp(max=len(VIRIDIS) - 2)
    frac = (pos - i0)[..., None]
    return (anchors[i0] * (1 - frac) + anchors[i0 + 1] * frac).round().to(torch.uint8)


def _scale(f: ImageFont.ImageFont, size: int) -> int:
    return 1 if isinstance(f, ImageFont.FreeTypeFont) else max(1, round(size / _BITMAP_PX))


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height ``draw_text`` will use for ``text`` at ``size`` px."""
    f = font(size)
    left, top, right, bottom = f.getbbox(text or " ")
    k = _scale(f, size)
    return (right if text else 0) * k, max(bottom, size if k == 1 else _BITMAP_PX) * k


def draw_text(img: Image.Image, xy: tuple[int, int], text: str, size: int, fill=INK) -> Box:
    """Draw ``text`` with its top left at ``xy``; returns the box it may cover. The bitmap fallback font is
    drawn at its own size and scaled by a whole factor (nearest), so it stays legible on large images."""
    f = font(size)
    w, h = text_size(text, size)
    if _scale(f, size) == 1:
        ImageDraw.Draw(img).text(xy, text, font=f, fill=fill)
    else:
        k = _scale(f, size)
        mask = Image.new("L", (w // k or 1, h // k or 1), 0)
        ImageDraw.Draw(mask).text((0, 0), text, font=f, fill=255)
        mask = mask.resize((mask.width * k, mask.height * k), Image.NEAREST)
        img.paste(Image.new(img.mode, mask.size, fill), xy, mask)
    return xy[0], xy[1], xy[0] + w, xy[1] + h


def _fit(text: str, size: int, width: int) -> str:
    if text_size(text, size)[0] <= width:
        return text
    while len(text) > 1 and text_size(text + "…", size)[0] > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, size: int, width: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` px at word boundaries (a word wider than that is cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_size(f"{lines[-1]} {word}", size)[0] <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(_fit(word, size, width))
    return lines or [""]


def _draw_lines(img: Image.Image, xy: tuple[int, int], lines: Sequence[str], size: int, fill) -> None:
    """Draw ``lines`` (from ``_wrap``) one under the other from ``xy``, ``round(size * 1.25)`` px apart."""
    for i, line in enumerate(lines):
        draw_text(img, (xy[0], xy[1] + i * round(size * 1.25)), line, size, fill)


def _text_px(image_size: tuple[int, int]) -> int:
    return min(44, max(12, round(min(image_size) / 28)))


def _nearest(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling of ``(H, W, ...)`` to ``size = (width, height)``: output pixel (y, x) takes cell
    (y * H // height, x * W // width)."""
    h, w = grid.shape[:2]
    rows = torch.arange(size[1]) * h // size[1]
    cols = torch.arange(size[0]) * w // size[0]
    return grid[rows][:, cols]


# ------------------------------------------------------------------------------------------------------
# token labels


def token_labels(tokens: Sequence[str], chunk: int = CHUNK) -> list[str]:
    """A label per context position: the whole word for every piece of it (``</w>`` removed, non-ASCII
    decoded), ``start/padding`` for the start, end and padding tokens; when the context has more than one
    chunk every word label names its 1-based chunk, e.g. ``horse (2)``."""
    labels = [SPECIAL_LABEL] * len(tokens)
    several = len(tokens) > chunk
    for word in context_words(tokens, chunk):
        label = f"{word.text} ({word.chunk + 1})" if several else word.text
        for pos in word.positions:
            labels[pos] = label
    return labels


# ------------------------------------------------------------------------------------------------------
# region map


@dataclass(frozen=True)
class LegendEntry:
    """One legend row: all occupied token regions with this ``label`` share its ``colour``. ``tokens``: their
    positions; ``share``: their part of the latent cells; ``swatch``/``text``: boxes in the picture."""

    label: str
    colour: tuple[int, int, int]
    tokens: tuple[int, ...]
    share: float
    swatch: Box
    text: Box


def label_colours(labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Colour of every label: ``PALETTE`` in order of first appearance (cycled), grey for ``start/padding``.
    It depends on the labels only, so a word keeps its colour across steps, passes and images of a prompt."""
    colours: dict[str, tuple[int, int, int]] = {SPECIAL_LABEL: SPECIAL_COLOUR}
    for label in labels:
        if label not in colours:
            colours[label] = PALETTE[(len(colours) - 1) % len(PALETTE)]
    return colours


def _legend_rows(regions: torch.Tensor, labels: Sequence[str]):
    cells = (regions > 0.5).flatten(1).sum(1)  # (T,)
    total = max(int(regions.shape[1] * regions.shape[2]), 1)
    colours = label_colours(labels)
    groups: dict[str, list[int]] = {}
    for t in torch.nonzero(cells).flatten().tolist():
        groups.setdefault(labels[t], []).append(t)
    return [(label, colours[label], tuple(ts), sum(int(cells[t]) for t in ts) / total)
            for label, ts in groups.items()]


def draw_region_map(image: Image.Image, regions: torch.Tensor, labels: Sequence[str], *, alpha: float = 0.5,
                    title: str | None = None) -> tuple[Image.Image, list[LegendEntry]]:
    """``region_map`` and its legend entries (with the boxes where each was drawn)."""
    if regions.dim() == 4 and regions.shape[0] == 1:
        regions = regions[0]
    if regions.dim() != 3 or regions.shape[0] != len(labels):
        raise ValueError(f"regions must be (T, H, W) with one label per token; got {tuple(regions.shape)} and "
                         f"{len(labels)} labels")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    regions = regions.detach().float().cpu()
    base = image.convert("RGB")
    size = base.size
    colours = label_colours(labels)
    token_rgb = torch.tensor([colours[label] for label in labels], dtype=torch.float32)  # (T, 3)
    owner = regions.argmax(0)
    owned = regions.amax(0) > 0
    over = _nearest(torch.cat([token_rgb[owner], owned[..., None].float()], -1), size)  # (h, w, 4)
    pixels = torch.frombuffer(bytearray(base.tobytes()), dtype=torch.uint8).view(size[1], size[0], 3).float()
    a = alpha * over[..., 3:]
    blended = (pixels * (1 - a) + over[..., :3] * a).round().clamp(0, 255).to(torch.uint8)

    rows = _legend_rows(regions, labels)
    px = _text_px(size)
    pad, gap, row_h = max(4, px // 2), max(4, px // 2), round(px * 1.6)
    texts = [f"{label}  {share:.0%}" for label, _, _, share in rows]
    max_text = size[0] - 2 * pad - px - gap
    texts = [_fit(t, px, max_text) for t in texts]
    col_w = px + gap + max((text_size(t, px)[0] for t in texts), default=0) + 2 * pad
    cols = max(1, min(len(rows), (size[0] - pad) // max(col_w, 1)))
    n_rows = math.ceil(len(rows) / cols)
    title_lines = _wrap(title, px, size[0] - 2 * pad) if title else []  # wrapped, not cut
    title_h = row_h + round(px * 1.25) * (len(title_lines) - 1) if title else 0
    out = Image.new("RGB", (size[0], size[1] + 2 * pad + title_h + n_rows * row_h), BG)
    out.paste(Image.fromarray(blended.numpy(), "RGB"), (0, 0))
    d = ImageDraw.Draw(out)
    top = size[1] + pad
    _draw_lines(out, (pad, top), title_lines, px, MUTED)
    top += title_h
    entries = []
    for k, ((label, colour, tokens, share), text) in enumerate(zip(rows, texts, strict=True)):
        col, row = divmod(k, n_rows)
        x, y = pad + col * col_w, top + row * row_h
        swatch = (x, y, x + px, y + px)
        d.rectangle((swatch[0], swatch[1], swatch[2] - 1, swatch[3] - 1), fill=colour, outline=(90, 90, 90))
        box = draw_text(out, (x + px + gap, y), text, px)
        entries.append(LegendEntry(label, colour, tokens, share, swatch, box))
    return out, entries


def region_map(image: Image.Image, regions: torch.Tensor, labels: Sequence[str], *, alpha: float = 0.5,
               title: str | None = None) -> Image.Image:
    """The token regions ``(T, H, W)`` (one-hot, latent size) over ``image`` (the decoded result): each region
    upsampled (nearest) to the image and its colour blended in with ``alpha``; below, a legend with a swatch,
    the label and the share of the image for every label that owns at least one cell. Regions with the same
    label (the pieces of one word, the start/padding tokens, a word given twice in one chunk) share one
    colour and one legend row. ``labels``: one per token position (``token_labels``)."""
    return draw_region_map(image, regions, labels, alpha=alpha, title=title)[0]


# ------------------------------------------------------------------------------------------------------
# rate map


@dataclass(frozen=True)
class RateLegend:
    """Where ``rate_map`` drew what: the heat map (``map_box``), the colour bar (``bar``, ``lo`` at its left
    end, ``hi`` at its right end) and the printed ``lo_text``/``hi_text`` (boxes ``lo_box``/``hi_box``)."""

    lo: float
    hi: float
    lo_text: str
    hi_text: str
    map_box: Box
    bar: Box
    lo_box: Box
    hi_box: Box


def draw_rate_map(rate: torch.Tensor, *, size: tuple[int, int] | None = None, title: str | None = None
                  ) -> tuple[Image.Image, RateLegend]:
    """``rate_map`` and where its parts are."""
    while rate.dim() > 2 and rate.shape[0] == 1:
        rate = rate[0]
    if rate.dim() != 2:
        raise ValueError(f"rate must be (H, W), got {tuple(rate.shape)}")
    rate = rate.detach().float().cpu()
    if size is None:
        size = (rate.shape[1] * 8, rate.shape[0] * 8)  # latent -> pixels
    lo, hi = float(rate.min()), float(rate.max())
    heat = _nearest(colormap(rate, lo, hi), size)
    px = _text_px(size)
    pad = max(4, px // 2)
    bar_h = px
    caption = _wrap(title or "S-CFG rate (scale = CFG x rate; 1 = plain CFG)", px, size[0] - 2 * pad)  # not cut
    title_h = round(px * 1.6) + round(px * 1.25) * (len(caption) - 1)
    out = Image.new("RGB", (size[0], size[1] + 2 * pad + title_h + bar_h + pad // 2 + round(px * 1.4)), BG)
    out.paste(Image.fromarray(heat.numpy(), "RGB"), (0, 0))
    d = ImageDraw.Draw(out)
    top = size[1] + pad
    _draw_lines(out, (pad, top), caption, px, MUTED)
    top += title_h
    x0, x1 = pad, size[0] - pad
    bar = colormap(torch.linspace(lo, hi, x1 - x0)[None].expand(bar_h, -1), lo, hi)
    out.paste(Image.fromarray(bar.contiguous().numpy(), "RGB"), (x0, top))
    bar_box = (x0, top, x1, top + bar_h)
    y = top + bar_h + pad // 2
    lo_text, hi_text = f"{lo:.3f}", f"{hi:.3f}"
    lo_box = draw_text(out, (x0, y), lo_text, px)
    hi_w = text_size(hi_text, px)[0]
    hi_box = draw_text(out, (x1 - hi_w, y), hi_text, px)
    if lo < 1.0 < hi:  # rate 1 = plain CFG: a tick, labelled where it does not run into min/max
        x = x0 + round((1.0 - lo) / (hi - lo) * (x1 - x0 - 1))
        d.line([(x, top - pad // 2), (x, top + bar_h + pad // 4)], fill=INK, width=max(1, px // 12))
        one_w = text_size("1", px)[0]
        if lo_box[2] + px < x - one_w // 2 and x + one_w // 2 + px < hi_box[0]:
            draw_text(out, (x - one_w // 2, y), "1", px)
    return out, RateLegend(lo, hi, lo_text, hi_text, (0, 0, size[0], size[1]), bar_box, lo_box, hi_box)


def rate_map(rate: torch.Tensor, *, size: tuple[int, int] | None = None, title: str | None = None
             ) -> Image.Image:
    """The rate ``(H, W)`` (or ``(1, H, W)``) as a viridis heat map of ``size = (width, height)`` (default 8x
    the latent, nearest), with a colour bar below from ``rate.min()`` (left, darkest) to ``rate.max()``
    (right, yellow), both printed with 3 decimals, and a tick at 1 (plain CFG) when it is in range."""
    return draw_rate_map(rate, size=size, title=title)[0]
