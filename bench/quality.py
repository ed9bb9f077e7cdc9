"""S-CFG's quality on the trained miniature model, measured against the miniature world's exact masks.

    .venv/bin/python bench/quality.py            # all four tables (N=96 scenes; about 10 CPU minutes)
    .venv/bin/python bench/quality.py --n 24     # quicker, wider intervals

1. Region accuracy: IoU of S-CFG's token regions (each object = the cells of its colour and shape words; the
   ground = its word's cells, when the caption names it) and of its foreground (against the union of the named
   regions) with the exact masks, at the noise levels of the first, middle and last step of a ``--steps``
   Euler schedule, for each self-attention refinement. The image is the ground-truth scene noised to that
   level (``x0 + sigma eps``), so the masks are exact for what the model sees. Baselines: another scene's
   maps (what mixing up the batch's images would score) and a region covering the whole image.
   1b. The same along a generation from noise (S-CFG, default settings), scored against the final image's
   own colour masks.
2. The paper's observation (its Figure 1): the mean norm of the classifier score ``cond - uncond`` per
   ground-truth region (objects, ground) under plain CFG and its spread across the regions of one image
   (max/min, averaged over images); the same for the effective guidance ``rate * (cond - uncond)`` of S-CFG.
3. Text-image alignment (the paper's CLIP-score table in miniature): the world's checker on generated images
   (every prompted object present with its colour and shape, nothing unprompted, the named ground), plain CFG vs
   S-CFG from the same noise at CFG 3, 5, 7.5, 12: accuracy with a 95 % Wilson interval, and the images only
   one of the two got right.
5. For a diffusion transformer (``--weights`` a miniature DiT): the choices the paper leaves open there, which
   blocks' maps are read, which tokens are the background and the grid the maps are read at (the token grid,
   or latent/4 from every other query), scored as in table 1.
4. Per-word weights: ``"<colour> <shape>: 2"`` on the first object of scenes with two or more objects: the
   effective guidance norm per region with the weight over without it.
V. The verdict: does S-CFG make better images than plain CFG on this model? Paired (the same prompts and noise
   under both), at CFG 3, 5, 7.5, 12, with 95 % paired bootstrap intervals of the difference (scenes
   resampled; a scene's objects stay together) and the exact McNemar test on the scene-level yes/no measures:
   V1 colour binding with shape ignored (what a model that reads colours but not shapes can decide), V2 the
   strict checker and the graded scores, V3 image quality beyond alignment (Fréchet distance of the images'
   colour and shape statistics to true scenes', distance from the palette, over-saturation before clamping),
   V4 the paper's statistic on the same runs. ``--json`` writes the headline for the demo.
S. The settings sweep: the decisive measures of V for other S-CFG settings (``SWEEP``) against plain CFG.

    .venv/bin/python bench/quality.py --gate     # the word-swap sensitivity gate on the four committed models
    .venv/bin/python bench/quality.py --tables V --n 200 --threads 1 --json scfg_ext/miniature/verdict.json
    .venv/bin/python bench/quality.py --tables S --n 200 --sweep-cfgs 7.5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scfg_ext.capture import Cond  # noqa: E402
from scfg_ext.miniature import evaluate as E  # noqa: E402
from scfg_ext.miniature import model as MM  # noqa: E402
from scfg_ext.miniature import stats  # noqa: E402
from scfg_ext.miniature import world as W  # noqa: E402
from scfg_ext.settings import Settings  # noqa: E402
from scfg_ext.weights import parse_weights, token_weights  # noqa: E402

REFINES = ("none", "official", "paper")
CFGS = (3.0, 5.0, 7.5, 12.0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=96, help="scenes (prompts) per table")
    p.add_argument("--steps", type=int, default=20, help="Euler steps (the schedule whose levels table 1 uses)")
    p.add_argument("--cfg", type=float, default=7.5, help="CFG scale of tables 1, 2 and 4")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--weights", default=None, help="a miniature safetensors file (default: the committed one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tables", default="1234", help="which tables to run, e.g. 13")
    p.add_argument("--blocks", default=None, help="a diffusion transformer's blocks to read, e.g. 0,1 (default all)")
    p.add_argument("--background", default=None, help="the background tokens (capture.BACKGROUNDS)")
    p.add_argument("--pool", action="store_true", help="read a diffusion transformer's maps at latent/4")
    p.add_argument("--gate", action="store_true",
                   help="run the word-swap sensitivity gate (on the four committed models, or on --weights) and stop")
    p.add_argument("--sweep-cfgs", default="7.5", help="table S's CFG scales, comma separated")
    p.add_argument("--sweep", default=None, help="table S's settings, comma separated names of SWEEP (default all)")
    p.add_argument("--min-area", type=int, default=W.MIN_AREA, help="px: smaller blobs are noise to the scores")
    p.add_argument("--json", default=None, help="write table V's headline here (what the demo prints)")
    return p


def step_levels(mini: E.Miniature, steps: int) -> dict[str, tuple[int, float]]:
    sigmas = mini.sigmas(steps)
    return {name: (i, float(sigmas[i])) for name, i in (("first", 0), ("middle", steps // 2), ("last", steps - 1))}


def fmt(x: float) -> str:
    return "  -  " if x != x else f"{x:5.3f}"


def other(scenes, i: int) -> int | None:
    """The next scene after ``i`` with as many objects (its object words sit at the same positions)."""
    n = len(scenes)
    return next((j % n for j in range(i + 1, i + n) if len(scenes[j % n].objects) == len(scenes[i].objects)), None)


def table_regions(mini, scenes, levels, cfg, seed) -> None:
    prompts = [s.caption for s in scenes]
    print(f"\n## 1. Region accuracy: IoU with the exact masks (N={len(scenes)} scenes, noised ground truth, "
          f"CFG {cfg:g})")
    print("| step (sigma) | refine | objects | ground | foreground | objects, another scene's maps |")
    print("|---|---|---|---|---|---|")
    everything = E.mean([E.iou(torch.ones(W.SIZE, W.SIZE, dtype=torch.bool), s.masks()[i])
                         for s in scenes for i in range(len(s.objects))])
    first = mini.tokenizer.first_word
    for name, (_, sigma) in levels.items():
        x = E.noised(scenes, sigma, seed)
        for refine in REFINES:
            maps, _, _ = E.one_call(mini, prompts, x, sigma, cfg, Settings(enabled=True, refine=refine))
            scores = [E.scene_scores(maps, i, s, first=first) for i, s in enumerate(scenes)]
            shifted = [E.scene_scores(maps, j, s, first=first) for i, s in enumerate(scenes)
                       if (j := other(scenes, i)) is not None]
            print(f"| {name} ({sigma:.2f}) | {refine} | {fmt(E.mean([v for s in scores for v in s.objects]))} | "
                  f"{fmt(E.mean([s.ground for s in scores]))} | {fmt(E.mean([s.foreground for s in scores]))} | "
                  f"{fmt(E.mean([v for s in shifted for v in s.objects]))} (n={len(shifted)}) |")
    print(f"\nA region covering the whole image scores {everything:.3f} on the objects.")


def block_sets(depth: int) -> dict[str, list[int]]:
    """The block choices table 5 compares: all, each half, the middle third, each block alone."""
    third = max(1, depth // 3)
    sets = {"all": list(range(depth)), "first half": list(range(depth // 2)),
            "second half": list(range(depth // 2, depth)), "middle third": list(range(third, depth - third))}
    sets.update({f"block {i}": [i] for i in range(depth)})
    return sets


def table_dit_choices(mini, scenes, levels, cfg, seed) -> None:
    from scfg_ext.capture import BACKGROUNDS, find_attention_layers

    layers = find_attention_layers(mini.net)
    sets = block_sets(len(layers))
    prompts = [s.caption for s in scenes]
    first = mini.tokenizer.first_word
    # the family's default first: Anima's text has null padding and no start token, a NextDiT's (Lumina 2) has a
    # start token, an MMDiT's (Chroma) neither (it ends in </s>, with copies of it where a batch pads its rows)
    default = layers[0].background
    backgrounds = {"null": ("null", "end", "image"), "start": ("start", "image"), "image": ("image", "end")}[default]
    print(f"\n## 5. Diffusion transformer choices: IoU with the exact masks (N={len(scenes)} scenes, noised ground "
          f"truth, CFG {cfg:g}, refine official)")
    print("Backgrounds: " + "; ".join(f"{k}: {BACKGROUNDS[k]}" for k in backgrounds) + ".\n")
    # a background token earns its place where the caption does not name the ground: there the foreground should
    # be the objects alone, and the whole image's IoU is their share of it
    print("| step (sigma) | blocks | background | grid | objects | ground | foreground | foreground, unnamed ground |")
    print("|---|---|---|---|---|---|---|---|")
    choices = [("all", b, None) for b in backgrounds] + [("all", default, True)]
    choices += [(name, default, None) for name in sets if name != "all"]
    for name, (_, sigma) in levels.items():
        x = E.noised(scenes, sigma, seed)
        for blocks, background, pool in choices:
            options = {"blocks": sets[blocks], "background": background, "pool": pool}
            maps, _, _ = E.one_call(mini, prompts, x, sigma, cfg, Settings(enabled=True), capture=options)
            scores = [E.scene_scores(maps, i, s, first=first) for i, s in enumerate(scenes)]
            print(f"| {name} ({sigma:.2f}) | {blocks} | {background} | {'latent/4' if pool else 'default'} | "
                  f"{fmt(E.mean([v for s in scores for v in s.objects]))} | "
                  f"{fmt(E.mean([s.ground for s in scores]))} | "
                  f"{fmt(E.mean([s.foreground for s in scores]))} | "
                  f"{fmt(E.mean([s.foreground for s in scores if s.ground is None]))} |")


def table_generation_regions(mini, scenes, steps, cfg, seed) -> None:
    prompts = [s.caption for s in scenes]
    latents, maps = E.sample_recording(mini, prompts, seed, steps, cfg, Settings(enabled=True))
    rgb = MM.to_rgb(latents)
    ok = [bool(W.check(rgb[i], s)) for i, s in enumerate(scenes)]
    print(f"\n### 1b. Along a generation (S-CFG, CFG {cfg:g}, {steps} Euler steps): IoU with the final image's "
          f"colour masks (N={len(scenes)}; {sum(ok)} images pass the checker)")
    print("| step | objects (all images) | objects (images that pass) | foreground (all) |")
    print("|---|---|---|---|")
    masks = [E.colour_masks(rgb[i], s) for i, s in enumerate(scenes)]
    guided = [m for m in maps if m is not None]
    for name, m in (("first", guided[0]), ("middle", guided[len(guided) // 2]), ("last", guided[-1])):
        scores = [E.scene_scores(m, i, s, masks[i], mini.tokenizer.first_word) for i, s in enumerate(scenes)]
        passing = [v for s, good in zip(scores, ok, strict=True) if good for v in s.objects]
        print(f"| {name} | {fmt(E.mean([v for s in scores for v in s.objects]))} | {fmt(E.mean(passing))} | "
              f"{fmt(E.mean([s.foreground for s in scores]))} |")


def table_norms(mini, scenes, levels, cfg, seed) -> None:
    prompts = [s.caption for s in scenes]
    print(f"\n## 2. The classifier score per ground-truth region (N={len(scenes)}, noised ground truth, CFG {cfg:g})")
    print("Mean per-pixel norm over each region; spread = max/min over one image's regions (objects and "
          "ground), averaged over images.\n")
    print("| step (sigma) | plain: objects | plain: ground | plain: spread | S-CFG: objects | S-CFG: ground "
          "| S-CFG: spread |")
    print("|---|---|---|---|---|---|---|")
    for name, (_, sigma) in levels.items():
        maps, uncond, cond = E.one_call(mini, prompts, E.noised(scenes, sigma, seed), sigma, cfg)
        cols = []
        for effective in (False, True):
            objs, grounds, spreads = [], [], []
            for i, s in enumerate(scenes):
                delta = cond[i] - uncond[i]
                if effective:
                    delta = maps.rate[Cond(i)].cpu() * delta
                norms = E.region_norms(delta, s.masks())
                objs += norms[:-1].tolist()
                grounds.append(float(norms[-1]))
                spreads.append(float(norms.max() / norms.min().clamp_min(1e-12)))
            cols += [statistics.fmean(objs), statistics.fmean(grounds), statistics.fmean(spreads)]
        print(f"| {name} ({sigma:.2f}) | " + " | ".join(f"{v:.3f}" for v in cols) + " |")


def table_alignment(mini, scenes, steps, seed) -> None:
    prompts = [s.caption for s in scenes]
    print(f"\n## 3. Text-image alignment: the checker on generated images (N={len(scenes)} prompts, one image each, "
          f"{steps} Euler steps, the same noise for both)")
    print("| CFG | plain CFG | S-CFG | only plain right | only S-CFG right |")
    print("|---|---|---|---|---|")
    noise = torch.randn((len(scenes), 4, W.SIZE, W.SIZE), generator=torch.Generator().manual_seed(seed + 1))
    for cfg in CFGS:
        right = {}
        for method, settings in (("plain", None), ("scfg", Settings(enabled=True))):
            latents, _ = E.sample_recording(mini, prompts, seed, steps, cfg, settings, noise=noise)
            rgb = MM.to_rgb(latents)
            right[method] = [bool(W.check(rgb[i], s)) for i, s in enumerate(scenes)]
        cells = []
        for method in ("plain", "scfg"):
            k, n = sum(right[method]), len(scenes)
            lo, hi = E.wilson(k, n)
            cells.append(f"{k / n:.3f} [{lo:.2f}, {hi:.2f}]")
        only_plain = sum(p and not s for p, s in zip(right["plain"], right["scfg"], strict=True))
        only_scfg = sum(s and not p for p, s in zip(right["plain"], right["scfg"], strict=True))
        print(f"| {cfg:g} | {cells[0]} | {cells[1]} | {only_plain} | {only_scfg} |")


def table_weights(mini, scenes, levels, cfg, seed) -> None:
    scenes = [s for s in scenes if len(s.objects) >= 2]
    prompts = [s.caption for s in scenes]
    print(f"\n## 4. Word weight 2 on the first object (N={len(scenes)} scenes with 2-3 objects, CFG {cfg:g}): "
          "effective guidance norm with the weight / without")
    print("| step (sigma) | weighted object | other objects | ground |")
    print("|---|---|---|---|")
    weights = {}
    for i, s in enumerate(scenes):
        first = s.objects[0]
        entries = parse_weights(f"{first.colour} {first.shape}: 2")
        weights[Cond(i)] = token_weights(entries, mini.tokenizer.tokens(s.caption))[0]
    for name, (_, sigma) in levels.items():
        x = E.noised(scenes, sigma, seed)
        base, uncond, cond = E.one_call(mini, prompts, x, sigma, cfg)
        weighted, _, _ = E.one_call(mini, prompts, x, sigma, cfg, token_weights=weights)
        ratios = {"weighted": [], "others": [], "ground": []}
        for i, s in enumerate(scenes):
            delta = cond[i] - uncond[i]
            masks = s.masks()
            r = (E.region_norms(weighted.rate[Cond(i)].cpu() * delta, masks)
                 / E.region_norms(base.rate[Cond(i)].cpu() * delta, masks))
            ratios["weighted"].append(float(r[0]))
            ratios["others"] += r[1:-1].tolist()
            ratios["ground"].append(float(r[-1]))
        print(f"| {name} ({sigma:.2f}) | " + " | ".join(f"{statistics.fmean(v):.3f}" for v in ratios.values()) + " |")


# ------------------------------------------------------------------------------------------------------
# the word-swap sensitivity gate

GATE_STEPS = (0, 5, 10, 15)  # steps of the 20-step Euler schedule whose noise levels the gate uses
GATE_MIN = 0.05  # RMS change of the clean-image estimate a swapped word must cause
SWAPS = ("colour", "shape", "ground", "empty prompt")


def swap_word(scene: W.Scene, kind: str) -> str | None:
    """The caption with one word swapped: the first object's colour (to the next colour the scene does not use)
    or shape (to the next shape), or the ground (to the next ground; None when the caption names none);
    ``"empty prompt"``: the empty prompt."""
    words = scene.words()
    first = scene.objects[0]
    if kind == "colour":
        used = {o.colour for o in scene.objects}
        names = list(W.COLOURS)
        start = names.index(first.colour)
        words[1] = next(c for c in names[start + 1:] + names[:start] if c not in used)
    elif kind == "shape":
        words[2] = W.SHAPES[(W.SHAPES.index(first.shape) + 1) % len(W.SHAPES)]
    elif kind == "ground":
        if not scene.mention_ground:
            return None
        names = list(W.GROUNDS)
        words[-1] = names[(names.index(scene.ground) + 1) % len(names)]
    elif kind == "empty prompt":
        return ""
    else:
        raise ValueError(kind)
    return " ".join(words)


def clean_estimates(mini, prompts, x, sigma) -> torch.Tensor:
    """The model's conditional clean-image estimate ``D(x; sigma, prompt)`` per row, ``(B, 4, H, W)``."""
    cond, uncond = mini.contexts(prompts)
    context = uncond if all(p == "" for p in prompts) else cond
    with torch.no_grad():
        return mini.denoiser(x, torch.full((x.shape[0],), float(sigma)), cond={"c_crossattn": [context]})


