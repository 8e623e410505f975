"""Token-level CogVideo pipelines: stage 1 (first frame, then frames 1-4) and stage 2 (3 interpolation rounds).

Texts are formed exactly as the original pipeline forms them, segment by segment (SPEC.md §2.3-2.4), through
a :class:`TextEncoder` (icetk in production; anything with ``encode``, ``newline_id`` and ``boi_id`` in tests):

* first frame:      encode(prompt + " 高清摄影")
* frames 1-4:       encode("4.0秒") + [<n>] + encode(prompt + " 视频")   (guided; uncond: ... + encode("视频"))
                    encode("4.0秒") + [<n>] + encode(prompt)           (unguided)
* stage-2 round d:  encode(f"{d}秒") + [<n>] + encode(prompt), d = 2.0, 1.0, 0.5

Stage 2 turns N frames into 2N - 1: window i holds parents (2i, 2i+1, 2i+2) in slots 0-2 and generates the
frames between them in slots 3 and 4; frames merge as [slot 0, slot 3, slot 1, slot 4] per window plus the last
window's slot 2 (5 -> 9 -> 17 -> 33).

Randomness keys: (seed, sample, pass, round, window) + (slot, position), the pass a :class:`.SamplingPass`;
:func:`first_frame_row`, :func:`stage1_row` and :func:`stage2_row` make each pass's rows (texts, given frames,
keys, settings) for these functions and for the serving loop alike.

The model's BOI token is the encoder's (``encoder.boi_id``), not a setting.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cogvideo_engine.kernels.rules import Pass

from ..checks import require_int, require_token_tensor
from ..models.cogvideo import CogVideoModel
from ..models.config import NUM_IMAGE_TOKENS
from .passes import PassRow, decode_pass
from .runner import ModelRunner, layouts_for
from .sampler import ClusterSampler, SamplingPass
from .settings import SHIPPED_SETTINGS, STAGE2_DURATIONS, PipelineSettings

STAGE1_FRAMES = 1 + Pass.STAGE1.max_targets
"""Frames stage 1 writes: the first frame, then frames 1-4."""


class TextEncoder(Protocol):
    """What the pipelines need of a tokenizer (:class:`~cogvideo_engine.io.tokenizer.TextTokenizer`)."""

    newline_id: int
    boi_id: int

    def encode(self, text: str) -> list[int]: ...


def _ids(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def video_text(encoder: TextEncoder, duration: float, text: str) -> list[int]:
    """``encode(f"{duration}秒") + [<n>] + encode(text)``, each segment encoded on its own."""
    return encoder.encode(f"{float(duration)}秒") + [encoder.newline_id] + encoder.encode(text)


def stage1_texts(encoder: TextEncoder, prompt: str, settings: PipelineSettings,
                 ) -> tuple[list[int], list[int], list[int] | None]:
    """The stage-1 texts of a prompt: (first frame, frames 1-4, their guider -- None without guidance)."""
    guided, duration = settings.use_guidance_stage1, settings.stage1_duration
    first = encoder.encode(prompt + " 高清摄影")
    main = video_text(encoder, duration, prompt + " 视频" if guided else prompt)
    return first, main, video_text(encoder, duration, "视频") if guided else None


def check_prompt(encoder: TextEncoder, prompt: str, settings: PipelineSettings, *,
                 stage1: CogVideoModel | None = None, stage2: CogVideoModel | None = None,
                 durations: tuple[float, ...] = STAGE2_DURATIONS) -> None:
    """``ValueError`` if a text the prompt forms is too long for its pass on the given models (the video passes
    hold 74 text tokens): the check :meth:`Engine.generate` makes before any compute."""
    if stage1 is not None:
        _check_texts(stage1, prompt, _stage1_passes(*stage1_texts(encoder, prompt, settings)))
    if stage2 is not None:
        _check_texts(stage2, prompt, [(Pass.STAGE2, video_text(encoder, d, prompt)) for d in durations])


def _stage1_passes(first, main, guider):
    return [(Pass.FIRST_FRAME, first), (Pass.STAGE1, main)] + ([(Pass.STAGE1, guider)] if guider else [])


def _check_texts(model: CogVideoModel, prompt: str, texts: list[tuple[Pass, list[int]]]) -> None:
    for pass_, ids in texts:
        try:
            model.config.layout(pass_, len(ids), pass_.max_targets)
        except ValueError as e:
            raise ValueError(f"prompt {_shorten(prompt)!r} is too long: {e}") from None


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def first_frame_row(first_ids: list[int], sample: int, seed: int, settings: PipelineSettings,
                    frame_len: int) -> PassRow:
    """The first-frame pass of one sample (the CogView2 path): its text, no given frame, its key."""
    return PassRow(_ids(first_ids), torch.zeros(0, frame_len, dtype=torch.long),
                   (seed, sample, SamplingPass.FIRST_FRAME, 0, 0), settings.first_frame, settings.text_bias)


def stage1_row(main_ids: list[int], guider_ids: list[int] | None, first_frame: torch.Tensor, sample: int, seed: int,
               settings: PipelineSettings) -> PassRow:
    """Frames 1-4 of one sample given its first frame ``[1, F]``; guided: text bias 0, the guider stream beside."""
    guided = guider_ids is not None
    return PassRow(_ids(main_ids), first_frame, (seed, sample, SamplingPass.STAGE1, 0, 0), settings.video,
                   0.0 if guided else settings.text_bias, _ids(guider_ids) if guided else None,
                   settings.guidance_alpha)


def stage2_row(round_ids: list[int], parents: torch.Tensor, sample: int, window: int, round_id: int, seed: int,
               settings: PipelineSettings) -> PassRow:
    """One interpolation window of round ``round_id`` given its parent frames ``[3, F]`` (slots 0-2)."""
    return PassRow(_ids(round_ids), parents, (seed, sample, SamplingPass.STAGE2, round_id, window), settings.video,
                   settings.text_bias)


def run_rows(runner: ModelRunner, stage: Pass, num_targets: int, rows: list[PassRow], sampler: ClusterSampler,
             settings: PipelineSettings, boi_id: int, progress=None) -> torch.Tensor:
    """``[len(rows), num_targets, F]``: the rows in chunks of ``settings.max_batch``, each on a fresh cache."""
    out = []
    for start in range(0, len(rows), settings.max_batch):
        chunk = rows[start:start + settings.max_batch]
        streams = [r.text.numel() for r in chunk] + [r.guider_text.numel() for r in chunk if r.guider_text is not None]
        cache = runner.new_cache(layouts_for(runner.model, stage, streams, num_targets))
        on_step = None if progress is None else (lambda step, total, positions: progress(step, total))
        out.append(decode_pass(runner, cache, stage, num_targets, chunk, sampler, schedule=settings.schedule,
                               boi_id=boi_id, on_step=on_step).tokens)
    return torch.cat(out)


def stage1_tokens(model: CogVideoModel, encoder: TextEncoder, prompt: str, num_samples: int, seed: int,
                  sampler: ClusterSampler, settings: PipelineSettings = SHIPPED_SETTINGS, *,
                  backend: str | None = None, progress=None) -> torch.Tensor:
    """``LongTensor[num_samples, 5, frame_len]``: the first frame (CogView2 path) then frames 1-4."""
    require_int("num_samples", num_samples, minimum=1)
    first_ids, main, guider = stage1_texts(encoder, prompt, settings)
    _check_texts(model, prompt, _stage1_passes(first_ids, main, guider))
    runner = ModelRunner(model, backend)
    frame_len = model.config.geometry.frame_len
    first = run_rows(runner, Pass.FIRST_FRAME, 1,
                     [first_frame_row(first_ids, s, seed, settings, frame_len) for s in range(num_samples)],
                     sampler, settings, encoder.boi_id, progress)
    frames = run_rows(runner, Pass.STAGE1, Pass.STAGE1.max_targets,
                      [stage1_row(main, guider, first[s], s, seed, settings) for s in range(num_samples)],
                      sampler, settings, encoder.boi_id, progress)
    return torch.cat([first, frames], dim=1)


def interpolation_windows(num_frames: int) -> list[tuple[int, int, int]]:
    """Parent frames (slots 0, 1, 2) of each stage-2 window for ``num_frames`` (odd) frames."""
    if num_frames < 3 or num_frames % 2 == 0:
        raise ValueError(f"stage 2 interpolates an odd number >= 3 of frames, got {num_frames}")
    return [(2 * i, 2 * i + 1, 2 * i + 2) for i in range((num_frames - 1) // 2)]


def merge_round(parents: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """``parents [S, N, F]`` and ``generated [S, W, 2, F]`` (slots 3, 4 per window) -> ``[S, 2N - 1, F]``."""
    out = []
    for i, (a, b, _) in enumerate(interpolation_windows(parents.shape[1])):
        out += [parents[:, a], generated[:, i, 0], parents[:, b], generated[:, i, 1]]
    out.append(parents[:, -1])
    return torch.stack(out, dim=1)


def stage2_tokens(model: CogVideoModel, encoder: TextEncoder, prompt: str, frames: torch.Tensor, seed: int,
                  sampler: ClusterSampler, settings: PipelineSettings = SHIPPED_SETTINGS, *,
                  durations: tuple[float, ...] = STAGE2_DURATIONS, backend: str | None = None,
                  progress=None) -> torch.Tensor:
    """Interpolate ``frames [S, 5, F]`` (e.g. saved stage-1 tokens) through the rounds: ``[S, 33, F]``.

    Windows x samples are batched in chunks of ``settings.max_batch``; no guidance, ``settings.text_bias``.
    """
    frame_len = model.config.geometry.frame_len
    require_token_tensor("frames", frames, ndim=3, upper=NUM_IMAGE_TOKENS, shape=(None, None, frame_len))
    interpolation_windows(frames.shape[1])  # an odd number >= 3
    texts = [video_text(encoder, d, prompt) for d in durations]
    _check_texts(model, prompt, [(Pass.STAGE2, ids) for ids in texts])
    runner = ModelRunner(model, backend)
    samples = frames.shape[0]
    for round_id, ids in enumerate(texts):
        windows = interpolation_windows(frames.shape[1])
        rows = [stage2_row(ids, frames[s, list(windows[w])], s, w, round_id, seed, settings)
                for s in range(samples) for w in range(len(windows))]
        generated = run_rows(runner, Pass.STAGE2, 2, rows, sampler, settings, encoder.boi_id, progress)
        frames = merge_round(frames, generated.reshape(samples, len(windows), 2, -1))
    return frames
