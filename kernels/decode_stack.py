"""The CPU decode forward in one C++ call (``csrc/cpu/decode_stack_cpu.cpp``, ``cogvideo/decode_stack.h``).

A decode step runs a few rows through every layer; in Python each layer is some forty torch calls of a few
microseconds each around the weight-streaming linears. :class:`DecodeStack` binds a model's fp32 tensors once and
runs a whole step -- every layer's LayerNorms, linears (the batch-invariant ``linear_rows`` kernel), K/V cache
writes, both attention channels (the csrc window-attention kernel), GeLU and residual adds, then the final
LayerNorm and the logits head -- in one call without the interpreter in between.

What it computes is :meth:`cogvideo_engine.generation.runner.ModelRunner._layers`' (its plain-PyTorch twin, which
runs when the stack cannot: ``tests/generation/test_decode_stack.py`` checks the two against each other and
against float64). Rows are independent (each output row bit-identical whatever shares the step); the bits differ
from the twin's in LayerNorm and GeLU, which are computed in C++ here.
"""

from __future__ import annotations

import torch

from .layout import AttentionRule

try:
    from cogvideo_engine import _C
    _IMPORT_ERROR = ""
except ImportError as e:  # pure-Python install, or a build for another Python/torch
    _C = None
    _IMPORT_ERROR = str(e)

__all__ = ["LAYER_TENSORS", "MATRICES", "DecodeStack", "decode_stack_available"]

LAYER_TENSORS = ("ln_in_w", "ln_in_b", "qkv_w", "qkv_b", "base_w", "base_b", "mixed_w", "mixed_b", "ln_third_w",
                 "ln_third_b", "ln_post_w", "ln_post_b", "up_w", "up_b", "down_w", "down_b", "ln_fourth_w",
                 "ln_fourth_b")
"""One layer's tensors, in the order :class:`DecodeStack` takes them (``cogvideo::DecodeLayer``)."""

MATRICES = ("qkv_w", "base_w", "mixed_w", "up_w", "down_w", "head")
"""The tensors the stack's linears stream (fp32 or bf16); every other one is fp32."""


def decode_stack_available() -> tuple[bool, str]:
    """Whether :class:`DecodeStack` can run here (the compiled extension holds it), and why (not)."""
    if _C is None:
        return False, f"the compiled extension cogvideo_engine._C is not available ({_IMPORT_ERROR})"
    if not hasattr(_C, "DecodeStack"):
        return False, "cogvideo_engine._C predates the decode stack: rebuild the extension (pip install -e .)"
    return True, "C++ decode stack (linear_rows + the csrc window attention)"


def _arg(t: torch.Tensor) -> tuple:
    return t.data_ptr(), str(t.dtype).removeprefix("torch."), list(t.shape), list(t.stride())


def _rule_arg(rule: AttentionRule) -> tuple:
    g = rule.geometry
    return (rule.temporal, rule.windowed, rule.bidirectional_given, rule.pass_.num_given, rule.cache_slots, g.grid,
            g.window, rule.shift, rule.text_capacity)


