"""The serving front: events in order with exact progress, previews and checkpoints, resuming, abort, admission,
slow consumers, failures, shutdown, the async stream."""

import asyncio
import threading
import time

import pytest
import torch

from cogvideo_engine import (AdmissionError, AsyncEngine, Cancelled, Checkpoint, QueueFull, SamplingParams)

from helpers.engines import small_engine, tokens_of

FULL = SamplingParams(seed=11, num_samples=2)
FIRST = SamplingParams(seed=12, only_first_stage=True)


@pytest.fixture(scope="module")
def engine():
    return small_engine()


@pytest.fixture(scope="module")
def full_run(engine):
    """The events of one full request with previews, read as they come."""
    with AsyncEngine(engine) as served:
        return list(served.submit("a cat", FULL, request_id="full").events(timeout=600))


def test_events_come_in_order_with_exact_progress(engine, full_run):
    kinds = [ev.kind for ev in full_run]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "completed"
    assert sum(k in ("completed", "failed", "cancelled") for k in kinds) == 1
    frame_len, s = 16, FULL.num_samples
    totals = {"stage1": s * 5 * frame_len, "stage2": s * 28 * frame_len, "decode": s * 33}
    for phase, total in totals.items():
        done = [ev.done for ev in full_run if ev.kind == "progress" and ev.phase == phase]
        assert done == sorted(done) and done[-1] == total, phase  # tokens (frames) done, exact at the end
        assert {ev.total for ev in full_run if ev.kind == "progress" and ev.phase == phase} == {total}
    etas = [ev.eta_s for ev in full_run if ev.kind == "progress" and ev.eta_s is not None]
    assert etas and min(etas) >= 0
    final = full_run[-1]
    assert len(final.outputs) == s and torch.equal(final.tokens, tokens_of(final.outputs))
    assert {"queue", "time_to_first_frame", "stage1", "stage2", "decode", "total"} <= set(final.outputs[0].timings)


def test_previews_and_checkpoints_at_every_pass_boundary(full_run):
    final = full_run[-1]
    checkpoints = [ev.tokens.shape[1] for ev in full_run if ev.kind == "checkpoint"]
    assert checkpoints == [1, 5, 9, 17, 33]
    frames = [ev for ev in full_run if ev.kind == "frame"]
    stage1 = [(ev.sample, ev.frame_index) for ev in frames if ev.round is None]
    assert sorted(stage1) == [(s, f) for s in range(2) for f in range(5)]
    rounds = [(ev.sample, ev.round, ev.frames.shape[0]) for ev in frames if ev.round is not None]
    assert sorted(rounds) == [(s, r, n) for s in range(2) for r, n in ((1, 9), (2, 17), (3, 33))]
    last = next(ev for ev in frames if ev.round == 3 and ev.sample == 1)
    assert last.frames.dtype == torch.uint8 and torch.equal(last.frames, final.outputs[1].frames)


def test_resume_from_each_checkpoint_gives_the_same_video(engine, full_run):
    final = full_run[-1].tokens
    checkpoints = [ev.checkpoint for ev in full_run if ev.kind == "checkpoint"]
    with AsyncEngine(engine, previews=False) as served:
        for made in checkpoints[:-1]:
            ckpt = Checkpoint.from_dict(made.to_dict())  # through JSON-like storage
            handle = served.submit(ckpt.prompt, ckpt.params, resume=ckpt)
            events = list(handle.events(timeout=600))
            assert torch.equal(tokens_of(events[-1].outputs), final), ckpt.num_frames
            last = {ev.phase: ev.done for ev in events if ev.kind == "progress"}  # progress counts from the resume
            assert all(last.get(p, handle.resumed.get(p, 0)) == t for p, t in handle.totals.items()), last
            assert handle.resumed["stage1"] == handle.totals["stage1"] * min(ckpt.num_frames, 5) // 5
        with pytest.raises(ValueError, match="another prompt"):
            served.submit("a dog", FULL, resume=checkpoints[1])
        with pytest.raises(ValueError, match="frames"):
            served.submit("a cat", FULL, resume=final[:, :4])


def test_abort_mid_pass_cancels_at_once_and_changes_nothing_else(engine):
    other = ("a dog", SamplingParams(seed=13))
    alone = tokens_of(engine.generate(*other))
    with AsyncEngine(engine) as served:
        victim = served.submit("a cat", FULL, request_id="victim")
        h = served.submit(*other)
        for ev in victim.events(timeout=600):
            if ev.kind == "progress" and ev.phase == "stage2":
                assert served.abort("victim")
                break
        rest = list(victim.events(timeout=1))  # "cancelled" is there already
        assert rest[-1].kind == "cancelled" and isinstance(rest[-1].error, Cancelled)
        with pytest.raises(Cancelled):
            victim.result(timeout=0)
        assert not served.abort("victim")
        assert torch.equal(tokens_of(h.result(timeout=600)), alone)
        assert served.core.num_unfinished == 0  # the victim's rows are gone
        assert served.generate("a bird", FIRST, timeout=600)  # and the engine keeps serving


