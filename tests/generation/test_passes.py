"""Token generation of one pass: wavefront == sequential, logits == teacher-forced scoring, batch independence,
CUDA-graph steps == eager steps."""

import warnings

import pytest
import torch

from cogvideo_engine.generation.passes import generate_pass
from cogvideo_engine.generation.runner import ModelRunner
from cogvideo_engine.generation.scoring import stream_input_ids, teacher_forced_logits
from cogvideo_engine.generation.settings import VIDEO_SAMPLING
from cogvideo_engine.kernels.rules import FrameGeometry, Pass
from cogvideo_engine.models.cogvideo import CogVideoModel
from cogvideo_engine.models.config import tiny_config
from cogvideo_engine.models.random_init import init_random_weights

from helpers.models import SMALL_BOI, SMALL_GEOMETRY, small_model, toy_sampler
from helpers.numerics import FUSED_FACTOR, MODEL_FACTOR, assert_fp_close, float64_copy

REAL = FrameGeometry()


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
    kwargs = dict(sampler=toy_sampler(500), params=VIDEO_SAMPLING, row_keys=[(1234, 0), (1234, 1)],
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
    out = generate_pass(model, "stage1", text, given, 2, toy_sampler(), VIDEO_SAMPLING, [(5, 0), (5, 1)],
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
    full = generate_pass(model, "stage2", text, given, 2, toy_sampler(), VIDEO_SAMPLING, keys, boi_id=SMALL_BOI)
    alone = generate_pass(model, "stage2", text[1:2], given[1:2], 2, toy_sampler(), VIDEO_SAMPLING, keys[1:2],
                          boi_id=SMALL_BOI)
    assert torch.equal(full.tokens[1:2], alone.tokens)
    other_seed = generate_pass(model, "stage2", text[1:2], given[1:2], 2, toy_sampler(), VIDEO_SAMPLING,
                               [(10, 1)], boi_id=SMALL_BOI)
    assert not torch.equal(other_seed.tokens, alone.tokens)


def test_a_step_draws_all_its_positions_in_one_call_and_one_transfer(monkeypatch):
    model = small_model(2)
    text, given = _inputs(Pass.STAGE2, 2, SMALL_GEOMETRY.frame_len)
    sampler, calls = toy_sampler(), []
    draw = sampler.sample
    monkeypatch.setattr(sampler, "sample", lambda logits, *a, **k: calls.append(logits.shape[0]) or draw(logits, *a,
                                                                                                         **k))
    cpu_copies = []
    to_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: cpu_copies.append(t.shape) or to_cpu(t, *a, **k))
    out = generate_pass(model, "stage2", text, given, 2, sampler, VIDEO_SAMPLING, [(3, 0), (3, 1)], boi_id=SMALL_BOI)
    assert len(calls) == len(cpu_copies) == out.steps  # one parameter group: one draw and one copy per step
    assert sum(calls) == 2 * out.tokens[0].numel()  # every position of both rows, each drawn once
    assert max(calls) > 2  # the wavefront's steps hold several positions


def test_cuda_graphs_need_a_cuda_model():

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

    status = {st.name: st for st in backend_status("cuda")}[backend]
    if not status.available:
        pytest.skip(f"{backend}: {status.reason}")
    for stage, guided in ((Pass.STAGE2, False), (Pass.STAGE1, True)):
        model = _soft_model(stage.model_stage, REAL).cuda()
        text, given = _inputs(stage, 2, REAL.frame_len)
        kwargs = dict(sampler=toy_sampler(500), params=VIDEO_SAMPLING, row_keys=[(3, 0), (3, 1)], boi_id=SMALL_BOI,
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
