"""Where a decode step's time goes, by GPU kernel (CUDA) or operator (CPU): one table, JSON rows in bench/results/.

    python bench/run_step_profile.py [--model tiny|medium|real] [--device cuda|cpu] [--rows 1] [--steps 10]
                                     [--no-cuda-graphs] [--decode-weights bf16] [--out F]

The step measured is the stage-2 wavefront's: a cache of ``--rows`` rows (texts of 9 tokens, 3 random given
frames, prefilled), two positions fed per step (slots 3 and 4), on the runner as the engine makes it (the default
attention backend; on CUDA the steps replay as CUDA graphs unless ``--no-cuda-graphs``). After warm-up steps
(which capture the graph), ``--steps`` steps are timed without the profiler (``step_ms``: the median, the device
synchronised after each step) and then ``--steps`` more under ``torch.profiler``:

* on CUDA, every kernel: its name, launches per step, device microseconds per step and its share of the device's
  busy time, and a ``kind`` read off its name (``gemm``: cuBLAS / CUTLASS / GEMV kernels; ``attention``: the
  window-attention kernels; ``norm``: LayerNorm; ``other``: the rest -- elementwise, copies, the sampler's);
* on CPU, every operator by self CPU time per step, and where the decode stack runs (one C++ call, opaque to the
  profiler) its linears, attention and the rest of the call from its own timings (``kind`` ``decode_stack``).

The summary row (``name`` = ``(step)``) holds ``step_ms``, ``busy_ms`` (the kernels' device time per step, or the
operators' self CPU time), ``launches_per_step``, ``idle_fraction`` (1 - busy / step: on CUDA the launch gaps and
host work the device waits for), the weight bytes a step streams and ``weight_floor_ms`` at the read bandwidth
measured in the same run (``run_generation.read_bandwidth``), and ``by_kind_ms``. ``--decode-weights bf16`` (CPU):
the decode stack streams bf16 copies of its weight matrices (``ModelRunner(decode_weights=torch.bfloat16)``), and
the streamed bytes count those matrices at 2 bytes.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cogvideo_engine.generation.runner import ModelRunner, layouts_for, weight_bytes
from cogvideo_engine.models.config import NUM_IMAGE_TOKENS

from run_attention import DTYPES, JsonRows, environment
from run_generation import build, read_bandwidth

KINDS = [  # (kind, pattern over the kernel's name), first match wins
    ("attention", re.compile(r"window|attention|combine", re.I)),
    ("gemm", re.compile(r"gemm|gemv|cutlass|xmma|cublas|splitk", re.I)),
    ("norm", re.compile(r"norm", re.I)),
]


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def prepared_step(model, rows: int, device: str, cuda_graphs: bool, decode_weights: torch.dtype | None = None):
    """(a function that feeds the next step, the runner): the stage-2 cache prefilled, positions advancing."""
    gen = torch.Generator().manual_seed(0)
    frame_len = model.config.geometry.frame_len
    runner = ModelRunner(model, None, cuda_graphs=cuda_graphs and device == "cuda", decode_weights=decode_weights)
    cache = runner.new_cache(layouts_for(model, "stage2", [9] * rows, 2), text_capacity=74)
    texts = [torch.randint(20100, 20200, (9,), generator=gen) for _ in range(rows)]
    given = torch.randint(0, 20000, (rows, 3, frame_len), generator=gen)
    runner.prefill(cache, texts, given, torch.full((rows,), 1.4))
    stepper = runner.stepper(cache)
    bias = torch.zeros(rows)
    feeds = iter([(p, torch.randint(0, 20000, (rows, 2), generator=gen)) for p in range(frame_len)])

    def step():
        p, ids = next(feeds)
        stepper([(3, p), (4, p)], ids, bias)
        if device == "cuda":
            torch.cuda.synchronize()

    return step, runner


def profile(step, steps: int, device: str, stack=None) -> list[dict]:
    """Per kernel (CUDA) or operator (CPU): name, calls and microseconds per step, over ``steps`` steps; with the
    CPU decode stack (``stack``; one C++ call the profiler does not see inside), its linears, attention and the
    rest of the call as three entries from its own timings."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    inside = {"linear": 0.0, "attention": 0.0, "total": 0.0}
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
            if stack is not None:
                for key, seconds in stack.last_timings.items():
                    inside[key] += seconds
    out = []
    if stack is not None:
        rest = inside["total"] - inside["linear"] - inside["attention"]
        out = [{"name": f"decode_stack.{part}", "calls_per_step": 1.0, "us_per_step": seconds * 1e6 / steps}
               for part, seconds in (("linear", inside["linear"]), ("attention", inside["attention"]),
                                     ("other", rest))]
    for e in prof.key_averages():
        if device == "cuda":
            us = getattr(e, "self_device_time_total", 0.0)
            if e.cpu_time_total > 0 or us <= 0:  # operators and runtime calls: the kernels alone
                continue
        else:
            us = e.self_cpu_time_total
            if us <= 0:
                continue
        out.append({"name": e.key, "calls_per_step": e.count / steps, "us_per_step": us / steps})
    return sorted(out, key=lambda r: -r["us_per_step"])


