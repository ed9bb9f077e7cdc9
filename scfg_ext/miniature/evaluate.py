"""Measuring S-CFG on the miniature model against the world's exact masks (used by ``bench/quality.py``, the
tests and the demo; no WebUI imports).

* ``noised``: a ground-truth scene as the sampler sees it at noise level ``sigma`` (``x0 + sigma * eps``), so the
  maps of one model call can be scored against masks that are exact for that call's image.
* ``one_call``: one CFG model call (cond rows first, uncond last, A1111's layout) with S-CFG's capture on: the
  ``StepMaps`` (regions, foreground, rate per image) and the model outputs.
* ``sample_recording``: text-to-image sampling, plain or S-CFG, keeping every step's ``StepMaps``.
* ``object_ious`` / ``word_region``: each object's region = the cells owned by its words' tokens (colour and
  shape), IoU with its mask at latent resolution; the foreground likewise against the union of the named
  regions (the objects, and the ground when the caption names it: S-CFG's foreground is what the words own).
* ``region_norms``: the mean per-pixel channel norm of a map (``cond - uncond``, or the rate times it) over
  each ground-truth region: the paper's Figure 1 in numbers.
* ``colour_masks``: masks of a *generated* image, one per prompted object, from the world's palette (the
  objects of a scene have distinct colours), for scoring maps taken along a generation.
* ``wilson``: a 95 % confidence interval for an accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..capture import AttentionCapture, Cond
from ..guidance import ScfgRun, StepMaps
from ..settings import Settings
from . import model as MM
from . import world as W

EVAL_STREAM = 1  # the scene stream that benchmarks, tests and the demo draw from; training must use another


@dataclass
class Miniature:
    """The loaded model: text encoder, U-Net, tokenizer and the k-diffusion denoiser on SD's schedule."""

    text_encoder: torch.nn.Module
    net: torch.nn.Module
    tokenizer: MM.Tokenizer
    denoiser: torch.nn.Module
    sha256: str | None = None
    path: Path | None = None  # the weights file
    capture: dict = field(default_factory=dict)  # AttentionCapture options of every run (background, blocks, pool)

    def scfg_run(self, settings: Settings, **kwargs) -> ScfgRun:
        run = ScfgRun(settings, **kwargs)
        if self.capture:
            run.capture = AttentionCapture(settings.refine, settings.foreground, **self.capture)
        return run

    @classmethod
    def load(cls, path=None, sha256=None) -> Miniature:
        from .. import testbed

        te, net, meta = MM.load(path, sha256)
        return cls(te, net, meta.tokenizer, testbed.k_denoiser(net), meta.sha256, meta.path)

    def contexts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return MM.contexts(self.text_encoder, self.tokenizer, list(prompts))

    def sigmas(self, steps: int) -> torch.Tensor:
        return self.denoiser.get_sigmas(steps)


def noised(scenes: Sequence[W.Scene], sigma: float, seed: int = 0) -> torch.Tensor:
    """``(B, 4, H, W)``: each scene's latent plus ``sigma`` times seeded unit noise."""
    x0 = MM.to_latent(torch.stack([s.render() for s in scenes]))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return x0 + sigma * noise


class _Recorder(torch.nn.Module):
    """A k-diffusion model around ``testbed.CFGModel`` that keeps each call's ``StepMaps`` (None when S-CFG
    did not guide that call)."""

    def __init__(self, cfg_model, run: ScfgRun | None, rates_only: bool = False):
        super().__init__()
        self.cfg_model, self.run, self.rates_only = cfg_model, run, rates_only
        self.maps: list[StepMaps | None] = []

    def forward(self, x, sigma, **kwargs):
        out = self.cfg_model(x, sigma, **kwargs)
        if self.run is not None:
            maps = self.run.last_maps
            if maps is not None and self.rates_only:  # a batch's regions at every step take gigabytes
                maps = StepMaps({}, {}, maps.rate)
            self.maps.append(maps)
            self.run.last_maps = None
        return out


