"""The job store: one folder on local disk that survives the server -- SQLite (standard library, WAL mode) for the
jobs' records, plus each job's files (checkpoint tokens, final tokens, videos, thumbnails) in a folder of its own.

    <store>/jobs.sqlite3          one row per job (id, order, status, prompt, params, times, error, files)
    <store>/jobs/<id>/            checkpoint.npy  tokens.npy  sr_tokens.npy  sample-<k>.gif|.mp4|.png

Every file is written to a temporary name and renamed (``io.export``), and a row changes in one transaction, so a
process killed at any instant (SIGKILL) leaves the last complete state of each job: a record that names only
files that exist, and a checkpoint that is whole. Ids are made here (``video_`` + 32 hex digits) and checked
against that form before any path is built from one, so no request reaches the filesystem.

Thread-safe (one connection behind a lock): the service calls it from worker threads.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io.export import read_tokens, write_tokens

ID_PATTERN = re.compile(r"video_[0-9a-f]{32}")
UNFINISHED = ("queued", "in_progress")
FINISHED = ("completed", "failed", "cancelled")
STATUSES = UNFINISHED + FINISHED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    completed_at REAL,
    error TEXT,
    checkpoint_frames INTEGER NOT NULL DEFAULT 0,
    files TEXT NOT NULL DEFAULT '[]',
    timings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def new_job_id() -> str:
    return "video_" + secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


@dataclass
class JobRecord:
    """A job as the store keeps it. ``params``: the :class:`~cogvideo_engine.serving.types.SamplingParams` fields;
    ``error``: ``{"message", "type", "code"}`` or None; ``files``: names in the job's folder; ``timings``: the
    engine's per-phase seconds of the finished job."""

    id: str
    seq: int
    created_at: float
    status: str
    prompt: str
    params: dict
    completed_at: float | None = None
    error: dict | None = None
    checkpoint_frames: int = 0
    files: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


class JobStore:
    """The jobs under ``root`` (made if missing). ``boot`` counts the times a store was opened on the folder (event
    ids carry it, so a client resuming an event stream across a restart is told apart)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives the process being killed
        self._db.executescript(_SCHEMA)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
            self.boot = 1 if row is None else int(row[0]) + 1
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (str(self.boot),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- records -------------------------------------------------------------------------------------------

    def create(self, job_id: str, prompt: str, params: dict, created_at: float | None = None) -> JobRecord:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        created_at = time.time() if created_at is None else created_at
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute("INSERT INTO jobs (id, seq, created_at, status, prompt, params) VALUES (?, ?, ?, ?, ?, ?)",
                             (job_id, seq, created_at, "queued", prompt, json.dumps(params)))
        return JobRecord(job_id, seq, created_at, "queued", prompt, params)

    def update(self, job_id: str, **fields) -> None:
        """Set ``status``, ``completed_at``, ``error``, ``checkpoint_frames``, ``files`` and/or ``timings``."""
        allowed = {"status", "completed_at", "error", "checkpoint_frames", "files", "timings"}
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"update takes {sorted(allowed)}, got {sorted(fields)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {fields['status']!r}")
        values = [json.dumps(v) if k in ("error", "files", "timings") else v for k, v in fields.items()]
        with self._lock, self._db:
            self._db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                             (*values, job_id))

    def get(self, job_id: str) -> JobRecord | None:
        if not is_job_id(job_id):
            return None
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def all(self) -> list[JobRecord]:
        """Every job, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq").fetchall()
        return [_record(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        """Remove the job's record, then its folder; False if there was none."""
        if not is_job_id(job_id):
            return False
        with self._lock, self._db:
            gone = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
        shutil.rmtree(self._folder(job_id), ignore_errors=True)
        return bool(gone)

    def expired(self, older_than: float) -> list[str]:
        """Finished jobs that completed before ``older_than`` (a ``time.time()`` value)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE status IN (?, ?, ?) AND completed_at < ? ORDER BY seq",
                                    (*FINISHED, older_than)).fetchall()
        return [r[0] for r in rows]

    # -- files ---------------------------------------------------------------------------------------------

    def _folder(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / "jobs" / job_id

    def path(self, job_id: str, name: str) -> Path:
        """Where the job's file ``name`` lives (``name`` is one the service chose, never a client's)."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"not a job file name: {name!r}")
        return self._folder(job_id) / name

    def save_checkpoint(self, job_id: str, tokens: torch.Tensor) -> None:
        """``tokens [S, N, 400]`` at a pass boundary: written whole, then recorded."""
        write_tokens(self.path(job_id, "checkpoint.npy"), tokens)
        self.update(job_id, checkpoint_frames=int(tokens.shape[1]))

    def load_checkpoint(self, job_id: str) -> torch.Tensor | None:
        path = self.path(job_id, "checkpoint.npy")
        return read_tokens(path) if path.exists() else None

    def read(self, job_id: str, name: str) -> bytes:
        return self.path(job_id, name).read_bytes()


_COLUMNS = "id, seq, created_at, status, prompt, params, completed_at, error, checkpoint_frames, files, timings"


def _record(row) -> JobRecord:
    (job_id, seq, created_at, status, prompt, params, completed_at, error, checkpoint_frames, files,
     timings) = row
    return JobRecord(job_id, seq, created_at, status, prompt, json.loads(params), completed_at,
                     None if error is None else json.loads(error), checkpoint_frames, json.loads(files),
                     json.loads(timings))
