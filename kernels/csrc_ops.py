"""The csrc kernels (``cogvideo_engine._C``: C++ CPU and CUDA) as plain functions: the window-attention
contract (:func:`window_attention_csrc`) and the super-resolution local-attention contract
(:func:`local_attention_csrc`).

Inputs are checked here first with the checks every backend shares (:func:`.reference.check_window_inputs`,
:func:`.local_reference.check_local_inputs`); the C++ side checks its own limits (dtypes, head dims) and
raises ``ValueError`` naming them. Tensors cross into C++ as (data pointer, dtype, shape, strides); CUDA
launches go on torch's current stream. :mod:`.ops` registers both functions as ``torch.library`` ops
(``torch.ops.cogvideo_engine.window_attention_csrc`` and ``local_attention_csrc``); this module imports
nothing from it.
"""

from __future__ import annotations

import torch

from .launch import attention_output, device_guard
from .layout import AttentionRule
from .local_reference import check_local_inputs
from .local_rules import LocalGeometry
from .reference import check_window_inputs

try:
    from cogvideo_engine import _C
    _IMPORT_ERROR = ""
except ImportError as e:  # pure-Python install, or a build for another Python/torch
    _C = None
    _IMPORT_ERROR = str(e)


def csrc_status(device_type: str, kernel: str = "window_attention") -> tuple[bool, str]:
    """Whether the csrc ``kernel`` (``"window_attention"`` or ``"local_attention"``) for ``device_type`` can run
    here, and why (not)."""
    if _C is None:
        return False, f"the compiled extension cogvideo_engine._C is not available ({_IMPORT_ERROR})"
    if not hasattr(_C, kernel):
        return False, (f"cogvideo_engine._C predates the {kernel.replace('_', '-')} kernel: rebuild the extension "
                       "(pip install -e .)")
    if device_type == "cpu":
        isa = _C.cpu_isa() if hasattr(_C, "cpu_isa") else "native"
        return True, f"C++ kernel, OpenMP, {isa} variant (COGVIDEO_CPU_ISA picks a lower one)"
    if not _C.has_cuda():
        return False, "cogvideo_engine._C was built without CUDA (no nvcc at build time)"
    if not torch.cuda.is_available():
        return False, "built with CUDA, but no CUDA device is visible"
    return True, "CUDA C++ kernel"


def _tensor_arg(t: torch.Tensor) -> tuple:
    return t.data_ptr(), str(t.dtype).removeprefix("torch."), list(t.shape), list(t.stride())


def window_attention_csrc(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_index: torch.Tensor,
                          text_len: torch.Tensor, text_bias: torch.Tensor, rule: AttentionRule) -> torch.Tensor:
    """Same contract as :func:`cogvideo_engine.kernels.reference.window_attention`, on q's device.

    Inputs are checked by :func:`.reference.check_window_inputs`; the C++ side refuses dtypes other than fp32,
    fp16 and bf16 and head dims other than 16, 32, 64 and 128 (``ValueError``).
    """
    if _C is None:
        raise RuntimeError(f"the csrc backends need cogvideo_engine._C: {_IMPORT_ERROR}")
    rule.require_released_rules(q.device.type)
    check_window_inputs(q, k, v, q_index, text_len, text_bias, rule)
    device = q.device
    q_index = q_index.to(torch.int64)
    text_len = text_len.to(device=device, dtype=torch.int32).contiguous()
    text_bias = text_bias.to(device=device, dtype=torch.float32).contiguous()
    out = attention_output(q)
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    g = rule.geometry
    with device_guard(q):
        _C.window_attention(device.type, _tensor_arg(q), _tensor_arg(k), _tensor_arg(v), _tensor_arg(out),
                            q_index.data_ptr(), q_index.stride(0), q_index.stride(1), text_len.data_ptr(),
                            text_bias.data_ptr(), rule.temporal, rule.windowed, rule.bidirectional_given,
                            rule.pass_.num_given, rule.cache_slots, g.grid, g.window, rule.shift, rule.text_capacity,
                            stream)
    return out


def local_attention_csrc(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_low: torch.Tensor,
                         v_low: torch.Tensor, geometry: LocalGeometry) -> torch.Tensor:
    """Super-resolution local attention; same contract as
    :func:`cogvideo_engine.kernels.local_reference.local_attention`, on q's device.

    Any strides are accepted; inputs whose last dimension is not contiguous are copied first.
    """
    if _C is None:
        raise RuntimeError(f"the csrc backends need cogvideo_engine._C: {_IMPORT_ERROR}")
    check_local_inputs(q, k, v, k_low, v_low, geometry)
    q, k, v, k_low, v_low = (t if t.stride(-1) == 1 else t.contiguous()
                             for t in (q, k, v, k_low, v_low))
    out = attention_output(q)
    device = q.device
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    g = geometry
    with device_guard(q):
        _C.local_attention(device.type, _tensor_arg(q), _tensor_arg(k), _tensor_arg(v), _tensor_arg(k_low),
                           _tensor_arg(v_low), _tensor_arg(out), g.grid, g.low_grid, g.window_rows, g.window_cols,
                           g.low_window, stream)
    return out
