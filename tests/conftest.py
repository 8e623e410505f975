"""Fixtures shared by every test; the shared helpers themselves live in ``helpers/``."""

import os
from pathlib import Path

import pytest
import torch

from helpers import specializations

if not torch.cuda.is_available() and not specializations.COUNTING:  # the Triton kernels run in the interpreter on
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU (set before triton loads)
if specializations.COUNTING:  # count the specializations a GPU run would compile, compile nothing
    specializations.install(os.environ[specializations.ENV])

    def pytest_runtest_setup(item):
        specializations.interpret_launches(item.get_closest_marker("gpu") is None)

from helpers.golden import GOLDEN_DIR

if os.environ.get("COGVIDEO_FAILURE_LOG") and not os.environ.get("PYTEST_XDIST_WORKER"):
    def pytest_runtest_logreport(report):
        """Each failure's report, appended to $COGVIDEO_FAILURE_LOG as it arrives (the GPU check reads it when a
        step's timeout stops pytest before its summary)."""
        if report.failed:
            with open(os.environ["COGVIDEO_FAILURE_LOG"], "a") as log:
                log.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "cogvideo-stage1" / "latest").is_file():
        pytest.skip(f"golden files not found at {GOLDEN_DIR} (set COGVIDEO_GOLDEN_DIR)")
    return GOLDEN_DIR


@pytest.fixture
def engine_home(tmp_path, monkeypatch):
    monkeypatch.setenv("COGVIDEO_ENGINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
