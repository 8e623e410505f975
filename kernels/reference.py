"""The ``reference`` attention backend: dense masks from the rule module, one softmax, in fp32 (fp64 for fp64
inputs, so a float64 run of the reference model is float64 throughout: the oracle the tests measure errors by).

Every other backend is tested against :func:`window_attention` here, and every backend (this one, Triton, the
csrc kernels) checks its inputs with :func:`check_window_inputs` before computing, so a bad input gets the same
error whichever backend runs; limits of one backend (its dtypes, its head dims) are checked by that backend.
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch

from .layout import AttentionRule, stream_index_of_row
from .masks import ChannelMask, spatial_mask, temporal_mask


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference paths compute attention and logits in: fp32 for 16-bit inputs, else the input's
    own (fp32, or fp64 for an exact run)."""
    return torch.promote_types(dtype, torch.float32)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
    """Masked attention with the model's scaling, computed in :func:`compute_dtype` (fp32, or fp64).

    q: ``[B, H, Q, d]``; k, v: ``[B, H, K, d]``; additive: ``[Q, K]`` or ``[B, 1, Q, K]`` term added to
    the scaled scores (``-inf`` hides a key, the text bias lifts text keys). Scores are
    ``(q / sqrt(d)) @ k^T`` as in the original code. Returns ``[B, H, Q, d]`` in ``q.dtype``. A row that sees
    no key at all returns zeros instead of NaN.
    """
    d, dtype = q.shape[-1], compute_dtype(q.dtype)
    scores = torch.matmul(q.to(dtype) / math.sqrt(d), k.to(dtype).transpose(-1, -2)) + additive.to(dtype)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.matmul(probs, v.to(dtype)).to(q.dtype)


def rule_additive(rule: AttentionRule, q_index: torch.Tensor, text_len: int, text_bias: float,
                  cache_len: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[Q, cache_len]`` additive mask of one sequence: ``-inf`` on hidden rows, the bias on biased text keys."""
    layout = rule.stream(text_len)
    key, key_valid = stream_index_of_row(torch.arange(cache_len, device=q_index.device), text_len,
                                         rule.text_capacity)
    q = q_index.clamp(min=0)
    mask = temporal_mask(layout, q, key, rule.layer_parity) if rule.temporal else spatial_mask(layout, q, key)
    keep = key_valid[None, :] & (q_index >= 0)[:, None]
    return ChannelMask(mask.visible & keep, mask.text_bias & keep).additive(text_bias, dtype)


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


_scope = threading.local()


@contextlib.contextmanager
def text_lengths_checked():
    """Inside this block (this thread) the window kernels take their ``text_len`` values as checked: the caller
    checked them on the host already -- a static cache does when it binds a batch's rows -- so no kernel call reads
    them back (on a GPU that read is a host synchronisation: once per layer and channel of every forward)."""
    before = getattr(_scope, "checked", False)
    _scope.checked = True
    try:
        yield
    finally:
        _scope.checked = before


def check_window_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor,
                        text_len: torch.Tensor, text_bias: torch.Tensor, rule: AttentionRule) -> None:
    """The checks of the :func:`window_attention` contract every backend shares; errors name the constraint.

    Shapes: q ``[B, H, Q, d]``, k and v ``[B, H, S, d]`` with ``S >= rule.cache_len``, q_index ``[B, Q]``,
    text_len and text_bias ``[B]``. Dtypes: q, k, v share one floating-point dtype; q_index and text_len are
    integer. Devices: k, v and q_index on q's device; text_len and text_bias there or on the host. Values:
    every text length in ``1..rule.text_capacity`` -- reading them synchronises with the device, so this one
    check is skipped inside :func:`text_lengths_checked` and while a CUDA graph is being captured. Raises
    ``ValueError``.
    """
    for name, t, rows in (("q", q, "Q"), ("k", k, "S"), ("v", v, "S")):
        if t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D [B, H, {rows}, d] tensor, got shape {tuple(t.shape)}")
    b, h, n_q, d = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, h) or k.shape[3] != d:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be [B={b}, H={h}, S, d={d}] "
                         f"to match q {tuple(q.shape)}")
    if k.shape[2] < rule.cache_len:
        raise ValueError(f"the cache holds {k.shape[2]} rows; the rule needs {rule.cache_len} (text_capacity "
                         f"{rule.text_capacity} + frame_len {rule.geometry.frame_len} x cache_slots "
                         f"{rule.cache_slots} of pass {rule.pass_.value!r})")
    if not q.is_floating_point() or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one floating-point dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q_index.shape != (b, n_q):
        raise ValueError(f"q_index must be [B={b}, Q={n_q}], got {tuple(q_index.shape)}")
    if text_len.shape != (b,) or text_bias.shape != (b,):
        raise ValueError(f"text_len and text_bias must be [B={b}] tensors, got {tuple(text_len.shape)} and "
                         f"{tuple(text_bias.shape)}")
    for name, t in (("q_index", q_index), ("text_len", text_len)):
        if not _is_integer(t):
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    for name, t in (("k", k), ("v", v), ("q_index", q_index)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}: k, v and q_index must be on q's device")
    for name, t in (("text_len", text_len), ("text_bias", text_bias)):
        if t.device != q.device and t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}, q on {q.device}: it must be on q's device or the host")
    if getattr(_scope, "checked", False) or (q.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    for i, n in enumerate(text_len.tolist()):
        if not 1 <= n <= rule.text_capacity:
            raise ValueError(f"text_len[{i}] = {n} must lie in 1..text_capacity ({rule.text_capacity})")


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor,
                     text_len: torch.Tensor, text_bias: torch.Tensor, rule: AttentionRule) -> torch.Tensor:
    """Attention of queries at stream positions over the keys their rule allows, read from the cache.

    q: ``[B, H, Q, d]``; k, v: ``[B, H, S, d]`` in the cache layout of :mod:`.layout`; q_index: ``[B, Q]`` int
    stream index of each query (``-1``: padding, output zeros); text_len: ``[B]`` int; text_bias: ``[B]``
    float (``log_text_attention_weights`` per sequence). Returns ``[B, H, Q, d]`` in ``q.dtype``. Inputs are
    checked by :func:`check_window_inputs`.
    """
    check_window_inputs(q, k, v, q_index, text_len, text_bias, rule)
    outs = []
    for b in range(q.shape[0]):
        additive = rule_additive(rule, q_index[b].long(), int(text_len[b]), float(text_bias[b]), k.shape[2],
                                 compute_dtype(q.dtype))
        outs.append(dense_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], additive))
    return torch.cat(outs, dim=0)
