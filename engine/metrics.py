"""Latency statistics, peak memory and NVTX ranges of a generation (what :class:`~cogvideo_engine.api.VideoOutput`
reports in ``latency``)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def nvtx_range(name: str, enabled: bool):
    """An NVTX range on CUDA (visible in Nsight Systems); nothing on CPU."""
    if enabled:
        torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        if enabled:
            torch.cuda.nvtx.range_pop()


def peak_rss_bytes() -> int:
    """The process's peak resident memory (Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def latency_stats(step_seconds: list[float], tokens: int, phase_seconds: float) -> dict:
    """One phase's entry (vLLM-style names): ``num_steps``, ``avg/p50/p90/p99_step_ms``, ``tokens_per_s``
    (``tokens`` over ``phase_seconds``) and ``seconds``."""
    t = torch.tensor(step_seconds, dtype=torch.float64) * 1e3
    q = torch.quantile(t, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return {"num_steps": len(step_seconds), "avg_step_ms": float(t.mean()), "p50_step_ms": q[0],
            "p90_step_ms": q[1], "p99_step_ms": q[2], "tokens_per_s": tokens / max(phase_seconds, 1e-9),
            "seconds": phase_seconds}


def latency_report(latency: dict[str, dict[str, float]], timings: dict[str, float]) -> str:
    """The table :meth:`VideoOutput.latency_report` prints: per phase its steps, ms per step (mean, p50, p90,
    p99), tokens/s and weight bandwidth; then the stage timings and the peak memory."""
    lines = [(f"{'phase':16s} {'steps':>6s} {'avg_ms':>8s} {'p50_ms':>8s} {'p90_ms':>8s} {'p99_ms':>8s} "
              f"{'tokens/s':>9s} {'weights GB/s':>12s} {'seconds':>8s}")]
    for phase, r in latency.items():
        if phase == "memory":
            continue
        bandwidth = f"{r['weight_gbytes_per_s']:12.2f}" if "weight_gbytes_per_s" in r else f"{'-':>12s}"
        rate = f"{r['tokens_per_s']:9.1f}" if r["tokens_per_s"] else f"{'-':>9s}"  # decode makes no tokens
        lines.append(f"{phase:16s} {r['num_steps']:6d} {r['avg_step_ms']:8.2f} {r['p50_step_ms']:8.2f} "
                     f"{r['p90_step_ms']:8.2f} {r['p99_step_ms']:8.2f} {rate} {bandwidth} {r['seconds']:8.2f}")
    lines.append("  ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    if "memory" in latency:
        mem = latency["memory"]
        lines.append(f"peak memory {mem['peak_bytes'] / 2**20:.0f} MiB ({mem['device']})")
    return "\n".join(lines)