def _cfg_model(mini: Miniature, prompts: Sequence[str], cfg_scale: float, run: ScfgRun | None, steps: int):
    from .. import testbed

    cond, uncond = mini.contexts(prompts)
    return testbed.CFGModel(mini.denoiser, cond, uncond, cfg_scale, run=run, total_steps=steps)


def one_call(mini: Miniature, prompts: Sequence[str], x: torch.Tensor, sigma: float, cfg_scale: float = 7.5,
             settings: Settings | None = None, token_weights: dict | None = None, capture: dict | None = None
             ) -> tuple[StepMaps, torch.Tensor, torch.Tensor]:
    """S-CFG's maps of one model call on ``x`` at ``sigma``, and the uncond and cond denoised outputs
    (``(B, 4, H, W)`` each). ``capture``: ``AttentionCapture`` options over ``mini.capture``."""
    settings = settings or Settings(enabled=True)
    if capture:
        mini = dataclasses.replace(mini, capture={**mini.capture, **capture})
    run = mini.scfg_run(settings, keep_maps=True, token_weights=token_weights)
    model = _cfg_model(mini, prompts, cfg_scale, run, 1)
    outputs = {}

    def keep(module, args, output):
        outputs["out"] = output

    handle = mini.denoiser.register_forward_hook(keep)
    try:
        with torch.no_grad(), run.attached(mini.net):
            model(x, torch.full((x.shape[0],), float(sigma)))
    finally:
        handle.remove()
    if run.last_maps is None:
        raise RuntimeError("S-CFG did not guide the call (no maps captured)")
    b = x.shape[0]
    out = outputs["out"]
    return run.last_maps, out[b:], out[:b]


def sample_recording(mini: Miniature, prompts: Sequence[str], seed: int, steps: int = 20, cfg_scale: float = 7.5,
                     settings: Settings | None = None, token_weights: dict | None = None,
                     noise: torch.Tensor | None = None, score_norms: list | None = None, rates_only: bool = False
                     ) -> tuple[torch.Tensor, list[StepMaps | None]]:
    """Latents ``(B, 4, H, W)`` from Euler sampling (plain CFG when ``settings`` is None or disabled) and the
    maps of every step S-CFG ran (None for a step it did not guide; none at all for plain CFG); ``rates_only``:
    the maps keep only the rate. ``score_norms``: a list that gets, per step, the per-pixel channel norm of the
    classifier score ``cond - uncond`` of each image, ``(B, H, W)``."""
    from .. import testbed

    if score_norms is not None:
        def keep(module, args, output):
            b = output.shape[0] // 2
            score_norms.append(torch.linalg.vector_norm((output[:b] - output[b:]).float(), dim=1))

        handle = mini.denoiser.register_forward_hook(keep)
        try:
            return sample_recording(mini, prompts, seed, steps, cfg_scale, settings, token_weights, noise,
                                    rates_only=rates_only)
        finally:
            handle.remove()

    sampling, _ = testbed.import_k_diffusion()
    run = None
    if settings is not None and settings.enabled:
        run = mini.scfg_run(settings, keep_maps=True, token_weights=token_weights)
    model = _Recorder(_cfg_model(mini, prompts, cfg_scale, run, steps), run, rates_only)
    sigmas = mini.sigmas(steps)
    if noise is None:
        noise = torch.randn((len(prompts), 4, W.SIZE, W.SIZE), generator=torch.Generator().manual_seed(seed))
    x = noise * sigmas[0]
    with torch.no_grad():
        if run is None:
            return sampling.sample_euler(model, x, sigmas, disable=True), []
        with run.attached(mini.net):
            return sampling.sample_euler(model, x, sigmas, disable=True), model.maps


# ------------------------------------------------------------------------------------------------------
# scores


def word_positions(scene: W.Scene, first: int = 1) -> list[list[int]]:
    """Context positions of the words naming each mask of ``scene.masks()`` (objects, then the ground; the
    ground's list is empty when the caption does not name it). ``first``: the first word's position (1 after a
    start-of-text token, ``Tokenizer.first_word``)."""
    out: list[list[int]] = [[] for _ in range(len(scene.objects) + 1)]
    for k, target in enumerate(scene.word_targets()):
        if target is not None:
            out[target].append(k + first)
    return out


