"""A real service for the HTTP tests: ``python -m cogvideo_engine serve`` in a subprocess on 127.0.0.1 and a free
port (the tiny default model; :class:`~cogvideo_engine.service.client.ServiceProcess`), a job store in a given
folder, and an httpx client to it; stopped (SIGTERM, then SIGKILL) by whoever started it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from cogvideo_engine.service.client import ServiceProcess, free_port, parse_sse


class ServerProcess(ServiceProcess):
    """``with ServerProcess(store) as server: server.client.get("/health")``. ``args``: extra ``serve`` flags;
    ``api_key``: served with ``--api-key`` and sent by :attr:`client`. ``kill()`` is SIGKILL (a crash), ``stop()``
    SIGTERM (a graceful shutdown)."""

    def __init__(self, store: str | os.PathLike, *args: str, api_key: str | None = None):
        store = Path(store)
        port = free_port()
        key = ["--api-key", api_key] if api_key is not None else []
        super().__init__(self.serve_command(store, port, "--log-level", "warning", *key, *args), port,
                         store.with_name(store.name + ".log"))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def kill(self) -> None:
        super().kill()
        self.client.close()

    def stop(self, timeout: float = 60.0) -> int | None:
        code = super().stop(timeout)
        self.client.close()
        return code


def wait_for(client: httpx.Client, job_id: str, predicate, timeout: float = 300.0, poll_s: float = 0.1) -> dict:
    """Poll ``GET /v1/videos/{id}`` until ``predicate(job)``; the job object."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/videos/{job_id}").json()
        if predicate(job):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not get there in {timeout} s: {job}")
        time.sleep(poll_s)


def finished(job: dict) -> bool:
    return job.get("status") in ("completed", "failed", "cancelled")


def sse_events(client: httpx.Client, job_id: str, last_event_id: str | None = None, timeout: float = 300.0):
    """The job's server-sent events as ``(id, event, data)`` (data decoded from JSON), until the stream ends;
    leaving the loop early closes the connection."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/videos/{job_id}/events", headers=headers,
                       timeout=httpx.Timeout(timeout, connect=10.0)) as response:
        if response.status_code != 200:
            raise AssertionError(f"events: HTTP {response.status_code}: {response.read()!r}")
        for ev in parse_sse(response.iter_lines()):
            yield ev.id, ev.event, ev.json()
