"""Window-attention benchmark: one table, JSON rows in bench/results/.

    python bench/run_attention.py [--device cuda] [--dtype bf16] [--reps 20] [--out bench/results/x.json]

Every implementation's output is first checked against the reference twin (same rule, same cache), so the
baselines compute exactly what the kernel computes. Times are medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cogvideo_engine.kernels.reference import window_attention

from attention_cases import CASES, IMPLS, applicable, ideal_bytes, make_inputs, useful_flops

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def environment(device: str) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {"device": device, "device_name": name, "torch": torch.__version__, "triton": triton_version,
            "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def time_fn(fn, device: str, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_row(env: dict, device: str, dtype: torch.dtype, reps: int) -> dict:
    """The machine's own matmul rate (large square, this dtype): the ceiling useful FLOP/s is read against."""
    n = 4096 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(lambda: a @ b, device, reps)
    return {**env, "bench": "gemm", "case": f"matmul-{n}", "impl": "torch.matmul",
            "dtype": str(dtype).removeprefix("torch."), "seconds": seconds,
            "useful_tflops": 2 * n ** 3 / seconds / 1e12}


def run(rows: JsonRows, device: str, dtype: torch.dtype, reps: int, impls: list[str],
        case_names: list[str] | None) -> JsonRows:
    env = environment(device)
    rows.append(gemm_row(env, device, dtype, reps))
    for case in CASES:
        if case_names and case.name not in case_names:
            continue
        x = make_inputs(case, device, dtype)
        ref = window_attention(x.q, x.k, x.v, x.q_index, x.text_len, x.text_bias, case.rule).float()
        for impl in impls:
            row = {**env, "bench": "window_attention", "case": case.name, "impl": impl,
                   "dtype": str(dtype).removeprefix("torch."), "batch": case.batch, "heads": 48, "head_dim": 64,
                   "queries": x.q.shape[2], "cache_rows": x.k.shape[2]}
            why = applicable(impl, case, device)
            if why:
                rows.append({**row, "skipped": why})
                continue
            try:
                fn = IMPLS[impl](case, x)
                err = (fn().float() - ref).abs().max().item()
                if err > TOL[dtype]:
                    raise AssertionError(f"max error {err:.3g} against the reference")
                seconds = time_fn(fn, device, reps)
            except Exception as e:  # noqa: BLE001  (a baseline that cannot run here is reported, not fatal)
                rows.append({**row, "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                continue
            flops, nbytes = useful_flops(case, x), ideal_bytes(case, x)
            rows.append({**row, "seconds": seconds, "max_abs_err": err, "useful_tflops": flops / seconds / 1e12,
                         "ideal_gbytes_per_s": nbytes / seconds / 1e9, "useful_flop": flops,
                         "ideal_bytes": nbytes})
    return rows


class JsonRows(list):
    """A benchmark's JSON rows, written to ``path`` as they are measured: the file is rewritten (atomically)
    after every row, so a run stopped by a timeout or a signal keeps every row it measured."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def append(self, row: dict):
        super().append(row)
        self._write()
        print(f"  row {len(self)}: {row.get('case', row.get('pass', row.get('bench')))} {row.get('impl', '')} "
              f"{'skipped' if 'skipped' in row else 'measured'}", flush=True)

    def extend(self, rows):
        for row in rows:
            self.append(row)

    def _write(self):
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(list(self), indent=1))
        tmp.replace(self.path)

    def close(self):
        print(f"wrote {len(self)} rows to {self.path}", flush=True)


def print_table(rows: list[dict]):
    print(f"{'case':32s} {'impl':7s} {'ms':>9s} {'TFLOP/s':>8s} {'GB/s':>8s}  note")
    for r in rows:
        if r["bench"] == "gemm":
            print(f"{r['case']:32s} {'matmul':7s} {r['seconds'] * 1e3:9.3f} {r['useful_tflops']:8.3f} {'':>8s}  "
                  "ceiling: the machine's matmul rate")
            continue
        if "skipped" in r:
            print(f"{r['case']:32s} {r['impl']:7s} {'-':>9s} {'-':>8s} {'-':>8s}  {r['skipped']}")
        else:
            print(f"{r['case']:32s} {r['impl']:7s} {r['seconds'] * 1e3:9.3f} {r['useful_tflops']:8.3f} "
                  f"{r['ideal_gbytes_per_s']:8.1f}  err {r['max_abs_err']:.1e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 50 on CUDA, 3 on CPU)")
    p.add_argument("--impl", action="append", choices=sorted(IMPLS), help="repeatable; default: all")
    p.add_argument("--case", action="append", help="repeatable; default: all")
    p.add_argument("--out", type=Path,
                   help="JSON file for the rows (default bench/results/attention-<device>-<date>.json)")
    args = p.parse_args(argv)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    reps = args.reps or (50 if args.device == "cuda" else 3)
    rows = JsonRows(args.out or Path(__file__).parent / "results" / (
        f"attention-{args.device}-{datetime.date.today().isoformat()}.json"))
    run(rows, args.device, dtype, reps, args.impl or list(IMPLS), args.case)
    print_table(rows)
    rows.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
