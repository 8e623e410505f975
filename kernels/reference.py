"""The ``reference`` attention backend: dense masks from the rule module, one softmax, in fp32 (fp64 for fp64
inputs, so a float64 run of the reference model is float64 throughout: the oracle the tests measure errors by).

Every other backend is tested against :func:`window_attention` here.
"""

from __future__ import annotations

import math

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


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor,
                     text_len: torch.Tensor, text_bias: torch.Tensor, rule: AttentionRule) -> torch.Tensor:
    """Attention of queries at stream positions over the keys their rule allows, read from the cache.

    q: ``[B, H, Q, d]``; k, v: ``[B, H, S, d]`` in the cache layout of :mod:`.layout`; q_index: ``[B, Q]`` int
    stream index of each query (``-1``: padding, output zeros); text_len: ``[B]`` int; text_bias: ``[B]``
    float (``log_text_attention_weights`` per sequence). Returns ``[B, H, Q, d]`` in ``q.dtype``.
    """
    outs = []
    for b in range(q.shape[0]):
        additive = rule_additive(rule, q_index[b].long(), int(text_len[b]), float(text_bias[b]), k.shape[2],
                                 compute_dtype(q.dtype))
        outs.append(dense_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], additive))
    return torch.cat(outs, dim=0)
