"""A real service in a subprocess for the HTTP tests and the load benchmark: ``python -m cogvideo_engine serve`` on
127.0.0.1 and a free port, the tiny default model, a job store in a given folder; waits for ``/health`` and stops
what it started (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(store) as server: server.client.get("/health")``. ``args``: extra ``serve`` flags;
    ``env``: extra environment. ``kill()`` is SIGKILL (a crash); ``stop()`` SIGTERM (a graceful shutdown)."""

    def __init__(self, store: str | os.PathLike, *args: str, env: dict | None = None, api_key: str | None = None,
                 log: str | os.PathLike | None = None):
        self.store, self.args, self.api_key = Path(store), list(args), api_key
        self.env = {k: v for k, v in os.environ.items() if k != "COGVIDEO_API_KEY"}  # the key is what it is given
        self.env.update(env or {})
        self.log_path = Path(log) if log is not None else self.store.with_name(self.store.name + ".log")
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.port = free_port()
        cmd = [sys.executable, "-m", "cogvideo_engine", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--store", str(self.store), "--log-level", "warning", *self.args]
        if self.api_key is not None:
            cmd += ["--api-key", self.api_key]
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop/kill)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/health").status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"the server was not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._close()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._close()
        return self.proc.returncode if self.proc is not None else 0

    def _close(self) -> None:
        if self.client is not None:
            self.client.close()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
    import json

    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/videos/{job_id}/events", headers=headers,
                       timeout=httpx.Timeout(timeout, connect=10.0)) as response:
        if response.status_code != 200:
            raise AssertionError(f"events: HTTP {response.status_code}: {response.read()!r}")
        event_id, event, data = None, None, []
        for line in response.iter_lines():
            if not line:
                if event is not None:
                    yield event_id, event, json.loads("\n".join(data))
                event_id, event, data = None, None, []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    event_id = value
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
