"""HTTP load benchmark: closed-loop clients against the real service in a subprocess, next to the same load in-process.

    python bench/run_http_load.py [--model tiny|medium] [--concurrency 1,2,4,8] [--jobs-per-level J] [--full]
                                  [--in-process closed-loop|results|none] [--warmup 1] [--out PATH] [--no-plot]

The service runs in a subprocess on 127.0.0.1 and a free port with a temporary job store: ``tiny`` is
``python -m cogvideo_engine serve`` (the embedded default model); ``medium`` is this script with ``--serve medium``,
which builds ``run_serving.make_engine("medium")`` (8 x 512 random stage models, the default assets' tokenizer,
decoder and sampler) and calls ``cogvideo_engine.service.server.serve`` on it.

For each concurrency C: C client threads, each keeping one job in flight (closed loop: POST ``/v1/videos``, follow
``/v1/videos/{id}/events`` to the terminal event, then the next job), for J jobs in all (default 2 C). Job i is
``{"prompt": "a cat plays the piano {i}", "seed": i, "only_first_stage": true}`` (``--full``: whole videos), so
the same i is the same request at every level and in every mode. Per job, from the client: time to first frame
(POST sent -> the first ``frame`` event with frame_index 0) and end-to-end (POST sent -> the ``completed``
event); after the level, the job object (it must say ``completed``; its ``timings`` are the engine's) and its
tokens (``content?variant=tokens``). Per level: jobs/s, videos/hour and generated tokens/s over the level's wall
time (first POST to last ``completed``), p50/p90/p99 end-to-end and time to first frame, the engine's
``timings.total`` / ``time_to_first_frame`` / ``queue``, and the HTTP overhead per job (client end-to-end minus
the engine's total: request parsing, the job store, writing the outputs, the event stream).

Then, with the server stopped (``--in-process closed-loop``, the default), the same levels in this process: the
same engine built here (``run_serving.make_engine``), one ``AsyncEngine(previews=True, max_queued=None)`` as the
service makes, the same closed-loop clients calling ``submit`` and reading the handle's events. ``results``
instead reads the newest matching ``together`` row for N = C from ``bench/results/serving-*.json`` (another
workload: N requests submitted once; the row names its file); ``none`` skips it. Every job's tokens are compared
with the first computation of the same job in the run (``tokens_match``; the engine promises batch-invariant
tokens).

Rows go to ``bench/results/http-load-<model>[-full]-<device>-<date>.json`` as they are measured (one per level
and mode; per-job details under ``jobs_detail``; HTTP rows add ``vs_in_process`` and ``server_threads``), a PNG
next to it (throughput, end-to-end and time to first frame against C, HTTP against in-process; matplotlib;
``--plot-only JSON`` redraws it). ``--warmup`` untimed stage-1 jobs run first in each mode. Timings are only
meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from cogvideo_engine.service.client import ServiceProcess, free_port, parse_sse

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run_serving import PROMPT, make_engine, percentile, say, stats_delta  # noqa: E402  (after the path)

START_TIMEOUT_S = 900.0
"""Longest wait for the server's /health to say ready (the medium engine is built at start)."""
READ_TIMEOUT_S = 300.0
"""Longest silence on an event stream (the server sends a keep-alive every 15 s)."""
WARMUP_PROMPT = "a warm-up request"
WARMUP_SEED = 1_000_003


def server_command(model: str, device: str, port: int, store: Path) -> list[str]:
    if model == "tiny":
        return ServiceProcess.serve_command(store, port, "--log-level", "warning", "--device", device,
                                            *(["--dtype", "bf16"] if device == "cuda" else []))
    return [sys.executable, str(Path(__file__).resolve()), "--serve", model, "--host", "127.0.0.1", "--port",
            str(port), "--store", str(store), "--log-level", "warning", "--device", device]


def serve_main(args) -> int:
    """``--serve MODEL``: the service over ``run_serving.make_engine(MODEL)`` (built at start, in the service's
    loading thread, as ``python -m cogvideo_engine serve`` builds its engine)."""
    from cogvideo_engine.service.server import serve

    print(f"serving the {args.serve} random-weight engine of run_serving.py on {args.host}:{args.port}",
          file=sys.stderr, flush=True)
    serve(lambda: make_engine(args.serve, args.device), host=args.host, port=args.port, store=args.store,
          log_level=args.log_level, model_id=f"bench-{args.serve}")
    return 0


