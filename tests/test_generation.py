"""Wavefront scheduling, the cluster sampler and token generation of one pass."""

import warnings

import pytest
import torch

from cogvideo_engine.config import tiny_config
from cogvideo_engine.generation import generate_pass
from cogvideo_engine.kernels.rules import FrameGeometry, Pass, StreamLayout
from cogvideo_engine.model import CogVideoModel, init_random_weights
from cogvideo_engine.sampler import ClusterSampler, PassSampling, keyed_uniforms
from cogvideo_engine.scheduler import feed_steps, schedule
from cogvideo_engine.scoring import stream_input_ids, teacher_forced_logits

from conftest import SMALL_BOI, SMALL_GEOMETRY, small_model
from numerics import FUSED_FACTOR, MODEL_FACTOR, assert_fp_close, float64_copy

REAL = FrameGeometry()


# -- the scheduler ---------------------------------------------------------------------------------------------

def test_released_step_counts_follow_from_the_rules():
    stage2 = StreamLayout(Pass.STAGE2, 9, 2)
    steps = feed_steps(stage2, num_layers=48)
    lags = {steps[stage2.index(4, p)] - steps[stage2.index(3, p)] for p in range(400)}
    assert lags == {190} and len(schedule(stage2, 48)) == 590
    assert len(schedule(stage2, 48, "sequential")) == 800
    assert len(schedule(StreamLayout(Pass.STAGE1, 20, 4), 48)) == 1600  # full causal: no overlap
    assert len(schedule(StreamLayout(Pass.FIRST_FRAME, 13, 1), 48)) == 400


def test_windowed_stage1_chains_frames_at_the_same_lag():
    windowed = StreamLayout(Pass.STAGE1, 20, 4, stage1_windowed=True)
    plan = schedule(windowed, 48)
    assert len(plan) == 970 and max(len(s) for s in plan) == 3


def test_wavefront_steps_never_feed_a_position_before_its_keys():
    lay = StreamLayout(Pass.STAGE2, 5, 2, SMALL_GEOMETRY)
    steps = feed_steps(lay, num_layers=2)
    for q, step in steps.items():
        for parity in (0, 1):
            for k in lay.temporal_keys(q, parity) + lay.spatial_keys(q):
                if k in steps and k != q:
                    assert steps[k] < step
        if lay.block_pos(q) > 0:
            assert steps[q - 1] < step  # the input token exists


# -- the sampler ------------------------------------------------------------------------------------------------

def toy_sampler(num_clusters=500):
    return ClusterSampler(torch.arange(20000) % num_clusters)


def test_keyed_uniforms_depend_only_on_the_key():
    assert keyed_uniforms((1, 2, 3)) == keyed_uniforms((1, 2, 3))
    assert keyed_uniforms((1, 2, 3)) != keyed_uniforms((1, 2, 4))
    u = [keyed_uniforms((7, i))[0] for i in range(4000)]
    assert 0.47 < sum(u) / len(u) < 0.53 and min(u) >= 0 and max(u) < 1


