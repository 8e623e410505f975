"""Serving benchmark: N requests through the AsyncEngine against the same N one at a time, in the same run.

Throughput, latency and batch-invariance of N requests submitted to an ``AsyncEngine`` (all at once, or at
Poisson arrivals) against the same N requests one at a time through ``Engine.generate``.

    python bench/run_serving.py [--model tiny|medium] [--n 1,2,4,8] [--arrival together|poisson|both]
                                [--rate R] [--only-first-stage] [--out PATH]

For each N, in this order:

* ``serial``: ``engine.generate(prompt_i, params_i)`` one request after the other, as if all N had arrived at
  t = 0: request i's end-to-end latency is the time from the start of the serial run to its end, its queue time
  the time before its own call started. The calls run on the main thread, as a user calls ``Engine.generate``
  (``--serial-thread worker``: on a fresh thread instead; on an idle machine that thread's steps are 2.5-3x
  slower, the OpenMP effect ``serving.async_engine.release_openmp_threads`` removes for the loop thread).
* ``together``: a fresh ``AsyncEngine(engine, previews=False)``, all N submitted from the main thread at t = 0.
* ``poisson``: the same N submitted from a thread at arrival times with exponential gaps (rate ``--rate`` per
  second; default two arrivals per solo request latency of the first serial run, so they overlap), the first
  at t = 0, RNG seed 0 (the arrivals for N are a prefix of those for a larger N). Its rows also give what a
  one-at-a-time FIFO server would have done with those arrivals (from the serial run's per-request seconds).

Request i: prompt ``"a cat plays the piano {i}"``, ``SamplingParams(seed=i, only_first_stage=...)``. Every
batched request's tokens are compared with ``torch.equal`` against its serial tokens (the engine promises
batch-invariant tokens): ``tokens_match`` per row, and a loud warning when false. Serial rows compare against
the first serial computation of the same request in this run (run-to-run determinism; vacuous for the first N).

Models: ``tiny`` = ``Engine.default()`` (the embedded default assets: tiny random models, real geometry);
``medium`` = 8 layers x 512 random stage-1 and stage-2 models (fp32, CPU, as ``run_generation.py`` builds them)
with the default assets' tokenizer, VQ decoder and cluster sampler. Torch threads stay at the default.
Rows go to ``bench/results/serving-<model>-cpu-<date>.json`` as they are measured; a PNG of throughput and
latency against N is drawn next to it (``bench/plot_serving.py``, needs matplotlib).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cogvideo_engine.api import Engine, SamplingParams
from cogvideo_engine.serving.async_engine import AsyncEngine

from run_attention import JsonRows, environment

PROMPT = "a cat plays the piano {i}"
ARRIVAL_SEED = 0
_PRINT = threading.Lock()


def say(*args) -> None:
    with _PRINT:
        print(*args, flush=True)


def make_engine(model: str, device: str = "cpu") -> Engine:
    """The embedded default engine (``tiny``) or one of medium-shape random stage models with the default assets'
    tokenizer, VQ decoder and sampler; fp32 on CPU, bf16 on CUDA."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    default = Engine.default(device=device, dtype=dtype)
    if model == "tiny":
        return default
    from run_generation import build

    stage1 = build(model, 1, device, dtype)
    stage2 = build(model, 2, device, dtype)
    return Engine(stage1, stage2, default.tokenizer, default.decoder, default.sampler, backend=default.backend)


def requests(n: int, only_first_stage: bool) -> list[tuple[str, SamplingParams]]:
    return [(PROMPT.format(i=i), SamplingParams(seed=i, only_first_stage=only_first_stage)) for i in range(n)]


