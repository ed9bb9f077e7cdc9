"""The miniature world: seeded captioned scenes with exact masks, and a checker for generated images.

Pure numpy/torch (scipy for connected components), no WebUI imports.

* A scene is 1-3 objects on a plain ground, ``SIZE`` x ``SIZE`` RGB (32x32: the "latent" of the miniature model
  is the image itself, so S-CFG's segmentation grid, latent/4, is 8x8 and latent/8 is 4x4). Objects are a
  ``SHAPES`` shape in one of ``COLOURS``, axis-aligned in a square box of 10-18 px (12-18 for one object, 10-16
  for two, 10-14 for three: 2.5-4.5 cells of the 8x8 grid across), boxes at least ``GAP`` px apart; the ground is
  one of ``GROUNDS``, whose colours are far from every object colour (smallest RGB distance between any two
  palette entries: 0.47 on a 0..1 scale). The colours of one scene are distinct, shapes may repeat.
* Caption grammar: ``a <colour> <shape>`` joined by ``and`` in drawing order, then ``on <ground>`` with
  probability ``p_ground`` (e.g. "a red circle and a blue square on grey", "a yellow triangle"). Vocabulary:
  ``VOCAB`` (13 words).
* Masks are exact: every pixel is either one object's colour or the ground's (shapes are rasterised at pixel
  centres, no antialiasing), later objects occlude earlier ones and the mask of an object is what is visible,
  so the masks are disjoint and cover the image. ``grid_fractions`` brings a mask to S-CFG's grid (area
  fraction per cell).
* Deterministic on any machine: only ``random.Random.random()`` is used, whose sequence Python guarantees for a
  given seed across versions and platforms, and everything else is exact integer/float arithmetic.
* ``check(image, objects)``: segments an image by the nearest palette colour, takes 4-connected components of
  at least ``MIN_AREA`` px, classifies each one's shape from its bounding box (fill ratio, top/bottom width
  taper, aspect) and compares with the prompted objects: each present with its colour and shape, nothing
  unprompted, and (when asked) the right ground.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

SIZE = 32  # image side in pixels (= the miniature model's latent side)
# object colours and grounds, 0..255 RGB, pairwise far apart (>= 120 in 0..255 RGB distance)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
GROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
FUNCTION_WORDS = ("a", "and", "on")
VOCAB = (*FUNCTION_WORDS, *COLOURS, *SHAPES, *GROUNDS)
SIZE_RANGE = {1: (12, 18), 2: (10, 16), 3: (10, 14)}  # box side per object count, inclusive
GAP = 1  # smallest distance in px between two objects' boxes (0 lets boxes touch; negative lets them overlap)
MARGIN = 1  # smallest distance in px between a box and the image border
MIN_AREA = 16  # px: smaller components are noise to the checker (one 8x8-grid cell; the smallest object is ~50)


# ------------------------------------------------------------------------------------------------------
# scenes


class Rng:
    """Seeded randomness from ``random.Random.random()`` only (the one method whose sequence Python keeps)."""

    def __init__(self, seed: int):
        self._r = random.Random(seed)

    def random(self) -> float:
        return self._r.random()

    def below(self, n: int) -> int:
        return min(int(self._r.random() * n), n - 1)

    def between(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        return lo + self.below(hi - lo + 1)

    def pick(self, items: Sequence):
        return items[self.below(len(items))]

    def sample(self, items: Sequence, k: int) -> list:
        pool, out = list(items), []
        for _ in range(k):
            out.append(pool.pop(self.below(len(pool))))
        return out


@dataclass(frozen=True)
class Obj:
    """An object: ``shape`` in ``colour`` inscribed in the box ``[x0, x0 + size) x [y0, y0 + size)`` (px)."""

    colour: str
    shape: str
    x0: int
    y0: int
    size: int

    def box(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x0 + self.size, self.y0 + self.size

    def mask(self, side: int = SIZE) -> np.ndarray:
        """The full shape (before occlusion), ``(side, side)`` bool, sampled at pixel centres."""
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
        s = float(self.size)
        x0, y0 = float(self.x0), float(self.y0)
        inside = (xs >= x0) & (xs <= x0 + s) & (ys >= y0) & (ys <= y0 + s)
        if self.shape == "square":
            return inside
        cx, cy = x0 + s / 2, y0 + s / 2
        if self.shape == "circle":
            return inside & ((xs - cx) ** 2 + (ys - cy) ** 2 <= (s / 2) ** 2)
        if self.shape == "triangle":  # apex up at the top centre, base along the bottom edge
            return inside & (np.abs(xs - cx) <= (ys - y0) / 2)
        raise ValueError(f"unknown shape {self.shape!r}")


@dataclass(frozen=True)
class Scene:
    """Objects in drawing (= caption) order, the ground, and whether the caption names the ground."""

    objects: tuple[Obj, ...]
    ground: str
    mention_ground: bool = True
    side: int = SIZE

    def words(self) -> list[str]:
        out: list[str] = []
        for i, o in enumerate(self.objects):
            out += (["and"] if i else []) + ["a", o.colour, o.shape]
        if self.mention_ground:
            out += ["on", self.ground]
        return out

    @property
    def caption(self) -> str:
        return " ".join(self.words())

    def word_targets(self) -> list[int | None]:
        """For each caption word, the index into ``masks()`` of what it names: object ``i`` for its colour and
        shape words, ``len(objects)`` (the ground) for the ground word, ``None`` for ``a``/``and``/``on``.
        With the miniature tokenizer, word ``k`` is at context position ``k + 1`` (after the start token)."""
        out: list[int | None] = []
        for i, _ in enumerate(self.objects):
            out += ([None] if i else []) + [None, i, i]
        if self.mention_ground:
            out += [None, len(self.objects)]
        return out

    def masks(self) -> torch.Tensor:
        """``(n + 1, side, side)`` bool: each object's visible part (caption order), then the ground; disjoint
        and covering every pixel."""
        label = self.label_map()
        n = len(self.objects)
        return torch.from_numpy(np.stack([label == k for k in range(n + 1)]))

    def label_map(self) -> np.ndarray:
        """``(side, side)`` int64: the index of the object visible at each pixel, ``len(objects)`` = ground."""
        label = np.full((self.side, self.side), len(self.objects), dtype=np.int64)
        for k, o in enumerate(self.objects):  # later objects are drawn over earlier ones
            label[o.mask(self.side)] = k
        return label

    def render(self) -> torch.Tensor:
        """The image, ``(3, side, side)`` float32 in [0, 1] (exactly ``colour / 255``)."""
        palette = np.array([COLOURS[o.colour] for o in self.objects] + [GROUNDS[self.ground]], dtype=np.float32)
        rgb = palette[self.label_map()] / np.float32(255)
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def make_scene(seed: int, objects: int | None = None, p_ground: float = 0.5, side: int = SIZE,
               gap: int = GAP) -> Scene:
    """The scene of ``seed``: ``objects`` objects (default: 1, 2 or 3, equally likely), distinct colours,
    sizes from ``SIZE_RANGE``, boxes ``gap`` px apart and ``MARGIN`` px inside the border."""
    rng = Rng(seed)
    n = objects if objects is not None else rng.between(1, 3)
    if not 1 <= n <= len(COLOURS):
        raise ValueError(f"objects must be 1..{len(COLOURS)}, got {n}")
    colours = rng.sample(list(COLOURS), n)
    shapes = [rng.pick(SHAPES) for _ in range(n)]
    lo, hi = SIZE_RANGE.get(n, SIZE_RANGE[3])
    lo, hi = lo * side // SIZE, hi * side // SIZE
    for attempt in range(1000):
        shrink = attempt // 20  # very rarely the boxes do not fit: make them smaller
        boxes: list[tuple[int, int, int]] = []
        for _ in range(n):
            s = max(4, rng.between(lo, hi) - shrink)
            # every position that keeps the box inside and apart from the boxes placed so far, row-major
            span = range(MARGIN, side - MARGIN - s + 1)
            free = [(x0, y0) for y0 in span for x0 in span
                    if all(_apart((x0, y0, x0 + s, y0 + s), (bx, by, bx + bs, by + bs), gap) for bx, by, bs in boxes)]
            if not free:
                break
            x0, y0 = rng.pick(free)
            boxes.append((x0, y0, s))
        if len(boxes) == n:
            break
    else:  # pragma: no cover - cannot happen with the default sizes
        raise RuntimeError(f"could not place {n} objects in {side}x{side}")
    ground = rng.pick(list(GROUNDS))
    mention = rng.random() < p_ground
    objs = tuple(Obj(c, sh, x0, y0, s) for c, sh, (x0, y0, s) in zip(colours, shapes, boxes, strict=True))
    return Scene(objs, ground, mention, side)


def scene_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` of the stream ``seed`` (distinct streams and indices do not collide for
    indices below 2**32)."""
    return seed * 2**32 + index


