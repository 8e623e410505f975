"""What every attention-kernel launch shares, whatever the backend: the output it allocates (its op's fake returns
the same, strides included, so ``torch.compile`` sees what the kernel makes) and the device guard around it.

No Triton and no extension here: the Triton and csrc wrappers and the op registrations all import it.
"""

from __future__ import annotations

import contextlib

import torch

MAX_GRID_Y = 65535
"""CUDA's limit on a launch's second and third grid dimensions (the first allows 2^31 - 1)."""
SHARED_MEMORY_PER_BLOCK = {90: 232448, 80: 166912}
"""Shared memory one block may use (the opt-in maximum), bytes, by compute capability: H100/H200 227 KB, A100
163 KB."""


def attention_output(q: torch.Tensor) -> torch.Tensor:
    """The kernels' output for queries ``q [B, H, Q, d]``: q's shape and dtype, laid out like q when q is a
    permutation of a contiguous tensor with a unit-stride last dimension (a head-transposed ``[B, Q, H, d]`` buffer
    comes back ready to reshape, no copy), else contiguous."""
    return torch.empty_like(q) if q.stride(-1) == 1 and _dense(q) else q.new_empty(q.shape)


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its storage span exactly (a permutation of a contiguous tensor)."""
    expected = 1
    for i in sorted(range(t.dim()), key=t.stride):
        if t.size(i) != 1 and t.stride(i) != expected:
            return False
        expected *= t.size(i)
    return True


def device_guard(t: torch.Tensor):
    """The context a launch on ``t``'s device runs in: that CUDA device made current (streams and launches go to
    the tensor's own GPU, whatever device the caller's thread has current); nothing on the host."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
