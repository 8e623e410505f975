"""The thread-safe, async-friendly front: :class:`AsyncEngine` runs one loop thread that owns the device.

    with AsyncEngine(Engine.default()) as engine:
        h = engine.submit("a cat", SamplingParams(seed=1, only_first_stage=True), request_id="r1")  # any thread
        videos = h.result(timeout=600)           # list[VideoOutput]; raises Cancelled if aborted
        async for ev in engine.stream("a dog", SamplingParams(seed=2)):   # leaving the loop early aborts
            ...

Each request's events go into its own :class:`EventChannel`; the loop never waits for a consumer. A slow consumer
sees progress events merged (the latest replaces the unread one) and frame previews dropped beyond
``max_pending_frames`` unread (the oldest first); checkpoint and terminal events are never dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import threading
import time
from collections.abc import AsyncIterator, Iterator

import torch

from .core import EngineCore
from .types import PHASES, Cancelled, Checkpoint, Event, SamplingParams, VideoOutput

MAX_PENDING_FRAMES = 8
"""Unread frame previews a request's channel keeps (older ones are dropped first)."""
MAX_QUEUED = 64
"""Default limit of unfinished requests of an :class:`AsyncEngine`."""
ADMISSION_WINDOW_S = 0.02
"""When work arrives at an idle loop, it waits this long before the first step, so that a burst of requests
submitted together (each checked on its submitting thread, ~1 ms apart) shares the first batch."""