def percentile(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def stats_delta(before: dict, after: dict) -> dict:
    """Occupancy and tokens/s of the core's work between two snapshots of its (lifetime) counters."""
    d = {k: after[k] - before[k] for k in ("steps", "forward_steps", "rows", "row_slots", "tokens", "busy_seconds")}
    d["occupancy"] = d["rows"] / d["row_slots"] if d["row_slots"] else None
    d["tokens_per_s"] = d["tokens"] / d["busy_seconds"] if d["busy_seconds"] else None
    return d


def in_worker_thread(fn, *args):
    """``fn(*args)`` on a fresh thread (joined; its exception re-raised here)."""
    result: list = []

    def target():
        try:
            result.append((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001  (re-raised in the calling thread)
            result.append((False, e))

    th = threading.Thread(target=target, name="serial-baseline")
    th.start()
    th.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def run_serial(engine: Engine, reqs, model: str, mode_label: str) -> tuple[list[dict], float, dict]:
    """Requests one at a time; per request its offsets from the start of the serial run."""
    before = engine.core.stats.as_dict()
    records = []
    t0 = time.perf_counter()
    for i, (prompt, params) in enumerate(reqs):
        start = time.perf_counter() - t0
        [video] = engine.generate(prompt, params)
        end = time.perf_counter() - t0
        records.append({"i": i, "arrival_s": 0.0, "submit_s": start, "started_s": start, "done_s": end,
                        "seconds": end - start, "queue_s": start,
                        "time_to_first_frame_s": start + video.timings["time_to_first_frame"],
                        "e2e_s": end, "timings": video.timings, "tokens": video.tokens,
                        "generated_tokens": video.tokens.numel()})
        say(f"  [{model} {mode_label} n={len(reqs)}] request {i} done at {end:7.1f} s  "
            f"(own {end - start:6.1f} s, first frame after {video.timings['time_to_first_frame']:6.1f} s)")
    return records, time.perf_counter() - t0, stats_delta(before, engine.core.stats.as_dict())


def run_async(engine: Engine, reqs, arrivals: list[float], model: str, mode: str) -> tuple[list[dict], float, dict]:
    """Requests through a fresh AsyncEngine, request i submitted at ``arrivals[i]`` seconds after t0 (all from
    the main thread when every arrival is 0, else from a submitting thread)."""
    engine_front = AsyncEngine(engine, previews=False)
    before = engine_front.metrics()
    records = [{"i": i, "arrival_s": a} for i, a in enumerate(arrivals)]
    consumers: list[threading.Thread] = []
    all_done = threading.Event()
    finished = [0]
    lock = threading.Lock()

    def consume(handle, rec):
        for ev in handle.events():
            if ev.kind == "started":
                rec["started_s"] = ev.time - t0
            elif ev.is_terminal:
                rec["done_s"] = ev.time - t0
                rec["e2e_s"] = ev.time - rec["_submit"]
                rec["status"] = ev.kind
                if ev.kind == "completed":
                    [video] = ev.outputs
                    rec.update(tokens=video.tokens, timings=video.timings, queue_s=video.timings["queue"],
                               time_to_first_frame_s=video.timings["time_to_first_frame"],
                               generated_tokens=video.tokens.numel())
                    say(f"  [{model} {mode} n={len(reqs)}] request {rec['i']} done at {rec['done_s']:7.1f} s  "
                        f"(arrived {rec['arrival_s']:6.1f} s, queued {rec['queue_s']:6.1f} s, first frame after "
                        f"{rec['time_to_first_frame_s']:6.1f} s, end-to-end {rec['e2e_s']:6.1f} s)")
                else:
                    rec["error"] = f"{type(ev.error).__name__}: {ev.error}"
                    say(f"  !!! [{model} {mode} n={len(reqs)}] request {rec['i']} {ev.kind}: {rec['error']}")
                with lock:
                    finished[0] += 1
                    if finished[0] == len(reqs):
                        all_done.set()

    def submit(i):
        prompt, params = reqs[i]
        rec = records[i]
        rec["_submit"] = time.perf_counter()
        rec["submit_s"] = rec["_submit"] - t0
        try:
            handle = engine_front.submit(prompt, params, request_id=f"{mode}-{len(reqs)}-{i}", previews=False)
        except Exception as e:  # noqa: BLE001  (refused at submit: reported in its row, the others go on)
            rec.update(status="refused", error=f"{type(e).__name__}: {e}", done_s=time.perf_counter() - t0)
            say(f"  !!! [{model} {mode} n={len(reqs)}] request {i} refused at submit: {rec['error']}")
            with lock:
                finished[0] += 1
                if finished[0] == len(reqs):
                    all_done.set()
            return
        th = threading.Thread(target=consume, args=(handle, rec), daemon=True)
        th.start()
        consumers.append(th)

    def submit_at_arrivals():
        for i, a in enumerate(arrivals):
            delay = t0 + a - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            submit(i)

    t0 = time.perf_counter()
    try:
        if all(a == 0 for a in arrivals):
            for i in range(len(reqs)):
                submit(i)
        else:
            submitter = threading.Thread(target=submit_at_arrivals, daemon=True)
            submitter.start()
            submitter.join()
        all_done.wait()
        wall = max(r["done_s"] for r in records)
        for th in consumers:
            th.join()
        delta = stats_delta(before, engine_front.metrics())
    finally:
        engine_front.shutdown(cancel=True)
    for rec in records:
        del rec["_submit"]
    return records, wall, delta


def poisson_arrivals(n: int, rate: float) -> list[float]:
    rng = random.Random(ARRIVAL_SEED)
    arrivals = [0.0]
    for _ in range(n - 1):
        arrivals.append(arrivals[-1] + rng.expovariate(rate))
    return arrivals


def fifo(arrivals: list[float], seconds: list[float]) -> tuple[list[float], float]:
    """End-to-end latencies and wall time of a one-at-a-time FIFO server with these service times."""
    free, latencies = 0.0, []
    for a, s in zip(arrivals, seconds, strict=True):
        free = max(free, a) + s
        latencies.append(free - a)
    return latencies, free


def tokens_match(records: list[dict], reference: dict[int, torch.Tensor]) -> tuple[bool, int, list[int]]:
    """(all equal, how many compared, the requests that differ or did not complete)."""
    compared, bad = 0, []
    for r in records:
        ref = reference.get(r["i"])
        if "tokens" not in r:
            bad.append(r["i"])
        elif ref is not None:
            compared += 1
            if not torch.equal(r["tokens"], ref):
                bad.append(r["i"])
    return not bad, compared, bad


def make_row(env: dict, model: str, mode: str, n: int, only_first_stage: bool, records: list[dict], wall: float,
             delta: dict, match: tuple[bool, int, list[int]], serial_wall: float | None) -> dict:
    done = [r for r in records if r.get("status", "completed") == "completed"]
    e2e = [r["e2e_s"] for r in done]
    tokens = sum(r["generated_tokens"] for r in done)
    ok, compared, bad = match
    return {**env, "bench": "serving", "model": model, "n": n, "mode": mode, "only_first_stage": only_first_stage,
            "completed": len(done), "wall_s": wall, "videos_per_hour": 3600 * len(done) / wall,
            "generated_tokens": tokens, "tokens_per_s": tokens / wall,
            "p50_e2e_s": percentile(e2e, 50), "p90_e2e_s": percentile(e2e, 90),
            "p50_time_to_first_frame_s": percentile([r["time_to_first_frame_s"] for r in done], 50),
            "mean_queue_s": float(np.mean([r["queue_s"] for r in done])) if done else None,
            "occupancy": delta["occupancy"], "core_tokens_per_s": delta["tokens_per_s"],
            "core_steps": delta["steps"], "core_forward_steps": delta["forward_steps"],
            "core_busy_s": delta["busy_seconds"],
            "speedup_vs_serial": serial_wall / wall if serial_wall else None,
            "tokens_match": ok, "tokens_compared": compared, "tokens_mismatch_requests": bad,
            "requests": [{k: v for k, v in r.items() if k != "tokens"} for r in records]}


def print_header() -> None:
    say(f"{'model':7s} {'n':>3s} {'mode':9s} {'wall s':>8s} {'vid/h':>8s} {'tok/s':>7s} {'p50 e2e':>8s} "
        f"{'p90 e2e':>8s} {'p50 ttff':>8s} {'queue':>7s} {'occ':>5s} {'speedup':>7s}  tokens")


def print_row(r: dict) -> None:
    def f(v, fmt):
        return format(v, fmt) if v is not None else "-".rjust(len(format(0.0, fmt)))

    match = "match" if r["tokens_match"] else "MISMATCH"
    say(f"{r['model']:7s} {r['n']:3d} {r['mode']:9s} {r['wall_s']:8.1f} {r['videos_per_hour']:8.1f} "
        f"{r['tokens_per_s']:7.1f} {f(r['p50_e2e_s'], '8.1f')} {f(r['p90_e2e_s'], '8.1f')} "
        f"{f(r['p50_time_to_first_frame_s'], '8.1f')} {f(r['mean_queue_s'], '7.1f')} {f(r['occupancy'], '5.2f')} "
        f"{f(r['speedup_vs_serial'], '7.2f')}  {match} ({r['tokens_compared']} compared)")


def warn_mismatch(r: dict) -> None:
    if not r["tokens_match"]:
        say("!" * 100 + f"\n!!! TOKENS DIFFER: {r['model']} n={r['n']} {r['mode']}: requests "
            f"{r['tokens_mismatch_requests']} do not equal their serial tokens (or did not complete); the engine "
            "promises batch-invariant tokens\n" + "!" * 100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "medium"], default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--n", default="1,2,4,8", help="comma-separated request counts (default 1,2,4,8)")
    p.add_argument("--arrival", choices=["together", "poisson", "both"], default="both")
    p.add_argument("--rate", type=float, default=None,
                   help="Poisson arrivals per second (default: 2 / the first serial run's median request seconds)")
    p.add_argument("--only-first-stage", action="store_true", help="stage 1 only (5 frames), no stage 2")
    p.add_argument("--out", type=Path,
                   help="JSON rows (default bench/results/serving-<model>-<device>-<date>.json); the PNG goes next "
                        "to it")
    p.add_argument("--serial-thread", choices=["worker", "main"], default="main",
                   help="thread the serial Engine.generate calls run on: the main thread (default), or a fresh "
                        "worker thread (see bench/README.md)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG at the end")
    args = p.parse_args(argv)
    ns = [int(x) for x in args.n.split(",") if x.strip()]
    if not ns or min(ns) < 1:
        p.error("--n needs positive counts")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be positive")
    modes = ["together", "poisson"] if args.arrival == "both" else [args.arrival]
    out = args.out or Path(__file__).parent / "results" / (
        f"serving-{args.model}-{args.device}-{datetime.date.today().isoformat()}.json")

    t_load = time.perf_counter()
    engine = make_engine(args.model, args.device)
    say(f"{args.model} engine ready in {time.perf_counter() - t_load:.1f} s; torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs")
    env = {**environment(args.device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "max_rows": engine.core.max_rows, "serial_thread": args.serial_thread,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    rows = JsonRows(out)
    reference: dict[int, torch.Tensor] = {}  # request i -> its first serial tokens
    rate = args.rate
    mismatches = 0
    t_run = time.perf_counter()
    for n in ns:
        reqs = requests(n, args.only_first_stage)
        if args.serial_thread == "worker":
            records, serial_wall, delta = in_worker_thread(run_serial, engine, reqs, args.model, "serial")
        else:
            records, serial_wall, delta = run_serial(engine, reqs, args.model, "serial")
        match = tokens_match(records, reference)
        for r in records:
            reference.setdefault(r["i"], r["tokens"])
        if rate is None:
            rate = 2.0 / float(np.median([r["seconds"] for r in records]))
            say(f"  Poisson rate {rate:.4f} / s (mean gap {1 / rate:.1f} s: half the median serial request)")
        serial_row = make_row(env, args.model, "serial", n, args.only_first_stage, records, serial_wall, delta,
                              match, serial_wall)
        rows.append(serial_row)
        batch_rows = [serial_row]
        serial_seconds = [r["seconds"] for r in records]
        for mode in modes:
            arrivals = [0.0] * n if mode == "together" else poisson_arrivals(n, rate)
            recs, wall, delta = run_async(engine, reqs, arrivals, args.model, mode)
            row = make_row(env, args.model, mode, n, args.only_first_stage, recs, wall, delta,
                           tokens_match(recs, reference), serial_wall)
            if mode == "poisson":
                latencies, fifo_wall = fifo(arrivals, serial_seconds)
                row.update(rate_per_s=rate, mean_interarrival_s=1 / rate, arrival_seed=ARRIVAL_SEED,
                           serial_fifo_wall_s=fifo_wall, serial_fifo_p50_e2e_s=percentile(latencies, 50),
                           serial_fifo_p90_e2e_s=percentile(latencies, 90), speedup_vs_serial_fifo=fifo_wall / wall)
            row["joined_first_batch"] = sum(1 for r in recs if abs(r.get("started_s", -1) - min(
                x.get("started_s", float("inf")) for x in recs)) < 1e-2)
            rows.append(row)
            batch_rows.append(row)
            warn_mismatch(row)
            mismatches += not row["tokens_match"]
        print_header()
        for r in batch_rows:
            print_row(r)
    say(f"all done in {time.perf_counter() - t_run:.1f} s")
    rows.close()
    print_header()
    for r in rows:
        print_row(r)
    if mismatches:
        say(f"!!! {mismatches} row(s) with tokens that differ from the serial run: see tokens_mismatch_requests")
    if not args.no_plot:
        try:
            from plot_serving import plot
        except ImportError as e:
            say(f"no plot ({e}); pip install matplotlib, then: python bench/plot_serving.py {out}")
        else:
            say(f"plot: {plot(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
