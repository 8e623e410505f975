"""Fused window attention in Triton: one online softmax over [text | rule-visible frame keys], no mask tensors.

One program handles ``BLOCK_M`` queries of one (sequence, head). It walks the text rows of the cache, then
every slot's key tiles, and evaluates the rule of :mod:`.rules` in registers from the query's stream index
(slot, block position, window coordinates), the sequence's text length and the launch's rule (pass,
channel, layer parity). Tiles no query of the block can see are skipped before K/V are loaded. Scores are
accumulated in fp32; a row that sees nothing writes zeros.

The same code serves prefill (many queries per sequence) and decode (one or a few queries per sequence, in
any slots: the wavefront); K/V are read in place from the cache layout of :mod:`.layout`.

Inputs go through :func:`.reference.check_window_inputs` (the checks every backend shares) and then this
backend's own limits (head dims 16/32/64/128; fp16, bf16 or fp32). The online-softmax step, the Triton import
guard and the interpreter handling come from :mod:`.triton_common`; :mod:`.ops` registers
:func:`window_attention_triton` as ``torch.ops.cogvideo_engine.window_attention_triton``.

Triton semantics used here are common to Triton 3.6 and later. Under ``TRITON_INTERPRET=1`` the kernel runs
on CPU tensors (slowly), which is how the test suite checks it without a GPU; bf16 inputs then take the
``UPCAST`` branch (:func:`.triton_common.upcast_bf16`: both products in fp32 on the bf16 operands, ``p`` and
the output rounded to the nearest bf16), which works around the interpreter's bf16 ``tl.dot`` and truncating
cast and gives the numerics of the GPU's tensor-core path. The compiled GPU kernel never takes that branch.
"""

from __future__ import annotations

import math

import torch

from .launch import MAX_GRID_Y, attention_output, device_guard
from .layout import AttentionRule
from .reference import check_window_inputs
from .triton_common import (KERNEL_DTYPES, check_launch, online_softmax_update, resource_limits, round_to_bf16, tl,
                            triton, upcast_bf16)

HEAD_DIMS = (16, 32, 64, 128)
"""Head dims this kernel takes (one register tile of the whole head)."""


