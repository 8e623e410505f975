"""Token-level generation of one pass: prefill, then decode steps on a schedule (wavefront or sequential).

This is the reference-model runner (simple cache, any attention backend by name). Each step feeds every
position the schedule allows, gets their logits, applies classifier-free guidance when a guider stream is
given, and samples with keyed randomness, so the wavefront and the sequential schedule produce the same
tokens from the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from cogvideo_engine.kernels.rules import DEFAULT_BOI_ID, Pass

from .model import CogVideoModel
from .sampler import ClusterSampler, SamplingParams
from .scheduler import schedule as make_schedule
from .scoring import stream_input_ids

ProgressFn = Callable[[int, int], None]


@dataclass
class PassResult:
    """tokens: ``LongTensor[B, n_target, frame_len]``; steps: decode forwards; logits (if recorded):
    ``[B, n_target * frame_len, 20000]`` in target order, guided when a guider was given."""

    tokens: torch.Tensor
    steps: int
    logits: torch.Tensor | None = None
    schedule: list[list[int]] = field(default_factory=list)


def generate_pass(model: CogVideoModel, stage: Pass | str, text_ids: torch.Tensor, given_frames: torch.Tensor | None,
                  num_targets: int, sampler: ClusterSampler, params: SamplingParams, row_keys: list[tuple[int, ...]],
                  *, text_bias: float = 1.4, guider_text_ids: torch.Tensor | None = None,
                  guidance_alpha: float = 3.0, schedule: str = "wavefront", boi_id: int = DEFAULT_BOI_ID,
                  backend: str | None = "reference", record_logits: bool = False,
                  progress: ProgressFn | None = None) -> PassResult:
    """Generate ``num_targets`` frames of one pass for a batch of streams.

    text_ids: ``[B, text_len]``; given_frames: ``[B, n_given, frame_len]`` (None for the first frame);
    row_keys: per row, the key prefix of its randomness, e.g. ``(seed, sample, pass, round, window)``; each
    token's key appends ``(slot, block position)``. With ``guider_text_ids`` the guider stream (own text
    length and cache, prefill with ``text_bias``, steps with 0 as the reference) is combined as
    ``guider + (cond - guider) * guidance_alpha`` before sampling.
    """
    pass_ = Pass.parse(stage)
    if pass_.model_stage != model.config.stage:
        raise ValueError(f"pass {pass_.value!r} runs on the stage-{pass_.model_stage} model, but this is the "
                         f"stage-{model.config.stage} checkpoint")
    batch = text_ids.shape[0]
    if len(row_keys) != batch:
        raise ValueError(f"{batch} rows but {len(row_keys)} row keys")
    frame_len = model.config.geometry.frame_len
    device = model.transformer.word_embeddings.weight.device
    if given_frames is None:
        given_frames = torch.zeros(batch, 0, frame_len, dtype=torch.long)
    if given_frames.shape[1] != pass_.num_given:
        raise ValueError(f"pass {pass_.value!r} takes {pass_.num_given} given frames, got {given_frames.shape[1]}")
    placeholder = torch.zeros(batch, num_targets, frame_len, dtype=torch.long)

    layout = model.config.layout(pass_, text_ids.shape[1], num_targets)
    ids = stream_input_ids(layout, text_ids, given_frames, placeholder, boi_id).to(device)
    streams = [(layout, ids, model.new_cache(layout, batch), text_bias, text_bias)]
    if guider_text_ids is not None:
        g_layout = model.config.layout(pass_, guider_text_ids.shape[1], num_targets)
        g_ids = stream_input_ids(g_layout, guider_text_ids, given_frames, placeholder, boi_id).to(device)
        streams.append((g_layout, g_ids, model.new_cache(g_layout, batch), text_bias, 0.0))
    for lay, stream_ids, cache, prefill_bias, _ in streams:
        model.extend(cache, stream_ids[:, :lay.context_len], range(lay.context_len), prefill_bias, backend=backend)

    plan = make_schedule(layout, model.config.num_layers, schedule)
    tokens = torch.full((batch, num_targets, frame_len), -1, dtype=torch.long)
    recorded = torch.zeros(batch, num_targets * frame_len, 20000) if record_logits else None
    for step, positions in enumerate(plan):
        outs = []
        for lay, stream_ids, cache, _, step_bias in streams:
            shift = lay.text_len - layout.text_len  # same frames, different text length
            idx = [q + shift for q in positions]
            outs.append(model.extend(cache, stream_ids[:, idx], idx, step_bias, backend=backend))
        logits = outs[0] if len(outs) == 1 else outs[1] + (outs[0] - outs[1]) * guidance_alpha
        for j, q in enumerate(positions):
            slot, p = int(layout.slot(q)), int(layout.block_pos(q))
            keys = [tuple(k) + (slot, p) for k in row_keys]
            drawn = sampler.sample(logits[:, j], params, keys).cpu()
            target = slot - layout.num_given
            tokens[:, target, p] = drawn
            if recorded is not None:
                recorded[:, target * frame_len + p] = logits[:, j].float().cpu()
            if p + 1 < frame_len:  # token p is the input at block position p + 1, in every stream
                for lay, stream_ids, _, _, _ in streams:
                    stream_ids[:, q + 1 + lay.text_len - layout.text_len] = drawn.to(device)
        if progress is not None:
            progress(step + 1, len(plan))
    return PassResult(tokens=tokens, steps=len(plan), logits=recorded, schedule=plan)
