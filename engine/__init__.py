"""CogVideo inference engine: text to video with the released CogVideo checkpoints, exact and fast.

Public entry points (imported lazily so ``import cogvideo_engine.kernels`` stays light)::

    engine = cogvideo_engine.Engine.from_pretrained(root)          # or Engine.default()
    [video] = engine.generate("a cat plays the piano", cogvideo_engine.SamplingParams(seed=1))
    model = cogvideo_engine.load_model(path, dtype=torch.float32, device="cpu")
    out = cogvideo_engine.teacher_forced_logits(model, stage="stage1", text_ids=..., given_frames=...,
                                                target_frames=...)

Sub-packages, bottom to top (each imports only from those before it; ``kernels`` imports nothing of the engine)::

    kernels/      attention rules, masks, reference and fused kernels, op registry
    checks        argument checks shared by every entry point
    models/       shapes (config), shared layers, the CogVideo stage models, the DSR model, the VQ decoder,
                  random weights
    io/           SAT checkpoints and the one loading routine, asset loaders and conversion, tokenizer, export,
                  the embedded default assets
    generation/   settings and defaults, sampler, scheduler, runner, pass generation, pipelines,
                  super-resolution, teacher-forced scoring
    serving/      requests, the engine core (one loop: batches across requests), AsyncEngine
    api, cli, info, metrics   the front ends: Engine, the command line, the backend report, latency figures
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": "io.checkpoints", "convert": "io.checkpoints", "load_image_decoder": "io.checkpoints",
    "load_dsr_model": "io.checkpoints",
    "write_sat_checkpoint": "io.sat", "CheckpointError": "io.sat",
    "default_model_path": "io.default_assets",
    "teacher_forced_logits": "generation.scoring", "TeacherForcedOutput": "generation.scoring",
    "PassSampling": "generation.settings", "PipelineSettings": "generation.settings",
    "CogVideoModel": "models.cogvideo", "KVCache": "models.cogvideo", "DsrModel": "models.dsr",
    "ImageDecoder": "models.vq_decoder",
    "ModelConfig": "models.config", "DsrConfig": "models.config", "stage1_config": "models.config",
    "stage2_config": "models.config", "tiny_config": "models.config",
    "Engine": "api", "SamplingParams": "api", "VideoOutput": "api", "Cancelled": "api",
    "AsyncEngine": "serving.async_engine", "RequestHandle": "serving.async_engine", "Event": "serving.types",
    "Checkpoint": "serving.types", "AdmissionError": "serving.types", "QueueFull": "serving.types",
    "EngineCore": "serving.core",
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
