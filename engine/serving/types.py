"""What a request asks for and what comes back: :class:`SamplingParams`, :class:`VideoOutput`, the events of a
request (:class:`Event`), the state it can resume from (:class:`Checkpoint`), and the errors of the front.

No tensors are computed here; every field is checked when the object is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import metrics
from ..checks import require_bool, require_choice, require_int, require_real
from ..generation import settings as defaults
from ..generation.scheduler import SCHEDULES
from ..generation.settings import PassSampling, PipelineSettings


class Cancelled(Exception):
    """The request was cancelled (``abort``, a progress callback returning False, ``cancel()`` true, or the
    engine shutting down); nothing was written."""


class AdmissionError(ValueError):
    """The request cannot be served by this engine as configured (before any compute): it needs more cache rows
    in one forward than the memory budget allows."""


class QueueFull(RuntimeError):
    """The engine's queue holds ``max_queued`` requests already; retry later."""


@dataclass(frozen=True)
class SamplingParams:
    """One request's settings; the defaults are those of the released pipeline script. Every field is checked
    when the object is made (``TypeError`` / ``ValueError`` naming the field and the constraint); the limits
    that depend on the engine's assets (top-k against the number of clusters, super-resolution against the DSR
    checkpoint) are checked by :meth:`Engine.generate` before any compute."""

    seed: int = defaults.SEED
    num_samples: int = 1
    only_first_stage: bool = False
    use_guidance_stage1: bool = defaults.USE_GUIDANCE_STAGE1
    guidance_alpha: float = defaults.GUIDANCE_ALPHA
    temperature: float = defaults.VIDEO_SAMPLING.temperature
    top_k: int = defaults.VIDEO_SAMPLING.top_k  # clusters
    temperature2: float = defaults.VIDEO_SAMPLING.temperature2
    """Inside the chosen cluster, for every pass (the shipped first-frame value is the same)."""
    first_frame_temperature: float = defaults.FIRST_FRAME_SAMPLING.temperature
    first_frame_top_k: int = defaults.FIRST_FRAME_SAMPLING.top_k
    schedule: str = defaults.SCHEDULE
    max_batch: int = defaults.MAX_BATCH
    """This request's cache rows in one forward (the engine's row budget bounds the whole batch)."""
    super_resolution: bool | None = None
    """480x480 output through the DSR model; None: on when the engine's DSR checkpoint was given."""
    sr_max_batch: int = defaults.SR_MAX_BATCH
    """Frames per super-resolution step of the serving loop (each frame is its own forward)."""

    def __post_init__(self):
        require_int("seed", self.seed, minimum=0, maximum=2**63 - 1)
        require_int("num_samples", self.num_samples, minimum=1)
        require_bool("only_first_stage", self.only_first_stage)
        require_bool("use_guidance_stage1", self.use_guidance_stage1)
        require_real("guidance_alpha", self.guidance_alpha)
        for name in ("temperature", "temperature2", "first_frame_temperature"):
            require_real(name, getattr(self, name), positive=True)
        require_int("top_k", self.top_k, minimum=1)
        require_int("first_frame_top_k", self.first_frame_top_k, minimum=1)
        require_choice("schedule", self.schedule, SCHEDULES)
        require_int("max_batch", self.max_batch, minimum=1)
        require_bool("super_resolution", self.super_resolution, optional=True)
        require_int("sr_max_batch", self.sr_max_batch, minimum=1)

    def pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings(
            first_frame=PassSampling(self.first_frame_temperature, self.first_frame_top_k, self.temperature2),
            video=PassSampling(self.temperature, self.top_k, self.temperature2),
            use_guidance_stage1=self.use_guidance_stage1, guidance_alpha=self.guidance_alpha,
            max_batch=self.max_batch, schedule=self.schedule)


