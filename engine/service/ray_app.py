"""Replicas under Ray Serve: the HTTP service of :mod:`.app` on one ingress deployment, the engines on replica
deployments it dispatches to (``pip install 'cogvideo-engine[ray]'``).

    serve run cogvideo_engine.service.ray_app:build model_root=/models/cogvideo device=cuda max_replicas=8

* ``CogVideoIngress`` (one replica, no CPU or GPU reserved): the service's ASGI app -- the API, server-sent
  events, ``/metrics``, the playground -- and its :class:`~.jobs.JobManager`, which owns the job store, so every
  poll, event stream and restart sees each job once and resumes unfinished ones from their checkpoints;
* ``CogVideoEngine`` (``num_replicas`` of them, or autoscaled between ``min_replicas`` and ``max_replicas`` on
  ``target_ongoing_requests`` per replica): an :class:`~cogvideo_engine.AsyncEngine` over its own
  :class:`~cogvideo_engine.Engine` (one GPU each with ``device=cuda``; ``tensor_parallel=N`` takes N). A job is one
  streaming call to a replica, which batches the jobs it holds in its own serving loop; Ray Serve routes each new
  job to a less loaded replica (power of two choices over their queue lengths). Cancelling a job cancels its
  call; the replica aborts the request.

Arguments (``key=value`` after the import path, or :func:`build`'s dict): ``model_root`` (default: the embedded
tiny model), ``device``, ``dtype``, ``tensor_parallel``, ``backend``; ``num_replicas`` / ``min_replicas`` /
``max_replicas`` / ``target_ongoing_requests`` / ``max_ongoing_requests``; ``replica_cpus`` (CPUs a CPU replica
reserves); ``store`` (the job-store folder), ``api_key``, ``max_queued``, ``retention_hours``. Ray Serve's own
settings (the HTTP host and port: ``serve start --http-host 127.0.0.1 --http-port 8000``, a config file) stay
Ray's. The service's per-step histograms and token counters are the replicas' (Ray's metrics export them); the
ingress's ``/metrics`` counts jobs, their latencies, and the jobs dispatched per replica.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from ray import serve

from ..cli import DTYPES
from ..serving.types import AdmissionError, Cancelled, Checkpoint, Event, SamplingParams
from .jobs import PROGRESS_POLL_S

ENGINE_DEPLOYMENT = "CogVideoEngine"
INGRESS_DEPLOYMENT = "CogVideoIngress"
_ERRORS = {"AdmissionError": AdmissionError, "TypeError": TypeError, "ValueError": ValueError}


@dataclass
class RayAppConfig:
    """The app's settings (see the module docstring); strings from ``serve run`` are converted by
    :meth:`from_args`."""

    model_root: str | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    tensor_parallel: int = 1
    backend: str | None = None
    num_replicas: int | None = None
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 16
    replica_cpus: float = 1.0
    store: str | None = None
    api_key: str | None = None
    max_queued: int = 64
    retention_hours: float = 24.0
    engine_options: dict = field(default_factory=dict)
    """Further keyword arguments of ``Engine.from_pretrained`` / ``Engine.default`` (Python callers only)."""

    @classmethod
    def from_args(cls, args: dict) -> RayAppConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(unknown)}: expected some of {', '.join(known)}")
        config = cls(**{name: _parsed(value, known[name].type) for name, value in args.items()})
        config.check()
        return config

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.num_replicas is not None and self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.tensor_parallel < 1 or self.max_ongoing_requests < 1 or self.max_queued < 1:
            raise ValueError("tensor_parallel, max_ongoing_requests and max_queued must be >= 1")

    def replica_options(self) -> dict:
        """The engine deployment's Ray Serve options: fixed replicas or autoscaling, and per-replica resources."""
        gpus = self.tensor_parallel if self.device.startswith("cuda") else 0
        options = {"max_ongoing_requests": self.max_ongoing_requests,
                   "ray_actor_options": {"num_gpus": gpus, "num_cpus": 1 if gpus else self.replica_cpus}}
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        return options


def _parsed(value, annotation: str):
    """A ``serve run`` argument (a string) as the field's type (``int``, ``float``; ``none`` for an optional)."""
    if not isinstance(value, str) or annotation.startswith("dict"):
        return value
    if value.lower() in ("", "none") and "None" in annotation:
        return None
    if annotation.startswith("int"):
        return int(value)
    if annotation.startswith("float"):
        return float(value)
    return value


def load_engine(config: RayAppConfig):
    """The :class:`~cogvideo_engine.Engine` one replica serves."""
    from ..api import Engine

    kwargs = dict(device=config.device, backend=config.backend, tensor_parallel=config.tensor_parallel,
                  dtype=DTYPES[config.dtype], **config.engine_options)
    if config.model_root:
        return Engine.from_pretrained(config.model_root, **kwargs)
    return Engine.default(**kwargs)


