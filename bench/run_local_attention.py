"""Super-resolution local-attention benchmark (level 1 of the DSR model): one table, JSON rows in bench/results/.

    python bench/run_local_attention.py [--device cuda] [--dtype bf16] [--frames 1] [--reps 5] [--out F]

Shape: the released DSR layer -- 60x60 high-resolution queries, each over a 9x5 high-resolution window and a
5x5 low-resolution window (20x20), 48 heads, d = 64, ``--frames`` frames. Implementations, all fed the same
inputs and first checked against the reference twin:

* ``triton`` (CUDA), ``cpu`` / ``cuda`` (csrc) -- the fused kernels,
* ``sdpa``   -- dense ``scaled_dot_product_attention`` over ``[high | low]`` keys with the rule's mask (mask and
  concatenated keys built outside timing),
* ``flex``   -- FlexAttention with ``mask_mod`` from the same rule predicates (compiled), BlockMask built
  outside timing,
* ``reference`` -- the dense twin (query chunks of 1024, fp32).

Useful FLOPs count only visible (query, key) pairs: ``4 * d * pairs * heads * frames``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cogvideo_engine.kernels.local_reference import local_additive, local_attention
from cogvideo_engine.kernels.local_rules import DSR_GEOMETRY, high_visible, low_visible

from run_attention import DTYPES, TOL, JsonRows, environment, gemm_row, time_fn

HEADS, HEAD_DIM = 48, 64
G = DSR_GEOMETRY


def make_inputs(frames: int, device: str, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(frames, HEADS, G.num_queries, HEAD_DIM)] * 3 + [(frames, HEADS, G.num_low, HEAD_DIM)] * 2
    return [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]


def run_kernel(name: str):
    def build(x, device):
        if name == "triton":
            from cogvideo_engine.kernels.triton_local_attention import local_attention_triton as fn
        else:
            from cogvideo_engine.kernels.csrc_ops import local_attention_csrc as fn
        return lambda: fn(*x, G)
    return build


def run_sdpa(x, device):
    q, k, v, kl, vl = x
    keys, values = torch.cat([k, kl], 2), torch.cat([v, vl], 2)
    mask = local_additive(G, device).to(q.dtype)
    return lambda: F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def run_flex(x, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v, kl, vl = x
    keys, values = torch.cat([k, kl], 2), torch.cat([v, vl], 2)
    n = G.num_queries

    def mask_mod(b, h, q_idx, kv_idx):
        return torch.where(kv_idx < n, high_visible(G, q_idx, kv_idx), low_visible(G, q_idx, kv_idx - n))

    block = create_block_mask(mask_mod, None, None, n, n + G.num_low, device=device)
    torch._dynamo.reset()
    fn = torch.compile(flex_attention)
    return lambda: fn(q, keys, values, block_mask=block)


def run_reference(x, device):
    return lambda: local_attention(*x, G)


IMPLS = {"triton": run_kernel("triton"), "cpu": run_kernel("cpu"), "cuda": run_kernel("cuda"), "sdpa": run_sdpa,
         "flex": run_flex, "reference": run_reference}


def applicable(impl: str, device: str) -> str | None:
    if impl == "triton" and device != "cuda":
        return "the Triton kernel runs on CUDA only (the CPU interpreter is not a speed)"
    if impl in ("cpu", "cuda"):
        from cogvideo_engine.kernels.registry import local_backend_status

        if impl != device:
            return f"the {impl} kernel runs on {impl} tensors"
        status = {s.name: s for s in local_backend_status(device)}[impl]
        if not status.available:
            return status.reason
    return None


def run(rows: JsonRows, device: str, dtype: torch.dtype, frames: int, reps: int, impls: list[str]) -> JsonRows:
    env = environment(device)
    rows.append(gemm_row(env, device, dtype, reps))
    x = make_inputs(frames, device, dtype)
    ref = local_attention(*[t.float() for t in x], G)
    pairs = int(torch.isfinite(local_additive(G)).sum())
    flops = 4.0 * HEAD_DIM * pairs * HEADS * frames
    for impl in impls:
        row = {**env, "bench": "local_attention", "case": f"dsr-level1-{frames}frames", "impl": impl,
               "dtype": str(dtype).removeprefix("torch."), "frames": frames, "heads": HEADS, "head_dim": HEAD_DIM,
               "queries": G.num_queries, "keys": G.num_queries + G.num_low}
        why = applicable(impl, device)
        if why:
            rows.append({**row, "skipped": why})
            continue
        try:
            fn = IMPLS[impl](x, device)
            err = (fn().float() - ref).abs().max().item()
            if err > TOL[dtype]:
                raise AssertionError(f"max error {err:.3g} against the reference")
            seconds = time_fn(fn, device, reps, warmup=1 if device == "cpu" else 3)
        except Exception as e:  # noqa: BLE001  (a baseline that cannot run here is reported, not fatal)
            rows.append({**row, "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            continue
        rows.append({**row, "seconds": seconds, "max_abs_err": err, "useful_tflops": flops / seconds / 1e12,
                     "useful_flop": flops})
    return rows


def print_table(rows: list[dict]):
    base = {r["impl"]: r["seconds"] for r in rows if r.get("bench") == "local_attention" and "seconds" in r}
    print(f"{'impl':10s} {'ms':>10s} {'TFLOP/s':>8s} {'vs sdpa':>8s}  note")
    for r in rows:
        if r["bench"] == "gemm":
            print(f"{'matmul':10s} {r['seconds'] * 1e3:10.3f} {r['useful_tflops']:8.3f} {'':>8s}  "
                  f"ceiling: {r['case']}")
        elif "skipped" in r:
            print(f"{r['impl']:10s} {'-':>10s} {'-':>8s} {'-':>8s}  {r['skipped']}")
        else:
            speedup = f"{base['sdpa'] / r['seconds']:7.1f}x" if "sdpa" in base else "-"
            print(f"{r['impl']:10s} {r['seconds'] * 1e3:10.3f} {r['useful_tflops']:8.3f} {speedup:>8s}  "
                  f"err {r['max_abs_err']:.1e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--frames", type=int, default=None, help="frames per call (default 12 on CUDA, 1 on CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 50 on CUDA, 3 on CPU)")
    p.add_argument("--impl", action="append", choices=sorted(IMPLS), help="repeatable; default: all")
    p.add_argument("--out", type=Path, help="JSON rows (default bench/results/local-attention-<device>-<date>.json)")
    args = p.parse_args(argv)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    frames = args.frames or (12 if args.device == "cuda" else 1)
    reps = args.reps or (50 if args.device == "cuda" else 3)
    rows = JsonRows(args.out or Path(__file__).parent / "results" / (
        f"local-attention-{args.device}-{datetime.date.today().isoformat()}.json"))
    run(rows, args.device, dtype, frames, reps, args.impl or list(IMPLS))
    print_table(rows)
    rows.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
