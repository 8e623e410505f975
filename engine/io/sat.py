"""SwissArmyTransformer (SAT) checkpoint directories, read and written safely, and the one routine that builds a
model from a state dict.

A SAT directory, as released::

    <dir>/latest                                 text: the iteration (e.g. "27000") or "release"
    <dir>/model_config.json                      the model's shape; its keys override the defaults
    <dir>/<iter>/mp_rank_00_model_states.pt      torch.save dict; the state dict is under "module" (fp16)

Reading is safe by default: ``torch.load(weights_only=True, mmap=True)`` with only the harmless globals that
SAT/DeepSpeed bookkeeping needs (NumPy's RNG state, ``argparse.Namespace``) allowed. A pickle that needs
anything else is refused with the list of what it asked for; nothing in it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

SAT_CONFIG = "model_config.json"
SAT_TRACKER = "latest"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, unsafe or does not fit the model; the message says which."""


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


def read_sat_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    file = sat_checkpoint_file(directory)
    sd = safe_torch_load(file)
    if "module" not in sd or not isinstance(sd["module"], dict):
        raise CheckpointError(f"{file} has no 'module' state dict (keys: {sorted(map(str, sd))[:12]})")
    return sd["module"]


# -- building a model from a state dict ----------------------------------------------------------------------

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


def checked_meta_module(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``build()`` on the meta device (no memory, no init), with ``state`` checked against its tensors
    (:func:`check_state_dict`: every mismatch at once, as a :class:`CheckpointError` naming ``source``)."""
    with torch.device("meta"):
        module = build()
    check_state_dict({k: v.shape for k, v in module.state_dict().items()}, state, source)
    return module


def build_from_state(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], source: str,
                     dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """The one loading routine of every model: build on meta and check (:func:`checked_meta_module`), then
    assign ``state`` in ``dtype`` on ``device`` (CPU tensors of a memory-mapped file stay mapped when dtype and
    device match). Returns the module in eval mode, without gradients."""
    module = checked_meta_module(build, state, source)
    module.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True,
                           strict=True)
    return module.eval().requires_grad_(False)


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


def write_sat_checkpoint(directory: str | os.PathLike, model: nn.Module, *, iteration: int = 1000,
                         dtype: torch.dtype = torch.float16, bookkeeping: bool = True) -> Path:
    """Write ``model`` (a CogVideo or DSR model: anything with ``config.to_sat_json()``) in the exact released
    SAT layout (fp16 ``module`` plus DeepSpeed bookkeeping)."""
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
