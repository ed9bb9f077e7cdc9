"""What S-CFG's attention capture adds to one U-Net call: tensor operations, FLOPs, peak tensor memory, CPU time.

Models (random weights, ``scfg_ext.testbed``): ``sd15`` = the real ldm ``UNetModel`` with SD1.5's config
(6 captured blocks); ``sdxl`` = ldm's classes in SDXL base's U-Net structure (``testbed.build_sdxl_unet``:
60 captured latent/4 blocks); ``anima`` = the miniature DiT (``scfg_ext.miniature.dit``, Anima's blocks) at
Anima 2B's size: 28 blocks of width 2048 (16 heads), a 1024-wide context of 512 tokens, 16 latent channels,
patch 2 (a 64x64 token grid at 1024²); ``lumina2`` / ``zimage`` = the miniature NextDiT (joint attention) at Lumina 2's
size (26 layers of width 2304, 24 heads, 2 refiners each) / Z-Image's (30 of 3840, 30 heads), a 256-token text;
``chroma`` = the miniature MMDiT (Flux's double and single blocks) at Chroma's size: 19 double and 38 single blocks
of width 3072 (24 heads), a 4096-wide T5 context of 256 tokens, with Chroma's weights: its blocks have no
modulation weights (one small network makes every block's), so the miniature's per-block modulation layers are
replaced by parameter-free ones (8.6B parameters, Chroma 8.9B); ``qwen`` = the miniature Qwen-Image (MMDiT with
its own attention module) at Qwen-Image's size: 60 blocks of width 3072 (24 heads), a 3584-wide Qwen2.5-VL context
(20.4B parameters, Qwen-Image 20B).
The attention forward is replaced by a ``scaled_dot_product_attention`` one, as
A1111's "sdp" optimisation installs it. One U-Net call with the rows of ``--batches`` images: cond rows then
uncond rows (batch 1 = 2 rows), roles ``Cond(i)``/``Uncond(i)``.

Per model, size and batch, plain call vs S-CFG call (``capture.plan_step(roles)`` + the same call with the
hooks attached, after one warm-up call; ``masks()``, once per step, is counted separately):

* ops: aten operations dispatched (a ``TorchDispatchMode`` counter): machine-independent; and of them the ones
  that launch work (``scfg_ext/opcount.py``, loaded from this checkout whatever ``--pkg-root`` says): an
  operation whose schema returns a read-only alias of an input (``Tensor(a)``: views, ``detach``, ``split``) is
  a view, metadata (``sym_size``, non-tensor results) and allocations (``empty``, ``empty_strided``,
  ``_unsafe_view``) launch nothing, a host sync (``_local_scalar_dense``, i.e. ``.item()``/``.tolist()``/
  ``bool(tensor)``; ops whose output shape depends on the data, e.g. boolean indexing; ``torch.tensor`` from
  Python data) is counted apart; every other operation, in-place and ``out=`` ones included, launches a kernel.
  Per U-Net call for the capture (with its launching operations per block read: the added ones over the number of
  captured blocks), and per step for ``masks()`` + the combination (``ScfgRun.combine``: the rates and the CFG
  combination, plain CFG's own 5 operations included);
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention): machine-independent;
* peak memory: bytes of live tensor storage, tracked at every aten operation by a ``TorchDispatchMode`` (each
  new storage counted until it is freed), plus the weights and inputs; tensors a kernel allocates internally
  and frees before returning are not seen (the same for both). The ratio is of the whole peak (weights
  included), as ``torch.cuda.max_memory_allocated`` would give it; ``extra`` is the difference;
* CPU time (``--device cpu``; not on ``meta``): single calls, plain and S-CFG interleaved (ABBA), median of
  ``--repeats``; the S-CFG time includes ``plan_step`` and ``masks()``.

``--device meta`` runs everything but the timing without computing anything (shapes only): fast, and what makes
SDXL at 1024² possible on a small machine. The sdp forward then calls the CPU flash-attention kernel that
``scaled_dot_product_attention`` picks on a CPU, so the operations are the same as on a CPU.

``--pkg-root DIR`` imports ``scfg_ext`` from DIR (to measure another version of the capture; DIR needs a
``testbed.py`` with ``build_sdxl_unet``). No assertions: it reports and exits 0.

    python bench/capture_cost.py                                  # sd15 512², sdxl 1024², batch 1 and 4, meta
    python bench/capture_cost.py --models sd15 --device cpu --repeats 7 --batches 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import weakref
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["sd15", "sdxl"],
                   choices=["sd15", "sdxl", "anima", "lumina2", "zimage", "chroma", "qwen"])
    p.add_argument("--sizes", nargs="+", type=int, default=None,
                   help="image sizes in pixels (default: 512 for sd15, 1024 for sdxl)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4], help="images per call (2 U-Net rows each)")
    p.add_argument("--device", default="meta", help="meta (counts only), cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="weights; half types run under autocast as A1111 does")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (cpu/cuda)")
    p.add_argument("--time-only", action="store_true", help="skip the counts (cpu/cuda: only the timing)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--small", action="store_true", help="the small-channel variants (smoke runs)")
    p.add_argument("--refine", default="official", choices=["official", "paper", "none"])
    p.add_argument("--foreground", default="cond", choices=["cond", "uncond"])
    p.add_argument("--budget-mib", type=float, default=None, help="capture memory budget (default: the capture's)")
    p.add_argument("--pool", action="store_true", help="DiTs: read the maps at latent/4 at every size (default: "
                   "when that grid is at least capture.MIN_POOLED_SIDE cells across)")
    p.add_argument("--blocks", default=None, help="DiTs: the blocks to read, e.g. 0,1,2 (default all)")
    p.add_argument("--pkg-root", default=str(REPO_ROOT), help="directory holding the scfg_ext package to measure")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


ARGS = parse_args()
sys.path.insert(0, str(Path(ARGS.pkg_root).resolve()))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from scfg_ext import testbed  # noqa: E402
from scfg_ext.capture import AttentionCapture, Cond, Uncond  # noqa: E402
from scfg_ext.guidance import ScfgRun, plain_cfg  # noqa: E402
from scfg_ext.settings import Settings  # noqa: E402


def _load_opcount():
    import importlib.util

    spec = importlib.util.spec_from_file_location("scfg_opcount", REPO_ROOT / "scfg_ext" / "opcount.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OpKinds = _load_opcount().OpKinds

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_off_on_meta() -> None:
    """``torch.autocast`` refuses the meta device; the capture turns autocast off around its math, so on meta
    that becomes a no-op (for every version of the package measured)."""
    original = torch.autocast

    def autocast(device_type, *args, **kwargs):
        if device_type == "meta":
            return contextlib.nullcontext()
        return original(device_type, *args, **kwargs)

    torch.autocast = autocast


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the mode and still alive, checked after every operation."""

    def __init__(self, existing=()):
        super().__init__()
        self.live = self.peak = 0
        self.seen: dict[int, int] = {}
        # storages that exist before (weights, inputs): views of them (a weight's transpose) are not new memory
        self.keep = [t.untyped_storage() for t in existing]
        self.seen.update({id(st): 0 for st in self.keep})

    def _free(self, key: int, nbytes: int) -> None:
        self.seen.pop(key, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = id(st)
                if key not in self.seen:
                    nbytes = st.nbytes()
                    self.seen[key] = nbytes
                    self.live += nbytes
                    weakref.finalize(st, self._free, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


# the miniature NextDiT's classes at Lumina 2's size (Gemma 2 2B text) and Z-Image's (Qwen3 4B text; its pad
# tokens to a multiple of 32 left out)
NEXTDITS = {
    "lumina2": dict(in_channels=16, out_channels=16, patch=2, dim=2304, depth=26, heads=24, context_dim=2304,
                    refiner_depth=2, axes=(32, 32, 32)),
    "zimage": dict(in_channels=16, out_channels=16, patch=2, dim=3840, depth=30, heads=30, context_dim=2560,
                   refiner_depth=2, axes=(32, 48, 48)),
}
NEXTDIT_TOKENS = 256  # Lumina 2: <bos>, its ~35-token system template and the prompt
CHROMA = dict(in_channels=16, out_channels=16, patch=2, dim=3072, depth=19, depth_single=38, heads=24,
              context_dim=4096, axes=(16, 56, 56))
QWEN_IMAGE = dict(in_channels=16, out_channels=16, patch=2, dim=3072, depth=60, heads=24, context_dim=3584,
                  axes=(16, 56, 56))


class Modulation(torch.nn.Module):
    """Chroma's modulation vectors without weights: ``vec`` repeated ``k`` times (the shapes its blocks use)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, vec):
        return vec.repeat(1, self.k)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Case:
    def __init__(self, model: str, args: argparse.Namespace):
        self.model, self.args = model, args
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.channels, self.tokens = 4, 77
        if model == "anima":
            from scfg_ext.miniature.dit import MiniatureDiT

            config = dict(in_channels=16, out_channels=16, patch=2, dim=2048, depth=28, heads=16, context_dim=1024)
            if args.small:
                config.update(dim=128, depth=4, heads=4, context_dim=64)
            with torch.device(self.device):
                self.unet = MiniatureDiT(**config).to(self.dtype).eval().requires_grad_(False)
            self.channels, self.tokens = 16, 512
        elif model in NEXTDITS:
            from scfg_ext.miniature.nextdit import MiniatureNextDiT

            config = dict(NEXTDITS[model])
            if args.small:
                config.update(dim=128, depth=4, heads=4, context_dim=64, refiner_depth=1, axes=(8, 12, 12))
            with torch.device(self.device):
                self.unet = MiniatureNextDiT(**config).to(self.dtype).eval().requires_grad_(False)
            self.channels, self.tokens = 16, NEXTDIT_TOKENS
        elif model == "chroma":
            from scfg_ext.miniature.mmdit import MiniatureMMDiT

            config = dict(CHROMA)
            if args.small:
                config.update(dim=128, depth=2, depth_single=2, heads=4, context_dim=64, axes=(8, 12, 12))
            with torch.device(self.device):
                self.unet = MiniatureMMDiT(**config).to(self.dtype).eval().requires_grad_(False)
            for block in self.unet.double_blocks:
                block.img_mod, block.txt_mod = Modulation(6), Modulation(6)
            for block in self.unet.single_blocks:
                block.modulation = Modulation(3)
            self.channels, self.tokens = 16, NEXTDIT_TOKENS
        elif model == "qwen":
            from scfg_ext.miniature.mmdit import MiniatureQwenImage

            config = dict(QWEN_IMAGE)
            if args.small:
                config.update(dim=128, depth=2, heads=4, context_dim=64, axes=(8, 12, 12))
            with torch.device(self.device):
                self.unet = MiniatureQwenImage(**config).to(self.dtype).eval().requires_grad_(False)
            self.channels, self.tokens = 16, NEXTDIT_TOKENS
        elif model == "sd15":
            config = testbed.small_config(testbed.SD15_UNET) if args.small else testbed.SD15_UNET
            self.unet = testbed.build_unet(config, dtype=self.dtype, device=self.device)
        else:
            config = testbed.SDXL_SMALL if args.small else testbed.SDXL_UNET
            depths = (0, 1, 3) if args.small else testbed.SDXL_DEPTHS
            self.unet = testbed.build_sdxl_unet(config, depths=depths, dtype=self.dtype, device=self.device)
        self.context_dim = config["context_dim"]
        self.weight_bytes = tensor_bytes(self.unet.parameters())
        self.half_on_meta = self.device.type == "meta" and self.dtype != torch.float32
        if self.half_on_meta:
            # no autocast on meta: run the U-Net in the weights' type instead (latent in half; the timestep
            # embedding is made in float32); the counts are those of autocast, where the projections the capture
            # stashes are half too; activations all in half make the plain peak lower
            self.unet.dtype = self.dtype
            embed = next(getattr(self.unet, name) for name in ("t_embedder", "time_in", "time_embed")
                         if hasattr(self.unet, name))
            embed.register_forward_pre_hook(lambda m, args: (args[0].to(self.dtype),))

    def autocast(self):
        if self.dtype == torch.float32 or self.device.type == "meta":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, size: int, batch: int) -> dict:
        a = self.args
        g = torch.Generator().manual_seed(size + batch)
        lat = size // 8
        x = torch.randn(2 * batch, self.channels, lat, lat, generator=g).to(
            self.device, self.dtype if self.half_on_meta else None)
        t = torch.full((2 * batch,), 500.0).to(self.device)
        ctx = torch.randn(2 * batch, self.tokens, self.context_dim, generator=g).to(self.device, self.dtype)
        roles = [Cond(i) for i in range(batch)] + [Uncond(i) for i in range(batch)]
        kwargs = {"refine": a.refine, "foreground": a.foreground}
        if a.budget_mib is not None:
            kwargs["memory_budget"] = int(a.budget_mib * MiB)
        if self.model not in ("sd15", "sdxl"):
            kwargs["pool"] = a.pool or None
            if a.blocks:
                kwargs["blocks"] = [int(b) for b in a.blocks.split(",")]
        capture = AttentionCapture(**kwargs)
        run = ScfgRun(Settings(enabled=True, refine=a.refine, foreground=a.foreground))
        run.capture = capture  # the capture with this bench's budget, pool and blocks
        chunks: list[int] = []
        base = self.weight_bytes + tensor_bytes((x, t, ctx))
        self.existing = [*self.unet.parameters(), *self.unet.buffers(), x, t, ctx]

        def conds(out):
            return [[(out[i], 1.0)] for i in range(batch)]

        def plain():
            return self.unet(x, t, context=ctx)

        def plain_step():
            out = plain()
            plain_cfg(out[batch:], conds(out), 7.0)

        def scfg_call():
            run.begin_step(roles, 0.5)
            return self.unet(x, t, context=ctx)

        def masks():
            if not capture.masks((lat, lat)):
                raise RuntimeError(f"no S-CFG maps ({capture.error})")

        def combination(out):
            applied = run.steps_applied
            run.combine(out[batch:], conds(out), 7.0)
            if run.steps_applied == applied:
                raise RuntimeError(f"S-CFG did not guide the step ({capture.error})")

        def step():
            combination(scfg_call())

        out = {"model": self.model, "size": size, "batch": batch, "rows": 2 * batch,
               "layers": None, "weights_mib": self.weight_bytes / MiB}
        with torch.no_grad(), self.autocast():
            counts = {}
            if a.time_only:
                with run.attached(self.unet):
                    out["layers"] = len(capture.layers)
                    out["time"] = self._time(plain_step, step, capture)
                return out
            counts["plain"] = self._counts(plain)
            counts["plain_step"] = self._counts(plain_step)
            with run.attached(self.unet):
                out["layers"] = len(capture.layers)
                out["budget_mib"] = getattr(capture, "budget", 0) / MiB
                with OpKinds():  # meta: scalar reads answered, as everywhere below
                    step()  # warm: constant tensors are made once per device
                if hasattr(capture, "on_process"):
                    capture.on_process = chunks.append
                counts["scfg"] = self._counts(scfg_call)
                chunks.clear()
                with OpKinds():
                    out_call = scfg_call()
                out["chunks"] = list(chunks)  # layers per processed chunk, one call
                counts["masks"] = self._counts(masks)
                counts["combination"] = self._counts(lambda: combination(out_call), flops=False, memory=False)
                counts["step"] = self._counts(step)
                if self.device.type != "meta":
                    out["time"] = self._time(plain_step, step, capture)
        for k, v in counts.items():
            out[k] = v
        out["base_mib"] = base / MiB
        return out

    def _counts(self, fn, flops: bool = True, memory: bool = True) -> dict:
        with OpKinds() as c:
            fn()
        out = {"ops": c.ops, "launch": c.counts["launch"], "sync": c.counts["sync"], "views": c.counts["view"]}
        if flops:
            with FlopCounterMode(display=False) as f, OpKinds():
                fn()
            out["flops"] = f.get_total_flops()
        if memory:
            with LiveBytes(self.existing) as m, OpKinds():
                fn()
            out["peak_new"] = m.peak
        return out

    def _time(self, plain, scfg, capture) -> dict:
        """Wall time of single calls, plain and S-CFG interleaved (ABBA); on a CPU also the time spent in the
        capture's own work (processing the stash, folding, ``masks()``), which the noise of the whole calls hides."""
        times = {"plain": [], "scfg": [], "work": []}
        spent, depth = [0.0], [0]

        def timed(fn):
            def run(*args, **kwargs):
                depth[0] += 1
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    depth[0] -= 1
                    if depth[0] == 0:
                        spent[0] += time.perf_counter() - t0
            return run

        if self.device.type == "cpu":  # a GPU runs the work asynchronously: only the whole calls are timed
            for name in ("_process", "_finish", "masks"):
                if hasattr(capture, name):
                    setattr(capture, name, timed(getattr(capture, name)))
        for r in range(self.args.repeats + 1):
            for mode in (("plain", "scfg") if r % 2 == 0 else ("scfg", "plain")):
                self.sync()
                spent[0] = 0.0
                t0 = time.perf_counter()
                (plain if mode == "plain" else scfg)()
                self.sync()
                if r > 0:  # round 0 is a warm-up
                    times[mode].append(time.perf_counter() - t0)
                    if mode == "scfg" and self.device.type == "cpu":
                        times["work"].append(spent[0])
        return times


def time_report(t: dict) -> str:
    tp, ts = statistics.median(t["plain"]), statistics.median(t["scfg"])
    paired = statistics.median(s / p for p, s in zip(t["plain"], t["scfg"], strict=True))
    line = f"time {tp * 1e3:.0f} -> {ts * 1e3:.0f} ms x{ts / tp:.3f} (paired median x{paired:.3f})"
    if t.get("work"):
        work = statistics.median(t["work"])
        line += f", capture work {work * 1e3:.0f} ms = x{1 + work / tp:.3f} of the plain call"
    return line


def report(r: dict) -> str:
    if "plain" not in r:  # --time-only
        return f"{r['model']:>5} {r['size']:>5}² b{r['batch']} {r['layers']:>3} layers | {time_report(r['time'])}"
    base = r["base_mib"] * MiB
    p, s, m, c, st = r["plain"], r["scfg"], r["masks"], r["combination"], r["step"]
    pst = r["plain_step"]
    pk_p, pk_s = base + pst["peak_new"], base + st["peak_new"]
    launch = s["launch"] - p["launch"]
    line = (f"{r['model']:>7} {r['size']:>5}² b{r['batch']} {r['layers']:>3} layers"
            f" | call ops {p['ops']:>6} -> {s['ops']:>6} (+{s['ops'] - p['ops']:>5}; launching +{launch:>4},"
            f" {launch / r['layers']:4.1f}/block; syncs +{s['sync'] - p['sync']})"
            f" | step: masks() {m['ops']} ops; masks()+combination {c['ops']} ops, {c['launch']} launching,"
            f" {c['sync']} syncs"
            f" | FLOPs {pst['flops'] / 1e12:8.3f}T x{st['flops'] / pst['flops']:.4f}"
            f" | peak {pk_p / MiB:9.1f} -> {pk_s / MiB:9.1f} MiB x{pk_s / pk_p:.4f} (+{(pk_s - pk_p) / MiB:.1f})")
    if "time" in r:
        line += f" | {time_report(r['time'])}"
    if r.get("chunks") is not None:
        line += f" | budget {r.get('budget_mib', 0):.0f} MiB, chunks {r['chunks']}"
    return line


def main() -> int:
    a = ARGS
    if a.threads:
        torch.set_num_threads(a.threads)
    testbed.use_sdp_attention()
    if a.device == "meta":
        autocast_off_on_meta()
    print(f"torch {torch.__version__}; device {a.device}; {a.dtype}; sdp attention; refine {a.refine}; "
          f"foreground {a.foreground}; scfg_ext from {Path(a.pkg_root).resolve()}", flush=True)
    results = []
    for model in a.models:
        case = Case(model, a)
        sizes = a.sizes or [512 if model == "sd15" else 1024]
        for size in sizes:
            for batch in a.batches:
                r = case.measure(size, batch)
                results.append(r)
                print(report(r), flush=True)
        del case
    print("call ops: aten ops per U-Net call (S-CFG: begin_step + call), launching: of them the ones that launch "
          "work, /block: per captured block; step: masks() and masks() + the combination (ScfgRun.combine, plain "
          "CFG's 5 ops included) once per step; FLOPs and peak of the step (call + combination, vs plain call + "
          "plain CFG); peak = weights + inputs + live tensor storage")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
