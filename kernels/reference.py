"""The ``reference`` attention backend: dense scores, a dense additive mask, one softmax, in fp32."""

from __future__ import annotations

import math

import torch


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
    """Masked attention with the model's scaling, computed in fp32.

    q: ``[B, H, Q, d]``; k, v: ``[B, H, K, d]``; additive: ``[Q, K]`` or ``[B, 1, Q, K]`` fp32 term added to
    the scaled scores (``-inf`` hides a key, the text bias lifts text keys). Scores are
    ``(q / sqrt(d)) @ k^T`` as in the original code. Returns ``[B, H, Q, d]`` in ``q.dtype``. A row that sees
    no key at all returns zeros instead of NaN.
    """
    d = q.shape[-1]
    scores = torch.matmul(q.float() / math.sqrt(d), k.float().transpose(-1, -2)) + additive
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.matmul(probs, v.float()).to(q.dtype)
