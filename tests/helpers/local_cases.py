"""Geometries and the checking helper shared by every backend of the super-resolution local attention."""

import math

import torch
import torch.nn.functional as F

from cogvideo_engine.kernels.local_reference import local_attention
from cogvideo_engine.kernels.local_rules import DSR_GEOMETRY, LocalGeometry

from .numerics import assert_fp_close

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
              for s, m in zip(shapes, (5, 7, 11, 13, 17), strict=True)]
    return [t.to(device, dtype) for t in ts]


def check_local(kernel, geometry, **kw):
    """Run ``kernel(q, k, v, k_low, v_low, geometry)`` and the reference twin on the same inputs; compare.

    Both are measured against the reference in float64 on the same (rounded) inputs (:mod:`numerics`).
    """
    dtype = kw.get("dtype", torch.float32)
    inputs = make_inputs(geometry, **kw)
    out = kernel(*inputs, geometry)
    assert out.shape == inputs[0].shape and out.dtype == dtype
    assert_local_matches_reference(out, inputs, geometry)
    return out


def assert_local_matches_reference(out, inputs, geometry):
    """``out`` of a local kernel on ``inputs = (q, k, v, k_low, v_low)`` against the reference twin in float64
    on the same inputs, with the bound of :mod:`numerics`."""
    exact = local_attention(*[t.double() for t in inputs], geometry)
    assert_fp_close(out, exact, local_attention(*inputs, geometry), what=f"{geometry} {inputs[0].dtype}")


def unfold_attention(q, k, v, k_low, v_low, g: LocalGeometry):
    """The original's formulation: per query, scores over a (kH x kW) patch of padded key grids, filled with
    -10000 outside the frame, low-resolution patch first, one softmax, then weighting of the same patches.
    Computed in fp32 (fp64 for fp64 inputs)."""
    b, h, n, d = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    rh, rw, rl = g.window_rows // 2, g.window_cols // 2, g.low_window // 2

    def patches(x, grid, ph, pw):  # [B, H, grid*grid, d] -> [B, H, grid, grid, d] padded, with validity
        x = x.reshape(b, h, grid, grid, d)
        valid = torch.ones(grid, grid)
        return F.pad(x, (0, 0, pw, pw, ph, ph)), F.pad(valid, (pw, pw, ph, ph))

    kh, valid_h = patches(k.to(dtype), g.grid, rh, rw)
    vh, _ = patches(v.to(dtype), g.grid, rh, rw)
    kl, valid_l = patches(k_low.to(dtype), g.low_grid, rl, rl)
    vl, _ = patches(v_low.to(dtype), g.low_grid, rl, rl)
    out = torch.empty(b, h, n, d, dtype=dtype)
    for r in range(g.grid):
        for c in range(g.grid):
            lr, lc = r // g.ratio, c // g.ratio
            keys = [kl[:, :, lr:lr + g.low_window, lc:lc + g.low_window].reshape(b, h, -1, d),
                    kh[:, :, r:r + g.window_rows, c:c + g.window_cols].reshape(b, h, -1, d)]
            vals = [vl[:, :, lr:lr + g.low_window, lc:lc + g.low_window].reshape(b, h, -1, d),
                    vh[:, :, r:r + g.window_rows, c:c + g.window_cols].reshape(b, h, -1, d)]
            ok = torch.cat([valid_l[lr:lr + g.low_window, lc:lc + g.low_window].reshape(-1),
                            valid_h[r:r + g.window_rows, c:c + g.window_cols].reshape(-1)]).bool()
            qi = q[:, :, r * g.grid + c].to(dtype) / math.sqrt(d)
            scores = torch.einsum("bhd,bhkd->bhk", qi, torch.cat(keys, 2)).masked_fill(~ok, -10000.0)
            out[:, :, r * g.grid + c] = torch.einsum("bhk,bhkd->bhd", scores.softmax(-1), torch.cat(vals, 2))
    return out


__all__ = ["DSR_GEOMETRY", "LOCAL_GEOMETRIES", "LOCAL_IDS", "assert_local_matches_reference", "check_local",
           "make_inputs", "unfold_attention"]
