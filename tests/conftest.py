import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run in the interpreter on CPU (set before triton loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cogvideo_engine.config import tiny_config
from cogvideo_engine.kernels.rules import FrameGeometry
from cogvideo_engine.model import CogVideoModel, init_random_weights

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("COGVIDEO_GOLDEN_DIR", REPO.parent / "shared" / "golden"))

SMALL_GEOMETRY = FrameGeometry(grid=4, window=2, shift=1)
"""4x4 frames, window 2, shift 1: every stage-2 window case (edges, shifted, clamped regions) in 16 cells."""

SMALL_VOCAB = 20100
SMALL_BOI = 20099


def small_model(stage: int, seed: int = 0, geometry: FrameGeometry = SMALL_GEOMETRY,
                dtype=torch.float32) -> CogVideoModel:
    cfg = tiny_config(stage, num_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=SMALL_VOCAB,
                      geometry=geometry)
    return init_random_weights(CogVideoModel(cfg), seed=seed).to(dtype).eval()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "cogvideo-stage1" / "latest").is_file():
        pytest.skip(f"golden files not found at {GOLDEN_DIR} (set COGVIDEO_GOLDEN_DIR)")
    return GOLDEN_DIR


@pytest.fixture
def engine_home(tmp_path, monkeypatch):
    monkeypatch.setenv("COGVIDEO_ENGINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
