"""Token-level generation of one pass: prefill, then decode steps on a schedule (wavefront or sequential).

Runs on the :class:`ModelRunner` (fused weights, static cache, any attention backend by name). Each step feeds
every position the schedule allows -- for the main rows and, with guidance, the guider rows in the same
forward -- applies classifier-free guidance, and samples with keyed randomness, so the wavefront and the
sequential schedule produce the same tokens from the same logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cogvideo_engine.kernels.rules import DEFAULT_BOI_ID, Pass, StreamLayout

from ..checks import require_callable, require_choice, require_int, require_real, require_token_tensor
from ..models.cogvideo import CogVideoModel
from ..models.config import NUM_IMAGE_TOKENS
from .runner import ModelRunner, layouts_for
from .sampler import ClusterSampler
from .scheduler import SCHEDULES
from .scheduler import schedule as make_schedule
from .settings import GUIDANCE_ALPHA, SCHEDULE, TEXT_BIAS, PassSampling

ProgressFn = Callable[[int, int], None]


@dataclass
class PassResult:
    """tokens: ``LongTensor[B, n_target, frame_len]``; steps: decode forwards; logits (if recorded):
    ``[B, n_target * frame_len, 20000]`` in target order, guided when a guider was given."""

    tokens: torch.Tensor
    steps: int
    logits: torch.Tensor | None = None
    schedule: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time of the decode loop (prefill excluded)."""
    forward_seconds: float = 0.0
    """Of which inside the model forward (the rest: scheduling, sampling, bookkeeping)."""


def generate_pass(model: CogVideoModel, stage: Pass | str, text_ids: torch.Tensor, given_frames: torch.Tensor | None,
                  num_targets: int, sampler: ClusterSampler, params: PassSampling, row_keys: list[tuple[int, ...]],
                  *, text_bias: float = TEXT_BIAS, guider_text_ids: torch.Tensor | None = None,
                  guidance_alpha: float = GUIDANCE_ALPHA, schedule: str = SCHEDULE, boi_id: int = DEFAULT_BOI_ID,
                  backend: str | None = "reference", runner: ModelRunner | None = None,
                  record_logits: bool = False, progress: ProgressFn | None = None) -> PassResult:
    """Generate ``num_targets`` frames of one pass for a batch of streams.

    text_ids: ``[B, text_len]``; given_frames: ``[B, n_given, frame_len]`` (None for the first frame);
    row_keys: per row, the key prefix of its randomness, e.g. ``(seed, sample, pass, round, window)``; each
    token's key appends ``(slot, block position)``. With ``guider_text_ids [B, guider_text_len]`` the guider
    rows (own text length; prefill with ``text_bias``, steps with 0, as the reference) run in the same
    forward as the main rows and are combined as ``guider + (cond - guider) * guidance_alpha``.
    ``runner`` (optional) reuses a :class:`ModelRunner` and its fused weights across calls. Every argument is
    checked before any compute (``TypeError`` / ``ValueError`` naming the constraint).
    """
    pass_ = model.config.check_pass(stage)
    vocab, frame_len = model.config.vocab_size, model.config.geometry.frame_len
    require_token_tensor("text_ids", text_ids, ndim=2, upper=vocab)
    batch = text_ids.shape[0]
    if batch < 1:
        raise ValueError("text_ids has no rows")
    if given_frames is None:
        given_frames = torch.zeros(batch, 0, frame_len, dtype=torch.long)
    require_token_tensor("given_frames", given_frames, ndim=3, upper=NUM_IMAGE_TOKENS,
                         shape=(batch, pass_.num_given, frame_len))
    require_int("num_targets", num_targets, minimum=1, maximum=pass_.max_targets)
    sampler.check_params(params)
    if len(row_keys) != batch:
        raise ValueError(f"{batch} rows but {len(row_keys)} row keys")
    for key in row_keys:
        for part in key:
            require_int("a row key's part", part)
    text_bias = require_real("text_bias", text_bias)
    guidance_alpha = require_real("guidance_alpha", guidance_alpha)
    if guider_text_ids is not None:
        require_token_tensor("guider_text_ids", guider_text_ids, ndim=2, upper=vocab, shape=(batch, None))
    require_choice("schedule", schedule, SCHEDULES)
    require_int("boi_id", boi_id, minimum=0, maximum=vocab - 1)
    require_callable("progress", progress)
    runner = runner or ModelRunner(model, backend)
    guided = guider_text_ids is not None
    texts = list(text_ids) + (list(guider_text_ids) if guided else [])
    cache = runner.new_cache(layouts_for(model, pass_, [t.numel() for t in texts], num_targets))
    rows = len(texts)
    given_ids = StreamLayout.block_inputs(given_frames.long(), boi_id).repeat(rows // batch, 1, 1)
    runner.prefill(cache, texts, given_ids, torch.full((rows,), float(text_bias)))
    step_bias = torch.full((rows,), float(text_bias))
    if guided:
        step_bias[batch:] = 0.0

    layout = cache.layouts[0]
    plan = make_schedule(layout, model.config.num_layers, schedule)
    tokens = torch.full((batch, num_targets, frame_len), -1, dtype=torch.long)
    recorded = torch.zeros(batch, num_targets * frame_len, NUM_IMAGE_TOKENS) if record_logits else None
    step_fn = runner.stepper(cache)  # CUDA-graph replays on CUDA
    start = time.perf_counter()
    forward = 0.0
    for step, positions in enumerate(plan):
        where = [(int(layout.slot(q)), int(layout.block_pos(q))) for q in positions]
        inputs = StreamLayout.block_inputs(tokens, boi_id)  # the schedule feeds p only once p - 1 is sampled
        feed = torch.stack([inputs[:, s - layout.num_given, p] for s, p in where], dim=1)
        t0 = time.perf_counter()
        logits = step_fn(where, feed.repeat(rows // batch, 1), step_bias)
        if logits.is_cuda:
            torch.cuda.synchronize()
        forward += time.perf_counter() - t0
        if guided:
            logits = logits[batch:] + (logits[:batch] - logits[batch:]) * guidance_alpha
        for j, (slot, p) in enumerate(where):
            drawn = sampler.sample(logits[:, j], params, [tuple(k) + (slot, p) for k in row_keys]).cpu()
            target = slot - layout.num_given
            tokens[:, target, p] = drawn
            if recorded is not None:
                recorded[:, target * frame_len + p] = logits[:, j].float().cpu()
        if progress is not None:
            progress(step + 1, len(plan))
    return PassResult(tokens=tokens, steps=len(plan), logits=recorded, schedule=plan,
                      seconds=time.perf_counter() - start, forward_seconds=forward)
