"""CogVideo's cluster sampler (SPEC.md §5.1) with randomness keyed by what is being sampled.

Per token: ``logits / temperature``; per-cluster probability mass over the 500 token clusters; one of the
``top_k`` heaviest clusters drawn in proportion to its mass; then a token of that cluster drawn from
``softmax(logits / temperature / temperature2)`` restricted to it. Classifier-free guidance is applied to the
logits before (``guider + (cond - guider) * alpha``), by the caller.

Randomness: each draw uses two uniforms derived from a key -- (seed, sample, pass, round, window, slot,
position), the pass a :class:`SamplingPass` -- by a counter-based hash, and inverse-CDF sampling. The same
logits and key give the same token, however the positions are batched or scheduled (wavefront or sequential)
and whatever else shares the batch.
"""

from __future__ import annotations

import enum
from pathlib import Path

import torch

from ..models.config import NUM_IMAGE_TOKENS
from .settings import PassSampling


class SamplingPass(enum.IntEnum):
    """The pass field of a randomness key: which draw of a video a token belongs to."""

    FIRST_FRAME = 0
    STAGE1 = 1
    """Stage-1 frames 1-4."""
    STAGE2 = 2
    """The interpolation rounds (the key's round and window fields say which)."""
    SUPER_RESOLUTION = 3


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def keyed_uniforms(key: tuple[int, ...], count: int = 2) -> list[float]:
    """``count`` uniforms in [0, 1) that depend only on ``key`` (a tuple of ints)."""
    h = 0x243F6A8885A308D3
    for part in key:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    out = []
    for i in range(count):
        h = _splitmix64(h ^ (i + 1))
        out.append((h >> 11) * (1.0 / (1 << 53)))
    return out


