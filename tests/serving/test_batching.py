"""Faithful under batching: a request's tokens do not depend on what else shares its forwards -- alone, in pairs,
in mixes of prompts, seeds, sample counts and settings, and arriving while others run -- and the state that
lives as long as the engine (fused weights, caches, CUDA graphs) is made once."""

import pytest
import torch

from cogvideo_engine import AsyncEngine, Engine, SamplingParams
from cogvideo_engine.generation.runner import DecodeGraphs, ModelRunner
from cogvideo_engine.kernels.batch_invariant import linear_rows_available

from helpers.engines import small_engine, tokens_of

pytestmark = pytest.mark.skipif(not linear_rows_available()[0], reason=linear_rows_available()[1])

REQUESTS = [  # (request id, prompt, params): every setting that changes a row, in one mix
    ("cat", "a cat plays the piano", SamplingParams(seed=1)),
    ("dog", "a dog", SamplingParams(seed=2, num_samples=2, only_first_stage=True)),
    ("bird", "a bird over the sea", SamplingParams(seed=3, use_guidance_stage1=False, temperature=0.9, top_k=20)),
    ("cow", "a cow", SamplingParams(seed=4, schedule="sequential", only_first_stage=True, guidance_alpha=2.0)),
    ("fish", "fish", SamplingParams(seed=5, first_frame_temperature=0.8, max_batch=3)),
]


@pytest.fixture(scope="module")
def engine():
    return small_engine()


@pytest.fixture(scope="module")
def alone(engine):
    """Each request's tokens when it runs by itself."""
    return {rid: tokens_of(engine.generate(prompt, params)) for rid, prompt, params in REQUESTS}


def test_a_request_gets_the_same_tokens_in_any_company(engine, alone):
    pair = engine.generate([REQUESTS[0][1], REQUESTS[2][1]], [REQUESTS[0][2], REQUESTS[2][2]])
    assert torch.equal(tokens_of(pair[:1]), alone["cat"]) and torch.equal(tokens_of(pair[1:]), alone["bird"])
    with AsyncEngine(engine) as served:
        handles = {rid: served.submit(prompt, params, request_id=rid) for rid, prompt, params in REQUESTS}
        for rid, h in handles.items():
            assert torch.equal(tokens_of(h.result(timeout=600)), alone[rid]), rid
        assert served.metrics()["rows"] > served.metrics()["forward_steps"]  # forwards were shared


def test_arriving_while_others_run_changes_nothing(engine, alone):
    with AsyncEngine(engine) as served:
        first = served.submit(REQUESTS[0][1], REQUESTS[0][2], request_id="cat")
        for ev in first.events(timeout=600):  # the others arrive after the cat's stage 1, during its stage 2
            if ev.kind == "checkpoint" and ev.tokens.shape[1] == 5:
                break
        late = {rid: served.submit(prompt, params, request_id=rid) for rid, prompt, params in REQUESTS[1:]}
        assert torch.equal(tokens_of(first.result(timeout=600)), alone["cat"])
        for rid, h in late.items():
            assert torch.equal(tokens_of(h.result(timeout=600)), alone[rid]), rid


def test_engine_state_is_made_once(engine, alone):
    """After the first request of each shape: no weight re-fusion, no new cache, no graph re-capture."""
    engine.generate(REQUESTS[0][1], REQUESTS[0][2])
    counts = ModelRunner.fusions, engine.core.pool.allocations, DecodeGraphs.captures
    again = engine.generate([p for _, p, _ in REQUESTS[:3]], [q for _, _, q in REQUESTS[:3]])
    engine.generate(REQUESTS[0][1], SamplingParams(seed=99))
    assert (ModelRunner.fusions, engine.core.pool.allocations, DecodeGraphs.captures) == counts
    assert torch.equal(tokens_of(again[:1]), alone["cat"])


def test_tiny_default_model_batched_equals_alone(engine_home):
    """The same on the embedded default model (real geometry): two requests with different settings."""
    default = Engine.default()
    a = ("a cat", SamplingParams(seed=5, only_first_stage=True))
    b = ("a dog", SamplingParams(seed=6, num_samples=2, only_first_stage=True, use_guidance_stage1=False))
    alone_a, alone_b = (tokens_of(default.generate(*r)) for r in (a, b))
    together = default.generate([a[0], b[0]], [a[1], b[1]])
    assert torch.equal(tokens_of(together[:1]), alone_a) and torch.equal(tokens_of(together[1:]), alone_b)