if triton is not None:

    _KIND_GIVEN = tl.constexpr(1)  # rules.GIVEN / rules.TARGET; Triton kernels read only constexpr globals
    _KIND_TARGET = tl.constexpr(2)

    @triton.jit
    def _visible_frame_keys(q_kind, q_slot, q_p, k_slot, k_p, num_given,
                            TEMPORAL: tl.constexpr, WINDOWED: tl.constexpr, BIDIR_GIVEN: tl.constexpr,
                            GRID: tl.constexpr, WINDOW: tl.constexpr, SHIFT: tl.constexpr):
        """[M, N] visibility of frame keys (k_slot, k_p) for frame queries; rules.StreamLayout in registers."""
        q_frame = q_kind > 0
        same_slot = q_slot == k_slot
        if not TEMPORAL:  # spatial: own frame, causal (bidirectional for stage-2 given rows)
            causal = k_p <= q_p
            if BIDIR_GIVEN:
                causal = causal | (q_kind == _KIND_GIVEN)
            visible = q_frame & same_slot & causal
        elif not WINDOWED:  # stage 1: every frame position at or before the query in stream order
            visible = q_frame & ((k_slot < q_slot) | (same_slot & (k_p <= q_p)))
        else:
            # each query's window group under its own rule (given rows: cyclic windows -- roll by SHIFT, then
            # partition --; target rows: clamped windows) and each key's group under both, so the window test is
            # one [M, N] compare (fewer [M, N] temporaries: the 64 x 64 prefill tile spilled with the per-axis form)
            NWIN = (GRID + SHIFT) // WINDOW + 1  # windows per axis (clamped: one more than cyclic)
            is_given = q_kind == _KIND_GIVEN
            qx, qy = q_p // GRID, q_p % GRID
            kx, ky = k_p // GRID, k_p % GRID
            q_group = tl.where(is_given,
                               (((qx - SHIFT + GRID) % GRID) // WINDOW) * NWIN + ((qy - SHIFT + GRID) % GRID) // WINDOW,
                               ((qx + SHIFT) // WINDOW) * NWIN + (qy + SHIFT) // WINDOW)
            k_cyclic = (((kx - SHIFT + GRID) % GRID) // WINDOW) * NWIN + ((ky - SHIFT + GRID) % GRID) // WINDOW
            k_clamped = ((kx + SHIFT) // WINDOW) * NWIN + (ky + SHIFT) // WINDOW
            same_window = q_group == tl.where(is_given, k_cyclic, k_clamped)
            # given rows: over the given slots, bidirectional; target rows: every earlier slot, causal in the own
            # slot, plus self
            allowed = tl.where(is_given, k_slot < num_given, (k_slot < q_slot) | (same_slot & (k_p < q_p)))
            visible = (same_window & allowed & q_frame) | ((q_kind == _KIND_TARGET) & same_slot & (k_p == q_p))
        return visible

    @triton.jit
    def _online_softmax_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, kv_mask, visible, bias, sm_scale,
                             IEEE: tl.constexpr, UPCAST: tl.constexpr):
        """One key tile: scores ``q . k`` in fp32, scaled, biased, masked, folded into the online softmax.

        ``UPCAST`` (the interpreter with bf16 inputs) runs both products in fp32 on the same operands (bf16
        values are exact in fp32; ``p`` is rounded to the nearest bf16 in the update), as the local kernel does:
        the numerics of the tensor-core path."""
        k = tl.load(k_ptrs, mask=kv_mask[None, :], other=0.0)  # [D, N]
        if UPCAST:
            s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee")
        elif IEEE:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = s * sm_scale + bias
        s = tl.where(visible, s, float("-inf"))
        return online_softmax_update(acc, m_i, l_i, s, v_ptrs, kv_mask[:, None],
                                     EXP2=False, IEEE=IEEE, UPCAST=UPCAST)

    @triton.jit
    def _window_attention_kernel(
            Q, K, V, O, QIDX, TEXT_LEN, TEXT_BIAS,
            stride_qb, stride_qh, stride_qm, stride_qd,
            stride_kb, stride_kh, stride_kn, stride_kd,
            stride_vb, stride_vh, stride_vn, stride_vd,
            stride_ob, stride_oh, stride_om, stride_od,
            stride_ib, stride_im,
            num_heads, num_queries, text_capacity, num_given, sm_scale,
            TEMPORAL: tl.constexpr, WINDOWED: tl.constexpr, BIDIR_GIVEN: tl.constexpr,
            GRID: tl.constexpr, WINDOW: tl.constexpr, SHIFT: tl.constexpr, NUM_SLOTS: tl.constexpr,
            FRAME_LEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            IEEE: tl.constexpr, UPCAST: tl.constexpr):
        pid_bh = tl.program_id(0)
        pid_m = tl.program_id(1)
        b = pid_bh // num_heads
        h = pid_bh % num_heads

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        in_range = offs_m < num_queries
        q_idx = tl.load(QIDX + b * stride_ib + offs_m * stride_im, mask=in_range, other=-1)
        text_len = tl.load(TEXT_LEN + b)
        text_bias = tl.load(TEXT_BIAS + b)

        # decode each query's stream index (rules.StreamLayout.kind / slot / block_pos)
        valid = q_idx >= 0
        q_frame = q_idx >= text_len
        rel = tl.where(q_frame, q_idx - text_len, 0)
        q_slot = rel // FRAME_LEN
        q_p = rel % FRAME_LEN
        q_kind = tl.where(q_frame, tl.where(q_slot < num_given, _KIND_GIVEN, _KIND_TARGET), 0)
        q_kind = tl.where(valid, q_kind, -1)

        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=in_range[:, None], other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh

        # text keys: every valid row sees them in the spatial channel, frame rows in the temporal channel;
        # the bias goes on every row (spatial) or on target rows only (temporal)
        if TEMPORAL:
            sees_text = q_kind > 0
            row_bias = tl.where(q_kind == _KIND_TARGET, text_bias, 0.0)
        else:
            sees_text = valid
            row_bias = tl.where(valid, text_bias, 0.0)
        for start in range(0, text_capacity, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            key_ok = offs_n < text_len
            visible = sees_text[:, None] & key_ok[None, :]
            k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
            v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
            acc, m_i, l_i = _online_softmax_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, key_ok, visible,
                                                 row_bias[:, None], sm_scale, IEEE, UPCAST)

        # frame keys, slot by slot; a tile is loaded only if some query of the block sees it
        for slot in tl.static_range(NUM_SLOTS):
            k_slot = tl.zeros([BLOCK_N], dtype=tl.int32) + slot  # a tensor, so every comparison is tensor-wise
            for start in range(0, FRAME_LEN, BLOCK_N):
                k_p = start + tl.arange(0, BLOCK_N)
                key_ok = k_p < FRAME_LEN
                visible = _visible_frame_keys(q_kind[:, None], q_slot[:, None], q_p[:, None], k_slot[None, :],
                                              k_p[None, :],
                                              num_given, TEMPORAL, WINDOWED, BIDIR_GIVEN, GRID, WINDOW, SHIFT)
                visible = visible & key_ok[None, :]
                if tl.max(visible.to(tl.int32)) > 0:
                    rows = text_capacity + slot * FRAME_LEN + k_p
                    k_ptrs = k_base + rows[None, :] * stride_kn + offs_d[:, None] * stride_kd
                    v_ptrs = v_base + rows[:, None] * stride_vn + offs_d[None, :] * stride_vd
                    acc, m_i, l_i = _online_softmax_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, key_ok, visible,
                                                         0.0, sm_scale, IEEE, UPCAST)

        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        if UPCAST:
            out = round_to_bf16(out)  # then the (truncating) interpreter cast below is exact
        o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=in_range[:, None])


def window_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor,
                            text_len: torch.Tensor, text_bias: torch.Tensor, rule: AttentionRule, *,
                            block_m: int | None = None, block_n: int | None = None,
                            num_warps: int | None = None) -> torch.Tensor:
    """Same contract as :func:`cogvideo_engine.kernels.reference.window_attention`, fused in one kernel.

    Inputs are checked by :func:`.reference.check_window_inputs`, then against this kernel's limits: head dim
    16, 32, 64 or 128; fp16, bf16 or fp32; CUDA tensors (CPU ones under ``TRITON_INTERPRET=1``).

    Tiles: ``block_m`` queries x ``block_n`` keys; by default 16 x 32 for decode (a few queries per
    sequence) and 64 x 64 for prefill.
    """
    check_launch(q)
    rule.require_released_rules("triton")
    check_window_inputs(q, k, v, q_index, text_len, text_bias, rule)
    b, h, n_q, d = q.shape
    if d not in HEAD_DIMS:
        raise ValueError(f"head dim {d} is not supported by the triton backend (16, 32, 64 or 128)")
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"the triton backend takes fp16, bf16 or fp32 inputs, got {q.dtype}")
    out = attention_output(q)
    if n_q == 0:
        return out
    if block_m is None:
        block_m = 16 if n_q <= 16 else 64
    if block_n is None:
        block_n = 32 if n_q <= 16 else 64
    if num_warps is None:  # 8 for the prefill tiles: 4 warps held the 64 x 64 fp32 accumulator and spilled
        num_warps = 8 if block_m >= 64 else 4
    q_index = q_index.to(torch.int32)
    text_len = text_len.to(device=q.device, dtype=torch.int32)
    text_bias = text_bias.to(device=q.device, dtype=torch.float32)
    grid = (b * h, triton.cdiv(n_q, block_m))  # sequences x heads on the first axis: no 65535 limit there
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"{n_q} queries per sequence need {grid[1]} tiles of {block_m}, over CUDA's {MAX_GRID_Y} "
                         "second grid dimension")
    g = rule.geometry
    with device_guard(q), resource_limits("triton window-attention kernel"):
        _window_attention_kernel[grid](
            q, k, v, out, q_index, text_len, text_bias,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *q_index.stride(),
            h, n_q, rule.text_capacity, rule.pass_.num_given, 1.0 / math.sqrt(d),
            TEMPORAL=rule.temporal, WINDOWED=rule.windowed, BIDIR_GIVEN=rule.bidirectional_given,
            GRID=g.grid, WINDOW=g.window, SHIFT=rule.shift, NUM_SLOTS=rule.cache_slots, FRAME_LEN=g.frame_len,
            HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, IEEE=q.dtype == torch.float32, UPCAST=upcast_bf16(q.dtype),
            num_warps=num_warps)
    return out
