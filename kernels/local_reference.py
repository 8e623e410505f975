"""The ``reference`` backend of the super-resolution level-1 attention: a dense mask, one softmax, in fp32
(fp64 for fp64 inputs).

Every other backend of :func:`local_attention` is tested against this one.
"""

from __future__ import annotations

import math

import torch

from .local_rules import LocalGeometry, high_visible, low_visible
from .reference import compute_dtype


def local_additive(geometry: LocalGeometry, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[N, N + M]`` additive mask over ``[high-res keys | low-res keys]``: 0 where visible, ``-inf``
    elsewhere (N = grid², M = low_grid²)."""
    q = torch.arange(geometry.num_queries, device=device)[:, None]
    high = high_visible(geometry, q, torch.arange(geometry.num_queries, device=device)[None, :])
    low = low_visible(geometry, q, torch.arange(geometry.num_low, device=device)[None, :])
    visible = torch.cat([high, low], dim=1)
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, float("-inf"))


def check_local_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_low: torch.Tensor,
                       v_low: torch.Tensor, geometry: LocalGeometry) -> None:
    """Shape, dtype and device checks shared by every backend; errors name the constraint."""
    if q.dim() != 4:
        raise ValueError(f"q must be [B, H, N, d], got {tuple(q.shape)}")
    b, h, n, d = q.shape
    if n != geometry.num_queries:
        raise ValueError(f"q has {n} queries, the geometry's {geometry.grid}x{geometry.grid} grid needs "
                         f"{geometry.num_queries}")
    for name, t, rows in (("k", k, n), ("v", v, n), ("k_low", k_low, geometry.num_low),
                          ("v_low", v_low, geometry.num_low)):
        if tuple(t.shape) != (b, h, rows, d):
            raise ValueError(f"{name} must be [B={b}, H={h}, {rows}, d={d}], got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} is {t.dtype}, q is {q.dtype}: all inputs must share one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}: all inputs must share one device")


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_low: torch.Tensor,
                    v_low: torch.Tensor, geometry: LocalGeometry, query_chunk: int = 1024) -> torch.Tensor:
    """Level-1 attention of the super-resolution model (SPEC.md §6.2), densely masked.

    q, k, v: ``[B, H, N, d]`` high-resolution queries, keys and values in raster order (N = grid²);
    k_low, v_low: ``[B, H, M, d]`` low-resolution keys and values (M = low_grid², the level-0 projection of
    the low-resolution tokens). Each query attends the :mod:`.local_rules` windows of both with one softmax
    over ``(q / sqrt(d)) . k``, computed in fp32 (fp64 for fp64 inputs). Returns ``[B, H, N, d]`` in
    ``q.dtype``. Queries are processed ``query_chunk`` rows at a time to bound the dense score matrix.
    """
    check_local_inputs(q, k, v, k_low, v_low, geometry)
    dtype = compute_dtype(q.dtype)
    additive = local_additive(geometry, q.device, dtype)
    keys = torch.cat([k, k_low], dim=2).to(dtype)
    values = torch.cat([v, v_low], dim=2).to(dtype)
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    for start in range(0, q.shape[2], query_chunk):
        stop = start + query_chunk
        scores = torch.matmul(q[:, :, start:stop].to(dtype) * scale, keys.transpose(-1, -2)) + additive[start:stop]
        out[:, :, start:stop] = torch.matmul(torch.softmax(scores, dim=-1), values)
    return out.to(q.dtype)
