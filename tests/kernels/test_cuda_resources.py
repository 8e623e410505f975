"""The CUDA kernels as built (the extension's sm_80 and sm_90a objects, where the build had nvcc): no function uses
local memory or a stack beyond :data:`KNOWN_STACK` (nothing spills), and its static shared memory fits a block on
both targets.
Read with ``cuobjdump --dump-resource-usage`` (the CUDA toolkit's, or the one the triton wheel ships)."""

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cogvideo_engine.kernels.launch import SHARED_MEMORY_PER_BLOCK

SHARED_LIMIT = {"sm_80": SHARED_MEMORY_PER_BLOCK[80], "sm_90a": SHARED_MEMORY_PER_BLOCK[90]}
KNOWN_STACK = {("sm_90a", "window_attention_kernelI13__nv_bfloat16Li64"): 8,  # its text bias, kept across the walk
               ("sm_90a", "window_attention_kernelI6__halfLi64"): 8,
               ("sm_90a", "window_attention_kernelIfLi64"): 8,
               ("sm_80", "local_attention_kernelI13__nv_bfloat16Li32"): 8,
               ("sm_80", "local_attention_kernelI6__halfLi32"): 8}
"""Functions that keep one value on the stack today (an STL/LDL pair in the SASS, nvcc 13.0): no more than this, and
no other function may (each further byte is a spill)."""


def _cuobjdump() -> str | None:
    spec = importlib.util.find_spec("triton.backends.nvidia")
    bundled = Path(spec.origin).parent / "bin" / "cuobjdump" if spec is not None else None
    return str(bundled) if bundled is not None and bundled.exists() else shutil.which("cuobjdump")


def test_cuda_kernels_do_not_spill():
    try:
        from cogvideo_engine import _C
    except ImportError:
        pytest.skip("the extension is not built (COGVIDEO_NO_EXT=1?)")
    if not _C.has_cuda():
        pytest.skip("the extension was built without CUDA (no nvcc)")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or the triton wheel)")
    report = subprocess.run([tool, "--dump-resource-usage", _C.__file__], capture_output=True, text=True,
                            timeout=300, check=True).stdout
    functions, arch = [], None
    for line in report.splitlines():
        if line.startswith("arch = "):
            arch = line.split("=")[1].strip()
        elif line.strip().startswith("Function "):
            functions.append({"arch": arch, "name": line.split("Function ", 1)[1].rstrip(":")})
        elif "REG:" in line and functions:
            functions[-1].update({k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)})
    assert {f["arch"] for f in functions} == set(SHARED_LIMIT), report[:2000]
    for f in functions:
        allowed = next((n for (arch, part), n in KNOWN_STACK.items() if arch == f["arch"] and part in f["name"]), 0)
        assert f["STACK"] <= allowed and f["LOCAL"] == 0, f  # spills and local arrays live there
        assert 0 < f["REG"] <= 255 and f["SHARED"] <= SHARED_LIMIT[f["arch"]], f
