"""The job store (records, files, ids, boots, retention) and the request-body mapping, without a server."""

import asyncio
import sqlite3
import time

import pytest
import torch

pytest.importorskip("starlette", reason="the service extra is not installed (pip install 'cogvideo-engine[serve]')")

from cogvideo_engine.service.jobs import EventLog, JobManager
from cogvideo_engine.service.params import InvalidRequest, parse_create
from cogvideo_engine.service.store import JobStore, is_job_id, new_job_id
from cogvideo_engine.serving.types import SamplingParams


def test_store_records_survive_reopening_and_count_boots(tmp_path):
    store = JobStore(tmp_path)
    a, b = new_job_id(), new_job_id()
    store.create(a, "a cat", {"seed": 1})
    store.create(b, "a dog", {"seed": 2})
    store.update(a, status="completed", completed_at=123.0, files=["sample-0.gif"], timings={"total": 1.5})
    store.save_checkpoint(b, torch.arange(2 * 5 * 400).reshape(2, 5, 400) % 20000)
    assert store.boot == 1
    store.close()

    again = JobStore(tmp_path)
    assert again.boot == 2
    records = again.all()
    assert [r.id for r in records] == [a, b] and [r.seq for r in records] == [1, 2]
    assert records[0].status == "completed" and records[0].files == ["sample-0.gif"]
    assert records[0].timings == {"total": 1.5} and records[0].error is None
    assert records[1].status == "queued" and records[1].checkpoint_frames == 5
    assert torch.equal(again.load_checkpoint(b), torch.arange(2 * 5 * 400).reshape(2, 5, 400) % 20000)
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.delete(a) and not again.delete(a) and again.get(a) is None
    assert not (tmp_path / "jobs" / a).exists()


def test_store_builds_no_path_from_a_foreign_id(tmp_path):
    store = JobStore(tmp_path)
    for bad in ("../x", "video_../../etc", "video_" + "g" * 32, "VIDEO_" + "0" * 32, "", "video_0"):
        assert not is_job_id(bad)
        assert store.get(bad) is None and not store.delete(bad)
        with pytest.raises(ValueError, match="not a job id"):
            store.path(bad, "x")
    assert is_job_id(new_job_id()) and new_job_id() != new_job_id()
    with pytest.raises(ValueError, match="file name"):
        store.path(new_job_id(), "../jobs.sqlite3")
    with pytest.raises(ValueError, match="status"):
        store.update(new_job_id(), status="done")


def test_a_checkpoint_is_whole_or_absent(tmp_path):
    store = JobStore(tmp_path)
    job = new_job_id()
    store.create(job, "a cat", {})
    assert store.load_checkpoint(job) is None
    store.save_checkpoint(job, torch.zeros(1, 1, 400, dtype=torch.long))
    store.save_checkpoint(job, torch.ones(1, 5, 400, dtype=torch.long))
    assert store.load_checkpoint(job).shape == (1, 5, 400)
    assert sorted(p.name for p in (tmp_path / "jobs" / job).iterdir()) == ["checkpoint.npy"]  # no temporary left


def test_retention_removes_old_finished_jobs_only(tmp_path):
    store = JobStore(tmp_path)
    old, recent, running = new_job_id(), new_job_id(), new_job_id()
    for job_id in (old, recent, running):
        store.create(job_id, "a cat", {})
    store.update(old, status="completed", completed_at=time.time() - 7200)
    store.update(recent, status="failed", completed_at=time.time() - 60)
    store.update(running, status="in_progress")
    manager = JobManager(store, retention_s=3600)
    assert asyncio.run(manager.sweep()) == [old]
    assert [r.id for r in store.all()] == [recent, running]


def test_event_log_merges_progress_bounds_frames_and_resumes_after_an_id():
    log = EventLog(boot=3)
    for i in range(5):
        log.append("progress", {"done": i})
    for i in range(40):
        log.append("frame", {"i": i})
    assert [e for e in log.entries if e[1] == "progress"] == [(5, "progress", {"done": 4})]
    assert len([e for e in log.entries if e[1] == "frame"]) == 32
    assert log._start("3-20") == 21 and log._start("2-20") == 0 and log._start(None) == 0 and log._start("x") == 0
    log.append("completed", {"id": "v"}, terminal=True)
    assert log.closed and [e[1] for e in log.entries] == ["progress", "completed"]

    async def read(last):
        return [chunk async for chunk in log.follow(last, stop=lambda: False)]

    chunks = asyncio.run(read("3-45"))
    assert chunks[0].startswith("retry:") and len(chunks) == 2 and chunks[1].startswith("id: 3-46\nevent: completed")
    log.append("progress", {"done": 9})  # nothing after the terminal event
    assert [e[1] for e in log.entries] == ["progress", "completed"]


def test_body_maps_onto_sampling_params_naming_the_field():
    prompt, params, openai = parse_create({"prompt": "a cat", "seed": 3, "only_first_stage": True,
                                           "num_samples": 2, "model": "cogvideo", "size": ""})
    assert prompt == "a cat" and params == SamplingParams(seed=3, only_first_stage=True, num_samples=2)
    assert openai == {"model": "cogvideo"}
    form = {"prompt": "a cat", "seed": "3", "only_first_stage": "true", "guidance_alpha": "2.5",
            "super_resolution": ""}
    assert parse_create(form, form=True)[1] == SamplingParams(seed=3, only_first_stage=True, guidance_alpha=2.5)
    cases = [({"seed": 1}, "prompt", "missing_required_parameter"),
             ({"prompt": "  "}, "prompt", "invalid_value"),
             ({"prompt": "a", "sed": 1}, "sed", "unknown_parameter"),
             ({"prompt": "a", "seed": -1}, "seed", "invalid_value"),
             ({"prompt": "a", "seed": "3"}, "seed", "invalid_value"),
             ({"prompt": "a", "only_first_stage": 1}, "only_first_stage", "invalid_value"),
             ({"prompt": "a", "schedule": "fast"}, "schedule", "invalid_value"),
             ({"prompt": "a", "temperature": 0}, "temperature", "invalid_value")]
    for body, param, code in cases:
        with pytest.raises(InvalidRequest) as caught:
            parse_create(body)
        assert (caught.value.param, caught.value.code, caught.value.status) == (param, code, 422), body
        assert param in str(caught.value)
    with pytest.raises(InvalidRequest, match="seed must be an integer") as caught:
        parse_create({"prompt": "a", "seed": "x"}, form=True)
    assert caught.value.param == "seed"
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_create(["a cat"])


def test_store_is_sqlite_readable_by_other_tools(tmp_path):
    store = JobStore(tmp_path)
    store.create(new_job_id(), "a cat", {"seed": 1})
    rows = sqlite3.connect(tmp_path / "jobs.sqlite3").execute("SELECT prompt, status FROM jobs").fetchall()
    assert rows == [("a cat", "queued")]
