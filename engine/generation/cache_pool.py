"""A pool of :class:`~.runner.StaticCache` s that live as long as the engine, bounded by a memory budget.

A cache is made once per (model runner, pass, targets) at the pass's full text capacity and re-bound to the
rows of every batch it serves, across chunks, rounds, prompts and requests (what a previous batch left in it is
never read, see :class:`~.runner.StaticCache`). On CUDA a cache is made at the batch row budget, so every
batch has one shape and the cache's CUDA graphs replay for all of them; on CPU it is made for the rows asked,
rounded up to a power of two, and replaced by a larger one when a larger batch comes. Idle caches of other
passes are freed, least recently used first, when a new one would not fit in the budget.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

from cogvideo_engine.kernels.rules import Pass

from ..models.config import ModelConfig
from .runner import ModelRunner, StaticCache, cache_bytes_per_row

CPU_MEMORY_FRACTION = 0.25
"""Default cache budget on CPU: this fraction of the machine's physical memory."""
CUDA_MEMORY_FRACTION = 0.4
"""Default cache budget on CUDA: this fraction of the device memory free when the pool is made."""


def text_capacity(cfg: ModelConfig, pass_: Pass) -> int:
    """The text rows a cache of ``pass_`` holds: every text length the rule module allows for the pass (74 in the
    video passes; up to the frame's position base in the first-frame pass)."""
    g = cfg.geometry
    return g.frame_position_base if pass_ is Pass.FIRST_FRAME else g.max_text_len


def default_budget_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * CUDA_MEMORY_FRACTION)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not on Linux
        total = 16 << 30
    return int(total * CPU_MEMORY_FRACTION)


class CachePool:
    """Static caches keyed by (runner, its device, pass, targets), bounded by ``budget_bytes`` (None: the device
    default, :data:`CPU_MEMORY_FRACTION` / :data:`CUDA_MEMORY_FRACTION`)."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self._caches: OrderedDict[tuple, StaticCache] = OrderedDict()
        self.allocations = 0
        """Caches made so far (a test counts them across requests)."""

    def budget(self, device: torch.device) -> int:
        if self.budget_bytes is None:
            self.budget_bytes = default_budget_bytes(device)
        return self.budget_bytes

    @staticmethod
    def bytes_per_row(cfg: ModelConfig, dtype: torch.dtype, pass_: Pass, num_targets: int,
                      heads: int | None = None) -> int:
        """Bytes of one cache row of ``pass_`` for a model of ``cfg`` in ``dtype`` with ``heads`` heads (default:
        all; a tensor-parallel rank holds its share)."""
        return cache_bytes_per_row(cfg, cfg.layout(pass_, 1, num_targets), text_capacity(cfg, pass_), dtype, heads)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._caches.values())

    def acquire(self, runner: ModelRunner, pass_: Pass, num_targets: int, rows: int, row_budget: int) -> StaticCache:
        """A cache of ``pass_`` with room for ``rows`` rows (``rows <= row_budget <= max_rows``); the caller binds
        it to its rows (:func:`~.passes.decode_pass` does)."""
        if not 1 <= rows <= row_budget:
            raise ValueError(f"{rows} rows outside 1..{row_budget}")
        key = (id(runner), runner.device, pass_, num_targets)
        cache = self._caches.get(key)
        if cache is not None and cache.capacity >= rows:
            self._caches.move_to_end(key)
            return cache
        if cache is not None:
            del self._caches[key]
        capacity = row_budget if runner.cuda_graphs else min(row_budget, 1 << (rows - 1).bit_length())
        cfg = runner.model.config
        need = capacity * self.bytes_per_row(cfg, runner.dtype, pass_, num_targets, runner.heads)
        while self._caches and self.nbytes + need > self.budget(runner.device):
            self._caches.popitem(last=False)  # the least recently used idle cache
        cache = runner.allocate_cache(cfg.layout(pass_, 1, num_targets), text_capacity(cfg, pass_), capacity)
        self.allocations += 1
        self._caches[key] = cache
        return cache

    def clear(self) -> None:
        self._caches.clear()