class DecodeStack:
    """A model's decode forward bound to its tensors (kept referenced here: they must not move while bound).

    ``layers``: per layer a dict of the :data:`LAYER_TENSORS` (CPU tensors with a contiguous last dimension:
    ``qkv_w [3h * channels, h]``, ``base_w [h, h]``, ``mixed_w [h, 2h]``, ``up_w [F, h]``, ``down_w [h, F]``,
    vectors ``[n]``); ``head [V, h]`` the logits head. Vectors are fp32; the weight matrices and the head fp32 or
    bf16 (:data:`MATRICES`; a bf16 matrix is widened exactly as the linear reads it, so the step computes in fp32
    with the bf16-rounded weights at half their bytes). Raises ``ValueError`` naming a tensor that does not fit.
    """

    def __init__(self, layers: list[dict[str, torch.Tensor]], final_ln_w: torch.Tensor, final_ln_b: torch.Tensor,
                 head: torch.Tensor, *, heads: int, head_dim: int, eps: float):
        ok, why = decode_stack_available()
        if not ok:
            raise RuntimeError(f"the decode stack needs the compiled extension: {why}")
        tensors = [[layer[name] for name in LAYER_TENSORS] for layer in layers]
        named = [(name, t) for layer in layers for name, t in layer.items()] + [
            ("final_ln_w", final_ln_w), ("final_ln_b", final_ln_b), ("head", head)]
        for name, t in named:
            dtypes = (torch.float32, torch.bfloat16) if name in MATRICES else (torch.float32,)
            if t.device.type != "cpu" or t.dtype not in dtypes:
                raise ValueError(f"the decode stack takes {name} as a {' or '.join(map(str, dtypes))} CPU tensor, "
                                 f"got {t.dtype} on {t.device}")
        self._tensors = (tensors, final_ln_w, final_ln_b, head)  # what the C++ side points into
        self.vocab = head.shape[0]
        self._stack = _C.DecodeStack([[_arg(t) for t in layer] for layer in tensors], _arg(final_ln_w),
                                     _arg(final_ln_b), _arg(head), heads, head_dim, eps)

    @staticmethod
    def channels(caches: list[tuple[torch.Tensor, torch.Tensor, AttentionRule, AttentionRule]]) -> list[tuple]:
        """What :meth:`forward` takes for a step's caches, made once per bound cache: per channel (K, V, rule of the
        even layers, rule of the odd ones), K and V ``[layers, B, rows + 1, heads, head_dim]`` fp32 with
        ``heads x head_dim`` contiguous (a :class:`~cogvideo_engine.generation.runner.StaticCache`'s bound rows)."""
        out = []
        for k, v, even, odd in caches:
            for t in (k, v):
                rows_whole = t.dim() == 5 and t.stride()[2:] == (t.shape[3] * t.shape[4], t.shape[4], 1)
                if t.dtype != torch.float32 or not rows_whole:
                    raise ValueError("the decode stack's caches are fp32 [layers, B, rows + 1, heads, head_dim] with "
                                     f"heads x head_dim contiguous, got {t.dtype} {tuple(t.shape)} {t.stride()}")
            if k.stride() != v.stride():
                raise ValueError("K and V of a channel must share their layout")
            out.append((k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), _rule_arg(even), _rule_arg(odd)))
        return out

    def forward(self, x: torch.Tensor, q_index: torch.Tensor, text_len: torch.Tensor, text_bias: torch.Tensor,
                channels: list[tuple], scratch_row: int, want_logits: bool = True) -> torch.Tensor | None:
        """One decode forward of ``x [B, n, h]`` (the embedded inputs: fp32, contiguous; overwritten) for queries
        ``q_index [B, n]`` (int64 stream indices, -1 = padding) of rows with ``text_len [B]`` (int32) and
        ``text_bias [B]`` (fp32), over the caches :meth:`channels` describes; each query's K/V go to its cache
        row (padding: ``scratch_row``). Returns the logits ``[B, n, V]`` (None without ``want_logits``)."""
        b, n, _ = x.shape
        logits = torch.empty(b, n, self.vocab) if want_logits else None
        self._stack.forward(_arg(x.view(b * n, -1)), b, n, q_index.data_ptr(), q_index.stride(0), q_index.stride(1),
                            text_len.data_ptr(), text_bias.data_ptr(), channels, scratch_row,
                            None if logits is None else _arg(logits.view(b * n, -1)))
        return logits

    @property
    def last_timings(self) -> dict[str, float]:
        """Where the last :meth:`forward`'s time went, wall-clock seconds: ``linear`` (the weight streams: every
        linear layer and the logits head), ``attention`` (both channels' kernels), ``total`` (the whole call; the
        rest is LayerNorms, GeLU, residual adds and cache writes)."""
        linear, attention, total = self._stack.last_timings()
        return {"linear": linear, "attention": attention, "total": total}
