"""Fixtures shared by every test; the shared helpers themselves live in ``helpers/``."""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run in the interpreter on CPU (set before triton loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")

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