def gate(mini, scenes, seed) -> dict[str, float]:
    """RMS change (latent units, image channels, ``[-1, 1]`` scale) of the clean-image estimate from each swap,
    per noise level and averaged over them; prints a table and returns the averages."""
    sigmas = mini.sigmas(20)
    prompts = [s.caption for s in scenes]
    per_level = {k: [] for k in SWAPS}
    counts = {}
    for step in GATE_STEPS:
        sigma = float(sigmas[step])
        x = E.noised(scenes, sigma, seed)
        base = clean_estimates(mini, prompts, x, sigma)
        for kind in SWAPS:
            rows = [i for i, s in enumerate(scenes) if swap_word(s, kind) is not None]
            swapped = clean_estimates(mini, [swap_word(scenes[i], kind) for i in rows], x[rows], sigma)
            rms = (swapped - base[rows])[:, :3].pow(2).mean((1, 2, 3)).sqrt()
            per_level[kind].append(float(rms.mean()))
            counts[kind] = len(rows)
    return {"levels": [float(sigmas[s]) for s in GATE_STEPS], "per_level": per_level, "counts": counts,
            "mean": {k: statistics.fmean(v) for k, v in per_level.items()}}


def print_gate(paths, n, seed) -> bool:
    print(f"## Word-swap sensitivity gate: RMS change of the clean-image estimate D(x; sigma, caption) when one "
          f"word is swapped (N={n} scenes of stream {E.EVAL_STREAM}, noised ground truth, seed {seed}; latent "
          f"units over the 3 image channels, [-1, 1] scale; the mean over the noise levels of steps "
          f"{', '.join(map(str, GATE_STEPS))} of the 20-step Euler schedule). Pass: colour, shape and ground each "
          f">= {GATE_MIN}; the empty prompt is the scale of a whole caption.\n")
    print("| model | sigma | colour | shape | ground | empty prompt |")
    print("|---|---|---|---|---|---|")
    scenes = [W.make_scene(W.scene_seed(E.EVAL_STREAM, i)) for i in range(n)]
    passed = True
    for path in paths:
        mini = E.Miniature.load(*path)
        result = gate(mini, scenes, seed)
        name = f"{type(mini.net).__name__} ({str(mini.sha256)[:8]})"
        for j, sigma in enumerate(result["levels"]):
            cells = " | ".join(f"{result['per_level'][k][j]:.4f}" for k in SWAPS)
            print(f"| {name} | {sigma:.2f} | {cells} |")
        verdicts = []
        for k in SWAPS:
            value = result["mean"][k]
            ok = value >= GATE_MIN or k == "empty prompt"
            verdicts.append(f"**{value:.4f}**" + ("" if k == "empty prompt" else (" pass" if ok else " FAIL")))
            passed &= ok
        print(f"| {name} | mean | " + " | ".join(verdicts) + " |")
    print(f"\n(ground: the {result['counts']['ground']} scenes whose caption names it)")
    return passed


