"""The scaling model of docs/scaling.md: time per decode step and per video against the tensor-parallel degree,
videos per hour per GPU against the batch, replicas for a request rate, cost per video.

    python bench/scaling_model.py [--gpu h100|h200] [--all-reduce-us 5,10,20,40] [--command-us 50]
        [--gpu-hour-usd 3.0] [--rate 1000]

A decode step is memory-bound (the last column of the batch table says by how much): each rank streams its share
of the weights and of the visible K/V once, then the step's collectives follow one another,

    t_step(N, r) = (W + r * KV_pass) / (N * BW) + [N > 1] * ((2 L + 1) * lambda + t_cmd)

with W the stage model's weight bytes per step (bf16 layers + the fp32 logits head), r the cache rows of the
forward (a video's sequences in the pass times the batch: 2 per video in guided stage 1, one per window in stage 2),
KV_pass the K/V bytes one row's step reads (counted by the kernels), BW the HBM bandwidth, L = 48 layers (an
all-reduce after each attention and each MLP, plus the logits' all-gather), lambda one collective's latency and
t_cmd the driver's step command. Rows beyond what the GPU memory holds next to the resident weights run as further
chunks of the pass (the serving loop's cache budget). A video is the wavefront's steps of each pass: first frame,
stage 1, the three interpolation rounds (3,770 steps in all); super-resolution and VQ decoding are not counted.
Every input is printed with its source.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DECODE_COUNTS = RESULTS / "decode-counts-cpu-2026-12-02.json"
GPUS = {  # name: (HBM bytes/s, memory bytes, dense bf16 FLOP/s, source)
    "h100": (3.35e12, 80e9, 989e12, "NVIDIA H100 SXM5 datasheet: 3.35 TB/s HBM3, 80 GB, 989 TFLOPS dense BF16"),
    "h200": (4.8e12, 141e9, 989e12, "NVIDIA H200 SXM datasheet: 4.8 TB/s HBM3e, 141 GB, 989 TFLOPS dense BF16"),
}
MEMORY_HEADROOM = 0.9
"""Share of the GPU memory the resident weights and the caches may take (the rest: activations, allocator)."""
WINDOWS_PER_ROUND = (2, 4, 8)
"""Interpolation windows of rounds 1-3 (5 -> 9 -> 17 -> 33 frames), each a cache row of the round's pass."""
LAYERS = 48


@dataclass(frozen=True)
class PassCost:
    name: str
    steps: int
    rows_per_video: int
    kv_bytes: float  # K/V bytes one row's step reads
    row_bytes: int  # K/V bytes one cache row holds
    tokens_per_step: float  # positions fed per step per row


@dataclass(frozen=True)
class Model:
    weights: float  # bytes a step streams
    resident: float  # bytes the runner holds (the model, its fused copies, the fp32 head)
    passes: list[PassCost]
    sources: list[str]


