"""The public API: ``Engine`` (model assets in, videos out), ``SamplingParams``, ``VideoOutput``.

    engine = Engine.from_pretrained("/models/cogvideo")          # or Engine.default(): random tiny assets
    [video] = engine.generate("a cat plays the piano", SamplingParams(seed=1))
    video.frames   # uint8 [33, 480, 480, 3] with cogview2-dsr (else [33, 160, 160, 3])
    video.tokens   # [33, 400]   video.sr_tokens  # [33, 3600]   video.timings  # seconds per stage

No global state: an ``Engine`` holds its models, tokenizer, decoder and sampler; requests carry their seeds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import metrics
from .checks import (require_bool, require_callable, require_choice, require_int, require_real,
                     require_token_tensor)
from .generation import settings as defaults
from .generation.pipeline import STAGE1_FRAMES, check_prompt, stage1_tokens, stage2_tokens
from .generation.runner import weight_bytes
from .generation.sampler import ClusterSampler, SamplingPass
from .generation.scheduler import SCHEDULES
from .generation.settings import PassSampling, PipelineSettings
from .generation.super_resolution import super_resolve
from .io.checkpoints import load_dsr_model, load_image_decoder, load_model
from .io.export import to_uint8
from .io.tokenizer import TextTokenizer
from .models.config import NUM_IMAGE_TOKENS


class Cancelled(Exception):
    """Raised by ``generate`` when the progress callback or ``cancel`` asks to stop; nothing was written."""


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
    super_resolution: bool | None = None
    """480x480 output through the DSR model; None: on when the engine's DSR checkpoint was given."""
    sr_max_batch: int = defaults.SR_MAX_BATCH  # frames per super-resolution forward (lowered to what fits)

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
    only, 8 with stage 2), ``timings`` in seconds (``stage1``, ``time_to_first_frame`` -- the first frame's
    tokens --, ``stage2``, ``super_resolution``, ``decode``, ``total``)."""

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


class Engine:
    """CogVideo generation from text (see the module docstring)."""

    def __init__(self, stage1_model, stage2_model, tokenizer: TextTokenizer, decoder, sampler: ClusterSampler,
                 backend: str | None = None, dsr_model=None, super_resolution_default: bool | None = None,
                 offload_to: str | torch.device | None = None):
        """``offload_to``: the models stay where they are (the CPU) and each moves there for its own stage."""
        self.stage1_model, self.stage2_model, self.dsr_model = stage1_model, stage2_model, dsr_model
        self.tokenizer, self.decoder, self.sampler = tokenizer, decoder, sampler
        self.backend = backend
        self.offload_to = torch.device(offload_to) if offload_to is not None else None
        self.super_resolution_default = dsr_model is not None if super_resolution_default is None else \
            super_resolution_default

    @classmethod
    def from_pretrained(cls, root: str | Path | None = None, *, stage1: str | Path | None = None,
                        stage2: str | Path | None = None, text_model: str | Path | None = None,
                        image_decoder: str | Path | None = None, cluster_labels: str | Path | None = None,
                        dsr: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, backend: str | None = None,
                        super_resolution_default: bool | None = None,
                        decoder_dtype: torch.dtype | None = None, offload: bool = False) -> Engine:
        """Load the assets; ``root`` laid out like the released folder (``cogvideo-stage1/``,
        ``cogvideo-stage2/``, ``cogview2-dsr/``, ``ice_text.model``, ``ice_image.pt``, ``cluster_label2.npy``)
        fills what is not given explicitly. ``stage2`` may be missing for stage-1-only use, ``dsr`` (the
        super-resolution checkpoint) for 160x160 output. ``super_resolution_default``: whether requests
        super-resolve unless they say otherwise (default: when the DSR checkpoint is there). ``decoder_dtype``:
        the VQ decoder's dtype (default ``dtype``; bf16 halves the CPU decode time of a 480x480 frame).
        ``offload``: keep the stage-1, stage-2 and DSR models in CPU memory and move each to ``device`` only for
        its stage, as the original pipeline does (one 7.7 B model on the GPU at a time, ~15 GB in bf16, plus
        the runner's fused copies of the attention weights, instead of all three)."""
        root = Path(root) if root is not None else None

        def pick(explicit, name):
            if explicit is not None:
                return Path(explicit)
            if root is None:
                raise ValueError(f"give {name!r} or a root folder holding it")
            return root / name

        stage2_path = pick(stage2, "cogvideo-stage2")
        dsr_path = Path(dsr) if dsr is not None else root / "cogview2-dsr" if root is not None else None
        if dsr is not None and not dsr_path.exists():
            raise FileNotFoundError(f"super-resolution checkpoint {dsr_path} does not exist")
        home = "cpu" if offload else device  # where the big models live between stages
        return cls(load_model(pick(stage1, "cogvideo-stage1"), dtype, home, stage=1),
                   load_model(stage2_path, dtype, home, stage=2) if stage2_path.exists() else None,
                   TextTokenizer(pick(text_model, "ice_text.model")),
                   load_image_decoder(pick(image_decoder, "ice_image.pt"), decoder_dtype or dtype, device),
                   ClusterSampler.from_file(pick(cluster_labels, "cluster_label2.npy")), backend,
                   load_dsr_model(dsr_path, dtype, home) if dsr_path is not None and dsr_path.exists() else None,
                   super_resolution_default, offload_to=device if offload else None)

    @classmethod
    def default(cls, **kwargs) -> Engine:
        """The embedded default assets: tiny, random weights, real geometry (built once on first use).

        Its tiny DSR model super-resolves only when a request asks (``SamplingParams(super_resolution=True)``):
        decoding 480x480 frames on a CPU takes seconds per frame."""
        from .io.default_assets import default_assets_root

        kwargs.setdefault("super_resolution_default", kwargs.get("dsr") is not None)
        return cls.from_pretrained(default_assets_root(), **kwargs)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[F, 400]`` (or ``[F, 3600]``) tokens -> uint8 frames ``[F, 160, 160, 3]`` (``[F, 480, 480, 3]``),
        with per-frame min-max normalisation as the original saves them."""
        return to_uint8(self.decoder.decode(tokens))

    def generate(self, prompts: str | list[str], params: SamplingParams | list[SamplingParams] | None = None, *,
                 stage1_tokens_in: torch.Tensor | None = None,
                 progress: Callable[[str, int, int], bool | None] | None = None,
                 cancel: Callable[[], bool] | None = None,
                 profile_path: str | Path | None = None) -> list[VideoOutput]:
        """Generate ``num_samples`` videos per prompt.

        params: one for all prompts or one per prompt. stage1_tokens_in: ``[S, 5, 400]`` saved stage-1 tokens
        to resume stage 2 from (one prompt, ``S = num_samples``). progress: ``progress(phase, done, total)``;
        returning False cancels. cancel: polled at every step; True cancels. Cancelling raises
        :class:`Cancelled`. profile_path: write a torch.profiler Chrome trace of the whole call there (phases
        are NVTX ranges on CUDA).

        Every argument and every request is checked against the engine's assets before any compute (prompt
        lengths in every pass, top-k against the clusters, the checkpoints a request needs): a bad request
        among several raises ``TypeError`` / ``ValueError`` before the first one starts.
        """
        prompts, per_prompt = self._check_request(prompts, params, stage1_tokens_in, progress, cancel, profile_path)
        if profile_path is not None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as prof:
                outputs = self.generate(prompts, per_prompt, stage1_tokens_in=stage1_tokens_in, progress=progress,
                                        cancel=cancel)
            Path(profile_path).parent.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(profile_path))
            return outputs
        outputs = []
        for prompt, p in zip(prompts, per_prompt, strict=True):
            outputs += self._generate_one(prompt, p, stage1_tokens_in, progress, cancel)
        return outputs

    def _check_request(self, prompts, params, resume, progress, cancel, profile_path):
        """``(prompts, one SamplingParams per prompt)`` after checking every argument of :meth:`generate`."""
        if isinstance(prompts, str):
            prompts = [prompts]
        elif isinstance(prompts, (list, tuple)):
            prompts = list(prompts)
        else:
            raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
        if not prompts:
            raise ValueError("no prompts given")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {i} must be a non-empty string, got {prompt!r}")
        params = SamplingParams() if params is None else params
        per_prompt = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} SamplingParams")
        for p in per_prompt:
            if not isinstance(p, SamplingParams):
                raise TypeError(f"params must be SamplingParams (or a list of them), got {type(p).__name__}")
        require_callable("progress", progress)
        require_callable("cancel", cancel)
        if profile_path is not None and not isinstance(profile_path, (str, Path)):
            raise TypeError(f"profile_path must be a str or Path, got {type(profile_path).__name__}")
        if resume is not None:
            if len(prompts) != 1:
                raise ValueError("stage1_tokens_in resumes one prompt")
            frame_len = self.stage1_model.config.geometry.frame_len
            require_token_tensor("stage1_tokens_in", resume, ndim=3, upper=NUM_IMAGE_TOKENS,
                                 shape=(per_prompt[0].num_samples, STAGE1_FRAMES, frame_len))
        for prompt, p in zip(prompts, per_prompt, strict=True):
            settings = p.pipeline_settings()
            want_sr = self._wants_super_resolution(p)
            if want_sr and self.dsr_model is None:
                raise ValueError("super-resolution needs the cogview2-dsr checkpoint: Engine.from_pretrained(dsr=...)")
            if not p.only_first_stage and self.stage2_model is None:
                raise ValueError("no stage-2 model loaded: pass only_first_stage=True or a stage-2 checkpoint")
            self.sampler.check_params(settings.video, "top_k")
            self.sampler.check_params(settings.first_frame, "first_frame_top_k")
            check_prompt(self.tokenizer, prompt, settings, stage1=self.stage1_model if resume is None else None,
                         stage2=None if p.only_first_stage else self.stage2_model)
            if want_sr:
                self.dsr_model.config.check_prompt_len(len(self.tokenizer.encode(prompt)))
        return prompts, per_prompt

    def _wants_super_resolution(self, p: SamplingParams) -> bool:
        return self.super_resolution_default if p.super_resolution is None else p.super_resolution

    def _generate_one(self, prompt, p: SamplingParams, resume, progress, cancel) -> list[VideoOutput]:
        settings = p.pipeline_settings()
        want_sr = self._wants_super_resolution(p)
        timings: dict[str, float] = {}
        step_times: dict[str, list[float]] = {}

        def step_hook(phase):
            last = [time.perf_counter()]

            def hook(done, total):
                now = time.perf_counter()
                step_times.setdefault(phase, []).append(now - last[0])
                last[0] = now
                if phase == "stage1" and done == total and "time_to_first_frame" not in timings:
                    timings["time_to_first_frame"] = now - start  # the first-frame pass is stage 1's first
                stop = cancel is not None and cancel()
                if stop or (progress is not None and progress(phase, done, total) is False):
                    raise Cancelled(f"cancelled during {phase} at step {done}/{total}")
            return hook

        start = time.perf_counter()
        cuda = torch.cuda.is_available() and next(self.decoder.parameters()).is_cuda
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if resume is None:
            with metrics.nvtx_range("cogvideo.stage1", cuda), self._resident(self.stage1_model) as model:
                frames = stage1_tokens(model, self.tokenizer, prompt, p.num_samples, p.seed,
                                       self.sampler, settings, backend=self.backend, progress=step_hook("stage1"))
        else:
            frames = resume.long()
        timings["stage1"] = time.perf_counter() - start
        fps = 4.0
        if not p.only_first_stage:
            t0 = time.perf_counter()
            with metrics.nvtx_range("cogvideo.stage2", cuda), self._resident(self.stage2_model) as model:
                frames = stage2_tokens(model, self.tokenizer, prompt, frames, p.seed, self.sampler,
                                       settings, backend=self.backend, progress=step_hook("stage2"))
            timings["stage2"] = time.perf_counter() - t0
            fps = 8.0
        samples, num_frames = frames.shape[0], frames.shape[1]
        frames = frames.reshape(samples, num_frames, -1)
        sr_tokens = None
        if want_sr:
            t0 = time.perf_counter()
            with metrics.nvtx_range("cogvideo.super_resolution", cuda), self._resident(self.dsr_model):
                sr = self._super_resolve(prompt, frames, p, step_hook("super_resolution"))
            sr_tokens = sr.tokens.reshape(samples, num_frames, -1)
            step_times["super_resolution"] = sr.frame_seconds  # reported per frame, not per batch
            timings["super_resolution"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded, decode_seconds = [], []
        with metrics.nvtx_range("cogvideo.decode", cuda):
            for s in range(samples):
                t_s = time.perf_counter()
                decoded.append(self.decode(frames[s] if sr_tokens is None else sr_tokens[s]))
                decode_seconds += [(time.perf_counter() - t_s) / num_frames] * num_frames
        step_times["decode"] = decode_seconds
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if cuda else metrics.peak_rss_bytes()
        frame_len = frames.shape[-1]
        generated = {"stage1": samples * STAGE1_FRAMES * frame_len,
                     "stage2": samples * (num_frames - STAGE1_FRAMES) * frame_len}
        latency = {phase: metrics.latency_stats(times, generated.get(phase, 0), timings[phase])
                   for phase, times in step_times.items()}
        for phase, model in (("stage1", self.stage1_model), ("stage2", self.stage2_model)):
            if phase in latency:  # every forward step reads every layer's weights and the logits head once
                r = latency[phase]
                r["weight_gbytes_per_s"] = weight_bytes(model) * r["num_steps"] / max(r["seconds"], 1e-9) / 1e9
        if sr_tokens is not None:
            latency["super_resolution"]["tokens_per_s"] = sr_tokens.numel() / max(timings["super_resolution"], 1e-9)
        latency["memory"] = {"peak_bytes": peak, "device": "cuda" if cuda else "cpu (max RSS)"}
        return [VideoOutput(prompt, s, p.seed, frames[s], decoded[s], fps, dict(timings), latency,
                            None if sr_tokens is None else sr_tokens[s]) for s in range(samples)]

    @contextlib.contextmanager
    def _resident(self, model):
        """``model`` on the run device for the duration (with ``offload_to``: moved there and back)."""
        if self.offload_to is None:
            yield model
            return
        home = next(model.parameters()).device
        model.to(self.offload_to)
        try:
            yield model
        finally:
            model.to(home)
            if self.offload_to.type == "cuda":
                torch.cuda.empty_cache()

    def _super_resolve(self, prompt: str, frames: torch.Tensor, p: SamplingParams, progress):
        """``frames [S, F, 400]`` -> :class:`SuperResolution` of the ``S * F`` frames, keyed by (sample, frame)."""
        samples, num_frames = frames.shape[:2]
        keys = [(p.seed, s, SamplingPass.SUPER_RESOLUTION, 0, f) for s in range(samples) for f in range(num_frames)]
        return super_resolve(self.dsr_model, [self.tokenizer.encode(prompt)] * len(keys), frames.flatten(0, 1),
                             self.sampler, keys, self.tokenizer.boi_id, max_batch=p.sr_max_batch,
                             backend=self.backend, progress=progress)


__all__ = ["Cancelled", "Engine", "SamplingParams", "VideoOutput"]
