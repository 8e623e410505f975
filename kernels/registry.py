"""Attention backends by name: which exist, which can run on a device, and why not.

A backend is a function with the contract of :func:`cogvideo_engine.kernels.reference.window_attention`.
``get_backend(None, device)`` picks the best available one; a name forces it (with an error saying why it
cannot run). Backends: ``reference`` (dense masks, PyTorch, any device), ``triton`` (fused kernel; CUDA, or
CPU under ``TRITON_INTERPRET=1`` for tests), ``cpu`` and ``cuda`` (the csrc C++/CUDA kernels in
``cogvideo_engine._C``).

The super-resolution model's local attention (the contract of
:func:`cogvideo_engine.kernels.local_reference.local_attention`) has the same four backends under the same
names and the same preference: :func:`get_local_backend`.

Dependencies point down: the fused backends handed out are the registered ops of :mod:`.ops` (which imports
the kernel modules), the reference ones the plain functions of :mod:`.reference` / :mod:`.local_reference`;
statuses come from :func:`.triton_common.triton_status` and :func:`.csrc_ops.csrc_status`. Those imports sit
inside the functions, so importing the registry (as the engine's model modules do) loads neither Triton nor
the extension until a status or a backend is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

WindowAttentionFn = Callable[..., torch.Tensor]
LocalAttentionFn = Callable[..., torch.Tensor]

# Measured on CPU (bench/results/attention-cpu-*.json): the C++ kernel beats the dense reference on every case.
# On CUDA no measurement exists yet: Triton (tensor-core tiles) first, then the CUDA C++ kernel (CUDA cores).
PREFERENCE = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}
NAMES = ("reference", "triton", "cpu", "cuda")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str


def _triton_status(device_type: str) -> BackendStatus:
    from .triton_common import triton_status

    ok, why = triton_status()
    if not ok:
        return BackendStatus("triton", False, why)
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return BackendStatus("triton", False, f"{why}, but no CUDA device is visible")
        return BackendStatus("triton", True, why)
    if os.environ.get("TRITON_INTERPRET") == "1":
        return BackendStatus("triton", True, f"{why} in the interpreter (TRITON_INTERPRET=1): correct, slow")
    return BackendStatus("triton", False, f"{why}; on {device_type} it runs only under TRITON_INTERPRET=1")


def _csrc_status(name: str, device_type: str) -> BackendStatus:
    from .csrc_ops import csrc_status

    if device_type != name:
        return BackendStatus(name, False, f"the {name} kernel runs on {name} tensors, not {device_type}")
    return BackendStatus(name, *csrc_status(name))


def backend_status(device: torch.device | str = "cpu") -> list[BackendStatus]:
    """Every backend with whether it can run on ``device`` and why (not)."""
    device_type = torch.device(device).type
    return [
        BackendStatus("reference", True, "dense masks in PyTorch: the oracle, any device"),
        _triton_status(device_type),
        _csrc_status("cpu", device_type),
        _csrc_status("cuda", device_type),
    ]


def _best(statuses: list[BackendStatus], device: torch.device | str) -> str:
    available = {s.name for s in statuses if s.available}
    return next(n for n in PREFERENCE.get(torch.device(device).type, ("reference",)) if n in available)


def _resolve(name: str | None, statuses: list[BackendStatus], device: torch.device | str, task: str) -> str:
    """``name`` (None/"auto": the best available) checked against ``statuses``; errors name the reason."""
    if name in (None, "auto"):
        return _best(statuses, device)
    status = {s.name: s for s in statuses}
    if name not in status:
        raise ValueError(f"unknown attention backend {name!r}: expected one of {', '.join(NAMES)}")
    if not status[name].available:
        raise ValueError(f"attention backend {name!r} cannot run{task} on {device}: {status[name].reason}")
    return name


def default_backend(device: torch.device | str = "cpu") -> str:
    """Name of the best backend available on ``device``."""
    return _best(backend_status(device), device)


def get_backend(name: str | None, device: torch.device | str = "cpu") -> WindowAttentionFn:
    """The attention function of backend ``name`` (``None`` or ``"auto"``: the best available on ``device``)."""
    name = _resolve(name, backend_status(device), device, "")
    if name == "reference":
        from .reference import window_attention
        return window_attention
    from . import ops
    return ops.window_attention_triton_op if name == "triton" else ops.window_attention_csrc_op


def _local_status(status: BackendStatus) -> BackendStatus:
    """A window-attention backend's status, narrowed to whether its build has the local-attention kernel."""
    if status.available and status.name in ("cpu", "cuda"):
        from .csrc_ops import csrc_status

        return BackendStatus(status.name, *csrc_status(status.name, "local_attention"))
    return status


def local_backend_status(device: torch.device | str = "cpu") -> list[BackendStatus]:
    """Every local-attention backend with whether it can run on ``device`` and why (not)."""
    return [_local_status(s) for s in backend_status(device)]


def get_local_backend(name: str | None, device: torch.device | str = "cpu") -> LocalAttentionFn:
    """The super-resolution local-attention function of backend ``name`` (None/"auto": best on ``device``)."""
    name = _resolve(name, local_backend_status(device), device, " the local attention")
    if name == "reference":
        from .local_reference import local_attention
        return local_attention
    from . import ops
    return ops.local_attention_triton_op if name == "triton" else ops.local_attention_csrc_op
