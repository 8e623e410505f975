"""The engine core: one loop that owns the device, batches ready work of every request, and routes results back.

Granularity: **one pass per step**. A step picks a kind of work (first-frame passes, stage-1 passes with their
guider rows, stage-2 interpolation windows, super-resolution frames, VQ decode), gathers ready units of that
kind from every running request up to the row budget, runs them to the end -- a pass's prefill and all its
decode steps on one static cache -- and hands each unit's tokens back to its request. A request that arrives
meanwhile joins at the next step (the pass boundary), as in TensorRT-LLM's in-flight batching at the
granularity of this model's passes. Why passes and not decode steps: every row of a pass runs the same fixed
schedule (400, 1600 or 590 steps), so rows that start together end together and nothing is gained by
admitting rows mid-pass, which would need per-row schedules and caches re-captured into CUDA graphs; a pass is
also the unit every checkpoint and preview is made at.

Which kind runs next: the request served least recently (ties: the oldest) picks the kind, its units go first,
then the same kind's units of the other requests in arrival order. Every request is served in turn (no
starvation) and requests that arrived together advance together, sharing every forward.

State that lives as long as the core: one :class:`ModelRunner` per model (weights fused once; under offload the
fused copies move with the model, once per residency, and a model moves once per stage of a batch, not per
prompt), one :class:`CachePool` (static caches at full text capacity, with their CUDA graphs).

Thread-safety: :meth:`EngineCore.submit` and :meth:`EngineCore.abort` may be called from any thread; one thread
at a time runs :meth:`EngineCore.step` (:meth:`EngineCore.drive` serialises callers). Events are emitted from
the thread running the step.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import torch

from .. import metrics
from ..checks import require_token_tensor
from ..generation.cache_pool import CachePool
from ..generation.passes import decode_pass
from ..generation.pipeline import STAGE1_FRAMES, check_prompt
from ..generation.runner import ModelRunner, graphs_by_default, weight_bytes
from ..generation.settings import MAX_BATCH
from ..generation.super_resolution import super_resolve
from ..models.config import NUM_IMAGE_TOKENS
from ..parallel.sharding import shard_of
from ..generation.scheduler import schedule as make_schedule
from .request import NUM_ROUNDS, PASS_TARGETS, Request, Unit, WorkKind
from .types import AdmissionError, Cancelled, Checkpoint, Event, QueueFull, SamplingParams, VideoOutput

MAX_ROWS = 4 * MAX_BATCH
"""Default cache rows per forward across requests (also bounded by the cache memory budget)."""
DECODE_MAX_SAMPLES = 4
"""VQ-decode units (one sample's frames each) per step."""
RESUMABLE_FRAMES = (1, STAGE1_FRAMES, 9, 17, 33)
"""Frame counts a checkpoint can hold: after the first frame, stage 1, interpolation rounds 1, 2 and 3."""


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


class EngineStats:
    """Counters of the core since it was made (what the service exports): ``steps`` (batches run),
    ``forward_steps`` (decode forwards), ``rows`` and ``row_slots`` (rows fed per forward and the row budget they
    had: ``occupancy = rows / row_slots``), ``tokens`` (generated), ``busy_seconds`` (time inside steps)."""

    def __init__(self):
        self.steps = self.forward_steps = self.rows = self.row_slots = self.tokens = 0
        self.busy_seconds = 0.0
        self.submitted = self.completed = self.failed = self.cancelled = 0

    @property
    def occupancy(self) -> float:
        return self.rows / self.row_slots if self.row_slots else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.busy_seconds if self.busy_seconds else 0.0

    def as_dict(self) -> dict:
        d = dict(vars(self))
        d.update(occupancy=self.occupancy, tokens_per_s=self.tokens_per_s)
        return d


class EngineCore:
    """Requests, the scheduler and the executor over an :class:`~cogvideo_engine.api.Engine`'s assets.

    max_rows: cache rows per forward across requests (None: :data:`MAX_ROWS`), lowered per pass to what the
    cache budget holds; cache_memory_bytes: the static caches' budget (None: the pool's device default);
    max_queued: unfinished requests the core accepts (None: no limit; beyond it :class:`QueueFull`).
    """

    def __init__(self, engine, *, max_rows: int | None = None, cache_memory_bytes: int | None = None,
                 max_queued: int | None = None):
        self.engine = engine
        self.max_rows = MAX_ROWS if max_rows is None else max_rows
        self.max_queued = max_queued
        self.pool = CachePool(cache_memory_bytes)
        self.stats = EngineStats()
        self._runners: dict[int, ModelRunner] = {}
        self._requests: dict[str, Request] = {}  # unfinished, in arrival order
        self._served: dict[str, int] = {}  # request id -> the step that last served it
        self._lock = threading.RLock()  # the request table
        self._driver = threading.Lock()  # one thread runs steps
        self._work = threading.Condition(self._lock)
        self._ids = itertools.count()
        self._step_seconds: dict[WorkKind, float] = {}  # measured seconds per forward step (per frame: SR, decode)
        self._resident = None
        self._row_bytes_of: dict[WorkKind, int] = {}
        self._graphs_on: dict[torch.device, bool] = {}
        self._num_steps_of: dict[tuple[WorkKind, str], int] = {}
        self.step_observers: list[Callable[[str, float], None]] = []
        """Called from the stepping thread with (phase, seconds) for every forward step of a pass, every
        super-resolution frame and every decoded frame (e.g. the service's step-time histogram)."""

    # -- admission ------------------------------------------------------------------------------------------

    def check(self, prompt: str, params: SamplingParams, resume: Checkpoint | torch.Tensor | None = None,
              ) -> Checkpoint | None:
        """Everything about one request that can be checked before any compute, against this engine's assets
        and budget: ``TypeError`` / ``ValueError`` naming the constraint, :class:`AdmissionError` if its rows do
        not fit. Returns the resume state as a :class:`Checkpoint` (a tensor ``[S, N, 400]`` is taken as one)."""
        e = self.engine
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if resume is not None:
            if isinstance(resume, Checkpoint):
                if resume.prompt != prompt:
                    raise ValueError("the checkpoint was made for another prompt")
                resume = resume.tokens
            frame_len = e.stage1_model.config.geometry.frame_len
            require_token_tensor("resume tokens", resume, ndim=3, upper=NUM_IMAGE_TOKENS,
                                 shape=(params.num_samples, None, frame_len))
            if resume.shape[1] not in RESUMABLE_FRAMES:
                raise ValueError(f"resume tokens hold {resume.shape[1]} frames; a pass boundary holds one of "
                                 f"{RESUMABLE_FRAMES}")
            if params.only_first_stage and resume.shape[1] > STAGE1_FRAMES:
                raise ValueError("resume tokens past stage 1 need a request with stage 2 (only_first_stage=False)")
            resume = Checkpoint(prompt, params, resume.long())
        settings = params.pipeline_settings()
        want_sr = self.wants_super_resolution(params)
        if want_sr and e.dsr_model is None:
            raise ValueError("super-resolution needs the cogview2-dsr checkpoint: Engine.from_pretrained(dsr=...)")
        if not params.only_first_stage and e.stage2_model is None:
            raise ValueError("no stage-2 model loaded: pass only_first_stage=True or a stage-2 checkpoint")
        e.sampler.check_params(settings.video, "top_k")
        e.sampler.check_params(settings.first_frame, "first_frame_top_k")
        done = 0 if resume is None else resume.num_frames
        check_prompt(e.tokenizer, prompt, settings, stage1=e.stage1_model if done < STAGE1_FRAMES else None,
                     stage2=None if params.only_first_stage else e.stage2_model)
        if want_sr:
            e.dsr_model.config.check_prompt_len(len(e.tokenizer.encode(prompt)))
        for kind in self._kinds_needed(params, done):
            rows = 2 if kind is WorkKind.STAGE1 and params.use_guidance_stage1 else 1
            budget = self.row_budget(kind)
            if budget < rows:
                pool_mib = self.pool.budget(self._device(self._model(kind))) / 2**20
                raise AdmissionError(
                    f"{kind.value} needs {rows} cache rows per forward ({self._row_bytes(kind) * rows / 2**20:.0f} "
                    f"MiB) but the engine's cache budget ({pool_mib:.0f} MiB, max_rows {self.max_rows}) holds "
                    f"{budget}")
        return resume

    def wants_super_resolution(self, params: SamplingParams) -> bool:
        e = self.engine
        return e.super_resolution_default if params.super_resolution is None else params.super_resolution

    def _kinds_needed(self, params: SamplingParams, done_frames: int) -> list[WorkKind]:
        kinds = []
        if done_frames < 1:
            kinds.append(WorkKind.FIRST_FRAME)
        if done_frames < STAGE1_FRAMES:
            kinds.append(WorkKind.STAGE1)
        if not params.only_first_stage and done_frames < 33:
            kinds.append(WorkKind.STAGE2)
        return kinds

    def row_budget(self, kind: WorkKind) -> int:
        """Cache rows one forward of ``kind`` may take: ``max_rows`` within the cache budget. With CUDA graphs
        every pass's cache is made at its row budget once, so the budget is shared: the caches of all three passes
        fit together and none is ever re-made (nor its graphs re-captured)."""
        device = self._device(self._model(kind))
        if device not in self._graphs_on:  # the backend probe is not for every step
            self._graphs_on[device] = graphs_by_default(device, self.engine.backend)
        if self._graphs_on[device]:
            kinds = [k for k in PASS_TARGETS if self._model(k) is not None]
            per_row = sum(self._row_bytes(k) for k in kinds)
        else:
            per_row = self._row_bytes(kind)
        return min(self.max_rows, self.pool.budget(device) // per_row)

    def _row_bytes(self, kind: WorkKind) -> int:
        if kind not in self._row_bytes_of:
            model = self._model(kind)
            self._row_bytes_of[kind] = self.pool.bytes_per_row(
                model.config, _dtype(model), kind.pass_, PASS_TARGETS[kind],
                shard_of(model).share(model.config.num_attention_heads))
        return self._row_bytes_of[kind]

    def _device(self, model) -> torch.device:
        """Where ``model`` runs: the offload device, else where it lives."""
        return self.engine.offload_to or next(model.parameters()).device

    def submit(self, prompt: str, params: SamplingParams, *, emit: Callable[[Event], None],
               request_id: str | None = None, resume: Checkpoint | torch.Tensor | None = None,
               previews: bool = False, checked: bool = False) -> Request:
        """Admit a request (checked first unless ``checked``); its events go to ``emit`` (called from the thread
        running the step, or from this one for ``queued``). Raises before admitting anything."""
        if not checked:
            resume = self.check(prompt, params, resume)
        elif isinstance(resume, torch.Tensor):
            resume = Checkpoint(prompt, params, resume.long())
        with self._lock:
            if request_id is None:
                request_id = f"req-{next(self._ids)}"
            elif not isinstance(request_id, str) or not request_id:
                raise TypeError(f"request_id must be a non-empty string, got {request_id!r}")
            if request_id in self._requests:
                raise ValueError(f"request id {request_id!r} is already in use")
            if self.max_queued is not None and len(self._requests) >= self.max_queued:
                raise QueueFull(f"the engine holds {len(self._requests)} unfinished requests (max_queued "
                                f"{self.max_queued}); retry later")
            e = self.engine
            sr_len = e.dsr_model.config.local.num_queries if e.dsr_model is not None else 0
            request = Request(request_id, prompt, params, encoder=e.tokenizer,
                              frame_len=e.stage1_model.config.geometry.frame_len,
                              want_super_resolution=self.wants_super_resolution(params), emit=emit, resume=resume,
                              previews=previews, sr_frame_len=sr_len)
            position = sum(1 for r in self._requests.values() if r.started is None)
            self._requests[request_id] = request
            self._served[request_id] = -1
            self.stats.submitted += 1
            request.emit("queued", position=position)
            self._work.notify_all()
        return request

    def abort(self, request_id: str, reason: str | None = None) -> bool:
        """Cancel a request: "cancelled" is emitted now; its rows stop costing work by the end of the running pass
        (at once if no other request shares it). False if no such unfinished request."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is None or request.finished:
                return False
            request.drop_work()
            self.stats.cancelled += 1
            request.emit("cancelled", error=Cancelled(reason or f"request {request_id} was cancelled"))
            return True

    def fail(self, request: Request, error: BaseException) -> None:
        with self._lock:
            if request.finished:
                return
            request.drop_work()
            self.stats.failed += 1
            request.emit("failed", error=error)

    def fail_all(self, error: BaseException) -> None:
        """Fail every unfinished request with ``error`` (the loop's last resort)."""
        with self._lock:
            for request in list(self._requests.values()):
                self.fail(request, error)
            self._reap()

    # -- the loop -------------------------------------------------------------------------------------------

    @property
    def num_unfinished(self) -> int:
        with self._lock:
            return sum(1 for r in self._requests.values() if not r.finished)

    @property
    def num_waiting(self) -> int:
        """Requests admitted whose first work has not run yet (the queue length)."""
        with self._lock:
            return sum(1 for r in self._requests.values() if r.started is None and not r.finished)

    def drive(self, until: Callable[[], bool], timeout: float | None = None) -> None:
        """Run steps in this thread until ``until()`` (serialised with any other thread driving this core, e.g. an
        :class:`~.async_engine.AsyncEngine` loop: whoever holds the core runs the next step)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not until():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the request did not finish in time")
            if self._driver.acquire(timeout=0.05):
                try:
                    while not until() and self.step():
                        pass
                    if until():  # done here: with offload the resident model goes home unless more work waits
                        with self._lock:
                            self._go_idle()
                finally:
                    self._driver.release()
                if not until():
                    with self._work:
                        self._work.wait(0.05)

    def wait_for_work(self, timeout: float) -> None:
        with self._work:
            if not self.has_ready_work():
                self._work.wait(timeout)

    def has_ready_work(self) -> bool:
        """Whether a request has units waiting for a batch."""
        with self._lock:
            return any(r.ready_units() for r in self._requests.values() if not r.finished)

    def step(self) -> bool:
        """Run one batch (see the module docstring). False when no request has ready work."""
        with self._lock:
            self._reap()
            batch = self._pick()
            if not batch:
                self._go_idle()
                return False
            kind = batch[0].kind
            for request in dict.fromkeys(u.request for u in batch):
                request.take([u for u in batch if u.request is request])
                self._served[request.id] = self.stats.steps
        t0 = time.perf_counter()
        try:
            with metrics.nvtx_range(f"cogvideo.{kind.value}", self._on_cuda()):
                if kind is WorkKind.SUPER_RESOLUTION:
                    self._run_super_resolution(batch)
                elif kind is WorkKind.DECODE:
                    self._run_decode(batch)
                else:
                    self._run_pass(kind, batch)
        except Exception as error:  # noqa: BLE001  (the batch's requests fail; the engine keeps serving)
            for request in dict.fromkeys(u.request for u in batch):
                self.fail(request, error)
        finally:
            self.stats.steps += 1
            self.stats.busy_seconds += time.perf_counter() - t0
        with self._lock:
            for request in dict.fromkeys(u.request for u in batch):
                if request.is_done and not request.finished:
                    self._complete(request)
            self._reap()
        return True

    def _reap(self) -> None:
        for rid in [rid for rid, r in self._requests.items() if r.finished]:
            del self._requests[rid]
            del self._served[rid]

    def _pick(self) -> list[Unit]:
        live = [r for r in self._requests.values() if not r.finished and r.ready_units()]
        if not live:
            return []
        first = min(live, key=lambda r: self._served[r.id])  # stable: ties go to the oldest
        kind = first.ready_units()[0].kind
        schedule = first.params.schedule
        if kind is WorkKind.SUPER_RESOLUTION:
            budget = first.params.sr_max_batch
        elif kind is WorkKind.DECODE:
            budget = DECODE_MAX_SAMPLES
        else:
            budget = self.row_budget(kind)
        batch, used = [], 0
        for r in [first] + [r for r in live if r is not first]:
            if r.kind is not kind or (kind.pass_ is not None and r.params.schedule != schedule):
                continue
            own = 0
            cap = r.params.max_batch if kind.pass_ is not None else budget
            for u in r.ready_units():
                if used + u.rows > budget or own + u.rows > max(cap, u.rows):
                    break
                batch.append(u)
                used += u.rows
                own += u.rows
        return batch

    def _go_idle(self) -> None:
        """Nothing to run: with offload, the resident model goes home."""
        if self._resident is not None and not self.has_ready_work():
            self._move_home(self._resident)
            self._resident = None

    # -- execution ------------------------------------------------------------------------------------------

    def _model(self, kind: WorkKind):
        e = self.engine
        if kind is WorkKind.SUPER_RESOLUTION:
            return e.dsr_model
        return e.stage2_model if kind is WorkKind.STAGE2 else e.stage1_model

    def _runner(self, kind: WorkKind) -> ModelRunner:
        """The model's runner, made (weights fused) once for the core's life."""
        model = self._model(kind)
        runner = self._runners.get(id(model))
        if runner is None:
            self._make_resident(model)
            runner = self._runners[id(model)] = ModelRunner(model, self.engine.backend)
        return runner

    def _on_cuda(self) -> bool:
        return next(self.engine.decoder.parameters()).is_cuda

    def _make_resident(self, model) -> None:
        """With offload: ``model`` on the run device, the previously resident one back home (once per stage of a
        batch)."""
        target = self.engine.offload_to
        if target is None or self._resident is model:
            return
        if self._resident is not None:
            self._move_home(self._resident)
        model.to(target)
        self._resident = model
        runner = self._runners.get(id(model))
        if runner is not None:
            runner.follow_model()

    def _move_home(self, model) -> None:
        model.to("cpu")
        runner = self._runners.get(id(model))
        if runner is not None:
            runner.follow_model()
        if self.engine.offload_to is not None and self.engine.offload_to.type == "cuda":
            torch.cuda.empty_cache()

    def _eta(self, request: Request, kind: WorkKind, steps_left: int) -> float | None:
        """Seconds to the end of ``request``'s passes from the measured seconds per step: the steps left in the
        running pass, then the schedule's steps of each pass it still needs (a stage-2 round as one batch per
        row budget); None until every kind it needs was measured once."""
        per_step = self._step_seconds
        if kind not in per_step:
            return None
        eta = steps_left * per_step[kind]
        later = {WorkKind.FIRST_FRAME: [WorkKind.STAGE1], WorkKind.STAGE1: []}.get(kind, [])
        rounds_left = 0 if request.params.only_first_stage else NUM_ROUNDS - request.round - (
            1 if kind is WorkKind.STAGE2 else 0)
        for k in later + [WorkKind.STAGE2] * rounds_left:
            if k not in per_step:
                return None
            eta += self._passes_per_round(request, k) * self._num_steps(request, k) * per_step[k]
        return eta

    def _num_steps(self, request: Request, kind: WorkKind) -> int:
        """Forward steps of one pass of ``kind`` under the request's schedule."""
        key = kind, request.params.schedule
        if key not in self._num_steps_of:
            model = self._model(kind)
            layout = model.config.layout(kind.pass_, 1, PASS_TARGETS[kind])
            self._num_steps_of[key] = len(make_schedule(layout, model.config.num_layers, key[1]))
        return self._num_steps_of[key]

    def _passes_per_round(self, request: Request, kind: WorkKind) -> int:
        if kind is not WorkKind.STAGE2:
            return 1
        windows = request.samples * (request.tokens.shape[1] - 1) // 2 * (2 ** (request.round + 1))
        return -(-windows // max(1, min(request.params.max_batch, self.row_budget(kind))))

    def _measured(self, kind: WorkKind, seconds: float) -> None:
        old = self._step_seconds.get(kind)
        self._step_seconds[kind] = seconds if old is None else 0.9 * old + 0.1 * seconds

    def _observe(self, phase: str, seconds: float) -> None:
        for observer in self.step_observers:
            observer(phase, seconds)

    def _run_pass(self, kind: WorkKind, batch: list[Unit]) -> None:
        runner = self._runner(kind)
        self._make_resident(runner.model)
        rows = [u.request.pass_row(u) for u in batch]
        streams = sum(r.num_streams for r in rows)
        budget = self.row_budget(kind)
        cache = self.pool.acquire(runner, kind.pass_, PASS_TARGETS[kind], streams, budget)
        owners = list(dict.fromkeys(u.request for u in batch))
        count = {r: sum(1 for u in batch if u.request is r) for r in owners}
        last = [time.perf_counter()]

        def on_step(step, num_steps, positions):
            now = time.perf_counter()
            seconds, last[0] = now - last[0], now
            self._measured(kind, seconds)
            self._observe(kind.phase, seconds)
            self.stats.forward_steps += 1
            self.stats.rows += streams
            self.stats.row_slots += budget
            self.stats.tokens += len(positions) * len(batch)
            for r in owners:
                if not r.finished:
                    r.step_seconds.setdefault(kind.phase, []).append(seconds)
                    r.add_progress(kind.phase, len(positions) * count[r], self._eta(r, kind, num_steps - step))

        def on_frame(target, tokens):
            if kind is not WorkKind.STAGE1:
                return
            for b, u in enumerate(batch):
                if u.request.previews and not u.request.finished:
                    self._preview(u.request, u.index[0], tokens[b][None], frame_index=1 + target)
            last[0] = time.perf_counter()  # a preview's decoding is not the next step's time (nor in the ETA)

        result = decode_pass(runner, cache, kind.pass_, PASS_TARGETS[kind], rows, self.engine.sampler,
                             schedule=batch[0].request.params.schedule, boi_id=self.engine.tokenizer.boi_id,
                             on_step=on_step, on_frame=on_frame,
                             should_stop=lambda: all(r.finished for r in owners))
        if result is None:
            return
        for b, u in enumerate(batch):
            self._finish_unit(u, result.tokens[b])

    def _finish_unit(self, unit: Unit, result: torch.Tensor) -> None:
        request = unit.request
        with self._lock:  # against an abort from another thread
            if request.finished:
                return
            finished = request.complete(unit, result)
        if not request.previews or request.finished:
            return
        if finished is WorkKind.FIRST_FRAME:
            for s in range(request.samples):
                self._preview(request, s, request.tokens[s, :1], frame_index=0)
        elif finished is WorkKind.STAGE2:
            for s in range(request.samples):
                self._preview(request, s, request.tokens[s], round=request.rounds_done)

    def _decode(self, request: Request, tokens: torch.Tensor) -> torch.Tensor:
        """uint8 frames of ``tokens [N, 400]``, reusing the request's earlier previews of the same frames."""
        known = request.preview_frames
        missing = [i for i in range(tokens.shape[0]) if tokens[i].numpy().tobytes() not in known]
        if missing:
            decoded = self.engine.decode(tokens[missing])
            for j, i in enumerate(missing):
                known[tokens[i].numpy().tobytes()] = decoded[j]
        return torch.stack([known[tokens[i].numpy().tobytes()] for i in range(tokens.shape[0])])

    def _preview(self, request: Request, sample: int, tokens: torch.Tensor, **where) -> None:
        frames = self._decode(request, tokens)
        request.emit("frame", sample=sample, frames=frames, **where)

    def _run_super_resolution(self, batch: list[Unit]) -> None:
        dsr = self.engine.dsr_model
        self._make_resident(dsr)
        for u in batch:  # one frame per forward: a frame is ~4000 query rows, and its tokens stay its own
            request = u.request
            if request.finished:
                continue
            s, f = u.index
            t0 = time.perf_counter()
            out = super_resolve(dsr, [request.sr_ids], request.tokens[s, f][None], self.engine.sampler,
                                [request.sr_key(u)], request.boi_id, max_batch=1, backend=self.engine.backend)
            seconds = time.perf_counter() - t0
            self._measured(WorkKind.SUPER_RESOLUTION, seconds)
            self._observe("super_resolution", seconds)
            self.stats.tokens += out.tokens.numel()
            request.step_seconds.setdefault("super_resolution", []).append(seconds)
            request.add_progress("super_resolution", out.tokens.numel(), None)
            self._finish_unit(u, out.tokens[0])

    def _run_decode(self, batch: list[Unit]) -> None:
        for u in batch:
            request = u.request
            if request.finished:
                continue
            s = u.index[0]
            tokens = request.tokens[s] if request.sr_tokens is None else request.sr_tokens[s]
            t0 = time.perf_counter()
            frames = self.engine.decode(tokens) if request.sr_tokens is not None else self._decode(request, tokens)
            seconds = time.perf_counter() - t0
            self._measured(WorkKind.DECODE, seconds / tokens.shape[0])
            for _ in range(tokens.shape[0]):
                self._observe("decode", seconds / tokens.shape[0])
            request.step_seconds.setdefault("decode", []).extend([seconds / tokens.shape[0]] * tokens.shape[0])
            request.add_progress("decode", tokens.shape[0], None)
            self._finish_unit(u, frames)

    # -- completion -----------------------------------------------------------------------------------------

    def _complete(self, request: Request) -> None:
        now = time.perf_counter()
        timings = dict(request.timings)
        timings["queue"] = request.started - request.submitted
        timings["total"] = now - request.submitted
        frames = request.tokens
        samples, num_frames, frame_len = frames.shape
        generated = {"stage1": samples * STAGE1_FRAMES * frame_len,
                     "stage2": samples * (num_frames - STAGE1_FRAMES) * frame_len}
        latency = {phase: metrics.latency_stats(times, generated.get(phase, 0), timings.get(phase, 0.0))
                   for phase, times in request.step_seconds.items() if times}
        e = self.engine
        for phase, model in (("stage1", e.stage1_model), ("stage2", e.stage2_model)):
            if phase in latency:  # every forward step reads every layer's weights and the logits head once
                r = latency[phase]
                r["weight_gbytes_per_s"] = weight_bytes(model) * r["num_steps"] / max(r["seconds"], 1e-9) / 1e9
        if request.sr_tokens is not None and "super_resolution" in latency:
            latency["super_resolution"]["tokens_per_s"] = \
                request.sr_tokens.numel() / max(timings.get("super_resolution", 0.0), 1e-9)
        cuda = self._on_cuda()
        latency["memory"] = {"peak_bytes": torch.cuda.max_memory_allocated() if cuda else metrics.peak_rss_bytes(),
                             "device": "cuda" if cuda else "cpu (max RSS)"}
        fps = 4.0 if request.params.only_first_stage else 8.0
        outputs = [VideoOutput(request.prompt, s, request.params.seed, frames[s], request.decoded[s], fps,
                               dict(timings), latency, None if request.sr_tokens is None else request.sr_tokens[s])
                   for s in range(samples)]
        self.stats.completed += 1
        request.emit("completed", outputs=outputs, tokens=frames)
