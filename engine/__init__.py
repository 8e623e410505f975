"""CogVideo inference engine: exact reference model, checkpoint loading and teacher-forced scoring.

Public entry points (imported lazily so ``import cogvideo_engine.kernels`` stays light)::

    model = cogvideo_engine.load_model(path, dtype=torch.float32, device="cpu")
    out = cogvideo_engine.teacher_forced_logits(model, stage="stage1", text_ids=..., given_frames=...,
                                                target_frames=...)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": "checkpoint", "convert": "checkpoint", "write_sat_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "teacher_forced_logits": "scoring", "TeacherForcedOutput": "scoring",
    "CogVideoModel": "model", "KVCache": "model",
    "ModelConfig": "config", "stage1_config": "config", "stage2_config": "config", "tiny_config": "config",
    "default_model_path": "default_model",
    "load_image_decoder": "vq_decoder", "ImageDecoder": "vq_decoder",
    "Engine": "api", "SamplingParams": "api", "VideoOutput": "api", "Cancelled": "api",
    "Pass": "kernels.rules", "StreamLayout": "kernels.rules", "FrameGeometry": "kernels.rules",
}

__all__ = sorted(_LAZY) + ["__version__"]  # noqa: PLE0605  (the lazy table is the one list of names)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
