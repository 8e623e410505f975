"""A batch-invariant fp32 linear for CPU decode steps: each output row is bit-identical whatever else is in the
batch.

The engine batches the decode rows of several requests into one forward; a request's sampled tokens must not
depend on what it was batched with. BLAS GEMMs do not promise that (MKL switches algorithms with the number of
rows, and rows at different batch positions can differ in their last bits). :func:`linear_rows` calls the C++
kernel ``cogvideo_engine._C.linear_rows`` (``csrc/cpu/linear_rows_cpu.cpp``), which computes every output element
with one fixed sequence of fp32 operations -- 16 lane partial sums over k (lane l takes k = l mod 16, in
increasing k, FMA in the avx2 / avx512 variants), a fixed tree over the 16 lanes, then ``+ bias`` -- so a row's
result depends only on that row of x, the weights, K and the CPU kernel variant (``_C.cpu_isa()``): not on the
number of rows M, the row's position, the other rows' values or the OpenMP thread count.

:func:`linear_rows_reference` is the plain-PyTorch twin for comparisons (``F.linear`` in float64, rounded to
fp32); :func:`linear_rows_available` says whether the kernel can run here. There is no silent fallback: without
the extension :func:`linear_rows` raises, and a caller that can live without the invariance uses ``F.linear``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:
    from cogvideo_engine import _C
    _IMPORT_ERROR = ""
except ImportError as e:  # pure-Python install, or a build for another Python/torch
    _C = None
    _IMPORT_ERROR = str(e)
_KERNEL = getattr(_C, "linear_rows", None)

__all__ = ["linear_rows", "linear_rows_available", "linear_rows_reference"]


def linear_rows_available() -> tuple[bool, str]:
    """Whether :func:`linear_rows` can run here (the compiled extension holds the kernel), and why (not)."""
    if _C is None:
        return False, f"the compiled extension cogvideo_engine._C is not available ({_IMPORT_ERROR})"
    if not hasattr(_C, "linear_rows"):
        return False, "cogvideo_engine._C predates the linear-rows kernel: rebuild the extension (pip install -e .)"
    isa = _C.cpu_isa() if hasattr(_C, "cpu_isa") else "native"
    return True, f"C++ kernel, OpenMP over N, {isa} variant (COGVIDEO_CPU_ISA picks a lower one)"


def _tensor_arg(t: torch.Tensor) -> tuple:  # fp32, or a bf16 weight (checked first)
    return t.data_ptr(), "float32" if t.dtype is _F32 else "bfloat16", t.shape, t.stride()


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Raises ValueError naming the first constraint the inputs break."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"linear_rows: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32 and not (name == "weight" and t.dtype == torch.bfloat16):
            raise ValueError(f"linear_rows: {name} must be float32{' or bfloat16' if name == 'weight' else ''} "
                             f"(fp32 math), got {t.dtype}")
        if t.device.type != "cpu":
            raise ValueError(f"linear_rows: {name} must be on the CPU, got {t.device}")
    if x.dim() < 1:
        raise ValueError("linear_rows: x must have a last dimension K ([..., K]), got a 0-D tensor")
    if weight.dim() != 2:
        raise ValueError(f"linear_rows: weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"linear_rows: weight {tuple(weight.shape)} must be [N, K] with x's K = {x.shape[-1]}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"linear_rows: bias must be [N] with N = {weight.shape[0]}, got {tuple(bias.shape)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"linear_rows: {name}'s last dimension must be contiguous (stride 1), got stride "
                             f"{t.stride(-1)}")


def _ok(t: torch.Tensor, dtypes=(torch.float32,)) -> bool:  # the common case, tested quickly
    return type(t) is torch.Tensor and t.dtype in dtypes and t.is_cpu and (t.stride(-1) == 1 or t.shape[-1] == 1)


_F32 = torch.float32
_WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` on the CPU in fp32, batch-invariant.

    x: ``[..., K]`` fp32 (any leading shape, flattened to ``[M, K]``; rows may be strided, the last dimension must
    be contiguous); weight: ``[N, K]`` fp32 or bf16, last dimension contiguous (never copied; a bf16 weight is
    widened to fp32 exactly as it is read, so the result is the fp32 product with the bf16-rounded weight, at half
    the weight bytes); bias: ``[N]`` fp32 or None. Returns a new contiguous ``[..., N]`` fp32 tensor.

    The promise: each output row is bit-identical whatever M, the row's position among the M rows, the other rows'
    contents and ``torch.get_num_threads()`` (the kernel's OpenMP team; the split is over N only and never changes
    a result) -- on the same machine and CPU kernel variant (``_C.cpu_isa()``: the avx2 / avx512 variants use FMA,
    the baseline one does not, so their bits differ). The accuracy is that of any fp32 dot product (checked
    against float64 like the other kernels: ``tests/kernels/test_linear_rows.py``).

    Raises ``ValueError`` naming the constraint (dtype fp32, the weight also bf16; CPU tensors; shapes ``[..., K]``,
    ``[N, K]``, ``[N]``; contiguous last dimensions), and ``RuntimeError`` when the extension lacks the kernel
    (:func:`linear_rows_available` says why).
    """
    if _KERNEL is None:
        raise RuntimeError(f"linear_rows needs the compiled kernel: {linear_rows_available()[1]}")
    if not (_ok(x) and _ok(weight, _WEIGHT_DTYPES) and (bias is None or (_ok(bias) and bias.dim() == 1))
            and weight.dim() == 2 and x.dim() >= 1 and x.shape[-1] == weight.shape[1]):
        _check(x, weight, bias)  # raises, naming the constraint (a tensor subclass that passes goes on)
    n, k = weight.shape
    x2 = x if x.dim() == 2 else x.reshape(math.prod(x.shape[:-1]), k)  # a view where the dims allow, else a copy
    out = torch.empty(x2.shape[0], n, dtype=_F32)
    _KERNEL(_tensor_arg(out), _tensor_arg(x2), _tensor_arg(weight), None if bias is None else _tensor_arg(bias))
    return out if x.dim() == 2 else out.view(*x.shape[:-1], n)


def linear_rows_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain-PyTorch twin of :func:`linear_rows`: ``F.linear`` computed in float64 (products exact, the sum in
    float64) and rounded to fp32 once. Same shapes (x ``[..., K]``, weight ``[N, K]``, bias ``[N]`` or None ->
    ``[..., N]``), any device and strides; no bit-level promise beyond float64's own (``F.linear`` in float64 is
    a BLAS GEMM too), only the accuracy every fp32 result is compared against."""
    out = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    return out.to(torch.float32)
