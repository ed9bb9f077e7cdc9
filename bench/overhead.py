"""S-CFG overhead benchmark: plain CFG vs S-CFG on the real SD1.5 U-Net with a real k-diffusion sampler.

What runs: ``testbed.build_unet`` (the real ldm ``UNetModel`` with SD1.5's config, 859M parameters, random
weights), ``testbed.k_denoiser`` (k-diffusion's ``CompVisDenoiser``) and ``testbed.CFGModel`` (A1111's layout:
batch 1 = 2 U-Net rows, cond then uncond, one U-Net call per step), sampled with k-diffusion's
``sample_euler`` or ``sample_dpmpp_2m``. S-CFG is ``ScfgRun(Settings(enabled=True))`` attached with
``run.attached(unet)`` for the whole generation, as the WebUI script does.

How it measures:

* time: plain and S-CFG generations alternate in one process (ABBA order), after ``--warmup`` discarded
  rounds; the per-step time of a generation is its wall time (CUDA synchronised before and after, hook
  attachment included) over its step count; the table gives the median over ``--repeats`` rounds.
* memory, CUDA: ``torch.cuda.reset_peak_memory_stats`` before each generation and
  ``max_memory_allocated`` after it (allocated tensor bytes, not the caching allocator's reserve).
  "total" is that peak, weights and everything else included; "working" is the peak minus the bytes
  allocated before the generation starts (weights, prompt tensors), i.e. what sampling itself needs.
* memory, CPU: each (size, mode) runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_`` set low so that
  freed tensors go back to the OS; after the model is built the kernel's peak-RSS mark is reset
  (``/proc/self/clear_refs``), one generation runs, and "working" is peak RSS minus the RSS before it;
  "total" is that peak RSS of the whole process (Python, torch and weights included).
* breakdown (``--breakdown``, default on): single denoiser calls, interleaved: plain CFG; S-CFG hooks attached
  but idle (a step outside the start/end range); hooks computing the maps (``plan_step`` + U-Net +
  ``masks()``), without the guidance combination; the full S-CFG step.

Options for finding where time goes: ``--sync-debug`` counts host-device synchronisations per source line
in one plain and one S-CFG step (CUDA only); ``--profile SIZE`` prints torch.profiler's top operators for
S-CFG steps at that size. ``--pkg-root DIR`` imports ``scfg_ext`` from DIR instead of this checkout (to A/B a
patched copy). No timing assertions: the script reports and exits 0.

Examples::

    python bench/overhead.py --small --sizes 256 512 --steps 4 --repeats 2          # CPU smoke run
    python bench/overhead.py --sizes 256 512 768 1024 --steps 20 --repeats 5         # CUDA, fp16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 768], help="image sizes in pixels (latent = /8)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps per generation")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (one plain + one S-CFG generation each)")
    p.add_argument("--warmup", type=int, default=1, help="discarded rounds before timing, per size")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="U-Net weights (auto: fp16 on CUDA, fp32 on CPU); half types run under autocast as A1111")
    p.add_argument("--sampler", default="euler", choices=["euler", "dpmpp_2m"])
    p.add_argument("--small", action="store_true", help="small-channel U-Net (testbed.small_config), for smoke runs")
    p.add_argument("--attention", default="sdp", choices=["sdp", "ldm"],
                   help="CrossAttention forward: sdp = torch scaled_dot_product_attention, as A1111's sdp "
                        "optimisation and Forge; ldm = ldm's own (materialises fp32 probabilities)")
    p.add_argument("--cfg-scale", type=float, default=7.5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the per-call breakdown")
    p.add_argument("--breakdown-iters", type=int, default=10, help="timed calls per breakdown variant")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory measurement")
    p.add_argument("--no-gpu-busy", dest="gpu_busy", action="store_false",
                   help="skip the GPU kernel time per step (CUDA: torch.profiler over 3 steps per mode and size)")
    p.add_argument("--sync-debug", action="store_true", help="count CUDA host syncs per source line (CUDA only)")
    p.add_argument("--profile", type=int, default=0, metavar="SIZE", help="torch.profiler table of S-CFG steps")
    p.add_argument("--pkg-root", default=str(REPO_ROOT), help="directory holding the scfg_ext package to test")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--mem-worker", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = parse_args()
sys.path.insert(0, str(Path(ARGS.pkg_root).resolve()))

import torch  # noqa: E402

from scfg_ext import testbed  # noqa: E402
from scfg_ext.capture import Cond, Uncond  # noqa: E402
from scfg_ext.guidance import ScfgRun  # noqa: E402
from scfg_ext.settings import Settings  # noqa: E402

MiB = 2**20


# -- environment ---------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        dev = args.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        self.cuda = self.device.type == "cuda"
        dtype = args.dtype if args.dtype != "auto" else ("fp16" if self.cuda else "fp32")
        self.dtype_name = dtype
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.attention == "sdp":
            testbed.use_sdp_attention()
        self.sampling, _ = testbed.import_k_diffusion()
        config = testbed.small_config(testbed.SD15_UNET) if args.small else testbed.SD15_UNET
        self.unet = testbed.build_unet(config, dtype=self.dtype, device=self.device)
        self.params = sum(p.numel() for p in self.unet.parameters())
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.unet.parameters())
        self.denoiser = testbed.k_denoiser(self.unet).to(self.device)
        g = torch.Generator().manual_seed(1)
        ctx = config["context_dim"]
        self.cond = torch.randn(1, 77, ctx, generator=g).to(self.device, self.dtype)
        self.uncond = torch.randn(1, 77, ctx, generator=g).to(self.device, self.dtype)
        self.sample_fn = {"euler": self.sampling.sample_euler, "dpmpp_2m": self.sampling.sample_dpmpp_2m}[args.sampler]

    # -- plumbing ----------------------------------------------------------------------------------------
    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def latent(self, size: int, sigma0: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(size)
        return (torch.randn(1, 4, size // 8, size // 8, generator=g) * sigma0.cpu()).to(self.device)

    def generate(self, size: int, mode: str, steps: int | None = None) -> tuple[float, int]:
        """One generation; returns (seconds, S-CFG steps applied)."""
        steps = steps or self.args.steps
        sigmas = self.denoiser.get_sigmas(steps).to(self.device)
        x = self.latent(size, sigmas[0])
        run = ScfgRun(Settings(enabled=True)) if mode == "scfg" else None
        model = testbed.CFGModel(self.denoiser, self.cond, self.uncond, self.args.cfg_scale, run=run,
                                 total_steps=steps)
        self.sync()
        t0 = time.perf_counter()
        with torch.no_grad(), self.autocast(), (run.attached(self.unet) if run else contextlib.nullcontext()):
            self.sample_fn(model, x, sigmas, disable=True)
        self.sync()
        return time.perf_counter() - t0, (run.steps_applied if run else 0)

    # -- sampler-level timing and CUDA memory ---------------------------------------------------------------
    def time_size(self, size: int) -> dict:
        a = self.args
        times = {"plain": [], "scfg": []}
        paired = []
        peak = {"plain": 0, "scfg": 0}
        start = {"plain": 0, "scfg": 0}
        applied = []
        for r in range(a.warmup + a.repeats):
            for mode in (("plain", "scfg") if r % 2 == 0 else ("scfg", "plain")):
                if self.cuda:
                    self.sync()
                    torch.cuda.reset_peak_memory_stats(self.device)
                    before = torch.cuda.memory_allocated(self.device)
                seconds, n = self.generate(size, mode)
                if self.cuda:
                    peak[mode] = max(peak[mode], torch.cuda.max_memory_allocated(self.device))
                    start[mode] = before
                if r >= a.warmup:
                    times[mode].append(seconds / a.steps)
                    if mode == "scfg":
                        applied.append(n)
            if r >= a.warmup:
                paired.append(times["scfg"][-1] / times["plain"][-1])
        out = {"size": size, "latent": size // 8, "times": times, "paired": paired, "applied": applied,
               "steps": a.steps}
        if self.cuda:
            out["mem"] = {"method": "cuda max_memory_allocated", "peak": peak, "start": start}
        return out

    # -- per-call breakdown ------------------------------------------------------------------------------
    def breakdown(self, size: int) -> dict:
        sigmas = self.denoiser.get_sigmas(10).to(self.device)
        x = self.latent(size, sigmas[0])
        sigma = sigmas[3:4]
        roles = [Cond(0), Uncond(0)]
        cond_in = {"c_crossattn": [torch.cat([self.cond, self.uncond])]}
        cfg = self.args.cfg_scale

        def plain():
            testbed.CFGModel(self.denoiser, self.cond, self.uncond, cfg)(x, sigma)

        idle_run = ScfgRun(Settings(enabled=True, start=0.5))  # progress 0 is outside [0.5, 1): hooks idle

        def idle():
            testbed.CFGModel(self.denoiser, self.cond, self.uncond, cfg, run=idle_run)(x, sigma)

        map_run = ScfgRun(Settings(enabled=True))

        def maps():
            map_run.capture.plan_step(roles)
            self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=cond_in)
            if not map_run.capture.masks(x.shape[-2:]):
                raise RuntimeError("no S-CFG maps captured")

        full_run = ScfgRun(Settings(enabled=True))

        def full():
            testbed.CFGModel(self.denoiser, self.cond, self.uncond, cfg, run=full_run)(x, sigma)

        variants = {"plain CFG": (plain, None), "hooks idle": (idle, idle_run), "hooks + maps": (maps, map_run),
                    "full S-CFG": (full, full_run)}
        results = {k: [] for k in variants}
        with torch.no_grad(), self.autocast():
            for it in range(2 + self.args.breakdown_iters):
                names = list(variants) if it % 2 == 0 else list(reversed(variants))
                for name in names:
                    fn, run = variants[name]
                    # only this variant's hooks on the U-Net (attaching is not timed: once per generation)
                    with run.attached(self.unet) if run is not None else contextlib.nullcontext():
                        self.sync()
                        t0 = time.perf_counter()
                        fn()
                        self.sync()
                        if it >= 2:
                            results[name].append(time.perf_counter() - t0)
        if full_run.steps_applied == 0:
            print(f"WARNING: breakdown at {size}: S-CFG applied on no step", flush=True)
        return {k: statistics.median(v) for k, v in results.items()}

    def attach_time(self) -> float:
        run = ScfgRun(Settings(enabled=True))
        t0 = time.perf_counter()
        for _ in range(5):
            with run.attached(self.unet):
                pass
        return (time.perf_counter() - t0) / 5

    # -- diagnostics -------------------------------------------------------------------------------------
    def sync_debug(self, size: int) -> None:
        if not self.cuda:
            print("--sync-debug needs CUDA; skipped")
            return
        for mode in ("plain", "scfg"):
            self.generate(size, mode, steps=2)  # warm
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    self.generate(size, mode, steps=2)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                            if "synchroniz" in str(w.message))
            total = sum(where.values())
            print(f"\nhost syncs, {mode}, {size}px, 2 steps: {total} ({total / 2:.1f} per step)")
            for loc, n in where.most_common(25):
                print(f"  {n:5d}  {loc}")

    def kernel_ms(self, size: int, steps: int = 3) -> dict:
        """GPU kernel time per step (sum of the kernels' device time, torch.profiler), per mode: what the step
        would cost if the host never made the GPU wait."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        out = {}
        for mode in ("plain", "scfg"):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                self.generate(size, mode, steps=steps)
            avgs = prof.key_averages()
            key = "self_device_time_total" if hasattr(avgs[0], "self_device_time_total") else "self_cuda_time_total"
            out[mode] = sum(getattr(e, key) for e in avgs if e.device_type == DeviceType.CUDA) / 1e3 / steps
        return out

    def profile(self, size: int) -> None:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        steps = 3
        for mode in ("plain", "scfg"):
            self.generate(size, mode, steps=steps)
            with profile(activities=acts) as prof:
                wall, _ = self.generate(size, mode, steps=steps)
            avgs = prof.key_averages()
            if self.cuda:
                key = "self_device_time_total" if hasattr(avgs[0], "self_device_time_total") else "self_cuda_time_total"
                busy = sum(getattr(e, key) for e in avgs if e.device_type == DeviceType.CUDA) / 1e3
                print(f"\ntorch.profiler, {mode}, {size}px, {steps} steps: wall {wall / steps * 1e3:.2f} ms/step "
                      f"(profiled), GPU kernels busy {busy / steps:.2f} ms/step")
            else:
                key = "self_cpu_time_total"
                print(f"\ntorch.profiler, {mode}, {size}px, {steps} steps: wall {wall / steps * 1e3:.2f} ms/step")
            print(avgs.table(sort_by=key, row_limit=25, max_name_column_width=60))


# -- CPU memory: one subprocess per (size, mode) ------------------------------------------------------------------
def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def mem_worker(args: argparse.Namespace) -> None:
    size, mode = int(args.mem_worker[0]), args.mem_worker[1]
    bench = Bench(args)
    sigmas = bench.denoiser.get_sigmas(2)
    bench.latent(size, sigmas[0])
    import gc

    gc.collect()
    rss0 = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        reset = True
    except OSError:
        reset = False
    _, applied = bench.generate(size, mode, steps=min(args.steps, 3))
    hwm = _status_kib("VmHWM")
    print(json.dumps({"rss0": rss0 * 1024, "peak": hwm * 1024, "reset": reset, "applied": applied}))


def cpu_memory(args: argparse.Namespace, size: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    peak, start = {}, {}
    for mode in ("plain", "scfg"):
        cmd = [sys.executable, __file__, "--mem-worker", str(size), mode, "--device", "cpu", "--dtype", args.dtype,
               "--steps", str(args.steps), "--attention", args.attention, "--pkg-root", args.pkg_root,
               "--threads", str(args.threads)] + (["--small"] if args.small else [])
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"memory worker failed ({size}, {mode}):\n{res.stderr[-2000:]}", flush=True)
            return {}
        data = json.loads(res.stdout.strip().splitlines()[-1])
        peak[mode], start[mode] = data["peak"], data["rss0"]
        if not data["reset"]:
            print("WARNING: could not reset VmHWM; CPU peak includes model construction", flush=True)
    return {"method": "subprocess peak RSS (VmHWM reset after load)", "peak": peak, "start": start}


# -- report --------------------------------------------------------------------------------------------------
def med(v):
    return statistics.median(v) if v else float("nan")


def print_size(r: dict) -> None:
    tp, ts = med(r["times"]["plain"]), med(r["times"]["scfg"])
    spread = {m: (min(v) * 1e3, max(v) * 1e3) for m, v in r["times"].items() if v}
    print(f"\n== {r['size']}px (latent {r['latent']}), {r['steps']} steps, {len(r['times']['plain'])} rounds ==")
    print(f"  time/step  plain {tp * 1e3:8.2f} ms  [{spread['plain'][0]:.2f}..{spread['plain'][1]:.2f}]   "
          f"S-CFG {ts * 1e3:8.2f} ms  [{spread['scfg'][0]:.2f}..{spread['scfg'][1]:.2f}]   ratio {ts / tp:.3f}")
    print(f"  paired S-CFG/plain ratio per round: {' '.join(f'{x:.3f}' for x in r['paired'])}  "
          f"(median {med(r['paired']):.3f})")
    print(f"  S-CFG applied on {r['applied']} of {r['steps']} steps per generation")
    k = r.get("kernel_ms")
    if k:
        print(f"  GPU kernel time/step  plain {k['plain']:.2f} ms   S-CFG {k['scfg']:.2f} ms   "
              f"ratio {k['scfg'] / k['plain']:.3f}   (sum of kernel durations, torch.profiler, 3 steps)")
    m = r.get("mem")
    if m:
        pp, ps, s = m["peak"]["plain"], m["peak"]["scfg"], m["start"]["plain"]
        wp, ws = pp - s, ps - m["start"]["scfg"]
        print(f"  memory ({m['method']}):")
        print(f"    total peak    plain {pp / MiB:9.1f} MiB   S-CFG {ps / MiB:9.1f} MiB   ratio {ps / pp:.4f}   "
              f"extra {(ps - pp) / MiB:+.1f} MiB")
        print(f"    working peak  plain {wp / MiB:9.1f} MiB   S-CFG {ws / MiB:9.1f} MiB   ratio {ws / max(wp, 1):.4f}"
              f"   (peak minus memory in use before the generation: {s / MiB:.1f} MiB)")
    b = r.get("breakdown")
    if b:
        base = b["plain CFG"]
        print("  per denoiser call (median):  " + "   ".join(
            f"{k} {v * 1e3:.2f} ms ({(v - base) * 1e3:+.2f})" for k, v in b.items()))


def print_table(bench: Bench, results: list[dict]) -> None:
    print(f"\nSummary: {bench.args.sampler}, {bench.args.steps} steps, batch 1 (2 U-Net rows), {bench.dtype_name}, "
          f"{bench.args.attention} attention, {'small' if bench.args.small else 'SD1.5'} U-Net "
          f"({bench.params / 1e6:.1f}M params, {bench.weight_bytes / MiB:.0f} MiB)")
    head = (f"{'size':>5} {'plain ms':>9} {'S-CFG ms':>9} {'t ratio':>7} {'paired':>6} {'GPU ratio':>9} |"
            f" {'peak plain':>10} {'peak S-CFG':>10} "
            f"{'ratio':>6} {'extra MiB':>9} | {'work plain':>10} {'work S-CFG':>10} {'ratio':>6} | "
            f"{'hooks idle':>10} {'+maps':>7} {'+combine':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        tp, ts = med(r["times"]["plain"]), med(r["times"]["scfg"])
        k = r.get("kernel_ms")
        kr = f"{k['scfg'] / k['plain']:9.3f}" if k else f"{'-':>9}"
        row = f"{r['size']:>5} {tp * 1e3:9.2f} {ts * 1e3:9.2f} {ts / tp:7.3f} {med(r['paired']):6.3f} {kr} |"
        m = r.get("mem")
        if m:
            pp, ps = m["peak"]["plain"], m["peak"]["scfg"]
            wp, ws = pp - m["start"]["plain"], ps - m["start"]["scfg"]
            row += (f" {pp / MiB:10.1f} {ps / MiB:10.1f} {ps / pp:6.3f} {(ps - pp) / MiB:9.1f} |"
                    f" {wp / MiB:10.1f} {ws / MiB:10.1f} {ws / max(wp, 1):6.3f} |")
        else:
            row += f" {'-':>10} {'-':>10} {'-':>6} {'-':>9} | {'-':>10} {'-':>10} {'-':>6} |"
        b = r.get("breakdown")
        if b:
            base = b["plain CFG"]
            row += (f" {(b['hooks idle'] - base) * 1e3:+10.2f} {(b['hooks + maps'] - base) * 1e3:+7.2f}"
                    f" {(b['full S-CFG'] - base) * 1e3:+8.2f}")
        print(row)
    mem_method = next((r["mem"]["method"] for r in results if r.get("mem")), "not measured")
    print(f"times: median ms per sampler step (wall); paired: median of per-round S-CFG/plain ratios; GPU ratio: "
          f"kernel time per step S-CFG/plain; peak/work: MiB ({mem_method}); work = peak minus memory in use "
          "before the generation; last three columns: ms added per denoiser call over plain CFG (median)")


def main() -> int:
    args = ARGS
    if args.mem_worker:
        mem_worker(args)
        return 0
    bench = Bench(args)
    dev = torch.cuda.get_device_name(bench.device) if bench.cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {dev}; torch {torch.__version__}; U-Net {bench.params / 1e6:.1f}M params, "
          f"{bench.dtype_name} weights {bench.weight_bytes / MiB:.0f} MiB; sampler {args.sampler}; "
          f"attention {args.attention}; scfg_ext from {Path(args.pkg_root).resolve()}", flush=True)
    print(f"hook attach+detach: {bench.attach_time() * 1e3:.2f} ms per generation", flush=True)
    results = []
    for size in args.sizes:
        r = bench.time_size(size)
        if args.memory and not bench.cuda:
            r["mem"] = cpu_memory(args, size) or None
        if args.breakdown:
            r["breakdown"] = bench.breakdown(size)
        if args.gpu_busy and bench.cuda:
            r["kernel_ms"] = bench.kernel_ms(size)
        results.append(r)
        print_size(r)
        sys.stdout.flush()
    if args.sync_debug:
        bench.sync_debug(args.sizes[min(1, len(args.sizes) - 1)])
    if args.profile:
        bench.profile(args.profile)
    print_table(bench, results)
    if args.json:
        meta = {"device": dev, "dtype": bench.dtype_name, "params": bench.params, "weight_bytes": bench.weight_bytes,
                "args": {k: v for k, v in vars(args).items() if k != "mem_worker"}}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
