"""The service's Prometheus metrics (text format at ``GET /metrics``), in seconds, names without colons.

Histograms (buckets up to 8 hours -- a 7.7 B-parameter video takes minutes on a GPU and hours on a CPU):

* ``cogvideo_request_e2e_seconds`` -- submission to completion, per completed job;
* ``cogvideo_request_queue_seconds`` -- submission to its first batch;
* ``cogvideo_request_time_to_first_frame_seconds`` -- submission to the first frame's tokens;
* ``cogvideo_request_stage_seconds{stage}`` -- ``stage1``, ``stage2``, ``super_resolution``, ``decode``;
* ``cogvideo_step_seconds{phase}`` -- every forward step of a pass, every super-resolved and decoded frame.

Gauges ``cogvideo_requests_running`` / ``cogvideo_requests_waiting`` (read at scrape time), counters
``cogvideo_requests_created_total``, ``cogvideo_requests_finished_total{status}``,
``cogvideo_generated_tokens_total``, ``cogvideo_batch_steps_total`` (under Ray Serve, where the engines run on
replicas, ``cogvideo_replica_jobs_total{replica}`` instead: :mod:`.ray_app`). One registry per service (not the
process-global one), so several services in one process keep their own numbers.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..serving.types import PHASES

REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _CoreCounters(Collector):
    """Counters read from the engine core's stats at scrape time."""

    def __init__(self, stats: Callable[[], dict | None]):
        self._stats = stats

    def collect(self):
        stats = self._stats()
        if stats is not None and "replicas" in stats:  # engines elsewhere (Ray Serve): the jobs sent to each
            jobs = CounterMetricFamily("cogvideo_replica_jobs", "Jobs dispatched to each engine replica",
                                       labels=["replica"])
            for replica, count in sorted(stats["replicas"].items()):
                jobs.add_metric([replica], count)
            return [jobs]
        stats = stats or {}
        tokens = CounterMetricFamily("cogvideo_generated_tokens", "Tokens generated (all phases)")
        tokens.add_metric([], stats.get("tokens", 0))
        steps = CounterMetricFamily("cogvideo_batch_steps", "Batches the engine loop ran")
        steps.add_metric([], stats.get("steps", 0))
        return [tokens, steps]


class ServiceMetrics:
    """The metrics of one service. ``running`` / ``waiting``: callables read at scrape time; ``core_stats``: the
    engine core's counters (:meth:`~cogvideo_engine.serving.async_engine.AsyncEngine.metrics`), None while
    loading."""

    def __init__(self, running: Callable[[], int], waiting: Callable[[], int],
                 core_stats: Callable[[], dict | None]):
        self.registry = r = CollectorRegistry()
        self.e2e = Histogram("cogvideo_request_e2e_seconds", "Submission to completion of a job",
                             buckets=REQUEST_BUCKETS, registry=r)
        self.queue = Histogram("cogvideo_request_queue_seconds", "Submission to a job's first batch",
                               buckets=REQUEST_BUCKETS, registry=r)
        self.ttff = Histogram("cogvideo_request_time_to_first_frame_seconds",
                              "Submission to a job's first frame of tokens", buckets=REQUEST_BUCKETS, registry=r)
        self.stage = Histogram("cogvideo_request_stage_seconds", "A job's stage, from its first batch to its end",
                               ["stage"], buckets=REQUEST_BUCKETS, registry=r)
        self.step = Histogram("cogvideo_step_seconds", "A forward step of a pass (a frame for super_resolution and "
                              "decode)", ["phase"], buckets=STEP_BUCKETS, registry=r)
        self.created = Counter("cogvideo_requests_created", "Jobs accepted", registry=r)
        self.finished = Counter("cogvideo_requests_finished", "Jobs finished, by final status", ["status"],
                                registry=r)
        Gauge("cogvideo_requests_running", "Jobs whose work has started and not finished",
              registry=r).set_function(running)
        Gauge("cogvideo_requests_waiting", "Jobs accepted whose work has not started",
              registry=r).set_function(waiting)
        r.register(_CoreCounters(core_stats))
        for status in ("completed", "failed", "cancelled"):
            self.finished.labels(status)  # present at 0 from the start
        for phase in PHASES:
            self.step.labels(phase)

    def observe_step(self, phase: str, seconds: float) -> None:
        self.step.labels(phase).observe(seconds)

    def observe_completed(self, timings: dict[str, float]) -> None:
        """A completed job's ``VideoOutput.timings``."""
        self.finished.labels("completed").inc()
        for name, histogram in (("total", self.e2e), ("queue", self.queue), ("time_to_first_frame", self.ttff)):
            if name in timings:
                histogram.observe(timings[name])
        for stage in PHASES:
            if stage in timings:
                self.stage.labels(stage).observe(timings[stage])

    def render(self) -> bytes:
        return generate_latest(self.registry)
