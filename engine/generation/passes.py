"""Token-level generation of one pass: prefill, then decode steps on a schedule (wavefront or sequential).

Runs on the :class:`ModelRunner` (fused weights, static cache, any attention backend by name). Each step feeds
every position the schedule allows -- for the main rows and, with guidance, the guider rows in the same
forward -- applies classifier-free guidance, and samples with keyed randomness, so the wavefront and the
sequential schedule produce the same tokens from the same logits.

:func:`decode_pass` runs a batch of :class:`PassRow` -- each with its own text, given frames, randomness key,
sampler settings, text bias and guidance -- so rows of different requests share one forward (the serving
loop's batches); :func:`generate_pass` is the one-call form for a batch of one request.
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
from .runner import ModelRunner, StaticCache, layouts_for
from .sampler import ClusterSampler
from .scheduler import SCHEDULES
from .scheduler import schedule as make_schedule
from .settings import GUIDANCE_ALPHA, SCHEDULE, TEXT_BIAS, PassSampling

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class PassRow:
    """One stream of a pass: ``text`` ids (its own length), ``given [n_given, frame_len]`` frame tokens, the key
    prefix of its randomness (e.g. ``(seed, sample, pass, round, window)``; a token appends ``(slot, block
    position)``), its sampler settings and text bias, and with ``guider_text`` a guider stream in the same
    forward (prefill with ``text_bias``, steps with 0, as the reference) combined as
    ``guider + (cond - guider) * guidance_alpha``."""

    text: torch.Tensor
    given: torch.Tensor
    key: tuple[int, ...]
    params: PassSampling
    text_bias: float = TEXT_BIAS
    guider_text: torch.Tensor | None = None
    guidance_alpha: float = GUIDANCE_ALPHA

    @property
    def num_streams(self) -> int:
        """Cache rows it takes: 2 with a guider, else 1."""
        return 1 if self.guider_text is None else 2


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
    rows = [PassRow(text_ids[b], given_frames[b], tuple(row_keys[b]), params, float(text_bias),
                    None if guider_text_ids is None else guider_text_ids[b], float(guidance_alpha))
            for b in range(batch)]
    streams = layouts_for(model, pass_, [r.text.numel() for r in rows] +
                          [r.guider_text.numel() for r in rows if r.guider_text is not None], num_targets)
    cache = runner.new_cache(streams)
    on_step = None if progress is None else (lambda step, total, positions: progress(step, total))
    return decode_pass(runner, cache, pass_, num_targets, rows, sampler, schedule=schedule, boi_id=boi_id,
                       record_logits=record_logits, on_step=on_step)


def decode_pass(runner: ModelRunner, cache: StaticCache, stage: Pass | str, num_targets: int, rows: list[PassRow],
                sampler: ClusterSampler, *, schedule: str = SCHEDULE, boi_id: int = DEFAULT_BOI_ID,
                record_logits: bool = False,
                on_step: Callable[[int, int, list[tuple[int, int]]], None] | None = None,
                on_frame: Callable[[int, torch.Tensor], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> PassResult | None:
    """Run one pass for ``rows`` on ``cache`` (re-bound here to the rows' streams: main rows first, then the
    guider rows; room for ``sum(row.num_streams)`` rows, text lengths within its text capacity).

    on_step(step, num_steps, positions): after each decode step, ``positions`` the (slot, block position)
    sampled in it. on_frame(target, tokens): when target frame ``target`` (0-based) of every row is complete,
    ``tokens [B, frame_len]``. should_stop(): polled before each step; True ends the pass (returns None).
    Arguments are the caller's to check (:func:`generate_pass` checks them for one request).
    """
    pass_ = Pass.parse(stage)
    model = runner.model
    frame_len = model.config.geometry.frame_len
    batch = len(rows)
    guided = [i for i, r in enumerate(rows) if r.guider_text is not None]
    texts = [r.text.reshape(-1).long() for r in rows] + [rows[i].guider_text.reshape(-1).long() for i in guided]
    given = torch.stack([r.given.reshape(pass_.num_given, frame_len).long() for r in rows])
    given = torch.cat([given, given[guided]]) if guided else given
    prefill_bias = [r.text_bias for r in rows] + [rows[i].text_bias for i in guided]
    step_bias = [r.text_bias for r in rows] + [0.0] * len(guided)
    if runner.cuda_graphs:  # one shape per cache: pad with copies of row 0 (their tokens are never read)
        pad = cache.capacity - len(texts)
        texts, given = texts + [texts[0]] * pad, torch.cat([given, given[:1].expand(pad, -1, -1)])
        prefill_bias, step_bias = prefill_bias + prefill_bias[:1] * pad, step_bias + step_bias[:1] * pad
    cache.bind(layouts_for(model, pass_, [t.numel() for t in texts], num_targets))
    runner.prefill(cache, texts, StreamLayout.block_inputs(given, boi_id), torch.tensor(prefill_bias))
    step_bias = torch.tensor(step_bias)
    device = runner.device  # the loop's index tensors are moved there once, here
    if guided:
        cond, guider = torch.tensor(guided, device=device), torch.arange(batch, batch + len(guided), device=device)
        alpha = torch.tensor([rows[i].guidance_alpha for i in guided], dtype=torch.float32, device=device)
    by_params: dict[PassSampling, list[int]] = {}
    for i, r in enumerate(rows):
        by_params.setdefault(r.params, []).append(i)
    groups = [(params, torch.tensor(idx), torch.tensor(idx, device=device), [rows[i].key for i in idx])
              for params, idx in by_params.items()]
    extra = None
    if len(texts) > batch:  # the guided rows' inputs: their conditional rows', the padding row 0's
        extra = torch.cat([torch.tensor(guided, dtype=torch.long), torch.zeros(len(texts) - batch - len(guided),
                                                                              dtype=torch.long)])

    layout = cache.layouts[0]
    plan = make_schedule(layout, model.config.num_layers, schedule)
    last_step = {}  # target frame -> the step completing it
    for step, positions in enumerate(plan):
        for q in positions:
            last_step[int(layout.slot(q)) - layout.num_given] = step
    tokens = torch.full((batch, num_targets, frame_len), -1, dtype=torch.long)
    recorded = torch.zeros(batch, num_targets * frame_len, NUM_IMAGE_TOKENS) if record_logits else None
    step_fn = runner.stepper(cache)  # CUDA-graph replays on CUDA
    start = time.perf_counter()
    forward = 0.0
    for step, positions in enumerate(plan):
        if should_stop is not None and should_stop():
            return None
        where = [(int(layout.slot(q)), int(layout.block_pos(q))) for q in positions]
        inputs = StreamLayout.block_inputs(tokens, boi_id)  # the schedule feeds p only once p - 1 is sampled
        feed = torch.stack([inputs[:, s - layout.num_given, p] for s, p in where], dim=1)
        if extra is not None:
            feed = torch.cat([feed, feed[extra]])
        t0 = time.perf_counter()
        logits = step_fn(where, feed, step_bias)
        if logits.is_cuda:  # the time inside the forward (the sampler waits for it anyway)
            torch.cuda.synchronize()
        forward += time.perf_counter() - t0
        main = logits[:batch]
        if guided:
            main = main.clone()
            g = logits[guider]
            main[cond] = g + (logits[cond] - g) * alpha[:, None, None]
        targets = [slot - layout.num_given for slot, _ in where]
        cells = torch.tensor(targets), torch.tensor([p for _, p in where])
        for params, idx, idx_on_device, keys in groups:  # every position of the step in one draw, one transfer
            step_logits = main[idx_on_device].flatten(0, 1)  # [rows x positions, vocab], row-major
            drawn = sampler.sample(step_logits, params, [k + cell for k in keys for cell in where]).cpu()
            tokens[idx[:, None], cells[0], cells[1]] = drawn.view(len(idx), len(where))
        if recorded is not None:
            recorded[:, cells[0] * frame_len + cells[1]] = main.float().cpu()
        if on_step is not None:
            on_step(step + 1, len(plan), where)
        if on_frame is not None:
            for target, done_at in last_step.items():
                if done_at == step:
                    on_frame(target, tokens[:, target])
    return PassResult(tokens=tokens, steps=len(plan), logits=recorded, schedule=plan,
                      seconds=time.perf_counter() - start, forward_seconds=forward)
