"""What a generation is asked to do, and the shipped defaults, each written once.

The defaults are those of the released pipeline (CogVideo's ``scripts/inference_cogvideo_pipeline.sh`` and
CogView2's direct super-resolution, SPEC.md §5 and §6.2). :class:`~cogvideo_engine.api.SamplingParams`,
:class:`PipelineSettings`, :func:`~cogvideo_engine.generation.passes.generate_pass`,
:func:`~cogvideo_engine.generation.scoring.teacher_forced_logits`, super-resolution and the command line all read
them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import require_bool, require_choice, require_int, require_real
from .scheduler import SCHEDULES


@dataclass(frozen=True)
class PassSampling:
    """Cluster-sampler settings of one pass: ``temperature`` on the logits, the ``top_k`` heaviest clusters
    (clusters, not tokens), ``temperature2`` on top of it inside the chosen cluster. Checked when made."""

    temperature: float
    top_k: int
    temperature2: float

    def __post_init__(self):
        require_real("temperature", self.temperature, positive=True)
        require_real("temperature2", self.temperature2, positive=True)
        require_int("top_k (clusters)", self.top_k, minimum=1)


FIRST_FRAME_SAMPLING = PassSampling(temperature=1.0, top_k=16, temperature2=0.89)
"""The first frame (the CogView2 path)."""
VIDEO_SAMPLING = PassSampling(temperature=1.05, top_k=12, temperature2=0.89)
"""Every other video token: stage-1 frames 1-4 and the stage-2 interpolation."""
SR_SAMPLING = PassSampling(temperature=1.0, top_k=6, temperature2=0.6)
"""Super-resolution: ``IterativeEntfilterStrategy(topk=6)`` with its hard-coded inner temperature 0.6."""

SEED = 1234
USE_GUIDANCE_STAGE1 = True
"""Classifier-free guidance of stage-1 frames 1-4 (the script's ``--use-guidance-stage1``)."""
GUIDANCE_ALPHA = 3.0
"""``guider + (cond - guider) * alpha``."""
TEXT_BIAS = 1.4
"""``log_text_attention_weights``: added to text-key scores (0 in the guided stage-1 passes)."""
STAGE1_DURATION = 4.0
"""The duration prefix of the stage-1 frame texts (``"4.0秒"``)."""
STAGE2_DURATIONS = (2.0, 1.0, 0.5)
"""The duration prefixes of the three interpolation rounds."""
MAX_BATCH = 8
"""Streams of one request per forward (the script's ``--max-inference-batch-size``): its stage-2 windows x
samples are chunked so."""
SR_MAX_BATCH = 12
"""Frames per super-resolution batch (the original's 12)."""
SCHEDULE = "wavefront"
"""The decode schedule: ``"wavefront"`` (exact, fewer steps) or ``"sequential"`` (the original's order)."""


@dataclass(frozen=True)
class PipelineSettings:
    """The settings the token-level pipelines (:mod:`.pipeline`) read; checked when made."""

    first_frame: PassSampling = FIRST_FRAME_SAMPLING
    video: PassSampling = VIDEO_SAMPLING
    use_guidance_stage1: bool = USE_GUIDANCE_STAGE1
    guidance_alpha: float = GUIDANCE_ALPHA
    text_bias: float = TEXT_BIAS
    stage1_duration: float = STAGE1_DURATION
    max_batch: int = MAX_BATCH
    schedule: str = SCHEDULE

    def __post_init__(self):
        for name in ("first_frame", "video"):
            if not isinstance(getattr(self, name), PassSampling):
                raise TypeError(f"{name} must be a PassSampling, got {type(getattr(self, name)).__name__}")
        require_bool("use_guidance_stage1", self.use_guidance_stage1)
        require_real("guidance_alpha", self.guidance_alpha)
        require_real("text_bias", self.text_bias)
        require_real("stage1_duration", self.stage1_duration, positive=True)
        require_int("max_batch", self.max_batch, minimum=1)
        require_choice("schedule", self.schedule, SCHEDULES)


SHIPPED_SETTINGS = PipelineSettings()
"""The released pipeline's settings, every field at its default."""