@dataclass
class VideoOutput:
    """One generated video: ``frames`` uint8 ``[F, H, W, 3]`` (480x480 after super-resolution, else 160x160),
    ``tokens`` ``[F, 400]``, ``sr_tokens`` ``[F, 3600]`` (None without super-resolution), ``fps`` (4 for stage 1
    only, 8 with stage 2), ``timings`` in seconds (``queue`` -- submission to its first batch --,
    ``time_to_first_frame`` -- submission to the first frame's tokens --, ``stage1``, ``stage2``,
    ``super_resolution``, ``decode`` -- each from its first batch to its end --, ``total`` -- submission to
    completion)."""

    prompt: str
    sample: int
    seed: int
    tokens: torch.Tensor
    frames: torch.Tensor
    fps: float
    timings: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per phase: ``num_steps``, ms per step mean/p50/p90/p99, tokens/s (vLLM-style names), and for stage1/stage2
    ``weight_gbytes_per_s`` (weights read per forward step x steps / seconds). Steps are forward steps for
    stage1/stage2 and frames for super_resolution and decode (ms per frame). ``memory``: peak bytes."""
    sr_tokens: torch.Tensor | None = None

    def latency_report(self) -> str:
        """A table of :attr:`latency` per phase, the stage timings and the peak memory."""
        return metrics.latency_report(self.latency, self.timings)


EVENT_KINDS = ("queued", "started", "progress", "frame", "checkpoint", "completed", "failed", "cancelled")
TERMINAL_KINDS = ("completed", "failed", "cancelled")
PHASES = ("stage1", "stage2", "super_resolution", "decode")
"""The phases of a request, in order; progress counts tokens (frames for ``decode``) within each."""


@dataclass(frozen=True)
class Checkpoint:
    """What a request has finished at a pass boundary, enough to resume it: ``tokens [S, N, 400]`` -- ``N`` = 1
    (the first frame), 5 (stage 1), 9 or 17 (after interpolation round 1 or 2) or 33 (stage 2 done) -- and the
    prompt and params that made them. ``submit(..., resume=checkpoint)`` continues with the same randomness
    keys as an uninterrupted run, so the video is the same. :meth:`to_dict` / :meth:`from_dict` carry it
    through JSON-like storage (tokens as nested lists)."""

    prompt: str
    params: SamplingParams
    tokens: torch.Tensor

    @property
    def num_frames(self) -> int:
        return int(self.tokens.shape[1])

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "params": dict(vars(self.params)), "tokens": self.tokens.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Checkpoint:
        return cls(d["prompt"], SamplingParams(**d["params"]), torch.tensor(d["tokens"], dtype=torch.long))


@dataclass(frozen=True)
class Event:
    """One thing that happened to a request, in order; the first is ``queued``, the last exactly one of
    ``completed`` / ``failed`` / ``cancelled``.

    * ``queued``: ``position`` in the queue (0: next);
    * ``started``: the request's first work joined a batch;
    * ``progress``: ``phase`` (:data:`PHASES`), ``done`` / ``total`` tokens of that phase for all samples (exact,
      from the schedule; frames for ``decode``), ``eta_s`` to the end of the request from measured step times
      (None until measured);
    * ``frame``: ``frames`` uint8 ``[N, 160, 160, 3]`` previews of ``sample``: a stage-1 frame as it completes
      (``N = 1``, ``frame_index``), then all frames after each interpolation round (``round`` 1..3);
    * ``checkpoint``: ``tokens [S, N, 400]`` of every sample at a pass boundary and ``checkpoint`` to resume from;
    * ``completed``: ``outputs`` (list of :class:`VideoOutput`, one per sample) and ``tokens``;
    * ``failed``: ``error`` (the exception); ``cancelled``: ``error`` (a :class:`Cancelled`).
    """

    kind: str
    request_id: str
    time: float
    phase: str | None = None
    done: int | None = None
    total: int | None = None
    eta_s: float | None = None
    position: int | None = None
    sample: int | None = None
    frame_index: int | None = None
    round: int | None = None
    frames: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    checkpoint: Checkpoint | None = None
    outputs: list[VideoOutput] | None = None
    error: BaseException | None = None

    @property
    def is_terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS
