"""Loading the released assets into models: the CogVideo stage models (SAT or converted), the DSR model and the
icetk image decoder; converting a stage model to safetensors.

Converted directory (written by :func:`convert`, loads in seconds through mmap)::

    <dir>/config.json                            {"format": "cogvideo-engine", "config": ModelConfig}
    <dir>/model.safetensors                      the same state dict, same names

Every loader reads its state dict, then builds the model through :func:`.sat.build_from_state`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..models.cogvideo import CogVideoModel
from ..models.config import MODEL_CLASSES, DsrConfig, ModelConfig
from ..models.dsr import DsrModel
from ..models.vq_decoder import ImageDecoder
from .sat import (SAT_CONFIG, SAT_TRACKER, CheckpointError, build_from_state, checked_meta_module, read_sat_state_dict,
                  safe_torch_load, sat_checkpoint_file)

CONVERTED_CONFIG = "config.json"
CONVERTED_WEIGHTS = "model.safetensors"
CONVERTED_FORMAT = "cogvideo-engine"


# -- CogVideo stage models ---------------------------------------------------------------------------------

def read_sat_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict]:
    directory = Path(directory)
    file = directory / SAT_CONFIG
    if not file.is_file():
        raise CheckpointError(f"{directory} has no {SAT_CONFIG}: it fixes the model shape")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    model_class = raw.get("model_class")
    if model_class is not None and model_class not in MODEL_CLASSES:
        raise CheckpointError(f"{file} describes a {model_class!r}, not a CogVideo model "
                              f"(expected model_class in {MODEL_CLASSES})")
    stage = raw.get("cogvideo_stage", 1)
    if stage not in (1, 2):
        raise CheckpointError(f"{file} has cogvideo_stage {stage!r}; CogVideo stages are 1 and 2")
    try:
        return ModelConfig.from_sat_json(raw), raw
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def read_model_config(path: str | os.PathLike, *, stage: int | None = None) -> tuple[ModelConfig, str]:
    """The config of the CogVideo stage model in directory ``path`` and its format: ``"converted"``
    (``config.json`` + ``model.safetensors``) or ``"sat"`` (the released layout). ``stage``: if given, the
    checkpoint's stage must equal it. Reads no weights; raises :class:`CheckpointError` naming the problem."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if (path / CONVERTED_CONFIG).is_file():
        config, fmt = _read_converted_config(path), "converted"
    elif (path / SAT_TRACKER).is_file() or (path / SAT_CONFIG).is_file():
        config, fmt = read_sat_config(path)[0], "sat"
    else:
        raise CheckpointError(f"{path} is neither a SwissArmyTransformer checkpoint ('{SAT_TRACKER}' + "
                              f"'{SAT_CONFIG}') nor a converted one ('{CONVERTED_CONFIG}' + '{CONVERTED_WEIGHTS}')")
    if stage is not None and config.stage != stage:
        raise CheckpointError(f"{path} holds the stage-{config.stage} model, but stage {stage} was asked for")
    return config, fmt


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               *, stage: int | None = None) -> CogVideoModel:
    """Load a CogVideo stage model from a SAT checkpoint directory or a converted directory.

    ``dtype``: the parameter dtype in memory (the released files are fp16 on disk; fp16 stays memory-mapped
    on CPU). ``stage``: if given, the checkpoint's ``cogvideo_stage`` must equal it. Raises
    :class:`CheckpointError` with a message naming the problem.
    """
    path = Path(path)
    config, fmt = read_model_config(path, stage=stage)
    if fmt == "converted":
        _, state, source = _read_converted(path)
    else:
        state, source = read_sat_state_dict(path), str(sat_checkpoint_file(path))
    return build_from_state(lambda: CogVideoModel(config), state, source, dtype, device)


def _read_converted_config(path: Path) -> ModelConfig:
    meta = json.loads((path / CONVERTED_CONFIG).read_text())
    if meta.get("format") != CONVERTED_FORMAT:
        raise CheckpointError(f"{path / CONVERTED_CONFIG} is not a {CONVERTED_FORMAT} config")
    try:
        return ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONVERTED_CONFIG} has an invalid config: {e}") from None


def _read_converted(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = _read_converted_config(path)
    weights = path / CONVERTED_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is truncated or corrupted ({e})") from None
    return config, state, str(weights)


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write a SAT (or converted) checkpoint as ``dst/config.json`` + ``dst/model.safetensors``.

    ``dtype`` None keeps the stored dtype (fp16 for the released files).
    """
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if (src / CONVERTED_CONFIG).is_file():
        config, state, _ = _read_converted(src)
    else:
        config, _ = read_sat_config(src)
        state = read_sat_state_dict(src)
        checked_meta_module(lambda: CogVideoModel(config), state, str(sat_checkpoint_file(src)))
    dst.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}
    save_file(state, dst / CONVERTED_WEIGHTS)
    (dst / CONVERTED_CONFIG).write_text(json.dumps({"format": CONVERTED_FORMAT, "config": config.to_dict()},
                                                   indent=2))
    return dst


# -- the super-resolution model and the image decoder -----------------------------------------------------

def read_dsr_config(directory: str | os.PathLike) -> DsrConfig:
    """The model shape of a ``cogview2-dsr`` directory: backbone keys from ``model_config.json`` when present
    (the original builds the DSR model from the CogVideo arguments, so defaults are CogVideo's)."""
    file = Path(directory) / SAT_CONFIG
    raw: dict[str, Any] = {}
    if file.is_file():
        try:
            raw = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    if raw.get("model_class") in MODEL_CLASSES:
        raise CheckpointError(f"{file} describes a CogVideo stage model ({raw['model_class']}), not the "
                              f"cogview2-dsr super-resolution model")
    try:
        return DsrConfig.from_sat_json(raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def load_dsr_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> DsrModel:
    """Load the super-resolution model from a SwissArmyTransformer ``cogview2-dsr`` directory.

    Raises :class:`CheckpointError` naming the problem (missing files, wrong tensors, unsafe pickle).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"super-resolution checkpoint directory {path} does not exist")
    config = read_dsr_config(path)
    state, source = read_sat_state_dict(path), str(sat_checkpoint_file(path))
    return build_from_state(lambda: DsrModel(config), state, source, dtype, device)


def load_image_decoder(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu") -> ImageDecoder:
    """Load the compress-rate-8 decoder from icetk's ``ice_image.pt`` (only the tensors it needs)."""
    sd = safe_torch_load(path)
    if "module" not in sd or not isinstance(sd["module"], dict):
        raise CheckpointError(f"{path} has no 'module' state dict: not an icetk ice_image.pt")
    with torch.device("meta"):
        wanted = set(ImageDecoder().state_dict())
    state = {k: v for k, v in sd["module"].items() if k in wanted}
    return build_from_state(ImageDecoder, state, str(path), dtype, device)