# ------------------------------------------------------------------------------------------------------
# the verdict: paired plain CFG vs S-CFG


@dataclass
class Run:
    """One sampler's images of the scenes, scored."""

    scores: list[E.ImageScores]
    spread_score: list[float | None]  # per image: the mean over steps of the classifier score's spread
    spread_guidance: list[float | None]  # the same of the guidance applied (rate x score; plain: = the score)
    cpu: float  # CPU seconds


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def generate(mini, scenes, steps, cfg, settings, noise, min_area) -> Run:
    """Sample the scenes' captions from ``noise`` (plain CFG when ``settings`` is None) and score the images."""
    t = time.process_time()
    prompts = [s.caption for s in scenes]
    norms: list[torch.Tensor] = []
    latents, maps = E.sample_recording(mini, prompts, 0, steps, cfg, settings, noise=noise, score_norms=norms,
                                       rates_only=True)
    raw = MM.to_rgb(latents, clamp=False)
    scores = [E.score_image(raw[i], s, min_area) for i, s in enumerate(scenes)]
    spread_score, spread_guidance = [], []
    for i, s in enumerate(scenes):
        masks = E.colour_masks(raw[i].clamp(0, 1), s)
        plain_steps, guided_steps = [], []
        for k, norm in enumerate(norms):
            n = norm[i]
            plain_steps.append(E.score_spread(n, masks, min_area))
            step_maps = maps[k] if k < len(maps) else None
            rate = step_maps.rate[Cond(i)].cpu().reshape(n.shape) if step_maps is not None else 1.0
            guided_steps.append(E.score_spread(rate * n, masks, min_area))
        spread_score.append(_mean_or_none(plain_steps))
        spread_guidance.append(_mean_or_none(guided_steps))
    return Run(scores, spread_score, spread_guidance, time.process_time() - t)


