"""See S-CFG work on a trained model: ``python -m scfg_ext.demo``.

Loads the miniature text-to-image model (``scfg_ext.miniature``: the real ldm U-Net, shrunk, trained on a
synthetic world of coloured shapes) and, for a few prompts of that world, samples one image with plain CFG and
one with S-CFG from the same noise (real k-diffusion Euler), then writes one PNG, a row per prompt: the scene the
prompt describes (ground truth), both results with the world's checker's verdict, S-CFG's token regions at the
middle step over its result, that result's exact colour masks with each object's IoU, and the rate map.

The rows are the first ``len(SCENES)`` scenes of the evaluation stream (``bench/quality.py``'s), in order, none
picked. The printed summary ends with the verdict of ``bench/quality.py`` (table V) for the loaded weights, read
from ``miniature/verdict.json`` (not recomputed: that takes CPU minutes): the checker's accuracy under plain CFG
and S-CFG on N held-out scenes with the paired interval of the difference.

What it shows: where S-CFG puts each word and how it scales the guidance there, on a model whose attention was
learned, and whether the images match their prompts. What it does not show: anything about Stable Diffusion's
image quality (see ``scfg_ext/miniature``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .capture import Cond
from .guidance import StepMaps
from .miniature import evaluate as E
from .miniature import model as MM
from .miniature import world as W
from .render import BG, INK, MUTED, draw_text, rate_map, region_map, token_labels
from .settings import Settings

SCENES = range(4)  # the first scenes of the evaluation stream (bench/quality.py's), none picked
VERDICT = Path(__file__).with_name("miniature") / "verdict.json"  # bench/quality.py --tables V --json
DEFAULTS = dict(steps=20, seed=0, cfg_scale=7.5, out="scfg_demo.png")

ZOOM = 6  # image pixels per world pixel
PANEL = W.SIZE * ZOOM
MARGIN, GAP = 16, 14
HEADER_H, PROMPT_H, TEXT_H, FOOTER_H = 80, 30, 20, 58
COLUMNS = ("the prompt's scene (truth)", "plain CFG", "S-CFG", "S-CFG's token regions",
           "exact masks of S-CFG's image", "S-CFG's rate")
OK_COLOUR, BAD_COLOUR = (30, 120, 40), (170, 35, 35)


@dataclass
class DemoResult:
    prompts: list[str]
    scenes: list[W.Scene | None]  # the scene each prompt came from (None for a prompt given by hand)
    plain: torch.Tensor  # (B, 4, 32, 32) final latents
    scfg: torch.Tensor
    maps: StepMaps  # the middle S-CFG step's regions, foreground and rate per Cond(row)
    steps_applied: int
    plain_ok: list[bool]
    scfg_ok: list[bool]
    reasons: list[tuple[str, str]]  # per row: why the checker rejected the plain and the S-CFG image ("" if not)
    ious: list[list[float]]  # per row, each object's region IoU with the S-CFG image's colour mask
    timings: dict[str, float]
    out: Path


def caption_scene(prompt: str) -> W.Scene:
    """A scene object for a hand-written prompt (objects without a layout), for its words and checker."""
    objects, ground = W.parse_caption(prompt)
    objs = tuple(W.Obj(c, s, 0, 0, 1) for c, s in objects)
    return W.Scene(objs, ground or "grey", ground is not None)


def run_demo(args: argparse.Namespace, mini: E.Miniature | None = None) -> DemoResult:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    mini = mini or E.Miniature.load(args.weights)
    timings["load"] = time.perf_counter() - t
    if args.prompt:
        scenes = [None] * len(args.prompt)
        prompts = list(args.prompt)
        for p in prompts:
            mini.tokenizer.words(p)  # a word outside the vocabulary fails here, with the vocabulary named
    else:
        scenes = [W.make_scene(W.scene_seed(E.EVAL_STREAM, i)) for i in SCENES]
        prompts = [s.caption for s in scenes]
    noise = torch.randn((len(prompts), 4, W.SIZE, W.SIZE), generator=torch.Generator().manual_seed(args.seed))

    t = time.perf_counter()
    plain, _ = E.sample_recording(mini, prompts, args.seed, args.steps, args.cfg_scale, None, noise=noise)
    timings["plain CFG"] = time.perf_counter() - t
    t = time.perf_counter()
    scfg, maps = E.sample_recording(mini, prompts, args.seed, args.steps, args.cfg_scale, Settings(enabled=True),
                                    noise=noise)
    timings["S-CFG"] = time.perf_counter() - t
    guided = [m for m in maps if m is not None]
    if not guided:
        raise RuntimeError("S-CFG never produced maps (no step used them)")
    middle = guided[len(guided) // 2]

    checked = [s if s is not None else caption_scene(p) for s, p in zip(scenes, prompts, strict=True)]
    plain_rgb, scfg_rgb = MM.to_rgb(plain), MM.to_rgb(scfg)
    plain_checks = [W.check(plain_rgb[i], p) for i, p in enumerate(prompts)]
    scfg_checks = [W.check(scfg_rgb[i], p) for i, p in enumerate(prompts)]
    plain_ok, scfg_ok = [bool(c) for c in plain_checks], [bool(c) for c in scfg_checks]
    reasons = [("; ".join(a.reasons), "; ".join(b.reasons)) for a, b in zip(plain_checks, scfg_checks, strict=True)]
    ious = [E.scene_scores(middle, i, s, E.colour_masks(scfg_rgb[i], s)).objects for i, s in enumerate(checked)]
    return DemoResult(prompts, scenes, plain, scfg, middle, len(guided), plain_ok, scfg_ok, reasons, ious, timings,
                      Path(args.out))


# ------------------------------------------------------------------------------------------------------
# drawing


def to_image(rgb: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] -> a PIL image ``ZOOM`` times larger (nearest)."""
    img = Image.fromarray(MM.to_uint8(rgb[None])[0].numpy(), "RGB")
    return img.resize((img.width * ZOOM, img.height * ZOOM), Image.NEAREST)


