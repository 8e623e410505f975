"""Batch-invariant CPU linear benchmark: one table, JSON rows in bench/results/.

    python bench/run_linear_rows.py [--threads 2] [--reps 20] [--rounds 3] [--m 1 --m 8] [--shape 512x1536] [--out F]

``out[M, N] = x[M, K] . w[N, K]^T + bias`` in fp32 for the decode row counts M = 1 .. 64, at the weight shapes
(K, N) of the medium model (hidden 512: 512x1536, 512x512, 512x2048, 2048x512 and the 512x20000 logits head) and
of the real one (hidden 3072: 3072x9216, 3072x20000). Implementations, all fed the same inputs and first checked
against float64 (``helpers/numerics.py``'s rule):

* ``linear_rows`` -- the batch-invariant C++ kernel (``kernels/batch_invariant.py``; the CPU kernel variant is
  ``_C.cpu_isa()``, recorded in every row),
* ``linear_rows-bf16`` -- the same kernel on the bf16-rounded weight (half the bytes, widened to fp32 as it is
  read): checked against float64 of the rounded weight, and its error against the fp32 weight's exact product
  recorded as ``rel_err_vs_fp32_weight`` (``max |out - exact| / max |exact|``),
* ``mm``          -- ``torch.mm(w, x.t())``, the product alone (no bias, the result ``[N, M]`` left transposed):
  the BLAS's weight-streaming path for a few rows, timed as the engine's small-row path calls it,
* ``F.linear``    -- ``torch.nn.functional.linear(x, w, b)``.

Neither BLAS path is batch-invariant. Each (shape, M) is timed in ``--rounds`` rounds, the implementations
interleaved within a round; an implementation's time in a round is the median of at least ``--reps`` calls (more
for the small problems: at least ``--min-round-s`` per implementation and round), and the reported ``seconds``
the smallest of its rounds (every round's median is kept in ``round_seconds``).

The development machine has 2 cores and may be shared: a 2-thread call whose second thread loses its core to
another process waits for the scheduler (4 to 12 ms, whatever the problem). So the CPU time the machine spent
outside this process is read from ``/proc`` around each round, and a round during which other processes used
more than ``--max-others`` of a core is measured again, after waiting (up to ``--wait-s``) for a second in which
they use less (up to ``--retries`` times; each row records the share of its kept rounds in ``others_cpu`` and the
retries in ``retried``). ``weight_gbytes_per_s`` is the weight's bytes (``N * K * 4``, bf16 ``N * K * 2``) over the
time: the weight matrix streams once per call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cogvideo_engine.kernels.batch_invariant import linear_rows, linear_rows_available

from helpers.numerics import assert_fp_close
from run_attention import JsonRows, environment

SHAPES = {  # name -> (K, N)
    "medium-512x1536": (512, 1536),
    "medium-512x512": (512, 512),
    "medium-512x2048": (512, 2048),
    "medium-2048x512": (2048, 512),
    "medium-512x20000": (512, 20000),
    "real-3072x9216": (3072, 9216),
    "real-3072x20000": (3072, 20000),
}
ROWS = (1, 2, 4, 8, 16, 32, 64)


def implementations(x: torch.Tensor, w: torch.Tensor, w16: torch.Tensor, b: torch.Tensor) -> dict:
    """The timed calls; ``w16`` is ``w`` rounded to bf16."""
    return {
        "linear_rows": lambda: linear_rows(x, w, b),
        "linear_rows-bf16": lambda: linear_rows(x, w16, b),
        "mm": lambda: torch.mm(w, x.t()),
        "F.linear": lambda: F.linear(x, w, b),
    }


def median_seconds(fn, reps: int, min_seconds: float) -> float:
    times = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process) from /proc (Linux; zeros elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return sum(fields) - fields[3] - fields[4], int(own[11]) + int(own[12])  # less idle, iowait; utime + stime
    except (OSError, ValueError, IndexError):
        return 0, 0


def wait_for_idle(max_others: float, timeout: float):
    """Until the machine's other processes use at most ``max_others`` of a core over a second (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy0, own0 = cpu_ticks()
        time.sleep(1.0)
        busy1, own1 = cpu_ticks()
        if (busy1 - busy0) - (own1 - own0) <= max_others * os.sysconf("SC_CLK_TCK"):
            return


def measure_round(impls: dict, reps: int, min_seconds: float) -> tuple[dict, float]:
    """One round: {impl: median seconds} and the cores' worth of CPU other processes used meanwhile."""
    busy0, own0 = cpu_ticks()
    t0 = time.perf_counter()
    result = {impl: median_seconds(fn, reps, min_seconds) for impl, fn in impls.items()}
    wall = time.perf_counter() - t0
    busy1, own1 = cpu_ticks()
    others = ((busy1 - busy0) - (own1 - own0)) / (os.sysconf("SC_CLK_TCK") * wall)
    return result, max(others, 0.0)


