"""Loading the released SAT layout and our converted form; every loader error has its own message."""

import json
import os
import zipfile

import pytest
import torch

from cogvideo_engine.io.checkpoints import convert, load_model
from cogvideo_engine.io.sat import CheckpointError, safe_torch_load, sat_checkpoint_file, write_sat_checkpoint

from helpers.models import small_model

BOOKKEEPING_KEYS = {"buffer_names", "optimizer", "lr_scheduler", "sparse_tensor_module_names", "skipped_steps",
                    "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version",
                    "iteration", "client_lr_scheduler", "random_rng_state", "np_rng_state", "torch_rng_state",
                    "cuda_rng_state", "rng_tracker_states"}


@pytest.fixture
def sat_dir(tmp_path):
    model = small_model(1, seed=5)
    write_sat_checkpoint(tmp_path / "ckpt", model, iteration=27000)
    return tmp_path / "ckpt", model


def _fp16_rounded(model):
    return {k: v.half().float() for k, v in model.state_dict().items()}


def test_written_layout_is_the_sat_layout(sat_dir):
    path, _ = sat_dir
    assert (path / "latest").read_text() == "27000"
    cfg = json.loads((path / "model_config.json").read_text())
    assert cfg["model_class"] == "CogVideoModel" and cfg["layernorm_order"] == "sandwich"
    raw = torch.load(path / "27000" / "mp_rank_00_model_states.pt", weights_only=False)
    assert set(raw) >= BOOKKEEPING_KEYS
    assert all(v.dtype == torch.float16 for v in raw["module"].values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp16_on_disk_loads_to_the_dtype_asked_for(sat_dir, dtype):
    path, model = sat_dir
    loaded = load_model(path, dtype=dtype)
    expected = _fp16_rounded(model)
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == dtype
        torch.testing.assert_close(tensor.float(), expected[name].to(dtype).float(), atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_model_config_json_overrides_the_shape(tmp_path):
    model = small_model(1)
    cfg = model.config
    write_sat_checkpoint(tmp_path / "c", model)
    loaded = load_model(tmp_path / "c")
    assert loaded.config == cfg and len(loaded.transformer.layers) == 2


def test_missing_latest(sat_dir):
    path, _ = sat_dir
    (path / "latest").unlink()
    with pytest.raises(CheckpointError, match=r"no .latest. file"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no 'latest' file"):
        sat_checkpoint_file(path)


def test_latest_names_a_missing_iteration(sat_dir):
    path, _ = sat_dir
    (path / "latest").write_text("99")
    with pytest.raises(CheckpointError, match="names iteration '99'"):
        load_model(path)


def test_truncated_file(sat_dir):
    path, _ = sat_dir
    file = path / "27000" / "mp_rank_00_model_states.pt"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(path)


def test_wrong_model_class(sat_dir):
    path, _ = sat_dir
    cfg = json.loads((path / "model_config.json").read_text())
    cfg["model_class"] = "DsrModel"
    (path / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="describes a 'DsrModel', not a CogVideo model"):
        load_model(path)


def test_wrong_stage(sat_dir):
    path, _ = sat_dir
    with pytest.raises(CheckpointError, match="holds the stage-1 model, but stage 2 was asked for"):
        load_model(path, stage=2)
    cfg = json.loads((path / "model_config.json").read_text())
    cfg["cogvideo_stage"] = 3
    (path / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="cogvideo_stage 3"):
        load_model(path)


def test_missing_unexpected_and_misshaped_tensors_in_one_error(sat_dir):
    path, _ = sat_dir
    file = path / "27000" / "mp_rank_00_model_states.pt"
    sd = torch.load(file, weights_only=False)
    module = sd["module"]
    del module["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    del module["mixins.attention_plus.attn_distribution.0"]
    module["transformer.layers.2.attention.dense.weight"] = torch.zeros(3, 3, dtype=torch.half)
    module["transformer.word_embeddings.weight"] = module["transformer.word_embeddings.weight"][:-2].clone()
    torch.save(sd, file)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert "2 missing: mixins.attention_plus.attn_distribution.0; transformer.layers.1.mlp.dense_4h_to_h.bias" in msg
    assert "1 unexpected: transformer.layers.2.attention.dense.weight" in msg
    assert "1 wrong shape: transformer.word_embeddings.weight: checkpoint (20098, 32), model (20100, 32)" in msg


class _Exploit:
    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_not_executed(sat_dir, tmp_path):
    path, _ = sat_dir
    file = path / "27000" / "mp_rank_00_model_states.pt"
    sd = torch.load(file, weights_only=False)
    _Exploit.marker = tmp_path / "pwned"
    sd["args"] = _Exploit()
    torch.save(sd, file)
    with pytest.raises(CheckpointError, match=r"refused: unpickling it needs .*system"):
        load_model(path)
    assert not _Exploit.marker.exists()


def test_legacy_non_zip_file_loads(tmp_path):
    sd = {"module": {"w": torch.ones(2)}, "np_rng_state": __import__("numpy").random.RandomState(0).get_state()}
    file = tmp_path / "legacy.pt"
    torch.save(sd, file, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(file)
    assert torch.equal(safe_torch_load(file)["module"]["w"], torch.ones(2))


def test_not_a_checkpoint_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        load_model(tmp_path / "empty")


def test_module_key_missing(sat_dir):
    path, _ = sat_dir
    file = path / "27000" / "mp_rank_00_model_states.pt"
    torch.save({"iteration": 1, "state_dict": {}}, file)
    with pytest.raises(CheckpointError, match="no 'module' state dict"):
        load_model(path)


def test_safetensors_round_trip(sat_dir, tmp_path):
    path, _ = sat_dir
    out = convert(path, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    converted = load_model(out, dtype=torch.float16)
    original = load_model(path, dtype=torch.float16)
    for (k, a), (k2, b) in zip(original.state_dict().items(), converted.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert converted.config == original.config
    # a converted directory converts again (e.g. to another dtype), and bad files are reported
    again = convert(out, tmp_path / "fp32", dtype=torch.float32)
    assert load_model(again).transformer.final_layernorm.weight.dtype == torch.float32
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(out)
