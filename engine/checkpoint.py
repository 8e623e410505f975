"""Loading and writing CogVideo checkpoints: the released SwissArmyTransformer format and our safetensors form.

SwissArmyTransformer (SAT) directory, as released::

    <dir>/latest                                 text: the iteration (e.g. "27000") or "release"
    <dir>/model_config.json                      backbone shape; its keys override the defaults
    <dir>/<iter>/mp_rank_00_model_states.pt      torch.save dict; the state dict is under "module" (fp16)

Converted directory (written by :func:`convert`, loads in seconds through mmap)::

    <dir>/config.json                            {"format": "cogvideo-engine", "config": ModelConfig}
    <dir>/model.safetensors                      the same state dict, same names

Loading is safe by default: ``torch.load(weights_only=True, mmap=True)`` with only the harmless globals
that SAT/DeepSpeed bookkeeping needs (NumPy's RNG state, ``argparse.Namespace``) allowed. A pickle that
needs anything else is refused with the list of what it asked for; nothing in it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import MODEL_CLASSES, ModelConfig
from .model import CogVideoModel

SAT_CONFIG = "model_config.json"
SAT_TRACKER = "latest"
CONVERTED_CONFIG = "config.json"
CONVERTED_WEIGHTS = "model.safetensors"
CONVERTED_FORMAT = "cogvideo-engine"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, unsafe or does not fit the model; the message says which."""


# -- reading SAT directories -----------------------------------------------------------------------------

def _bookkeeping_globals() -> list:
    """Globals SAT/DeepSpeed bookkeeping pickles need that cannot run code: NumPy RNG state, Namespace."""
    import numpy as np

    allowed: list = [np.ndarray, np.dtype, argparse.Namespace]
    allowed += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    allowed += [(reconstruct, "numpy.core.multiarray._reconstruct"),
                (reconstruct, "numpy._core.multiarray._reconstruct")]
    return allowed


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def safe_torch_load(path: str | os.PathLike) -> dict:
    """``torch.load`` that never executes code from the file; raises :class:`CheckpointError` on failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    zipped = _is_zip(path)
    try:
        with torch.serialization.safe_globals(_bookkeeping_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001  (legacy, non-zip files cannot be inspected)
            unsafe = []
        names = ", ".join(unsafe) if unsafe else "globals outside the weights-only allow-list"
        raise CheckpointError(
            f"{path} was refused: unpickling it needs {names}, which could run arbitrary code, so nothing in it "
            f"was executed. Released CogVideo checkpoints need none of these. If you trust the file, convert it "
            f"in a separate process you trust and load the result. ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        kind = "truncated or corrupted" if zipped or path.stat().st_size > 0 else "empty"
        raise CheckpointError(f"{path} is {kind} and cannot be read ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def sat_checkpoint_file(directory: str | os.PathLike) -> Path:
    """Resolve ``<dir>/latest`` to ``<dir>/<iter>/mp_rank_00_model_states.pt``."""
    directory = Path(directory)
    tracker = directory / SAT_TRACKER
    if not tracker.is_file():
        raise CheckpointError(f"{directory} has no '{SAT_TRACKER}' file: a SwissArmyTransformer checkpoint "
                              f"directory names its iteration there")
    iteration = tracker.read_text().strip()
    if not iteration:
        raise CheckpointError(f"{tracker} is empty: it should hold the iteration (e.g. 27000) or 'release'")
    file = directory / iteration / "mp_rank_00_model_states.pt"
    if not file.is_file():
        raise CheckpointError(f"{tracker} names iteration {iteration!r} but {file} does not exist")
    return file


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


def read_sat_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    file = sat_checkpoint_file(directory)
    sd = safe_torch_load(file)
    if "module" not in sd or not isinstance(sd["module"], dict):
        raise CheckpointError(f"{file} has no 'module' state dict (keys: {sorted(map(str, sd))[:12]})")
    return sd["module"]


# -- checking and assembling -------------------------------------------------------------------------------

def check_state_dict(expected: dict[str, torch.Size], found: dict[str, torch.Tensor], source: str):
    """Raise one :class:`CheckpointError` listing every missing, unexpected and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(expected[k])}"
                       for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k]))
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match the model it describes:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if items:
                parts.append(f"  {len(items)} {title}: " + "; ".join(items))
        raise CheckpointError("\n".join(parts))


