"""See S-CFG work on a real SD1 U-Net without any weights: ``python -m scfg_ext.demo``.

Builds the real ldm SD1.5 U-Net (random weights; nothing can be downloaded here), samples one image with a
real k-diffusion sampler twice from the same seed and noise, once with plain CFG and once with S-CFG, and
writes one PNG: both final latents as images, the token-region map and the rate map of the last S-CFG step.

There is no text encoder offline, so the "prompt" is a synthetic 77-token context built like CLIP's output
is laid out: a start-of-text vector (the same in both contexts, as CLIP's causal SOT state is), a few
distinct random "word" vectors, then one end-of-text vector copied over the padding. The "empty prompt"
(uncond) context is the same SOT vector followed by its own EOT vector copied 76 times.

With random weights the images are noise; the figure shows the mechanism (which token owns which cell, how
the guidance rate varies over the image), not image quality.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from . import testbed
from .capture import CHUNK_TOKENS, Cond
from .guidance import ScfgRun
from .render import BG, INK, MUTED, PALETTE, colormap, font
from .settings import Settings

# A1111 modules/sd_vae_approx.py cheap_approximation (the "Approx cheap" live preview), SD1 latents
LATENT_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])

SAMPLERS = {  # name -> (k-diffusion function, model evaluations for n steps, default schedule)
    "euler": ("sample_euler", lambda n: n, "normal"),
    "euler_a": ("sample_euler_ancestral", lambda n: n, "normal"),
    "heun": ("sample_heun", lambda n: 2 * n - 1, "normal"),
    "dpmpp_2m": ("sample_dpmpp_2m", lambda n: n, "karras"),
}
MAX_WORDS = 9

DEFAULTS = dict(size=256, steps=6, seed=0, cfg_scale=7.5, sampler="euler", scheduler="auto", words=4,
                channels=320, res_blocks=2, out="scfg_demo.png")

# ------------------------------------------------------------------------------------------------------
# figure constants (pixels)
PANEL = 288  # target panel side; the latent is upscaled by an integer factor (nearest) to about this
MARGIN = 20
GAP = 20
HEADER_H = 62
TITLE_H = 42
INFO_H = 150  # fits 11 legend entries in two columns plus the foreground line
FOOTER_H = 46

SOT_COLOUR = (80, 80, 80)
PAD_COLOUR = (205, 205, 198)
WORD_COLOURS = PALETTE[:9]  # matplotlib tab10 without its grey


# ------------------------------------------------------------------------------------------------------
# conditioning


def synthetic_contexts(words: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond, uncond)``, each ``(1, 77, dim)``: ``[sot, w1..wk, eot x (76-k)]`` and ``[sot, eot' x 76]``."""
    g = torch.Generator().manual_seed(seed + 1)
    sot, eot, eot_empty = (torch.randn(dim, generator=g) for _ in range(3))
    word_vecs = torch.randn(words, dim, generator=g)
    cond = torch.cat([sot[None], word_vecs, eot[None].expand(CHUNK_TOKENS - 1 - words, dim)])
    uncond = torch.cat([sot[None], eot_empty[None].expand(CHUNK_TOKENS - 1, dim)])
    return cond[None].contiguous(), uncond[None].contiguous()


def token_group(index: int, words: int) -> int:
    """Legend group of a token position: 0 = ``<sot>``, 1..k = the words, k+1 = ``<eot/pad>``."""
    return min(index, words + 1)


def group_label(group: int, words: int) -> str:
    return "<sot>" if group == 0 else "<eot/pad>" if group > words else f"w{group}"


def group_colour(group: int, words: int) -> tuple[int, int, int]:
    return SOT_COLOUR if group == 0 else PAD_COLOUR if group > words else WORD_COLOURS[(group - 1) % 9]


# ------------------------------------------------------------------------------------------------------
# sampling


@dataclass
class DemoResult:
    plain: torch.Tensor  # (1, 4, h, w) final latent, plain CFG
    scfg: torch.Tensor  # (1, 4, h, w) final latent, S-CFG
    regions: torch.Tensor  # (T, h, w) one-hot token regions of the last S-CFG step
    foreground: torch.Tensor  # (1, h, w) foreground (benchmark region) of that step
    rate: torch.Tensor  # (1, h, w) rate map of that step
    evaluations: int  # model evaluations per run
    steps_applied: int  # S-CFG steps that used the maps
    timings: dict[str, float]
    out: Path
    description: str