def mask_image(masks: torch.Tensor, scene: W.Scene) -> Image.Image:
    """Each object's mask in its palette colour, the ground in the ground's."""
    colours = [W.COLOURS[o.colour] for o in scene.objects] + [W.GROUNDS[scene.ground] if scene.mention_ground
                                                             else (128, 128, 128)]
    label = masks.float().argmax(0)
    rgb = torch.tensor(colours, dtype=torch.float32)[label].permute(2, 0, 1) / 255
    return to_image(rgb)


def row_panels(result: DemoResult, mini: E.Miniature, row: int) -> list[tuple[Image.Image | None, str, tuple]]:
    """The six panels of one row with the line of text under each."""
    prompt = result.prompts[row]
    scene = result.scenes[row] or caption_scene(prompt)
    key = Cond(row)
    labels = token_labels(mini.tokenizer.tokens(prompt))
    plain_rgb, scfg_rgb = MM.to_rgb(result.plain[row:row + 1])[0], MM.to_rgb(result.scfg[row:row + 1])[0]
    verdict = [("matches the prompt", OK_COLOUR) if ok else ("does not match the prompt", BAD_COLOUR)
               for ok in (result.plain_ok[row], result.scfg_ok[row])]
    ious = "  ".join(f"{v:.2f}" for v in result.ious[row])
    return [
        (to_image(result.scenes[row].render()) if result.scenes[row] is not None else None,
         "" if result.scenes[row] is not None else "(prompt given by hand)", MUTED),
        (to_image(plain_rgb), *verdict[0]),
        (to_image(scfg_rgb), *verdict[1]),
        (region_map(to_image(scfg_rgb), result.maps.regions[key].cpu(), labels), "", MUTED),
        (mask_image(E.colour_masks(scfg_rgb, scene), scene), "IoU per object: " + ious, INK),
        (rate_map(result.maps.rate[key].cpu(), size=(PANEL, PANEL), title="scale = CFG x rate"), "", MUTED),
    ]


def column_left(column: int) -> int:
    return MARGIN + column * (PANEL + GAP)


def draw_figure(result: DemoResult, mini: E.Miniature, args: argparse.Namespace) -> Image.Image:
    rows = [row_panels(result, mini, row) for row in range(len(result.prompts))]
    heights = [PROMPT_H + max(img.height for img, _, _ in panels if img is not None) + TEXT_H + GAP
               for panels in rows]
    width = column_left(len(COLUMNS)) - GAP + MARGIN
    canvas = Image.new("RGB", (width, HEADER_H + sum(heights) + FOOTER_H), BG)
    d = ImageDraw.Draw(canvas)
    draw_text(canvas, (MARGIN, 10), "S-CFG on a trained miniature model: plain CFG vs semantic-aware CFG, same "
              "noise", 19)
    draw_text(canvas, (MARGIN, 34), f"ldm U-Net ({MM.parameter_count(mini.net) / 1e6:.1f}M parameters) + text "
              f"encoder trained on the miniature world  |  {W.SIZE}x{W.SIZE} px  |  Euler, {args.steps} steps  |  "
              f"CFG {args.cfg_scale:g}  |  seed {args.seed}  |  maps of the middle S-CFG step", 13, MUTED)
    for column, title in enumerate(COLUMNS):
        draw_text(canvas, (column_left(column), HEADER_H - 16), title, 13, INK)
    top = HEADER_H
    for row, (panels, height) in enumerate(zip(rows, heights, strict=True)):
        draw_text(canvas, (MARGIN, top + 6), f'"{result.prompts[row]}"', 15, MUTED)
        y = top + PROMPT_H
        for column, (img, text, colour) in enumerate(panels):
            x = column_left(column)
            if img is not None:
                canvas.paste(img, (x, y))
                d.rectangle((x - 1, y - 1, x + PANEL, y + PANEL), outline=(170, 170, 170))
            if text:
                draw_text(canvas, (x, y + PANEL + 4), text, 12, colour)
        top += height
    foot = canvas.height - FOOTER_H + 10
    d.line([(MARGIN, foot - 6), (canvas.width - MARGIN, foot - 6)], fill=(200, 200, 200))
    headline = verdict_lines(mini.sha256)
    text = headline[1] if headline else "no verdict recorded for these weights (bench/quality.py --tables V --json)"
    draw_text(canvas, (MARGIN, foot), text, 13, INK)
    draw_text(canvas, (MARGIN, foot + 20), "A miniature world and model trained here (docs/verdict.md); not a claim "
              "about Stable Diffusion's images.", 13, MUTED)
    return canvas


