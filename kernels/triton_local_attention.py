"""Fused level-1 attention of the super-resolution (DSR) model in Triton: both windows, one online softmax.

Semantics are those of :mod:`.local_rules` (the dense twin is :func:`.local_reference.local_attention`):
query cell ``(r, c)`` of the ``grid x grid`` frame attends the high-resolution keys ``(r + dr, c + dc)``,
``|dr| <= window_rows // 2``, ``|dc| <= window_cols // 2``, and the low-resolution keys
``(r // ratio + dr, c // ratio + dc)``, ``|dr|, |dc| <= low_window // 2``, clipped at the frame edges, with one
softmax over both.

Tiling. One program owns ``BLOCK_ROWS`` consecutive query rows ``r0 ..`` of one (batch, head), restricted to a
tile of ``BLOCK_Q`` consecutive columns ``c0 .. c0 + BLOCK_Q - 1``: a ``[BLOCK_ROWS * BLOCK_Q, d]`` query
block, flattened row-major, so query ``i`` of the block is cell ``(r0 + i // BLOCK_Q, c0 + i % BLOCK_Q)``.
With the released 60x60 frame the default is one whole row per program (``BLOCK_Q = 64``; half a row for fp32).

* High-resolution keys: the program walks the key rows ``r0 - hr .. r0 + BLOCK_ROWS - 1 + hr`` that lie in
  the frame (the loop bounds are clipped, so out-of-frame rows cost nothing). Of each key row it loads one
  tile of ``BLOCK_K`` columns starting at ``max(c0 - hc, 0)``; ``BLOCK_K`` is the smallest power of two
  (at least 16) covering the columns any query of the tile can see, ``[c0 - hc, c0 + BLOCK_Q - 1 + hc]``
  clipped to the frame (64 for the released frame: the whole row). The scores are one ``tl.dot`` of the
  query block with the key tile, masked in registers by ``|kr - qr| <= hr`` and ``|kc - qc| <= hc``.
* Low-resolution keys: likewise, the low rows ``r0 // ratio - hl .. (r0 + BLOCK_ROWS - 1) // ratio + hl``
  inside the low frame, each as one tile of ``BLOCK_L`` low columns starting at ``max(c0 // ratio - hl, 0)``
  (32 for the released 20-column low frame), masked by ``|lr - qr // ratio| <= hl`` and
  ``|lc - qc // ratio| <= hl``.

Every tile goes through the same online-softmax step: scores ``q . k`` scaled by ``1 / sqrt(d)`` in fp32
(base-2 exponentials), running max and sum in fp32, ``p @ v`` accumulated in fp32 (``p`` cast to the input
dtype for the tensor-core product in fp16/bf16; fp32 inputs use 3xTF32 dots, ``tf32x3``: tensor cores at
fp32-level accuracy). The result is divided by the row sum once and stored in the input dtype. Keys are read
where they are: every input may have arbitrary strides (for example q, k, v as views of one ``[B, N, 3, H, d]``
projection). A head dimension up to 256 that is not a power of two (or is below 16, the smallest ``tl.dot``
extent) is zero-padded in registers.

Inputs go through :func:`.local_reference.check_local_inputs` (the checks every local backend shares), then
this backend's own limits (fp16, bf16 or fp32; d <= 256; tile sizes). The online-softmax step, the Triton
import guard and the interpreter handling come from :mod:`.triton_common`; :mod:`.ops` registers
:func:`local_attention_triton` as ``torch.ops.cogvideo_engine.local_attention_triton``.

Triton semantics used here are common to Triton 3.x. Under ``TRITON_INTERPRET=1`` the kernel runs on CPU
tensors (slowly), which is how the test suite checks it without a GPU. Two interpreter defects matter for
bf16 and are worked around only when interpreted (the ``UPCAST`` flag, :func:`.triton_common.upcast_bf16`; the
compiled GPU kernel never takes that branch): its ``tl.dot`` multiplies the raw bf16 bit patterns as integers,
and its fp32 -> bf16 cast truncates where the GPU rounds to nearest even.
"""