class EngineReplica:
    """One engine replica: an :class:`~cogvideo_engine.AsyncEngine` whose requests are streaming calls."""

    def __init__(self, config: RayAppConfig):
        from ..serving.async_engine import AsyncEngine

        self.engine = AsyncEngine(load_engine(config), max_queued=None, previews=True)
        try:
            self.name = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001  (outside a Serve replica, e.g. a test calling the class directly)
            self.name = f"pid-{os.getpid()}"

    def info(self) -> dict:
        e = self.engine.engine
        return {"frame_len": e.stage1_model.config.geometry.frame_len,
                "super_resolution_default": e.super_resolution_default, "replica": self.name}

    def check(self, prompt: str, params: SamplingParams) -> tuple[str, str] | None:
        """None, or the ``(error type, message)`` the engine refuses the request with."""
        try:
            self.engine.core.check(prompt, params)
        except (TypeError, ValueError) as error:
            kind = "AdmissionError" if isinstance(error, AdmissionError) else type(error).__name__
            return (kind if kind in _ERRORS else "ValueError"), str(error)
        return None

    async def run(self, prompt: str, params: SamplingParams, request_id: str, resume: Checkpoint | None):
        """Submit the request and stream: first ``{"totals", "resumed", "replica"}``, then its events. A
        cancelled call aborts the request."""
        handle = self.engine.submit(prompt, params, request_id=request_id, resume=resume)
        yield {"totals": dict(handle.totals), "resumed": dict(handle.resumed), "replica": self.name}
        finished = False
        try:
            async for ev in handle:
                finished = ev.is_terminal
                yield ev
                if ev.kind == "progress":  # the channel merges the progress made meanwhile: ~20 events/s, not
                    await asyncio.sleep(PROGRESS_POLL_S)  # one per decode step, cross the wire
        finally:
            if not finished:
                self.engine.abort(request_id)

    def metrics(self) -> dict:
        return self.engine.metrics()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.engine.shutdown(cancel=True, timeout=30)
            self.engine.engine.close()


class RemoteRequest:
    """A job sent to the replicas: its events by ``async for``; ``totals``, ``resumed`` and ``replica`` are filled
    when a replica has taken it (before its first event). Submitting does not wait for a free replica: a job
    waits in Ray Serve's queue (status "queued") while every replica holds ``max_ongoing_requests``."""

    def __init__(self, request_id: str, stream, on_start: Callable[[RemoteRequest], None],
                 on_end: Callable[[str], None]):
        self.request_id, self._stream, self._on_start, self._on_end = request_id, stream, on_start, on_end
        self.totals: dict[str, int] = {}
        self.resumed: dict[str, int] = {}
        self.replica: str | None = None
        self._aborted = False

    def abort(self) -> None:
        self._aborted = True
        self._stream.cancel()

    async def __aiter__(self):
        try:
            first = await self._stream.__anext__()
            self.totals, self.resumed, self.replica = first["totals"], first["resumed"], first["replica"]
            self._on_start(self)
            async for ev in self._stream:
                yield ev
                if ev.is_terminal:
                    return
        except Exception:
            if not self._aborted:
                raise
        finally:
            self._on_end(self.request_id)
        if self._aborted:  # the call was cancelled before the replica's own "cancelled" event came back
            yield Event("cancelled", self.request_id, time.time(), error=Cancelled("cancelled"))


class RayEngineClient:
    """The :class:`~.jobs.JobManager`'s engine client (see :mod:`.jobs`) over the engine deployment's handle."""

    def __init__(self, handle, info: dict):
        self.handle = handle
        self.frame_len, self.super_resolution_default = info["frame_len"], info["super_resolution_default"]
        self.requests: dict[str, RemoteRequest] = {}
        self.dispatched: collections.Counter[str] = collections.Counter()

    @classmethod
    async def connect(cls, handle) -> RayEngineClient:
        return cls(handle, await handle.info.remote())

    async def check(self, prompt: str, params: SamplingParams) -> None:
        refused = await self.handle.check.remote(prompt, params)
        if refused is not None:
            kind, message = refused
            raise _ERRORS[kind](message)

    async def submit(self, prompt: str, params: SamplingParams, request_id: str, resume: Checkpoint | None,
                     checked: bool) -> RemoteRequest:
        stream = self.handle.options(stream=True).run.remote(prompt, params, request_id, resume)
        request = RemoteRequest(request_id, stream, lambda started: self.dispatched.update([started.replica]),
                                lambda ended: self.requests.pop(ended, None))
        self.requests[request_id] = request
        return request

    def abort(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            request.abort()

    def metrics(self) -> dict:
        return {"replicas": dict(self.dispatched)}

    def observe_steps(self, observer) -> None:
        """Steps are timed on the replicas (Ray's metrics); the ingress sees none."""

    async def shutdown(self) -> None:
        for request_id in list(self.requests):
            self.abort(request_id)
        await asyncio.sleep(0)


@serve.ingress()
class Ingress:
    """The ingress deployment: builds the service app over the engine deployment's handle."""

    def __init__(self, engines, config: RayAppConfig):
        self.engines, self.config = engines, config

    def __serve_build_asgi_app__(self):
        from .app import create_app
        from .server import default_store

        c = self.config
        return create_app(None, c.store or str(default_store()), api_key=c.api_key or None,
                          model_id=os.path.basename(c.model_root.rstrip("/")) if c.model_root else "cogvideo-default",
                          max_queued=c.max_queued, retention_s=c.retention_hours * 3600.0,
                          connect=lambda: RayEngineClient.connect(self.engines))


def build(args: dict | None = None):
    """The Ray Serve application (``serve run cogvideo_engine.service.ray_app:build key=value ...``; or
    ``serve.run(build({...}))``)."""
    if isinstance(args, RayAppConfig):
        config = args
        config.check()
    else:
        config = RayAppConfig.from_args(dict(args or {}))  # checked there
    engines = serve.deployment(EngineReplica, name=ENGINE_DEPLOYMENT, **config.replica_options()).bind(config)
    ingress = serve.deployment(Ingress, name=INGRESS_DEPLOYMENT, num_replicas=1,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(engines, config)


__all__ = ["RayAppConfig", "RayEngineClient", "build"]
