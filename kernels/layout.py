"""What one attention launch needs to know: the cache layout and the rule of the launch, as plain values.

Cache layout (every backend reads K/V in this order)
----------------------------------------------------
Per layer and channel, K and V are ``[B, H, S, d]`` (any strides), with
``S = text_capacity + frame_len * cache_slots``::

    cache row  0 .. text_capacity-1                 text keys; row j holds text token j (rows >= text_len unused)
    cache row  text_capacity + frame_len * s + p    slot s, block position p (raster order, p = x * grid + y)

The text region has a fixed size and every slot a fixed offset, so sequences with different text lengths
(guided cond and uncond streams, different prompts) share one batch with their frames aligned. A stream
index ``i`` maps to row ``i`` if it is text, else ``text_capacity + (i - text_len)``. With
``text_capacity == text_len`` the two numberings coincide (the reference model's cache).

Rule of a launch
----------------
:class:`AttentionRule` names the pass, the channel and the layer parity; with the per-sequence text length and
text bias and the per-query stream index, that fixes every visible key through :mod:`.rules`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .rules import FrameGeometry, Pass, StreamLayout

SPATIAL, TEMPORAL = "spatial", "temporal"


@dataclass(frozen=True)
class AttentionRule:
    """The static part of one attention launch.

    ``layer_parity`` matters only for the temporal channel of stage 2 (shift on odd layers).
    ``text_capacity``: rows reserved for text at the head of the cache.
    """

    pass_: Pass
    channel: str
    layer_parity: int
    geometry: FrameGeometry
    text_capacity: int
    stage1_windowed: bool = False  # the paper's windowed stage 1 (StreamLayout.stage1_windowed); reference only

    def __post_init__(self):
        object.__setattr__(self, "pass_", Pass.parse(self.pass_))
        if self.channel not in (SPATIAL, TEMPORAL):
            raise ValueError(f"channel must be {SPATIAL!r} or {TEMPORAL!r}, got {self.channel!r}")
        if self.layer_parity not in (0, 1):
            raise ValueError(f"layer_parity must be 0 or 1, got {self.layer_parity!r}")
        if self.text_capacity < 1:
            raise ValueError(f"text_capacity must be >= 1, got {self.text_capacity}")

    @classmethod
    def launch_rules(cls, layout: StreamLayout, text_capacity: int) -> dict[tuple[str, int], AttentionRule]:
        """Every launch rule of ``layout``'s pass over a cache with ``text_capacity`` text rows, by (channel,
        layer parity): what a cache builds once and hands to each layer as ``rules[channel, layer_id % 2]``."""
        return {(channel, parity): cls(layout.pass_, channel, parity, layout.geometry, text_capacity,
                                       layout.stage1_windowed)
                for channel in (SPATIAL, TEMPORAL) for parity in (0, 1)}

    def stream(self, text_len: int) -> StreamLayout:
        """The :class:`StreamLayout` of a sequence with ``text_len`` text tokens under this launch (every target
        slot of the pass): the rule module's answer for each of its rows."""
        return StreamLayout(self.pass_, text_len, self.pass_.max_targets, self.geometry, self.stage1_windowed)

    @functools.cached_property
    def _facts(self) -> StreamLayout:
        """A stream of this launch; the facts read from it (windows, shift, bidirectional given rows) do not
        depend on the text length."""
        return self.stream(1)

    @property
    def temporal(self) -> bool:
        return self.channel == TEMPORAL

    @property
    def windowed(self) -> bool:
        """Temporal channel with 3-D Swin windows (stage 2, or a windowed stage 1), else full causal."""
        return self.temporal and self._facts.temporal_windowed

    def require_released_rules(self, backend: str):
        """Fused kernels implement the released models' rules; the windowed stage 1 is reference-only."""
        if self.stage1_windowed:
            raise NotImplementedError(f"the {backend} backend does not implement the windowed stage-1 rules; "
                                      f"use backend='reference'")

    @property
    def bidirectional_given(self) -> bool:
        """Given rows see their whole own frame in the spatial channel (:attr:`StreamLayout.bidirectional_given`)."""
        return self._facts.bidirectional_given

    @property
    def shift(self) -> int:
        """The temporal window shift of this launch's layer parity (0 in the spatial channel)."""
        return self._facts.layer_shift(self.layer_parity) if self.temporal else 0

    @property
    def cache_slots(self) -> int:
        """Slots the cache holds for the pass: its given slots and every target slot it may generate."""
        return self.pass_.num_given + self.pass_.max_targets

    @property
    def cache_len(self) -> int:
        return self.text_capacity + self.geometry.frame_len * self.cache_slots


def cache_row(stream_index, text_len, text_capacity):
    """Cache row of a stream index (ints or tensors)."""
    frame = stream_index >= text_len
    return stream_index + frame * (text_capacity - text_len)


def stream_index_of_row(row, text_len, text_capacity):
    """Inverse of :func:`cache_row` plus validity: rows ``text_len..text_capacity-1`` hold nothing."""
    frame = row >= text_capacity
    valid = frame | (row < text_len)
    return row + frame * (text_len - text_capacity), valid
