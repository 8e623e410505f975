"""Direct super-resolution of generated frames: one DSR forward per frame, all 3600 tokens sampled at once.

Per frame (SPEC.md §6.2): the prompt (``encode(prompt)``, no suffix or prefix) and the frame's 400 tokens go
in, the 3600 high-resolution tokens come out of a single forward, drawn with the cluster sampler at the
original's settings (:data:`.settings.SR_SAMPLING`). Frames are independent, so they are batched
(:data:`.settings.SR_MAX_BATCH` per forward, lowered to what fits in memory).

Randomness keys: ``(seed, sample, SamplingPass.SUPER_RESOLUTION, 0, frame) + (0, position)``, so a frame's
tokens do not depend on how frames are batched.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from ..checks import require_int, require_token_tensor
from ..models.config import NUM_IMAGE_TOKENS
from ..models.dsr import DsrModel
from .sampler import ClusterSampler, keyed_uniforms_last
from .settings import SR_MAX_BATCH, SR_SAMPLING, PassSampling

SAMPLE_CHUNK = 1024  # logits rows materialised at once while sampling


@dataclass
class SuperResolution:
    """``tokens`` ``LongTensor[F, N]`` (N = 3600) and the seconds each batch of frames took (forward + sampling)."""

    tokens: torch.Tensor
    batch_seconds: list[float] = field(default_factory=list)
    batch_frames: list[int] = field(default_factory=list)

    @property
    def frame_seconds(self) -> list[float]:
        """Seconds per frame, one entry per frame (each frame gets its batch's time / batch size)."""
        return [s / n for s, n in zip(self.batch_seconds, self.batch_frames, strict=True) for _ in range(n)]


def bytes_per_frame(model: DsrModel) -> int:
    """Activation bytes one frame needs at the peak of a forward (a generous estimate)."""
    c = model.config
    rows = c.text_len + c.local.num_low + c.local.num_queries
    itemsize = next(model.parameters()).element_size()
    per_layer = rows * (3 * c.hidden_size * 2 + c.ffn_hidden_size * 2 + 4 * c.hidden_size) * itemsize
    level0 = 4 * c.num_attention_heads * (c.text_len + c.local.num_low) ** 2
    local = 4 * c.num_attention_heads * c.local.num_queries * c.head_dim * 6  # fp32 copies in the reference
    return per_layer + level0 + local


def frames_per_batch(model: DsrModel, max_batch: int, memory_fraction: float = 0.5) -> int:
    """How many frames one forward takes: ``max_batch``, lowered so the estimate fits in ``memory_fraction`` of
    the free device memory (CUDA) or of the available RAM (CPU)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):  # not on Linux: trust max_batch
            return max(1, max_batch)
    return max(1, min(max_batch, int(free * memory_fraction) // bytes_per_frame(model)))


def super_resolve(model: DsrModel, text_ids: list[list[int]], frames: torch.Tensor, sampler: ClusterSampler,
                  frame_keys: list[tuple[int, ...]], boi_id: int, *, params: PassSampling = SR_SAMPLING,
                  max_batch: int = SR_MAX_BATCH, backend: str | None = None, progress=None) -> SuperResolution:
    """Super-resolve ``frames`` ``LongTensor[F, 400]`` to ``LongTensor[F, 3600]``.

    text_ids: per frame the prompt ids; frame_keys: per frame its randomness key prefix (see the module
    docstring); progress: ``progress(done_frames, total_frames)`` after every batch.
    """
    require_token_tensor("frames", frames, ndim=2, upper=NUM_IMAGE_TOKENS, shape=(None, model.config.local.num_low))
    require_int("max_batch", max_batch, minimum=1)
    n = frames.shape[0]
    if len(text_ids) != n or len(frame_keys) != n:
        raise ValueError(f"{n} frames need {n} prompts and {n} keys, got {len(text_ids)} and {len(frame_keys)}")
    batch = frames_per_batch(model, max_batch)
    out = torch.empty(n, model.config.local.num_queries, dtype=torch.long)
    result = SuperResolution(out)
    for start in range(0, n, batch):
        t0 = time.perf_counter()
        stop = min(n, start + batch)
        hidden = model.hidden_states(text_ids[start:stop], frames[start:stop], boi_id, backend=backend)
        positions = hidden.shape[1]
        for row in range(stop - start):
            key = frame_keys[start + row]
            for c0 in range(0, positions, SAMPLE_CHUNK):
                logits = model.logits(hidden[row, c0:c0 + SAMPLE_CHUNK])
                j = torch.arange(c0, c0 + logits.shape[0], device=logits.device)
                u = keyed_uniforms_last(tuple(key) + (0,), j)  # = keyed_uniforms(key + (0, j)), all j at once
                out[start + row, c0:c0 + logits.shape[0]] = sampler.sample(logits, params, uniforms=u).cpu()
        result.batch_seconds.append(time.perf_counter() - t0)
        result.batch_frames.append(stop - start)
        if progress is not None:
            progress(stop, n)
    return result
