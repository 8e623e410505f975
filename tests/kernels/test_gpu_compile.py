"""The Triton kernels compile for the real GPUs (sm_90, sm_80) on this CPU machine: ``bench/compile_gpu_kernels.py``
compiles every launch the runner and the DSR model make at the released shapes in bf16 and fp16 (each pass,
channel and parity in prefill and in decode steps of 1 and 2 queries -- split-KV plus combine --, and the DSR layer;
through the kernels' wrappers and Triton's JIT binder with a compile-only driver) and, in fp32, the quick set (the
stage-2 temporal channel's prefill -- the largest window launch --, its 2-query decode step and the DSR layer), one
subprocess per target, without the interpreter. Each must compile, ask for no more shared memory than the target
gives a block, multiply its tiles on tensor cores (the prefills and the DSR layer; the decode kernels are
matrix-vector products): Hopper's wgmma on sm_90 in bf16/fp16, mma (3xTF32) in fp32; and spill nothing on either
target (the same table with fp32 in full: ``bench/results/gpu-compile-*.json``)."""

import collections
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


GPU_MACHINE_TRITON = "COGVIDEO_GPU_MACHINE_TRITON"
"""Environment variable naming a folder with the GPU machine's Triton in it (``pip install --target``): set by
``scripts/test.sh``, which installs it there, so the report also runs with the Triton the kernels will meet."""


def _nvidia_backend(site: Path | None) -> str | None:
    """Why the Triton in ``site`` (None: the suite's own) cannot compile for NVIDIA GPUs here, or None."""
    if site is None:
        spec = importlib.util.find_spec("triton.backends.nvidia")
        if importlib.util.find_spec("triton") is None or spec is None:
            return "triton (with its NVIDIA backend) is not installed"
        backend = Path(spec.origin).parent
    else:
        backend = site / "triton" / "backends" / "nvidia"
        if not backend.is_dir():
            return f"{site} holds no triton with an NVIDIA backend (scripts/test.sh installs the GPU machine's there)"
    missing = [t for t in ("ptxas", "cuobjdump") if not (backend / "bin" / t).exists()]
    return f"triton's NVIDIA backend lacks {', '.join(missing)}" if missing else None


@pytest.mark.parametrize("triton", ["suite", "gpu-machine"])
def test_triton_kernels_compile_for_sm90_and_sm80(tmp_path, triton):
    site = None
    if triton == "gpu-machine":
        if not os.environ.get(GPU_MACHINE_TRITON):
            pytest.skip(f"{GPU_MACHINE_TRITON} is unset (scripts/test.sh sets it)")
        site = Path(os.environ[GPU_MACHINE_TRITON]).resolve()
    why = _nvidia_backend(site)
    if why:
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1")  # (the report compiles into a cold cache of its own)
    if site is not None:  # ahead of the venv's own triton; torch and the package stay the venv's
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    reports, logs, runs = [], [], []
    for target in ("90", "80"):  # one process per target: the two compile side by side
        reports.append(tmp_path / f"compile-sm{target}.json")
        logs.append(tmp_path / f"compile-sm{target}.log")
        with logs[-1].open("w") as log:
            runs.append(subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "compile_gpu_kernels.py"), "--targets", target, "--dtypes",
                 "bf16,fp16", "--quick-dtypes", "fp32", "--out", str(reports[-1])],
                stdout=log, stderr=subprocess.STDOUT, text=True, env=env))
    try:
        for run in runs:
            run.wait(timeout=900)
    finally:
        for run in runs:
            run.kill()
    outputs = [log.read_text() for log in logs]
    print(*outputs, sep="\n")
    for report, output in zip(reports, outputs, strict=True):
        assert report.exists(), output[-3000:]
    rows = [row for report in reports for row in json.loads(report.read_text())]
    if site is not None:  # the report ran with the side install, not the venv's triton
        version = next(site.glob("triton-*.dist-info")).name.removesuffix(".dist-info").split("-")[1]
        assert {r["triton"] for r in rows} == {version}, (version, {r["triton"] for r in rows})
    def kind(label):  # "window ... prefill bf16", "window ... decode2 bf16" (+ " combine"), "local dsr bf16"
        words = label.split()
        return ("combine", words[-2]) if label.endswith("combine") else (words[-2], words[-1])
    counts = collections.Counter((r["target"], *kind(r["kernel"])) for r in rows)
    # per target and dtype, every launch: 10 prefills (first frame 2 parities, stage 1 and stage 2 2 channels x 2
    # parities), 20 decode launches of 1 and 2 queries with their 20 combines, the DSR layer; fp32 the quick set
    full = {"prefill": 10, "decode1": 10, "decode2": 10, "combine": 20, "dsr": 1}
    quick = {"prefill": 1, "decode2": 1, "combine": 1, "dsr": 1}
    assert counts == {(t, k, dt): n for t in ("sm_90", "sm_80") for dt, kinds in
                      (("bf16", full), ("fp16", full), ("fp32", quick)) for k, n in kinds.items()}, counts
    for r in rows:
        assert r["compiled"], r
        assert 0 < r["registers"] <= 255 and r["ptxas_registers"] == r["registers"], r
        assert r["dynamic_shared_bytes"] + r["static_shared_bytes"] <= r["shared_limit_bytes"], r
        assert r["spill_store_bytes"] is not None, r
        assert r["spill_store_bytes"] == r["spill_load_bytes"] == 0, r  # no spills on either target
        tiles = "prefill" in r["kernel"] or r["kernel"].startswith("local")
        if r["kernel"].endswith("fp32"):  # 3xTF32 on 32-row tiles: mma.sync (a warpgroup's wgmma needs 64 rows)
            assert r["mma"] == tiles and not r["wgmma"], r
        else:
            assert r["wgmma"] == (tiles and r["target"] == "sm_90"), r
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
