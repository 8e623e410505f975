"""The CogView2 transformer pieces shared by the CogVideo stage models and the DSR model.

Module names mirror SwissArmyTransformer's, so ``state_dict()`` keys are the checkpoints' keys:
:class:`Backbone` is ``transformer.*``, :class:`ExtraPositions` ``mixins.extra_position_embedding`` and
:class:`AttentionPlus` ``mixins.attention_plus``. A layer is sandwich-LN (SPEC.md §3.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogvideo_engine.kernels.reference import compute_dtype

from .config import NUM_IMAGE_TOKENS


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, d]`` attention output -> ``[B, N, H * d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """SwissArmyTransformer's GeLU (tanh approximation), written as the original computes it."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


class _Attention(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query_key_value = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden)


class _MLP(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden, inner)
        self.dense_4h_to_h = nn.Linear(inner, hidden)

    def forward(self, x):
        return self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x)))


class _Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layernorm_epsilon
        self.input_layernorm = nn.LayerNorm(h, eps=eps)
        self.attention = _Attention(h)
        self.third_layernorm = nn.LayerNorm(h, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(h, eps=eps)
        self.mlp = _MLP(h, cfg.ffn_hidden_size)
        self.fourth_layernorm = nn.LayerNorm(h, eps=eps)

    def finish(self, x: torch.Tensor, attention_out: torch.Tensor) -> torch.Tensor:
        """The rest of a sandwich-LN layer once attention (input LN applied before it) has given its output."""
        x = x + self.third_layernorm(attention_out)
        return x + self.fourth_layernorm(self.mlp(self.post_attention_layernorm(x)))


class Backbone(nn.Module):
    """The CogView2 backbone (``transformer.*``) shared by the CogVideo stage models and the DSR model.

    ``cfg`` needs ``vocab_size``, ``hidden_size``, ``max_sequence_length``, ``num_layers``,
    ``ffn_hidden_size`` and ``layernorm_epsilon``.
    """

    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_sequence_length, cfg.hidden_size)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the image tokens, tied to ``word_embeddings[:20000]``: ``[..., hidden] -> [..., 20000]``
        in :func:`~cogvideo_engine.kernels.reference.compute_dtype` (fp32, fp64 for an fp64 model)."""
        weight = self.word_embeddings.weight[:NUM_IMAGE_TOKENS]
        dtype = compute_dtype(weight.dtype)
        return F.linear(hidden.to(dtype), weight.to(dtype))


class ExtraPositions(nn.Module):
    """``mixins.extra_position_embedding``: ``cfg.additional_seqlen`` more position rows."""

    def __init__(self, cfg):
        super().__init__()
        self.position_embeddings = nn.Embedding(cfg.additional_seqlen, cfg.hidden_size)


class AttentionPlus(nn.Module):
    """``mixins.attention_plus``: per layer a second QKV and output projection (CogVideo's temporal channel,
    the DSR model's high-resolution rows) and, with ``mixing``, CogVideo's mixing logit ``attn_distribution``."""

    def __init__(self, cfg, *, mixing: bool):
        super().__init__()
        h, n = cfg.hidden_size, cfg.num_layers
        self.query_key_value = nn.ModuleList(nn.Linear(h, 3 * h) for _ in range(n))
        self.dense = nn.ModuleList(nn.Linear(h, h) for _ in range(n))
        if mixing:
            self.attn_distribution = nn.ParameterList(nn.Parameter(torch.zeros(h)) for _ in range(n))