def test_sampler_matches_its_exact_distribution():
    """Empirical token frequencies of many keyed draws against the exact two-stage probabilities."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.full((1, 20000), -30.0)
    hot = torch.randperm(20000, generator=gen)[:40]
    logits[0, hot] = torch.randn(40, generator=gen) * 2
    sampler = toy_sampler(8)
    params = PassSampling(temperature=1.05, top_k=3, temperature2=0.89)
    exact = sampler.token_distribution(logits, params)[0]
    n = 6000
    drawn = sampler.sample(logits.expand(n, -1), params, [(1, i) for i in range(n)])
    freq = torch.bincount(drawn, minlength=20000).double() / n
    assert (freq - exact.double()).abs().max() < 0.02
    # top_k counts clusters: tokens of clusters outside the top 3 are never drawn
    mass = sampler.cluster_mass(logits, params)[0]
    allowed = set(mass.topk(3).indices.tolist())
    assert {int(sampler.labels[t]) for t in drawn.tolist()} <= allowed


def test_in_cluster_draw_equals_the_full_width_masked_softmax():
    """The draw over the chosen cluster's members is the original's full-width draw: logits outside the
    cluster set to -65504, softmax(. / temperature2) over all 20000, inverse CDF with the same uniform."""
    from cogvideo_engine.sampler import keyed_uniforms

    sampler = ClusterSampler(torch.randperm(20000, generator=torch.Generator().manual_seed(1)) % 500)
    params = PassSampling(temperature=1.05, top_k=12, temperature2=0.89)
    logits = torch.randn(300, 20000, generator=torch.Generator().manual_seed(2)) * 3
    keys = [(9, i) for i in range(300)]
    drawn = sampler.sample(logits, params, keys)
    clusters = sampler.labels[drawn]
    scaled = logits / params.temperature
    masked = torch.where(sampler.labels[None, :] == clusters[:, None], scaled, torch.full_like(scaled, -65504.0))
    cdf = torch.softmax(masked / params.temperature2, -1).double().cumsum(-1)
    u = torch.tensor([keyed_uniforms(k)[1] for k in keys], dtype=torch.float64)[:, None]
    assert torch.equal(drawn, torch.searchsorted(cdf, u, right=True).squeeze(1))


def test_sampler_temperatures():
    sampler = toy_sampler(num_clusters=1)  # one cluster: the draw is softmax(logits / (t * t2))
    logits = torch.zeros(1, 20000)
    logits[0, :3] = torch.tensor([2.0, 1.0, 0.0])
    params = PassSampling(temperature=2.0, top_k=1, temperature2=0.5)
    dist = sampler.token_distribution(logits, params)[0, :3]
    expected = torch.tensor([2.0, 1.0, 0.0])
    assert_fp_close(dist / dist.sum(), torch.softmax(expected.double(), 0), torch.softmax(expected, 0))


def test_sampler_inputs():
    with pytest.raises(ValueError, match="cover the 20000"):
        ClusterSampler(torch.zeros(10, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match=r"cluster_label2\.npy"):
        ClusterSampler.from_file("/nonexistent/cluster_label2.npy")
    with pytest.raises(ValueError, match="keys"):
        toy_sampler().sample(torch.zeros(2, 20000), PassSampling(), [(1,)])
    with pytest.raises(ValueError, match="exceeds the sampler's 8 clusters"):
        toy_sampler(8).sample(torch.zeros(1, 20000), PassSampling(top_k=12), [(1,)])


# -- generation -------------------------------------------------------------------------------------------------

def _inputs(pass_, batch, frame_len, seed=0, text_len=4):
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(20000, SMALL_BOI, (batch, text_len), generator=gen)
    given = torch.randint(0, 20000, (batch, pass_.num_given, frame_len), generator=gen)
    return text, given


def _soft_model(stage, geometry=SMALL_GEOMETRY, windowed=False):
    cfg = tiny_config(stage, num_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=20100,
                      geometry=geometry)
    if windowed:
        from dataclasses import replace
        cfg = replace(cfg, stage1_windowed=True)
    return init_random_weights(CogVideoModel(cfg), seed=4, peaky=False).eval()


@pytest.mark.parametrize("stage,windowed", [(Pass.STAGE2, False), (Pass.STAGE1, True)])
def test_wavefront_and_sequential_give_the_same_tokens(stage, windowed):
    model = _soft_model(stage.model_stage, REAL, windowed)
    text, given = _inputs(stage, 2, REAL.frame_len)
    kwargs = dict(sampler=toy_sampler(500), params=PassSampling(), row_keys=[(1234, 0), (1234, 1)],
                  boi_id=SMALL_BOI, record_logits=True)
    targets = 2 if stage is Pass.STAGE2 else 3
    wave = generate_pass(model, stage, text, given, targets, schedule="wavefront", **kwargs)
    seq = generate_pass(model, stage, text, given, targets, schedule="sequential", **kwargs)
    assert wave.steps < seq.steps == targets * 400
    assert torch.equal(wave.tokens, seq.tokens)
    layout = model.config.layout(stage, text.shape[1], targets)
    ids = stream_input_ids(layout, text, given, seq.tokens, SMALL_BOI)
    exact = float64_copy(model).forward_full(ids, layout, 1.4)[:, layout.context_len:]
    assert_fp_close(wave.logits, exact, seq.logits, factor=MODEL_FACTOR)


def test_generation_logits_equal_teacher_forced_scoring_of_the_result():
    model = small_model(1)
    text, given = _inputs(Pass.STAGE1, 2, SMALL_GEOMETRY.frame_len)
    guider = text[:, :2]
    out = generate_pass(model, "stage1", text, given, 2, toy_sampler(), PassSampling(), [(5, 0), (5, 1)],
                        text_bias=0.0, guider_text_ids=guider, boi_id=SMALL_BOI, record_logits=True)
    assert (out.tokens >= 0).all()
    scored, exact = (teacher_forced_logits(m, "stage1", text, given, out.tokens, text_bias=0.0,
                                           guider_text_ids=guider, boi_id=SMALL_BOI)
                     for m in (model, float64_copy(model)))
    # guidance scales both streams' rounding (|3 cond| + |2 guider|), in the reference's own error as in the runner's
    assert_fp_close(out.logits, exact.guided_logits, scored.guided_logits, factor=FUSED_FACTOR)


def test_a_rows_tokens_do_not_depend_on_the_rest_of_the_batch():
    model = small_model(2)
    text, given = _inputs(Pass.STAGE2, 3, SMALL_GEOMETRY.frame_len)
    keys = [(9, 0), (9, 1), (9, 2)]
    full = generate_pass(model, "stage2", text, given, 2, toy_sampler(), PassSampling(), keys, boi_id=SMALL_BOI)
    alone = generate_pass(model, "stage2", text[1:2], given[1:2], 2, toy_sampler(), PassSampling(), keys[1:2],
                          boi_id=SMALL_BOI)
    assert torch.equal(full.tokens[1:2], alone.tokens)
    other_seed = generate_pass(model, "stage2", text[1:2], given[1:2], 2, toy_sampler(), PassSampling(),
                               [(10, 1)], boi_id=SMALL_BOI)
    assert not torch.equal(other_seed.tokens, alone.tokens)


def test_cuda_graphs_need_a_cuda_model():
    from cogvideo_engine.runner import ModelRunner

    with pytest.raises(ValueError, match="CUDA device"):
        ModelRunner(small_model(2), "reference", cuda_graphs=True)
    assert not ModelRunner(small_model(2), "reference").cuda_graphs  # CPU: eager steps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_cuda_graph_steps_equal_eager_steps(backend):
    """Stage 2 with the wavefront (steps of 1 and 2 positions, guided-free) and stage 1 guided (rows with
    different text lengths): replayed graphs give the eager tokens and logits."""
    from cogvideo_engine.kernels.registry import backend_status
    from cogvideo_engine.runner import ModelRunner

    status = {st.name: st for st in backend_status("cuda")}[backend]
    if not status.available:
        pytest.skip(f"{backend}: {status.reason}")
    for stage, guided in ((Pass.STAGE2, False), (Pass.STAGE1, True)):
        model = _soft_model(stage.model_stage, REAL).cuda()
        text, given = _inputs(stage, 2, REAL.frame_len)
        kwargs = dict(sampler=toy_sampler(500), params=PassSampling(), row_keys=[(3, 0), (3, 1)], boi_id=SMALL_BOI,
                      record_logits=True, text_bias=0.0 if guided else 1.4,
                      guider_text_ids=text[:, :2] if guided else None)
        runners = [ModelRunner(model, backend, cuda_graphs=g) for g in (False, True)]
        assert runners[1].cuda_graphs and ModelRunner(model, backend).cuda_graphs  # on by default
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a failed capture (eager fallback) fails the test
            runs = [generate_pass(model, stage, text, given, 2, runner=r, **kwargs) for r in runners]
        assert torch.equal(runs[0].tokens, runs[1].tokens)
        scored = teacher_forced_logits(float64_copy(model).cpu(), stage, text, given, runs[0].tokens,
                                       text_bias=kwargs["text_bias"], guider_text_ids=kwargs["guider_text_ids"],
                                       boi_id=SMALL_BOI)
        exact = scored.guided_logits if guided else scored.logits
        assert_fp_close(runs[1].logits, exact, runs[0].logits, what=f"{stage} graph replay", factor=MODEL_FACTOR)


def test_vectorised_keyed_uniforms_equal_the_scalar_ones():
    from cogvideo_engine.sampler import keyed_uniforms_last

    last = torch.tensor([0, 1, 2, 399, 3599, 10**6, 2**62 + 12345])
    for prefix in [(1234, 0, 3, 0, 7, 0), (2**63 + 5, -1, 2**40), ()]:
        expect = torch.tensor([keyed_uniforms(prefix + (int(j),)) for j in last], dtype=torch.float64)
        assert torch.equal(keyed_uniforms_last(prefix, last), expect)