# -- clients --------------------------------------------------------------------------------------------------


def job_body(i: int, full: bool) -> dict:
    return {"prompt": PROMPT.format(i=i), "seed": i, "only_first_stage": not full}


def http_job(client, body: dict, t0: float) -> dict:
    """One job over HTTP: POST, then its event stream to the terminal event."""
    rec: dict = {}
    t_post = time.perf_counter()
    rec["submit_s"] = t_post - t0
    r = client.post("/v1/videos", json=body)
    rec["post_s"] = time.perf_counter() - t_post
    if r.status_code != 202:
        rec.update(status=f"http-{r.status_code}", error=r.text[:500], done_s=time.perf_counter() - t0)
        return rec
    job = r.json()
    rec["job_id"] = job["id"]
    with client.stream("GET", f"/v1/videos/{job['id']}/events") as resp:
        resp.raise_for_status()
        for ev in parse_sse(resp.iter_lines()):
            t, event = time.perf_counter(), ev.event  # as each event completes
            if event == "progress" and "started_s" not in rec and ev.json().get("status") == "in_progress":
                rec["started_s"] = t - t0
            elif event == "frame" and "ttff_s" not in rec and ev.json().get("frame_index") == 0:
                rec["ttff_s"] = t - t_post
            elif event in ("completed", "failed", "cancelled"):
                rec.update(status=event, done_s=t - t0, e2e_s=t - t_post)
                if event != "completed":
                    rec["error"] = ev.json().get("error")
                break
    if "status" not in rec:
        rec.update(status="stream-ended", error="the event stream ended without a terminal event",
                   done_s=time.perf_counter() - t0)
    return rec


def closed_loop(run_one, concurrency: int, jobs: int, label: str) -> tuple[list[dict], float]:
    """``concurrency`` client threads taking job indices 0..jobs-1 in turn, each running ``run_one(i, worker, t0)``
    for one job at a time; the records (in job order) and the wall time (t0 to the last job's end)."""
    records: list[dict | None] = [None] * jobs
    next_job = iter(range(jobs))
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    t0_box: list[float] = []

    def client(worker: int):
        start.wait()
        t0 = t0_box[0]
        while True:
            with lock:
                i = next(next_job, None)
            if i is None:
                return
            try:
                rec = run_one(i, worker, t0)
            except Exception as e:  # noqa: BLE001  (a failed job is reported in its record; the others go on)
                rec = {"status": "error", "error": f"{type(e).__name__}: {e}", "done_s": time.perf_counter() - t0}
            rec.update(i=i, client=worker)
            records[i] = rec
            if rec["status"] == "completed":
                say(f"  [{label} c={concurrency}] job {i:2d} done at {rec['done_s']:7.1f} s  (first frame after "
                    f"{rec.get('ttff_s', float('nan')):6.1f} s, end-to-end {rec['e2e_s']:6.1f} s)")
            else:
                say(f"  !!! [{label} c={concurrency}] job {i} {rec['status']}: {rec.get('error')}")

    threads = [threading.Thread(target=client, args=(w,), name=f"client-{w}", daemon=True)
               for w in range(concurrency)]
    for th in threads:
        th.start()
    t0_box.append(time.perf_counter())
    start.wait()
    for th in threads:
        th.join()
    wall = max(r["done_s"] for r in records)
    return records, wall


def scrape_counters(client) -> dict:
    """The engine core's counters from ``/metrics`` (generated tokens, batch steps)."""
    out = {}
    with contextlib.suppress(Exception):
        for line in client.get("/metrics").text.splitlines():
            for name in ("cogvideo_generated_tokens_total", "cogvideo_batch_steps_total"):
                if line.startswith(name + " "):
                    out[name] = float(line.split()[1])
    return out


