"""Bad arguments are refused before any compute, with a message naming the argument and the constraint."""

from dataclasses import astuple, replace

import pytest
import torch

import cogvideo_engine as ce
from cogvideo_engine.generation.passes import generate_pass
from cogvideo_engine.generation.pipeline import stage2_tokens
from cogvideo_engine.generation.runner import ModelRunner
from cogvideo_engine.generation.sampler import ClusterSampler
from cogvideo_engine.generation.scoring import teacher_forced_logits
from cogvideo_engine.generation.settings import VIDEO_SAMPLING, PipelineSettings

from helpers.models import SMALL_BOI, SMALL_GEOMETRY, small_model

FRAME = SMALL_GEOMETRY.frame_len


@pytest.mark.parametrize("field,value,error,match", [
    ("seed", -1, ValueError, "seed must be >= 0"),
    ("seed", 2**63, ValueError, "seed must be <= "),
    ("seed", 1.5, TypeError, "seed must be an integer"),
    ("num_samples", 0, ValueError, "num_samples must be >= 1"),
    ("num_samples", True, TypeError, "num_samples must be an integer"),
    ("only_first_stage", 1, TypeError, "only_first_stage must be True or False"),
    ("use_guidance_stage1", "yes", TypeError, "use_guidance_stage1 must be True or False"),
    ("guidance_alpha", float("inf"), ValueError, "guidance_alpha must be finite"),
    ("guidance_alpha", "3", TypeError, "guidance_alpha must be a real number"),
    ("temperature", 0.0, ValueError, "temperature must be positive"),
    ("temperature2", -1.0, ValueError, "temperature2 must be positive"),
    ("first_frame_temperature", float("nan"), ValueError, "first_frame_temperature must be finite"),
    ("top_k", 0, ValueError, "top_k must be >= 1"),
    ("first_frame_top_k", 2.0, TypeError, "first_frame_top_k must be an integer"),
    ("schedule", "fast", ValueError, "schedule must be one of 'wavefront', 'sequential'"),
    ("max_batch", -2, ValueError, "max_batch must be >= 1"),
    ("super_resolution", "on", TypeError, "super_resolution must be True, False or None"),
    ("sr_max_batch", 0, ValueError, "sr_max_batch must be >= 1"),
])
def test_sampling_params_refuse_bad_fields(field, value, error, match):
    with pytest.raises(error, match=match):
        ce.SamplingParams(**{field: value})


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(max_batch=0), ValueError, "max_batch must be >= 1"),
    (dict(schedule="zigzag"), ValueError, "schedule must be one of"),
    (dict(text_bias=float("nan")), ValueError, "text_bias must be finite"),
    (dict(video=astuple(VIDEO_SAMPLING)), TypeError, "video must be a PassSampling"),
])
def test_pipeline_settings_refuse_bad_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        PipelineSettings(**kwargs)


def test_pass_sampling_refuses_bad_fields():
    with pytest.raises(TypeError, match=r"top_k \(clusters\) must be an integer"):
        replace(VIDEO_SAMPLING, top_k=2.5)
    with pytest.raises(ValueError, match="temperature must be finite"):
        replace(VIDEO_SAMPLING, temperature=float("inf"))


@pytest.fixture(scope="module")
def engine():
    return ce.Engine.default()


