"""Fused window attention in Triton: one online softmax over [text | rule-visible frame keys], no mask tensors.

One program handles ``BLOCK_M`` queries of one (sequence, head). It walks the text rows of the cache, then
every slot's key tiles, and evaluates the rule of :mod:`.rules` in registers from the query's stream index
(slot, block position, window coordinates), the sequence's text length and the launch's rule (pass,
channel, layer parity). Tiles no query of the block can see are skipped before K/V are loaded (the default
``checked`` walk), or each slot's rule-derived tile range is walked without a branch, so the loads pipeline
(``walk="ranged"``). Scores are accumulated in fp32; a row that sees nothing writes zeros.

That is the prefill path (many queries per sequence). Decode steps (one or a few queries per sequence, in any
slots: the wavefront) take the split-KV path: one program per (query, sequence, head, split of its keys), the keys
enumerated from the rule per slot and only visible rows loaded, then a combine kernel (docs/kernels.md). K/V are
read in place from the cache layout of :mod:`.layout`.

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
                            target_arch, triton, upcast_bf16)

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
    def _slot_key_range(q_kind, q_slot, q_p, slot, num_given,
                        TEMPORAL: tl.constexpr, WINDOWED: tl.constexpr, BIDIR_GIVEN: tl.constexpr,
                        GRID: tl.constexpr, WINDOW: tl.constexpr, SHIFT: tl.constexpr, FRAME_LEN: tl.constexpr,
                        BLOCK_N: tl.constexpr):
        """``[lo, hi)``: the frame positions of cache slot ``slot`` some query of the block may see, from the rule
        per query -- a superset of what :func:`_visible_frame_keys` shows (the walk still masks every key) --, lo
        on a tile boundary, at most ``FRAME_LEN`` long; positions from ``FRAME_LEN`` on wrap around to the frame's
        start. Spatial: the query's own slot up to itself (a bidirectional given row: the whole frame); stage 1:
        whole earlier slots, the own one up to the query; stage-2 windows: a target row's clamped window as whole
        grid rows in every earlier slot and up to itself in its own, a given row's cyclic window as whole grid
        rows (wrapping) in every given slot. Empty (``lo >= hi``) when no query sees the slot."""
        q_frame = q_kind > 0
        own = q_frame & (q_slot == slot)
        if not TEMPORAL:
            hi_q = tl.where(own, q_p + 1, 0)
            if BIDIR_GIVEN:
                hi_q = tl.where(own & (q_kind == _KIND_GIVEN), FRAME_LEN, hi_q)
            lo_q = tl.where(own, 0, FRAME_LEN)
        elif not WINDOWED:
            earlier = q_frame & (q_slot > slot)
            hi_q = tl.where(earlier, FRAME_LEN, tl.where(own, q_p + 1, 0))
            lo_q = tl.where(earlier | own, 0, FRAME_LEN)
        else:
            qx = q_p // GRID
            given_sees = (q_kind == _KIND_GIVEN) & (slot < num_given)
            band = ((qx - SHIFT + GRID) % GRID) // WINDOW  # the cyclic window's rows: from band * W + SHIFT on
            given_lo = ((band * WINDOW + SHIFT) % GRID) * GRID
            target_sees = (q_kind == _KIND_TARGET) & (q_slot >= slot)
            wx = (qx + SHIFT) // WINDOW  # the clamped window's rows
            row_lo = tl.maximum(wx * WINDOW - SHIFT, 0)
            row_hi = tl.minimum(wx * WINDOW - SHIFT + WINDOW, GRID)
            target_hi = tl.where(q_slot == slot, q_p + 1, row_hi * GRID)
            lo_q = tl.where(given_sees, given_lo, tl.where(target_sees, row_lo * GRID, FRAME_LEN))
            hi_q = tl.where(given_sees, given_lo + WINDOW * GRID, tl.where(target_sees, target_hi, 0))
        lo = (tl.min(lo_q, 0) // BLOCK_N) * BLOCK_N
        hi = tl.max(hi_q, 0)
        whole = hi - lo > FRAME_LEN  # (intervals on both sides of the wrap)
        return tl.where(whole, 0, lo), tl.where(whole, FRAME_LEN, hi)

    @triton.jit
    def _add_counts(COUNTS, walked, lanes):
        """One program's load counts (``counts=`` of :func:`window_attention_triton`): K rows loaded, key lanes
        walked, one program, one program that walked a tile (if it did)."""
        tl.atomic_add(COUNTS, walked)
        tl.atomic_add(COUNTS + 1, lanes)
        tl.atomic_add(COUNTS + 2, 1)
        tl.atomic_add(COUNTS + 3, (lanes > 0).to(tl.int64))

    @triton.jit
    def _query_position(q_idx, text_len, num_given, FRAME_LEN: tl.constexpr):
        """A query's stream index decoded (``rules.StreamLayout.kind / slot / block_pos``): ``(valid, kind, slot,
        p)``, kind -1 for padding (index -1), 0 for text, else ``_KIND_GIVEN`` / ``_KIND_TARGET``."""
        valid = q_idx >= 0
        q_frame = q_idx >= text_len
        rel = tl.where(q_frame, q_idx - text_len, 0)
        q_slot = rel // FRAME_LEN
        q_p = rel % FRAME_LEN
        q_kind = tl.where(q_frame, tl.where(q_slot < num_given, _KIND_GIVEN, _KIND_TARGET), 0)
        return valid, tl.where(valid, q_kind, -1), q_slot, q_p

    @triton.jit
    def _text_keys(valid, q_kind, text_bias, TEMPORAL: tl.constexpr):
        """``(sees_text, bias)`` of a query: the spatial channel shows the text keys to every valid row and biases
        them; the temporal channel shows them to frame rows and biases target rows only."""
        if TEMPORAL:
            sees, bias = q_kind > 0, tl.where(q_kind == _KIND_TARGET, text_bias, 0.0)
        else:
            sees, bias = valid, tl.where(valid, text_bias, 0.0)
        return sees, bias

    @triton.jit
    def _online_softmax_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, kv_mask, visible, bias, sm_scale,
                             TF32X3: tl.constexpr, UPCAST: tl.constexpr):
        """One key tile: scores ``q . k`` in fp32, scaled, biased, masked, folded into the online softmax.

        ``UPCAST`` (the interpreter with bf16 inputs) runs both products in fp32 on the same operands (bf16
        values are exact in fp32; ``p`` is rounded to the nearest bf16 in the update), as the local kernel does:
        the numerics of the tensor-core path."""
        k = tl.load(k_ptrs, mask=kv_mask[None, :], other=0.0)  # [D, N]
        if UPCAST:
            s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee")
        elif TF32X3:
            s = tl.dot(q, k, input_precision="tf32x3")
        else:
            s = tl.dot(q, k)
        s = s * sm_scale + bias
        s = tl.where(visible, s, float("-inf"))
        return online_softmax_update(acc, m_i, l_i, s, v_ptrs, kv_mask[:, None],
                                     EXP2=False, TF32X3=TF32X3, UPCAST=UPCAST)

    @triton.jit
    def _frame_tile_visibility(q_kind, q_slot, q_p, k_slot, k_p, key_ok, num_given,
                               TEMPORAL: tl.constexpr, WINDOWED: tl.constexpr, BIDIR_GIVEN: tl.constexpr,
                               GRID: tl.constexpr, WINDOW: tl.constexpr, SHIFT: tl.constexpr):
        """``[M, N]`` visibility of the keys at frame positions ``k_p`` of slot ``k_slot`` (``key_ok``: the ones
        the tile holds) for the block's queries."""
        visible = _visible_frame_keys(q_kind[:, None], q_slot[:, None], q_p[:, None], k_slot[None, :], k_p[None, :],
                                      num_given, TEMPORAL, WINDOWED, BIDIR_GIVEN, GRID, WINDOW, SHIFT)
        return visible & key_ok[None, :]

    @triton.jit
    def _frame_tile(acc, m_i, l_i, walked, lanes, q, k_base, v_base, rows, offs_d, key_ok, visible,
                    stride_kn, stride_kd, stride_vn, stride_vd, sm_scale,
                    BLOCK_N: tl.constexpr, TF32X3: tl.constexpr, UPCAST: tl.constexpr, COUNT: tl.constexpr):
        """One frame-key tile (cache ``rows``) folded into the online softmax; with ``COUNT`` its loads counted."""
        k_ptrs = k_base + rows[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = v_base + rows[:, None] * stride_vn + offs_d[None, :] * stride_vd
        acc, m_i, l_i = _online_softmax_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, key_ok, visible, 0.0, sm_scale,
                                             TF32X3, UPCAST)
        if COUNT:
            walked = walked + tl.sum(key_ok.to(tl.int64), 0)
            lanes = lanes + BLOCK_N
        return acc, m_i, l_i, walked, lanes

    @triton.jit
    def _window_attention_kernel(
            Q, K, V, O, QIDX, TEXT_LEN, TEXT_BIAS, COUNTS,
            stride_qb, stride_qh, stride_qm, stride_qd,
            stride_kb, stride_kh, stride_kn, stride_kd,
            stride_vb, stride_vh, stride_vn, stride_vd,
            stride_ob, stride_oh, stride_om, stride_od,
            stride_ib, stride_im,
            num_heads, num_queries, text_capacity, num_given, sm_scale,
            TEMPORAL: tl.constexpr, WINDOWED: tl.constexpr, BIDIR_GIVEN: tl.constexpr,
            GRID: tl.constexpr, WINDOW: tl.constexpr, SHIFT: tl.constexpr, NUM_SLOTS: tl.constexpr,
            FRAME_LEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            TF32X3: tl.constexpr, UPCAST: tl.constexpr, COUNT: tl.constexpr, RANGED: tl.constexpr):
        pid_bh = tl.program_id(0)
        pid_m = tl.program_id(1)
        b = pid_bh // num_heads
        h = pid_bh % num_heads

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        in_range = offs_m < num_queries
        q_idx = tl.load(QIDX + b * stride_ib + offs_m * stride_im, mask=in_range, other=-1).to(tl.int32)
        text_len = tl.load(TEXT_LEN + b).to(tl.int32)
        text_bias = tl.load(TEXT_BIAS + b)

        valid, q_kind, q_slot, q_p = _query_position(q_idx, text_len, num_given, FRAME_LEN)

        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=in_range[:, None], other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        walked = tl.full([], 0, dtype=tl.int64)
        lanes = tl.full([], 0, dtype=tl.int64)

        # text keys: every valid row sees them in the spatial channel, frame rows in the temporal channel;
        # the bias goes on every row (spatial) or on target rows only (temporal)
        sees_text, row_bias = _text_keys(valid, q_kind, text_bias, TEMPORAL)
        for start in range(0, text_capacity, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            key_ok = offs_n < text_len
            visible = sees_text[:, None] & key_ok[None, :]
            k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
            v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
            acc, m_i, l_i = _online_softmax_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, key_ok, visible,
                                                 row_bias[:, None], sm_scale, TF32X3, UPCAST)
            if COUNT:
                walked = walked + tl.sum(key_ok.to(tl.int64), 0)
                lanes = lanes + BLOCK_N

        # frame keys, slot by slot. Checked walk: every tile of every slot, loaded only if some query of the block
        # sees it (the data-dependent branch keeps the loads from pipelining). Ranged walk: the tiles of the
        # slot's rule-derived range (_slot_key_range) with no branch, so the compiler can pipeline their loads;
        # it may load tiles no query sees (masked, exact either way).
        for slot in tl.static_range(NUM_SLOTS):
            k_slot = tl.zeros([BLOCK_N], dtype=tl.int32) + slot  # a tensor, so every comparison is tensor-wise
            if RANGED:
                lo, hi = _slot_key_range(q_kind, q_slot, q_p, slot, num_given, TEMPORAL, WINDOWED, BIDIR_GIVEN,
                                         GRID, WINDOW, SHIFT, FRAME_LEN, BLOCK_N)
                for start in range(lo, hi, BLOCK_N):
                    k_pos = start + tl.arange(0, BLOCK_N)
                    key_ok = k_pos < hi
                    k_p = tl.where(k_pos >= FRAME_LEN, k_pos - FRAME_LEN, k_pos)  # (a range past the frame wraps)
                    visible = _frame_tile_visibility(q_kind, q_slot, q_p, k_slot, k_p, key_ok, num_given,
                                                     TEMPORAL, WINDOWED, BIDIR_GIVEN, GRID, WINDOW, SHIFT)
                    acc, m_i, l_i, walked, lanes = _frame_tile(
                        acc, m_i, l_i, walked, lanes, q, k_base, v_base, text_capacity + slot * FRAME_LEN + k_p,
                        offs_d, key_ok, visible, stride_kn, stride_kd, stride_vn, stride_vd, sm_scale,
                        BLOCK_N, TF32X3, UPCAST, COUNT)
            else:
                for start in range(0, FRAME_LEN, BLOCK_N):
                    k_p = start + tl.arange(0, BLOCK_N)
                    key_ok = k_p < FRAME_LEN
                    visible = _frame_tile_visibility(q_kind, q_slot, q_p, k_slot, k_p, key_ok, num_given,
                                                     TEMPORAL, WINDOWED, BIDIR_GIVEN, GRID, WINDOW, SHIFT)
                    if tl.max(visible.to(tl.int32)) > 0:
                        acc, m_i, l_i, walked, lanes = _frame_tile(
                            acc, m_i, l_i, walked, lanes, q, k_base, v_base, text_capacity + slot * FRAME_LEN + k_p,
                            offs_d, key_ok, visible, stride_kn, stride_kd, stride_vn, stride_vd, sm_scale,
                            BLOCK_N, TF32X3, UPCAST, COUNT)

        if COUNT:
            _add_counts(COUNTS, walked, lanes)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        if UPCAST:
            out = round_to_bf16(out)  # then the (truncating) interpreter cast below is exact
        o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=in_range[:, None])


    @triton.jit
    def _decode_cell(n, x_lo, y_lo, ny, GRID: tl.constexpr, WINDOWED: tl.constexpr):
        """Block position of candidate ``n`` of a slot (:func:`_decode_candidates`): a cell of the query's window
        (rows wrap around for cyclic windows), or ``n`` itself where the candidates are a causal prefix."""
        if WINDOWED:
            return ((x_lo + n // ny) % GRID) * GRID + (y_lo + n % ny) % GRID
        return n

    @triton.jit
    def _decode_candidates(q_kind, q_slot, q_p, slot, num_given,
                           TEMPORAL: tl.constexpr, WINDOWED: tl.constexpr, BIDIR_GIVEN: tl.constexpr,
                           GRID: tl.constexpr, WINDOW: tl.constexpr, SHIFT: tl.constexpr, FRAME_LEN: tl.constexpr):
        """How many frame keys of ``slot`` one query may see, and how to enumerate them (:func:`_decode_cell`):
        its window -- ``nx x ny`` cells from ``(x_lo, y_lo)`` -- in the stage-2 temporal channel, else a prefix
        of the slot in raster order. Bounds from the rule per slot, so no tile outside them is walked; the exact
        per-key test stays :func:`_visible_frame_keys`. Returns (count, x_lo, y_lo, ny)."""
        q_frame = q_kind > 0
        if WINDOWED:  # the query's window under its own rule: cyclic (given rows) or clamped (target rows)
            is_given = q_kind == _KIND_GIVEN
            qx, qy = q_p // GRID, q_p % GRID
            cyclic_x = (((qx - SHIFT + GRID) % GRID) // WINDOW) * WINDOW + SHIFT
            cyclic_y = (((qy - SHIFT + GRID) % GRID) // WINDOW) * WINDOW + SHIFT
            clamped_x = ((qx + SHIFT) // WINDOW) * WINDOW - SHIFT
            clamped_y = ((qy + SHIFT) // WINDOW) * WINDOW - SHIFT
            x_lo = tl.where(is_given, cyclic_x, tl.maximum(clamped_x, 0))
            y_lo = tl.where(is_given, cyclic_y, tl.maximum(clamped_y, 0))
            nx = tl.where(is_given, WINDOW, tl.minimum(clamped_x + WINDOW, GRID) - x_lo)
            ny = tl.where(is_given, WINDOW, tl.minimum(clamped_y + WINDOW, GRID) - y_lo)
            allowed = q_frame & tl.where(is_given, slot < num_given, slot <= q_slot)
            count = tl.where(allowed, nx * ny, 0)
        else:
            x_lo = q_p * 0
            y_lo = q_p * 0
            ny = q_p * 0 + FRAME_LEN
            prefix = q_p + 1
            if not TEMPORAL:  # the own frame (the caller passes slot = q_slot): causal, or whole for given rows
                if BIDIR_GIVEN:
                    prefix = tl.where(q_kind == _KIND_GIVEN, FRAME_LEN, prefix)
                count = tl.where(q_frame, prefix, 0)
            else:  # stage 1: earlier slots whole, the own slot up to the query
                count = tl.where(q_frame & (slot < q_slot), FRAME_LEN, tl.where(q_frame & (slot == q_slot), prefix, 0))
        return count, x_lo, y_lo, ny

    @triton.jit
    def _window_decode_kernel(
            Q, K, V, QIDX, TEXT_LEN, TEXT_BIAS, PART_ACC, PART_M, PART_L, COUNTS,
            stride_qb, stride_qh, stride_qm, stride_qd,
            stride_kb, stride_kh, stride_kn, stride_kd,
            stride_vb, stride_vh, stride_vn, stride_vd,
            stride_ib, stride_im,
            num_heads, num_queries, text_capacity, num_given, sm_scale,
            TEMPORAL: tl.constexpr, WINDOWED: tl.constexpr, BIDIR_GIVEN: tl.constexpr,
            GRID: tl.constexpr, WINDOW: tl.constexpr, SHIFT: tl.constexpr, FRAME_LEN: tl.constexpr,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_KEYS: tl.constexpr, TEXT_SPLITS: tl.constexpr,
            FRAME_SPLITS: tl.constexpr, COUNT: tl.constexpr):
        """Split-KV decode: one query of one (sequence, head) and one split of its keys -- ``SPLIT_KEYS`` text
        rows, or ``SPLIT_KEYS`` candidates of one slot (the own slot in the spatial channel) --, ``BLOCK_N`` keys
        at a time, loading only visible rows. Writes the split's unnormalised fp32 softmax state (acc, m, l) for
        :func:`_decode_combine_kernel`. A matrix-vector product per tile (nothing for tensor cores): scores and
        ``p @ v`` are fp32 multiply-adds on the inputs, fp32 accuracy in every dtype."""
        pid_bh = tl.program_id(0)
        pid_q = tl.program_id(1)
        split = tl.program_id(2)
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        offs_d = tl.arange(0, HEAD_DIM)

        q_idx = tl.load(QIDX + b * stride_ib + pid_q * stride_im).to(tl.int32)
        text_len = tl.load(TEXT_LEN + b).to(tl.int32)
        valid, q_kind, q_slot, q_p = _query_position(q_idx, text_len, num_given, FRAME_LEN)

        is_text = split < TEXT_SPLITS
        sees_text, text_bias = _text_keys(valid, q_kind, tl.load(TEXT_BIAS + b), TEMPORAL)
        frame_split = tl.maximum(split - TEXT_SPLITS, 0)
        slot = frame_split // FRAME_SPLITS if TEMPORAL else q_slot
        count, x_lo, y_lo, ny = _decode_candidates(q_kind, q_slot, q_p, slot, num_given, TEMPORAL, WINDOWED,
                                                   BIDIR_GIVEN, GRID, WINDOW, SHIFT, FRAME_LEN)
        text_lo = split * SPLIT_KEYS
        frame_lo = (frame_split % FRAME_SPLITS) * SPLIT_KEYS
        lo = tl.where(is_text, text_lo, frame_lo)
        hi = tl.where(is_text, tl.where(sees_text, tl.minimum(text_lo + SPLIT_KEYS, text_len), text_lo),
                      tl.minimum(frame_lo + SPLIT_KEYS, count))
        bias = tl.where(is_text, text_bias, 0.0)
        slot_row = text_capacity + slot * FRAME_LEN

        q = tl.load(Q + b * stride_qb + h * stride_qh + pid_q * stride_qm + offs_d * stride_qd).to(tl.float32)
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        m_i = tl.full([], float("-inf"), dtype=tl.float32)
        l_i = tl.full([], 0.0, dtype=tl.float32)
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        walked = tl.full([], 0, dtype=tl.int64)
        lanes = tl.full([], 0, dtype=tl.int64)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            k_p = _decode_cell(n, x_lo, y_lo, ny, GRID, WINDOWED)
            # the query's integers as [BLOCK_N] vectors: the interpreter splats a boolean scalar into int32 data,
            # which its masked load refuses, so no boolean scalar meets a vector here
            zero = n * 0
            frame_visible = _visible_frame_keys(q_kind + zero, q_slot + zero, q_p + zero, slot + zero, k_p, num_given,
                                                TEMPORAL, WINDOWED, BIDIR_GIVEN, GRID, WINDOW, SHIFT)
            text_rows = (split + zero) < TEXT_SPLITS
            visible = (n < hi) & (text_rows | frame_visible)
            rows = tl.where(text_rows, n, slot_row + k_p)
            k = tl.load(k_base + rows[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=visible[:, None],
                        other=0.0)
            s = tl.sum(q[None, :] * k.to(tl.float32), 1) * sm_scale + bias
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe)
            alpha = tl.exp(m_i - m_safe)
            v = tl.load(v_base + rows[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=visible[:, None],
                        other=0.0)
            l_i = l_i * alpha + tl.sum(p, 0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
            m_i = m_new
            if COUNT:
                walked = walked + tl.sum(visible.to(tl.int64), 0)
                lanes = lanes + BLOCK_N
        if COUNT:
            _add_counts(COUNTS, walked, lanes)
        part = (pid_bh * num_queries + pid_q) * tl.num_programs(2) + split
        tl.store(PART_ACC + part * HEAD_DIM + offs_d, acc)
        tl.store(PART_M + part, m_i)
        tl.store(PART_L + part, l_i)

    @triton.jit
    def _decode_combine_kernel(PART_ACC, PART_M, PART_L, O, stride_ob, stride_oh, stride_om, stride_od,
                               num_heads, num_queries, num_splits,
                               HEAD_DIM: tl.constexpr, SPLITS_POW2: tl.constexpr, UPCAST: tl.constexpr):
        """One query of one (sequence, head): the splits' softmax states merged, normalised, cast and stored; a
        query that saw nothing writes zeros."""
        pid_bh = tl.program_id(0)
        pid_q = tl.program_id(1)
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        offs_d = tl.arange(0, HEAD_DIM)
        offs_s = tl.arange(0, SPLITS_POW2)
        present = offs_s < num_splits
        part = (pid_bh * num_queries + pid_q) * num_splits + offs_s
        m = tl.load(PART_M + part, mask=present, other=float("-inf"))
        l = tl.load(PART_L + part, mask=present, other=0.0)
        acc = tl.load(PART_ACC + part[:, None] * HEAD_DIM + offs_d[None, :], mask=present[:, None], other=0.0)
        m_max = tl.max(m, 0)
        weight = tl.exp(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # 0 for splits that saw nothing
        total = tl.sum(weight * l, 0)
        out = tl.sum(weight[:, None] * acc, 0) / tl.where(total == 0.0, 1.0, total)
        if UPCAST:
            out = round_to_bf16(out)  # then the (truncating) interpreter cast below is exact
        o_ptrs = O + b * stride_ob + h * stride_oh + pid_q * stride_om + offs_d * stride_od
        tl.store(o_ptrs, out.to(O.dtype.element_ty))

DECODE_MAX_QUERIES = 16
"""Queries per sequence up to which a launch takes the split-KV decode path by default (a decode step feeds one
or two positions per stream; the prefill path's ``BLOCK_M``-query tiles would sit mostly empty)."""
DECODE_SPLIT_KEYS = 128
"""Keys per split of the decode path: a text split holds up to this many text rows, a frame split this many
candidate cells of one slot (a stage-1 slot of 400 cells: 4 splits; a stage-2 window of at most 100: 1)."""
PATHS = ("prefill", "decode")
WALKS = ("checked", "ranged")
"""The prefill path's frame-key walks (``walk=``): ``checked`` (the default) tests every tile of every slot and
loads the ones some query sees; ``ranged`` walks each slot's rule-derived tile range with no branch, so the
compiler can pipeline the loads, and may load tiles no query sees."""


def decode_splits(rule: AttentionRule) -> tuple[int, int]:
    """(text splits, frame splits per walked slot) of the decode path's grid under ``rule``; the grid is
    ``(B * H, Q, text + slots walked * frame)``, the slots walked being the own one (spatial channel) or every
    cache slot (temporal channel)."""
    g = rule.geometry
    candidates = g.window * g.window if rule.windowed else g.frame_len
    return triton.cdiv(rule.text_capacity, DECODE_SPLIT_KEYS), triton.cdiv(candidates, DECODE_SPLIT_KEYS)


def window_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor,
                            text_len: torch.Tensor, text_bias: torch.Tensor, rule: AttentionRule, *,
                            path: str | None = None, block_m: int | None = None, block_n: int | None = None,
                            num_warps: int | None = None, counts: torch.Tensor | None = None,
                            walk: str | None = None) -> torch.Tensor:
    """Same contract as :func:`cogvideo_engine.kernels.reference.window_attention`, fused.

    Inputs are checked by :func:`.reference.check_window_inputs`, then against this kernel's limits: head dim
    16, 32, 64 or 128; fp16, bf16 or fp32; CUDA tensors (CPU ones under ``TRITON_INTERPRET=1``).

    ``path``: ``"prefill"`` -- one program per ``block_m`` queries x (sequence, head) walking every key tile some
    query of the block sees, ``block_m x block_n`` tiles (64 x 64 by default, 64 x 32 on sm_80, 32 x 32 for fp32)
    on tensor cores -- or ``"decode"`` -- split-KV: one program per (query, sequence, head, split of its keys;
    :func:`decode_splits`), the keys of a split enumerated from the rule (a stage-2 query's window cells, a causal
    prefix) ``block_n`` (32) at a time, only visible rows loaded, then one combine program per query. Default:
    decode up to :data:`DECODE_MAX_QUERIES` queries per sequence (unless ``block_m`` is given), else prefill.
    ``walk``: the prefill path's frame-key walk, one of :data:`WALKS` (default ``"checked"``).

    ``counts``: an int64 tensor of 4 on q's device, for benchmarks: the launch adds (K rows loaded, key lanes
    walked, programs launched, programs that walked a tile) -- rows loaded count every row a tile's K load
    touches (V reads the same rows).
    """
    check_launch(q)
    rule.require_released_rules("triton")
    check_window_inputs(q, k, v, q_index, text_len, text_bias, rule)
    n_q, d = q.shape[2:]
    if d not in HEAD_DIMS:
        raise ValueError(f"head dim {d} is not supported by the triton backend (16, 32, 64 or 128)")
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"the triton backend takes fp16, bf16 or fp32 inputs, got {q.dtype}")
    if path is None:
        path = "decode" if n_q <= DECODE_MAX_QUERIES and block_m is None else "prefill"
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    if path == "decode" and block_m is not None:
        raise ValueError("block_m sets the prefill path's query tile; the decode path takes one query per program")
    if walk is not None and walk not in WALKS:
        raise ValueError(f"walk must be one of {', '.join(map(repr, WALKS))}, got {walk!r}")
    if path == "decode" and walk is not None:
        raise ValueError("walk sets the prefill path's frame-key walk; the decode path enumerates its keys")
    if counts is not None and (counts.dtype != torch.int64 or counts.shape != (4,) or counts.device != q.device):
        raise ValueError(f"counts must be an int64 tensor of 4 on {q.device}")
    out = attention_output(q)
    if n_q == 0:
        return out
    # q_index and text_len in any integer dtype (the kernels narrow them to int32 as they load them: no conversion
    # kernel per call, which in a CUDA-graph decode step would be two launches per layer and channel)
    text_len = text_len.to(device=q.device)
    text_bias = text_bias.to(device=q.device, dtype=torch.float32)
    count = counts is not None
    counts = counts if count else text_len  # a pointer the kernel never touches without COUNT
    with device_guard(q), resource_limits("triton window-attention kernel"):
        if path == "decode":
            _decode(q, k, v, out, q_index, text_len, text_bias, rule, block_n, num_warps, counts, count)
        else:
            _prefill(q, k, v, out, q_index, text_len, text_bias, rule, block_m, block_n, num_warps, counts, count,
                     walk == "ranged")
    return out


def _prefill(q, k, v, out, q_index, text_len, text_bias, rule, block_m, block_n, num_warps, counts, count, ranged):
    b, h, n_q, d = q.shape
    fp32 = q.dtype == torch.float32  # 3xTF32 dots: three products per tile and split operands, 32 x 32 tiles
    block_m = block_m or (32 if fp32 else 64)  # (with 64-row tiles the compiler spills, 64 x 16 included)
    block_n = block_n or (32 if fp32 or target_arch() == 80 else 64)  # sm_80 spilled 64-key tiles (mma.sync)
    if num_warps is None:  # 8 for the 64-row tiles (4 warps held the 64 x 64 fp32 accumulator and spilled) and
        num_warps = 8 if block_m >= 64 or fp32 else 4  # for fp32's split operands (4 spilled with Triton 3.6)
    grid = (b * h, triton.cdiv(n_q, block_m))  # sequences x heads on the first axis: no 65535 limit there
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"{n_q} queries per sequence need {grid[1]} tiles of {block_m}, over CUDA's {MAX_GRID_Y} "
                         "second grid dimension")
    g = rule.geometry
    _window_attention_kernel[grid](
        q, k, v, out, q_index, text_len, text_bias, counts,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *q_index.stride(),
        h, n_q, rule.text_capacity, rule.pass_.num_given, 1.0 / math.sqrt(d),
        TEMPORAL=rule.temporal, WINDOWED=rule.windowed, BIDIR_GIVEN=rule.bidirectional_given,
        GRID=g.grid, WINDOW=g.window, SHIFT=rule.shift, NUM_SLOTS=rule.cache_slots, FRAME_LEN=g.frame_len,
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, TF32X3=fp32,
        UPCAST=upcast_bf16(q.dtype), COUNT=count, RANGED=ranged, num_warps=num_warps)


def _decode(q, k, v, out, q_index, text_len, text_bias, rule, block_n, num_warps, counts, count):
    b, h, n_q, d = q.shape
    text_splits, frame_splits = decode_splits(rule)
    splits = text_splits + frame_splits * (rule.cache_slots if rule.temporal else 1)
    if n_q > MAX_GRID_Y:
        raise ValueError(f"{n_q} queries per sequence exceed CUDA's {MAX_GRID_Y} second grid dimension on the "
                         "decode path; use path='prefill'")
    partial = b * h * n_q * splits
    part_acc = torch.empty(partial, d, device=q.device, dtype=torch.float32)
    part_m = torch.empty(partial, device=q.device, dtype=torch.float32)
    part_l = torch.empty(partial, device=q.device, dtype=torch.float32)
    g = rule.geometry
    _window_decode_kernel[(b * h, n_q, splits)](
        q, k, v, q_index, text_len, text_bias, part_acc, part_m, part_l, counts,
        *q.stride(), *k.stride(), *v.stride(), *q_index.stride(),
        h, n_q, rule.text_capacity, rule.pass_.num_given, 1.0 / math.sqrt(d),
        TEMPORAL=rule.temporal, WINDOWED=rule.windowed, BIDIR_GIVEN=rule.bidirectional_given,
        GRID=g.grid, WINDOW=g.window, SHIFT=rule.shift, FRAME_LEN=g.frame_len, HEAD_DIM=d,
        BLOCK_N=block_n or 32, SPLIT_KEYS=DECODE_SPLIT_KEYS, TEXT_SPLITS=text_splits, FRAME_SPLITS=frame_splits,
        COUNT=count, num_warps=num_warps or 4)
    _decode_combine_kernel[(b * h, n_q)](
        part_acc, part_m, part_l, out, *out.stride(), h, n_q, splits,
        HEAD_DIM=d, SPLITS_POW2=triton.next_power_of_2(splits), UPCAST=upcast_bf16(q.dtype), num_warps=1)