def http_level(url: str, concurrency: int, jobs: int, full: bool) -> tuple[list[dict], float, dict]:
    import httpx

    timeout = httpx.Timeout(30.0, read=READ_TIMEOUT_S)
    clients = [httpx.Client(base_url=url, timeout=timeout) for _ in range(concurrency)]
    try:
        before = scrape_counters(clients[0])
        records, wall = closed_loop(lambda i, w, t0: http_job(clients[w], job_body(i, full), t0), concurrency, jobs,
                                    "http")
        after = scrape_counters(clients[0])
        for rec in records:  # the job object (the server's word on its status, the engine's timings), its tokens
            if rec["status"] != "completed":
                continue
            job = clients[0].get(f"/v1/videos/{rec['job_id']}").json()
            if job.get("status") != "completed":
                rec.update(status=f"object-says-{job.get('status')}", error=job.get("error"))
                continue
            rec["timings"] = job.get("timings") or {}
            r = clients[0].get(f"/v1/videos/{rec['job_id']}/content", params={"variant": "tokens"})
            r.raise_for_status()
            rec["tokens"] = np.load(io.BytesIO(r.content))
    finally:
        for c in clients:
            c.close()
    counters = {"core_tokens": after.get("cogvideo_generated_tokens_total", 0) -
                before.get("cogvideo_generated_tokens_total", 0),
                "core_steps": after.get("cogvideo_batch_steps_total", 0) - before.get("cogvideo_batch_steps_total", 0)}
    return records, wall, counters


def in_process_job(front, body: dict, t0: float, request_id: str) -> dict:
    from cogvideo_engine.api import SamplingParams

    rec: dict = {}
    params = SamplingParams(seed=body["seed"], only_first_stage=body["only_first_stage"])
    t_submit = time.perf_counter()
    rec["submit_s"] = t_submit - t0
    handle = front.submit(body["prompt"], params, request_id=request_id)
    for ev in handle.events():
        if ev.kind == "started":
            rec["started_s"] = ev.time - t0
        elif ev.kind == "frame" and "ttff_s" not in rec and ev.frame_index == 0:
            rec["ttff_s"] = time.perf_counter() - t_submit
        elif ev.is_terminal:
            t = time.perf_counter()
            rec.update(status=ev.kind, done_s=t - t0, e2e_s=t - t_submit)
            if ev.kind == "completed":
                [video] = ev.outputs
                rec.update(timings=dict(video.timings), tokens=video.tokens.numpy())
            else:
                rec["error"] = f"{type(ev.error).__name__}: {ev.error}"
            break
    return rec


def in_process_level(front, concurrency: int, jobs: int, full: bool) -> tuple[list[dict], float, dict]:
    before = front.metrics()
    records, wall = closed_loop(
        lambda i, w, t0: in_process_job(front, job_body(i, full), t0, f"c{concurrency}-job{i}-{time.monotonic_ns()}"),
        concurrency, jobs, "in-process")
    d = stats_delta(before, front.metrics())
    return records, wall, {"core_tokens": d["tokens"], "core_steps": d["steps"], "occupancy": d["occupancy"]}


# -- rows -----------------------------------------------------------------------------------------------------


def _pcts(values: list[float], name: str) -> dict:
    return {f"p{q}_{name}": percentile(values, q) for q in (50, 90, 99)}