def scenes(seed: int, count: int | None = None, start: int = 0, **kwargs) -> Iterator[Scene]:
    """Scenes ``start, start + 1, ...`` of the stream ``seed`` (endless when ``count`` is None)."""
    i = start
    while count is None or i < start + count:
        yield make_scene(scene_seed(seed, i), **kwargs)
        i += 1


def batch(seed: int, start: int, count: int, **kwargs) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """``count`` scenes of stream ``seed`` from ``start``: images ``(count, 3, side, side)``, captions, scenes."""
    sc = list(scenes(seed, count, start, **kwargs))
    return torch.stack([s.render() for s in sc]), [s.caption for s in sc], sc


def parse_caption(caption: str) -> tuple[list[tuple[str, str]], str | None]:
    """The ``(colour, shape)`` objects and the ground (or None) of a caption in the world's grammar."""
    words = caption.lower().split()
    objects: list[tuple[str, str]] = []
    ground = None
    i = 0
    while i < len(words):
        if words[i] == "and" and objects:
            i += 1
        if i + 2 < len(words) and words[i] == "a" and words[i + 1] in COLOURS and words[i + 2] in SHAPES:
            objects.append((words[i + 1], words[i + 2]))
            i += 3
        elif i + 1 < len(words) and words[i] == "on" and words[i + 1] in GROUNDS and i + 2 == len(words):
            ground = words[i + 1]
            i += 2
        else:
            raise ValueError(f"not a caption of the miniature world: {caption!r} (at word {i + 1})")
    if not objects:
        raise ValueError(f"a caption names at least one object: {caption!r}")
    return objects, ground