def describe_model(args: argparse.Namespace) -> str:
    if args.channels == 320 and args.res_blocks == 2:
        return "SD1.5 U-Net (full architecture, 859M params)"
    return f"SD1.5 U-Net architecture shrunk to {args.channels} channels, {args.res_blocks} res block(s)/level"


def unet_config(args: argparse.Namespace) -> dict:
    if args.channels == 320 and args.res_blocks == 2:
        return testbed.SD15_UNET
    return testbed.small_config(testbed.SD15_UNET, model_channels=args.channels, num_res_blocks=args.res_blocks)


def sigmas_for(denoiser, sampling, steps: int, schedule: str) -> torch.Tensor:
    if schedule == "karras":
        return sampling.get_sigmas_karras(steps, float(denoiser.sigma_min), float(denoiser.sigma_max))
    return denoiser.get_sigmas(steps)


def sample(sampling, fn_name: str, model, x: torch.Tensor, sigmas: torch.Tensor, seed: int, progress: bool):
    fn = getattr(sampling, fn_name)
    kwargs = {"disable": not progress}
    if fn_name == "sample_euler_ancestral":  # the same per-step noise for both runs
        g = torch.Generator().manual_seed(seed + 2)
        kwargs["noise_sampler"] = lambda sigma, sigma_next: torch.randn(x.shape, generator=g, dtype=x.dtype)
    with torch.no_grad():
        return fn(model, x, sigmas, **kwargs)


def run_demo(args: argparse.Namespace, progress: bool = True) -> DemoResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sampling, _ = testbed.import_k_diffusion()
    config = unet_config(args)
    unet = testbed.build_unet(config, seed=args.seed)
    denoiser = testbed.k_denoiser(unet)
    timings["build"] = time.perf_counter() - t0

    fn_name, evals_for, auto_schedule = SAMPLERS[args.sampler]
    schedule = auto_schedule if args.scheduler == "auto" else args.scheduler
    evaluations = evals_for(args.steps)
    latent = args.size // 8
    cond, uncond = synthetic_contexts(args.words, config["context_dim"], args.seed)
    sigmas = sigmas_for(denoiser, sampling, args.steps, schedule)
    noise = torch.randn((1, 4, latent, latent), generator=torch.Generator().manual_seed(args.seed))
    x = noise * sigmas[0]

    t = time.perf_counter()
    plain_model = testbed.CFGModel(denoiser, cond, uncond, args.cfg_scale)
    plain = sample(sampling, fn_name, plain_model, x, sigmas, args.seed, progress)
    timings["plain CFG"] = time.perf_counter() - t

    t = time.perf_counter()
    run = ScfgRun(Settings(enabled=True), keep_maps=True)
    scfg_model = testbed.CFGModel(denoiser, cond, uncond, args.cfg_scale, run=run, total_steps=evaluations)
    with run.attached(unet):
        scfg = sample(sampling, fn_name, scfg_model, x, sigmas, args.seed, progress)
    timings["S-CFG"] = time.perf_counter() - t
    if run.last_maps is None:
        raise RuntimeError("S-CFG never produced maps (no step used them)")
    key = Cond(0)
    description = (f"{describe_model(args)}, random weights  |  {args.size}x{args.size} px (latent {latent}x{latent})"
                   f"  |  {args.sampler} ({schedule} schedule), {args.steps} steps  |  CFG {args.cfg_scale:g}"
                   f"  |  seed {args.seed}")
    return DemoResult(plain=plain, scfg=scfg, regions=run.last_maps.regions[key],
                      foreground=run.last_maps.foreground[key], rate=run.last_maps.rate[key],
                      evaluations=evaluations, steps_applied=run.steps_applied, timings=timings,
                      out=Path(args.out), description=description)


# ------------------------------------------------------------------------------------------------------
# drawing (Pillow only)


def latents_to_rgb(latents: Sequence[torch.Tensor]) -> list[Image.Image]:
    """A1111's "Approx cheap" 4->3 linear map, then one shared linear scale (1st..99th percentile -> 0..255)
    for all given latents, so they can be compared pixel for pixel."""
    rgb = [torch.einsum("chw,cr->rhw", z[0].float(), LATENT_RGB) for z in latents]
    flat = torch.cat([r.flatten() for r in rgb])
    lo, hi = torch.quantile(flat, torch.tensor([0.01, 0.99])).tolist()
    scale = 255.0 / max(hi - lo, 1e-12)
    out = []
    for r in rgb:
        img = ((r - lo) * scale).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        out.append(Image.fromarray(img.numpy(), "RGB"))
    return out