@dataclass
class Row:
    name: str
    diff: stats.Difference
    discordant: tuple[int, int] | None = None  # binary measures: (only plain, only S-CFG) yes
    percent: bool = True

    @property
    def mcnemar(self) -> float | None:
        return None if self.discordant is None else stats.mcnemar_exact(*self.discordant)


def _binary(name, a: list[bool], b: list[bool]) -> Row:
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    return Row(name, stats.paired_bootstrap(np.array(a, float), np.array(b, float)), (only_a, only_b))


def _per_object(name, a: list[list[bool]], b: list[list[bool]]) -> Row:
    return Row(name, stats.paired_bootstrap([sum(x) for x in a], [sum(x) for x in b], [len(x) for x in a]))


def _continuous(name, a, b, percent=False) -> Row:
    return Row(name, stats.paired_bootstrap(a, b), percent=percent)


def compare(plain: Run, scfg: Run, reference: np.ndarray) -> dict[str, Row]:
    """Every measure of the verdict, S-CFG against plain CFG on the same scenes."""
    a, b = plain.scores, scfg.scores
    named = [i for i, s in enumerate(a) if s.ground_right is not None]
    few = [i for i, s in enumerate(a) if len(s.colour_present) <= 2]  # the world the issue allows instead
    rows = [
        _binary("colour scene right (shape ignored)", [s.colour_scene for s in a], [s.colour_scene for s in b]),
        _binary("all prompted colours present", [s.all_colours for s in a], [s.all_colours for s in b]),
        _per_object("object's colour present (per object)", [s.colour_present for s in a],
                    [s.colour_present for s in b]),
        _continuous("unprompted-colour pixels", [s.unprompted_pixels for s in a], [s.unprompted_pixels for s in b],
                    True),
        _continuous("unprompted blobs per image", [s.unprompted_blobs for s in a], [s.unprompted_blobs for s in b]),
        _binary("checker accuracy (whole scene)", [s.ok for s in a], [s.ok for s in b]),
        _binary(f"checker accuracy, scenes of 1-2 objects (n={len(few)})", [a[i].ok for i in few],
                [b[i].ok for i in few]),
        _per_object("object's shape right (per object)", [s.shape_right for s in a], [s.shape_right for s in b]),
        _binary(f"named ground right (n={len(named)})", [a[i].ground_right for i in named],
                [b[i].ground_right for i in named]),
        Row("Fréchet distance to true scenes", stats.paired_frechet(
            np.stack([s.features for s in a]), np.stack([s.features for s in b]), reference), percent=False),
        _continuous("distance from the palette (RGB)", [s.palette_distance for s in a],
                    [s.palette_distance for s in b]),
        _continuous("over-saturated values, all pixels", [s.overshoot for s in a], [s.overshoot for s in b], True),
        _continuous("over-saturated values, ground pixels", [s.overshoot_ground for s in a],
                    [s.overshoot_ground for s in b], True),
    ]
    both = [i for i in range(len(a)) if plain.spread_score[i] is not None and scfg.spread_guidance[i] is not None]
    rows += [
        _continuous(f"spread: plain's score vs S-CFG's guidance (n={len(both)})",
                    [plain.spread_score[i] for i in both], [scfg.spread_guidance[i] for i in both]),
        _continuous(f"spread: plain's score vs S-CFG's score (n={len(both)})",
                    [plain.spread_score[i] for i in both], [scfg.spread_score[i] for i in both]),
    ]
    return {r.name: r for r in rows}


