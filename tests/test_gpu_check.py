"""The GPU check's contract, held on its CPU dry run: what comes back from the GPU machine (at most 8 plain files
of at most 16 MiB, plain names, no deeper than two folders), a global deadline checked before every step, a
summary of every step, and the Triton-only fallback when the extension does not build."""

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["gpu", "build", "info", "ctest", "kernel-tests", "engine-gpu-tests", "generation-real", "profile-real",
         "bench-window", "bench-local", "generation-medium"]
KILL_GRACE = 10  # timeout -k


def dry_run(out: Path, deadline: int, **env) -> tuple[dict, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "OUT"))}
    environ.update(GPU_CHECK_DRY_RUN="1", GPU_CHECK_DEADLINE_S=str(deadline), OUT=str(out), PYTHON=sys.executable,
                   **env)
    t0 = time.monotonic()
    subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], cwd=REPO, env=environ, capture_output=True,
                   text=True, timeout=deadline + 60, check=False)
    seconds = time.monotonic() - t0
    assert_device_contract(out)
    return json.loads((out / "summary.json").read_text()), seconds


def assert_device_contract(out: Path):
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["gpu-check.tar.gz", "steps.log", "summary.json"]
    assert len(files) <= 8 and all(p.parent == out for p in files)
    for p in files:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name) and p.stat().st_size <= 16 * 2**20
    assert sum(p.stat().st_size for p in files) <= 64 * 2**20
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        names = tar.getnames()
    assert "results/steps.jsonl" in names and "results/steps.log" in names and "results/run.json" in names


def assert_steps_within_deadline(summary: dict, deadline: int):
    names = [s["name"] for s in summary["steps"]]
    assert [n for n in names if n != "build-triton-only"] == STEPS
    for s in summary["steps"]:
        assert s["status"] in ("ok", "failed", "timeout", "skipped"), s
        if s["status"] != "skipped":
            assert s["start_s"] + s["limit_s"] + KILL_GRACE <= deadline, s  # each limit fits the deadline
            assert s["seconds"] <= s["limit_s"] + KILL_GRACE + 1, s


@pytest.mark.slow
def test_dry_run_keeps_the_deadline_and_brings_back_three_files(tmp_path):
    deadline = 40
    summary, seconds = dry_run(tmp_path / "out", deadline, GPU_CHECK_INSTALL="0")
    assert summary["mode"] == "full" and summary["dry_run"] is True and summary["deadline_s"] == deadline
    assert seconds <= deadline + 5
    assert_steps_within_deadline(summary, deadline)
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["build"]["reason"].startswith("GPU_CHECK_INSTALL=0")
    assert steps["info"]["status"] == "ok" and "reference" in steps["info"]["headline"]["available"]["cpu"]
    assert any(s["reason"] == "deadline" for s in summary["steps"])  # the last steps do not fit 40 s
    kernel = steps["kernel-tests"]  # ~20 s for 10-25 s of tests on 2 cores: done, or stopped by SIGINT
    assert kernel["status"] in ("ok", "timeout") and kernel["headline"].get("tests", 0) > 0, kernel


@pytest.mark.slow
def test_a_failed_build_falls_back_to_triton_only(tmp_path):
    deadline = 34
    summary, _ = dry_run(tmp_path / "out", deadline, GPU_CHECK_SIMULATE_BUILD_FAILURE="1")
    assert summary["mode"] == "triton-only"
    assert_steps_within_deadline(summary, deadline)
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["build"]["status"] == "failed" and steps["build-triton-only"]["status"] == "ok"
    assert steps["ctest"]["status"] == "skipped" and "extension" in steps["ctest"]["reason"]
    assert steps["bench-window"]["reason"] in ("deadline", "needs the compiled extension (triton-only)")


def test_benchmark_rows_reach_the_file_as_they_are_measured(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from run_attention import JsonRows
    finally:
        sys.path.remove(str(REPO / "bench"))
    rows = JsonRows(tmp_path / "rows.json")
    assert json.loads((tmp_path / "rows.json").read_text()) == []
    for i in range(3):
        rows.append({"bench": "x", "case": f"c{i}", "seconds": 0.1 * i})
        assert [r["case"] for r in json.loads((tmp_path / "rows.json").read_text())] == [f"c{j}" for j in range(i + 1)]
    assert not list(tmp_path.glob("*.tmp"))
