"""What the Triton kernels share: the guarded ``triton`` import, the backend's status, interpreter detection, the
launch check, the GPU's resource limits as clear errors, and the jit helpers of the online softmax.

Both kernels (:mod:`.triton_attention`, window attention; :mod:`.triton_local_attention`, super-resolution
local attention) import ``triton`` and ``tl`` from here, so a missing Triton is handled in one place: the names
are ``None`` and :func:`triton_status` says why; nothing is defined with ``@triton.jit`` then.

Under ``TRITON_INTERPRET=1`` (read by ``triton.jit`` when a kernel is defined, so it must be set before these
modules are imported) the kernels run in numpy on CPU tensors: that is how the test suite runs them without a
GPU (:data:`INTERPRETED`). Two interpreter defects matter for bf16: its ``tl.dot`` multiplies the raw bf16 bit
patterns as integers, and its fp32 -> bf16 cast truncates where the GPU rounds to nearest even. A kernel
launched with :func:`upcast_bf16` true works around both (both products in fp32 on the same operands, ``p``
and the output rounded to the nearest bf16 with :func:`round_to_bf16`), which gives the numerics of the
tensor-core path; the compiled GPU kernels never take that branch.
"""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
    _LIMIT_ERRORS: tuple[type[Exception], ...] = (OutOfResources,)
except ImportError:  # the registry reports the backend as unavailable
    triton = None
    tl = None
    _LIMIT_ERRORS = ()

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""The dtypes the Triton kernels take (scores, softmax state and accumulators are fp32 in every case)."""


def triton_status() -> tuple[bool, str]:
    """Whether the Triton package is importable here, and its version (or why not)."""
    if triton is None:
        return False, "triton is not installed"
    return True, f"triton {triton.__version__}"


if triton is not None:

    @triton.jit
    def round_to_bf16(x):
        """fp32 -> the nearest bf16 value (ties to even), kept in fp32. Only the interpreter needs it: its
        fp32 -> bf16 cast truncates, where the GPU's rounds to nearest."""
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def online_softmax_update(acc, m_i, l_i, s, v_ptrs, v_mask,
                              EXP2: tl.constexpr, TF32X3: tl.constexpr, UPCAST: tl.constexpr):
        """Folds one key tile into the online softmax (shared by the window and the local-attention kernels).

        ``s`` [M, N] are the tile's scores, ``-inf`` where not visible (base 2 when ``EXP2``, else base e);
        ``acc`` [M, D], ``m_i`` and ``l_i`` [M] the fp32 state. V [N, D] is loaded here; ``p`` is cast to its
        dtype for the ``p @ v`` product (3xTF32 when ``TF32X3``, for fp32 inputs: tensor cores at fp32-level
        accuracy). ``UPCAST`` (the interpreter with bf16 inputs, whose ``tl.dot`` multiplies bf16 bit patterns
        as integers) runs the product in fp32 with ``p`` rounded to the nearest bf16 first: the numerics of the
        tensor-core path."""
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a query that has seen nothing yet
        if EXP2:
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
        else:
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptrs, mask=v_mask, other=0.0)  # [N, D]
        if UPCAST:
            pv = tl.dot(round_to_bf16(p), v.to(tl.float32), input_precision="ieee")
        elif TF32X3:
            pv = tl.dot(p.to(v.dtype), v, input_precision="tf32x3")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        return acc, m_new, l_i

    INTERPRETED = not isinstance(online_softmax_update, triton.runtime.JITFunction)
    """Whether ``triton.jit`` built interpreted functions (``TRITON_INTERPRET=1`` at import): kernels run on CPU."""
else:
    INTERPRETED = False


def target_arch() -> int | None:
    """The compute capability Triton compiles for now (``90`` on an H100/H200, ``80`` on an A100: the current
    device's, which a launch's device guard has made q's), or None under the interpreter."""
    if INTERPRETED or triton is None:
        return None
    return triton.runtime.driver.active.get_current_target().arch


def upcast_bf16(dtype: torch.dtype) -> bool:
    """Whether a launch on ``dtype`` inputs takes the kernels' ``UPCAST`` branch: bf16 in the interpreter."""
    return INTERPRETED and dtype == torch.bfloat16


@contextlib.contextmanager
def resource_limits(what: str):
    """Around a launch: the GPU's per-block limits (shared memory, registers), which Triton checks when it loads the
    kernel at the first launch, raised as ``ValueError`` naming the need, the limit and the way out."""
    try:
        yield
    except _LIMIT_ERRORS as error:
        raise ValueError(f"the {what} needs {error.required} of {error.name} per block at these tiles, over this GPU's "
                         f"{error.limit}: pass smaller tiles (block_m / block_n, block_q / block_rows)") from None


def check_launch(q: torch.Tensor, what: str = "triton backend") -> None:
    """Raise unless a Triton kernel can run on ``q``'s device here: ``RuntimeError`` without Triton,
    ``ValueError`` for non-CUDA tensors outside the interpreter."""
    available, why = triton_status()
    if not available:
        raise RuntimeError(f"the {what} is unavailable: {why}")
    if not q.is_cuda and not INTERPRETED:
        raise ValueError(f"the {what} needs CUDA tensors, got {q.device} (or TRITON_INTERPRET=1 set before "
                         "cogvideo_engine.kernels.triton_common is imported, to run it on CPU)")
