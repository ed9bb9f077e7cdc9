"""Whole generations on one GPU, plain CFG vs S-CFG interleaved: wall time, GPU kernel time and peak memory.

The cases (random weights): SD1.5 at 512² and SDXL at 1024² (``testbed.build_unet`` / ``build_sdxl_unet``,
ldm's real ``UNetModel``; A1111's "sdp" attention forward), batch 1 and 4, fp16 under autocast as A1111 runs
them; and Lumina 2 at 1024², batch 1, bf16 (the miniature NextDiT at Lumina 2's size: 26 joint-attention layers
of width 2304, 24 heads, a 256-token text; ``bench/capture_cost.py``'s ``lumina2``).

A generation: ``--steps`` Euler steps of ``x += (sigma' - sigma) * denoised`` on one network call per step with
the batch's cond rows then its uncond rows (A1111's layout), combined by plain CFG (``guidance.plain_cfg``, A1111's
arithmetic) or by ``ScfgRun.combine`` with the run attached for the whole generation (default settings). The
sampler's own arithmetic is the same in both modes and tiny; what differs is S-CFG.

* wall: ms per step, plain and S-CFG generations alternating (ABBA) after one discarded round, the device
  synchronised around each generation; the ratio of the medians and the median of the per-round ratios;
* GPU kernel time: torch.profiler over ``--profile-steps`` steps per mode, the sum of the kernels' device time
  per step: what a step costs when the host never makes the GPU wait;
* peak: ``torch.cuda.max_memory_allocated`` over a generation (weights included), reset before each one.

It prints a markdown table that the README can take as it is. ``--small``: small-channel networks at small sizes
with few steps, on whatever device there is (the CPU check that the script runs: no kernel time or peak there).

    bench/gpu.sh                 # one H100: about 4-6 minutes
    bench/gpu.sh --small         # CPU check, about a minute
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from scfg_ext import testbed  # noqa: E402
from scfg_ext.capture import Cond, Uncond  # noqa: E402
from scfg_ext.guidance import ScfgRun, plain_cfg  # noqa: E402
from scfg_ext.settings import Settings  # noqa: E402

LUMINA2 = dict(in_channels=16, out_channels=16, patch=2, dim=2304, depth=26, heads=24, context_dim=2304,
               refiner_depth=2, axes=(32, 32, 32))
LUMINA2_SMALL = dict(LUMINA2, dim=128, depth=4, heads=4, context_dim=64, refiner_depth=1, axes=(8, 12, 12))
# (name, size, batch, dtype): the full cases, and the --small ones
CASES = [("SD1.5", 512, 1, "fp16"), ("SD1.5", 512, 4, "fp16"), ("SDXL", 1024, 1, "fp16"), ("SDXL", 1024, 4, "fp16"),
         ("Lumina 2", 1024, 1, "bf16")]
SMALL_CASES = [("SD1.5", 64, 1, "fp32"), ("SD1.5", 64, 4, "fp32"), ("SDXL", 64, 1, "fp32"),
               ("Lumina 2", 64, 1, "fp32")]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GiB = 2**30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="small networks and sizes, few steps (a CPU check)")
    p.add_argument("--steps", type=int, default=None, help="steps per generation (default 20; --small 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 3; --small 1)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled per mode for the kernel time")
    p.add_argument("--cases", default=None, help="comma-separated case numbers to run (1-based; default all)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    return p.parse_args(argv)


class Case:
    def __init__(self, name: str, size: int, batch: int, dtype: str, small: bool, device: torch.device):
        self.name, self.size, self.batch, self.dtype_name = name, size, batch, dtype
        self.dtype, self.device = DTYPES[dtype], device
        if name == "Lumina 2":
            from scfg_ext.miniature.nextdit import MiniatureNextDiT

            config = LUMINA2_SMALL if small else LUMINA2
            torch.manual_seed(0)
            with torch.device(device):
                self.net = MiniatureNextDiT(**config).to(self.dtype).eval().requires_grad_(False)
            self.channels, self.tokens, self.context_dim = 16, 256, config["context_dim"]
            self.autocast = contextlib.nullcontext  # Forge runs the DiTs in their weights' type
        else:
            if name == "SD1.5":
                config = testbed.small_config(testbed.SD15_UNET) if small else testbed.SD15_UNET
                self.net = testbed.build_unet(config, dtype=self.dtype, device=device)
            else:
                config = testbed.SDXL_SMALL if small else testbed.SDXL_UNET
                depths = (0, 1, 3) if small else testbed.SDXL_DEPTHS
                self.net = testbed.build_sdxl_unet(config, depths=depths, dtype=self.dtype, device=device)
            self.channels, self.tokens, self.context_dim = 4, 77, config["context_dim"]
            self.autocast = (contextlib.nullcontext if self.dtype == torch.float32
                             else lambda: torch.autocast(device.type, dtype=self.dtype))
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.net.parameters())
        g = torch.Generator().manual_seed(size + batch)
        self.context = torch.randn(2 * batch, self.tokens, self.context_dim, generator=g).to(device, self.dtype)
        self.noise = torch.randn(batch, self.channels, size // 8, size // 8, generator=g).to(device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def generate(self, mode: str, steps: int) -> int:
        """One generation; returns the steps S-CFG guided."""
        b = self.batch
        run = ScfgRun(Settings(enabled=True)) if mode == "scfg" else None
        roles = [Cond(i) for i in range(b)] + [Uncond(i) for i in range(b)]
        sigmas = torch.linspace(1.0, 0.0, steps + 1).tolist()
        x = self.noise.clone()
        with torch.no_grad(), self.autocast(), (run.attached(self.net) if run else contextlib.nullcontext()):
            for i in range(steps):
                if run is not None:
                    run.begin_step(roles, i / steps)
                t = torch.full((2 * b,), sigmas[i] * 1000, device=self.device)
                out = self.net(torch.cat([x, x]).to(self.dtype), t, context=self.context)
                conds = [[(out[j], 1.0)] for j in range(b)]
                denoised = run.combine(out[b:], conds, 7.5) if run else plain_cfg(out[b:], conds, 7.5)
                x = x + (sigmas[i + 1] - sigmas[i]) * denoised.float()
        if run is not None:
            run.finish()
            return run.steps_applied
        return 0

    def measure(self, steps: int, repeats: int, profile_steps: int) -> dict:
        cuda = self.device.type == "cuda"
        times = {"plain": [], "scfg": []}
        peak = {"plain": 0, "scfg": 0}
        applied = steps
        for r in range(1 + repeats):  # round 0: warm-up
            for mode in (("plain", "scfg") if r % 2 == 0 else ("scfg", "plain")):
                if cuda:
                    torch.cuda.reset_peak_memory_stats(self.device)
                self.sync()
                t0 = time.perf_counter()
                n = self.generate(mode, steps)
                self.sync()
                if r > 0:
                    times[mode].append((time.perf_counter() - t0) / steps)
                if cuda:
                    peak[mode] = max(peak[mode], torch.cuda.max_memory_allocated(self.device))
                if mode == "scfg":
                    applied = min(applied, n)
        out = {"times": times, "applied": applied, "steps": steps}
        if cuda:
            out["peak"] = peak
            out["kernel_ms"] = {mode: self.kernel_ms(mode, profile_steps) for mode in ("plain", "scfg")}
        return out

    def kernel_ms(self, mode: str, steps: int) -> float:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            self.generate(mode, steps)
        avgs = prof.key_averages()
        key = "self_device_time_total" if hasattr(avgs[0], "self_device_time_total") else "self_cuda_time_total"
        return sum(getattr(e, key) for e in avgs if e.device_type == DeviceType.CUDA) / 1e3 / steps


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def row(case: Case, r: dict) -> str:
    tp, ts = statistics.median(r["times"]["plain"]), statistics.median(r["times"]["scfg"])
    paired = statistics.median(s / p for p, s in zip(r["times"]["plain"], r["times"]["scfg"], strict=True))
    cells = [case.name, f"{case.size}²", str(case.batch), case.dtype_name, f"{tp * 1e3:.1f}", f"{ts * 1e3:.1f}",
             f"x{ts / tp:.3f} (paired x{paired:.3f})"]
    k = r.get("kernel_ms")
    cells += [f"{k['plain']:.1f}", f"{k['scfg']:.1f}", f"x{k['scfg'] / k['plain']:.3f}"] if k else ["-"] * 3
    pk = r.get("peak")
    cells += ([f"{pk['plain'] / GiB:.2f}", f"{pk['scfg'] / GiB:.2f}", f"x{pk['scfg'] / pk['plain']:.4f}"] if pk
              else ["-"] * 3)
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    a = parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    steps = a.steps or (2 if a.small else 20)
    repeats = a.repeats or (1 if a.small else 3)
    testbed.use_sdp_attention()
    cases = SMALL_CASES if a.small else CASES
    if a.cases:
        cases = [cases[int(i) - 1] for i in a.cases.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    started = time.perf_counter()
    lines = []
    for spec in cases:
        t0 = time.perf_counter()
        case = Case(*spec, small=a.small, device=device)
        r = case.measure(steps, repeats, a.profile_steps)
        lines.append(row(case, r))
        print(f"{spec[0]} {spec[1]}² b{spec[2]} {spec[3]}: {time.perf_counter() - t0:.0f} s; S-CFG guided "
              f"{r['applied']} of {steps} steps", file=sys.stderr, flush=True)
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{name}, torch {torch.__version__}, commit {commit()}, random weights, {steps} Euler steps per "
          f"generation, median of {repeats} interleaved rounds (`bench/gpu.sh{' --small' if a.small else ''}`, "
          f"{time.perf_counter() - started:.0f} s):\n")
    print("| model | size | batch | weights | plain ms/step | S-CFG ms/step | wall | plain GPU ms/step "
          "| S-CFG GPU ms/step | GPU kernels | plain peak GiB | S-CFG peak GiB | peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print("\nwall: S-CFG/plain time per step (ratio of the medians; paired: median of the per-round ratios); GPU: "
          "the sum of the kernels' device time per step (torch.profiler), what a step costs when the host never "
          "makes the GPU wait; peak: torch.cuda.max_memory_allocated over a generation, weights included.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