def make_row(env: dict, model: str, mode: str, concurrency: int, full: bool, records: list[dict], wall: float,
             counters: dict, reference: dict[int, np.ndarray]) -> dict:
    done = [r for r in records if r["status"] == "completed" and "tokens" in r]
    for r in done:
        t = r["timings"]
        r["generated_tokens"] = int(r["tokens"].size)
        r["engine_total_s"], r["engine_ttff_s"] = t.get("total"), t.get("time_to_first_frame")
        r["engine_queue_s"] = t.get("queue")
        r["overhead_s"] = r["e2e_s"] - t["total"] if "total" in t else None
        r["ttff_overhead_s"] = (r["ttff_s"] - t["time_to_first_frame"]
                                if "ttff_s" in r and "time_to_first_frame" in t else None)
    done_ids = {id(r) for r in done}
    compared, bad = 0, sorted(r["i"] for r in records if id(r) not in done_ids)
    for r in done:
        ref = reference.get(r["i"])
        if ref is None:
            reference[r["i"]] = r["tokens"]
        else:
            compared += 1
            if not np.array_equal(ref, r["tokens"]):
                bad.append(r["i"])

    def vals(key):
        return [r[key] for r in done if r.get(key) is not None]

    tokens = sum(r["generated_tokens"] for r in done)
    overhead = vals("overhead_s")
    row = {**env, "bench": "http-load", "model": model, "mode": mode, "concurrency": concurrency,
           "jobs": len(records), "only_first_stage": not full, "completed": len(done),
           "failed": len(records) - len(done), "wall_s": wall, "jobs_per_s": len(done) / wall,
           "videos_per_hour": 3600 * len(done) / wall, "generated_tokens": tokens, "tokens_per_s": tokens / wall,
           **_pcts(vals("e2e_s"), "e2e_s"), **_pcts(vals("ttff_s"), "ttff_s"),
           "mean_e2e_s": float(np.mean(vals("e2e_s"))) if done else None,
           **{k: v for k, v in _pcts(vals("engine_total_s"), "engine_total_s").items() if not k.startswith("p99")},
           **{k: v for k, v in _pcts(vals("engine_ttff_s"), "engine_ttff_s").items() if not k.startswith("p99")},
           "mean_engine_queue_s": float(np.mean(vals("engine_queue_s"))) if done else None,
           "p50_overhead_s": percentile(overhead, 50), "p90_overhead_s": percentile(overhead, 90),
           "mean_overhead_s": float(np.mean(overhead)) if overhead else None,
           "max_overhead_s": max(overhead) if overhead else None,
           "p50_ttff_overhead_s": percentile(vals("ttff_overhead_s"), 50),
           "p50_post_s": percentile(vals("post_s"), 50), "max_post_s": max(vals("post_s"), default=None),
           **counters,
           "tokens_match": not bad, "tokens_compared": compared, "tokens_mismatch_jobs": bad,
           "jobs_detail": [{k: v for k, v in r.items() if k != "tokens"} for r in records]}
    return row


def results_rows(env: dict, model: str, full: bool, device: str, levels: list[int]) -> list[dict]:
    """``--in-process results``: the newest ``together`` row with N = C of ``bench/results/serving-*.json`` per
    level (run_serving.py's rows: N requests submitted once, previews off)."""
    found: dict[int, tuple[str, Path, dict]] = {}
    for path in sorted((BENCH / "results").glob("serving-*.json")):
        with contextlib.suppress(ValueError, OSError):
            for r in json.loads(path.read_text()):
                if (r.get("bench") == "serving" and r.get("model") == model and r.get("mode") == "together"
                        and r.get("only_first_stage") == (not full) and r.get("device") == device
                        and r.get("n") in levels and (r["n"] not in found or r["date"] > found[r["n"]][0])):
                    found[r["n"]] = (r["date"], path, r)
    rows = []
    for c in levels:
        if c not in found:
            say(f"  no in-process row for {model} n={c} ({'full' if full else 'stage 1'}) in bench/results/serving-*")
            continue
        _, path, r = found[c]
        rows.append({**env, "bench": "http-load", "model": model, "mode": "in-process (results file)",
                     "concurrency": c, "jobs": r["n"], "only_first_stage": not full, "completed": r["completed"],
                     "failed": r["n"] - r["completed"], "wall_s": r["wall_s"],
                     "jobs_per_s": r["completed"] / r["wall_s"], "videos_per_hour": r["videos_per_hour"],
                     "generated_tokens": r["generated_tokens"], "tokens_per_s": r["tokens_per_s"],
                     "p50_e2e_s": r["p50_e2e_s"], "p90_e2e_s": r["p90_e2e_s"], "p99_e2e_s": None,
                     "p50_ttff_s": None, "p90_ttff_s": None, "p99_ttff_s": None,
                     "p50_engine_ttff_s": r["p50_time_to_first_frame_s"], "mean_engine_queue_s": r["mean_queue_s"],
                     "tokens_match": r["tokens_match"], "tokens_compared": r["tokens_compared"],
                     "source": str(path.relative_to(BENCH.parent)), "source_commit": r.get("commit"),
                     "source_date": r.get("date"),
                     "workload": f"{r['n']} requests submitted together once, previews off (run_serving.py)"})
    return rows