@pytest.fixture
def no_compute(monkeypatch):
    """Any model forward fails the test: a refused request must not have started."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward ran before the request was refused")

    monkeypatch.setattr(ModelRunner, "prefill", forbidden)
    monkeypatch.setattr(ce.CogVideoModel, "extend", forbidden)


LONG = "a cat plays " * 10  # fits the first frame (512 text positions), not the video passes (74)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(prompts=[]), ValueError, "no prompts given"),
    (dict(prompts=7), TypeError, "prompts must be a string or a list of strings"),
    (dict(prompts=["a cat", "  "]), ValueError, "prompt 1 must be a non-empty string"),
    (dict(prompts=["a cat", LONG]), ValueError, r"is too long: text length .* pass 'stage1': it must be 1\.\.74"),
    (dict(prompts="a cat", params={"seed": 1}), TypeError, "params must be SamplingParams"),
    (dict(prompts=["a", "b"], params=[ce.SamplingParams()]), ValueError, "2 prompts but 1 SamplingParams"),
    (dict(prompts="a cat", params=ce.SamplingParams(top_k=501)), ValueError, r"top_k \(501 clusters\) exceeds"),
    (dict(prompts="a cat", params=ce.SamplingParams(first_frame_top_k=999)), ValueError, "first_frame_top_k"),
    (dict(prompts="a cat", progress="yes"), TypeError, "progress must be callable"),
    (dict(prompts="a cat", cancel=1), TypeError, "cancel must be callable"),
    (dict(prompts="a cat", profile_path=3), TypeError, "profile_path must be a str or Path"),
    (dict(prompts=["a", "b"], stage1_tokens_in=torch.zeros(1, 5, 400, dtype=torch.long)), ValueError,
     "resumes one prompt"),
    (dict(prompts="a", stage1_tokens_in=torch.zeros(2, 5, 400, dtype=torch.long)), ValueError,
     r"stage1_tokens_in must have shape \[1, 5, 400\], got \[2, 5, 400\]"),
    (dict(prompts="a", stage1_tokens_in=torch.zeros(1, 5, 400)), TypeError, "stage1_tokens_in must be an integer"),
    (dict(prompts="a", stage1_tokens_in=torch.full((1, 5, 400), 20000)), ValueError, r"outside 0\.\.19999"),
])
def test_generate_refuses_bad_requests_before_any_compute(engine, no_compute, kwargs, error, match):
    with pytest.raises(error, match=match):
        engine.generate(**kwargs)


def test_generate_refuses_what_the_assets_cannot_do(engine, no_compute):
    no_sr = ce.Engine(engine.stage1_model, None, engine.tokenizer, engine.decoder, engine.sampler)
    with pytest.raises(ValueError, match="no stage-2 model loaded"):
        no_sr.generate("a cat")
    with pytest.raises(ValueError, match="super-resolution needs the cogview2-dsr checkpoint"):
        no_sr.generate("a cat", ce.SamplingParams(only_first_stage=True, super_resolution=True))


def test_teacher_forced_logits_refuses_bad_arguments_before_any_compute(no_compute):
    model = small_model(1)
    text = torch.randint(20000, SMALL_BOI, (2, 4))
    given = torch.randint(0, 20000, (2, 1, FRAME))
    target = torch.randint(0, 20000, (2, 2, FRAME))

    def score(**kw):
        args = dict(model=model, stage="stage1", text_ids=text, given_frames=given, target_frames=target,
                    boi_id=SMALL_BOI)
        return teacher_forced_logits(**{**args, **kw})

    for kw, error, match in [
        (dict(text_bias=float("nan")), ValueError, "text_bias must be finite"),
        (dict(guidance_alpha="3"), TypeError, "guidance_alpha must be a real number"),
        (dict(progress=5), TypeError, "progress must be callable"),
        (dict(backend="flash"), ValueError, "unknown attention backend 'flash'"),
        (dict(boi_id=1.0), TypeError, "boi_id must be an integer"),
        (dict(guider_text_ids=text[:1]), ValueError, r"guider_text_ids must have shape \[2, \*\], got \[1, 4\]"),
        (dict(guider_text_ids=torch.randint(20000, SMALL_BOI, (2, 80))), ValueError, "text length 80"),
        (dict(text_ids=text.float()), TypeError, "text_ids must be an integer"),
        (dict(stage="stage2"), ValueError, "stage-2 model"),
    ]:
        with pytest.raises(error, match=match):
            score(**kw)


def test_generate_pass_refuses_bad_arguments_before_any_compute(no_compute):
    model = small_model(2)
    sampler = ClusterSampler(torch.arange(20000) % 50)
    text = torch.randint(20000, SMALL_BOI, (2, 4))
    given = torch.randint(0, 20000, (2, 3, FRAME))

    def run(**kw):
        args = dict(model=model, stage="stage2", text_ids=text, given_frames=given, num_targets=2,
                    sampler=sampler, params=VIDEO_SAMPLING, row_keys=[(1, 0), (1, 1)], boi_id=SMALL_BOI)
        return generate_pass(**{**args, **kw})

    for kw, error, match in [
        (dict(num_targets=3), ValueError, "num_targets must be <= 2"),
        (dict(num_targets=0), ValueError, "num_targets must be >= 1"),
        (dict(given_frames=given[:, :2]), ValueError, r"given_frames must have shape \[2, 3, 16\]"),
        (dict(params=replace(VIDEO_SAMPLING, top_k=51)), ValueError, r"top_k \(51 clusters\) exceeds the sampler's 50"),
        (dict(params=dict(top_k=3)), TypeError, "sampling params must be a PassSampling"),
        (dict(row_keys=[(1, 0)]), ValueError, "2 rows but 1 row keys"),
        (dict(row_keys=[(1, 0), (1, 0.5)]), TypeError, r"row key's part must be an integer"),
        (dict(text_bias=None), TypeError, "text_bias must be a real number"),
        (dict(schedule="random"), ValueError, "schedule must be one of"),
        (dict(boi_id=10**6), ValueError, "boi_id must be <= 20099"),
        (dict(guider_text_ids=text[:1]), ValueError, r"guider_text_ids must have shape \[2, \*\]"),
        (dict(text_ids=torch.randint(20000, SMALL_BOI, (2, 90))), ValueError, "text length 90"),
        (dict(progress=[]), TypeError, "progress must be callable"),
    ]:
        with pytest.raises(error, match=match):
            run(**kw)


def test_stage2_tokens_refuses_bad_frames_before_any_compute(no_compute):
    from cogvideo_engine.io.default_assets import default_assets_root
    from cogvideo_engine.io.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(default_assets_root() / "ice_text.model")
    model = small_model(2)
    sampler = ClusterSampler(torch.arange(20000) % 50)
    frames = torch.randint(0, 20000, (1, 5, FRAME))
    with pytest.raises(ValueError, match="odd number >= 3 of frames, got 4"):
        stage2_tokens(model, tokenizer, "a cat", frames[:, :4], 1, sampler)
    with pytest.raises(ValueError, match=r"frames must have shape \[\*, \*, 16\]"):
        stage2_tokens(model, tokenizer, "a cat", frames[..., :8], 1, sampler)
    with pytest.raises(ValueError, match="too long"):
        stage2_tokens(model, tokenizer, LONG, frames, 1, sampler)


def test_cli_refuses_bad_settings_before_loading_models(capsys, monkeypatch):
    from cogvideo_engine import cli

    monkeypatch.setattr(ce.Engine, "default", lambda **kw: pytest.fail("the engine loaded first"))
    assert cli.main(["generate", "a cat", "--max-inference-batch-size", "0"]) == 2
    assert "max_batch must be >= 1" in capsys.readouterr().err
    assert cli.main(["generate", "a cat", "--temperature", "-1"]) == 2
    assert "temperature must be positive" in capsys.readouterr().err