def word_region(regions: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """``(H, W)`` bool: the cells owned by any token in ``positions`` (``regions`` one-hot ``(T, H, W)``)."""
    if not positions:
        return torch.zeros(regions.shape[-2:], dtype=torch.bool)
    return regions[list(positions)].sum(0) > 0


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


@dataclass
class SceneScores:
    objects: list[float]  # IoU per object (caption order)
    ground: float | None  # IoU of the ground word's region with the ground mask (None: not named)
    foreground: float  # IoU of S-CFG's foreground with the union of the named regions


def scene_scores(maps: StepMaps, row: int, scene: W.Scene, masks: torch.Tensor | None = None, first: int = 1
                 ) -> SceneScores:
    """IoUs of image ``row``'s token regions (``maps``, key ``Cond(row)``) with ``masks`` (default the scene's
    exact masks: objects, then ground; ``(n + 1, H, W)`` bool at latent resolution); ``first`` as for
    ``word_positions``."""
    masks = scene.masks() if masks is None else masks
    regions = maps.regions[Cond(row)].cpu()
    positions = word_positions(scene, first)
    n = len(scene.objects)
    objects = [iou(word_region(regions, positions[i]), masks[i]) for i in range(n)]
    ground = iou(word_region(regions, positions[n]), masks[n]) if positions[n] else None
    fg = maps.foreground[Cond(row)][0].cpu() > 0
    named = masks[: n + 1] if positions[n] else masks[:n]
    return SceneScores(objects, ground, iou(fg, named.any(0)))


def region_norms(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel channel-L2 norm of ``values`` (``(C, H, W)``) over each mask (``(K, H, W)`` bool): ``(K,)``."""
    norm = torch.linalg.vector_norm(values.float(), dim=0)
    m = masks.float()
    return (m * norm).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)


def colour_masks(rgb: torch.Tensor, scene: W.Scene) -> torch.Tensor:
    """``(n + 1, H, W)`` bool masks of a generated image (``(3, H, W)`` in [0, 1]): the pixels nearest each
    prompted object's palette colour, then all the others (the ground)."""
    labels = W.palette_labels(rgb)
    names = list(W.COLOURS) + list(W.GROUNDS)
    out = [torch.from_numpy(labels == names.index(o.colour)) for o in scene.objects]
    out.append(~torch.stack(out).any(0))
    return torch.stack(out)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


# ------------------------------------------------------------------------------------------------------
# graded scores of a generated image (the verdict table)

OVERSHOOT = 0.05  # an RGB value this far outside [0, 1] before clamping counts as over-saturated
SHAPE_NAMES = (*W.SHAPES, "unknown")


@dataclass
class ImageScores:
    """What the world's checker and palette say about one generated image of a scene."""

    ok: bool  # the strict checker: every object with its colour and shape, nothing unprompted, the named ground
    colour_present: list[bool]  # per prompted object: a blob of its colour (at least the minimum area)
    shape_right: list[bool]  # per prompted object: a blob of its colour with its shape
    ground_right: bool | None  # the dominant ground colour is the named one (None: the caption names none)
    unprompted_blobs: int  # object-colour blobs beyond the prompted ones, and patches of a second ground colour
    unprompted_pixels: float  # share of pixels nearest an object colour the prompt does not name
    palette_distance: float  # mean RGB distance of the (clamped) pixels from their nearest palette colour
    overshoot: float  # share of RGB values more than OVERSHOOT outside [0, 1] before clamping
    overshoot_ground: float  # the same over the pixels nearest a ground colour
    features: np.ndarray  # the image's colour and shape statistics (``image_features``)

    @property
    def all_colours(self) -> bool:
        return all(self.colour_present)

    @property
    def colour_scene(self) -> bool:
        """The checker with shape ignored: every prompted colour present, nothing unprompted, the named ground."""
        return self.all_colours and self.unprompted_blobs == 0 and self.ground_right is not False


def image_features(rgb: torch.Tensor, blobs: Sequence[W.Blob]) -> np.ndarray:
    """Colour and shape statistics of an image (``(3, H, W)`` in [0, 1]) and its object blobs: the share of
    pixels nearest each palette colour (7), the number of object blobs and of each shape among them (1 + 4),
    and the mean distance of the pixels from their nearest palette colour (1). Exact for a true scene."""
    labels = W.palette_labels(rgb)
    names = list(W.COLOURS) + list(W.GROUNDS)
    shares = np.bincount(labels.ravel(), minlength=len(names)) / labels.size
    shapes = [sum(b.shape == s for b in blobs) for s in SHAPE_NAMES]
    return np.array([*shares, len(blobs), *shapes, palette_distance(rgb)], dtype=np.float64)


def palette_distance(rgb: torch.Tensor) -> float:
    """Mean RGB distance of each pixel of ``rgb`` (``(3, H, W)``) from its nearest palette colour."""
    a = rgb.detach().float().permute(1, 2, 0).reshape(-1, 3).numpy()
    palette = np.array([*W.COLOURS.values(), *W.GROUNDS.values()], dtype=np.float32) / 255
    return float(np.sqrt(((a[:, None] - palette[None]) ** 2).sum(-1)).min(1).mean())


def score_image(raw: torch.Tensor, scene: W.Scene, min_area: int = W.MIN_AREA) -> ImageScores:
    """Scores of a generated image of ``scene``; ``raw``: its RGB ``(3, H, W)`` before clamping to [0, 1]."""
    rgb = raw.clamp(0, 1)
    blobs, ground, foreign = W.find_blobs(rgb, min_area)
    result = W.check(rgb, scene, scene.ground if scene.mention_ground else None, min_area)
    prompted = {o.colour: o for o in scene.objects}
    colour_present = [any(b.colour == o.colour for b in blobs) for o in scene.objects]
    shape_right = [any(b.colour == o.colour and b.shape == o.shape for b in blobs) for o in scene.objects]
    per_colour = {c: sum(b.colour == c for b in blobs) for c in W.COLOURS}
    extra = sum(n - (1 if c in prompted else 0) for c, n in per_colour.items() if n > (1 if c in prompted else 0))
    labels = W.palette_labels(rgb)
    names = list(W.COLOURS)
    unprompted = np.isin(labels, [names.index(c) for c in W.COLOURS if c not in prompted]).mean()
    beyond = ((raw < -OVERSHOOT) | (raw > 1 + OVERSHOOT)).numpy()  # (3, H, W)
    on_ground = labels >= len(W.COLOURS)
    return ImageScores(
        ok=bool(result), colour_present=colour_present, shape_right=shape_right,
        ground_right=(ground == scene.ground) if scene.mention_ground else None,
        unprompted_blobs=extra + len(foreign), unprompted_pixels=float(unprompted),
        palette_distance=palette_distance(rgb), overshoot=float(beyond.mean()),
        overshoot_ground=float(beyond[:, on_ground].mean()) if on_ground.any() else 0.0,
        features=image_features(rgb, blobs))


def true_features(scenes: Sequence[W.Scene], min_area: int = W.MIN_AREA) -> np.ndarray:
    """``image_features`` of the scenes' true renders, ``(len(scenes), features)``."""
    out = []
    for s in scenes:
        rgb = s.render()
        out.append(image_features(rgb, W.find_blobs(rgb, min_area)[0]))
    return np.stack(out)


def score_spread(norms: torch.Tensor, masks: torch.Tensor, min_area: int = W.MIN_AREA) -> float | None:
    """The paper's Figure-1 statistic for one image at one step: max / min over its regions (``masks``
    ``(K, H, W)`` bool, those of at least ``min_area`` px) of the mean of ``norms`` (``(H, W)``); None with
    fewer than two such regions."""
    keep = masks.sum((1, 2)) >= min_area
    if int(keep.sum()) < 2:
        return None
    means = region_norms(norms[None], masks[keep])
    return float(means.max() / means.min().clamp_min(1e-12))
