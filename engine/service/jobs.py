"""Video jobs over the serving loop: :class:`JobManager` turns HTTP requests into engine requests, follows their
events, keeps each job's durable state in the :class:`~.store.JobStore` and its live events in an
:class:`EventLog` for server-sent events.

Everything here runs on the server's event loop (one thread); file and database writes go to worker threads, one
job at a time in its own order. A job's life:

    POST -> checked (422 before any compute) -> recorded (queued) -> submitted to the AsyncEngine
      started -> in_progress;  every pass boundary -> checkpoint tokens written, then recorded
      completed -> tokens, GIF (and MP4 where imageio-ffmpeg is installed), thumbnail written -> completed
      failed / cancelled -> recorded;  DELETE -> aborted for real, record and files removed

The manager reaches the engine through an *engine client*: :class:`LocalEngine` (an
:class:`~cogvideo_engine.AsyncEngine` in this process) or, under Ray Serve, a client of the engine replicas
(:mod:`.ray_app`). A client has ``frame_len`` and ``super_resolution_default``, ``async check(prompt, params)``
(raises as :meth:`~cogvideo_engine.serving.core.EngineCore.check`), ``async submit(prompt, params, request_id,
resume, checked)`` (a handle with its events by ``async for``, and ``totals`` and ``resumed``: known at
submission here, once a replica takes the job under Ray Serve; aborting a request sends its "cancelled" event),
``abort(request_id)``, ``metrics()`` (a dict, or None), ``observe_steps(fn)`` and ``async shutdown()``.

A server that starts on a store with unfinished jobs resubmits them, each from its last checkpoint (the serving
core resumes with the same randomness keys, so the video is the one an uninterrupted run makes). Jobs cut short by
a shutdown stay unfinished in the store for the next start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import io
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..io.export import write_gif, write_image, write_mp4, write_tokens
from ..serving.types import AdmissionError, Checkpoint, SamplingParams
from .params import InvalidRequest, param_named
from .prometheus import ServiceMetrics
from .store import FINISHED, JobRecord, JobStore, new_job_id

PROGRESS_EVENT_INTERVAL_S = 0.1
"""A job's event log takes a progress event at most this often (and at every phase's end)."""
PROGRESS_POLL_S = 0.05
"""After a progress event a job's follower waits this long before reading the next (one per decode step otherwise:
thousands a second, each taking the GIL from the engine loop)."""
MAX_LOG_FRAMES = 32
"""Frame previews an event log keeps (the oldest go first; a finished job's log keeps none: its video is stored)."""
ROUND_PREVIEW_SIZE = 80
"""Pixels per side of an interpolation round's animated preview (a finished frame's preview is full size)."""
KEEPALIVE_S = 15.0
"""An event stream with nothing to say sends a comment this often (proxies close idle connections)."""
RETENTION_S = 24 * 3600.0
"""Default time a finished job is kept (its record and files), from its completion."""
VARIANTS = ("video", "thumbnail", "gif", "mp4", "tokens", "sr_tokens")


def mp4_available() -> bool:
    return importlib.util.find_spec("imageio_ffmpeg") is not None


class EventLog:
    """One job's events for server-sent events: ``(id, event, data)`` entries, ids ``"<boot>-<n>"`` increasing.
    Progress entries are merged (only the latest is kept), frame previews bounded by :data:`MAX_LOG_FRAMES`."""

    def __init__(self, boot: int):
        self.boot = boot
        self.entries: list[tuple[int, str, dict]] = []
        self.closed = False
        self._next = 1
        self._changed: asyncio.Event | None = None

    def append(self, event: str, data: dict, *, terminal: bool = False) -> None:
        if self.closed:
            return
        if event == "progress":
            self.entries = [e for e in self.entries if e[1] != "progress"]
        self.entries.append((self._next, event, data))
        self._next += 1
        frames = [e for e in self.entries if e[1] == "frame"]
        if len(frames) > MAX_LOG_FRAMES:
            self.entries.remove(frames[0])
        if terminal:
            self.closed = True
            self.entries = [e for e in self.entries if e[1] != "frame"]
        self._wake()

    def close(self) -> None:
        """No more entries (followers finish what is there and end)."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _start(self, last_event_id: str | None) -> int:
        """The first entry number after ``last_event_id`` (an id of another boot, or none: from the start)."""
        if last_event_id:
            boot, _, n = last_event_id.strip().partition("-")
            if boot == str(self.boot) and n.isdigit():
                return int(n) + 1
        return 0

    async def follow(self, last_event_id: str | None, stop: Callable[[], bool]) -> AsyncIterator[str]:
        """The stream's text: entries after ``last_event_id``, then new ones as they come, until the terminal one
        (or ``stop()``, polled every second); a keep-alive comment after :data:`KEEPALIVE_S` of silence."""
        after = self._start(last_event_id)
        yield "retry: 2000\n\n"
        quiet_since = time.monotonic()
        while True:
            for n, event, data in [e for e in self.entries if e[0] >= after]:
                yield f"id: {self.boot}-{n}\nevent: {event}\ndata: {_json(data)}\n\n"
                after, quiet_since = n + 1, time.monotonic()
            if self.closed or stop():
                return
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)
            if time.monotonic() - quiet_since >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()


def _json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))


@dataclass(eq=False)
class Job:
    record: JobRecord
    params: SamplingParams
    log: EventLog
    totals: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    phase: str | None = None
    eta_s: float | None = None
    started: bool = False
    deleted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task | None = None
    last_progress_logged: float = 0.0

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def finished(self) -> bool:
        return self.record.status in FINISHED

    def progress(self, frame_len: int) -> int:
        """0-100: the share of the job's tokens made (stage 1, stage 2, super-resolution), a decoded frame counting
        as a frame of tokens; exact from the schedule; 100 only when completed."""
        if self.record.status == "completed":
            return 100
        weight = {"decode": frame_len}
        total = sum(t * weight.get(p, 1) for p, t in self.totals.items())
        done = sum(min(d, self.totals.get(p, 0)) * weight.get(p, 1) for p, d in self.done.items())
        return min(99, math.floor(100 * done / total)) if total else 0


class LocalEngine:
    """The engine client (see the module docstring) of an :class:`~cogvideo_engine.AsyncEngine` in this process."""

    def __init__(self, engine):
        self.engine = engine
        self.frame_len = engine.engine.stage1_model.config.geometry.frame_len
        self.super_resolution_default = engine.engine.super_resolution_default

    async def check(self, prompt: str, params: SamplingParams) -> None:
        self.engine.core.check(prompt, params)

    async def submit(self, prompt: str, params: SamplingParams, request_id: str, resume: Checkpoint | None,
                     checked: bool):
        return self.engine.submit(prompt, params, request_id=request_id, resume=resume, checked=checked)

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)

    def metrics(self) -> dict:
        return self.engine.metrics()

    def observe_steps(self, observer: Callable[[str, float], None]) -> None:
        self.engine.core.step_observers.append(observer)

    async def shutdown(self) -> None:
        """Stop the loop, then the engine's tensor-parallel ranks if it has some (the service made the engine)."""
        await asyncio.to_thread(self.engine.shutdown, cancel=True, timeout=60)
        self.engine.engine.close()


class JobManager:
    """The jobs of one service over ``store`` (see the module docstring).

    model_id: the name ``/v1/models`` lists and job objects carry; max_queued: unfinished jobs accepted (beyond:
    429); retention_s: how long finished jobs are kept (None: forever); shutdown_timeout_s: how long a shutdown
    waits for running jobs before leaving them to the next start.
    """

    def __init__(self, store: JobStore, *, model_id: str = "cogvideo", max_queued: int = 64,
                 retention_s: float | None = RETENTION_S, shutdown_timeout_s: float = 30.0):
        self.store = store
        self.model_id = model_id
        self.max_queued = max_queued
        self.retention_s = retention_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.state = "loading"  # loading | ready | draining | stopped | failed
        self.load_error: BaseException | None = None
        self.engine = None  # the engine client, once loaded or connected
        self.jobs: dict[str, Job] = {}
        self.metrics = ServiceMetrics(running=lambda: self._count(started=True),
                                      waiting=lambda: self._count(started=False),
                                      core_stats=lambda: None if self.engine is None else self.engine.metrics())
        self._engine_stopping = False
        self._sweeper: asyncio.Task | None = None
        self._super_resolution_default = False
        self._frame_len = 400

    # -- life -----------------------------------------------------------------------------------------------

    async def start(self, load_engine: Callable[[], object] | None, *, async_engine_kwargs: dict | None = None,
                    connect: Callable[[], Awaitable[object]] | None = None) -> None:
        """Load the engine (``load_engine()`` in a worker thread; the service answers 503 meanwhile) -- or, with
        ``connect``, await the engine client it makes --, then resume the store's unfinished jobs and start the
        retention sweep."""
        from ..serving.async_engine import AsyncEngine

        def load():
            engine = load_engine()
            # the loading thread makes the AsyncEngine: it gives back this thread's OpenMP team
            return LocalEngine(AsyncEngine(engine, max_queued=None, previews=True, **(async_engine_kwargs or {})))

        try:
            self.engine = await connect() if connect is not None else await asyncio.to_thread(load)
        except Exception as error:  # noqa: BLE001  (reported by /health; the server stays up to say so)
            self.state, self.load_error = "failed", error
            return
        self._frame_len = self.engine.frame_len
        self._super_resolution_default = self.engine.super_resolution_default
        self.engine.observe_steps(self.metrics.observe_step)
        for record in self.store.all():
            await self._restore(record)
        self.state = "ready"
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def begin_drain(self) -> None:
        """Stop taking jobs (``/health`` says 503); running ones go on."""
        if self.state in ("ready", "loading"):
            self.state = "draining"

    async def shutdown(self) -> None:
        """Wait up to ``shutdown_timeout_s`` for unfinished jobs, then stop the engine; jobs still unfinished stay
        so in the store (with their last checkpoint) and resume at the next start."""
        self.begin_drain()
        deadline = time.monotonic() + self.shutdown_timeout_s
        while any(not j.finished for j in self.jobs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self._engine_stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.engine is not None:
            await self.engine.shutdown()
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        self.state = "stopped"
        for job in self.jobs.values():
            job.log.close()
        self.store.close()

    @property
    def stopping(self) -> bool:
        return self.state in ("draining", "stopped")

    # -- jobs -----------------------------------------------------------------------------------------------

    def _count(self, *, started: bool) -> int:
        return sum(1 for j in self.jobs.values() if not j.finished and j.started == started)

    async def _restore(self, record: JobRecord) -> None:
        """A job of the store at start: finished ones are served as they are; unfinished ones are resubmitted from
        their last checkpoint (a job the engine now refuses fails, saying why)."""
        job = Job(record, SamplingParams(**record.params), EventLog(self.store.boot))
        self.jobs[record.id] = job
        if record.status in FINISHED:
            job.log.append(record.status, self.job_object(job), terminal=True)
            return
        tokens = self.store.load_checkpoint(record.id)
        resume = None if tokens is None else Checkpoint(record.prompt, job.params, tokens)
        try:
            await self._submit(job, resume)
        except (TypeError, ValueError, RuntimeError) as error:
            self._finish(job, "failed", _error(error, "resume_failed"))
            self.store.update(job.id, status="failed", completed_at=job.record.completed_at, error=job.record.error)

    async def _submit(self, job: Job, resume: Checkpoint | None, *, checked: bool = False) -> None:
        handle = await self.engine.submit(job.record.prompt, job.params, job.id, resume, checked)
        job.totals, job.done = dict(handle.totals), dict(handle.resumed)
        job.record.status, job.started = "queued", False
        job.log.append("progress", self._progress_data(job))
        job.task = asyncio.get_running_loop().create_task(self._follow(job, handle))

    async def create(self, prompt: str, params: SamplingParams, openai: dict) -> Job:
        """Check, record and submit a job. Raises :class:`~.params.InvalidRequest`: 422 (the engine refuses the
        request: prompt too long, a parameter out of this engine's range, rows over the cache budget), 429 (queue
        full; ``retry_after``), 503 (loading or shutting down)."""
        if self.state != "ready":
            raise InvalidRequest(f"the service is {self.state}; retry later", code="unavailable", status=503)
        self._check_openai_fields(params, openai)
        try:
            await self.engine.check(prompt, params)
        except (TypeError, ValueError) as error:  # AdmissionError is a ValueError
            raise InvalidRequest(str(error), param=param_named(str(error)),
                                 code="admission" if isinstance(error, AdmissionError) else "invalid_value") from None
        if sum(1 for j in self.jobs.values() if not j.finished) >= self.max_queued:
            raise InvalidRequest(f"the queue holds {self.max_queued} unfinished jobs (the limit); retry later",
                                 code="queue_full", status=429, retry_after=self._retry_after())
        job_id = new_job_id()
        record = await asyncio.to_thread(self.store.create, job_id, prompt, _params_dict(params))
        job = Job(record, params, EventLog(self.store.boot))
        self.jobs[job_id] = job
        try:
            await self._submit(job, None, checked=True)  # checked above; the core holds no queue limit of its own here
        except RuntimeError as error:  # the engine shut down meanwhile
            await self._forget(job)
            raise InvalidRequest(str(error), code="unavailable", status=503) from None
        self.metrics.created.inc()
        return job

    def _check_openai_fields(self, params: SamplingParams, openai: dict) -> None:
        model = openai.get("model")
        if model is not None and model != self.model_id:
            raise InvalidRequest(f"model must be {self.model_id!r} (the model this server runs), got {model!r}",
                                 param="model", code="model_not_found")
        size = openai.get("size")
        if size is not None and size != self._size(params):
            raise InvalidRequest(f"size must be '{self._size(params)}' (what these settings make), got {size!r}",
                                 param="size")
        seconds = openai.get("seconds")
        if seconds is not None and str(seconds) != self._seconds(params):
            raise InvalidRequest(f"seconds must be '{self._seconds(params)}' (what these settings make: "
                                 f"{'5 frames at 4' if params.only_first_stage else '33 frames at 8'} fps), got "
                                 f"{seconds!r}", param="seconds")

    def _size(self, params: SamplingParams) -> str:
        sr = params.super_resolution if params.super_resolution is not None else self._super_resolution_default
        return "480x480" if sr else "160x160"

    @staticmethod
    def _seconds(params: SamplingParams) -> str:
        return "1" if params.only_first_stage else "4"

    def _retry_after(self) -> int:
        etas = [j.eta_s for j in self.jobs.values() if not j.finished and j.eta_s is not None]
        return max(1, math.ceil(min(etas))) if etas else 10

    async def _forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        await asyncio.to_thread(self.store.delete, job.id)

    def page(self, limit: int, after: str | None, order: str) -> tuple[list[Job], bool]:
        """Up to ``limit`` jobs after the job ``after`` (its id), newest first for ``order="desc"``; and whether
        more follow."""
        jobs = sorted(self.jobs.values(), key=lambda j: j.record.seq, reverse=order == "desc")
        if after is not None:
            index = next((i for i, j in enumerate(jobs) if j.id == after), None)
            if index is None:
                raise InvalidRequest(f"after: no video {after!r}", param="after", code="not_found", status=404)
            jobs = jobs[index + 1:]
        return jobs[:limit], len(jobs) > limit

    async def cancel(self, job_id: str) -> Job:
        job = self.known(job_id)
        if not job.finished:
            self.engine.abort(job_id)  # the "cancelled" event follows from the loop; the record is made there
            if job.task is not None:
                await asyncio.wait({job.task}, timeout=30)
        return job

    async def delete(self, job_id: str) -> None:
        """Abort the job if it runs (its rows leave the engine by the end of the running pass), then remove its
        record and files."""
        job = self.known(job_id)
        job.deleted = True
        if not job.finished:
            self.engine.abort(job_id)
        async with job.lock:
            self.jobs.pop(job_id, None)
            await asyncio.to_thread(self.store.delete, job_id)

    def known(self, job_id: str) -> Job:
        """The job ``job_id``; :class:`~.params.InvalidRequest` 404 if there is none."""
        job = self.jobs.get(job_id)
        if job is None:
            raise InvalidRequest(f"no video with id {job_id!r}", param="video_id", code="not_found", status=404)
        return job

    # -- content --------------------------------------------------------------------------------------------

    async def content(self, job_id: str, variant: str, sample: int) -> tuple[bytes, str, str]:
        """``(bytes, media type, file name)`` of a completed job's ``variant`` for ``sample``."""
        job = self.known(job_id)
        if variant not in VARIANTS:
            raise InvalidRequest(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}", param="variant")
        if not 0 <= sample < job.params.num_samples:
            raise InvalidRequest(f"sample must be in 0..{job.params.num_samples - 1} (the job's num_samples), got "
                                 f"{sample}", param="sample")
        if job.status != "completed":
            raise InvalidRequest(f"video {job_id} is {job.status}; its content exists once it is completed",
                                 code="video_not_ready", status=409)
        files = set(job.record.files)
        name = {"video": f"sample-{sample}.mp4" if f"sample-{sample}.mp4" in files else f"sample-{sample}.gif",
                "thumbnail": f"sample-{sample}.png", "gif": f"sample-{sample}.gif", "mp4": f"sample-{sample}.mp4",
                "tokens": f"sample-{sample}.tokens.npy", "sr_tokens": f"sample-{sample}.sr_tokens.npy"}[variant]
        if name not in files:
            why = {"mp4": "no MP4 encoder is installed (pip install imageio-ffmpeg)",
                   "sr_tokens": "the job ran without super-resolution"}.get(variant, "it was not written")
            raise InvalidRequest(f"video {job_id} has no {variant} content: {why}", param="variant",
                                 code="not_found", status=404)
        async with job.lock:
            data = await asyncio.to_thread(self.store.read, job_id, name)
        media = {".mp4": "video/mp4", ".gif": "image/gif", ".png": "image/png",
                 ".npy": "application/octet-stream"}[name[name.rindex("."):]]
        return data, media, f"{job_id}-{name}"

    # -- what the jobs look like ----------------------------------------------------------------------------

    def queue_position(self, job: Job) -> int | None:
        """Jobs ahead of ``job`` that have not started (0: next); None once it started or finished."""
        if job.finished or job.started:
            return None
        return sum(1 for j in self.jobs.values() if not j.finished and not j.started and j.record.seq < job.record.seq)

    def job_object(self, job: Job) -> dict:
        """The job as the API shows it (OpenAI's video object, plus what this engine knows)."""
        r = job.record
        expires = None if r.completed_at is None or self.retention_s is None else int(r.completed_at +
                                                                                       self.retention_s)
        return {
            "id": r.id, "object": "video", "model": self.model_id, "status": r.status,
            "progress": job.progress(self._frame_len), "phase": job.phase,
            "queue_position": self.queue_position(job),
            "eta_seconds": None if job.finished or job.eta_s is None else round(job.eta_s, 3),
            "created_at": int(r.created_at), "completed_at": None if r.completed_at is None else int(r.completed_at),
            "expires_at": expires, "error": r.error, "prompt": r.prompt, "seconds": self._seconds(job.params),
            "size": self._size(job.params), "num_samples": job.params.num_samples,
            "checkpoint_frames": r.checkpoint_frames, "params": r.params,
            "timings": r.timings or None,
        }

    def _progress_data(self, job: Job) -> dict:
        return {"id": job.id, "status": job.status, "progress": job.progress(self._frame_len), "phase": job.phase,
                "done": job.done.get(job.phase) if job.phase else None,
                "total": job.totals.get(job.phase) if job.phase else None,
                "queue_position": self.queue_position(job),
                "eta_seconds": None if job.eta_s is None else round(job.eta_s, 3)}

    # -- following a job's events ---------------------------------------------------------------------------

    async def _follow(self, job: Job, handle) -> None:
        try:
            async for ev in handle:
                if not job.totals and handle.totals:  # an engine elsewhere: known once it took the job
                    job.totals, job.done = dict(handle.totals), dict(handle.resumed)
                await self._on_event(job, ev)
                if ev.kind == "progress":  # the channel merges the progress made meanwhile: this thread's work
                    await asyncio.sleep(PROGRESS_POLL_S)  # (and its share of the GIL) stays ~20 wake-ups/s a job
        except Exception as error:  # noqa: BLE001  (a failure here must reach the job, not vanish in a task)
            self._finish(job, "failed", _error(error, "service_error"))
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.update, job.id, status="failed",
                                        completed_at=job.record.completed_at, error=job.record.error)

    async def _on_event(self, job: Job, ev) -> None:
        kind = ev.kind
        if kind == "started":
            job.started, job.record.status = True, "in_progress"
            for other in self.jobs.values():  # the queue moved
                if not other.started and not other.finished:
                    other.log.append("progress", self._progress_data(other))
            await self._persist(job, status="in_progress")
            job.log.append("progress", self._progress_data(job))
        elif kind == "progress":
            job.phase, job.eta_s = ev.phase, ev.eta_s
            job.done[ev.phase] = ev.done
            now = time.monotonic()
            if ev.done >= ev.total or now - job.last_progress_logged >= PROGRESS_EVENT_INTERVAL_S:
                job.last_progress_logged = now
                job.log.append("progress", self._progress_data(job))
        elif kind == "frame":
            image = await asyncio.to_thread(_preview_data_url, ev.frames)
            job.log.append("frame", {"id": job.id, "sample": ev.sample, "frame_index": ev.frame_index,
                                     "round": ev.round, "num_frames": int(ev.frames.shape[0]), "image": image})
        elif kind == "checkpoint":
            async with job.lock:
                if not job.deleted:
                    await asyncio.to_thread(self.store.save_checkpoint, job.id, ev.tokens)
                    job.record.checkpoint_frames = int(ev.tokens.shape[1])
        elif kind == "completed":
            async with job.lock:
                if job.deleted:
                    return
                files = await asyncio.to_thread(self._write_outputs, job.id, ev.outputs)
                job.record.files = files
                job.record.timings = {k: round(v, 6) for k, v in ev.outputs[0].timings.items()}
                self._finish(job, "completed", None)
                await asyncio.to_thread(self.store.update, job.id, status="completed",
                                        completed_at=job.record.completed_at, files=files,
                                        timings=job.record.timings, checkpoint_frames=job.record.checkpoint_frames)
                await asyncio.to_thread(self.store.path(job.id, "checkpoint.npy").unlink, missing_ok=True)
            self.metrics.observe_completed(ev.outputs[0].timings)
        elif kind in ("failed", "cancelled"):
            if self._engine_stopping or job.deleted:  # shut down: stays unfinished (resumes at the next start)
                job.log.close()
                return
            code = "cancelled" if kind == "cancelled" else "generation_failed"
            self._finish(job, kind, _error(ev.error, code))
            await self._persist(job, status=kind, completed_at=job.record.completed_at, error=job.record.error)
            self.metrics.finished.labels(kind).inc()

    def _finish(self, job: Job, status: str, error: dict | None) -> None:
        job.record.status, job.record.error = status, error
        job.record.completed_at = time.time()
        job.eta_s = job.phase = None
        job.log.append(status, self.job_object(job), terminal=True)

    async def _persist(self, job: Job, **fields) -> None:
        async with job.lock:
            if not job.deleted:
                await asyncio.to_thread(self.store.update, job.id, **fields)

    def _write_outputs(self, job_id: str, outputs) -> list[str]:
        """Each sample's tokens, GIF, MP4 (where an encoder is installed) and thumbnail; the names written.

        What runs in worker threads (this, the previews, the checkpoints) does no parallel torch work: a thread that
        ran one OpenMP region keeps an idle team, and on a small machine that slowed the engine loop's steps by
        40-65% for the rest of the process (see ``release_openmp_threads``)."""
        files = []
        for k, out in enumerate(outputs):
            names = {f"sample-{k}.tokens.npy": lambda p, o=out: write_tokens(p, o.tokens),
                     f"sample-{k}.gif": lambda p, o=out: write_gif(p, o.frames, o.fps),
                     f"sample-{k}.png": lambda p, o=out: write_image(p, o.frames[0])}
            if out.sr_tokens is not None:
                names[f"sample-{k}.sr_tokens.npy"] = lambda p, o=out: write_tokens(p, o.sr_tokens)
            if mp4_available():
                names[f"sample-{k}.mp4"] = lambda p, o=out: write_mp4(p, o.frames, o.fps)
            for name, write in names.items():
                write(self.store.path(job_id, name))
                files.append(name)
        return files

    # -- retention ------------------------------------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """Remove finished jobs older than the retention time; their ids."""
        if self.retention_s is None:
            return []
        gone = await asyncio.to_thread(self.store.expired, time.time() - self.retention_s)
        for job_id in gone:
            job = self.jobs.pop(job_id, None)
            if job is not None:
                async with job.lock:
                    job.deleted = True
            await asyncio.to_thread(self.store.delete, job_id)
        return gone

    async def _sweep_forever(self) -> None:
        interval = 60.0 if self.retention_s is None else min(60.0, max(1.0, self.retention_s / 10))
        while True:
            with contextlib.suppress(Exception):
                await self.sweep()
            await asyncio.sleep(interval)


def _params_dict(params: SamplingParams) -> dict:
    return dict(vars(params))


def _error(error: BaseException | None, code: str) -> dict:
    return {"message": str(error) if error is not None else code, "type": type(error).__name__ if error else code,
            "code": code}


def _preview_data_url(frames: torch.Tensor) -> str:
    """A ``data:`` URL of ``uint8 [N, H, W, 3]``: a PNG of one frame, an animated GIF (at
    :data:`ROUND_PREVIEW_SIZE`, 8 fps) of several."""
    from PIL import Image

    buffer = io.BytesIO()
    if frames.shape[0] == 1:
        Image.fromarray(frames[0].numpy()).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    stride = max(1, frames.shape[1] // ROUND_PREVIEW_SIZE)  # nearest-neighbour, in NumPy: see _write_outputs
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames.numpy()[:, ::stride, ::stride]]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=125, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode()