def streamed_bytes(model, decode_weights: torch.dtype | None) -> int:
    """Weight bytes a decode step streams: :func:`weight_bytes`, with bf16 decode weights its matrices (every 2-D
    layer weight and the logits head) at 2 bytes."""
    streamed = weight_bytes(model)
    if decode_weights is None:
        return streamed
    params = list(model.transformer.layers.parameters()) + list(model.mixins["attention_plus"].parameters())
    matrices = sum(p.numel() for p in params if p.dim() == 2) + NUM_IMAGE_TOKENS * model.config.hidden_size
    return streamed - matrices * 2


def run(rows_out: JsonRows, name: str, device: str, dtype: torch.dtype, rows: int, steps: int, warmup: int,
        cuda_graphs: bool, decode_weights: torch.dtype | None = None) -> JsonRows:
    model = build(name, 2, device, dtype)
    step, runner = prepared_step(model, rows, device, cuda_graphs, decode_weights)
    env = {**environment(device), "bench": "step_profile", "model": name, "dtype": str(dtype).removeprefix("torch."),
           "decode_weights": str(decode_weights or dtype).removeprefix("torch."),
           "rows": rows, "positions_per_step": 2, "cuda_graphs": bool(runner.cuda_graphs)}
    bandwidth = read_bandwidth(device)
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    step_ms = statistics.median(seconds) * 1e3
    entries = profile(step, steps, device, runner.decode_stack if device == "cpu" else None)
    if device == "cuda" and not entries:
        print("run_step_profile: the profiler traced no kernels (CUDA-graph replays untraced here?): rerun with "
              "--no-cuda-graphs", file=sys.stderr)
    busy_ms = sum(e["us_per_step"] for e in entries) / 1e3
    by_kind: dict[str, float] = {}
    for e in entries:
        e["kind"] = kind_of(e["name"]) if device == "cuda" else (
            "decode_stack" if e["name"].startswith("decode_stack.") else "operator")
        e["share_of_busy"] = e["us_per_step"] / 1e3 / busy_ms if busy_ms else 0.0
        by_kind[e["kind"]] = by_kind.get(e["kind"], 0.0) + e["us_per_step"] / 1e3
    streamed = streamed_bytes(model, decode_weights)
    rows_out.append({**env, "name": "(step)", "step_ms": step_ms, "busy_ms": busy_ms,
                     "launches_per_step": sum(e["calls_per_step"] for e in entries) if device == "cuda" else None,
                     "idle_fraction": max(0.0, 1 - busy_ms / step_ms), "weight_bytes": streamed,
                     "read_gbytes_per_s": bandwidth / 1e9, "weight_floor_ms": streamed / bandwidth * 1e3,
                     "by_kind_ms": by_kind})
    for e in entries:
        rows_out.append({**env, **e})
    return rows_out


def print_table(rows: list[dict], top: int = 25):
    for s in (r for r in rows if r["name"] == "(step)"):
        launches = f", {s['launches_per_step']:.0f} launches" if s["launches_per_step"] is not None else ""
        print(f"{s['model']} {s['device']} {s['dtype']} (weights {s['decode_weights']}) rows {s['rows']} "
              f"(cuda graphs {s['cuda_graphs']}): step "
              f"{s['step_ms']:.3f} ms, busy {s['busy_ms']:.3f} ms{launches}, idle {s['idle_fraction']:.0%}, weight "
              f"floor {s['weight_floor_ms']:.3f} ms ({s['read_gbytes_per_s']:.0f} GB/s)")
        print("  by kind (ms/step): " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(s["by_kind_ms"].items(),
                                                                                      key=lambda kv: -kv[1])))
    print(f"{'us/step':>9s} {'calls':>6s} {'share':>6s} {'kind':9s} name")
    for r in [r for r in rows if r["name"] != "(step)"][:top]:
        print(f"{r['us_per_step']:9.1f} {r['calls_per_step']:6.1f} {r['share_of_busy']:6.1%} {r['kind']:9s} "
              f"{r['name'][:100]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "medium", "real"], default="medium")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="steps timed, then as many profiled")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--decode-weights", choices=["bf16"], help="CPU: the decode stack on bf16 copies of the weights")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.rows < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--rows and --steps must be at least 1, --warmup at least 0")
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    stamp = time.strftime("%Y-%m-%d")
    out = args.out or Path(__file__).parent / "results" / f"step-profile-{args.model}-{args.device}-{stamp}.json"
    rows = run(JsonRows(out), args.model, args.device, dtype, args.rows, args.steps, args.warmup,
               not args.no_cuda_graphs, DTYPES[args.decode_weights] if args.decode_weights else None)
    print_table(rows)
    print(f"wrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
