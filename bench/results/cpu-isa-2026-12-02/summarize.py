"""Summary of the CPU instruction-set benchmark in this folder: writes summary.json and prints the tables.

    .venv/bin/python bench/results/cpu-isa-2026-12-02/summarize.py

Each <set>/<bench>-<dtype>-<build>.json holds the rows bench/run_attention.py or bench/run_local_attention.py
wrote, every round of one build, with "build", "round" and "omp_threads" added. Per (bench, dtype, case) and
build: the minimum and the median over rounds of each round's median time (ms), and the speed-ups: over the
baseline build (threads-1, threads-2) or, per instruction set, of the kernel after over before (local-lanes).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETS = {"threads-1": ["baseline", "avx2", "avx512", "native"],
        "threads-2": ["baseline", "avx2", "avx512", "native"],
        "local-lanes": ["before-baseline", "after-baseline", "before-avx2", "after-avx2", "before-avx512",
                        "after-avx512"]}


def summarize(folder: Path, builds: list[str]) -> list[dict]:
    times: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for f in sorted(folder.glob("*.json")):
        match = re.fullmatch(r"(local-attention|attention)-(fp32|bf16)-(.+)", f.stem)
        if match is None:
            continue
        bench_file, dtype, build = match.groups()
        for row in json.loads(f.read_text()):
            if "seconds" not in row:
                continue
            bench = row["bench"] if row["bench"] != "gemm" else f"gemm ({bench_file} run)"
            times[(bench, dtype, row["case"])][build].append(row["seconds"])
    rows = []
    for (bench, dtype, case), by_build in sorted(times.items()):
        row = {"bench": bench, "dtype": dtype, "case": case, "ms": {}}
        for build in builds:
            if build in by_build:
                t = by_build[build]
                row["ms"][build] = {"min": round(min(t) * 1e3, 3), "median": round(statistics.median(t) * 1e3, 3),
                                    "rounds": len(t)}
        ms = {b: v["min"] for b, v in row["ms"].items()}
        if "baseline" in ms:
            row["speedup_vs_baseline"] = {b: round(ms["baseline"] / ms[b], 2) for b in builds[1:] if b in ms}
        else:
            row["speedup_after_vs_before"] = {
                b.removeprefix("after-"): round(ms["before-" + b.removeprefix("after-")] / ms[b], 2)
                for b in builds if b.startswith("after-") and b in ms and "before-" + b.removeprefix("after-") in ms}
        rows.append(row)
    return rows


def main() -> int:
    summary = {}
    for name, builds in SETS.items():
        rows = summarize(HERE / name, builds)
        summary[name] = rows
        print(f"\n{name}: ms (minimum over rounds)")
        print(f"{'bench':26s} {'dtype':5s} {'case':31s} " + " ".join(f"{b[:15]:>15s}" for b in builds) + "  speed-up")
        for r in rows:
            ms = " ".join(f"{r['ms'][b]['min']:15.2f}" if b in r["ms"] else f"{'-':>15s}" for b in builds)
            up = r.get("speedup_vs_baseline") or r.get("speedup_after_vs_before") or {}
            print(f"{r['bench'][:26]:26s} {r['dtype']:5s} {r['case'][:31]:31s} {ms}  "
                  + " ".join(f"{b}={x:.2f}" for b, x in up.items()))
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
