"""Replicas under Ray Serve on this CPU (``ray.init(num_cpus=2)``): the ingress serves the HTTP API and owns the
job store, two engine replicas (one CPU each, one job at a time) run the jobs it dispatches; two jobs at once each
complete once, on both replicas, with the tokens a request gets alone, and a cancelled job is cancelled once."""

from __future__ import annotations

import concurrent.futures
import io
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is an optional extra: pip install 'cogvideo-engine[ray]'")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from helpers.server import finished, sse_events, wait_for  # noqa: E402

from cogvideo_engine.io.default_assets import default_assets_root  # noqa: E402
from cogvideo_engine.service.client import free_port  # noqa: E402
from cogvideo_engine.service.ray_app import RayAppConfig, build  # noqa: E402

pytestmark = pytest.mark.slow
FIRST = {"only_first_stage": True}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    default_assets_root()  # built once here, not by both replicas at once
    store = tmp_path_factory.mktemp("ray") / "jobs"
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # one job at a time per replica: two jobs at once must take both (Ray Serve's router picks freely below)
        serve.run(build({"num_replicas": "2", "store": str(store), "replica_cpus": "1",
                         "max_ongoing_requests": "1"}), name="cogvideo", route_prefix="/")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0)
        deadline = time.monotonic() + 180
        while client.get("/health").status_code != 200:  # the ingress connects to the replicas first
            assert time.monotonic() < deadline, client.get("/health").text
            time.sleep(0.5)
        yield client
        client.close()
    finally:
        serve.shutdown()
        ray.shutdown()


def test_config_from_serve_run_arguments():
    config = RayAppConfig.from_args({"num_replicas": "3", "target_ongoing_requests": "1.5", "model_root": "none",
                                     "device": "cuda", "tensor_parallel": "2"})
    assert config.num_replicas == 3 and config.target_ongoing_requests == 1.5 and config.model_root is None
    assert config.replica_options() == {"max_ongoing_requests": 16, "num_replicas": 3,
                                        "ray_actor_options": {"num_gpus": 2, "num_cpus": 1}}
    scaled = RayAppConfig.from_args({"min_replicas": "1", "max_replicas": "8"}).replica_options()
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2.0}
    with pytest.raises(ValueError, match="unknown argument"):
        RayAppConfig.from_args({"replicas": "2"})
    with pytest.raises(ValueError, match="min_replicas"):
        RayAppConfig.from_args({"min_replicas": "3", "max_replicas": "2"})


def test_concurrent_jobs_complete_once_over_two_replicas(service):
    from cogvideo_engine import Engine, SamplingParams

    seeds = [11, 12]  # one job per replica, at once
    start = time.monotonic()
    jobs = [service.post("/v1/videos", json={"prompt": "a cat plays the piano", "seed": s, **FIRST})
            for s in seeds]
    assert all(r.status_code == 202 for r in jobs), [r.text for r in jobs]
    ids = [r.json()["id"] for r in jobs]
    with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:  # every job's event stream, concurrently
        streams = list(pool.map(lambda i: [(e, d) for _, e, d in sse_events(service, i, timeout=600)], ids))
    for job_id, events in zip(ids, streams, strict=True):
        terminal = [e for e, _ in events if e in ("completed", "failed", "cancelled")]
        assert terminal == ["completed"], (job_id, terminal)
        assert wait_for(service, job_id, finished)["status"] == "completed"
    listed = [j["id"] for j in service.get("/v1/videos", params={"limit": 100}).json()["data"]]
    assert sorted(listed) == sorted(ids)  # one store: every job once
    served = time.monotonic() - start
    alone = Engine.default().generate(["a cat plays the piano"] * len(seeds),  # batched: the same tokens
                                      [SamplingParams(seed=s, **FIRST) for s in seeds])
    for video, job_id in zip(alone, ids, strict=True):
        content = service.get(f"/v1/videos/{job_id}/content", params={"variant": "tokens"}).content
        np.testing.assert_array_equal(np.load(io.BytesIO(content), allow_pickle=False), video.tokens.numpy())
    print(f"{len(ids)} jobs served in {served:.1f} s; the same requests in this process: "
          f"{time.monotonic() - start - served:.1f} s")
    metrics = service.get("/metrics").text
    per_replica = [float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("cogvideo_replica_jobs_total{")]
    assert len(per_replica) == 2 and sum(per_replica) == len(ids), metrics  # both replicas took jobs


def test_a_cancelled_job_is_cancelled_once(service):
    job = service.post("/v1/videos", json={"prompt": "a dog", "seed": 3}).json()  # the whole video: long
    wait_for(service, job["id"], lambda j: j["status"] == "in_progress", timeout=120)
    assert service.post(f"/v1/videos/{job['id']}/cancel").json()["status"] == "cancelled"
    events = [e for _, e, _ in sse_events(service, job["id"], timeout=60)]
    assert [e for e in events if e in ("completed", "failed", "cancelled")] == ["cancelled"]