# ------------------------------------------------------------------------------------------------------
# masks on S-CFG's grid


def grid_fractions(mask: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """Area fraction of ``mask`` (``(..., H, W)``, bool or float) in each cell of a ``grid`` (e.g. 8 for S-CFG's
    latent/4 grid of a 32x32 latent): ``(..., gh, gw)`` float32. Exact when the grid divides the image."""
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    m = mask.float()
    lead = m.shape[:-2]
    h, w = m.shape[-2:]
    m = m.reshape(-1, 1, h, w)
    if h % gh == 0 and w % gw == 0:
        out = m.reshape(-1, 1, gh, h // gh, gw, w // gw).mean(dim=(3, 5))
    else:
        out = torch.nn.functional.adaptive_avg_pool2d(m, (gh, gw))
    return out.reshape(*lead, gh, gw)


def grid_owner(masks: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """The index of the mask covering most of each cell (``masks``: ``(K, H, W)``) on ``grid``: ``(gh, gw)``."""
    return grid_fractions(masks, grid).argmax(0)


# ------------------------------------------------------------------------------------------------------
# checking generated images


@dataclass
class Blob:
    """A connected component of one palette colour."""

    colour: str
    shape: str  # one of SHAPES, or "unknown"
    area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    fill: float  # area of the hole-filled component / bounding-box area
    taper: float  # mean width of the top third of rows / mean width of the bottom third


@dataclass
class CheckResult:
    ok: bool
    blobs: list[Blob]  # the object-coloured components of at least MIN_AREA px
    ground: str | None  # the dominant ground colour
    reasons: list[str] = field(default_factory=list)  # why not ok

    def __bool__(self) -> bool:
        return self.ok


_PALETTE_NAMES = (*COLOURS, *GROUNDS)
_PALETTE = np.array([*COLOURS.values(), *GROUNDS.values()], dtype=np.float32) / 255


def _as_hwc(image) -> np.ndarray:
    a = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected one RGB image (3, H, W) or (H, W, 3), got shape {a.shape}")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.max() > 1.5:  # 0..255
        a = a / 255
    return a


def palette_labels(image) -> np.ndarray:
    """Index into ``(*COLOURS, *GROUNDS)`` of the nearest palette colour of each pixel, ``(H, W)``."""
    a = _as_hwc(image)
    d = ((a[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def classify_shape(component: np.ndarray) -> tuple[str, float, float]:
    """``(shape, fill, taper)`` of a component mask (``(H, W)`` bool, holes already filled)."""
    ys, xs = np.nonzero(component)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    crop = component[y0:y1, x0:x1]
    fill = float(crop.sum()) / float(h * w)
    widths = crop.sum(1).astype(np.float64)
    third = max(1, h // 3)
    taper = float(widths[:third].mean() / max(widths[-third:].mean(), 1e-9))
    if min(h, w) < 0.6 * max(h, w) or min(h, w) < 4:
        return "unknown", fill, taper
    if taper < 0.6 and 0.35 <= fill <= 0.7:
        return "triangle", fill, taper
    if taper >= 0.75 and fill >= 0.9:
        return "square", fill, taper
    if taper >= 0.75 and 0.65 <= fill < 0.9:
        return "circle", fill, taper
    return "unknown", fill, taper


def find_blobs(image, min_area: int = MIN_AREA) -> tuple[list[Blob], str | None, list[tuple[str, int]]]:
    """Object-coloured components of ``image`` of at least ``min_area`` px, the dominant ground colour, and
    ``(ground colour, area)`` of components of any other ground colour of at least ``min_area`` px."""
    from scipy import ndimage

    labels = palette_labels(image)
    blobs: list[Blob] = []
    n_obj = len(COLOURS)
    for k, name in enumerate(COLOURS):
        comp, count = ndimage.label(labels == k)
        for j in range(1, count + 1):
            m = comp == j
            area = int(m.sum())
            if area < min_area:
                continue
            filled = ndimage.binary_fill_holes(m)
            shape, fill, taper = classify_shape(filled)
            ys, xs = np.nonzero(filled)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            blobs.append(Blob(name, shape, area, box, fill, taper))
    ground_counts = np.bincount(labels[labels >= n_obj].ravel() - n_obj, minlength=len(GROUNDS))
    ground = list(GROUNDS)[int(ground_counts.argmax())] if ground_counts.sum() else None
    foreign: list[tuple[str, int]] = []
    for k, name in enumerate(GROUNDS):
        if name == ground:
            continue
        comp, count = ndimage.label(labels == n_obj + k)
        for j in range(1, count + 1):
            area = int((comp == j).sum())
            if area >= min_area:
                foreign.append((name, area))
    return blobs, ground, foreign


def _expected(objects) -> list[tuple[str, str]]:
    if isinstance(objects, Scene):
        objects = objects.objects
    if isinstance(objects, str):
        return parse_caption(objects)[0]
    out = []
    for o in objects:
        out.append((o.colour, o.shape) if isinstance(o, Obj) else (str(o[0]), str(o[1])))
    return out


def check(image, objects: Scene | str | Iterable[Obj | tuple[str, str]], ground: str | None = None,
          min_area: int = MIN_AREA) -> CheckResult:
    """Does ``image`` (``(3, H, W)``/``(H, W, 3)`` in [0, 1], torch or numpy) show exactly ``objects``?

    ``objects``: a ``Scene``, a caption, or ``(colour, shape)`` pairs / ``Obj``. Every prompted object must be
    one component of its colour with its shape; no other component of at least ``min_area`` px of an object
    colour or of a second ground colour may exist; with ``ground`` (or a caption naming one), the dominant ground
    colour must be that one. Objects of the same colour are matched as a multiset of shapes.
    """
    if isinstance(objects, str) and ground is None:
        ground = parse_caption(objects)[1]
    expected = _expected(objects)
    blobs, found_ground, foreign = find_blobs(image, min_area)
    reasons: list[str] = []
    want = Counter(expected)
    have = Counter((b.colour, b.shape) for b in blobs)
    for (colour, shape), n in sorted(want.items()):
        if have[(colour, shape)] < n:
            got = sorted(b.shape for b in blobs if b.colour == colour)
            reasons.append(f"missing {colour} {shape}" + (f" (found {colour}: {', '.join(got)})" if got else ""))
    for (colour, shape), n in sorted(have.items()):
        if n > want[(colour, shape)]:
            reasons.append(f"unprompted {colour} {shape}" + (f" x{n - want[(colour, shape)]}" if n > 1 else ""))
    for name, area in foreign:
        reasons.append(f"unprompted {name} patch ({area} px)")
    if ground is not None and found_ground != ground:
        reasons.append(f"ground is {found_ground}, not {ground}")
    return CheckResult(not reasons, blobs, found_ground, reasons)