def print_header() -> None:
    say(f"{'mode':25s} {'C':>2s} {'jobs':>4s} {'wall s':>7s} {'jobs/s':>7s} {'tok/s':>7s} {'e2e p50':>7s} "
        f"{'p90':>6s} {'p99':>6s} {'ttff p50':>8s} {'p90':>6s} {'eng tot':>7s} {'eng ttff':>8s} {'ovh p50':>7s} "
        f"{'ovh max':>7s}  tokens")


def print_row(r: dict) -> None:
    def f(key, width, digits=1):
        v = r.get(key)
        return format(v, f"{width}.{digits}f") if v is not None else "-".rjust(width)

    match = "match" if r["tokens_match"] else "MISMATCH"
    say(f"{r['mode']:25s} {r['concurrency']:2d} {r['jobs']:4d} {f('wall_s', 7)} {f('jobs_per_s', 7, 3)} "
        f"{f('tokens_per_s', 7)} {f('p50_e2e_s', 7)} {f('p90_e2e_s', 6)} {f('p99_e2e_s', 6)} {f('p50_ttff_s', 8, 2)} "
        f"{f('p90_ttff_s', 6, 2)} {f('p50_engine_total_s', 7)} {f('p50_engine_ttff_s', 8, 2)} "
        f"{f('p50_overhead_s', 7, 3)} {f('max_overhead_s', 7, 3)}  {match} ({r['tokens_compared']} compared)"
        + (f"  {r['failed']} FAILED" if r.get("failed") else ""))


# -- plot -----------------------------------------------------------------------------------------------------

MODES = {"http": ("tab:blue", "o", "-"), "in-process": ("tab:gray", "s", "-"),
         "in-process (results file)": ("tab:gray", "^", ":")}


