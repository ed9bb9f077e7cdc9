"""Soak a running WebUI with S-CFG: a bounded, seeded mix of generations through its API, checked as it goes.

    python bench/soak.py --url http://127.0.0.1:7860 --pid <server pid> --n 100

Standard library only; any WebUI with the A1111 API (A1111, Forge 2 and Neo, reForge) on 127.0.0.1. The mix,
drawn from ``--seed``: S-CFG off and on, ``AND``, batch 2, maps with word weights, hires (with Hires CFG,
``hr_cfg``, where the WebUI has it), img2img inpaint, a bad argument (must answer 422 naming the field), and
an interrupt (``/sdapi/v1/interrupt`` sent once the generation is sampling; the request must still answer).
Every ``--plain-every`` generations a plain request (S-CFG off, the first request's payload) must be pixel-
identical to the first. The server's resident memory (``VmRSS`` of ``--pid`` and its children) is read then.

Pass: every request answers within ``--timeout`` with no 5xx, the plain requests are identical, and the
resident memory of the last quarter of the run is at most ``--max-ramp-mib`` above that of the second quarter.
Exit status 0 on a pass, 1 otherwise; one line per generation and a summary are printed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import statistics
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

KINDS = ("off", "on", "and", "batch2", "maps", "hires", "inpaint", "bad", "interrupt")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:7860")
    p.add_argument("--pid", type=int, default=None, help="the server's process id (for its resident memory)")
    p.add_argument("--n", type=int, default=100, help="generations")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-every", type=int, default=10)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    p.add_argument("--max-ramp-mib", type=float, default=300.0)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new generations after this long and print the summary of those run")
    p.add_argument("--forge", action="store_true", help="send Forge's hires fields (hr_cfg, hr_additional_modules)")
    return p


def post(url: str, path: str, payload: dict | None, timeout: float) -> tuple[int, dict]:
    data = json.dumps(payload or {}).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"detail": body.decode(errors="replace")}


def get(url: str, path: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url + path, timeout=timeout) as r:
        return json.loads(r.read())


def png(width: int, height: int, pixel) -> str:
    """A base64 PNG of ``pixel(x, y) -> (r, g, b)`` (no PIL needed)."""
    raw = b"".join(b"\0" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return base64.b64encode(data).decode()


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of ``pid`` and its children (Linux ``/proc``), MiB."""
    if pid is None:
        return None
    total, todo = 0, [pid]
    while todo:
        q = todo.pop()
        try:
            with open(f"/proc/{q}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{q}/task/{q}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def scfg(**settings) -> dict:
    return {"S-CFG": {"args": [{"enabled": True, **settings}]}}


def request(kind: str, args, rng: random.Random) -> tuple[str, dict]:
    """``(endpoint, payload)`` of one generation of ``kind``."""
    base = {"prompt": "a red horse in a green field", "negative_prompt": "blurry", "steps": args.steps,
            "width": args.size, "height": args.size, "cfg_scale": 7.0, "seed": rng.randrange(1 << 20),
            "sampler_name": rng.choice(["Euler", "DPM++ 2M"]), "do_not_save_grid": True}
    if kind == "off":
        return "txt2img", base
    if kind in ("on", "interrupt"):
        return "txt2img", {**base, "alwayson_scripts": scfg()}
    if kind == "and":
        return "txt2img", {**base, "prompt": "a red horse AND a green field :0.7", "alwayson_scripts": scfg()}
    if kind == "batch2":
        return "txt2img", {**base, "batch_size": 2, "alwayson_scripts": scfg(refine=rng.choice(["official", "paper"]))}
    if kind == "maps":
        return "txt2img", {**base, "alwayson_scripts": scfg(show_maps=True, word_weights="horse: 1.5, zebra: 2",
                                                            maps_step=rng.choice(["middle", "average"]))}
    if kind == "hires":
        extra = {"hr_cfg": 7.0, "hr_additional_modules": []} if args.forge else {}
        return "txt2img", {**base, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
                           "denoising_strength": 0.6, "hr_second_pass_steps": 2, **extra, "alwayson_scripts": scfg()}
    if kind == "inpaint":
        s = args.size
        init = png(s, s, lambda x, y: (200, 60, 60) if (x - s / 2) ** 2 + (y - s / 2) ** 2 < (s / 4) ** 2
                   else (60, 160, 60))
        mask = png(s, s, lambda x, y: (255, 255, 255) if x < s // 2 else (0, 0, 0))
        return "img2img", {**base, "init_images": [init], "mask": mask, "denoising_strength": 0.75,
                           "inpainting_fill": 1, "alwayson_scripts": scfg()}
    if kind == "bad":
        return "txt2img", {**base, "alwayson_scripts": scfg(max_rate=12)}
    raise ValueError(kind)


def digest(response: dict) -> str:
    return hashlib.sha256("".join(response.get("images") or []).encode()).hexdigest()[:16]


def interrupted(args, endpoint: str, payload: dict) -> tuple[int, dict, bool]:
    """Run ``payload`` in a thread, interrupt it once the server reports sampling; ``(status, body, taken)``,
    ``taken``: the interrupt was sent during this job and the server still shows it interrupted afterwards."""
    # The WebUI's state keeps the previous job's ``sampling_step`` after ``state.end()`` (only ``begin()`` resets
    # it, and ``begin()`` also clears ``interrupted``), so wait for this job: a new ``job_timestamp`` while a job
    # is running (``job`` set), then a sampling step. An interrupt sent earlier would be dropped by ``begin()``.
    before = get(args.url, "/sdapi/v1/progress?skip_current_image=true").get("state", {}).get("job_timestamp")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(r=post(args.url, f"/sdapi/v1/{endpoint}", payload,
                                                                  args.timeout)))
    worker.start()
    sent, deadline = False, time.monotonic() + args.timeout
    while worker.is_alive() and time.monotonic() < deadline:
        try:
            state = get(args.url, "/sdapi/v1/progress?skip_current_image=true").get("state", {})
        except (OSError, ValueError):
            state = {}
        if state.get("job") and state.get("job_timestamp") != before and state.get("sampling_step", 0) >= 1:
            post(args.url, "/sdapi/v1/interrupt", None, 30.0)
            sent = True
            break
        time.sleep(0.05)
    worker.join(max(0.0, deadline - time.monotonic()))
    if "r" not in result:
        return 0, {"detail": "no answer"}, sent
    if sent:  # ``state.interrupted`` stays set until the next job's ``begin()``: proof the interrupt took
        sent = bool(get(args.url, "/sdapi/v1/progress?skip_current_image=true").get("state", {}).get("interrupted"))
    return *result["r"], sent


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    rng = random.Random(args.seed)
    failures: list[str] = []
    memory: list[tuple[int, float]] = []
    _, first_payload = request("off", args, random.Random(args.seed))
    status, body = post(args.url, "/sdapi/v1/txt2img", first_payload, args.timeout)
    if status != 200:
        print(f"the first plain request failed: HTTP {status} {body.get('detail')}")
        return 1
    reference = digest(body)
    counts = dict.fromkeys(KINDS, 0)
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    interrupts_taken = 0
    started, done = time.monotonic(), 0

    def out_of_time() -> bool:
        return args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60

    for i in range(1, args.n + 1):
        if out_of_time():
            print(f"stopped after {done} generations: --max-minutes {args.max_minutes:g} reached", flush=True)
            break
        done = i
        plain = i % args.plain_every == 0
        kind = "off" if plain else rng.choice(KINDS)
        endpoint, payload = ("txt2img", first_payload) if plain else request(kind, args, rng)
        t0 = time.perf_counter()
        sent = None
        if kind == "interrupt":
            status, body, sent = interrupted(args, endpoint, payload)
            interrupts_taken += bool(sent)
        else:
            status, body = post(args.url, f"/sdapi/v1/{endpoint}", payload, args.timeout)
        dt = time.perf_counter() - t0
        counts[kind] += 1
        times[kind].append(dt)
        detail = str(body.get("detail", ""))[:160]
        problem = None
        if status == 0:
            problem = "no answer (hang)"
        elif kind == "bad":
            if status != 422 or "max_rate" not in detail:
                problem = f"expected 422 naming max_rate, got {status} {detail}"
        elif status != 200:
            problem = f"HTTP {status} {detail}"
        elif plain and digest(body) != reference:
            problem = "plain request differs from the first"
        elif kind == "maps" and len(body.get("images") or []) < 2:
            problem = f"maps asked for, {len(body.get('images') or [])} image(s) returned"
        info = json.loads(body.get("info") or "{}") if status == 200 and isinstance(body.get("info"), str) else {}
        notice = (info.get("extra_generation_params") or {}).get("S-CFG notice")
        if kind in ("on", "and", "batch2", "hires", "inpaint") and status == 200 and "S-CFG" not in str(info):
            problem = problem or "S-CFG on but not in the infotext"
        if problem:
            failures.append(f"#{i} {kind}: {problem}")
        if plain or i == args.n or out_of_time():
            rss = rss_mib(args.pid)
            if rss is not None:
                memory.append((i, rss))
        print(f"#{i:3d} {kind:9s} HTTP {status} {dt:6.1f} s" + (f"  notice: {notice}" if notice else "")
              + ("" if sent is None else f"  interrupt {'taken' if sent else 'NOT taken'}")
              + (f"  FAIL {problem}" if problem else "") + (f"  rss {memory[-1][1]:.0f} MiB" if plain and memory
                                                            else ""), flush=True)
    print("\nper kind (count, median s): " + ", ".join(
        f"{k} {counts[k]} {statistics.median(times[k]):.1f}" for k in KINDS if times[k]))
    if len(memory) >= 4:
        q = len(memory) // 4
        second, last = statistics.mean(m for _, m in memory[q:2 * q]), statistics.mean(m for _, m in memory[-q:])
        print(f"resident memory MiB at generations {[i for i, _ in memory]}: {[round(m) for _, m in memory]}; "
              f"last quarter {last:.0f} vs second quarter {second:.0f} ({last - second:+.0f} MiB)")
        if last - second > args.max_ramp_mib:
            failures.append(f"resident memory ramps by {last - second:.0f} MiB")
    print(f"interrupts taken: {interrupts_taken} of {counts['interrupt']}")
    print(f"{done} generations, {len(failures)} failure(s)" + "".join(f"\n  {f}" for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
