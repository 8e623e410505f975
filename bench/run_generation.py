"""Generation benchmark: forward steps, ms/step, tokens/s, per-pass seconds, time to the first generated frame,
KV-cache bytes, weight bandwidth, sequential vs wavefront, for a model shape given by name (random weights).

    python bench/run_generation.py [--model tiny|medium|real] [--device cpu|cuda] [--backend auto] [--out F]

Passes: stage-1 frames 1-4 for one frame (guided: cond and uncond rows in one forward) and one stage-2 window
(2 target frames), each with the sequential and the wavefront schedule, plus the stage-2 window the way the
original code attends (sequential, per-query Python index lists + index_select + dense softmax). Then
super-resolution of ``--sr-frames`` frames (one DSR forward per batch of frames, all 3600 tokens sampled) with
the DSR model of the same backbone shape, on the chosen backend and on the dense reference attention.

Against the floor: a decode step reads every weight once, so its floor is the weight bytes over the machine's read
bandwidth, measured in the same run (``torch.sum`` over 1 GiB, the best of 5, before the passes and after them:
the larger of the two is the bandwidth, so the floor is the lower one). Each pass row reports its decode steps
(the median step, prefill excluded) as a multiple of that floor, and, where the step runs as the C++ decode stack
(CPU, fp32), the share of the step outside the weight matmuls (everything but the stack's timed linears:
attention, LayerNorms, the sampler, the Python around the step).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cogvideo_engine.models.config import ModelConfig, tiny_config
from cogvideo_engine.models.config import DsrConfig
from cogvideo_engine.models.dsr import DsrModel
from cogvideo_engine.generation.passes import generate_pass
from cogvideo_engine.models.cogvideo import CogVideoModel
from cogvideo_engine.models.random_init import init_random_weights
from cogvideo_engine.generation.runner import ModelRunner, weight_bytes
from cogvideo_engine.generation.sampler import ClusterSampler
from cogvideo_engine.generation.settings import TEXT_BIAS, VIDEO_SAMPLING
from cogvideo_engine.generation.super_resolution import super_resolve

from run_attention import JsonRows, environment

MODELS = {
    "tiny": lambda stage: tiny_config(stage, num_layers=2, hidden_size=64, num_attention_heads=1),
    "medium": lambda stage: tiny_config(stage, num_layers=8, hidden_size=512, num_attention_heads=8),
    "real": lambda stage: ModelConfig(stage=stage),
}


def init_on_device(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Materialise a meta-device model on ``device`` in ``dtype`` with random weights drawn there (seconds for
    7.7 B parameters on a GPU): LayerNorms 1/0, biases 0, embeddings N(0, 1), other weights N(0, 0.02)."""
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "layernorm" in pname:
                p.fill_(1.0 if pname.endswith("weight") else 0.0)
            elif pname.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02 if "embeddings" not in pname else 1.0, generator=gen)
    return model.eval().requires_grad_(False)


def build(name: str, stage: int, device: str, dtype: torch.dtype) -> CogVideoModel:
    with torch.device("meta"):
        model = CogVideoModel(MODELS[name](stage))
    if name == "real":  # 7.7 B: drawn on the device
        return init_on_device(model, device, dtype)
    model = model.to_empty(device="cpu")
    init_random_weights(model, seed=stage, peaky=False)
    return model.to(device, dtype).eval().requires_grad_(False)


def build_dsr(name: str, device: str, dtype: torch.dtype) -> DsrModel:
    """The DSR model with the backbone of ``name``, random weights drawn on ``device``."""
    c = MODELS[name](1)
    with torch.device("meta"):
        model = DsrModel(DsrConfig(num_layers=c.num_layers, hidden_size=c.hidden_size,
                                   num_attention_heads=c.num_attention_heads, vocab_size=c.vocab_size))
    return init_on_device(model, device, dtype)