def panel_side(latent_side: int) -> int:
    """Panel size for a latent side: an integer nearest-neighbour factor bringing it to about ``PANEL``."""
    return latent_side * max(1, PANEL // latent_side)


def canvas_size(panel: int) -> tuple[int, int]:
    return 2 * MARGIN + 4 * panel + 3 * GAP, HEADER_H + TITLE_H + panel + INFO_H + FOOTER_H


def panel_boxes(panel: int) -> list[tuple[int, int, int, int]]:
    """The four image panels' boxes ``(left, top, right, bottom)`` in the figure."""
    top = HEADER_H + TITLE_H
    return [(MARGIN + i * (panel + GAP), top, MARGIN + i * (panel + GAP) + panel, top + panel) for i in range(4)]


def _upscale(img: Image.Image, panel: int) -> Image.Image:
    return img.resize((panel, panel), Image.NEAREST)


def region_image(regions: torch.Tensor, foreground: torch.Tensor, words: int, panel: int):
    """Token-region panel: one colour per token group, cell grid lines, the foreground outlined in white.
    Returns the image and ``[(group, share of cells)]`` of the groups that own cells."""
    owner = regions.argmax(0)  # (h, w) token index
    h, w = owner.shape
    groups = owner.clamp(max=words + 1)  # token_group for every cell
    rgb = torch.zeros(h, w, 3, dtype=torch.uint8)
    present = []
    for g in sorted(set(groups.flatten().tolist())):
        rgb[groups == g] = torch.tensor(group_colour(g, words), dtype=torch.uint8)
        present.append((g, float((groups == g).float().mean())))
    img = _upscale(Image.fromarray(rgb.numpy(), "RGB"), panel).convert("RGBA")
    f = panel / w  # pixels per latent cell
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(overlay)
    cell = 4  # the segmentation grid is latent/4
    for k in range(cell, w, cell):
        d.line([(round(k * f), 0), (round(k * f), panel)], fill=(0, 0, 0, 45))
    for k in range(cell, h, cell):
        d.line([(0, round(k * f)), (panel, round(k * f))], fill=(0, 0, 0, 45))
    fg = foreground[0] > 0.5
    white = (255, 255, 255, 255)
    for y in range(h):  # outline: edges between foreground and background latent cells, and the border
        for x in range(w):
            if not fg[y, x]:
                continue
            x0, y0, x1, y1 = round(x * f), round(y * f), round((x + 1) * f), round((y + 1) * f)
            if y == 0 or not fg[y - 1, x]:
                d.line([(x0, y0), (x1, y0)], fill=white, width=3)
            if y == h - 1 or not fg[y + 1, x]:
                d.line([(x0, y1 - 1), (x1, y1 - 1)], fill=white, width=3)
            if x == 0 or not fg[y, x - 1]:
                d.line([(x0, y0), (x0, y1)], fill=white, width=3)
            if x == w - 1 or not fg[y, x + 1]:
                d.line([(x1 - 1, y0), (x1 - 1, y1)], fill=white, width=3)
    return Image.alpha_composite(img, overlay).convert("RGB"), present


def draw_figure(result: DemoResult, words: int, cfg_scale: float) -> Image.Image:
    latent_side = result.plain.shape[-1]
    panel = panel_side(latent_side)
    canvas = Image.new("RGB", canvas_size(panel), BG)
    d = ImageDraw.Draw(canvas)
    f_title, f_head, f_text, f_small = font(19), font(15), font(13), font(12)

    d.text((MARGIN, 12), "S-CFG demo: plain CFG vs semantic-aware CFG, same seed and noise", font=f_title, fill=INK)
    d.text((MARGIN, 38), result.description, font=f_small, fill=MUTED)

    plain_img, scfg_img = latents_to_rgb([result.plain, result.scfg])
    regions_img, present = region_image(result.regions, result.foreground, words, panel)
    rate = result.rate[0]
    r_lo, r_hi = float(rate.min()), float(rate.max())
    rate_img = Image.fromarray(colormap(rate, r_lo, r_hi).numpy(), "RGB")
    panels = [_upscale(plain_img, panel), _upscale(scfg_img, panel), regions_img, _upscale(rate_img, panel)]
    titles = [
        ("1  Plain CFG", "final latent -> RGB (approx cheap)"),
        ("2  S-CFG", "final latent -> RGB (approx cheap)"),
        ("3  Token regions", f"last S-CFG step, {latent_side // 4}x{latent_side // 4} cells (latent/4)"),
        ("4  Rate map", f"last S-CFG step; scale = {cfg_scale:g} x rate"),
    ]
    boxes = panel_boxes(panel)
    for img, (title, sub), box in zip(panels, titles, boxes, strict=True):
        d.text((box[0], HEADER_H), title, font=f_head, fill=INK)
        d.text((box[0], HEADER_H + 20), sub, font=f_small, fill=MUTED)
        canvas.paste(img, box[:2])
        d.rectangle((box[0] - 1, box[1] - 1, box[2], box[3]), outline=(170, 170, 170))

    info_top = boxes[0][3] + 10
    # under the latents: how far apart they are
    diff = (result.scfg - result.plain).abs()
    d.text((boxes[0][0], info_top), f"latent mean |x| = {float(result.plain.abs().mean()):.3g}", font=f_text,
           fill=INK)
    d.text((boxes[1][0], info_top), f"latent mean |x| = {float(result.scfg.abs().mean()):.3g}", font=f_text,
           fill=INK)
    d.text((boxes[1][0], info_top + 20), f"mean |S-CFG - plain| = {float(diff.mean()):.3g}", font=f_text, fill=INK)
    d.text((boxes[1][0], info_top + 40), f"max  |S-CFG - plain| = {float(diff.max()):.3g}", font=f_text, fill=INK)
    d.text((boxes[0][0], info_top + 20), "both images: one shared colour scale", font=f_small, fill=MUTED)
    d.text((boxes[0][0], info_top + 40), f"S-CFG used on {result.steps_applied}/{result.evaluations} model calls",
           font=f_small, fill=MUTED)

    # legend for the regions: two columns of swatches (token, share of cells), then the outline
    col_w = panel // 2
    entries = [(group_colour(g, words), f"{group_label(g, words)}  {share:.0%}") for g, share in present]
    rows = math.ceil(len(entries) / 2)
    for k, (colour, label) in enumerate(entries):
        col, row = divmod(k, rows)
        x, y = boxes[2][0] + col * col_w, info_top + row * 18
        d.rectangle((x, y + 2, x + 12, y + 14), fill=colour, outline=(90, 90, 90))
        d.text((x + 18, y), label, font=f_text, fill=INK)
    y = info_top + rows * 18 + 4
    d.rectangle((boxes[2][0], y + 2, boxes[2][0] + 12, y + 14), fill=(60, 60, 60), outline=(255, 255, 255),
                width=2)
    d.text((boxes[2][0] + 18, y), "white outline: foreground (benchmark)", font=f_text, fill=INK)

    # colour bar for the rate map
    bx0, bx1 = boxes[3][0], boxes[3][2]
    bar = colormap(torch.linspace(r_lo, r_hi, bx1 - bx0)[None].expand(14, -1), r_lo, r_hi)
    canvas.paste(Image.fromarray(bar.numpy(), "RGB"), (bx0, info_top))
    d.rectangle((bx0 - 1, info_top - 1, bx1, info_top + 14), outline=(170, 170, 170))
    d.text((bx0, info_top + 18), f"{r_lo:.3f}", font=f_text, fill=INK)
    hi_text = f"{r_hi:.3f}"
    d.text((bx1 - d.textlength(hi_text, font=f_text), info_top + 18), hi_text, font=f_text, fill=INK)
    if r_lo < 1.0 < r_hi:  # rate 1 = plain CFG
        x1 = bx0 + round((1.0 - r_lo) / (r_hi - r_lo) * (bx1 - bx0 - 1))
        d.line([(x1, info_top - 3), (x1, info_top + 16)], fill=INK, width=1)
        if bx0 + 50 < x1 < bx1 - 50:  # label it unless it would run into the min/max labels
            d.text((x1 - d.textlength("1", font=f_text) / 2, info_top + 18), "1", font=f_text, fill=INK)
    d.text((bx0, info_top + 40), f"rate min {r_lo:.3f}   max {r_hi:.3f}", font=f_text, fill=INK)
    d.text((bx0, info_top + 58), f"effective scale {cfg_scale * r_lo:.2f} .. {cfg_scale * r_hi:.2f}",
           font=f_text, fill=INK)
    d.text((bx0, info_top + 76), "rate 1 = plain CFG", font=f_small, fill=MUTED)

    foot = canvas.height - FOOTER_H + 6
    d.line([(MARGIN, foot - 6), (canvas.width - MARGIN, foot - 6)], fill=(200, 200, 200))
    d.text((MARGIN, foot), "Random weights: images are noise; the maps show the mechanism, not image quality",
           font=f_head, fill=(160, 30, 30))
    d.text((MARGIN, foot + 21), "Synthetic 77-token prompt (no text encoder offline): <sot>, "
           f"{', '.join(f'w{i}' for i in range(1, words + 1))}, <eot/pad> x {CHUNK_TOKENS - 1 - words}; "
           "uncond = <sot> + its own <eot/pad> x 76.", font=f_small, fill=MUTED)
    return canvas


# ------------------------------------------------------------------------------------------------------
# command line


def _size(text: str) -> int:
    value = int(text)
    if value < 64 or value % 64:  # the SD U-Net downsamples the latent (size/8) 3 times, then concatenates skips
        raise argparse.ArgumentTypeError(f"--size must be a multiple of 64 (latent a multiple of 8), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text})")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scfg_ext.demo",
        description=(
            "Sample one image with plain CFG and with S-CFG on the real SD1.5 U-Net architecture (ldm) with "
            "random weights and a real k-diffusion sampler, from the same seed and noise, and write one PNG: "
            "both final latents as images (A1111 'approx cheap' latent->RGB), the token-region map and the rate "
            "map of the last S-CFG step. The prompt is a synthetic 77-token context (no text encoder offline). "
            "Defaults: the full 859M-parameter SD1.5 U-Net at 256x256 px (32x32 latent, 8x8 region cells) with 6 "
            "Euler steps, two runs of 6 U-Net calls each: about 1 minute on 2 idle CPU cores (about 3.4 s per "
            "call), several times longer when the cores are busy with other work. More --steps cost about 7 s "
            "each; --channels 64 --res-blocks 1 (same layout, shrunk) takes seconds."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--size", type=_size, default=DEFAULTS["size"],
                   help="image side in pixels, a multiple of 64 so that the SD U-Net's skip connections fit "
                        "(latent size/8, region grid size/32)")
    p.add_argument("--steps", type=_positive, default=DEFAULTS["steps"], help="sampling steps")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed of the U-Net weights, the synthetic prompt and the initial noise")
    p.add_argument("--cfg-scale", type=float, default=DEFAULTS["cfg_scale"], help="CFG scale")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=DEFAULTS["sampler"],
                   help="k-diffusion sampler (euler_a uses the same per-step noise in both runs)")
    p.add_argument("--scheduler", choices=("auto", "normal", "karras"), default=DEFAULTS["scheduler"],
                   help="sigma schedule; auto = karras for dpmpp_2m, else the model's own (A1111 'Automatic')")
    p.add_argument("--words", type=int, choices=range(1, MAX_WORDS + 1), default=DEFAULTS["words"],
                   metavar=f"1..{MAX_WORDS}", help="number of distinct 'word' tokens in the synthetic prompt")
    p.add_argument("--channels", type=_positive, default=DEFAULTS["channels"],
                   help="U-Net model_channels (320 = real SD1.5; a multiple of 8 because of 8 heads)")
    p.add_argument("--res-blocks", type=_positive, default=DEFAULTS["res_blocks"],
                   help="res blocks per level (2 = real SD1.5)")
    p.add_argument("--out", default=DEFAULTS["out"], help="output PNG path")
    p.add_argument("--no-progress", action="store_true", help="hide the sampler progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> DemoResult:
    """Run the demo; returns the ``DemoResult`` (the PNG is at ``result.out``)."""
    args = parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.channels % 8:
        parser().error(f"--channels must be a multiple of 8 (8 attention heads), got {args.channels}")
    start = time.perf_counter()
    print(f"S-CFG demo: {describe_model(args)}, random weights, {args.size}x{args.size} px, "
          f"{args.sampler}, {args.steps} steps, CFG {args.cfg_scale:g}, seed {args.seed} "
          "(--help: sizes, samplers, a shrunk U-Net for seconds-long runs)", flush=True)
    result = run_demo(args, progress=not args.no_progress)
    t = time.perf_counter()
    figure = draw_figure(result, args.words, args.cfg_scale)
    result.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(result.out)
    result.timings["figure"] = time.perf_counter() - t
    total = time.perf_counter() - start
    rate = result.rate
    print(f"rate map of the last S-CFG step: min {float(rate.min()):.3f}, max {float(rate.max()):.3f}; "
          f"S-CFG used on {result.steps_applied}/{result.evaluations} model calls")
    print("timing: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()) + f"; total {total:.1f}s")
    print(f"wrote {result.out.resolve()}")
    return result


if __name__ == "__main__":
    main()
