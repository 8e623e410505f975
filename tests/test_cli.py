"""The command line and the embedded default model."""

import json

import torch

from cogvideo_engine import default_model_path, load_model
from cogvideo_engine.cli import main


def test_default_model_is_built_once_in_the_sat_layout(engine_home):
    path = default_model_path(1)
    assert path.parent.parent == engine_home and (path / "latest").is_file()
    stamp = (path / "latest").stat().st_mtime_ns
    assert default_model_path(1) == path and (path / "latest").stat().st_mtime_ns == stamp
    model = load_model(path, stage=1)
    assert model.config.geometry.frame_len == 400 and model.config.vocab_size == 150010


def test_score_command_on_the_default_model(engine_home, capsys):
    assert main(["score", "--stage", "stage1-first-frame", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pass"] == "stage1-first-frame" and result["steps"] == 400
    assert len(result["frame_nll"][0]) == 1 and result["mean_nll"] > 0


def test_convert_command_and_errors(engine_home, tmp_path, capsys):
    src = default_model_path(1)
    assert main(["convert", str(src), str(tmp_path / "conv")]) == 0
    converted = load_model(tmp_path / "conv", dtype=torch.float16)
    assert converted.transformer.word_embeddings.weight.dtype == torch.float16
    assert main(["score", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_info_command(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "attention backends on cpu" in out and "super-resolution local attention on cpu" in out


def test_generate_needs_a_prompt(capsys):
    assert main(["generate"]) == 2
    assert "give a prompt or --prompt-file" in capsys.readouterr().err
    args = __import__("cogvideo_engine.cli", fromlist=["build_parser"]).build_parser().parse_args(["profile", "x"])
    assert args.profile == "output/trace.json" and args.prompt == "x"


def test_generate_super_resolution_flags():
    from cogvideo_engine.cli import build_parser

    args = build_parser().parse_args(["generate", "x"])
    assert args.super_resolution is None and args.dsr is None and args.decoder_dtype is None  # defaults: by assets
    args = build_parser().parse_args(["generate", "x", "--no-super-resolution", "--decoder-dtype", "bf16",
                                      "--dsr", "/m/cogview2-dsr", "--sr-max-batch", "4"])
    assert (args.super_resolution, args.decoder_dtype, args.dsr, args.sr_max_batch) == \
        (False, "bf16", "/m/cogview2-dsr", 4)


def test_missing_dsr_checkpoint_is_a_clear_error(engine_home, capsys):
    assert main(["generate", "x", "--dsr", str(engine_home / "nowhere"), "--quiet"]) == 2
    assert "super-resolution checkpoint" in capsys.readouterr().err