def run_super_resolution(rows: JsonRows, name: str, frames: int, device: str, dtype: torch.dtype, backends: list,
                         env: dict):
    """Rows for super-resolving ``frames`` frames per backend (a batch of up to 12 frames per forward)."""
    model = build_dsr(name, device, dtype)
    c = model.config
    layer_params = sum(p.numel() for p in model.transformer.layers.parameters()) + \
        sum(p.numel() for p in model.mixins["attention_plus"].parameters()) / 2  # each row uses one of the 2 QKVs
    rows_per_frame = 20 + c.local.num_low + c.local.num_queries
    gemm_flop = 2 * layer_params * rows_per_frame + 2 * c.local.num_queries * c.hidden_size * 20000
    gen = torch.Generator().manual_seed(0)
    low = torch.randint(0, 20000, (frames, c.local.num_low), generator=gen)
    sampler = ClusterSampler(torch.arange(20000) % 500)
    for backend in backends:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = super_resolve(model, [list(range(20100, 20120))] * frames, low, sampler,
                            [(0, 0, 3, 0, f) for f in range(frames)], 20099, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = {**env, "bench": "super_resolution", "model": name, "dtype": str(dtype).removeprefix("torch."),
               "backend": backend or "auto", "frames": frames, "batch_frames": out.batch_frames,
               "seconds": seconds, "seconds_per_frame": seconds / frames,
               "gemm_tflop_per_frame": gemm_flop / 1e12, "gemm_tflops_achieved": gemm_flop * frames / seconds / 1e12,
               "tokens_per_s": out.tokens.numel() / seconds}
        rows.append(row)
        print(f"{name:7s} super-resolution {row['backend']:10s} {frames} frames  {seconds:7.2f} s  "
              f"{seconds / frames:6.3f} s/frame  {row['gemm_tflops_achieved']:6.2f} TFLOP/s (GEMMs)", flush=True)


def original_style_attention(q, k, v, q_index, text_len, text_bias, rule):
    """The original code's decode attention: per query, Python index lists of the rows it reads (stage-2
    windows built from the clipped start/end loops, contiguous ranges otherwise), ``index_select``, dense
    softmax. Prefill rows (many per call) go through the dense reference, as the original's NAR path."""
    from cogvideo_engine.kernels.reference import window_attention

    from attention_cases import Case, original_key_rows

    if q.shape[2] > 4:
        return window_attention(q, k, v, q_index, text_len, text_bias, rule)
    out = torch.zeros_like(q)
    scale = q.shape[-1] ** -0.5
    for b in range(q.shape[0]):
        t = int(text_len[b])
        case = Case("decode", rule.pass_, rule.channel, rule.layer_parity, t, 1, None)
        for j, qi in enumerate(q_index[b].tolist()):
            if qi < 0 or (rule.temporal and qi < t):
                continue
            rows = [r if r < t else r - t + rule.text_capacity for r in original_key_rows(case, qi)]
            idx = torch.tensor(rows, device=k.device)
            s = (q[b, :, j:j + 1].float() * scale) @ k[b].index_select(1, idx).float().transpose(-1, -2)
            if not rule.temporal or case.layout.kind(qi) == 2:
                s[..., :t] += float(text_bias[b])
            out[b, :, j:j + 1] = (torch.softmax(s, -1) @ v[b].index_select(1, idx).float()).to(q.dtype)
    return out


def read_bandwidth(device: str, gib: float = 1.0, reps: int = 5) -> float:
    """The machine's read bandwidth in bytes/s: ``torch.sum`` over ``gib`` GiB of fp32, the best of ``reps``."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    best = float("inf")
    for _ in range(reps + 1):  # the first call warms up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def run_pass(model, stage, text_len, guided, num_targets, schedule, backend, device):
    frame_len = model.config.geometry.frame_len
    gen = torch.Generator().manual_seed(0)
    pass_ = {1: "stage1", 2: "stage2"}[model.config.stage]
    n_given = 1 if pass_ == "stage1" else 3
    text = torch.randint(20100, 20200, (1, text_len), generator=gen)
    given = torch.randint(0, 20000, (1, n_given, frame_len), generator=gen)
    guider = text[:, :6] if guided else None
    runner = ModelRunner(model, backend)
    sampler = ClusterSampler(torch.arange(20000) % 500)
    step_done: list[float] = []  # wall time at the end of each step (the sampled tokens are on the host)
    linear: list[float] = []  # the decode stack's linear seconds in each step (when it runs the step)

    def progress(done, total):
        step_done.append(time.perf_counter())
        if runner.decode_stack is not None:
            linear.append(runner.decode_stack.last_timings["linear"])
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate_pass(model, pass_, text, given, num_targets, sampler, VIDEO_SAMPLING, [(0, 0)],
                        text_bias=0.0 if guided else TEXT_BIAS, guider_text_ids=guider, schedule=schedule,
                        boi_id=20099, runner=runner, progress=progress)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    layout = model.config.layout(pass_, text_len, num_targets)
    first = layout.num_given  # the first generated frame is complete after the last step that feeds it
    last_step = max(i for i, positions in enumerate(out.schedule)
                    if any(int(layout.slot(q)) == first for q in positions))
    rows = 2 if guided else 1
    cache = runner.new_cache([layout] * rows)
    steps = [b - a for a, b in itertools.pairwise(step_done)]  # decode steps (the first one follows the prefill)
    timing = {"decode_step_ms": 1e3 * statistics.median(steps),
              "outside_weight_matmuls_fraction": 1 - sum(linear[1:]) / sum(steps) if linear else None}
    return out, seconds, cache.nbytes, step_done[last_step] - t0, timing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="medium")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None)
    p.add_argument("--backend", default="auto")
    p.add_argument("--sr-frames", type=int, default=None,
                   help="frames to super-resolve (default 12 on CUDA, 1 on CPU; 0 skips super-resolution)")
    p.add_argument("--skip-passes", action="store_true", help="only the super-resolution rows")
    p.add_argument("--schedule", action="append", choices=["sequential", "wavefront", "original-style"],
                   help="repeatable; default: all three")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    backend = None if args.backend == "auto" else args.backend
    env = environment(args.device)
    rows = JsonRows(args.out or Path(__file__).parent / "results" / f"generation-{args.model}-{args.device}.json")
    runs = [(1, "stage1-frame1-guided", 1, True, "sequential", backend),
            (1, "stage1-frame1-guided", 1, True, "wavefront", backend),
            (2, "stage2-window", 2, False, "sequential", backend),
            (2, "stage2-window", 2, False, "wavefront", backend),
            (2, "stage2-window", 2, False, "original-style", original_style_attention)]
    models = {}
    bandwidth = read_bandwidth(args.device)
    runs = [r for r in runs if not args.schedule or r[4] in args.schedule]
    pass_rows = []
    for stage, label, targets, guided, schedule, attention in [] if args.skip_passes else runs:
        if stage not in models:
            models[stage] = build(args.model, stage, args.device, dtype)
        model = models[stage]
        wbytes = weight_bytes(model)
        out, seconds, cache_bytes, first_frame_s, timing = run_pass(
            model, stage, 20 if stage == 1 else 9, guided, targets,
            "sequential" if schedule == "original-style" else schedule, attention, args.device)
        tokens = out.tokens.numel()
        row = {**env, "bench": "generation", "model": args.model, "pass": label, "schedule": schedule,
               "dtype": str(dtype).removeprefix("torch."),
               "backend": "original-style gather" if schedule == "original-style" else args.backend,
               "forward_steps": out.steps,
               "seconds": seconds, "time_to_first_frame_s": first_frame_s,
               "ms_per_step": 1e3 * seconds / out.steps, "tokens_per_s": tokens / seconds,
               "kv_cache_bytes": cache_bytes, "weight_bytes": wbytes,
               "weight_gbytes_per_s": wbytes * out.steps / seconds / 1e9,
               "outside_forward_fraction": 1 - out.forward_seconds / out.seconds, **timing}
        pass_rows.append(row)
        print(f"{args.model:7s} {label:22s} {schedule:10s} steps {out.steps:5d}  {row['ms_per_step']:7.2f} ms/step"
              f"  {row['tokens_per_s']:8.1f} tok/s  {seconds:7.2f} s (first frame {first_frame_s:6.2f} s)"
              f"  cache {cache_bytes / 1e6:8.1f} MB"
              f"  weights {row['weight_gbytes_per_s']:6.2f} GB/s"
              f"  outside forward {100 * row['outside_forward_fraction']:4.1f}%", flush=True)
    bandwidth = max(bandwidth, read_bandwidth(args.device))
    for row in pass_rows:  # against the floor of the bandwidth measured around the passes
        floor_ms = 1e3 * row["weight_bytes"] / bandwidth
        row.update(read_gbytes_per_s=bandwidth / 1e9, weight_floor_ms=floor_ms,
                   decode_step_vs_floor=row["decode_step_ms"] / floor_ms)
        rows.append(row)
        outside = row["outside_weight_matmuls_fraction"]
        print(f"{row['pass']:22s} {row['schedule']:14s} decode step {row['decode_step_ms']:7.2f} ms = "
              f"{row['decode_step_vs_floor']:5.2f} x the weight floor {floor_ms:.2f} ms "
              f"({bandwidth / 1e9:.1f} GB/s read)"
              + (f", {100 * outside:4.1f}% outside the weight matmuls" if outside is not None else ""), flush=True)
    models.clear()
    sr_frames = args.sr_frames if args.sr_frames is not None else (12 if args.device == "cuda" else 1)
    if sr_frames:
        run_super_resolution(rows, args.model, sr_frames, args.device, dtype, [backend, "reference"], env)
    rows.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
