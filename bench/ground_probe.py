"""Does a miniature read its ground word? Where the word-swap gate (``quality.py --gate``) says no, this says where
the signal is lost.

    .venv/bin/python bench/ground_probe.py --weights out/u2.safetensors

For the first 32 scenes of the evaluation stream whose caption names the ground, noised at five timesteps (one
noise for all captions): the RMS error of the clean-image estimate on the ground's pixels with the caption, with
its ground word swapped, and with the empty prompt; and, for the U-Net, the share of the ground cells'
cross-attention that goes to the ground word in each ``attn2`` layer. A model that reads the word has a lower
error with the right caption than with the swapped one at high noise; equal errors with the attention on the
word mean the value path drops it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.modules.diffusionmodules.util import make_beta_schedule  # noqa: E402

from bench.quality import swap_word  # noqa: E402
from bench.train_miniature import attention_probs  # noqa: E402
from scfg_ext.miniature import evaluate as E  # noqa: E402
from scfg_ext.miniature import model as MM  # noqa: E402
from scfg_ext.miniature import world as W  # noqa: E402

TIMESTEPS = (999, 950, 900, 800, 600)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="a miniature safetensors file (default: the committed U-Net)")
    p.add_argument("--n", type=int, default=32)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    text_encoder, net, meta = MM.load(args.weights)
    s = meta.config["schedule"]
    betas = torch.as_tensor(make_beta_schedule(s["kind"], s["steps"], s["beta_start"], s["beta_end"]))
    signal = torch.cumprod(1 - betas, 0).float()
    scenes = [sc for sc in W.scenes(E.EVAL_STREAM, 10 * args.n) if sc.mention_ground][: args.n]
    x0 = MM.to_latent(torch.stack([sc.render() for sc in scenes]))
    ground = torch.stack([sc.masks()[-1] for sc in scenes])[:, None].float()
    position = torch.tensor([len(sc.words()) for sc in scenes])  # the ground word's, after the start token
    captions = {"right": [sc.caption for sc in scenes], "swapped": [swap_word(sc, "ground") for sc in scenes],
                "empty": [""] * len(scenes)}
    seen: dict[str, dict] = {}
    for name, m in net.named_modules():
        if name.endswith("attn2") and hasattr(m, "to_q"):
            for part in ("q", "k"):
                getattr(m, f"to_{part}").register_forward_hook(
                    lambda mod, a, out, name=name, part=part, heads=m.heads: seen.setdefault(name, {"h": heads})
                    .__setitem__(part, out))
    g = torch.Generator().manual_seed(0)
    print(f"# ground probe: {type(net).__name__} ({meta.sha256[:8]}), {len(scenes)} scenes naming their ground")
    print("| t | sigma | ground error: right | swapped | empty | ground cells' attention on the ground word |")
    print("|---|---|---|---|---|---|")
    for t in TIMESTEPS:
        a = signal[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
        errors, shares = {}, []
        for key, caption in captions.items():
            seen.clear()
            with torch.no_grad():
                eps = net(xt, torch.full((len(scenes),), t), context=text_encoder(meta.tokenizer.encode(caption)))
            clean = (xt - (1 - a).sqrt() * eps) / a.sqrt()
            errors[key] = (((clean - x0)[:, :3] ** 2 * ground).sum() / (3 * ground.sum())).sqrt().item()
            if key == "right":
                for d in seen.values():
                    probs = attention_probs(d["q"], d["k"], d["h"])[torch.arange(len(scenes)), :, position]
                    cells = W.grid_fractions(ground, math.isqrt(probs.shape[1])).flatten(1)
                    shares.append(f"{((probs * cells).sum() / cells.sum()).item():.2f}")
        sigma = ((1 - a) / a).sqrt().item()
        print(f"| {t} | {sigma:.2f} | {errors['right']:.3f} | {errors['swapped']:.3f} | {errors['empty']:.3f} | "
              f"{' / '.join(shares) or '-'} |")


if __name__ == "__main__":
    main()
