"""What the GPU check's kernel tests will compile fits the time it gives them: the Triton tests
(``test_triton_attention.py``, ``test_triton_local_attention.py``, ``-m "not compile_heavy"`` as the GPU check runs
them) run in a subprocess that counts each launch's specialization through Triton's JIT binder instead of compiling
it (``tests/helpers/specializations.py``), and the distinct (kernel, cache key) pairs, priced at the compile times
``bench/compile_gpu_kernels.py`` measured per kernel and dtype (:data:`COMPILE_REPORT`, sm_90) and spread over the
check's pytest workers, must take at most half of the ``kernel-tests`` step's budget in ``bench/gpu_check.sh`` (the
other half runs the tests). Not counted: the few launches of ``test_backends.py``'s Triton model tests and the
``torch.compile`` / CUDA-graph tests, which the other half covers too."""

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRITON_TESTS = ["tests/kernels/test_triton_attention.py", "tests/kernels/test_triton_local_attention.py"]
KERNEL_OF_LABEL = [("combine", "_decode_combine_kernel"), ("decode", "_window_decode_kernel"),
                   ("prefill", "_window_attention_kernel"), ("local", "_local_attention_kernel")]
"""Which Triton kernel a row of the compile report is (first word of its label that matches)."""

COMPILE_REPORT = "bench/results/gpu-compile-2026-12-03.json"
"""The compile times priced in: every launch at the released shapes, bf16 / fp16 / fp32, Triton's compile alone."""

pytestmark = pytest.mark.slow


def check_budget() -> tuple[int, int]:
    """(the kernel-tests step's seconds, its pytest workers on the GPU machine's 16 cores), from gpu_check.sh."""
    script = (REPO / "bench" / "gpu_check.sh").read_text()
    budget = int(re.search(r"step kernel-tests (\d+) -- .*\$\(pytest_parallel\)", script).group(1))
    cap = int(re.search(r"\[ \$n -gt (\d+) \] && n=", script).group(1))
    return budget, min(16 // 2, cap)


def compile_seconds() -> dict[tuple[str, str], float]:
    """Mean sm_90 compile seconds by (kernel, dtype) in :data:`COMPILE_REPORT`."""
    rows = [r for r in json.loads((REPO / COMPILE_REPORT).read_text()) if r["target"] == "sm_90"]
    seconds = collections.defaultdict(list)
    names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    for r in rows:
        label = r["kernel"]
        kernel = next(k for word, k in KERNEL_OF_LABEL if word in label)
        seconds[kernel, names[label.split()[-2] if label.endswith("combine") else label.split()[-1]]].append(
            r["compile_s"])
    return {k: sum(v) / len(v) for k, v in seconds.items()}


def test_gpu_tests_compile_within_the_gpu_checks_budget(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "keys.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(COGVIDEO_COUNT_SPECIALIZATIONS=str(out), TRITON_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not compile_heavy",
                           *TRITON_TESTS], cwd=REPO, capture_output=True, text=True, env=env, timeout=1500,
                          check=False)  # its gpu tests and its tests of the CUDA-tensor check fail in this mode
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    launches = [json.loads(line) for line in out.read_text().splitlines()]
    distinct = {(r["kernel"], r["key"]): r["dtype"] for r in launches}
    per_kernel = collections.Counter(k for k, _ in distinct)
    assert set(per_kernel) == {k for _, k in KERNEL_OF_LABEL}, per_kernel  # every kernel was reached
    assert len({r["test"] for r in launches}) >= 100, "the counting run stopped early:\n" + done.stdout[-3000:]
    failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
    expected = ("::test_gpu_", "::test_input_checks", "::test_input_errors")  # see helpers/specializations.py
    assert all(any(e in f for e in expected) for f in failed), failed

    costs = compile_seconds()
    fallback = {k: max(s for (kk, _), s in costs.items() if kk == k) for k, _ in costs}
    serial = sum(costs.get((k, dtype), fallback[k]) for (k, _), dtype in distinct.items())
    budget, workers = check_budget()
    print(f"{len(launches)} launches, {len(distinct)} specializations {dict(per_kernel)}: ~{serial:.0f} s of "
          f"compiling, {serial / workers:.0f} s on {workers} workers against the step's {budget} s")
    assert serial / workers <= budget / 2, (serial, workers, budget)
