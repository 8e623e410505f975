"""Geometries and the checking helper shared by every backend of the super-resolution local attention."""

import torch

from cogvideo_engine.kernels.local_reference import local_attention
from cogvideo_engine.kernels.local_rules import DSR_GEOMETRY, LocalGeometry

from kernel_cases import TOL

LOCAL_GEOMETRIES = [
    LocalGeometry(grid=6, low_grid=2),                  # every window clipped on every side; ratio 3
    LocalGeometry(grid=12, low_grid=4),                 # interior queries exist in both windows
    LocalGeometry(grid=8, low_grid=4, window_rows=3, window_cols=5, low_window=3),  # ratio 2, other extents
    LocalGeometry(grid=15, low_grid=15, window_rows=1, window_cols=1, low_window=1),  # ratio 1, one key each
    LocalGeometry(grid=30, low_grid=10),                # wider than one 16/32-column tile
]
LOCAL_IDS = [f"g{g.grid}-l{g.low_grid}-{g.window_rows}x{g.window_cols}-{g.low_window}" for g in LOCAL_GEOMETRIES]


def make_inputs(geometry, *, batch=2, heads=2, d=16, dtype=torch.float32, device="cpu", fill="randn", seed=0):
    """q, k, v ``[B, H, N, d]`` and k_low, v_low ``[B, H, M, d]``."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, geometry.num_queries, d)] * 3 + [(batch, heads, geometry.num_low, d)] * 2
    if fill == "randn":
        ts = [torch.randn(s, generator=gen) for s in shapes]
    else:  # arange: every entry distinct and ordered
        ts = [torch.arange(torch.Size(s).numel(), dtype=torch.float32).reshape(s) % m / m
              for s, m in zip(shapes, (5, 7, 11, 13, 17))]
    return [t.to(device, dtype) for t in ts]


def check_local(kernel, geometry, **kw):
    """Run ``kernel(q, k, v, k_low, v_low, geometry)`` and the reference twin on the same inputs; compare.

    fp32/fp16 use fixed tolerances; bf16 is held to twice the bf16 reference's own error against fp32.
    """
    dtype = kw.get("dtype", torch.float32)
    inputs = make_inputs(geometry, **kw)
    out = kernel(*inputs, geometry)
    assert out.shape == inputs[0].shape and out.dtype == dtype
    if dtype == torch.bfloat16:
        exact = local_attention(*[t.float() for t in inputs], geometry)
        own_error = (local_attention(*inputs, geometry).float() - exact).abs().max()
        assert (out.float() - exact).abs().max() <= 2 * own_error + 1e-5
    else:
        torch.testing.assert_close(out.float(), local_attention(*inputs, geometry).float(), **TOL[dtype])
    return out


__all__ = ["DSR_GEOMETRY", "LOCAL_GEOMETRIES", "LOCAL_IDS", "check_local", "make_inputs"]
