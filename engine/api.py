"""The public API: ``Engine`` (model assets in, videos out), ``SamplingParams``, ``VideoOutput``.

    engine = Engine.from_pretrained("/models/cogvideo")          # or Engine.default(): random tiny assets
    [video] = engine.generate("a cat plays the piano", SamplingParams(seed=1))
    video.frames   # uint8 [33, 160, 160, 3]   video.tokens  # [33, 400]   video.timings  # seconds per stage

No global state: an ``Engine`` holds its models, tokenizer, decoder and sampler; requests carry their seeds.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import load_model
from .export import to_uint8
from .pipeline import PipelineSettings, stage1_tokens, stage2_tokens
from .sampler import ClusterSampler, PassSampling
from .text_tokenizer import TextTokenizer
from .vq_decoder import load_image_decoder


class Cancelled(Exception):
    """Raised by ``generate`` when the progress callback or ``cancel`` asks to stop; nothing was written."""


@dataclass(frozen=True)
class SamplingParams:
    """One request's settings; the defaults are those of the released pipeline script."""

    seed: int = 1234
    num_samples: int = 1
    only_first_stage: bool = False
    use_guidance_stage1: bool = True
    guidance_alpha: float = 3.0
    temperature: float = 1.05
    top_k: int = 12  # clusters
    temperature2: float = 0.89
    first_frame_temperature: float = 1.0
    first_frame_top_k: int = 16
    schedule: str = "wavefront"
    max_batch: int = 8

    def pipeline_settings(self, boi_id: int) -> PipelineSettings:
        return PipelineSettings(
            first_frame=PassSampling(self.first_frame_temperature, self.first_frame_top_k, self.temperature2),
            video=PassSampling(self.temperature, self.top_k, self.temperature2),
            use_guidance_stage1=self.use_guidance_stage1, guidance_alpha=self.guidance_alpha,
            max_batch=self.max_batch, schedule=self.schedule, boi_id=boi_id)


