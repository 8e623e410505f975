"""Decode-step time against the tensor-parallel degree on this machine, TP = 1 beside TP = N in one run.

    python bench/run_tensor_parallel.py [--model tiny|medium] [--worlds 1,2] [--rows 1,8] [--steps 30] [--out F]

A stage-2 model of the ``--model`` shape (random weights) is written as a SAT checkpoint; TP = 1 loads it whole,
TP = N spawns N - 1 ranks (gloo on the CPU) that each load their shard of it. Each then runs the decode steps of
bench/run_decode_rows.py (R rows, two positions per step, BLAS linears): ms per step (median), with the rank's
layer weight bytes. Beside them, the latency of one all-reduce of a layer's output (``[R, 2, hidden]`` fp32) over
N gloo ranks, and of the command broadcast the driver sends before each step: the two terms docs/scaling.md
adds to the weight-streaming floor.

On one CPU the ranks share its cores and memory bandwidth, so TP cannot go faster here; what the rows measure is
the price of the collectives and the command channel per step, the inputs of the scaling model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cogvideo_engine.generation.runner import weight_bytes
from cogvideo_engine.io.checkpoints import load_model
from cogvideo_engine.io.sat import write_sat_checkpoint
from cogvideo_engine.parallel.group import ModelSource, launch

from run_attention import JsonRows, environment
from run_decode_rows import time_steps
from run_generation import build

COLLECTIVE_REPS = 300


def _collective_worker(rank: int, world: int, port: int, shape: tuple[int, ...], out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    t = torch.zeros(shape)
    box = [("step", (0, 0, [(3, 0), (4, 0)], torch.zeros(shape[0], 2, dtype=torch.long), torch.zeros(shape[0]),
                     False), [])]
    for _ in range(20):
        dist.all_reduce(t)
        dist.broadcast_object_list(box, src=0)
    timed = {}
    for name, fn in (("all_reduce", lambda: dist.all_reduce(t)),
                     ("command_broadcast", lambda: dist.broadcast_object_list(box, src=0))):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(COLLECTIVE_REPS):
            fn()
        timed[name] = (time.perf_counter() - t0) / COLLECTIVE_REPS
    if rank == 0:
        out.put(timed)
    dist.destroy_process_group()


def collective_latency(world: int, shape: tuple[int, ...]) -> dict:
    """Seconds per all-reduce of ``shape`` fp32 and per step-command broadcast over ``world`` gloo ranks."""
    from cogvideo_engine.service.client import free_port

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_collective_worker, args=(world, free_port(), shape, out), nprocs=world, start_method="spawn")
    return out.get()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "medium"], default="medium")
    p.add_argument("--worlds", default="1,2")
    p.add_argument("--rows", default="1,8")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    env = environment("cpu")
    out = JsonRows(args.out or Path(__file__).parent / "results" /
                   f"tensor-parallel-{args.model}-cpu-{time.strftime('%Y-%m-%d')}.json")
    rows_list = [int(r) for r in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_sat_checkpoint(Path(tmp) / "stage2", build(args.model, 2, "cpu", torch.float32))
        print(f"{'model':7s} {'TP':>3s} {'rows':>4s} {'ms/step':>8s} {'layer MB/rank':>13s}")
        for world in [int(w) for w in args.worlds.split(",")]:
            group = None
            if world == 1:
                model = load_model(path, torch.float32, stage=2)
            else:
                group, models = launch(world, "cpu", [ModelSource("stage2", str(path), 2)], torch.float32)
                model = models["stage2"]
            try:
                for rows in rows_list:
                    seconds = time_steps(model, rows, args.steps, False)[5:]  # the first steps warm up
                    ms = 1e3 * statistics.median(seconds)
                    per_rank = weight_bytes(model)
                    collectives = 2 * model.config.num_layers + 1 if world > 1 else 0  # + the logits' gather
                    out.append({**env, "bench": "tensor-parallel", "model": args.model, "pass": "stage2",
                                "tensor_parallel": world, "rows": rows, "positions_per_step": 2, "ms_per_step": ms,
                                "weight_bytes_per_rank": per_rank, "collectives_per_step": collectives,
                                "steps_timed": len(seconds), "torch_threads": torch.get_num_threads()})
                    print(f"{args.model:7s} {world:3d} {rows:4d} {ms:8.2f} {per_rank / 1e6:13.1f}", flush=True)
            finally:
                if group is not None:
                    group.close()
            if world > 1:
                hidden = model.config.hidden_size
                for rows in rows_list:
                    lat = collective_latency(world, (rows, 2, hidden))
                    out.append({**env, "bench": "tensor-parallel-collectives", "tensor_parallel": world,
                                "backend": "gloo", "all_reduce_shape": [rows, 2, hidden],
                                "all_reduce_us": 1e6 * lat["all_reduce"],
                                "command_broadcast_us": 1e6 * lat["command_broadcast"]})
                    print(f"gloo x{world}: all-reduce [{rows}, 2, {hidden}] {1e6 * lat['all_reduce']:.0f} us, "
                          f"step command {1e6 * lat['command_broadcast']:.0f} us", flush=True)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
