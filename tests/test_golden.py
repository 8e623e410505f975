"""The engine against the original CogVideo code: golden logits of both stage-1 passes (fp32).

Run as a script (``python tests/test_golden.py``) to print the max errors per pass.
"""

import functools

import numpy as np
import pytest
import torch

import cogvideo_engine
from cogvideo_engine.kernels.rules import StreamLayout
from cogvideo_engine.scoring import stream_input_ids

PASSES = {"stage1_first_frame": "stage1-first-frame", "stage1_frames_lt1.4": "stage1"}
ATOL = 1e-3


@functools.lru_cache(maxsize=None)
def _model(golden_dir):
    return cogvideo_engine.load_model(golden_dir / "cogvideo-stage1", dtype=torch.float32)


def golden_inputs(z, num_given):
    """The teacher-forced API's arguments, mapped from a golden file as its README describes."""
    text_len = int(z["text_len"])
    seq = torch.from_numpy(z["seq"])
    batch = seq.shape[0]
    given = [seq[:, text_len + 1 + 400 * f: text_len + 1 + 400 * (f + 1)] for f in range(num_given)]
    given = torch.stack(given, 1) if given else None
    targets = torch.from_numpy(z["teacher_tokens"]).reshape(batch, -1, 400)
    return seq[:, :text_len], given, targets


@functools.lru_cache(maxsize=None)
def _scored(golden_dir, name):
    z = dict(np.load(golden_dir / f"{name}.npz"))
    pass_ = PASSES[name]
    text, given, targets = golden_inputs(z, 0 if pass_ == "stage1-first-frame" else 1)
    out = cogvideo_engine.teacher_forced_logits(_model(golden_dir), pass_, text, given, targets,
                                                text_bias=float(z["log_text_attention_weights"]),
                                                boi_id=int(z["boi_id"]))
    return z, out


def errors(golden_dir, name) -> dict[str, float]:
    z, out = _scored(golden_dir, name)
    sub = torch.from_numpy(z["subset"])
    steps = out.logits.transpose(0, 1)  # golden step arrays are [T, B, ...]
    t = torch.from_numpy
    return {
        "prefill_sub": (out.prefill_logits[..., sub] - t(z["prefill_sub"])).abs().max().item(),
        "prefill_lse": (out.prefill_logits.logsumexp(-1) - t(z["prefill_lse"])).abs().max().item(),
        "prefill_logits_last": (out.prefill_logits[:, -1] - t(z["prefill_logits_last"])).abs().max().item(),
        "step_sub": (steps[..., sub] - t(z["step_sub"])).abs().max().item(),
        "step_lse": (steps.logsumexp(-1) - t(z["step_lse"])).abs().max().item(),
        "full_logits": (steps[t(z["full_steps"]), 0] - t(z["full_logits"])).abs().max().item(),
        "step_argmax_agreement": (steps.argmax(-1) == t(z["step_argmax"]).long()).float().mean().item(),
        "prefill_argmax_agreement": (out.prefill_logits.argmax(-1) == t(z["prefill_argmax"]).long())
        .float().mean().item(),
    }


@pytest.mark.golden
@pytest.mark.parametrize("name", list(PASSES))
def test_golden_logits(golden_dir, name):
    err = errors(golden_dir, name)
    for key, value in err.items():
        if key.endswith("agreement"):
            assert value >= 0.999, (key, value)
        else:
            assert value <= ATOL, (key, value)


@pytest.mark.golden
@pytest.mark.parametrize("name", list(PASSES))
def test_golden_feeding_matches_the_reference(golden_dir, name):
    """Same tokens at the same positions, step by step, as the original loop fed."""
    z, _ = _scored(golden_dir, name)
    pass_ = PASSES[name]
    text, given, targets = golden_inputs(z, 0 if pass_ == "stage1-first-frame" else 1)
    layout = StreamLayout(pass_, int(z["text_len"]), targets.shape[1])
    ids = stream_input_ids(layout, text, given if given is not None else
                           targets[:, :0], targets, int(z["boi_id"]))
    ctx = layout.context_len
    assert torch.equal(ids[:, :ctx], torch.from_numpy(z["prefill_input_ids"]))
    assert torch.equal(layout.position_id(torch.arange(ctx)), torch.from_numpy(z["prefill_position_ids"][0]))
    steps = torch.from_numpy(z["step_counter"])
    assert torch.equal(steps, torch.arange(ctx, layout.length))
    assert torch.equal(ids[:, ctx:].T, torch.from_numpy(z["step_input_ids"]))
    assert torch.equal(layout.position_id(steps), torch.from_numpy(z["step_position_ids"]))


@pytest.mark.golden
def test_golden_first_frame_dense_forward(golden_dir):
    """The reference's one-call teacher-forced forward of the first frame equals our dense full forward."""
    z = dict(np.load(golden_dir / "stage1_first_frame.npz"))
    ids = torch.from_numpy(z["nar_input_ids"])
    layout = StreamLayout("stage1-first-frame", int(z["text_len"]), 1)
    assert ids.shape[1] == layout.length
    logits = _model(golden_dir).forward_full(ids, layout, float(z["log_text_attention_weights"]))
    frame = logits[:, layout.text_len:]
    sub = torch.from_numpy(z["subset"])
    assert (frame[..., sub] - torch.from_numpy(z["nar_sub"])).abs().max() <= ATOL
    assert (frame.logsumexp(-1) - torch.from_numpy(z["nar_lse"])).abs().max() <= ATOL


if __name__ == "__main__":
    from conftest import GOLDEN_DIR

    for name in PASSES:
        print(name, {k: f"{v:.2e}" if not k.endswith("agreement") else f"{v:.4f}"
                     for k, v in errors(GOLDEN_DIR, name).items()})