from __future__ import annotations

import functools
import math

import torch

from .launch import attention_output, device_guard
from .local_reference import check_local_inputs
from .local_rules import LocalGeometry
from .triton_common import (KERNEL_DTYPES, check_launch, online_softmax_update, resource_limits, round_to_bf16, tl,
                            triton, upcast_bf16)

_MIN_DOT = 16  # the smallest extent tl.dot accepts along any axis
_MAX_HEAD_DIM = 256


def _pow2(n: int) -> int:
    return max(_MIN_DOT, 1 << (max(int(n), 1) - 1).bit_length())


@functools.cache
def local_tiles(geometry: LocalGeometry, block_q: int) -> tuple[int, int]:
    """``(BLOCK_K, BLOCK_L)``: power-of-two widths of the high- and low-resolution key tiles that cover, for
    every column tile ``c0 .. c0 + block_q - 1`` of the frame, the in-frame key columns its queries see."""
    g, lg, a = geometry.grid, geometry.low_grid, geometry.ratio
    hc, hl = geometry.window_cols // 2, geometry.low_window // 2
    width_k = width_l = 1
    for c0 in range(0, g, block_q):
        c1 = min(c0 + block_q, g) - 1
        width_k = max(width_k, min(c1 + hc, g - 1) - max(c0 - hc, 0) + 1)
        width_l = max(width_l, min(c1 // a + hl, lg - 1) - max(c0 // a - hl, 0) + 1)
    return _pow2(width_k), _pow2(width_l)


if triton is not None:

    @triton.jit
    def _softmax_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, k_mask, v_mask, visible, qk_scale,
                      TF32X3: tl.constexpr, UPCAST: tl.constexpr):
        """One key tile of the online softmax; scores are in base 2 (``qk_scale`` includes log2(e)).

        ``UPCAST`` (the interpreter with bf16 inputs, whose ``tl.dot`` multiplies bf16 bit patterns as
        integers) runs both products in fp32 on the same operands: bf16 values are exact in fp32, and ``p`` is
        rounded to the nearest bf16 first, so the numerics are those of the tensor-core path."""
        k = tl.load(k_ptrs, mask=k_mask, other=0.0)  # [D, BLOCK_N]
        if UPCAST:
            s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee")
        elif TF32X3:
            s = tl.dot(q, k, input_precision="tf32x3")
        else:
            s = tl.dot(q, k)
        s = tl.where(visible, s * qk_scale, float("-inf"))
        return online_softmax_update(acc, m_i, l_i, s, v_ptrs, v_mask, EXP2=True, TF32X3=TF32X3, UPCAST=UPCAST)

    @triton.jit
    def _local_attention_kernel(
            Q, K, V, KL, VL, O,
            stride_qb, stride_qh, stride_qn, stride_qd,
            stride_kb, stride_kh, stride_kn, stride_kd,
            stride_vb, stride_vh, stride_vn, stride_vd,
            stride_klb, stride_klh, stride_kln, stride_kld,
            stride_vlb, stride_vlh, stride_vln, stride_vld,
            stride_ob, stride_oh, stride_on, stride_od,
            num_heads, qk_scale,
            GRID: tl.constexpr, LOW_GRID: tl.constexpr, RATIO: tl.constexpr,
            HALF_ROWS: tl.constexpr, HALF_COLS: tl.constexpr, HALF_LOW: tl.constexpr,
            HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
            BLOCK_ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
            COL_TILES: tl.constexpr, ROW_TILES: tl.constexpr, TF32X3: tl.constexpr, UPCAST: tl.constexpr):
        # program -> (batch*head, row tile, column tile); tiles of one (b, h) are adjacent (they share keys)
        pid = tl.program_id(0)
        tiles = ROW_TILES * COL_TILES
        bh = pid // tiles
        t = pid % tiles
        r0 = (t // COL_TILES) * BLOCK_ROWS
        c0 = (t % COL_TILES) * BLOCK_Q
        b = (bh // num_heads).to(tl.int64)
        h = (bh % num_heads).to(tl.int64)

        offs_m = tl.arange(0, BLOCK_ROWS * BLOCK_Q)
        qr = r0 + offs_m // BLOCK_Q
        qc = c0 + offs_m % BLOCK_Q
        q_ok = (qr < GRID) & (qc < GRID)
        offs_d = tl.arange(0, D_PAD)
        d_ok = offs_d < HEAD_DIM

        q_ptrs = Q + b * stride_qb + h * stride_qh + (qr * GRID + qc)[:, None] * stride_qn \
            + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=q_ok[:, None] & d_ok[None, :], other=0.0)

        m_i = tl.full([BLOCK_ROWS * BLOCK_Q], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_ROWS * BLOCK_Q], dtype=tl.float32)
        acc = tl.zeros([BLOCK_ROWS * BLOCK_Q, D_PAD], dtype=tl.float32)

        # high-resolution window: key rows in the frame, one column tile each
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        kc = tl.maximum(c0 - HALF_COLS, 0) + tl.arange(0, BLOCK_K)
        kc_ok = (kc < GRID) & (kc <= c0 + BLOCK_Q - 1 + HALF_COLS)
        col_seen = (kc[None, :] - qc[:, None] <= HALF_COLS) & (qc[:, None] - kc[None, :] <= HALF_COLS) \
            & kc_ok[None, :] & q_ok[:, None]
        kr_lo = tl.maximum(r0 - HALF_ROWS, 0)
        kr_hi = tl.minimum(r0 + BLOCK_ROWS - 1 + HALF_ROWS, GRID - 1)
        for kr in range(kr_lo, kr_hi + 1):
            visible = col_seen & (kr - qr[:, None] <= HALF_ROWS) & (qr[:, None] - kr <= HALF_ROWS)
            keys = kr * GRID + kc
            k_ptrs = k_base + keys[None, :] * stride_kn + offs_d[:, None] * stride_kd
            v_ptrs = v_base + keys[:, None] * stride_vn + offs_d[None, :] * stride_vd
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, d_ok[:, None] & kc_ok[None, :],
                                          kc_ok[:, None] & d_ok[None, :], visible, qk_scale, TF32X3, UPCAST)

        # low-resolution window around (qr // RATIO, qc // RATIO)
        kl_base = KL + b * stride_klb + h * stride_klh
        vl_base = VL + b * stride_vlb + h * stride_vlh
        ql_r = qr // RATIO
        ql_c = qc // RATIO
        lc = tl.maximum(c0 // RATIO - HALF_LOW, 0) + tl.arange(0, BLOCK_L)
        lc_ok = (lc < LOW_GRID) & (lc <= (c0 + BLOCK_Q - 1) // RATIO + HALF_LOW)
        low_col_seen = (lc[None, :] - ql_c[:, None] <= HALF_LOW) & (ql_c[:, None] - lc[None, :] <= HALF_LOW) \
            & lc_ok[None, :] & q_ok[:, None]
        lr_lo = tl.maximum(r0 // RATIO - HALF_LOW, 0)
        lr_hi = tl.minimum(tl.minimum(r0 + BLOCK_ROWS - 1, GRID - 1) // RATIO + HALF_LOW, LOW_GRID - 1)
        for lr in range(lr_lo, lr_hi + 1):
            visible = low_col_seen & (lr - ql_r[:, None] <= HALF_LOW) & (ql_r[:, None] - lr <= HALF_LOW)
            keys = lr * LOW_GRID + lc
            k_ptrs = kl_base + keys[None, :] * stride_kln + offs_d[:, None] * stride_kld
            v_ptrs = vl_base + keys[:, None] * stride_vln + offs_d[None, :] * stride_vld
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, d_ok[:, None] & lc_ok[None, :],
                                          lc_ok[:, None] & d_ok[None, :], visible, qk_scale, TF32X3, UPCAST)

        l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # padding queries of the tile (outside the frame)
        out = acc / l_safe[:, None]
        if UPCAST:
            out = round_to_bf16(out)  # then the (truncating) interpreter cast below is exact
        o_ptrs = O + b * stride_ob + h * stride_oh + (qr * GRID + qc)[:, None] * stride_on \
            + offs_d[None, :] * stride_od
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


def local_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_low: torch.Tensor,
                           v_low: torch.Tensor, geometry: LocalGeometry, *, block_q: int | None = None,
                           block_rows: int = 1, num_warps: int | None = None) -> torch.Tensor:
    """Same contract as :func:`cogvideo_engine.kernels.local_reference.local_attention`, fused in one kernel.

    q, k, v ``[B, H, N, d]`` (N = grid²), k_low, v_low ``[B, H, M, d]`` (M = low_grid²), one dtype (fp16,
    bf16 or fp32), any strides. Returns a contiguous ``[B, H, N, d]`` tensor in ``q.dtype``.

    Tiles: each program takes ``block_rows`` query rows by ``block_q`` columns (powers of two; by default one
    row and ``min(next_pow2(grid), 64)`` columns, i.e. a whole row of the released 60x60 frame; 32 columns on 8
    warps for fp32).
    """
    check_launch(q, "triton local-attention backend")
    check_local_inputs(q, k, v, k_low, v_low, geometry)
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"inputs must be fp16, bf16 or fp32, got {q.dtype}")
    b, h, _, d = q.shape
    if d > _MAX_HEAD_DIM:
        raise ValueError(f"head dim d={d} is above the {_MAX_HEAD_DIM} this kernel keeps in registers")
    fp32 = q.dtype == torch.float32  # 3xTF32 dots: 32-column tiles on 8 warps (64 spilled on sm_90 and sm_80)
    if block_q is None:
        block_q = min(_pow2(geometry.grid), 32 if fp32 else 64)
    for name, val in (("block_q", block_q), ("block_rows", block_rows)):
        if val < 1 or val & (val - 1):
            raise ValueError(f"{name} must be a power of two, got {val}")
    if block_q * block_rows < _MIN_DOT:
        raise ValueError(f"block_q * block_rows must be at least {_MIN_DOT}, got {block_q} * {block_rows}")
    out = attention_output(q)
    if out.numel() == 0:
        return out
    block_k, block_l = local_tiles(geometry, block_q)
    row_tiles = triton.cdiv(geometry.grid, block_rows)
    col_tiles = triton.cdiv(geometry.grid, block_q)
    if num_warps is None:
        num_warps = 8 if fp32 or block_q * block_rows >= 128 else 4
    launch = (b * h * row_tiles * col_tiles,)
    args = (q, k, v, k_low, v_low, out,
            *q.stride(), *k.stride(), *v.stride(), *k_low.stride(), *v_low.stride(), *out.stride(),
            h, math.log2(math.e) / math.sqrt(d))
    meta = {"GRID": geometry.grid, "LOW_GRID": geometry.low_grid, "RATIO": geometry.ratio,
            "HALF_ROWS": geometry.window_rows // 2, "HALF_COLS": geometry.window_cols // 2,
            "HALF_LOW": geometry.low_window // 2, "HEAD_DIM": d, "D_PAD": _pow2(d),
            "BLOCK_ROWS": block_rows, "BLOCK_Q": block_q, "BLOCK_K": block_k, "BLOCK_L": block_l,
            "COL_TILES": col_tiles, "ROW_TILES": row_tiles, "TF32X3": fp32,
            "UPCAST": upcast_bf16(q.dtype)}
    with device_guard(q), resource_limits("triton local-attention kernel"):
        _local_attention_kernel[launch](*args, **meta, num_warps=num_warps)
    return out


__all__ = ["local_attention_triton", "local_tiles"]