def fmt_value(x: float, percent: bool) -> str:
    return f"{100 * x:.1f} %" if percent else f"{x:.3f}"


def fmt_diff(d: stats.Difference, percent: bool) -> str:
    scale, unit = (100, " pt") if percent else (1, "")
    mark = " *" if d.excludes_zero() else ""
    return f"{scale * d.diff:+.3f} [{scale * d.low:+.3f}, {scale * d.high:+.3f}]{unit}{mark}"


def print_rows(title, results, names) -> None:
    print(f"\n### {title}")
    print("| CFG | measure | plain CFG | S-CFG | S-CFG - plain [95 % CI] | only plain / only S-CFG (McNemar p) |")
    print("|---|---|---|---|---|---|")
    for cfg, rows in results.items():
        for name in names:
            r = next(r for key, r in rows.items() if key.startswith(name))
            mc = "" if r.discordant is None else f"{r.discordant[0]} / {r.discordant[1]} (p={r.mcnemar:.3g})"
            print(f"| {cfg:g} | {r.name} | {fmt_value(r.diff.a, r.percent)} | {fmt_value(r.diff.b, r.percent)} | "
                  f"{fmt_diff(r.diff, r.percent)} | {mc} |")


V1 = ("colour scene right", "all prompted colours", "object's colour", "unprompted-colour", "unprompted blobs")
V2 = ("checker accuracy (whole", "checker accuracy, scenes of 1-2", "object's shape", "named ground")
V3 = ("Fréchet", "distance from the palette", "over-saturated values, all", "over-saturated values, ground")
V4 = ("spread: plain's score vs S-CFG's guidance", "spread: plain's score vs S-CFG's score")


