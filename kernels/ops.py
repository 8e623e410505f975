"""``torch.library`` registrations of the kernels, so ``torch.compile`` and CUDA graphs see opaque ops.

``cogvideo_engine::window_attention_triton(q, k, v, q_index, text_len, text_bias, pass, channel,
layer_parity, grid, window, shift, text_capacity) -> Tensor`` with a fake (meta) implementation returning a
tensor like ``q``.
"""

from __future__ import annotations

import torch

from .layout import AttentionRule
from .rules import FrameGeometry


@torch.library.custom_op("cogvideo_engine::window_attention_triton", mutates_args=())
def _window_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor,
                             text_len: torch.Tensor, text_bias: torch.Tensor, pass_name: str, channel: str,
                             layer_parity: int, grid: int, window: int, shift: int,
                             text_capacity: int) -> torch.Tensor:
    from .triton_attention import window_attention_triton

    rule = AttentionRule(pass_name, channel, layer_parity, FrameGeometry(grid=grid, window=window, shift=shift),
                         text_capacity)
    return window_attention_triton(q, k, v, q_index, text_len, text_bias, rule)


@_window_attention_triton.register_fake
def _(q, k, v, q_index, text_len, text_bias, pass_name, channel, layer_parity, grid, window, shift,
      text_capacity):
    return torch.empty_like(q)


def rule_args(rule: AttentionRule) -> tuple:
    g = rule.geometry
    return (rule.pass_.value, rule.channel, rule.layer_parity, g.grid, g.window, g.shift, rule.text_capacity)


def window_attention_triton_op(q, k, v, q_index, text_len, text_bias, rule: AttentionRule) -> torch.Tensor:
    """The Triton kernel through its registered op (same contract as ``reference.window_attention``)."""
    rule.require_released_rules("triton")
    return torch.ops.cogvideo_engine.window_attention_triton(q, k, v, q_index, text_len, text_bias,
                                                             *rule_args(rule))
