"""Deterministic random weights for the tests and the embedded default model (no released weights needed)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import DsrConfig
from .dsr import DsrModel
from .vq_decoder import ImageDecoder


def init_random_weights(model: nn.Module, seed: int, *, peaky: bool = True) -> nn.Module:
    """Fill a CogVideo or DSR model with deterministic random weights (by parameter name).

    With ``peaky`` the QKV weights are scaled so attention is sharp and ``attn_distribution`` spans
    sigmoid ~0.05..0.95: a masking, windowing or mixing error then moves logits by O(1), not 1e-4.
    """
    gen = torch.Generator().manual_seed(seed)
    h = model.config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            elif "attn_distribution" in name:
                p.copy_(torch.empty(p.shape).uniform_(-3.0, 3.0, generator=gen))
            elif "query_key_value" in name and name.endswith("weight"):
                scale = 4.0 / math.sqrt(h) if peaky else 0.02
                p.copy_(scale * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            elif "embeddings" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model


def random_dsr_model(config: DsrConfig, seed: int) -> DsrModel:
    """A DSR model with deterministic random weights; write it in the released layout with
    :func:`cogvideo_engine.io.sat.write_sat_checkpoint`."""
    return init_random_weights(DsrModel(config), seed=seed).eval().requires_grad_(False)


def random_image_decoder_state(seed: int) -> dict[str, torch.Tensor]:
    """A deterministic random state dict of the :class:`ImageDecoder` (convolutions scaled by fan-in, unit
    norms, a unit-normal codebook): what the embedded default ``ice_image.pt`` holds."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in ImageDecoder().state_dict().items():
        if t.dim() == 4:
            state[name] = torch.randn(t.shape, generator=gen) / math.sqrt(t[0].numel())
        elif "norm" in name and name.endswith("weight"):
            state[name] = torch.ones(t.shape)
        elif name == "quantize.embed.weight":
            state[name] = torch.randn(t.shape, generator=gen)
        else:
            state[name] = torch.zeros(t.shape)
    return state