def model_inputs() -> Model:
    from cogvideo_engine.generation.cache_pool import text_capacity
    from cogvideo_engine.generation.runner import cache_bytes_per_row
    from cogvideo_engine.generation.scheduler import schedule
    from cogvideo_engine.kernels.rules import Pass
    from cogvideo_engine.models.cogvideo import CogVideoModel
    from cogvideo_engine.models.config import NUM_IMAGE_TOKENS, ModelConfig

    cfg = ModelConfig(stage=1)
    h = cfg.hidden_size
    with torch.device("meta"):
        model = CogVideoModel(cfg)
    layer_params = sum(p.numel() for n, p in model.named_parameters()
                       if n.startswith(("transformer.layers.", "mixins.attention_plus.")))
    head = 4 * NUM_IMAGE_TOKENS * h
    weights = 2 * layer_params + head
    fused = 2 * cfg.num_layers * (6 * h * h + 2 * h * h)  # both channels' QKV concatenated, the mixed output
    resident = 2 * sum(p.numel() for p in model.parameters()) + fused + head
    kv: dict[str, float] = {}
    for row in json.loads(DECODE_COUNTS.read_text()):
        if row["path"] == "decode":  # rows of one head and one layer parity, over the sampled steps
            per_step = row["rows_loaded"] / row["steps_counted"] / row["batch"]
            kv[row["pass"]] = kv.get(row["pass"], 0.0) + \
                per_step * (cfg.num_layers // 2) * row["heads"] * cfg.head_dim * 2 * 2  # K and V, bf16
    passes = []
    for name, stage, pass_, targets, rows in [("first frame", 1, Pass.FIRST_FRAME, 1, 1),
                                              ("stage 1 (guided)", 1, Pass.STAGE1, 4, 2)] + \
            [(f"stage 2 round {r}", 2, Pass.STAGE2, 2, w) for r, w in enumerate(WINDOWS_PER_ROUND, 1)]:
        c = ModelConfig(stage=stage)
        plan = schedule(c.layout(pass_, 10, targets), c.num_layers, "wavefront")
        row_bytes = cache_bytes_per_row(c, c.layout(pass_, 1, targets), text_capacity(c, pass_), torch.bfloat16)
        passes.append(PassCost(name, len(plan), rows, kv[pass_.value], row_bytes, sum(map(len, plan)) / len(plan)))
    sources = [
        (f"W = {weights / 1e9:.2f} GB a step streams: the stage model's layer parameters in bf16 "
         f"({layer_params / 1e9:.2f} B) and the fp32 logits head, from the model definition "
         "(generation.runner.weight_bytes); resident with the runner's fused QKV and output copies: "
         f"{resident / 1e9:.1f} GB"),
        "steps: generation.scheduler's wavefront at 48 layers (" + ", ".join(f"{p.name} {p.steps}" for p in passes)
        + ")",
        (f"KV_pass: K/V bytes the decode kernels load per row and step, counted over the schedules "
         f"({DECODE_COUNTS.name}): " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in kv.items())),
        ("cache rows: generation.runner.cache_bytes_per_row in bf16 ("
         + ", ".join(f"{p.name} {p.row_bytes / 1e9:.2f} GB" for p in passes[:3]) + f"); caches and resident "
         f"weights within {MEMORY_HEADROOM:.0%} of the GPU memory")]
    return Model(weights, resident, passes, sources)