def verdict_lines(sha256: str | None, path: Path | None = None) -> list[str] | None:
    """The stored verdict (``bench/quality.py --tables V --json``) for the weights ``sha256``, as lines: where it
    came from, then the checker's accuracy plain vs S-CFG at CFG 7.5 and 12 with the paired interval of the
    difference, then the colour-binding measures (every prompted colour present; the colours right, shapes
    ignored). None when none is stored for those weights; a measure the record lacks prints no figures."""
    path = VERDICT if path is None else path
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("weights_sha256") != sha256:
        return None

    def cells(key: str) -> str:
        out = []
        for cfg in ("7.5", "12"):
            r = record["cfg"].get(cfg, {}).get(key)
            if r:
                out.append(f"CFG {cfg}: plain {r['plain']:.0%}, S-CFG {r['scfg']:.0%} ({100 * r['diff']:+.1f} pt, "
                           f"95% CI [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}], McNemar p={r['mcnemar_p']:.2g})")
        return "; ".join(out)

    return [f"verdict on {record['n']} held-out scenes (commit {record.get('commit')}, "
            f"{record.get('command')}, {record.get('cpu_minutes')} CPU min):",
            "checker accuracy " + cells("accuracy"),
            "all prompted colours present " + cells("all_colours"),
            "colours right, shape ignored " + cells("colour_scene")]


# ------------------------------------------------------------------------------------------------------
# command line


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text})")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scfg_ext.demo",
        description=(
            "Sample images with plain CFG and with S-CFG from the same noise on the trained miniature model "
            "(scfg_ext/miniature: the real ldm U-Net, shrunk, trained on a world of coloured shapes) and write one "
            "PNG: per prompt the ground-truth scene, both results with the checker's verdict, S-CFG's token "
            "regions and rate map at the middle step, and the exact masks of the S-CFG result with each object's "
            "IoU. A few seconds on 2 CPU cores."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt in the miniature world's words (e.g. 'a red circle and a blue square on grey'); "
                        "repeat for more rows (default: four scenes of the evaluation stream)")
    p.add_argument("--steps", type=_positive, default=DEFAULTS["steps"], help="Euler steps")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of the initial noise")
    p.add_argument("--cfg-scale", type=float, default=DEFAULTS["cfg_scale"], help="CFG scale")
    p.add_argument("--weights", default=None, help="a miniature safetensors file (default: the committed one)")
    p.add_argument("--out", default=DEFAULTS["out"], help="output PNG path")
    return p


def main(argv: Sequence[str] | None = None) -> DemoResult:
    """Run the demo; returns the ``DemoResult`` (the PNG is at ``result.out``)."""
    p = parser()
    args = p.parse_args(None if argv is None else [str(a) for a in argv])
    if args.prompt:
        for prompt in args.prompt:
            try:
                W.parse_caption(prompt)
            except ValueError as e:
                p.error(f"--prompt: {e}; words: {', '.join(W.VOCAB)}")
    start = time.perf_counter()
    mini = E.Miniature.load(args.weights)
    result = run_demo(args, mini)
    t = time.perf_counter()
    figure = draw_figure(result, mini, args)
    result.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(result.out)
    result.timings["figure"] = time.perf_counter() - t
    if not args.prompt:
        print(f"the first {len(SCENES)} scenes of the evaluation stream (none picked), CFG {args.cfg_scale:g}, "
              f"{args.steps} Euler steps:")
    for prompt, a, b, (why_a, why_b), iou in zip(result.prompts, result.plain_ok, result.scfg_ok, result.reasons,
                                                 result.ious, strict=True):
        print(f"{prompt!r}: plain CFG {'ok' if a else 'wrong (' + why_a + ')'}, "
              f"S-CFG {'ok' if b else 'wrong (' + why_b + ')'}; region IoU " + ", ".join(f"{v:.2f}" for v in iou))
    headline = verdict_lines(mini.sha256)
    print("\n".join(headline) if headline else f"no verdict stored for these weights in {VERDICT}")
    print("timing: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
          + f"; total {time.perf_counter() - start:.1f}s")
    print(f"wrote {result.out.resolve()}")
    return result


if __name__ == "__main__":
    main()
