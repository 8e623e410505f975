"""The Triton kernels compile for the real GPUs (sm_90, sm_80) on this CPU machine: ``bench/compile_gpu_kernels.py
--quick`` (the stage-2 temporal channel's prefill -- the largest window launch -- and a 2-query decode step, split-KV
plus combine, and the DSR layer, bf16 and fp32, at the released shapes, through the kernels' wrappers and Triton's
JIT binder with a compile-only driver), in a subprocess without the interpreter. Each must compile, ask for no more
shared memory than the target gives a block, multiply its tiles on tensor cores (the prefill and the DSR layer; the
decode kernels are matrix-vector products): Hopper's wgmma on sm_90 in bf16, mma (3xTF32) in fp32; and spill nothing
on either target (the full table, every launch: ``bench/results/gpu-compile-*.json``)."""

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
    out = tmp_path / "compile.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "compile_gpu_kernels.py"), "--quick", "--dtypes",
                           "bf16,fp32", "--out", str(out)], capture_output=True, text=True, env=env, timeout=900,
                          check=False)
    print(done.stdout)
    assert out.exists(), done.stderr[-3000:]
    rows = json.loads(out.read_text())
    if site is not None:  # the report ran with the side install, not the venv's triton
        version = next(site.glob("triton-*.dist-info")).name.removesuffix(".dist-info").split("-")[1]
        assert {r["triton"] for r in rows} == {version}, (version, {r["triton"] for r in rows})
    def kind(label):  # "window ... prefill bf16", "window ... decode2 bf16" (+ " combine"), "local dsr bf16"
        words = label.split()
        return ("combine", words[-2]) if label.endswith("combine") else (words[-2], words[-1])
    assert sorted((r["target"], *kind(r["kernel"])) for r in rows) == sorted(
        (t, k, dt) for t in ("sm_90", "sm_80") for k in ("prefill", "decode2", "combine", "dsr")
        for dt in ("bf16", "fp32"))
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
    assert done.returncode == 0, done.stderr[-3000:]
