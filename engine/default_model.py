"""The embedded default model: a small random CogVideo checkpoint in the real geometry, built on first use.

It is written once, in the exact SwissArmyTransformer layout, to ``$COGVIDEO_ENGINE_HOME`` (default
``~/.cache/cogvideo_engine``), so the CLI and examples run anywhere without the 14 GB released files. Its
weights are random: scores are meaningful as numbers, not as a judgement of a video.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .checkpoint import write_sat_checkpoint
from .config import tiny_config
from .model import CogVideoModel, init_random_weights

DEFAULT_MODEL_VERSION = 1
DEFAULT_SEED = 1234


def engine_home() -> Path:
    return Path(os.environ.get("COGVIDEO_ENGINE_HOME", Path.home() / ".cache" / "cogvideo_engine"))


def default_model_path(stage: int = 1) -> Path:
    """Directory of the embedded default stage-``stage`` checkpoint (SAT layout), created if missing."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    target = engine_home() / f"default-stage{stage}-v{DEFAULT_MODEL_VERSION}"
    if (target / "latest").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    model = init_random_weights(CogVideoModel(tiny_config(stage)), seed=DEFAULT_SEED + stage)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        write_sat_checkpoint(staging, model, iteration=1000 * stage)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "latest").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