def test_abort_of_a_request_alone_stops_within_a_step(engine):
    steps = []
    with AsyncEngine(engine) as served:
        h = served.submit("a cat", FULL)
        for ev in h.events(timeout=600):
            if ev.kind == "progress" and ev.done >= 10:
                served.abort(h.request_id)
                steps.append(served.core.stats.forward_steps)
        deadline = time.monotonic() + 10
        while served.core.num_unfinished and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served.core.stats.forward_steps - steps[0] <= 1


def test_sync_generate_cancels_within_one_step(engine):
    before = engine.core.stats.forward_steps
    with pytest.raises(Cancelled, match="stage1 at 10/"):
        engine.generate("a cat", FIRST, progress=lambda phase, done, total: done < 10)
    assert engine.core.stats.forward_steps - before == 10 and engine.core.num_unfinished == 0


def test_admission_rejects_before_any_compute(engine):
    with AsyncEngine(engine, max_queued=1) as served:
        served.submit("a cat", FIRST, request_id="a")
        with pytest.raises(QueueFull, match="max_queued 1"):
            served.submit("a dog", FIRST)
        with pytest.raises(ValueError, match="already in use"):
            served.core.submit("a dog", FIRST, emit=lambda ev: None, request_id="a")
    with AsyncEngine(engine, cache_memory_bytes=1) as served:
        with pytest.raises(AdmissionError, match="cache rows per forward"):
            served.submit("a cat", FIRST)
        assert served.core.num_unfinished == 0
    with AsyncEngine(engine) as served:
        for bad, error in ((dict(prompt=""), ValueError), (dict(params="x"), TypeError),
                           (dict(prompt="x" * 200), ValueError), (dict(request_id=5), TypeError)):
            args = dict(prompt="a cat", params=FIRST) | bad
            with pytest.raises(error):
                served.submit(args.pop("prompt"), args.pop("params"), **args)
        assert served.core.num_unfinished == 0


def test_a_slow_consumer_never_blocks_the_loop(engine):
    with AsyncEngine(engine, max_pending_frames=2) as served:
        h = served.submit("a cat", FULL)
        videos = h.result(timeout=600)  # nothing read until the end
        events = list(h.events(timeout=1))
        assert events[-1].kind == "completed" and videos == events[-1].outputs
        assert sum(ev.kind == "frame" for ev in events) == 2 and h._channel.dropped_frames > 0
        assert sum(ev.kind == "progress" for ev in events) <= 10  # merged while unread
        assert [ev.tokens.shape[1] for ev in events if ev.kind == "checkpoint"] == [1, 5, 9, 17, 33]


def test_a_failing_batch_fails_its_requests_and_the_engine_keeps_serving(engine, monkeypatch):
    with AsyncEngine(engine, previews=False) as served:
        monkeypatch.setattr(engine, "decode", lambda tokens: (_ for _ in ()).throw(RuntimeError("decoder broke")))
        h = served.submit("a cat", FIRST)
        with pytest.raises(RuntimeError, match="decoder broke"):
            h.result(timeout=600)
        monkeypatch.undo()
        assert served.generate("a cat", FIRST, timeout=600)[0].frames.dtype == torch.uint8


def test_stream_and_leaving_it_early_aborts(engine):
    async def main(served):
        kinds = [ev.kind async for ev in served.stream("a cat", FIRST, previews=False)]
        async for ev in served.stream("a dog", FULL, request_id="early"):
            if ev.kind == "frame":
                break
        return kinds

    with AsyncEngine(engine) as served:
        kinds = asyncio.run(main(served))
        assert kinds[0] == "queued" and kinds[-1] == "completed" and "frame" not in kinds
        assert not served.abort("early")  # already cancelled by leaving the loop
        assert served.metrics()["cancelled"] >= 1


def test_submit_from_many_threads_and_shutdown_cancels(engine):
    served = AsyncEngine(engine, previews=False)
    handles = []
    threads = [threading.Thread(target=lambda i=i: handles.append(served.submit(f"cat {i}", FIRST)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served.shutdown()
    outcomes = []
    for h in handles:
        try:
            h.result(timeout=5)
            outcomes.append("completed")
        except Cancelled:
            outcomes.append("cancelled")
    assert len(outcomes) == 4 and "cancelled" in outcomes
    with pytest.raises(RuntimeError, match="shut down"):
        served.submit("a cat", FIRST)
