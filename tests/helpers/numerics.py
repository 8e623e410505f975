"""What floating-point arithmetic can promise, as one test assertion (the flash-attention rule).

A result computed in a working precision (fp32, fp16, bf16) is compared with the same function computed in
float64 (``exact``: the reference in its fp64 mode, on the same rounded inputs). The bound is what the
working precision itself costs on this machine:

    max|actual - exact|  <=  factor * max|reference - exact|  +  ulps * eps(dtype) * max|exact|

where ``reference`` is the reference implementation run in the same working precision (its own error, which
moves with the machine's BLAS exactly as the result under test does) and the floor of ``ulps`` units in the
last place of the values' magnitude covers results whose reference happens to be exact (structured inputs).
No term is a bare absolute tolerance, so the bound holds on any CPU. NaN or inf in the result fails.

Set ``COGVIDEO_NUMERICS_LOG=path`` to append one JSON line per check (error, bound, own error, scale): the
margins of the whole suite on a new machine in one run.
"""

from __future__ import annotations

import copy
import json
import os

import torch

FACTOR = 2.0
"""The flash-attention rule: a kernel may err at most twice what the reference errs in the same precision."""

MODEL_FACTOR = 3.0
"""For a model's result through another computation path than its reference's (cached steps vs one forward,
another batch, a fused backend inside the model, the original code on another machine): GEMV and GEMM paths
accumulate in different orders, measured at up to 1.75x the reference's own error on four BLAS configurations
(MKL with AVX-512, with AVX2, single-threaded SSE4.2, and MKL_CBWR=COMPATIBLE; the C++ kernels built for
AVX-512, AVX2 and baseline x86-64), so 3 keeps a 1.7x margin."""

FUSED_FACTOR = 4.0
"""For the model runner against the reference model: besides reassociating (fused GEMMs of other shapes), the
runner rounds its alpha-folded output weights once more; measured at up to 3.6x the reference's own error (a
row whose reference happens to err little, single-threaded SSE4.2), where the floor still leaves the bound 1.9x
above the error."""

ULPS = {torch.float64: 16, torch.float32: 16, torch.float16: 2, torch.bfloat16: 2}
"""The floor, in units in the last place of the largest exact value. 16-bit kernels round their outputs (and
flash-style kernels their probabilities) once, so two ulps of the magnitude hold them; fp32 accumulates
rounding over the reduction, so sixteen."""


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` in float64 (NaN if either holds NaN)."""
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def fp_bound(exact: torch.Tensor, reference: torch.Tensor | None, dtype: torch.dtype, *, factor: float = FACTOR,
             ulps: float | None = None) -> tuple[float, float, float]:
    """``(bound, own error, scale)`` of the rule above for results in ``dtype``."""
    scale = float(exact.double().abs().max()) if exact.numel() else 0.0
    own = max_error(reference, exact) if reference is not None else 0.0
    floor = (ULPS[dtype] if ulps is None else ulps) * torch.finfo(dtype).eps * scale
    return factor * own + floor, own, scale


def assert_fp_close(actual: torch.Tensor, exact: torch.Tensor, reference: torch.Tensor | None = None, *,
                    dtype: torch.dtype | None = None, factor: float = FACTOR, ulps: float | None = None,
                    what: str = "result") -> float:
    """Assert the rule above; returns the error.

    actual: the result under test; exact: the same function in float64 (same shape); reference: the
    reference's result in the working precision (None: the floor alone bounds the error); dtype: the working
    precision (default: ``actual``'s, or ``reference``'s when that is lower, e.g. fp32 logits of a bf16
    model should pass ``dtype=torch.bfloat16``).
    """
    assert actual.shape == exact.shape, f"{what}: shape {tuple(actual.shape)} != exact {tuple(exact.shape)}"
    assert exact.dtype == torch.float64, f"{what}: the exact result must be float64, got {exact.dtype}"
    assert bool(torch.isfinite(exact).all()), f"{what}: the float64 result itself is not finite"
    dtype = dtype or actual.dtype
    bound, own, scale = fp_bound(exact, reference, dtype, factor=factor, ulps=ulps)
    err = max_error(actual, exact)
    log = os.environ.get("COGVIDEO_NUMERICS_LOG")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(log, "a") as f:
            f.write(json.dumps(dict(test=test, what=what, dtype=str(dtype), error=err, bound=bound, own=own,
                                    scale=scale)) + "\n")
    assert err <= bound, (f"{what}: max error {err:.3g} against float64 exceeds {bound:.3g} = {factor:g} x the "
                          f"{'reference' if reference is not None else '(no reference)'}'s own error {own:.3g} + "
                          f"{ULPS[dtype] if ulps is None else ulps:g} ulp({dtype}) x magnitude {scale:.3g}")
    return err


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``module`` (every fp32/16-bit weight upcast exactly): the model the exact results of
    model-level checks come from."""
    return copy.deepcopy(module).double()
