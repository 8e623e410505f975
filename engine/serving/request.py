"""One request's state: which phase it is in, the work it offers the loop, what it has made, and its events.

Pure bookkeeping on the CPU (token tensors, no model): the core (:mod:`.core`) asks every running request for
its ready :class:`Unit` s, runs batches of them and hands each unit's result back here. A request moves through

    first_frame -> stage1 -> stage2 round 0, 1, 2 -> super_resolution -> decode -> done

(``only_first_stage`` skips stage 2; super-resolution runs when asked; a resumed request starts where its
checkpoint ends). Within a phase its units are independent: one per sample (first frame, stage 1 -- 2 cache rows
with guidance --, decode), per (sample, window) in a stage-2 round, per (sample, frame) in super-resolution.
A phase ends when all its units are back; that is the pass boundary where checkpoints and previews are made.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cogvideo_engine.kernels.rules import Pass

from ..generation.pipeline import (STAGE1_FRAMES, first_frame_row, interpolation_windows, merge_round,
                                   stage1_row, stage1_texts, stage2_row, video_text)
from ..generation.sampler import SamplingPass
from ..generation.settings import STAGE2_DURATIONS
from .types import TERMINAL_KINDS, Checkpoint, Event, SamplingParams


class WorkKind(enum.Enum):
    """What a unit of work is; a batch holds units of one kind."""

    FIRST_FRAME = "first_frame"
    STAGE1 = "stage1"
    STAGE2 = "stage2"
    SUPER_RESOLUTION = "super_resolution"
    DECODE = "decode"

    @property
    def phase(self) -> str:
        """The phase progress is reported in (the first frame is part of stage 1)."""
        return "stage1" if self is WorkKind.FIRST_FRAME else self.value

    @property
    def pass_(self) -> Pass | None:
        return {WorkKind.FIRST_FRAME: Pass.FIRST_FRAME, WorkKind.STAGE1: Pass.STAGE1,
                WorkKind.STAGE2: Pass.STAGE2}.get(self)


PASS_TARGETS = {WorkKind.FIRST_FRAME: 1, WorkKind.STAGE1: Pass.STAGE1.max_targets, WorkKind.STAGE2: 2}
"""Target frames per row of each pass kind."""
NUM_ROUNDS = len(STAGE2_DURATIONS)


@dataclass(eq=False)
class Unit:
    """One piece of a request's current phase: ``index`` = sample (first frame, stage 1, decode), (sample,
    window) in a stage-2 round, (sample, frame) in super-resolution."""

    request: Request
    kind: WorkKind
    index: tuple[int, ...]
    rows: int = 1
    """Cache rows it takes in a forward (2 for a guided stage-1 sample)."""


class Request:
    """A request from submission to its last event (see the module docstring). ``emit`` receives its events;
    ``encoder`` forms its texts (:class:`~cogvideo_engine.generation.pipeline.TextEncoder`); ``sr_frame_len``:
    tokens of a super-resolved frame (for progress totals)."""

    def __init__(self, request_id: str, prompt: str, params: SamplingParams, *, encoder, frame_len: int,
                 want_super_resolution: bool, emit: Callable[[Event], None], resume: Checkpoint | None = None,
                 previews: bool = False, sr_frame_len: int = 0):
        self.id, self.prompt, self.params = request_id, prompt, params
        self.settings = params.pipeline_settings()
        self.samples, self.frame_len = params.num_samples, frame_len
        self.want_super_resolution = want_super_resolution
        self.previews = previews
        self.sr_frame_len = sr_frame_len
        self._emit = emit
        self._event_lock = threading.RLock()
        self.first_ids, self.main_ids, self.guider_ids = stage1_texts(encoder, prompt, self.settings)
        self.round_ids = [video_text(encoder, d, prompt) for d in STAGE2_DURATIONS]
        self.sr_ids = encoder.encode(prompt)
        self.boi_id = encoder.boi_id
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.finished = False
        self.tokens = torch.zeros(self.samples, 0, frame_len, dtype=torch.long)
        if resume is not None:
            self.tokens = resume.tokens.long().clone()
        self.sr_tokens: torch.Tensor | None = None
        self.decoded: list[torch.Tensor | None] = [None] * self.samples
        self.preview_frames: dict[bytes, torch.Tensor] = {}  # a frame's tokens -> its decoded preview
        self.timings: dict[str, float] = {}
        self.step_seconds: dict[str, list[float]] = {}
        self.phase_started: dict[str, float] = {}
        self.done_tokens: dict[str, int] = self.resumed_tokens()
        """Per phase: tokens done (frames for ``decode``), counting what the resume state holds."""
        self.kind: WorkKind | None = None
        self.round = 0
        self._pending: list[Unit] = []
        self._outstanding = 0
        self._results: dict[tuple[int, ...], torch.Tensor] = {}
        self._enter_next_phase()

    # -- events ----------------------------------------------------------------------------------------------

    def emit(self, kind: str, **fields) -> None:
        """Send an event (nothing after the terminal one; safe from any thread)."""
        with self._event_lock:
            if self.finished:
                return
            if kind in TERMINAL_KINDS:
                self.finished = True
            self._emit(Event(kind, self.id, time.perf_counter(), **fields))

    # -- what is left -----------------------------------------------------------------------------------------

    def phase_total(self, phase: str) -> int:
        """Tokens of ``phase`` for all samples (frames for ``decode``), exact."""
        s, f = self.samples, self.frame_len
        if phase == "stage1":
            return s * STAGE1_FRAMES * f
        if phase == "stage2":
            return 0 if self.params.only_first_stage else s * (self.final_frames - STAGE1_FRAMES) * f
        if phase == "super_resolution":
            return s * self.final_frames * (self.sr_frame_len if self.want_super_resolution else 0)
        return s * self.final_frames

    def resumed_tokens(self) -> dict[str, int]:
        """Per phase, the tokens :attr:`tokens` holds already (a resumed request's progress starts there)."""
        s, f, n = self.samples, self.frame_len, self.tokens.shape[1]
        done = {"stage1": s * min(n, STAGE1_FRAMES) * f, "stage2": s * max(n - STAGE1_FRAMES, 0) * f}
        return {phase: tokens for phase, tokens in done.items() if tokens}

    @property
    def final_frames(self) -> int:
        return STAGE1_FRAMES if self.params.only_first_stage else (STAGE1_FRAMES - 1) * 2 ** NUM_ROUNDS + 1

    def ready_units(self) -> list[Unit]:
        return self._pending

    def take(self, units: list[Unit]) -> None:
        """The core put ``units`` into a batch."""
        taken = set(map(id, units))
        self._pending = [u for u in self._pending if id(u) not in taken]
        self._outstanding += len(units)
        if self.started is None:
            self.started = time.perf_counter()
            self.emit("started")
        phase = units[0].kind.phase
        self.phase_started.setdefault(phase, time.perf_counter())

    def add_progress(self, phase: str, tokens: int, eta_s: float | None) -> None:
        self.done_tokens[phase] = self.done_tokens.get(phase, 0) + tokens
        self.emit("progress", phase=phase, done=self.done_tokens[phase], total=self.phase_total(phase),
                  eta_s=eta_s)

    # -- the rows of each unit ----------------------------------------------------------------------------------

    def pass_row(self, unit: Unit):
        """The :class:`~cogvideo_engine.generation.passes.PassRow` of a pass unit."""
        if unit.kind is WorkKind.FIRST_FRAME:
            return first_frame_row(self.first_ids, unit.index[0], self.params.seed, self.settings, self.frame_len)
        if unit.kind is WorkKind.STAGE1:
            s = unit.index[0]
            return stage1_row(self.main_ids, self.guider_ids, self.tokens[s, :1], s, self.params.seed,
                              self.settings)
        s, w = unit.index
        parents = list(interpolation_windows(self.tokens.shape[1])[w])
        return stage2_row(self.round_ids[self.round], self.tokens[s, parents], s, w, self.round, self.params.seed,
                          self.settings)

    def sr_key(self, unit: Unit) -> tuple[int, ...]:
        s, f = unit.index
        return self.params.seed, s, SamplingPass.SUPER_RESOLUTION, 0, f

    # -- results ----------------------------------------------------------------------------------------------

    def complete(self, unit: Unit, result: torch.Tensor) -> WorkKind | None:
        """``unit``'s result: its target tokens ``[n_target, F]`` (passes), ``[3600]`` (super-resolution) or uint8
        frames ``[F, H, W, 3]`` (decode). Returns the kind of the phase this result finished (then the tokens are
        merged, a checkpoint emitted and the next phase's units made), else None."""
        self._results[unit.index] = result
        self._outstanding -= 1
        if self._pending or self._outstanding or self.finished:
            return None
        results, self._results = self._results, {}
        kind, s = self.kind, self.samples
        if kind is WorkKind.FIRST_FRAME:
            self.tokens = torch.stack([results[(i,)] for i in range(s)])
        elif kind is WorkKind.STAGE1:
            self.tokens = torch.cat([self.tokens, torch.stack([results[(i,)] for i in range(s)])], dim=1)
        elif kind is WorkKind.STAGE2:
            windows = len(interpolation_windows(self.tokens.shape[1]))
            generated = torch.stack([torch.stack([results[(i, w)] for w in range(windows)]) for i in range(s)])
            self.tokens = merge_round(self.tokens, generated)
        elif kind is WorkKind.SUPER_RESOLUTION:
            n = self.tokens.shape[1]
            self.sr_tokens = torch.stack([torch.stack([results[(i, f)] for f in range(n)]) for i in range(s)])
        else:
            self.decoded = [results[(i,)] for i in range(s)]
        now = time.perf_counter()
        if kind is WorkKind.FIRST_FRAME:
            self.timings["time_to_first_frame"] = now - self.submitted
        ends_phase = {WorkKind.FIRST_FRAME: False, WorkKind.STAGE2: self.round == NUM_ROUNDS - 1}.get(kind, True)
        if ends_phase:
            self.timings[kind.phase] = now - self.phase_started[kind.phase]
        if kind in (WorkKind.FIRST_FRAME, WorkKind.STAGE1, WorkKind.STAGE2):
            tokens = self.tokens.clone()
            self.emit("checkpoint", tokens=tokens, checkpoint=Checkpoint(self.prompt, self.params, tokens))
        self._enter_next_phase()
        return kind

    def _enter_next_phase(self) -> None:
        n = self.tokens.shape[1]
        if n == 0:
            kind = WorkKind.FIRST_FRAME
        elif n == 1:
            kind = WorkKind.STAGE1
        elif not self.params.only_first_stage and n < self.final_frames:
            kind = WorkKind.STAGE2
            self.round = self.rounds_done
        elif self.want_super_resolution and self.sr_tokens is None:
            kind = WorkKind.SUPER_RESOLUTION
        elif self.decoded[0] is None:
            kind = WorkKind.DECODE
        else:
            self.kind = None
            return
        self.kind = kind
        s = self.samples
        if kind in (WorkKind.FIRST_FRAME, WorkKind.DECODE):
            self._pending = [Unit(self, kind, (i,)) for i in range(s)]
        elif kind is WorkKind.STAGE1:
            rows = 2 if self.settings.use_guidance_stage1 else 1
            self._pending = [Unit(self, kind, (i,), rows) for i in range(s)]
        elif kind is WorkKind.STAGE2:
            windows = len(interpolation_windows(n))
            self._pending = [Unit(self, kind, (i, w)) for i in range(s) for w in range(windows)]
        else:
            self._pending = [Unit(self, kind, (i, f)) for i in range(s) for f in range(n)]

    @property
    def rounds_done(self) -> int:
        """Interpolation rounds finished (0 before stage 2)."""
        n = self.tokens.shape[1]
        return int(math.log2((n - 1) // (STAGE1_FRAMES - 1))) if n > STAGE1_FRAMES else 0

    @property
    def is_done(self) -> bool:
        """All phases finished (the core then builds the outputs and emits ``completed``)."""
        return self.kind is None

    def drop_work(self) -> None:
        """Cancelled or failed: offer no more units (those in a running batch finish with it)."""
        self._pending = []