def run(rows: JsonRows, threads: int, reps: int, rounds: int, shapes: list[str], row_counts: list[int], *,
        min_round_s: float = 0.1, max_others: float = 0.1, retries: int = 30, wait_s: float = 60.0) -> JsonRows:
    from cogvideo_engine import _C
    torch.set_num_threads(threads)
    env = {**environment("cpu"), "threads": threads, "cpu_isa": _C.cpu_isa(), "cpu_isas": list(_C.cpu_isas()),
           "cpu_count": os.cpu_count()}
    rows.append({**env, "bench": "gemm", "case": "loadavg-before", "impl": "os.getloadavg",
                 "loadavg": list(os.getloadavg())})
    gen = torch.Generator().manual_seed(0)
    for name in shapes:
        k, n = SHAPES[name]
        w = torch.randn(n, k, generator=gen) / k ** 0.5
        w16 = w.bfloat16()  # the bf16 implementation's weight, once per shape
        b = torch.randn(n, generator=gen)
        for m in row_counts:
            x = torch.randn(m, k, generator=gen)
            impls = implementations(x, w, w16, b)
            exact = F.linear(x.double(), w.double(), b.double())
            own = F.linear(x, w, b)
            errors, vs_fp32 = {}, {}
            for impl, fn in impls.items():
                if impl == "mm":  # no bias, transposed
                    errors[impl] = assert_fp_close(fn().t(), F.linear(x.double(), w.double()), F.linear(x, w),
                                                   what=f"{impl} {name} M={m}")
                elif impl == "linear_rows-bf16":  # exact for its rounded weight; against the fp32 weight: recorded
                    out = fn()
                    errors[impl] = assert_fp_close(out, F.linear(x.double(), w16.double(), b.double()),
                                                   F.linear(x, w16.float(), b), what=f"{impl} {name} M={m}")
                    vs_fp32[impl] = float((out.double() - exact).abs().max() / exact.abs().max())
                else:
                    errors[impl] = assert_fp_close(fn(), exact, own, what=f"{impl} {name} M={m}")
                for _ in range(2):  # warm-up
                    fn()
            per_round = {impl: [] for impl in impls}
            others_cpu, retried = [], 0
            r_reps = max(3, reps if n * k * m <= 2 ** 26 else reps // 4)
            while len(others_cpu) < rounds:
                result, others = measure_round(impls, r_reps, min_round_s)
                if others > max_others and retried < retries:
                    retried += 1
                    wait_for_idle(max_others, wait_s)
                    continue
                others_cpu.append(round(others, 3))
                for impl, seconds in result.items():
                    per_round[impl].append(seconds)
            for impl in impls:
                seconds = min(per_round[impl])
                weight_bytes = n * k * (2 if impl == "linear_rows-bf16" else 4)
                rows.append({**env, "bench": "linear_rows", "case": name, "impl": impl, "dtype": "float32",
                             "weight_dtype": "bfloat16" if impl == "linear_rows-bf16" else "float32",
                             "M": m, "K": k, "N": n, "bias": impl != "mm", "seconds": seconds, "ms": seconds * 1e3,
                             "round_seconds": per_round[impl], "reps": r_reps, "others_cpu": others_cpu,
                             "retried": retried, "max_abs_err": errors[impl],
                             "rel_err_vs_fp32_weight": vs_fp32.get(impl),
                             "weight_bytes": weight_bytes, "weight_gbytes_per_s": weight_bytes / seconds / 1e9,
                             "gflops": 2 * m * n * k / seconds / 1e9})
    rows.append({**env, "bench": "gemm", "case": "loadavg-after", "impl": "os.getloadavg",
                 "loadavg": list(os.getloadavg())})
    return rows


def print_table(rows: list[dict]):
    by_key = {}
    for r in rows:
        if r["bench"] == "linear_rows":
            by_key.setdefault((r["case"], r["M"]), {})[r["impl"]] = r
    print(f"{'shape':18s} {'M':>3s} {'linear_rows ms':>14s} {'mm ms':>9s} {'F.linear ms':>11s} "
          f"{'GB/s (ours)':>11s} {'vs mm':>6s} {'vs F.lin':>8s} {'bf16 w ms':>9s} {'bf16 err':>9s}")
    for (case, m), impls in by_key.items():
        ours, mm, lin, half = (impls[i]["ms"] for i in ("linear_rows", "mm", "F.linear", "linear_rows-bf16"))
        gbs = impls["linear_rows"]["weight_gbytes_per_s"]
        print(f"{case:18s} {m:3d} {ours:14.4f} {mm:9.4f} {lin:11.4f} {gbs:11.1f} {mm / ours:6.2f} {lin / ours:8.2f} "
              f"{half:9.4f} {impls['linear_rows-bf16']['rel_err_vs_fp32_weight']:9.1e}")
    for r in rows:
        if r["bench"] == "gemm":
            print(f"{r['case']}: {r['loadavg']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20, help="calls per round (a quarter for the largest problems)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-round-s", type=float, default=0.1,
                   help="seconds of calls at least per implementation and round")
    p.add_argument("--max-others", type=float, default=0.1,
                   help="a round during which other processes used more of a core than this is measured again")
    p.add_argument("--retries", type=int, default=30, help="re-measured rounds at most per (shape, M)")
    p.add_argument("--wait-s", type=float, default=60.0,
                   help="before measuring a round again, wait up to this long for the other processes to go idle")
    p.add_argument("--shape", action="append", choices=sorted(SHAPES), help="repeatable; default: all")
    p.add_argument("--m", action="append", type=int, help="row counts, repeatable; default: 1 2 4 8 16 32 64")
    p.add_argument("--out", type=Path,
                   help="JSON file for the rows (default bench/results/linear-rows-cpu-<date>.json)")
    args = p.parse_args(argv)
    ok, why = linear_rows_available()
    if not ok:
        print(f"linear_rows is not available: {why}", file=sys.stderr)
        return 1
    rows = JsonRows(args.out or Path(__file__).parent / "results" / (
        f"linear-rows-cpu-{datetime.date.today().isoformat()}.json"))
    run(rows, args.threads, args.reps, args.rounds, args.shape or list(SHAPES), args.m or list(ROWS),
        min_round_s=args.min_round_s, max_others=args.max_others, retries=args.retries, wait_s=args.wait_s)
    print_table(rows)
    rows.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