def _assemble(config: ModelConfig, state: dict[str, torch.Tensor], source: str, dtype: torch.dtype,
              device: torch.device | str) -> CogVideoModel:
    with torch.device("meta"):
        model = CogVideoModel(config)
    check_state_dict({k: v.shape for k, v in model.state_dict().items()}, state, source)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval().requires_grad_(False)


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               *, stage: int | None = None) -> CogVideoModel:
    """Load a CogVideo stage model from a SAT checkpoint directory or a converted directory.

    ``dtype``: the parameter dtype in memory (the released files are fp16 on disk; fp16 stays memory-mapped
    on CPU). ``stage``: if given, the checkpoint's ``cogvideo_stage`` must equal it. Raises
    :class:`CheckpointError` with a message naming the problem.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if (path / CONVERTED_CONFIG).is_file():
        config, state, source = _read_converted(path)
    elif (path / SAT_TRACKER).is_file() or (path / SAT_CONFIG).is_file():
        config, _ = read_sat_config(path)
        state, source = read_sat_state_dict(path), str(sat_checkpoint_file(path))
    else:
        raise CheckpointError(f"{path} is neither a SwissArmyTransformer checkpoint ('{SAT_TRACKER}' + "
                              f"'{SAT_CONFIG}') nor a converted one ('{CONVERTED_CONFIG}' + '{CONVERTED_WEIGHTS}')")
    if stage is not None and config.stage != stage:
        raise CheckpointError(f"{path} holds the stage-{config.stage} model, but stage {stage} was asked for")
    return _assemble(config, state, source, dtype, device)


# -- converted (safetensors) directories -------------------------------------------------------------------

def _read_converted(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = json.loads((path / CONVERTED_CONFIG).read_text())
    if meta.get("format") != CONVERTED_FORMAT:
        raise CheckpointError(f"{path / CONVERTED_CONFIG} is not a {CONVERTED_FORMAT} config")
    weights = path / CONVERTED_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is truncated or corrupted ({e})") from None
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONVERTED_CONFIG} has an invalid config: {e}") from None
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
        with torch.device("meta"):
            expected = {k: v.shape for k, v in CogVideoModel(config).state_dict().items()}
        check_state_dict(expected, state, str(sat_checkpoint_file(src)))
    dst.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}
    save_file(state, dst / CONVERTED_WEIGHTS)
    (dst / CONVERTED_CONFIG).write_text(json.dumps({"format": CONVERTED_FORMAT, "config": config.to_dict()},
                                                   indent=2))
    return dst


# -- writing SAT directories -------------------------------------------------------------------------------

def sat_bookkeeping(iteration: int) -> dict[str, Any]:
    """The non-weight keys SAT 0.2.9 + DeepSpeed write next to ``module`` (RNG states, ds_config, ...)."""
    import numpy as np

    gen = torch.Generator().manual_seed(iteration)
    return {
        "buffer_names": [], "optimizer": None, "lr_scheduler": None, "sparse_tensor_module_names": set(),
        "skipped_steps": 0, "global_steps": iteration, "global_samples": 4 * iteration, "dp_world_size": 1,
        "mp_world_size": 1,
        "ds_config": {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
                      "fp16": {"enabled": True, "loss_scale": 0}, "zero_optimization": {"stage": 2}},
        "ds_version": "0.6.0", "iteration": iteration,
        "client_lr_scheduler": {"num_iters": iteration, "start_lr": 2e-4, "warmup_iter": 500,
                                "end_iter": 500000, "decay_style": "cosine", "decay_ratio": 0.1},
        "random_rng_state": random.Random(iteration).getstate(),
        "np_rng_state": np.random.RandomState(iteration).get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.randint(0, 256, (16,), dtype=torch.uint8, generator=gen),
        "rng_tracker_states": {"model-parallel-rng": torch.randint(0, 256, (16,), dtype=torch.uint8,
                                                                   generator=gen)},
        "args": argparse.Namespace(fp16=True, num_layers=None, mode="pretrain"),
    }


def write_sat_checkpoint(directory: str | os.PathLike, model: CogVideoModel, *, iteration: int = 1000,
                         dtype: torch.dtype = torch.float16, bookkeeping: bool = True) -> Path:
    """Write ``model`` in the exact released SAT layout (fp16 ``module`` plus DeepSpeed bookkeeping)."""
    directory = Path(directory)
    (directory / str(iteration)).mkdir(parents=True, exist_ok=True)
    sd: dict[str, Any] = {"module": {k: v.detach().to("cpu", dtype).contiguous()
                                     for k, v in model.state_dict().items()}}
    if bookkeeping:
        sd.update(sat_bookkeeping(iteration))
    torch.save(sd, directory / str(iteration) / "mp_rank_00_model_states.pt")
    (directory / SAT_CONFIG).write_text(json.dumps(model.config.to_sat_json(), indent=4))
    (directory / SAT_TRACKER).write_text(str(iteration))
    return directory
