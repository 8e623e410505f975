"""The original code's golden logits (``../shared/golden`` or ``$COGVIDEO_GOLDEN_DIR``) and the check of the engine
against them; used by the golden tests and by the backend tests that run a golden pass on a fused kernel."""

import functools
import os
from pathlib import Path

import numpy as np
import torch

import cogvideo_engine
from cogvideo_engine.generation.scoring import stream_input_ids
from cogvideo_engine.kernels.rules import StreamLayout

from .numerics import MODEL_FACTOR, assert_fp_close, max_error

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(os.environ.get("COGVIDEO_GOLDEN_DIR", REPO.parent / "shared" / "golden"))

PASSES = {"stage1_first_frame": "stage1-first-frame", "stage1_frames_lt1.4": "stage1"}
STATISTICS = ("prefill_sub", "prefill_lse", "prefill_logits_last", "step_sub", "step_lse", "full_logits")


@functools.cache
def golden_model(golden_dir, dtype=torch.float32):
    """The golden folder's stage-1 checkpoint (loaded once per dtype)."""
    return cogvideo_engine.load_model(golden_dir / "cogvideo-stage1", dtype=dtype)


def golden_inputs(z, num_given):
    """The teacher-forced API's arguments, mapped from a golden file as its README describes."""
    text_len = int(z["text_len"])
    seq = torch.from_numpy(z["seq"])
    batch = seq.shape[0]
    given = [seq[:, text_len + 1 + 400 * f: text_len + 1 + 400 * (f + 1)] for f in range(num_given)]
    given = torch.stack(given, 1) if given else None
    targets = torch.from_numpy(z["teacher_tokens"]).reshape(batch, -1, 400)
    return seq[:, :text_len], given, targets


def golden_statistics(z, prefill: torch.Tensor, steps: torch.Tensor) -> dict[str, torch.Tensor]:
    """The golden file's statistics of prefill logits ``[B, ctx, V]`` and step logits ``[B, T, V]``."""
    sub = torch.from_numpy(z["subset"])
    steps = steps.transpose(0, 1)  # golden step arrays are [T, B, ...]
    return {"prefill_sub": prefill[..., sub], "prefill_lse": prefill.logsumexp(-1),
            "prefill_logits_last": prefill[:, -1], "step_sub": steps[..., sub], "step_lse": steps.logsumexp(-1),
            "full_logits": steps[torch.from_numpy(z["full_steps"]), 0]}


@functools.cache
def scored(golden_dir, name, backend="reference"):
    """(golden file, our fp32 statistics through the step path, the fp64 model's statistics, our fp32 logits)."""
    z = dict(np.load(golden_dir / f"{name}.npz"))
    pass_ = PASSES[name]
    text, given, targets = golden_inputs(z, 0 if pass_ == "stage1-first-frame" else 1)
    bias, boi = float(z["log_text_attention_weights"]), int(z["boi_id"])
    out = cogvideo_engine.teacher_forced_logits(golden_model(golden_dir), pass_, text, given, targets,
                                                text_bias=bias, boi_id=boi, backend=backend)
    layout = StreamLayout(pass_, text.shape[1], targets.shape[1])
    given = given if given is not None else targets[:, :0]
    ids = stream_input_ids(layout, text, given, targets, boi)
    exact = golden_model(golden_dir, torch.float64).forward_full(ids, layout, bias)
    ctx = layout.context_len
    return (z, golden_statistics(z, out.prefill_logits, out.logits),
            golden_statistics(z, exact[:, :ctx], exact[:, ctx:]), out)


def check_against_golden(golden_dir, name, backend="reference"):
    """The original code (golden, fp32) and the engine (fp32, on ``backend``) err alike against the engine's
    fp64 model: each within twice the other's error (plus a few ulps of the logits' magnitude). That bounds
    our fp32 result, and says our fp64 model computes the original's function."""
    z, ours, exact, _ = scored(golden_dir, name, backend)
    for key in STATISTICS:
        golden = torch.from_numpy(z[key])
        assert_fp_close(golden, exact[key], ours[key], what=f"{name} {key}: the original", factor=MODEL_FACTOR)
        assert_fp_close(ours[key], exact[key], golden, factor=MODEL_FACTOR,
                        what=f"{name} {key}: the engine ({backend})")


def errors(golden_dir, name, backend="reference") -> dict[str, float]:
    """Max |ours - golden| per statistic, and the argmax agreement (``python -m helpers.golden`` from ``tests/``
    prints them)."""
    z, ours, _, out = scored(golden_dir, name, backend)
    err = {key: max_error(ours[key], torch.from_numpy(z[key])) for key in STATISTICS}
    t = torch.from_numpy
    err["step_argmax_agreement"] = (out.logits.transpose(0, 1).argmax(-1) == t(z["step_argmax"]).long()) \
        .float().mean().item()
    err["prefill_argmax_agreement"] = (out.prefill_logits.argmax(-1) == t(z["prefill_argmax"]).long()) \
        .float().mean().item()
    return err


if __name__ == "__main__":
    for name in PASSES:
        print(name, {k: f"{v:.2e}" if not k.endswith("agreement") else f"{v:.4f}"
                     for k, v in errors(GOLDEN_DIR, name).items()})
