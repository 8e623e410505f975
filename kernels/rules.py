"""Who attends to whom in CogVideo: the one source of truth for every backend.

Every attention rule of the model (SPEC.md §3.4) lives here, written as arithmetic on stream indices. The
functions never import torch: they take Python ints *or* broadcastable integer tensors (``&``, ``|``, ``==``,
``//`` and ``%`` behave the same on both), so the scheduler asks them about single positions and the dense
mask builder (:mod:`cogvideo_engine.kernels.masks`) evaluates them on whole index grids.

Vocabulary
----------
stream
    One sequence of one pass: ``[text | slot 0 | slot 1 | ...]``. Slots are 400-position blocks in
    *generation* order; the first ``num_given`` slots are given (prefilled), the rest are targets (generated
    one position per step). Stream index ``i``: text for ``i < text_len``, else slot
    ``(i - text_len) // frame_len`` at block position ``p = (i - text_len) % frame_len``.
block position
    ``p`` in ``0..frame_len-1``; the input at ``p == 0`` is BOI and at ``p >= 1`` the frame token ``p - 1``
    (the BOI shift, SPEC.md §2.5). Its window coordinates are ``(p // grid, p % grid)`` whatever it holds.
kind of a query row
    ``TEXT``, ``GIVEN`` (prefill rules) or ``TARGET`` (autoregressive rules). The rule depends on the kind of
    row, not on how the row is computed: a dense forward over given + target rows equals prefill + cached steps.

The table (SPEC.md §3.4):

========================  ====================================  =================================================
query row                 spatial channel                       temporal channel
========================  ====================================  =================================================
text                      text, bidirectional (+bias, cancels)  none: the row uses the spatial output only
given, stage 1            text (+bias) + own frame, causal      text (no bias) + every frame position <= self
given, stage 2            text (+bias) + own frame, all         text (no bias) + same *cyclic* window, all given
target, stage 1           text (+bias) + own frame, causal      text (+bias) + every frame position <= self
target, stage 2           text (+bias) + own frame, causal      text (+bias) + *clamped* window of every earlier
                                                                slot + own-slot window positions < p + self
target, first-frame pass  text (+bias) + own frame, causal      computed by the reference, output unused
========================  ====================================  =================================================

Stage-2 windows (window ``w`` = 10, shift ``s`` = 5 on odd layers, 0 on even layers), per axis:

* clamped (target rows): cells ``a`` and ``b`` share a window iff ``(a + s) // w == (b + s) // w``: groups
  {0..4}, {5..14}, {15..19} on odd layers; no wrap-around.
* cyclic (given rows): iff ``((a - s) mod grid) // w == ((b - s) mod grid) // w``: groups {5..14} and
  {15..19, 0..4} on odd layers -- the reference rolls by ``s`` and partitions without the region mask.

On even layers both reduce to ``a // w == b // w``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TEXT, GIVEN, TARGET = 0, 1, 2
"""Codes of the kind of a stream position (ints so that they broadcast in arithmetic)."""

DEFAULT_BOI_ID = 150000
"""``<start_of_image>`` in icetk with the three pipeline special tokens appended (SPEC.md §2.1)."""


class Pass(str, enum.Enum):
    """Which generation pass a stream belongs to; the pass, not the checkpoint json, fixes the rules."""

    FIRST_FRAME = "stage1-first-frame"
    """Stage-1 model, CogView2 path (``enforce_no_swin``): one target frame after the text."""
    STAGE1 = "stage1"
    """Stage-1 model, frames 1-4 after the given frame 0: full causal temporal attention."""
    STAGE2 = "stage2"
    """Stage-2 model, interpolation: 3 given slots then up to 2 targets, 3-D Swin temporal attention."""

    @property
    def num_given(self) -> int:
        return {Pass.FIRST_FRAME: 0, Pass.STAGE1: 1, Pass.STAGE2: 3}[self]

    @property
    def max_targets(self) -> int:
        return {Pass.FIRST_FRAME: 1, Pass.STAGE1: 4, Pass.STAGE2: 2}[self]

    @property
    def model_stage(self) -> int:
        """Which checkpoint (``cogvideo_stage`` 1 or 2) runs this pass."""
        return 2 if self is Pass.STAGE2 else 1

    @property
    def mixes_temporal(self) -> bool:
        """Whether frame rows mix in the temporal channel (False for the first-frame pass)."""
        return self is not Pass.FIRST_FRAME

    @classmethod
    def parse(cls, value: Pass | str) -> Pass:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(p.value) for p in cls)
            raise ValueError(f"unknown pass {value!r}: expected one of {names}") from None


@dataclass(frozen=True)
class FrameGeometry:
    """Frame geometry of a model: comes from the model config, never from constants in code.

    The released models: 20x20 tokens per frame, 5 slots, stage-2 window 10 with shift 5, frame position ids
    starting at 512, the stage-2 slot order (0, 2, 4, 1, 3) and a 74-token text budget (KV buffers of
    400 + 74 and 2000 + 74 positions in the reference).
    """

    grid: int = 20
    max_slots: int = 5
    window: int = 10
    shift: int = 5
    frame_position_base: int = 512
    stage2_temporal_order: tuple[int, ...] = (0, 2, 4, 1, 3)
    max_text_len: int = 74

    def __post_init__(self):
        if self.grid <= 0 or self.window <= 0 or self.grid % self.window:
            raise ValueError(f"frame grid {self.grid} must be a positive multiple of the window {self.window}")
        if not 0 <= self.shift < self.window:
            raise ValueError(f"shift {self.shift} must lie in [0, window {self.window})")
        if sorted(self.stage2_temporal_order) != list(range(self.max_slots)):
            raise ValueError(f"stage2_temporal_order {self.stage2_temporal_order} must permute 0..{self.max_slots - 1}")

    @property
    def frame_len(self) -> int:
        return self.grid * self.grid

    @property
    def extra_table_start(self) -> int:
        """Position ids at or above this use the extra table (row = id - start); 912 for the released models."""
        return self.frame_position_base + self.frame_len

    def uses_extra_table(self, position_id):
        """Whether a position id reads the extra table (mixin) rather than the base table."""
        return position_id >= self.extra_table_start

    def table_row(self, position_id):
        """Row of its table: the id itself in the base table, ``id - extra_table_start`` in the extra table."""
        return position_id - self.uses_extra_table(position_id) * self.extra_table_start


@dataclass(frozen=True)
class StreamLayout:
    """The shape of one stream: its pass, text length and how many given and target slots follow."""

    pass_: Pass
    text_len: int
    num_targets: int
    geometry: FrameGeometry = FrameGeometry()
    stage1_windowed: bool = False
    """The paper's design for stage 1 (3-D Swin temporal windows instead of full causal attention): target
    and given rows both use the clamped causal window rule. The released stage-1 checkpoint does not."""

    def __post_init__(self):
        object.__setattr__(self, "pass_", Pass.parse(self.pass_))
        if self.stage1_windowed and self.pass_ is not Pass.STAGE1:
            raise ValueError("stage1_windowed applies to the 'stage1' pass only")
        g = self.geometry
        limit = g.max_text_len if self.pass_ is not Pass.FIRST_FRAME else g.frame_position_base
        if not 1 <= self.text_len <= limit:
            raise ValueError(
                f"text length {self.text_len} out of range for pass {self.pass_.value!r}: it must be 1..{limit} "
                f"(the reference's KV buffers hold {g.max_text_len} text positions in the video passes)")
        if not 0 <= self.num_targets <= self.pass_.max_targets:
            raise ValueError(f"pass {self.pass_.value!r} generates at most {self.pass_.max_targets} target "
                             f"frames, got {self.num_targets}")
        if self.num_slots > g.max_slots:
            raise ValueError(f"{self.num_slots} slots exceed the geometry's {g.max_slots}")

    @property
    def num_given(self) -> int:
        return self.pass_.num_given

    @property
    def temporal_windowed(self) -> bool:
        """Whether the temporal channel uses 3-D Swin windows (stage 2, or a windowed stage-1 model)."""
        return self.pass_ is Pass.STAGE2 or self.stage1_windowed

    @property
    def num_slots(self) -> int:
        return self.num_given + self.num_targets

    @property
    def context_len(self) -> int:
        """Prefill length: the text plus every given block."""
        return self.text_len + self.geometry.frame_len * self.num_given

    @property
    def length(self) -> int:
        return self.text_len + self.geometry.frame_len * self.num_slots

    # -- decoding a stream index (ints or integer tensors) ---------------------------------------------

    def is_frame(self, i):
        return i >= self.text_len

    def slot(self, i):
        """Slot of a frame index (meaningless for text indices)."""
        return (i - self.text_len) // self.geometry.frame_len

    def block_pos(self, i):
        """Block position ``p`` of a frame index (meaningless for text indices)."""
        return (i - self.text_len) % self.geometry.frame_len

    def kind(self, i):
        """``TEXT``, ``GIVEN`` or ``TARGET`` as an int (or int tensor)."""
        frame = self.is_frame(i)
        return frame * (GIVEN + (self.slot(i) >= self.num_given))

    def index(self, slot: int, p: int) -> int:
        return self.text_len + self.geometry.frame_len * slot + p

    # -- positions and inputs ------------------------------------------------------------------------

    def temporal_index(self, slot):
        """Temporal index of a slot: the slot itself in stage 1, (0, 2, 4, 1, 3)[slot] in stage 2."""
        if self.pass_ is not Pass.STAGE2:
            return slot
        order = self.geometry.stage2_temporal_order
        if isinstance(slot, int):
            return order[slot]
        out = slot * 0
        for s, t in enumerate(order):  # a table lookup written with arithmetic only
            out = out + (slot == s) * t
        return out

    def position_id(self, i):
        """Position id: text ``0..text_len-1``, frames ``base + frame_len * temporal_index + p``."""
        g = self.geometry
        frame = self.is_frame(i)
        slot = self.slot(i) * frame  # clamp text indices to slot 0 so the stage-2 lookup stays in range
        frame_pos = g.frame_position_base + g.frame_len * self.temporal_index(slot) + self.block_pos(i)
        return i + frame * (frame_pos - i)

    def feeds_boi(self, i):
        """Whether the input at stream index ``i`` is BOI rather than a frame token (block position 0)."""
        return self.is_frame(i) & (self.block_pos(i) == 0)

    @staticmethod
    def block_inputs(frames, boi_id: int):
        """The BOI shift: the inputs of frame blocks given their tokens, ``[..., frame_len]`` integer tensor ->
        the same shape, ``[BOI, token 0 .. token frame_len-2]`` per block (block position ``p`` is fed the
        token sampled at ``p - 1``). Tokens not sampled yet may hold anything: no input reads them early."""
        inputs = frames.roll(1, -1)
        inputs[..., 0] = boi_id
        return inputs

    # -- the attention rules -------------------------------------------------------------------------

    def layer_shift(self, layer_id: int) -> int:
        """Temporal window shift of a layer: ``shift`` on odd layers of a windowed temporal channel, else 0."""
        return self.geometry.shift if self.temporal_windowed and layer_id % 2 == 1 else 0

    @property
    def bidirectional_given(self) -> bool:
        """Whether given rows see their whole own frame in the spatial channel (stage 2), not a causal prefix."""
        return self.pass_ is Pass.STAGE2

    def spatial_visible(self, q, k):
        """Whether query index ``q`` sees key index ``k`` in the spatial (CogView2) channel."""
        kq, kk = self.kind(q), self.kind(k)
        text_key = kk == TEXT
        same_slot = (kk != TEXT) & (kq != TEXT) & (self.slot(q) == self.slot(k))
        causal = self.block_pos(k) <= self.block_pos(q)
        bidirectional = (kq == GIVEN) & self.bidirectional_given
        return text_key | (same_slot & (causal | bidirectional))

    def spatial_text_bias(self, q):
        """Whether the text bias is added on text keys of row ``q`` in the spatial channel: every row."""
        return q == q

    def temporal_visible(self, q, k, layer_id: int):
        """Whether query index ``q`` sees key ``k`` in the temporal channel of layer ``layer_id``.

        Text rows have no temporal channel (always False); frame rows always see every text key.
        """
        kq, kk = self.kind(q), self.kind(k)
        frame_q = kq != TEXT
        text_key = frame_q & (kk == TEXT)
        frame_pair = frame_q & (kk != TEXT)
        if not self.temporal_windowed:  # stage 1: full causal over frame positions in stream order
            return text_key | (frame_pair & (k <= q))
        g = self.geometry
        s = self.layer_shift(layer_id)
        w = g.window
        qx, qy = self.block_pos(q) // g.grid, self.block_pos(q) % g.grid
        kx, ky = self.block_pos(k) // g.grid, self.block_pos(k) % g.grid
        # clamped windows, every earlier slot, causal in the own slot, and self (AR rows; stage-1 given rows)
        clamped = ((qx + s) // w == (kx + s) // w) & ((qy + s) // w == (ky + s) // w)
        earlier_slot = self.slot(k) < self.slot(q)
        own_slot_before = (self.slot(k) == self.slot(q)) & (self.block_pos(k) < self.block_pos(q))
        causal_window = (clamped & (earlier_slot | own_slot_before)) | (k == q)
        target_rule = (kq == TARGET) & causal_window
        if self.pass_ is Pass.STAGE2:  # given rows: cyclic windows over the given slots, bidirectional
            cyclic = (((qx - s) % g.grid) // w == ((kx - s) % g.grid) // w) & \
                     (((qy - s) % g.grid) // w == ((ky - s) % g.grid) // w)
            given_rule = (kq == GIVEN) & (kk == GIVEN) & cyclic
        else:
            given_rule = (kq == GIVEN) & causal_window
        return text_key | (frame_pair & (given_rule | target_rule))

    def temporal_text_bias(self, q):
        """Whether the text bias is added on text keys of row ``q`` in the temporal channel: target rows only."""
        return self.kind(q) == TARGET

    def mixes_temporal(self, q):
        """Whether row ``q``'s attention output mixes in the temporal channel (frame rows of video passes)."""
        return self.is_frame(q) & self.pass_.mixes_temporal

    # -- enumerations for schedulers and tests -----------------------------------------------------------

    def spatial_keys(self, q: int) -> list[int]:
        return [k for k in range(self.length) if self.spatial_visible(q, k)]

    def temporal_keys(self, q: int, layer_id: int) -> list[int]:
        return [k for k in range(self.length) if self.temporal_visible(q, k, layer_id)]
