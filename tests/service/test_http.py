"""The HTTP service against a real server: ``python -m cogvideo_engine serve`` in a subprocess on 127.0.0.1 (a free
port), the tiny default model, a real HTTP client (httpx). Every request is bounded in time; every server is
stopped (or killed) by the test that started it."""

import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the service extra is not installed (pip install 'cogvideo-engine[serve]')")
pytest.importorskip("httpx", reason="httpx (a test extra) is not installed")

from helpers.server import ServerProcess, finished, sse_events, wait_for

import cogvideo_engine as ce

pytestmark = pytest.mark.slow
FIRST = {"only_first_stage": True}


@pytest.fixture(scope="module")
def alone():
    """The tokens ``[F, 400]`` a request gets alone, from the engine in this process (cached per request)."""
    engine = ce.Engine.default()
    cache = {}

    def tokens(prompt: str, **params):
        key = prompt, tuple(sorted(params.items()))
        if key not in cache:
            [video] = engine.generate(prompt, ce.SamplingParams(**params))
            cache[key] = video.tokens.numpy()
        return cache[key]
    return tokens


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def create(client, **body):
    r = client.post("/v1/videos", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def test_job_life_cycle_through_every_endpoint(tmp_path, alone):
    with ServerProcess(tmp_path / "store") as server:
        c = server.client
        assert c.get("/health").json() == {"status": "ok"}
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["cogvideo-default"]

        job = create(c, prompt="a cat plays the piano", seed=5, **FIRST)
        assert job["object"] == "video" and job["status"] == "queued" and job["progress"] == 0
        assert job["id"].startswith("video_") and job["queue_position"] == 0 and job["size"] == "160x160"
        events = list(sse_events(c, job["id"]))
        kinds = [e[1] for e in events]
        assert kinds[-1] == "completed" and kinds.count("completed") == 1
        progress = [e[2]["progress"] for e in events if e[1] == "progress"]
        assert progress == sorted(progress) and progress[-1] == 99 and events[-1][2]["progress"] == 100
        frames = [e[2] for e in events if e[1] == "frame"]
        assert [f["frame_index"] for f in frames] == [0, 1, 2, 3, 4]
        assert all(f["image"].startswith("data:image/png;base64,") for f in frames)
        ids = [e[0] for e in events]
        assert len(set(ids)) == len(ids) and all(i.startswith("1-") for i in ids)

        # resumable: after an event id, only what came later (the stream of a finished job: its last events)
        later = list(sse_events(c, job["id"], last_event_id=ids[-2]))
        assert [e[0] for e in later] == [ids[-1]]

        done = c.get(f"/v1/videos/{job['id']}").json()
        assert done["status"] == "completed" and done["progress"] == 100 and done["completed_at"] >= job["created_at"]
        assert done["expires_at"] > done["completed_at"] and done["error"] is None
        assert {"queue", "time_to_first_frame", "stage1", "decode", "total"} <= set(done["timings"])

        gif = c.get(f"/v1/videos/{job['id']}/content", params={"variant": "gif"})
        assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif" and gif.content[:6] == b"GIF89a"
        video = c.get(f"/v1/videos/{job['id']}/content")
        assert video.headers["content-type"] in ("video/mp4", "image/gif") and len(video.content) > 1000
        thumb = c.get(f"/v1/videos/{job['id']}/content", params={"variant": "thumbnail"})
        assert thumb.headers["content-type"] == "image/png" and thumb.content[:4] == b"\x89PNG"
        tokens = npy(c.get(f"/v1/videos/{job['id']}/content", params={"variant": "tokens"}).content)
        np.testing.assert_array_equal(tokens, alone("a cat plays the piano", seed=5, **FIRST))

        # the multipart form OpenAI's clients send, with our fields beside the prompt
        fields = {"prompt": "a dog", "seed": "6", "only_first_stage": "true", "num_samples": "2",
                  "model": "cogvideo-default", "size": "160x160", "seconds": "1"}
        form = c.post("/v1/videos", files=[(k, (None, v)) for k, v in fields.items()])
        assert form.request.headers["content-type"].startswith("multipart/form-data")
        assert form.status_code == 202, form.text
        second = form.json()
        assert second["params"]["seed"] == 6 and second["params"]["only_first_stage"] is True
        assert second["num_samples"] == 2
        assert wait_for(c, second["id"], finished, timeout=300)["status"] == "completed"
        samples = [npy(c.get(f"/v1/videos/{second['id']}/content", params={"variant": "tokens", "sample": k}).content)
                   for k in (0, 1)]
        assert samples[0].shape == samples[1].shape == (5, 400) and not np.array_equal(*samples)
        assert c.get(f"/v1/videos/{second['id']}/content", params={"variant": "gif", "sample": 1}).status_code == 200
        assert c.get(f"/v1/videos/{second['id']}/content", params={"sample": 2}).status_code == 422

        listing = c.get("/v1/videos", params={"limit": 1}).json()
        assert listing["object"] == "list" and listing["has_more"] is True
        assert [v["id"] for v in listing["data"]] == [second["id"]]  # newest first
        rest = c.get("/v1/videos", params={"limit": 10, "after": second["id"]}).json()
        assert [v["id"] for v in rest["data"]] == [job["id"]] and rest["has_more"] is False
        asc = c.get("/v1/videos", params={"order": "asc"}).json()
        assert [v["id"] for v in asc["data"]] == [job["id"], second["id"]]

        deleted = c.delete(f"/v1/videos/{second['id']}")
        assert deleted.json() == {"id": second["id"], "object": "video.deleted", "deleted": True}
        assert c.get(f"/v1/videos/{second['id']}").status_code == 404
        assert c.delete(f"/v1/videos/{job['id']}").status_code == 200
        assert c.get(f"/v1/videos/{job['id']}/content").status_code == 404
        assert c.get("/v1/videos").json()["data"] == []

        metrics = c.get("/metrics").text
        for name in ("cogvideo_request_e2e_seconds_bucket", "cogvideo_request_queue_seconds_count",
                     "cogvideo_request_time_to_first_frame_seconds_count", "cogvideo_request_stage_seconds_count",
                     "cogvideo_step_seconds_bucket", "cogvideo_requests_running", "cogvideo_requests_waiting",
                     "cogvideo_requests_created_total 2.0", 'cogvideo_requests_finished_total{status="completed"} 2.0',
                     "cogvideo_generated_tokens_total"):
            assert name in metrics, name
        assert 'le="28800.0"' in metrics  # buckets up to hours
        assert not [line for line in metrics.splitlines() if not line.startswith("#") and ":" in line.split(" ")[0]]
        assert server.proc.poll() is None


def test_concurrent_jobs_with_cancellations_and_a_dropped_stream(tmp_path, alone):
    """8 stage-1 jobs at once: two cancelled (DELETE, cancel), one client leaves its event stream early; every other
    job completes with the tokens it gets alone."""
    prompts = ["a cat plays the piano", "a dog runs on the beach"]
    requests = [(prompts[i % 2], 20 + i % 4) for i in range(8)]  # jobs i and i + 4 ask the same
    with ServerProcess(tmp_path / "store") as server:
        c = server.client
        jobs = [create(c, prompt=p, seed=s, **FIRST) for p, s in requests]
        assert all(0 <= j["queue_position"] <= i for i, j in enumerate(jobs))  # live: the first may have started
        seen = []

        def drop_early():  # the first three events of job 0, then the connection closes
            for event in sse_events(c, jobs[0]["id"]):
                seen.append(event)
                if len(seen) == 3:
                    break

        dropper = threading.Thread(target=drop_early)
        dropper.start()
        wait_for(c, jobs[2]["id"], lambda j: j["status"] == "in_progress" and j["progress"] > 5, timeout=120)
        assert c.delete(f"/v1/videos/{jobs[2]['id']}").status_code == 200
        cancelled = c.post(f"/v1/videos/{jobs[5]['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
        dropper.join(60)
        assert len(seen) == 3
        final = {i: wait_for(c, j["id"], finished, timeout=300) for i, j in enumerate(jobs) if i != 2}
        for i, (prompt, seed) in enumerate(requests):  # the references after the server's work (2 cores)
            if i == 2:
                assert c.get(f"/v1/videos/{jobs[i]['id']}").status_code == 404
                continue
            job = final[i]
            if i == 5:
                assert job["status"] == "cancelled"
                assert c.get(f"/v1/videos/{jobs[i]['id']}/content").status_code == 409
                continue
            assert job["status"] == "completed", job
            tokens = npy(c.get(f"/v1/videos/{jobs[i]['id']}/content", params={"variant": "tokens"}).content)
            np.testing.assert_array_equal(tokens, alone(prompt, seed=seed, **FIRST), err_msg=f"job {i}")
        metrics = c.get("/metrics").text
        assert 'cogvideo_requests_finished_total{status="completed"} 6.0' in metrics
        assert 'cogvideo_requests_finished_total{status="cancelled"} 1.0' in metrics  # the deleted one is gone


def test_sigkill_mid_job_then_restart_resumes_to_the_same_video(tmp_path):
    store = tmp_path / "store"
    server = ServerProcess(store).start()
    try:
        c = server.client
        short = create(c, prompt="a cat plays the piano", seed=7, **FIRST)
        full = create(c, prompt="a dog runs on the beach", seed=8)
        wait_for(c, short["id"], finished, timeout=300)
        before = wait_for(c, full["id"], lambda j: j["checkpoint_frames"] >= 5 or finished(j), timeout=300)
        assert before["status"] == "in_progress", before
        short_gif = c.get(f"/v1/videos/{short['id']}/content", params={"variant": "gif"}).content
        server.kill()
    finally:
        server.kill()
    row = sqlite3.connect(store / "jobs.sqlite3").execute("SELECT status, checkpoint_frames FROM jobs WHERE id = ?",
                                                         (full["id"],)).fetchone()
    assert row[0] == "in_progress" and row[1] >= 5

    with ServerProcess(store) as again:
        c = again.client
        kept = c.get(f"/v1/videos/{short['id']}").json()
        assert kept["status"] == "completed"
        assert c.get(f"/v1/videos/{short['id']}/content", params={"variant": "gif"}).content == short_gif
        fresh = create(c, prompt="a dog runs on the beach", seed=8)  # the same job, uninterrupted
        resumed = wait_for(c, full["id"], finished, timeout=600)
        assert resumed["status"] == "completed", resumed
        assert wait_for(c, fresh["id"], finished, timeout=600)["status"] == "completed"
        a, b = (npy(c.get(f"/v1/videos/{j['id']}/content", params={"variant": "tokens"}).content)
                for j in (full, fresh))
        assert a.shape == (33, 400)
        np.testing.assert_array_equal(a, b)
        events = list(sse_events(c, full["id"]))
        assert events[-1][1] == "completed" and all(e[0].startswith("2-") for e in events)  # the second boot


def test_bad_input_gets_its_status_and_message_and_the_server_stays_up(tmp_path):
    with ServerProcess(tmp_path / "store", "--max-queued", "1", "--shutdown-timeout", "1") as server:
        c = server.client

        def error(response, status, param=None, code=None, match=""):
            assert response.status_code == status, response.text
            body = response.json()["error"]
            assert set(body) == {"message", "type", "param", "code"}
            assert body["param"] == param and (code is None or body["code"] == code), body
            assert match in body["message"], body
            return body

        post = lambda body: c.post("/v1/videos", json=body)  # noqa: E731
        error(post({"prompt": "a cat " * 200}), 422, "prompt", match="too long")
        error(post({"prompt": "a cat", "colour": "red"}), 422, "colour", "unknown_parameter", "unknown parameter")
        error(post({"prompt": "a cat", "seed": -1}), 422, "seed", match=">= 0")
        error(post({"prompt": "a cat", "seed": "one"}), 422, "seed", match="integer")
        error(post({"prompt": "a cat", "top_k": 100000}), 422, "top_k", match="clusters")
        error(post({"prompt": "a cat", "num_samples": 0}), 422, "num_samples")
        error(post({"prompt": "a cat", "model": "sora-2"}), 422, "model", "model_not_found")
        error(post({"prompt": "a cat", "size": "1280x720"}), 422, "size")
        error(post({"seed": 1}), 422, "prompt", "missing_required_parameter")
        error(c.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"}), 400,
              code="invalid_json")
        error(c.post("/v1/videos", content=b"x" * 70000, headers={"content-type": "application/json"}), 413,
              code="body_too_large")
        error(c.post("/v1/videos", content=b"hi", headers={"content-type": "text/plain"}), 415)
        error(c.get("/v1/videos/video_" + "0" * 32), 404, "video_id", "not_found")
        error(c.get("/v1/videos/..%2F..%2Fjobs.sqlite3"), 404)
        error(c.get("/v1/videos", params={"limit": 0}), 422, "limit")
        error(c.put("/v1/videos"), 405)
        assert c.get("/v1/videos").json()["data"] == []  # nothing was queued

        job = create(c, prompt="a cat", seed=1)  # a whole video: long enough to be the one job in the queue
        error(c.get(f"/v1/videos/{job['id']}/content"), 409, code="video_not_ready")
        error(c.get(f"/v1/videos/{job['id']}/content", params={"variant": "webm"}), 422, "variant")
        error(c.get(f"/v1/videos/{job['id']}/content", params={"sample": 3}), 422, "sample")
        full = post({"prompt": "a dog", **FIRST})
        error(full, 429, code="queue_full")
        assert int(full.headers["retry-after"]) >= 1
        assert c.get("/health").status_code == 200 and server.proc.poll() is None

        # graceful shutdown: stops within its timeout (1 s for running work), the unfinished job stays resumable
        wait_for(c, job["id"], lambda j: j["status"] == "in_progress", timeout=120)
        t0 = time.monotonic()
        assert server.stop(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        assert time.monotonic() - t0 < 30
    row = sqlite3.connect(tmp_path / "store" / "jobs.sqlite3").execute(
        "SELECT status FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert row == ("in_progress",)


def test_api_key(tmp_path):
    with ServerProcess(tmp_path / "store", api_key="s3cret") as server:
        c = server.client
        bare = {"Authorization": ""}
        r = c.get("/v1/videos", headers=bare)
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        r = c.get("/v1/videos", headers={"Authorization": "Bearer s3cre"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/videos", headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert c.get("/v1/videos").status_code == 200
        assert c.get("/health", headers=bare).status_code == 200 and c.get("/", headers=bare).status_code == 200
        assert c.post("/v1/videos", json={"prompt": "a cat", **FIRST}, headers=bare).status_code == 401
        assert c.get("/v1/videos").json()["data"] == []


def test_a_public_address_without_a_key_is_refused(tmp_path):
    cmd = [sys.executable, "-m", "cogvideo_engine", "serve", "--host", "0.0.0.0", "--store", str(tmp_path)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "COGVIDEO_API_KEY"})
    assert done.returncode == 2 and "without an API key" in done.stderr
