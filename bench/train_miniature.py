"""Train the miniature text-to-image diffusion model (``scfg_ext.miniature``) on the miniature world, on a CPU.

    .venv/bin/python bench/train_miniature.py --batch 32 --steps 3600 --minutes 42 --ema 0.998 --grounding 0.05 \
        --register          # the committed weights: 28 minutes on 2 CPU cores

Text encoder and denoiser network (``--arch``, default the ldm U-Net) are trained jointly with SD's objective:
eps prediction, timesteps uniform over SD's linear schedule (betas 0.00085..0.012, 1000 steps, ldm
``make_beta_schedule``, what k-diffusion's ``CompVisDenoiser`` samples), captions dropped to the empty prompt
with probability ``--dropout`` (so CFG has an unconditional model), AdamW with a linear warm-up and cosine decay,
an EMA of the weights (the EMA is what is saved, fp16). ``--grounding`` adds attention grounding losses
(``Grounding``: cross-attention of each word on its object, self-attention within segments): a 5M-parameter
model trained for minutes does not grow the grounded attention large models have (without them, region IoU
0.16 against 0.11 for a region covering the whole image, ``bench/quality.py``).

Scenes are generated on the fly from ``--seed`` (stream ``seed``, scene ``step * batch + j``); the noise and
timesteps come from a seeded generator. Stops at ``--steps`` or after ``--minutes``, whichever is first (the
schedule follows ``--steps``), saving every ``--save-every`` minutes and at the end; prints the sha256 of the file;
``--register`` writes it into ``scfg_ext/miniature/model.py`` (``WEIGHTS_SHA256``) when ``--out`` is the default
weights path.

A long run goes in pieces: ``--state FILE`` keeps the whole training state there (network, text encoder, their
EMA, the optimiser, the step, the random generators; about 16 bytes per parameter, not for git) at every
checkpoint and at the end, and ``--resume FILE`` continues it exactly where it stopped, with the same arguments
(the LR schedule, scene stream and noise continue as if never stopped: ``tests/test_train_resume.py``)::

    .venv/bin/python bench/train_miniature.py --steps 40000 --minutes 150 --state /work/state/unet.pt ...
    .venv/bin/python bench/train_miniature.py --steps 40000 --minutes 150 --resume /work/state/unet.pt ...
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
    p.add_argument("--grounding", type=float, default=0.0,
                   help="weight of the attention grounding losses (``Grounding``; 0: none)")
    p.add_argument("--word-share", type=float, default=0.0,
                   help="with --grounding: the share of an object cell's cross-attention each of its words should "
                        "have at least (Grounding's share loss; 0: none)")
    p.add_argument("--min-snr", type=float, default=0.0,
                   help="min-SNR-gamma loss weighting (Hang et al. 2023): each sample's eps loss times "
                        "min(SNR, gamma) / SNR, against the drift at high noise (0: plain eps MSE, SD's objective)")
    p.add_argument("--x0-floor", type=float, default=0.0,
                   help="each sample's eps loss times max(1, floor / SNR): the clean-image error weighs at least "
                        "`floor` at every noise level (eps MSE weighs it SNR, ~0.005 at pure noise; v-prediction's "
                        "loss weighs it SNR + 1). Large grounds decide their colour at high noise, so an eps model "
                        "learns to read them from the noise instead of the ground word (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, default=None, help="override the U-Net's model_channels")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast for the network's forward (fp32 weights, optimizer and loss)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="default: the committed weights' path of --arch")
    p.add_argument("--save-every", type=float, default=10.0, help="minutes between checkpoints (to --out)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--init", default=None,
                   help="start from the weights of a miniature safetensors file (same architecture) instead of a "
                        "fresh initialisation: continues a run, with a new optimizer and LR schedule")
    p.add_argument("--state", default=None,
                   help="keep the whole training state in this file (at each checkpoint and at the end) for --resume")
    p.add_argument("--resume", default=None,
                   help="continue the run whose state is in this file (the same arguments; --state defaults to it)")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop after this step (the schedule still follows --steps; a piece of a longer run)")
    p.add_argument("--register", action="store_true",
                   help="write the final sha256 into scfg_ext/miniature/model.py (only with the default --out)")
    p.add_argument("--sample-check", type=int, default=0, metavar="N",
                   help="at the end, sample N world prompts (Euler, 20 steps, CFG 5) and run world.check on them")
    p.add_argument("--sample-png", default=None, help="with --sample-check: write the scenes and samples here")
    return p


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, S, T)`` attention probabilities averaged over heads from projected queries ``(B, S, C)`` and keys
    ``(B, T, C)``, over these keys only (as the capture normalises a map), in float32."""
    q, k = q.float(), k.float()
    b, n, c = q.shape
    sim = torch.einsum("bhsd,bhtd->bhst", q.view(b, n, heads, c // heads).transpose(1, 2),
                       k.view(b, -1, heads, c // heads).transpose(1, 2)) * (c // heads) ** -0.5
    return sim.softmax(-1).mean(1)


class Grounding:
    """Attention grounding losses on the attention layers of ``net`` that S-CFG reads, probabilities averaged over
    heads. The maps: the U-Net's ``attn2`` (cross) and ``attn1`` (self) modules from their ``to_q``/``to_k``; the
    DiT's ``cross_attn`` and ``self_attn`` and, from NextDiT's joint attention, the image-query x text-key part
    (cross) and the image-query x image-key part (self), each normalised over its own keys as the capture reads
    them; the DiTs' q and k as their attention function gets them (``capture.AttentionTap``). The losses:

    * token: TokenCompose's token loss (Wang et al., CVPR 2024, eq. 3): for each word naming a mask (colour and
      shape words: their object; the ground word: the ground), ``1 -`` its attention mass inside the mask over
      its total mass on the layer's grid;
    * pixel: at every cell, ``1 -`` the share of its attention that goes to the words naming it, or to the start
      token where the caption does not name the ground (SD's background sink: what makes S-CFG's foreground,
      the cells not dominated by the start token, the named regions);
    * self: for each cell, ``1 -`` its self-attention mass on the cells of its own segment (object or ground);
    * share (with ``word_share`` > 0): inside its mask, each named word's own share of every cell's attention
      short of ``word_share``, as a fraction of it. The pixel loss is met by the colour word alone (the
      committed U-Net gives the shape word 0.2-4 % of an object's attention and ignores shapes); this one asks
      the colour and the shape word each for their part.

    Each weighted by the signal fraction ``alphas_cumprod[t]`` of the sample (at pure noise the layout is not
    yet decided: there is nothing to ground) and summed."""

    def __init__(self, net: torch.nn.Module, start_token: bool = True, word_share: float = 0.0):
        self.start_token = start_token
        self.word_share = word_share
        self.text_length = MM.CONTEXT  # a joint layer's caption part: the context length of the current batch
        self.seen: dict = {}  # layer key -> {"q": (B, S, C), "k": (B, T, C), "heads": h}
        if not hasattr(net, "input_blocks"):  # the DiTs: q and k as their attention function gets them
            from scfg_ext.capture import AttentionTap, find_joint_layers

            self.tap = AttentionTap(self._record)
            joint = find_joint_layers(net)
            if joint:  # NextDiT's, MMDiT's one joint attention per block, split as the capture splits it
                self.layers = {kind: [(kind, i) for i in range(len(joint))] for kind in ("attn1", "attn2")}
                for i, layer in enumerate(joint):
                    self.tap.watch(layer.attn1, ("joint", i))
                return
            attentions = {"attn1": [b.self_attn for b in net.blocks], "attn2": [b.cross_attn for b in net.blocks]}
            self.layers = {kind: [id(m) for m in ms] for kind, ms in attentions.items()}
            for m in attentions["attn1"] + attentions["attn2"]:
                self.tap.watch(m, id(m))
            return
        modules = {kind: [m for name, m in net.named_modules()
                          if name.endswith(kind) and hasattr(m, "to_q") and hasattr(m, "to_k")]
                   for kind in ("attn1", "attn2")}
        if not modules["attn2"]:
            raise SystemExit("--grounding: the network has no cross-attention modules named attn2")
        self.layers = {kind: [id(m) for m in ms] for kind, ms in modules.items()}
        for m in modules["attn1"] + modules["attn2"]:
            m.to_q.register_forward_hook(self._projection(m, "q"))
            m.to_k.register_forward_hook(self._projection(m, "k"))

    def _projection(self, m, part: str):
        def record(module, args, out):
            self.seen.setdefault(id(m), {"heads": m.heads})[part] = out
        return record

    def _record(self, key, q, k) -> None:
        # (B, H, L, D) -> (B, L, H * D), the U-Net's projection layout
        heads = q.shape[1]
        q, k = q.transpose(1, 2).flatten(2), k.transpose(1, 2).flatten(2)
        if not isinstance(key, int):  # a joint layer: [caption | image] queries and keys
            text = self.text_length
            self.seen[("attn1", key[1])] = {"q": q[:, text:], "k": k[:, text:], "heads": heads}
            self.seen[("attn2", key[1])] = {"q": q[:, text:], "k": k[:, :text], "heads": heads}
            return
        self.seen[key] = {"q": q, "k": k, "heads": heads}

    def targets(self, scenes, context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each token's mask at its context position ``(B, T, H, W)`` (a ground the caption does not name goes
        to the start token, SD's background sink; without a start token it has no target), which positions
        have one ``(B, T)``, and each scene's segments ``(B, 4, H, W)`` (objects, ground, zero padding)."""
        words = torch.zeros(len(scenes), context, W.SIZE, W.SIZE)
        named = torch.zeros(len(scenes), context, dtype=torch.bool)
        segments = torch.zeros(len(scenes), 4, W.SIZE, W.SIZE)
        for b, scene in enumerate(scenes):
            masks = scene.masks().float()
            segments[b, : len(masks)] = masks
            targets = scene.word_targets()
            first = int(self.start_token)
            for k, target in enumerate(targets):
                if target is not None:
                    words[b, k + first], named[b, k + first] = masks[target], True
            if self.start_token and len(scene.objects) not in targets:
                words[b, 0], named[b, 0] = masks[-1], True
        return words, named, segments

    def _probs(self, key) -> torch.Tensor:
        seen = self.seen[key]
        return attention_probs(seen["q"], seen["k"], seen["heads"])

    def loss(self, words, named, segments, signal, captioned) -> dict[str, torch.Tensor]:
        """``signal (B,)``: ``alphas_cumprod[t]``; ``captioned (B,)`` bool: the caption was not dropped."""
        out = {"token": [], "pixel": [], "self": [], "share": []}
        w_token = named.float() * (captioned.float() * signal)[:, None]  # (B, T)
        grids: dict[int, torch.Tensor] = {}  # per grid side: the layers of one level share it
        for key in self.layers["attn2"]:
            probs = self._probs(key)  # (B, S, T)
            side = math.isqrt(probs.shape[1])
            if side not in grids:
                grids[side] = W.grid_fractions(words, side).flatten(2)  # (B, T, S)
            grid = grids[side]
            inside = torch.einsum("bst,bts->bt", probs, grid)
            frac = inside / probs.sum(1).clamp_min(1e-8)
            out["token"].append(((1 - frac) * w_token).sum() / w_token.sum().clamp_min(1e-8))
            if self.word_share > 0:
                short = (1 - probs.transpose(1, 2) / self.word_share).clamp(min=0)  # (B, T, S)
                per_word = (short * grid).sum(2) / grid.sum(2).clamp_min(1e-8)
                out["share"].append((per_word * w_token).sum() / w_token.sum().clamp_min(1e-8))
            # the named share of each cell, over the cells' named area (a cell counts once, whatever its words)
            area = grid.amax(1)  # (B, S)
            share = inside.sum(1) / area.sum(1).clamp_min(1e-8)
            w_pixel = captioned.float() * signal * (area.sum(1) > 0).float()
            if self.start_token:  # without one, where the unnamed ground attends is left to the model
                out["pixel"].append(((1 - share.clamp(max=1)) * w_pixel).sum() / w_pixel.sum().clamp_min(1e-8))
        for key in self.layers["attn1"]:
            probs = self._probs(key)  # (B, S, S)
            f = W.grid_fractions(segments, math.isqrt(probs.shape[1])).flatten(2)  # (B, G, S)
            same = torch.einsum("bgs,bgj->bsj", f, f)  # the chance that cells s and j lie in one segment
            loss = 1 - (probs * same).sum(2).mean(1)
            out["self"].append((loss * signal).sum() / signal.sum().clamp_min(1e-8))
        self.seen.clear()
        return {k: torch.stack(v).mean() for k, v in out.items() if v}


def loss_weight(signal: torch.Tensor, args) -> torch.Tensor:
    """Per-sample weight of the eps MSE at ``signal = alphas_cumprod[t]``: 1 (SD's objective), min-SNR-gamma's
    ``min(SNR, gamma) / SNR`` with ``--min-snr``, raised to ``floor / SNR`` where that is more with
    ``--x0-floor`` (an eps error is a clean-image error divided by sigma, so this floors the clean image's
    weight at ``floor``)."""
    snr = signal / (1 - signal)
    weight = snr.clamp(max=args.min_snr) / snr if args.min_snr > 0 else torch.ones_like(snr)
    return torch.maximum(weight, args.x0_floor / snr) if args.x0_floor > 0 else weight


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    f = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * f))


def register(sha: str, name: str = "WEIGHTS_SHA256") -> None:
    path = Path(MM.__file__)
    text = path.read_text()
    new, n = re.subn(rf"^{name}: str \| None = .*$", f'{name}: str | None = "{sha}"', text, count=1, flags=re.M)
    if n != 1:
        raise RuntimeError(f"could not find the {name} line in {path}")
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


# the arguments a resumed piece must share with the run it continues (the rest: threads, logging, when to stop)
RUN_ARGS = ("arch", "steps", "batch", "lr", "min_lr", "warmup", "weight_decay", "ema", "dropout", "grounding",
            "word_share", "min_snr", "x0_floor", "seed", "channels", "bf16")


def save_state(path: Path, step: int, minutes: float, modules: dict, opt, g: torch.Generator, args, config) -> None:
    """The whole training state, written atomically (a temporary file renamed)."""
    state = {"step": step, "minutes": minutes, "config": config, "args": {k: getattr(args, k) for k in RUN_ARGS},
             "modules": {k: m.state_dict() for k, m in modules.items()}, "optimizer": opt.state_dict(),
             "generator": g.get_state(), "torch_rng": torch.get_rng_state()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_state(path: Path, modules: dict, opt, g: torch.Generator, args, config) -> tuple[int, float]:
    """Restore what ``save_state`` wrote into the run's objects; returns ``(step, minutes so far)``."""
    state = torch.load(path, weights_only=False)  # our own file: tensors, dicts and the generator states
    if state["config"] != config:
        raise SystemExit(f"--resume {path}: its model config differs from this run's")
    defaults = vars(parser().parse_args([]))  # a state written before an argument existed ran its default
    there = {k: state["args"].get(k, defaults[k]) for k in RUN_ARGS}
    changed = [k for k in RUN_ARGS if there[k] != getattr(args, k)]
    if changed:
        raise SystemExit(f"--resume {path}: run with the arguments it was started with; differs in "
                         + ", ".join(f"--{k.replace('_', '-')} ({there[k]} there, {getattr(args, k)} here)"
                                     for k in changed))
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    opt.load_state_dict(state["optimizer"])
    g.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["minutes"]


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.resume and args.init:
        raise SystemExit("--resume continues a run with its own weights; --init starts a new one: not both")
    from scfg_ext.miniature.evaluate import EVAL_STREAM

    if args.seed == EVAL_STREAM:
        raise SystemExit(f"--seed {EVAL_STREAM} is the evaluation stream (bench/quality.py, tests): train on another")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base, default, sha_name = MM.TRAINED[args.arch]
    config = copy.deepcopy(base)
    out = Path(args.out or default)
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
    tokenizer = MM.tokenizer_for(config)
    g = torch.Generator().manual_seed(args.seed + 1)
    autocast = (lambda: torch.autocast("cpu", torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    out.parent.mkdir(parents=True, exist_ok=True)
    modules = {"text": text_encoder, "net": net, "ema_text": ema_text, "ema_net": ema_net}
    state_path = Path(args.state or args.resume) if (args.state or args.resume) else None
    step, minutes_before = 0, 0.0
    if args.resume:
        step, minutes_before = load_state(Path(args.resume), modules, opt, g, args, config)
        print(f"resumed {args.resume} at step {step} ({minutes_before:.1f} min of training before)", flush=True)
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    training = {"args": vars(args), "parameters": n_text + n_net}
    start = time.perf_counter()
    last_save = start
    t_log, loss_sum, loss_n = start, 0.0, 0
    sha = None
    grounding = Grounding(net, tokenizer.start, args.word_share) if args.grounding > 0 else None
    ground_sum: dict[str, float] = {}
    while step < stop and time.perf_counter() - start < args.minutes * 60:
        images, captions, scenes = W.batch(args.seed, step * args.batch, args.batch)
        ids = tokenizer.encode(["", *captions])  # one call: a trimming tokenizer cuts them to one length
        empty, ids = ids[0], ids[1:]
        drop = torch.rand(args.batch, generator=g) < args.dropout
        ids[drop] = empty
        if grounding is not None:
            grounding.text_length = ids.shape[1]
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
        per_sample = (eps.float() - noise).pow(2).mean((1, 2, 3))
        loss = diffusion = (per_sample * loss_weight(a.view(-1), args)).mean()
        if grounding is not None:
            parts = grounding.loss(*grounding.targets(scenes, ids.shape[1]), a.view(-1), ~drop)
            for k, v in parts.items():
                ground_sum[k] = ground_sum.get(k, 0.0) + float(v.detach())
            loss = loss + args.grounding * sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        loss_sum += float(diffusion.detach())
        loss_n += 1
        now = time.perf_counter()
        if step % args.log_every == 0 or step == args.steps:
            rate = loss_n / (now - t_log)
            left = (args.steps - step) / rate
            ground_text = "".join(f"  {k} {v / loss_n:.3f}" for k, v in ground_sum.items())
            print(f"step {step:5d}/{args.steps}  loss {loss_sum / loss_n:.4f}{ground_text}  "
                  f"lr {lr_at(step - 1, args):.2e}  {rate:.2f} steps/s  elapsed {(now - start) / 60:.1f} min  "
                  f"eta {left / 60:.1f} min", flush=True)
            t_log, loss_sum, loss_n, ground_sum = now, 0.0, 0, {}
        if now - last_save > args.save_every * 60:
            minutes = minutes_before + (now - start) / 60
            training.update(steps=step, minutes=minutes, final=False)
            sha = MM.save(out, ema_text, ema_net, config, training)
            if state_path is not None:
                save_state(state_path, step, minutes, modules, opt, g, args, config)
            print(f"checkpoint at step {step}: {out} sha256 {sha}", flush=True)
            last_save = now
    minutes = minutes_before + (time.perf_counter() - start) / 60
    training.update(steps=step, minutes=minutes, final=step >= args.steps)
    sha = MM.save(out, ema_text, ema_net, config, training)
    if state_path is not None:
        save_state(state_path, step, minutes, modules, opt, g, args, config)
        print(f"training state at step {step}: {state_path}", flush=True)
    print(f"done: {step} steps in {minutes:.1f} min; wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)", flush=True)
    print(f"sha256 {sha}", flush=True)
    if args.register:
        if out.resolve() != default.resolve():
            print("--register ignored: --out is not the default weights path", flush=True)
        else:
            register(sha, sha_name)
    if args.sample_check:
        te, un, meta = MM.load(out, sha256=sha)
        sample_check(te, un, meta.tokenizer, args.sample_check, png=args.sample_png)


if __name__ == "__main__":
    main()