def plot(path: Path, out: Path | None = None) -> Path:
    from plot_serving import style_count_axes  # (first: it selects the Agg backend)

    import matplotlib.pyplot as plt

    rows = [r for r in json.loads(Path(path).read_text()) if r.get("bench") == "http-load"]
    if not rows:
        raise ValueError(f"no http-load rows in {path}")
    fig, (ax_tp, ax_e2e, ax_ttff) = plt.subplots(1, 3, figsize=(16, 4.5))
    for mode, (color, marker, style) in MODES.items():
        pts = sorted((r["concurrency"], r) for r in rows if r["mode"] == mode)
        if not pts:
            continue
        cs = [c for c, _ in pts]
        ax_tp.plot(cs, [r["videos_per_hour"] for _, r in pts], color=color, marker=marker, linestyle=style,
                   label=mode)
        for ax, key in ((ax_e2e, "e2e_s"), (ax_ttff, "ttff_s")):
            for q, alpha, ls in (("p50", 1.0, style), ("p90", 0.7, "--")):
                ys = [r.get(f"{q}_{key}") for _, r in pts]
                if any(y is not None for y in ys):
                    ax.plot([c for c, y in zip(cs, ys, strict=True) if y is not None], [y for y in ys if y is not None],
                            color=color, marker=marker, linestyle=ls, alpha=alpha, label=f"{mode} {q}")
        if mode == "http":
            eng = [(c, r.get("p50_engine_total_s")) for c, r in pts if r.get("p50_engine_total_s") is not None]
            if eng:
                ax_e2e.plot(*zip(*eng, strict=True), color="tab:green", marker=".", linestyle=":",
                            label="http: engine timings.total p50")
            for c, r in pts:
                if r.get("p50_overhead_s") is not None:
                    ax_e2e.annotate(f"+{r['p50_overhead_s']:.2f} s", (c, r["p50_e2e_s"]), fontsize=7,
                                    xytext=(3, 3), textcoords="offset points", color=color)
        for c, r in pts:
            if not r.get("tokens_match", True) or r.get("failed"):
                ax_tp.annotate("tokens differ / failed!", (c, r["videos_per_hour"]), color="red", fontsize=8)
    style_count_axes([(ax_tp, "videos / hour"), (ax_e2e, "end-to-end latency (s)"),
                      (ax_ttff, "time to first frame (s)")], sorted({r["concurrency"] for r in rows}),
                     "concurrent clients C (closed loop)", headroom=1.1, legend_size=7)
    r0 = rows[0]
    stage = "stage 1 only" if r0["only_first_stage"] else "full video"
    ax_tp.set_title(f"{r0['model']} ({stage}): throughput")
    ax_e2e.set_title(f"end-to-end (labels: HTTP overhead p50), {r0.get('commit')}")
    ax_ttff.set_title(f"time to first frame, {r0.get('torch_threads')} threads, {r0.get('cpu_count')} CPUs")
    fig.tight_layout()
    out = Path(out) if out is not None else Path(path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- main -----------------------------------------------------------------------------------------------------


def versions() -> dict:
    out = {}
    for name in ("httpx", "uvicorn", "starlette"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "medium"], default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated client counts (default 1,2,4,8)")
    p.add_argument("--jobs-per-level", type=int, default=None,
                   help="jobs per concurrency level (default 2 C; at least C)")
    p.add_argument("--full", action="store_true", help="whole videos (stage 1 and 2) instead of stage 1 only")
    p.add_argument("--in-process", choices=["closed-loop", "results", "none"], default="closed-loop",
                   help="the in-process numbers: the same closed loop in this process after the server stopped "
                        "(default), the matching rows of bench/results/serving-*.json, or none")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed jobs before the first level, in each mode (default 1)")
    p.add_argument("--out", type=Path,
                   help="JSON rows (default bench/results/http-load-<model>[-full]-<device>-<date>.json); the PNG goes "
                        "next to it")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG at the end")
    p.add_argument("--plot-only", type=Path, metavar="JSON", help="only redraw the PNG of these rows")
    p.add_argument("--keep-store", action="store_true", help="keep the server's temporary job store and log")
    # the service itself, in the subprocess this script starts for --model medium
    p.add_argument("--serve", choices=["tiny", "medium"], help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="warning", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve_main(args)
    if args.plot_only:
        say(f"plot: {plot(args.plot_only)}")
        return 0
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        p.error("--concurrency needs positive counts")
    if args.jobs_per_level is not None and args.jobs_per_level < 1:
        p.error("--jobs-per-level must be positive")
    jobs_for = {c: max(c, 2 * c if args.jobs_per_level is None else args.jobs_per_level) for c in levels}
    for c in levels:
        if args.jobs_per_level is not None and args.jobs_per_level < c:
            say(f"  note: {c} clients need at least {c} jobs: level {c} runs {c}")
    suffix = "-full" if args.full else ""
    out = args.out or BENCH / "results" / (
        f"http-load-{args.model}{suffix}-{args.device}-{datetime.date.today().isoformat()}.json")

    # the bench process waits on sockets; a SIGTERM still stops the server (finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import httpx
    import torch

    from run_attention import JsonRows, environment

    env = {**environment(args.device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "versions": versions(), "previews": True, "warmup_jobs": args.warmup,
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    rows = JsonRows(out)
    reference: dict[int, np.ndarray] = {}
    failures = 0
    t_run = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="http-load-"))
    port = free_port()
    cmd = server_command(args.model, args.device, port, tmp / "store")
    env_server = {k: v for k, v in os.environ.items() if k != "COGVIDEO_API_KEY"}  # loopback, no key
    server = ServiceProcess(cmd, port, tmp / "server.log", env={**env_server, "PYTHONUNBUFFERED": "1"},
                            cwd=BENCH.parent)
    say(f"starting the server: {' '.join(cmd)}")
    http_rows = []
    try:
        server.start(START_TIMEOUT_S)
        say(f"server ready in {server.ready_s:.1f} s at {server.url} (log {server.log_path})")
        http_env = {**env, "server_cmd": " ".join(cmd[1:]), "server_ready_s": server.ready_s}
        for w in range(args.warmup):
            with httpx.Client(base_url=server.url, timeout=httpx.Timeout(30.0, read=READ_TIMEOUT_S)) as c:
                rec = http_job(c, {"prompt": WARMUP_PROMPT, "seed": WARMUP_SEED + w, "only_first_stage": True},
                               time.perf_counter())
            say(f"  http warm-up job: {rec['status']} in {rec.get('e2e_s', float('nan')):.1f} s")
            if rec["status"] != "completed":
                raise RuntimeError(f"the warm-up job did not complete: {rec}\n{server.log()}")
        for c in levels:
            records, wall, counters = http_level(server.url, c, jobs_for[c], args.full)
            counters["server_threads"] = server.threads()
            row = make_row(http_env, args.model, "http", c, args.full, records, wall, counters, reference)
            rows.append(row)
            http_rows.append(row)
            failures += row["failed"] + (not row["tokens_match"])
            print_header()
            print_row(row)
    except BaseException:
        say(f"!!! stopped; the server's log ends:\n{server.log(3000)}")
        raise
    finally:
        code = server.stop()
        say(f"server stopped (exit code {code})")
        if args.keep_store:
            say(f"kept the store and log in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    in_rows = []
    if args.in_process == "closed-loop":
        from cogvideo_engine.serving.async_engine import AsyncEngine

        t_load = time.perf_counter()
        engine = make_engine(args.model, args.device)
        front = AsyncEngine(engine, max_queued=None, previews=True)  # as the service makes it
        say(f"in-process {args.model} engine ready in {time.perf_counter() - t_load:.1f} s")
        try:
            for w in range(args.warmup):
                rec = in_process_job(front, {"prompt": WARMUP_PROMPT, "seed": WARMUP_SEED + w,
                                             "only_first_stage": True}, time.perf_counter(), f"warmup-{w}")
                say(f"  in-process warm-up job: {rec['status']} in {rec.get('e2e_s', float('nan')):.1f} s")
            for c in levels:
                records, wall, counters = in_process_level(front, c, jobs_for[c], args.full)
                row = make_row({**env, "max_rows": engine.core.max_rows}, args.model, "in-process", c, args.full,
                               records, wall, counters, reference)
                rows.append(row)
                in_rows.append(row)
                failures += row["failed"] + (not row["tokens_match"])
                print_header()
                print_row(row)
        finally:
            front.shutdown(cancel=True)
    elif args.in_process == "results":
        for row in results_rows(env, args.model, args.full, args.device, levels):
            rows.append(row)
            in_rows.append(row)
    # HTTP against in-process, per level, in the HTTP rows
    by_c = {r["concurrency"]: r for r in in_rows}
    for r in http_rows:
        ref = by_c.get(r["concurrency"])
        if ref is None:
            continue
        r["vs_in_process"] = {
            "mode": ref["mode"], "source": ref.get("source", "this run"),
            "throughput_ratio": r["jobs_per_s"] / ref["jobs_per_s"] if ref.get("jobs_per_s") else None,
            "p50_e2e_diff_s": (r["p50_e2e_s"] - ref["p50_e2e_s"]
                               if None not in (r["p50_e2e_s"], ref["p50_e2e_s"]) else None),
            "p90_e2e_diff_s": (r["p90_e2e_s"] - ref["p90_e2e_s"]
                               if None not in (r["p90_e2e_s"], ref["p90_e2e_s"]) else None),
            "p50_ttff_diff_s": (r["p50_ttff_s"] - ref["p50_ttff_s"]
                                if None not in (r["p50_ttff_s"], ref.get("p50_ttff_s")) else None)}
    rows._write()
    say(f"all done in {time.perf_counter() - t_run:.1f} s")
    rows.close()
    print_header()
    for r in rows:
        print_row(r)
    for r in http_rows:
        v = r.get("vs_in_process")
        if v:
            def s(x, fmt="+.2f"):
                return "-" if x is None else format(x, fmt)
            say(f"  C={r['concurrency']}: HTTP / in-process throughput {s(v['throughput_ratio'], '.3f')}, "
                f"p50 e2e {s(v['p50_e2e_diff_s'])} s, p90 e2e {s(v['p90_e2e_diff_s'])} s, "
                f"p50 ttff {s(v['p50_ttff_diff_s'])} s  (in-process: {v['source']})")
    if failures:
        say(f"!!! {failures} failed job(s) or token mismatch(es): see jobs_detail / tokens_mismatch_jobs")
    if not args.no_plot:
        try:
            say(f"plot: {plot(out)}")
        except ImportError as e:
            say(f"no plot ({e}); pip install matplotlib, then: python bench/run_http_load.py --plot-only {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
