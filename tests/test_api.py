"""The public API and the generate command on the embedded default assets (random weights)."""

import subprocess
import sys

import pytest
import torch

from cogvideo_engine import Cancelled, Engine, SamplingParams
from cogvideo_engine.io.export import read_tokens, write_tokens

FAST = SamplingParams(seed=5, only_first_stage=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("COGVIDEO_ENGINE_HOME", str(home))
    yield Engine.default()  # the best available backend (the C++ kernel when built)
    mp.undo()


def test_generate_batch_seeds_and_outputs(engine):
    videos = engine.generate(["a cat", "a dog"], [FAST, SamplingParams(seed=6, only_first_stage=True, num_samples=2)])
    assert [v.prompt for v in videos] == ["a cat", "a dog", "a dog"] and [v.sample for v in videos] == [0, 0, 1]
    v = videos[0]
    assert v.frames.shape == (5, 160, 160, 3) and v.frames.dtype == torch.uint8 and v.tokens.shape == (5, 400)
    assert v.fps == 4.0 and set(v.timings) == {"queue", "stage1", "time_to_first_frame", "decode", "total"}
    assert 0 < v.timings["time_to_first_frame"] < v.timings["total"] and 0 < v.timings["stage1"] < v.timings["total"]
    assert v.latency["stage1"]["num_steps"] == 2000 and "p90_ms" in v.latency_report()
    assert v.latency["stage1"]["weight_gbytes_per_s"] > 0 and v.latency["decode"]["num_steps"] == 5
    again = engine.generate("a cat", FAST)[0]
    assert torch.equal(again.tokens, v.tokens)  # same seed, same video, whatever else was in the batch
    assert not torch.equal(videos[1].tokens, videos[2].tokens)


def test_cancel_stops_and_errors_are_named(engine):
    calls = []

    def stop_early(phase, done, total):
        calls.append(done)
        return done < 10

    with pytest.raises(Cancelled, match="stage1 at 10/2000 tokens"):
        engine.generate("a cat", FAST, progress=stop_early)
    with pytest.raises(Cancelled):
        engine.generate("a cat", FAST, cancel=lambda: True)
    with pytest.raises(ValueError, match="no prompts"):
        engine.generate([], FAST)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        engine.generate(["a", "b"], [FAST])


def test_resume_stage2_from_saved_stage1_tokens(engine, tmp_path):
    first = engine.generate("a cat", FAST)[0]
    saved = write_tokens(tmp_path / "s1.tokens.pt", first.tokens)
    resumed = engine.generate("a cat", SamplingParams(seed=5), stage1_tokens_in=read_tokens(saved)[None])[0]
    assert resumed.tokens.shape == (33, 400) and torch.equal(resumed.tokens[::8], first.tokens)
    assert resumed.fps == 8.0


def test_generate_command_writes_a_gif(tmp_path):
    env = {"COGVIDEO_ENGINE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "cogvideo_engine", "generate", "a cat", "--only-first-stage",
                          "-o", str(tmp_path / "cat.gif"), "--quiet"], capture_output=True, text=True, env=env,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cat.gif").is_file() and (tmp_path / "cat.tokens.pt").is_file()
    assert "RANDOM weights" in out.stderr and "p50_ms" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "cogvideo_engine", "generate", "x", "--model-root",
                          str(tmp_path / "nowhere")], capture_output=True, text=True, env=env, timeout=600,
                         check=False)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_super_resolution_gives_480_frames(engine):
    """The default engine super-resolves only when asked; 5 saved frames -> 480x480 through its tiny DSR."""
    tokens = torch.randint(0, 20000, (1, 5, 400), generator=torch.Generator().manual_seed(0))
    params = SamplingParams(seed=3, only_first_stage=True, super_resolution=True)
    v = engine.generate("a cat", params, stage1_tokens_in=tokens)[0]
    assert v.frames.shape == (5, 480, 480, 3) and v.sr_tokens.shape == (5, 3600)
    assert torch.equal(v.tokens, tokens[0]) and int(v.sr_tokens.max()) < 20000
    assert v.latency["super_resolution"]["num_steps"] == 5 and "super_resolution" in v.timings
    assert "super_resolution" in v.latency_report()
    no_dsr = Engine(engine.stage1_model, engine.stage2_model, engine.tokenizer, engine.decoder, engine.sampler)
    with pytest.raises(ValueError, match="cogview2-dsr"):
        no_dsr.generate("a cat", params)


def test_super_resolution_is_on_when_the_checkpoint_is_given(engine):
    from cogvideo_engine.io.default_assets import default_assets_root

    root = default_assets_root()  # the engine fixture's home: holds cogview2-dsr/
    assert Engine.from_pretrained(root).super_resolution_default
    assert not engine.super_resolution_default  # Engine.default(): only when asked
    assert Engine.default(dsr=root / "cogview2-dsr").super_resolution_default
    with pytest.raises(FileNotFoundError, match="super-resolution checkpoint"):
        Engine.from_pretrained(root, dsr=root / "missing")


def test_offload_moves_each_model_for_its_stage_only(engine):
    """With offload the models live on the CPU between stages (here the run device is the CPU too, so this
    checks the bookkeeping and that the result is unchanged)."""
    offloaded = Engine.default(offload=True)
    assert offloaded.offload_to == torch.device("cpu")
    assert torch.equal(offloaded.generate("a cat", FAST)[0].tokens, engine.generate("a cat", FAST)[0].tokens)
    assert next(offloaded.stage1_model.parameters()).device.type == "cpu"
    assert offloaded.core._resident is None  # the last stage's model went home when the call finished


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_offload_keeps_models_on_the_cpu_between_stages(engine):
    resident = Engine.default(device="cuda")
    offloaded = Engine.default(device="cuda", offload=True)
    assert next(offloaded.stage1_model.parameters()).device.type == "cpu"
    a, b = resident.generate("a cat", FAST)[0], offloaded.generate("a cat", FAST)[0]
    assert torch.equal(a.tokens, b.tokens)
    assert next(offloaded.stage1_model.parameters()).device.type == "cpu"