@dataclass(frozen=True)
class Node:
    bandwidth: float
    memory: float
    flops: float
    world: int = 1
    collective_s: float = 0.0
    command_s: float = 0.0

    def step(self, m: Model, p: PassCost, rows: int) -> float:
        streamed = (m.weights + rows * p.kv_bytes) / (self.world * self.bandwidth)
        sync = (2 * LAYERS + 1) * self.collective_s + self.command_s if self.world > 1 else 0.0
        return streamed + sync

    def max_rows(self, m: Model, p: PassCost) -> int:
        free = MEMORY_HEADROOM * self.memory - m.resident / self.world
        return max(0, int(free // (p.row_bytes / self.world)))

    def video(self, m: Model, batch: int) -> float:
        """Seconds for ``batch`` videos together (each pass in chunks of the rows that fit)."""
        total = 0.0
        for p in m.passes:
            rows, cap = batch * p.rows_per_video, self.max_rows(m, p)
            if cap < 1:
                return math.inf
            while rows > 0:
                chunk = min(rows, cap)
                total += p.steps * self.step(m, p, chunk)
                rows -= chunk
        return total


def cpu_rows() -> list[dict]:
    rows = []
    for path in sorted(RESULTS.glob("tensor-parallel-*-cpu-*.json")):
        rows += json.loads(path.read_text())
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    p.add_argument("--all-reduce-us", default="5,10,20,40",
                   help="one collective's latency over the GPUs of a node (assumed: no multi-GPU row exists yet)")
    p.add_argument("--command-us", type=float, default=50.0, help="the driver's step command (assumed)")
    p.add_argument("--gpu-hour-usd", type=float, default=3.0, help="price of one GPU-hour (assumed)")
    p.add_argument("--rate", type=float, default=1000.0, help="videos per hour to serve")
    args = p.parse_args(argv)
    bandwidth, memory, flops, gpu_source = GPUS[args.gpu]
    m = model_inputs()
    latencies = [float(x) * 1e-6 for x in args.all_reduce_us.split(",")]
    lam = latencies[1] if len(latencies) > 1 else latencies[0]
    cmd = args.command_us * 1e-6
    gpu = args.gpu.upper()
    print("## Inputs\n")
    for s in [*m.sources, f"BW, memory: {gpu_source}",
              (f"lambda: {args.all_reduce_us} us per collective, assumed (NCCL over NVLink; no multi-GPU row "
               "exists yet: bench/run_tensor_parallel.py measures it where GPUs are)"),
              (f"t_cmd: {args.command_us:g} us per step for the driver's step command to the other ranks (a gloo "
               "broadcast between host processes), assumed for a server with idle cores"),
              f"GPU-hour: ${args.gpu_hour_usd:.2f}, assumed"]:
        print(f"- {s}")

    print(f"\n## One video against the tensor-parallel degree ({gpu}, batch 1)\n")
    print(f"| TP | weights per rank | first-frame step @ {lam * 1e6:g} us | "
          + " | ".join(f"video @ {x * 1e6:g} us" for x in latencies) + " |")
    print("|---:|---:|---:|" + "---:|" * len(latencies))
    for world in (1, 2, 4, 8, 16):
        node = Node(bandwidth, memory, flops, world, lam, cmd)
        row = [f"{world}", f"{m.weights / world / 1e9:.2f} GB", f"{1e3 * node.step(m, m.passes[0], 1):.2f} ms"]
        row += [f"{Node(bandwidth, memory, flops, world, x, cmd).video(m, 1):.1f} s" for x in latencies]
        print("| " + " | ".join(row) + " |")

    one = Node(bandwidth, memory, flops)
    print(f"\n## One GPU per replica against the batch ({gpu}, TP = 1)\n")
    print("Cache rows that fit beside the weights: " + ", ".join(f"{p.name} {one.max_rows(m, p)}"
                                                                 for p in m.passes[:3]) + ".\n")
    print(f"| batch | video (s) | videos / hour / GPU | $ / video | replicas for {args.rate:g} videos/h | "
          "stage-1 compute / memory time |")
    print("|---:|---:|---:|---:|---:|---:|")
    s1 = m.passes[1]
    for batch in (1, 2, 4, 8, 16):
        t = one.video(m, batch)
        per_hour = 3600.0 * batch / t
        rows = min(batch * s1.rows_per_video, one.max_rows(m, s1))
        compute = m.weights * rows * s1.tokens_per_step / flops  # 2 FLOP per bf16 weight (2 bytes) and token
        print(f"| {batch} | {t:.1f} | {per_hour:.0f} | {args.gpu_hour_usd / per_hour:.4f} | "
              f"{math.ceil(args.rate / per_hour)} | {compute / one.step(m, s1, rows):.2f} |")

    tp8 = Node(bandwidth, memory, flops, 8, lam, cmd)
    print(f"\n## An 8-GPU node: TP = 8 against 8 single-GPU replicas ({gpu}, lambda = {lam * 1e6:g} us)\n")
    print("| batch | TP = 8: video (s) | TP = 8: videos / hour | 8 replicas: video (s) | 8 replicas: videos / hour |")
    print("|---:|---:|---:|---:|---:|")
    for batch in (1, 2, 4, 8):
        a, b = tp8.video(m, batch), one.video(m, batch)
        print(f"| {batch} | {a:.1f} | {3600 * batch / a:.0f} | {b:.1f} | {8 * 3600 * batch / b:.0f} |")

    rows = cpu_rows()
    if rows:
        print("\n## Measured on the CPU (bench/run_tensor_parallel.py)\n")
        print("| model | TP | rows | ms / step | weights MB / rank | all-reduce us | step command us |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if r["bench"] == "tensor-parallel":
                print(f"| {r['model']} | {r['tensor_parallel']} | {r['rows']} | {r['ms_per_step']:.2f} | "
                      f"{r['weight_bytes_per_rank'] / 1e6:.1f} | | |")
            else:
                print(f"| gloo | {r['tensor_parallel']} | {r['all_reduce_shape'][0]} | | | "
                      f"{r['all_reduce_us']:.0f} | {r['command_broadcast_us']:.0f} |")
        print(f"\n({rows[0]['device_name']}, torch {rows[0]['torch']}, commit {rows[0]['commit']}, "
              f"{rows[0]['date']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
