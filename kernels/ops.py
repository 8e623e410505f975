"""``torch.library`` registrations of the kernels, so ``torch.compile`` and CUDA graphs see opaque ops.

This module registers every op, and is the only one that does; the kernels themselves are plain functions in
:mod:`.triton_attention`, :mod:`.triton_local_attention` and :mod:`.csrc_ops`, which import nothing from here.
Importing this module registers all four ops (a backend missing here still registers; calling it raises the
backend's own error).

Each window-attention kernel becomes ``cogvideo_engine::<name>(q, k, v, q_index, text_len, text_bias, pass,
channel, layer_parity, grid, window, shift, text_capacity) -> Tensor`` with a fake (meta) implementation
returning what the kernels allocate (:func:`.launch.attention_output`, strides included):
``window_attention_triton`` and ``window_attention_csrc``.

The super-resolution local attention becomes ``cogvideo_engine::<name>(q, k, v, k_low, v_low, grid,
low_grid, window_rows, window_cols, low_window) -> Tensor``: ``local_attention_triton`` and
``local_attention_csrc``.

The ``*_op`` callers here (what :mod:`.registry` hands out) keep the kernels' Python contracts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .csrc_ops import local_attention_csrc, window_attention_csrc
from .launch import attention_output
from .layout import AttentionRule
from .local_rules import LocalGeometry
from .rules import FrameGeometry
from .triton_attention import window_attention_triton
from .triton_local_attention import local_attention_triton

KernelFn = Callable[..., torch.Tensor]


def rule_args(rule: AttentionRule) -> tuple:
    """The op's scalar arguments describing ``rule``."""
    g = rule.geometry
    return (rule.pass_.value, rule.channel, rule.layer_parity, g.grid, g.window, g.shift, rule.text_capacity)


def _rule_from_args(pass_name: str, channel: str, layer_parity: int, grid: int, window: int, shift: int,
                    text_capacity: int) -> AttentionRule:
    geometry = FrameGeometry(grid=grid, window=window, shift=shift)
    return AttentionRule(pass_name, channel, layer_parity, geometry, text_capacity)


def register_window_attention_op(name: str, kernel: KernelFn, backend: str) -> KernelFn:
    """Register ``kernel`` (the ``reference.window_attention`` contract) as ``cogvideo_engine::<name>`` and
    return a caller with that same contract that goes through the op."""

    @torch.library.custom_op(f"cogvideo_engine::{name}", mutates_args=())
    def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor, text_len: torch.Tensor,
           text_bias: torch.Tensor, pass_name: str, channel: str, layer_parity: int, grid: int, window: int,
           shift: int, text_capacity: int) -> torch.Tensor:
        rule = _rule_from_args(pass_name, channel, layer_parity, grid, window, shift, text_capacity)
        return kernel(q, k, v, q_index, text_len, text_bias, rule)

    @op.register_fake
    def _(q, k, v, q_index, text_len, text_bias, pass_name, channel, layer_parity, grid, window, shift,
          text_capacity):
        return attention_output(q)

    def call(q, k, v, q_index, text_len, text_bias, rule: AttentionRule) -> torch.Tensor:
        rule.require_released_rules(backend)  # the op's arguments carry the released rules only
        return op(q, k, v, q_index, text_len, text_bias, *rule_args(rule))

    call.__name__ = f"{name}_op"
    return call


def register_local_attention_op(name: str, kernel: KernelFn) -> KernelFn:
    """Register ``kernel`` (the ``local_reference.local_attention`` contract) as ``cogvideo_engine::<name>``
    and return a caller with that same contract that goes through the op."""

    @torch.library.custom_op(f"cogvideo_engine::{name}", mutates_args=())
    def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_low: torch.Tensor, v_low: torch.Tensor, grid: int,
           low_grid: int, window_rows: int, window_cols: int, low_window: int) -> torch.Tensor:
        return kernel(q, k, v, k_low, v_low, LocalGeometry(grid, low_grid, window_rows, window_cols, low_window))

    @op.register_fake
    def _(q, k, v, k_low, v_low, grid, low_grid, window_rows, window_cols, low_window):
        return attention_output(q)

    def call(q, k, v, k_low, v_low, geometry: LocalGeometry) -> torch.Tensor:
        g = geometry
        return op(q, k, v, k_low, v_low, g.grid, g.low_grid, g.window_rows, g.window_cols, g.low_window)

    call.__name__ = f"{name}_op"
    return call


window_attention_triton_op = register_window_attention_op("window_attention_triton", window_attention_triton,
                                                         "triton")
"""The Triton kernel through its registered op (same contract as ``reference.window_attention``)."""
window_attention_csrc_op = register_window_attention_op("window_attention_csrc", window_attention_csrc, "csrc")
"""The csrc (C++ CPU / CUDA) kernel through its registered op (same contract as ``reference.window_attention``)."""
local_attention_triton_op = register_local_attention_op("local_attention_triton", local_attention_triton)
"""The Triton local-attention kernel through its registered op."""
local_attention_csrc_op = register_local_attention_op("local_attention_csrc", local_attention_csrc)
"""The csrc (C++ CPU / CUDA) local-attention kernel through its registered op."""
