"""The embedded default model: small random CogVideo assets in the real geometry, built on first use.

Written once to ``$COGVIDEO_ENGINE_HOME/default-v<version>`` (default ``~/.cache/cogvideo_engine``), laid out
like the released model folder, so the CLI and examples run anywhere without the 14 GB released files:

    cogvideo-stage1/, cogvideo-stage2/   SAT checkpoints (2 layers x 64, 4 heads, vocab 150010)
    cogview2-dsr/                         super-resolution checkpoint, same tiny backbone, 60x60 from 20x20
    ice_text.model                        a tiny sentencepiece model trained on an embedded corpus
    ice_image.pt                          icetk-format image decoder (decs.1 + codebook), random weights
    cluster_label2.npy                    20000 token -> 500 cluster labels, random

Every weight is random: videos and scores are numbers, not pictures of anything.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..models.cogvideo import CogVideoModel
from ..models.config import tiny_config, tiny_dsr_config
from ..models.random_init import init_random_weights, random_dsr_model, random_image_decoder_state
from .sat import write_sat_checkpoint

DEFAULT_MODEL_VERSION = 3
WEIGHTS_SEED = 1234
_CORPUS = ["a cat plays the piano in a sunny room", "a dog runs on the beach at sunset",
           "people dance in the rain", "the sea under a cloudy sky", "一只猫在弹钢琴", "视频 高清摄影",
           "4.0秒 2.0秒 1.0秒 0.5秒", "a man is riding a horse", "lions walking in the grass"]


def engine_home() -> Path:
    return Path(os.environ.get("COGVIDEO_ENGINE_HOME", Path.home() / ".cache" / "cogvideo_engine"))


def _write_tokenizer(path: Path):
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_CORPUS * 10), model_writer=buf, vocab_size=60,
                                   user_defined_symbols=["<n>"], character_coverage=1.0, num_threads=1,
                                   minloglevel=2)
    path.write_bytes(buf.getvalue())


def _write_image_decoder(path: Path, seed: int):
    torch.save({"module": {k: v.half() for k, v in random_image_decoder_state(seed).items()}}, path)


def _write_assets(root: Path):
    import numpy as np

    for stage in (1, 2):
        model = init_random_weights(CogVideoModel(tiny_config(stage)), seed=WEIGHTS_SEED + stage)
        write_sat_checkpoint(root / f"cogvideo-stage{stage}", model, iteration=1000 * stage)
    write_sat_checkpoint(root / "cogview2-dsr", random_dsr_model(tiny_dsr_config(), seed=WEIGHTS_SEED + 3),
                         iteration=20000)
    _write_tokenizer(root / "ice_text.model")
    _write_image_decoder(root / "ice_image.pt", WEIGHTS_SEED)
    labels = torch.randperm(20000, generator=torch.Generator().manual_seed(WEIGHTS_SEED)) % 500
    np.save(root / "cluster_label2.npy", labels.numpy().astype(np.int64))


def default_assets_root() -> Path:
    """Folder of the embedded default assets (the layout of the released model folder), created if missing."""
    target = engine_home() / f"default-v{DEFAULT_MODEL_VERSION}"
    if (target / "cluster_label2.npy").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        _write_assets(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "cluster_label2.npy").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_model_path(stage: int = 1) -> Path:
    """Directory of the embedded default stage-``stage`` checkpoint (SAT layout), created if missing."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    return default_assets_root() / f"cogvideo-stage{stage}"