def release_openmp_threads() -> bool:
    """Give back the calling thread's idle OpenMP worker threads (``omp_pause_resource_all(omp_pause_soft)`` of
    the OpenMP runtime torch loaded; False where there is none). libgomp throttles its workers' spin-waiting when
    it manages more threads than there are CPUs, and then every parallel region pays a futex wake-up: with the
    submitting thread's idle team alive, the loop thread's decode steps measured 2.5-3x slower on a 2-core
    machine. The thread making an :class:`AsyncEngine` calls this once; it costs nothing if it computes again
    later (its team comes back)."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1")  # the copy already loaded (by soname), not a second runtime
        return gomp.omp_pause_resource_all(1) == 0  # omp_pause_soft
    except (OSError, AttributeError):
        return False


class EventChannel:
    """One request's events, from the loop thread to one consumer (a thread or an event loop)."""

    def __init__(self, max_pending_frames: int = MAX_PENDING_FRAMES):
        self._events: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.max_pending_frames = max_pending_frames
        self.dropped_frames = 0
        self.final: Event | None = None

    def put(self, ev: Event) -> None:
        with self._cond:
            if ev.kind == "progress" and self._events and self._events[-1].kind == "progress":
                self._events[-1] = ev  # merged: the latest progress says all an unread one said
            else:
                self._events.append(ev)
            if ev.kind == "frame":
                frames = [e for e in self._events if e.kind == "frame"]
                if len(frames) > self.max_pending_frames:
                    self._events.remove(frames[0])
                    self.dropped_frames += 1
            if ev.is_terminal:
                self.final = ev
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, flag in waiters:
            with contextlib.suppress(RuntimeError):  # that consumer's event loop is closed: nobody waits there
                loop.call_soon_threadsafe(flag.set)

    def get(self, timeout: float | None = None) -> Event:
        """The next event (blocking); ``TimeoutError`` after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._events, timeout):
                raise TimeoutError("no event in time")
            return self._events.popleft()

    def get_nowait(self) -> Event | None:
        with self._cond:
            return self._events.popleft() if self._events else None

    async def aget(self) -> Event:
        loop = asyncio.get_running_loop()
        flag = asyncio.Event()
        with self._cond:
            self._waiters.append((loop, flag))
        try:
            while True:
                ev = self.get_nowait()
                if ev is not None:
                    return ev
                await flag.wait()
                flag.clear()
        finally:
            with self._cond:
                self._waiters.remove((loop, flag))

    def wait_final(self, timeout: float | None = None) -> Event:
        with self._cond:
            if not self._cond.wait_for(lambda: self.final is not None, timeout):
                raise TimeoutError("the request did not finish in time")
            return self.final


class RequestHandle:
    """What :meth:`AsyncEngine.submit` returns: the request's id, its events and its result."""

    def __init__(self, engine: AsyncEngine, request_id: str, channel: EventChannel, totals: dict[str, int],
                 resumed: dict[str, int]):
        self.request_id, self._engine, self._channel = request_id, engine, channel
        self.totals = totals
        """Per phase (:data:`~.types.PHASES`): the request's tokens (frames for ``decode``), exact from the
        schedule -- the ``total`` of its progress events."""
        self.resumed = resumed
        """Per phase: the tokens its resume state held already (progress ``done`` starts there)."""

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Its events in order (blocking), ending with the terminal one."""
        while True:
            ev = self._channel.get(timeout)
            yield ev
            if ev.is_terminal:
                return

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Event]:
        while True:
            ev = await self._channel.aget()
            yield ev
            if ev.is_terminal:
                return

    def done(self) -> bool:
        return self._channel.final is not None

    def result(self, timeout: float | None = None) -> list[VideoOutput]:
        """The videos (one per sample); raises :class:`Cancelled` if it was aborted, else what it raised;
        ``TimeoutError`` if it is not finished after ``timeout`` seconds."""
        final = self._channel.wait_final(timeout)
        if final.kind == "completed":
            return final.outputs
        raise final.error

    def abort(self) -> bool:
        return self._engine.abort(self.request_id)


class AsyncEngine:
    """Serves requests of any thread or event loop from one loop thread over an
    :class:`~cogvideo_engine.api.Engine`'s core (see the module docstring and :mod:`.core`).

    max_rows, cache_memory_bytes: the core's row and cache budgets (None: as they are; the engine's own settings
    come back at shutdown); max_queued:
    unfinished requests accepted (beyond: :class:`~.types.QueueFull` at submit); previews: frame events by
    default (decoding each frame as it completes; they are reused for the final video); admission_window_s:
    see :data:`ADMISSION_WINDOW_S`.
    """

    def __init__(self, engine, *, max_rows: int | None = None, cache_memory_bytes: int | None = None,
                 max_queued: int | None = MAX_QUEUED, previews: bool = True,
                 max_pending_frames: int = MAX_PENDING_FRAMES, admission_window_s: float = ADMISSION_WINDOW_S):
        self.engine = engine
        core: EngineCore = engine.core
        self._restore = core.max_rows, core.pool.budget_bytes, core.max_queued
        if max_rows is not None:
            core.max_rows = max_rows
        if cache_memory_bytes is not None:
            core.pool.budget_bytes = cache_memory_bytes
        core.max_queued = max_queued
        self.core = core
        self.previews = previews
        self.max_pending_frames = max_pending_frames
        self.admission_window_s = admission_window_s
        self._stop = threading.Event()
        release_openmp_threads()  # the loop thread computes from now on (see the function)
        self._thread = threading.Thread(target=self._loop, name="cogvideo-engine-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        idle = True
        while not self._stop.is_set():
            ran = False
            if idle and self.core.has_ready_work():
                self._stop.wait(self.admission_window_s)
            if self.core._driver.acquire(timeout=0.05):
                try:
                    ran = self.core.step()
                except Exception as error:  # noqa: BLE001  (a scheduling bug must not kill the loop silently)
                    self.core.fail_all(error)
                finally:
                    self.core._driver.release()
            idle = not ran
            if not ran:
                self.core.wait_for_work(0.05)

    # -- requests -------------------------------------------------------------------------------------------

    def submit(self, prompt: str, params: SamplingParams | None = None, request_id: str | None = None, *,
               resume: Checkpoint | torch.Tensor | None = None, previews: bool | None = None,
               checked: bool = False) -> RequestHandle:
        """Queue a request (any thread): checked against the engine's assets and budgets first (``TypeError`` /
        ``ValueError`` / :class:`~.types.AdmissionError` / :class:`~.types.QueueFull`, nothing queued) unless
        ``checked`` (the caller ran :meth:`~.core.EngineCore.check` on it already).
        ``resume``: a :class:`~.types.Checkpoint` (or its tokens) to continue from."""
        if self._stop.is_set():
            raise RuntimeError("the engine was shut down")
        channel = EventChannel(self.max_pending_frames)
        request = self.core.submit(prompt, SamplingParams() if params is None else params, emit=channel.put,
                                   request_id=request_id, resume=resume,
                                   previews=self.previews if previews is None else previews, checked=checked)
        return RequestHandle(self, request.id, channel, {p: request.phase_total(p) for p in PHASES},
                             dict(request.done_tokens))

    async def stream(self, prompt: str, params: SamplingParams | None = None, request_id: str | None = None, *,
                     resume: Checkpoint | torch.Tensor | None = None,
                     previews: bool | None = None) -> AsyncIterator[Event]:
        """Submit and yield the request's events; leaving the loop early (break, an exception, the task
        cancelled) aborts the request."""
        handle = self.submit(prompt, params, request_id, resume=resume, previews=previews)
        finished = False
        try:
            async for ev in handle:
                finished = ev.is_terminal
                yield ev
        finally:
            if not finished:
                self.abort(handle.request_id)

    def generate(self, prompt: str, params: SamplingParams | None = None, *, timeout: float | None = None,
                 ) -> list[VideoOutput]:
        """``submit(...).result(timeout)``: blocking, from any thread."""
        return self.submit(prompt, params, previews=False).result(timeout)

    def abort(self, request_id: str) -> bool:
        """Cancel a request: its "cancelled" event is sent now; False if it is unknown or already finished."""
        return self.core.abort(request_id)

    # -- state ----------------------------------------------------------------------------------------------

    def metrics(self) -> dict:
        """The core's counters (:class:`~.core.EngineStats`) plus ``queue_length`` and ``num_unfinished``."""
        d = self.core.stats.as_dict()
        d.update(queue_length=self.core.num_waiting, num_unfinished=self.core.num_unfinished)
        return d

    def shutdown(self, *, cancel: bool = True, timeout: float | None = None) -> None:
        """Stop the loop thread. ``cancel``: abort unfinished requests first ("cancelled" events); else wait for
        them to finish (up to ``timeout`` seconds)."""
        if not self._stop.is_set():
            if cancel:
                for rid in list(self.core._requests):
                    self.core.abort(rid, "the engine shut down")
            else:
                _wait(lambda: self.core.num_unfinished == 0, timeout)
            self._stop.set()
        self._thread.join(timeout)
        core = self.core
        core.max_rows, core.pool.budget_bytes, core.max_queued = self._restore

    def __enter__(self) -> AsyncEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _wait(predicate, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while not predicate():
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("requests still running at shutdown")
        time.sleep(0.05)


__all__ = ["AsyncEngine", "Cancelled", "EventChannel", "RequestHandle"]
