"""Decode-step cost against the rows in the forward, with the batch-invariant linear on and off.

    python bench/run_decode_rows.py [--model tiny|medium|real] [--rows 1,2,4,8,16,32] [--steps 40] [--out F]

A stage-2 cache of R rows (texts of 9 tokens, 3 random given frames, prefilled), then ``--steps`` decode steps of
the wavefront's two positions (slots 3 and 4) on the fused runner: ms per step (median of the steps) and ms per
row, with ``ModelRunner(batch_invariant=True)`` (every linear through ``kernels.batch_invariant.linear_rows``:
a row's logits bit-identical whatever the batch) and ``False`` (the BLAS: ``W @ x^T`` up to 8 rows,
``F.linear`` above). The price of batch-invariant serving on this CPU, measured both ways in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cogvideo_engine.generation.runner import ModelRunner, layouts_for

from run_attention import JsonRows, environment
from run_generation import build


def time_steps(model, rows: int, steps: int, batch_invariant: bool) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    frame_len = model.config.geometry.frame_len
    runner = ModelRunner(model, None, batch_invariant=batch_invariant)
    cache = runner.new_cache(layouts_for(model, "stage2", [9] * rows, 2), text_capacity=74)
    texts = [torch.randint(20100, 20200, (9,), generator=gen) for _ in range(rows)]
    given = torch.randint(0, 20000, (rows, 3, frame_len), generator=gen)
    runner.prefill(cache, texts, given, torch.full((rows,), 1.4))
    seconds = []
    bias = torch.full((rows,), 1.4)
    for step in range(steps):
        feed = torch.randint(0, 20000, (rows, 2), generator=gen)
        t0 = time.perf_counter()
        runner.step(cache, [(3, step % frame_len), (4, step % frame_len)], feed, bias)
        seconds.append(time.perf_counter() - t0)
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "medium", "real"], default="medium")
    p.add_argument("--rows", default="1,2,4,8,16,32")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    env = environment("cpu")
    out = JsonRows(args.out or Path(__file__).parent / "results" /
                   f"decode-rows-{args.model}-cpu-{time.strftime('%Y-%m-%d')}.json")
    model = build(args.model, 2, "cpu", torch.float32)
    print(f"{'model':7s} {'rows':>4s} {'invariant':>9s} {'ms/step':>8s} {'ms/row':>7s}")
    for rows in [int(r) for r in args.rows.split(",")]:
        for invariant in (True, False):
            seconds = time_steps(model, rows, args.steps, invariant)[5:]  # the first steps warm up
            ms = 1e3 * statistics.median(seconds)
            out.append({**env, "bench": "decode-rows", "model": args.model, "pass": "stage2", "rows": rows,
                        "positions_per_step": 2, "batch_invariant": invariant, "ms_per_step": ms,
                        "ms_per_row": ms / rows, "steps_timed": len(seconds),
                        "torch_threads": torch.get_num_threads()})
            print(f"{args.model:7s} {rows:4d} {invariant!s:>9} {ms:8.2f} {ms / rows:7.2f}", flush=True)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
