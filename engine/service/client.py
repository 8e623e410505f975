"""The client side of the service, standard library only: reading its server-sent events (:func:`parse_sse`) and
running it in a subprocess (:class:`ServiceProcess`: integration tests, benchmarks, a supervisor script).

    with ServiceProcess(ServiceProcess.serve_command(store="jobs", port=free_port())) as server:
        ...  # HTTP to server.url; server.kill() is a crash (SIGKILL), server.stop() a graceful shutdown
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120.0
"""Default wait for ``/health`` to say ready (the engine loads first)."""


@dataclass(frozen=True)
class ServerSentEvent:
    """One event of a ``text/event-stream``: ``event`` (``message`` when unnamed), ``data`` (its lines joined),
    ``id`` (None when it had none)."""

    event: str
    data: str
    id: str | None = None

    def json(self):
        return json.loads(self.data)


def parse_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """The events of a stream's lines (without their line ends, e.g. ``httpx.Response.iter_lines()``), each yielded
    as soon as its blank line arrives; comments (``:``) and ``retry:`` are skipped."""
    event, data, event_id = None, [], None
    for line in lines:
        if not line:
            if event is not None or data:
                yield ServerSentEvent(event or "message", "\n".join(data), event_id)
            event, data, event_id = None, [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _parent_death_signal() -> None:  # in the child before exec (Linux): SIGTERM if the parent dies
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServiceProcess:
    """A command that serves the API on ``127.0.0.1:port`` (see :meth:`serve_command`), in a subprocess whose output
    goes to ``log_path``. :meth:`start` waits for ``/health`` to say 200 (and fails at once if the process exits or
    its engine failed to load); :meth:`stop` is SIGTERM then SIGKILL after a timeout; :meth:`kill` is SIGKILL. The
    process gets SIGTERM if this one dies (Linux). ``env``: the environment (default: this one without
    ``COGVIDEO_API_KEY``, so the key is only what the command says)."""

    def __init__(self, cmd: list[str], port: int, log_path: str | os.PathLike, *, env: dict | None = None,
                 cwd: str | os.PathLike | None = None):
        self.cmd, self.port, self.log_path, self.cwd = list(cmd), port, Path(log_path), cwd
        self.env = env if env is not None else {k: v for k, v in os.environ.items() if k != "COGVIDEO_API_KEY"}
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None
        self._log = None

    @staticmethod
    def serve_command(store: str | os.PathLike, port: int, *args: str) -> list[str]:
        """``python -m cogvideo_engine serve`` on 127.0.0.1:``port`` with the job store ``store``; ``args``: more
        flags (``--api-key``, ``--model-root``, ...)."""
        return [sys.executable, "-m", "cogvideo_engine", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--store", str(store), *args]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop / kill)
        t0 = time.perf_counter()
        death = _parent_death_signal if sys.platform == "linux" else None
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, preexec_fn=death)  # noqa: PLW1509  (it only calls prctl)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            status, body = self.health()
            if status == 200:
                break
            if body.get("status") == "failed":  # the engine did not load; the server stays up to say so
                raise RuntimeError(f"the server's engine failed to load: {body.get('error')}\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready in {timeout} s:\n{self.log()}")
            time.sleep(0.1)
        self.ready_s = time.perf_counter() - t0
        return self

    def health(self) -> tuple[int | None, dict]:
        """``GET /health``: (status, body); (None, {}) while nothing answers."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            with contextlib.suppress(ValueError):
                return e.code, json.loads(e.read() or b"{}")
            return e.code, {}
        except (OSError, ValueError):
            return None, {}

    def threads(self) -> int | None:
        """The process's thread count (Linux), e.g. to see OpenMP teams made by threads that computed."""
        with contextlib.suppress(OSError, AttributeError, ValueError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return None

    def log(self, chars: int = 5000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._close_log()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` (then SIGKILL); the exit code (uvicorn re-raises the signal once it is
        done: -15 after a graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._close_log()
        return None if self.proc is None else self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
