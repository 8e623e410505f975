"""Teacher-forced scoring: the logits CogVideo assigns to a given clip, through the cached step path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cogvideo_engine.kernels.registry import get_backend
from cogvideo_engine.kernels.rules import DEFAULT_BOI_ID, Pass, StreamLayout

from ..checks import require_callable, require_int, require_real, require_token_tensor
from ..models.cogvideo import CogVideoModel
from ..models.config import NUM_IMAGE_TOKENS
from .settings import GUIDANCE_ALPHA, TEXT_BIAS

ProgressFn = Callable[[int, int], None]


@dataclass
class TeacherForcedOutput:
    """Logits of one teacher-forced pass. ``T = 400 * n_target``; ``V = 20000`` image tokens.

    prefill_logits: ``[B, ctx, V]`` at every prefill position (``ctx = text_len + 400 * n_given``).
    logits: ``[B, T, V]``; row ``t`` predicts target token ``t`` (frame ``t // 400``, token ``t % 400``).
    guider_prefill_logits / guider_logits: the same for the guider stream, when one was given.
    guided_logits: ``guider + (cond - guider) * guidance_alpha``, what the sampler sees with guidance.
    targets: ``[B, T]`` the scored target tokens.
    """

    prefill_logits: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    guider_prefill_logits: torch.Tensor | None = None
    guider_logits: torch.Tensor | None = None
    guided_logits: torch.Tensor | None = None
    frame_len: int = 400

    def target_log_probs(self, guided: bool = False) -> torch.Tensor:
        """``[B, T]`` log-probability of each target token (under the guided logits if ``guided``)."""
        logits = self.guided_logits if guided else self.logits
        if logits is None:
            raise ValueError("no guided logits: pass guider_text_ids to teacher_forced_logits")
        return torch.log_softmax(logits, dim=-1).gather(-1, self.targets[..., None]).squeeze(-1)

    def frame_nll(self, guided: bool = False) -> torch.Tensor:
        """``[B, n_target]`` mean negative log-likelihood per target frame (nats per token)."""
        lp = self.target_log_probs(guided)
        return -lp.reshape(lp.shape[0], -1, self.frame_len).mean(-1)


def stream_input_ids(layout: StreamLayout, text_ids: torch.Tensor, given_frames: torch.Tensor,
                     target_frames: torch.Tensor, boi_id: int) -> torch.Tensor:
    """``[B, layout.length]`` inputs: the text, then per frame ``[BOI, token 0 .. token frame_len-2]``."""
    frames = torch.cat([given_frames, target_frames], dim=1)
    blocks = layout.block_inputs(frames, boi_id).reshape(frames.shape[0], -1)
    return torch.cat([text_ids.to(blocks.device), blocks], dim=1)


def _run_stream(model: CogVideoModel, layout: StreamLayout, ids: torch.Tensor, prefill_bias: float,
                step_bias: float, progress: ProgressFn | None, done: int, total: int, backend: str | None):
    cache = model.new_cache(layout, ids.shape[0])
    ctx = layout.context_len
    prefill = model.extend(cache, ids[:, :ctx], torch.arange(ctx), prefill_bias, backend=backend)
    steps = []
    for i in range(ctx, layout.length):
        steps.append(model.extend(cache, ids[:, i:i + 1], [i], step_bias, backend=backend))
        done += 1
        if progress is not None:
            progress(done, total)
    empty = prefill.new_zeros(ids.shape[0], 0, prefill.shape[-1])
    return prefill, (torch.cat(steps, dim=1) if steps else empty), done


def teacher_forced_logits(model: CogVideoModel, stage: Pass | str, text_ids: torch.Tensor,
                          given_frames: torch.Tensor | None, target_frames: torch.Tensor,
                          text_bias: float = TEXT_BIAS, guider_text_ids: torch.Tensor | None = None,
                          guidance_alpha: float = GUIDANCE_ALPHA, *,
                          boi_id: int = DEFAULT_BOI_ID, progress: ProgressFn | None = None,
                          backend: str | None = "reference") -> TeacherForcedOutput:
    """Score a clip the way generation would see it: one prefill, then one cached step per target token.

    stage: ``"stage1-first-frame"`` (no given frame, one target), ``"stage1"`` (1 given, up to 4 targets) or
        ``"stage2"`` (3 given slots, up to 2 targets); it fixes the attention rules (SPEC.md §3.4).
    text_ids: ``LongTensor[B, text_len]`` as the pipeline forms them (duration prefix, ``<n>``, prompt, suffix).
    given_frames: ``LongTensor[B, n_given, 400]`` raw frame tokens in slot order (None or empty for the first
        frame). target_frames: ``LongTensor[B, n_target, 400]`` in generation (slot) order.
    text_bias: ``log_text_attention_weights`` (the shipped :data:`.settings.TEXT_BIAS`, or 0 in guided stage-1
        passes).
    guider_text_ids: ``LongTensor[B, guider_text_len]`` for classifier-free guidance; the guider stream has
        its own text length and cache and the same frames. As in the reference, its prefill uses
        ``text_bias`` and its steps use 0.
    progress: called as ``progress(steps_done, steps_total)`` after every cached step.
    backend: attention backend by name (``reference``, ``triton``, ...; None: the best available).

    Every argument is checked before any compute (``TypeError`` / ``ValueError`` naming the constraint).
    """
    pass_ = model.config.check_pass(stage)
    text_bias = require_real("text_bias", text_bias)
    guidance_alpha = require_real("guidance_alpha", guidance_alpha)
    require_callable("progress", progress)
    geometry = model.config.geometry
    vocab = model.config.vocab_size
    frame_len = geometry.frame_len
    require_token_tensor("text_ids", text_ids, ndim=2, upper=vocab)
    batch = text_ids.shape[0]
    require_token_tensor("target_frames", target_frames, ndim=3, upper=NUM_IMAGE_TOKENS,
                         shape=(batch, None, frame_len))
    if given_frames is None:
        given_frames = target_frames.new_zeros(batch, 0, frame_len)
    if given_frames.dim() == 3 and given_frames.shape[1] != pass_.num_given:
        raise ValueError(f"pass {pass_.value!r} takes {pass_.num_given} given frames, got {given_frames.shape[1]}")
    require_token_tensor("given_frames", given_frames, ndim=3, upper=NUM_IMAGE_TOKENS,
                         shape=(batch, pass_.num_given, frame_len))
    if not 1 <= target_frames.shape[1] <= pass_.max_targets:
        raise ValueError(f"pass {pass_.value!r} scores 1..{pass_.max_targets} target frames, "
                         f"got {target_frames.shape[1]}")
    require_int("boi_id", boi_id, minimum=0, maximum=vocab - 1)
    if guider_text_ids is not None:
        require_token_tensor("guider_text_ids", guider_text_ids, ndim=2, upper=vocab, shape=(batch, None))

    device = model.transformer.word_embeddings.weight.device
    get_backend(backend, device)  # an unknown or unavailable backend is refused here
    n_target = target_frames.shape[1]
    layout = model.config.layout(pass_, text_ids.shape[1], n_target)
    g_layout = model.config.layout(pass_, guider_text_ids.shape[1], n_target) if guider_text_ids is not None \
        else None
    ids = stream_input_ids(layout, text_ids, given_frames, target_frames, boi_id).to(device)
    total = (layout.length - layout.context_len) * (1 if guider_text_ids is None else 2)
    prefill, logits, done = _run_stream(model, layout, ids, text_bias, text_bias, progress, 0, total, backend)
    out = TeacherForcedOutput(prefill, logits, target_frames.reshape(batch, -1).to(device),
                              frame_len=geometry.frame_len)
    if g_layout is not None:
        g_ids = stream_input_ids(g_layout, guider_text_ids, given_frames, target_frames, boi_id).to(device)
        out.guider_prefill_logits, out.guider_logits, _ = _run_stream(model, g_layout, g_ids, text_bias, 0.0,
                                                                      progress, done, total, backend)
        out.guided_logits = out.guider_logits + (out.logits - out.guider_logits) * guidance_alpha
    return out