@dataclass
class VideoOutput:
    """One generated video: ``frames`` uint8 ``[F, H, W, 3]``, ``tokens`` ``[F, 400]``, ``fps`` (4 for stage 1
    only, 8 with stage 2), ``timings`` in seconds (``stage1``, ``stage2``, ``decode``, ``total``)."""

    prompt: str
    sample: int
    seed: int
    tokens: torch.Tensor
    frames: torch.Tensor
    fps: float
    timings: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per phase (stage1, stage2): forward steps, ms/step mean/p50/p90/p99, tokens/s (vLLM-style names)."""

    def latency_report(self) -> str:
        lines = [f"{'phase':8s} {'steps':>6s} {'avg_ms':>8s} {'p50_ms':>8s} {'p90_ms':>8s} {'p99_ms':>8s} "
                 f"{'tokens/s':>9s} {'seconds':>8s}"]
        for phase, r in self.latency.items():
            if phase == "memory":
                continue
            lines.append(f"{phase:8s} {r['num_steps']:6d} {r['avg_step_ms']:8.2f} {r['p50_step_ms']:8.2f} "
                         f"{r['p90_step_ms']:8.2f} {r['p99_step_ms']:8.2f} {r['tokens_per_s']:9.1f} "
                         f"{r['seconds']:8.2f}")
        lines.append("  ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        if "memory" in self.latency:
            mem = self.latency["memory"]
            lines.append(f"peak memory {mem['peak_bytes'] / 2**20:.0f} MiB ({mem['device']})")
        return "\n".join(lines)


class Engine:
    """CogVideo generation from text (see the module docstring)."""

    def __init__(self, stage1_model, stage2_model, tokenizer: TextTokenizer, decoder, sampler: ClusterSampler,
                 backend: str | None = None):
        self.stage1_model, self.stage2_model = stage1_model, stage2_model
        self.tokenizer, self.decoder, self.sampler = tokenizer, decoder, sampler
        self.backend = backend

    @classmethod
    def from_pretrained(cls, root: str | Path | None = None, *, stage1: str | Path | None = None,
                        stage2: str | Path | None = None, text_model: str | Path | None = None,
                        image_decoder: str | Path | None = None, cluster_labels: str | Path | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        backend: str | None = None) -> "Engine":
        """Load the assets; ``root`` laid out like the released folder (``cogvideo-stage1/``,
        ``cogvideo-stage2/``, ``ice_text.model``, ``ice_image.pt``, ``cluster_label2.npy``) fills what is not
        given explicitly. ``stage2`` may be missing for stage-1-only use."""
        root = Path(root) if root is not None else None

        def pick(explicit, name):
            if explicit is not None:
                return Path(explicit)
            if root is None:
                raise ValueError(f"give {name!r} or a root folder holding it")
            return root / name

        stage2_path = pick(stage2, "cogvideo-stage2")
        return cls(load_model(pick(stage1, "cogvideo-stage1"), dtype, device, stage=1),
                   load_model(stage2_path, dtype, device, stage=2) if stage2_path.exists() else None,
                   TextTokenizer(pick(text_model, "ice_text.model")),
                   load_image_decoder(pick(image_decoder, "ice_image.pt"), dtype, device),
                   ClusterSampler.from_file(pick(cluster_labels, "cluster_label2.npy")), backend)

    @classmethod
    def default(cls, **kwargs) -> "Engine":
        """The embedded default assets: tiny, random weights, real geometry (built once on first use)."""
        from .default_model import default_assets_root

        return cls.from_pretrained(default_assets_root(), **kwargs)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[F, 400]`` tokens -> uint8 frames ``[F, 160, 160, 3]`` (per-frame min-max, as the original saves)."""
        return to_uint8(self.decoder.decode(tokens))

    def generate(self, prompts: str | list[str], params: SamplingParams | list[SamplingParams] | None = None, *,
                 stage1_tokens_in: torch.Tensor | None = None,
                 progress: Callable[[str, int, int], bool | None] | None = None,
                 cancel: Callable[[], bool] | None = None,
                 profile_path: str | Path | None = None) -> list[VideoOutput]:
        """Generate ``num_samples`` videos per prompt.

        params: one for all prompts or one per prompt. stage1_tokens_in: ``[S, 5, 400]`` saved stage-1 tokens
        to resume stage 2 from (one prompt). progress: ``progress(phase, done, total)``; returning False
        cancels. cancel: polled at every step; True cancels. Cancelling raises :class:`Cancelled`.
        profile_path: write a torch.profiler Chrome trace of the whole call there (phases are NVTX ranges on
        CUDA).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        params = params or SamplingParams()
        per_prompt = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} SamplingParams")
        if stage1_tokens_in is not None and len(prompts) != 1:
            raise ValueError("stage1_tokens_in resumes one prompt")
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

    def _generate_one(self, prompt, p: SamplingParams, resume, progress, cancel) -> list[VideoOutput]:
        settings = p.pipeline_settings(self.tokenizer.boi_id)
        timings: dict[str, float] = {}
        step_times: dict[str, list[float]] = {}

        def step_hook(phase):
            last = [time.perf_counter()]

            def hook(done, total):
                now = time.perf_counter()
                step_times.setdefault(phase, []).append(now - last[0])
                last[0] = now
                stop = cancel is not None and cancel()
                if stop or (progress is not None and progress(phase, done, total) is False):
                    raise Cancelled(f"cancelled during {phase} at step {done}/{total}")
            return hook

        start = time.perf_counter()
        cuda = torch.cuda.is_available() and self.decoder.std.is_cuda
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if resume is None:
            with _nvtx("cogvideo.stage1", cuda):
                frames = stage1_tokens(self.stage1_model, self.tokenizer, prompt, p.num_samples, p.seed,
                                       self.sampler, settings, backend=self.backend, progress=step_hook("stage1"))
        else:
            frames = resume.long()
        timings["stage1"] = time.perf_counter() - start
        fps = 4.0
        if not p.only_first_stage:
            if self.stage2_model is None:
                raise ValueError("no stage-2 model loaded: pass only_first_stage=True or a stage-2 checkpoint")
            t0 = time.perf_counter()
            with _nvtx("cogvideo.stage2", cuda):
                frames = stage2_tokens(self.stage2_model, self.tokenizer, prompt, frames, p.seed, self.sampler,
                                       settings, backend=self.backend, progress=step_hook("stage2"))
            timings["stage2"] = time.perf_counter() - t0
            fps = 8.0
        t0 = time.perf_counter()
        with _nvtx("cogvideo.decode", cuda):
            decoded = [self.decode(frames[s].reshape(frames.shape[1], -1)) for s in range(frames.shape[0])]
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
        frame_len = frames.shape[-1]
        generated = {"stage1": p.num_samples * 5 * frame_len,
                     "stage2": p.num_samples * (frames.shape[1] - 5) * frame_len}
        latency = {phase: _latency(times, generated[phase], timings[phase]) for phase, times in step_times.items()}
        latency["memory"] = {"peak_bytes": peak, "device": "cuda" if cuda else "cpu (max RSS)"}
        return [VideoOutput(prompt, s, p.seed, frames[s].reshape(frames.shape[1], -1), decoded[s], fps,
                            dict(timings), latency) for s in range(frames.shape[0])]


@contextlib.contextmanager
def _nvtx(name: str, enabled: bool):
    """An NVTX range on CUDA (visible in Nsight Systems); nothing on CPU."""
    if enabled:
        torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        if enabled:
            torch.cuda.nvtx.range_pop()


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _latency(step_seconds: list[float], tokens: int, phase_seconds: float) -> dict:
    t = torch.tensor(step_seconds, dtype=torch.float64) * 1e3
    q = torch.quantile(t, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return {"num_steps": len(step_seconds), "avg_step_ms": float(t.mean()), "p50_step_ms": q[0],
            "p90_step_ms": q[1], "p99_step_ms": q[2], "tokens_per_s": tokens / max(phase_seconds, 1e-9),
            "seconds": phase_seconds}


__all__ = ["Cancelled", "Engine", "SamplingParams", "VideoOutput"]
