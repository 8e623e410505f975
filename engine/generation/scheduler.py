"""Wavefront scheduling: which target positions of a stream may be fed in the same forward step.

Pure Python on the rule module, no tensors. A target position may be fed once

* its input token exists: block position ``p >= 1`` is fed frame token ``p - 1``, which is sampled from the
  logits of position ``p - 1`` of the same slot (block position 0 is fed BOI), and
* every key it attends to -- in any layer (both window parities) and either channel -- has been fed.

Feeding every position at its earliest such step (ASAP) changes no result: each position sees exactly the
keys it would see in sequential decoding. For the released stage 2 this lets slot 4 trail slot 3 by a
constant lag (590 steps instead of 800); for the released stage 1 (full causal temporal attention) no two
frames overlap (1600 steps); a windowed stage-1 model chains frames at the stage-2 lag.
"""

from __future__ import annotations

import functools

from cogvideo_engine.kernels.rules import StreamLayout


def _latest_needed(layout: StreamLayout, q: int, slot: int, parities: tuple[int, ...]) -> int | None:
    """Block position of the latest key of ``slot`` that ``q`` attends to in any layer or channel."""
    for p in reversed(range(layout.geometry.frame_len)):
        k = layout.index(slot, p)
        if k != q and (layout.spatial_visible(q, k)
                       or any(layout.temporal_visible(q, k, parity) for parity in parities)):
            return p
    return None


def feed_steps(layout: StreamLayout, num_layers: int) -> dict[int, int]:
    """Earliest decode step (0-based, after the prefill) at which each target stream index can be fed."""
    return dict(_feed_steps(layout, num_layers))


@functools.lru_cache(maxsize=64)
def _feed_steps(layout: StreamLayout, num_layers: int) -> tuple[tuple[int, int], ...]:  # layouts are frozen
    parities = tuple(sorted({layer % 2 for layer in range(num_layers)}))
    frame_len = layout.geometry.frame_len
    steps: dict[int, int] = {}
    for slot in range(layout.num_given, layout.num_slots):
        previous = -1
        for p in range(frame_len):
            q = layout.index(slot, p)
            earliest = previous + 1 if p > 0 else 0  # p >= 1 waits for token p - 1 (sampled at p - 1)
            for earlier in range(layout.num_given, slot):  # given slots are in the prefill
                latest = _latest_needed(layout, q, earlier, parities)
                if latest is not None:
                    earliest = max(earliest, steps[layout.index(earlier, latest)] + 1)
            steps[q] = previous = max(earliest, previous + 1)
    return tuple(steps.items())


def wavefront_schedule(layout: StreamLayout, num_layers: int) -> list[list[int]]:
    """Target stream indices grouped by decode step: ``schedule[t]`` is fed in one forward at step ``t``."""
    steps = feed_steps(layout, num_layers)
    schedule: list[list[int]] = [[] for _ in range(max(steps.values(), default=-1) + 1)]
    for q, step in sorted(steps.items()):
        schedule[step].append(q)
    return schedule


def sequential_schedule(layout: StreamLayout) -> list[list[int]]:
    """One target position per step, in stream order (what the original code does)."""
    return [[q] for q in range(layout.context_len, layout.length)]


SCHEDULES = ("wavefront", "sequential")


def schedule(layout: StreamLayout, num_layers: int, kind: str) -> list[list[int]]:
    """The decode schedule of a stream: ``"wavefront"`` (exact, fewer steps) or ``"sequential"``."""
    if kind == "wavefront":
        return wavefront_schedule(layout, num_layers)
    if kind == "sequential":
        return sequential_schedule(layout)
    raise ValueError(f"unknown schedule {kind!r}: expected one of {', '.join(map(repr, SCHEDULES))}")