class Runs:
    """Sampling runs of one scene set, kept by (CFG, settings) so tables V and S share them."""

    def __init__(self, mini, scenes, steps, seed, min_area):
        self.mini, self.scenes, self.steps, self.min_area = mini, scenes, steps, min_area
        self.noise = torch.randn((len(scenes), 4, W.SIZE, W.SIZE), generator=torch.Generator().manual_seed(seed + 1))
        self.kept: dict = {}

    def get(self, cfg: float, settings: Settings | None) -> Run:
        key = (cfg, settings)
        if key not in self.kept:
            self.kept[key] = generate(self.mini, self.scenes, self.steps, cfg, settings, self.noise, self.min_area)
        return self.kept[key]


def reference_features(n: int, min_area: int) -> np.ndarray:
    """The true scenes the Fréchet distance compares with: ``n`` scenes of the evaluation stream from index
    10**6 (the same distribution as the prompts, none of their layouts)."""
    return E.true_features([W.make_scene(W.scene_seed(E.EVAL_STREAM, 10**6 + i)) for i in range(n)], min_area)


def table_verdict(runs: Runs, reference, started: float) -> dict:
    n = len(runs.scenes)
    print(f"\n## V. The verdict: plain CFG vs S-CFG (defaults) on the same prompts and noise (N={n} scenes of stream "
          f"{E.EVAL_STREAM}, one image each, {runs.steps} Euler steps, blobs of at least {runs.min_area} px)")
    print("Intervals: 95 % paired bootstrap of the difference (2000 draws over scenes; 500 for the Fréchet distance); "
          "* = excludes 0. McNemar: exact two-sided test on the scenes only one of the two got right.")
    results = {}
    for cfg in CFGS:
        results[cfg] = compare(runs.get(cfg, None), runs.get(cfg, Settings(enabled=True)), reference)
    print_rows("V1. Colour binding, shape ignored", results, V1)
    print_rows("V2. The strict checker and the graded scores", results, V2)
    print_rows(f"V3. Image quality: Fréchet distance of the colour and shape statistics to {len(reference)} true "
               f"scenes', distance from the palette, RGB values more than {E.OVERSHOOT} outside [0, 1] before "
               "clamping", results, V3)
    print_rows("V4. The paper's statistic on the same runs: max/min over the final image's regions (each prompted "
               "colour's pixels, the rest) of the mean norm of the classifier score (S-CFG: and of the guidance "
               "rate x score), per step, averaged over steps and images", results, V4)
    cpu = sum(r.cpu for r in runs.kept.values()) / 60
    print(f"\n(sampling and scoring: {cpu:.1f} CPU minutes; since start {(time.process_time() - started) / 60:.1f})")
    headline = {}
    for cfg, rows in results.items():
        headline[f"{cfg:g}"] = {
            key: {"plain": r.diff.a, "scfg": r.diff.b, "diff": r.diff.diff, "low": r.diff.low, "high": r.diff.high,
                  "only_plain": r.discordant[0], "only_scfg": r.discordant[1], "mcnemar_p": r.mcnemar}
            for key, r in (("accuracy", rows["checker accuracy (whole scene)"]),
                           ("all_colours", rows["all prompted colours present"]),
                           ("colour_scene", rows["colour scene right (shape ignored)"]))}
    return headline