def _signed64(c: int) -> int:
    """The int64 holding the bit pattern of the uint64 ``c``."""
    return c - (1 << 64) if c >= (1 << 63) else c


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of uint64 bit patterns held in int64."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _splitmix64_tensor(x: torch.Tensor) -> torch.Tensor:
    """:func:`_splitmix64` on int64 tensors holding uint64 bit patterns (integer arithmetic wraps mod 2^64)."""
    x = x + _signed64(0x9E3779B97F4A7C15)
    x = (x ^ _shr(x, 30)) * _signed64(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _signed64(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def keyed_uniforms_last(prefix: tuple[int, ...], last: torch.Tensor, count: int = 2) -> torch.Tensor:
    """``[N, count]`` float64: row ``i`` equals ``keyed_uniforms(prefix + (last[i],), count)``, computed on
    ``last``'s device at once (``last``: int64, values in 0..2^63-1)."""
    h = 0x243F6A8885A308D3
    for part in prefix:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    x = _splitmix64_tensor(last.long() ^ _signed64(h))
    out = []
    for i in range(count):
        x = _splitmix64_tensor(x ^ (i + 1))
        out.append(_shr(x, 11).double() * (1.0 / (1 << 53)))
    return torch.stack(out, dim=-1)


class ClusterSampler:
    """Samples image tokens with CogVideo's cluster strategy.

    cluster_labels: ``LongTensor[20000]`` with values ``0..num_clusters-1`` (``cluster_label2.npy``: 500).
    """

    def __init__(self, cluster_labels: torch.Tensor):
        labels = torch.as_tensor(cluster_labels).long().flatten()
        if labels.numel() != NUM_IMAGE_TOKENS:
            raise ValueError(f"cluster labels must cover the {NUM_IMAGE_TOKENS} image tokens, got {labels.numel()}")
        if int(labels.min()) < 0:
            raise ValueError("cluster labels must be non-negative")
        self.labels = labels
        self.num_clusters = int(labels.max()) + 1
        # members[c]: the tokens of cluster c in ascending order, padded with -1 (the in-cluster draw runs
        # over these instead of all 20000 logits; every other token has probability exactly 0 there)
        counts = torch.bincount(labels, minlength=self.num_clusters)
        order = torch.argsort(labels * NUM_IMAGE_TOKENS + torch.arange(labels.numel()))
        self.members = torch.full((self.num_clusters, int(counts.max())), -1, dtype=torch.long)
        slot = torch.arange(labels.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        self.members[labels[order], slot] = order
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels, members)`` on ``device``: copied there once, then reused by every draw."""
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = (self.labels.to(device), self.members.to(device))
        return self._on_device[device]

    @classmethod
    def from_file(cls, path: str | Path) -> ClusterSampler:
        """Load ``cluster_label2.npy`` (int64[20000], values 0..499) -- a model asset the user provides."""
        import numpy as np

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cluster label file {path} not found: CogVideo's sampler needs "
                                    f"cluster_label2.npy (int64[20000], from the CogVideo release)")
        return cls(torch.from_numpy(np.load(path, allow_pickle=False)))

    def check_params(self, params: PassSampling, name: str = "top_k") -> None:
        """``ValueError`` if ``params`` asks for more clusters than this sampler has (``name`` is the setting's
        name in the message); ``TypeError`` if it is not a :class:`PassSampling`."""
        if not isinstance(params, PassSampling):
            raise TypeError(f"sampling params must be a PassSampling, got {type(params).__name__}")
        if params.top_k > self.num_clusters:
            raise ValueError(f"{name} ({params.top_k} clusters) exceeds the sampler's {self.num_clusters} clusters")

    def cluster_mass(self, logits: torch.Tensor, params: PassSampling) -> torch.Tensor:
        """``[N, num_clusters]`` probability mass of each cluster under ``softmax(logits / temperature)``."""
        self.check_params(params)
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        labels = self.tables(logits.device)[0].expand_as(probs)
        return torch.zeros(probs.shape[0], self.num_clusters, device=logits.device).scatter_add_(1, labels, probs)

    def token_distribution(self, logits: torch.Tensor, params: PassSampling) -> torch.Tensor:
        """``[N, 20000]`` exact probability of each token under the two-stage draw (for tests and scoring)."""
        mass = self.cluster_mass(logits, params)
        top_mass, top_clusters = mass.topk(params.top_k, dim=-1)
        pick = torch.zeros_like(mass).scatter_(1, top_clusters, top_mass / top_mass.sum(-1, keepdim=True))
        scaled = logits.float() / params.temperature / params.temperature2
        labels = self.tables(logits.device)[0]
        out = torch.zeros_like(scaled)
        for c in range(self.num_clusters):  # within-cluster softmax, weighted by the cluster's pick chance
            member = labels == c
            if bool((pick[:, c] > 0).any()):
                out[:, member] = torch.softmax(scaled[:, member], dim=-1) * pick[:, c:c + 1]
        return out

    def sample(self, logits: torch.Tensor, params: PassSampling, keys: list[tuple[int, ...]] | None = None, *,
               uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row of ``logits [N, 20000]`` (fp32, guidance already applied), row ``i`` drawn with
        the uniforms of ``keys[i]`` -- or given directly as ``uniforms [N, 2]`` (e.g. from
        :func:`keyed_uniforms_last`). Returns ``LongTensor[N]``."""
        if logits.dim() != 2 or logits.shape[1] != NUM_IMAGE_TOKENS:
            raise ValueError(f"logits must be [N, {NUM_IMAGE_TOKENS}], got {tuple(logits.shape)}")
        if (keys is None) == (uniforms is None):
            raise ValueError("give either keys or uniforms")
        if uniforms is not None:
            if tuple(uniforms.shape) != (logits.shape[0], 2):
                raise ValueError(f"uniforms must be [{logits.shape[0]}, 2], got {tuple(uniforms.shape)}")
            u = uniforms.to(logits.device, torch.float64)
        else:
            if len(keys) != logits.shape[0]:
                raise ValueError(f"{logits.shape[0]} rows but {len(keys)} keys")
            u = torch.tensor([keyed_uniforms(k) for k in keys], dtype=torch.float64, device=logits.device)
        scaled = logits.float() / params.temperature
        mass = self.cluster_mass(logits, params)
        top_mass, top_clusters = mass.topk(params.top_k, dim=-1)
        cdf = (top_mass / top_mass.sum(-1, keepdim=True)).double().cumsum(-1)
        pick = torch.searchsorted(cdf, u[:, :1].contiguous(), right=True).clamp(max=params.top_k - 1)
        chosen = top_clusters.gather(1, pick)  # [N, 1]
        members = self.tables(logits.device)[1][chosen.squeeze(1)]  # [N, max cluster size], -1 padded
        real = members >= 0
        inside = scaled.gather(1, members.clamp(min=0)).masked_fill(~real, float("-inf"))
        probs = torch.softmax(inside / params.temperature2, dim=-1).double()
        pick = torch.searchsorted(probs.cumsum(-1), u[:, 1:].contiguous(), right=True)
        # the cdf's rounding tail (u above its last value) falls back to the cluster's most likely token
        tail = pick >= real.sum(-1, keepdim=True)
        pick = torch.where(tail, probs.argmax(-1, keepdim=True), pick)
        token = members.gather(1, pick)
        return token.squeeze(1)
