"""Counting the Triton kernel specializations a GPU run of the tests would compile, on a machine without a GPU.

With ``COGVIDEO_COUNT_SPECIALIZATIONS=<file>`` set (and ``TRITON_INTERPRET`` unset), ``tests/conftest.py`` calls
:func:`install` before any test module loads: Triton compiles nothing. Its active driver reports sm_90 and no device
(``bench/compile_gpu_kernels.install_target``), and ``JITFunction.run`` is replaced by the part of it that decides
what a launch compiles -- the JIT binder's specialization (dtypes, constexprs, 16-byte divisibility of pointers and
integers) and Triton's cache key --, which appends one JSON line ``{"kernel", "key", "dtype", "test"}`` (the first
tensor's dtype, the test's node id) to the file, then runs the launch in Triton's interpreter (an interpreted twin
of the kernel, its bf16 work-around on) so the test goes on and makes its later launches too. The kernel wrappers'
CUDA-tensor check is lifted (the inputs stay on the CPU; a pointer's alignment is the same there), and the ``gpu``
mark no longer skips (:data:`COUNTING`). The ``gpu``-marked tests record their first launch only
(:func:`interpret_launches`) and fail, as do the tests of the CUDA-tensor check; only the recorded keys matter.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

ENV = "COGVIDEO_COUNT_SPECIALIZATIONS"
COUNTING = bool(os.environ.get(ENV))
"""Whether this test process only counts specializations (then GPU tests run, on CPU tensors, with no kernel)."""
_ROOT = Path(__file__).resolve().parents[2]
_interpret = [True]


def interpret_launches(on: bool) -> None:
    """Whether the coming test's launches also run (interpreted) after their key is recorded: not for the
    ``gpu``-marked tests, whose real shapes the interpreter would take many minutes over (they then record their
    first launch and fail at its check)."""
    _interpret[0] = on


def install(path: str, arch: int = 90) -> None:
    """Count instead of compiling (see the module docstring); keys go to ``path``, one JSON line per launch."""
    import torch
    import triton.runtime.jit as jit
    from triton import knobs
    from triton.runtime import driver

    spec = importlib.util.spec_from_file_location("compile_gpu_kernels", _ROOT / "bench" / "compile_gpu_kernels.py")
    compile_gpu_kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compile_gpu_kernels)
    compile_gpu_kernels.install_target(arch)

    from triton.runtime.interpreter import InterpretedFunction

    twins: dict[int, InterpretedFunction] = {}

    def record(self, *args, grid, warmup, **kwargs):
        launch = dict(kwargs)
        kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
        for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # what run() adds, where this Triton has it
            if hasattr(knobs.compilation, name):
                kwargs[name] = getattr(knobs.compilation, name)
        device = driver.active.get_current_device()
        _cache, key_cache, _target, _backend, binder = self.device_caches[device]
        _bound, specialization, options = binder(*args, **kwargs)
        key = jit.compute_cache_key(key_cache, specialization, options)
        with open(path, "a") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]  # "<node id> (call)"
            dtype = next((str(a.dtype).removeprefix("torch.") for a in args if isinstance(a, torch.Tensor)), None)
            f.write(json.dumps({"kernel": self.__name__, "key": key, "dtype": dtype, "test": test}) + "\n")
        if not _interpret[0]:
            return None
        if "UPCAST" in launch and any(getattr(a, "dtype", None) == torch.bfloat16 for a in args):
            launch["UPCAST"] = True  # the interpreter's bf16 work-around (kernels/triton_common.py), not in the key
        return twin(self).run(*args, grid=grid, warmup=warmup, **launch)  # the launch itself, interpreted

    def twin(fn: jit.JITFunction) -> InterpretedFunction:
        return twins.setdefault(id(fn), InterpretedFunction(fn.fn))

    jit.JITFunction.run = record
    jit.JITFunction.__call__ = lambda self, *args, **kwargs: twin(self)(*args, **kwargs)  # a jit helper, in a kernel

    from cogvideo_engine.kernels import triton_attention, triton_local_attention

    for module in (triton_attention, triton_local_attention):
        module.check_launch = lambda *a, **k: None