SWEEP: dict[str, dict] = {
    "defaults": {},
    "foreground uncond (official)": {"foreground": "uncond"},
    "max_rate 1.5": {"max_rate": 1.5},
    "max_scale 10": {"max_scale": 10.0},
    "min_rate 1": {"min_rate": 1.0},
    "min_rate 1, max_rate 1.5": {"min_rate": 1.0, "max_rate": 1.5},
    "refine none": {"refine": "none"},
    "refine paper": {"refine": "paper"},
    "start 0.3": {"start": 0.3},
    "end 0.5": {"end": 0.5},
}
SWEEP_MEASURES = ("colour scene right", "all prompted colours", "object's colour", "checker accuracy",
                  "over-saturated values, ground", "Fréchet")


def table_sweep(runs: Runs, reference, cfgs, names) -> None:
    n = len(runs.scenes)
    print(f"\n## S. Settings sweep: S-CFG's settings against plain CFG on table V's measures (N={n}, the same "
          "prompts and noise; S-CFG value, then S-CFG - plain [95 % paired bootstrap CI], * = excludes 0)")
    print("| CFG | settings | " + " | ".join(SWEEP_MEASURES) + " |")
    print("|---|---|" + "---|" * len(SWEEP_MEASURES))
    for cfg in cfgs:
        plain = runs.get(cfg, None)
        first = compare(plain, plain, reference)
        print(f"| {cfg:g} | plain CFG | " + " | ".join(
            fmt_value(next(r for k, r in first.items() if k.startswith(m)).diff.a,
                      next(r for k, r in first.items() if k.startswith(m)).percent) for m in SWEEP_MEASURES) + " |")
        for name in names:
            rows = compare(plain, runs.get(cfg, Settings(enabled=True, **SWEEP[name])), reference)
            cells = []
            for m in SWEEP_MEASURES:
                r = next(r for k, r in rows.items() if k.startswith(m))
                cells.append(f"{fmt_value(r.diff.b, r.percent)} ({fmt_diff(r.diff, r.percent)})")
            print(f"| {cfg:g} | {name} | " + " | ".join(cells) + " |", flush=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.process_time()
    wall = time.perf_counter()
    commit = git_commit()
    if args.gate:
        paths = [(args.weights,)] if args.weights else [(MM.TRAINED[a][1], getattr(MM, MM.TRAINED[a][2]))
                                                         for a in ("unet", "anima", "nextdit", "mmdit")]
        passed = print_gate(paths, min(args.n, 48), args.seed)
        print(f"\ngate: {'pass' if passed else 'FAIL'}; CPU time {(time.process_time() - started) / 60:.2f} min")
        return
    mini = E.Miniature.load(args.weights)
    if args.blocks:
        mini.capture["blocks"] = [int(b) for b in args.blocks.split(",")]
    if args.background:
        mini.capture["background"] = args.background
    if args.pool:
        mini.capture["pool"] = True
    scenes = [W.make_scene(W.scene_seed(E.EVAL_STREAM, i)) for i in range(args.n)]
    levels = step_levels(mini, args.steps)
    network = type(mini.net).__name__
    print(f"# S-CFG quality on the miniature model ({MM.parameter_count(mini.net) / 1e6:.2f}M-parameter {network}, "
          f"weights sha256 {str(mini.sha256)[:12]}); scenes {args.n} of stream {E.EVAL_STREAM}, seed {args.seed}"
          + (f"; capture {mini.capture}" if mini.capture else ""))
    runs = headline = None
    for table in args.tables:
        t0 = time.perf_counter()
        if table == "1":
            table_regions(mini, scenes, levels, args.cfg, args.seed)
            table_generation_regions(mini, scenes, args.steps, args.cfg, args.seed)
        elif table == "2":
            table_norms(mini, scenes, levels, args.cfg, args.seed)
        elif table == "3":
            table_alignment(mini, scenes, args.steps, args.seed)
        elif table == "4":
            table_weights(mini, scenes, levels, args.cfg, args.seed)
        elif table == "5":
            table_dit_choices(mini, scenes, levels, args.cfg, args.seed)
        elif table in "VS":
            if runs is None:
                runs = Runs(mini, scenes, args.steps, args.seed, args.min_area)
                reference = reference_features(1000, args.min_area)
            if table == "V":
                headline = table_verdict(runs, reference, started)
            else:
                names = args.sweep.split(",") if args.sweep else list(SWEEP)
                table_sweep(runs, reference, [float(c) for c in args.sweep_cfgs.split(",")], names)
        print(f"\n(table {table}: {time.perf_counter() - t0:.0f} s)")
    cpu, elapsed = (time.process_time() - started) / 60, (time.perf_counter() - wall) / 60
    print(f"\nCPU time {cpu:.1f} min, wall {elapsed:.1f} min "
          f"({args.threads} threads)")
    if args.json and headline is not None:
        command = "bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record = {"weights_sha256": mini.sha256, "commit": commit, "command": command, "n": args.n,
                  "steps": args.steps, "seed": args.seed, "cpu_minutes": round(cpu, 1), "cfg": headline}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
