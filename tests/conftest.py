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


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "cogvideo-stage1" / "latest").is_file():
        pytest.skip(f"golden files not found at {GOLDEN_DIR} (set COGVIDEO_GOLDEN_DIR)")
    return GOLDEN_DIR


@pytest.fixture
def engine_home(tmp_path, monkeypatch):
    monkeypatch.setenv("COGVIDEO_ENGINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
