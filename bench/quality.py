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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scfg_ext.capture import Cond  # noqa: E402
from scfg_ext.miniature import evaluate as E  # noqa: E402
from scfg_ext.miniature import model as MM  # noqa: E402
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


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.process_time()
    wall = time.perf_counter()
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
        print(f"\n(table {table}: {time.perf_counter() - t0:.0f} s)")
    cpu, elapsed = (time.process_time() - started) / 60, (time.perf_counter() - wall) / 60
    print(f"\nCPU time {cpu:.1f} min, wall {elapsed:.1f} min "
          f"({args.threads} threads)")


if __name__ == "__main__":
    main()
