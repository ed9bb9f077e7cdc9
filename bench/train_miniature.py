"""Train the miniature text-to-image diffusion model (``scfg_ext.miniature``) on the miniature world, on a CPU.

    .venv/bin/python bench/train_miniature.py --steps 3000 --minutes 52 --register

Text encoder and denoiser network (``--arch``, default the ldm U-Net) are trained jointly with SD's objective:
eps prediction, timesteps uniform over SD's linear schedule (betas 0.00085..0.012, 1000 steps, ldm
``make_beta_schedule``, what k-diffusion's ``CompVisDenoiser`` samples), captions dropped to the empty prompt
with probability ``--dropout`` (so CFG has an unconditional model), AdamW with a linear warm-up and cosine decay,
an EMA of the weights (the EMA is what is saved, fp16). Scenes are generated on the fly from ``--seed`` (stream
``seed``, scene ``step * batch + j``); the noise and timesteps come from a seeded generator. Stops at ``--steps``
or after ``--minutes``, whichever is first (the schedule follows ``--steps``), saving every ``--save-every``
minutes and at the end; prints the sha256 of the file; ``--register`` writes it into
``scfg_ext/miniature/model.py`` (``WEIGHTS_SHA256``) when ``--out`` is the default weights path.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scfg_ext import testbed  # noqa: E402
from scfg_ext.miniature import model as MM  # noqa: E402
from scfg_ext.miniature import world as W  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="unet", choices=sorted(MM.ARCHITECTURES), help="denoiser architecture")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (the LR schedule's length)")
    p.add_argument("--minutes", type=float, default=55.0, help="stop (and save) after this much training time")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4, help="LR at the end of the cosine decay")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (with the usual (1+n)/(10+n) warm-up)")
    p.add_argument("--dropout", type=float, default=0.15, help="probability of training on the empty prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, default=None, help="override the U-Net's model_channels")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast for the network's forward (fp32 weights, optimizer and loss)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(MM.WEIGHTS))
    p.add_argument("--save-every", type=float, default=10.0, help="minutes between checkpoints (to --out)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--init", default=None,
                   help="start from the weights of a miniature safetensors file (same architecture) instead of a "
                        "fresh initialisation: continues a run, with a new optimizer and LR schedule")
    p.add_argument("--register", action="store_true",
                   help="write the final sha256 into scfg_ext/miniature/model.py (only with the default --out)")
    p.add_argument("--sample-check", type=int, default=0, metavar="N",
                   help="at the end, sample N world prompts (Euler, 20 steps, CFG 5) and run world.check on them")
    p.add_argument("--sample-png", default=None, help="with --sample-check: write the scenes and samples here")
    return p


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    f = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * f))


def register(sha: str) -> None:
    path = Path(MM.__file__)
    text = path.read_text()
    new, n = re.subn(r"^WEIGHTS_SHA256: str \| None = .*$", f'WEIGHTS_SHA256: str | None = "{sha}"', text,
                     count=1, flags=re.M)
    if n != 1:
        raise RuntimeError(f"could not find the WEIGHTS_SHA256 line in {path}")
    path.write_text(new)
    print(f"registered sha256 {sha} in {path}", flush=True)


def sample_check(text_encoder, net, tokenizer, n: int, seed: int = 12345, png: str | None = None) -> float:
    """Sample ``n`` held-out world prompts (stream ``seed``), check them, print and return the accuracy; with
    ``png``, write the prompts' own scenes (top row) above the samples (bottom row), 4x enlarged."""
    scenes = list(W.scenes(seed, n))
    prompts = [s.caption for s in scenes]
    from scfg_ext.miniature import evaluate as E

    lat, _ = E.sample_recording(E.Miniature(text_encoder, net, tokenizer, testbed.k_denoiser(net)), prompts, seed,
                                steps=20, cfg_scale=5.0)
    rgb = MM.to_rgb(lat)
    good = 0
    for img, prompt in zip(rgb, prompts, strict=True):
        r = W.check(img, prompt)
        good += r.ok
        print(f"  {'ok ' if r.ok else 'BAD'} {prompt!r}: {'; '.join(r.reasons) or 'all objects right'}", flush=True)
    print(f"sample check: {good}/{n} images right", flush=True)
    if png:
        from PIL import Image

        real = torch.stack([sc.render() for sc in scenes])
        grid = torch.cat([torch.cat(list(real), 2), torch.cat(list(rgb), 2)], 1)
        img = Image.fromarray(MM.to_uint8(grid[None])[0].numpy())
        img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(png)
        print(f"wrote {png}", flush=True)
    return good / n


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    from scfg_ext.miniature.evaluate import EVAL_STREAM

    if args.seed == EVAL_STREAM:
        raise SystemExit(f"--seed {EVAL_STREAM} is the evaluation stream (bench/quality.py, tests): train on another")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = copy.deepcopy(MM.DEFAULT_CONFIG)
    config["arch"] = args.arch
    if args.channels:
        config["net"]["model_channels"] = args.channels
    text_encoder, net = MM.build(config, seed=args.seed)
    if args.init:
        te0, net0, meta0 = MM.load(args.init)
        if meta0.config != config:
            raise SystemExit(f"--init {args.init}: its config differs from this run's")
        text_encoder.load_state_dict(te0.state_dict())
        net.load_state_dict(net0.state_dict())
        print(f"initialised from {args.init} ({meta0.training.get('steps')} steps, sha256 {meta0.sha256})", flush=True)
    text_encoder.train()
    net.train()
    params = list(text_encoder.parameters()) + list(net.parameters())
    n_text, n_net = MM.parameter_count(text_encoder), MM.parameter_count(net)
    print(f"arch {args.arch}: text encoder {n_text / 1e6:.3f}M, network {n_net / 1e6:.3f}M parameters "
          f"({(n_text + n_net) * 2 / 2**20:.1f} MiB fp16); config {json.dumps(config['net'])}", flush=True)
    ema_text, ema_net = copy.deepcopy(text_encoder).eval(), copy.deepcopy(net).eval()
    ema_params = list(ema_text.parameters()) + list(ema_net.parameters())
    for p in ema_params:
        p.requires_grad_(False)
    decay_params = [p for p in params if p.ndim >= 2]
    other_params = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": args.weight_decay},
                             {"params": other_params, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.99))

    from ldm.modules.diffusionmodules.util import make_beta_schedule

    s = config["schedule"]
    betas = torch.as_tensor(make_beta_schedule(s["kind"], s["steps"], s["beta_start"], s["beta_end"]),
                            dtype=torch.float32)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    tokenizer = MM.Tokenizer(config["vocab"])
    empty = tokenizer.encode("")[0]
    g = torch.Generator().manual_seed(args.seed + 1)
    autocast = (lambda: torch.autocast("cpu", torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    training = {"args": vars(args), "parameters": n_text + n_net}
    start = time.perf_counter()
    last_save = start
    t_log, loss_sum, loss_n = start, 0.0, 0
    step = 0
    sha = None
    while step < args.steps and time.perf_counter() - start < args.minutes * 60:
        images, captions, _ = W.batch(args.seed, step * args.batch, args.batch)
        ids = tokenizer.encode(captions)
        drop = torch.rand(args.batch, generator=g) < args.dropout
        ids[drop] = empty
        x0 = MM.to_latent(images)
        t = torch.randint(0, s["steps"], (args.batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        with autocast():
            context = text_encoder(ids)
            eps = net(xt, t, context=context)
        loss = torch.nn.functional.mse_loss(eps.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        loss_sum += float(loss.detach())
        loss_n += 1
        now = time.perf_counter()
        if step % args.log_every == 0 or step == args.steps:
            rate = loss_n / (now - t_log)
            left = (args.steps - step) / rate
            print(f"step {step:5d}/{args.steps}  loss {loss_sum / loss_n:.4f}  lr {lr_at(step - 1, args):.2e}  "
                  f"{rate:.2f} steps/s  elapsed {(now - start) / 60:.1f} min  eta {left / 60:.1f} min", flush=True)
            t_log, loss_sum, loss_n = now, 0.0, 0
        if now - last_save > args.save_every * 60:
            training.update(steps=step, minutes=(now - start) / 60, final=False)
            sha = MM.save(out, ema_text, ema_net, config, training)
            print(f"checkpoint at step {step}: {out} sha256 {sha}", flush=True)
            last_save = now
    minutes = (time.perf_counter() - start) / 60
    training.update(steps=step, minutes=minutes, final=True)
    sha = MM.save(out, ema_text, ema_net, config, training)
    print(f"done: {step} steps in {minutes:.1f} min; wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)", flush=True)
    print(f"sha256 {sha}", flush=True)
    if args.register:
        if out.resolve() != MM.WEIGHTS.resolve():
            print("--register ignored: --out is not the default weights path", flush=True)
        else:
            register(sha)
    if args.sample_check:
        te, un, meta = MM.load(out, sha256=sha)
        sample_check(te, un, meta.tokenizer, args.sample_check, png=args.sample_png)


if __name__ == "__main__":
    main()
