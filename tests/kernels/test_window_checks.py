"""Bad window-attention inputs get the same error, naming the constraint, on every backend that runs here.

Every backend calls ``reference.check_window_inputs`` first: the reference, the Triton kernel (under the
interpreter on CPU), the C++ kernel, both as plain functions and as the registered ops the registry hands out.
Limits of one backend (Triton's head dims, the fused kernels' dtypes) are tested in that backend's own file.
"""

import pytest
import torch

from cogvideo_engine.kernels.layout import AttentionRule
from cogvideo_engine.kernels.reference import check_window_inputs, window_attention
from cogvideo_engine.kernels.registry import backend_status, get_backend
from cogvideo_engine.kernels.rules import Pass

from helpers.models import SMALL_GEOMETRY

RULE = AttentionRule(Pass.STAGE1, "spatial", 0, SMALL_GEOMETRY, text_capacity=4)
S = RULE.cache_len
_STATUS = {s.name: s for s in backend_status("cpu")}


def _functions():
    """(id, function, status) of every window-attention entry point that can run on CPU tensors here."""
    from cogvideo_engine.kernels.csrc_ops import window_attention_csrc
    from cogvideo_engine.kernels.triton_attention import window_attention_triton

    plain = [("reference", window_attention, _STATUS["reference"]),
             ("triton", window_attention_triton, _STATUS["triton"]),
             ("cpu", window_attention_csrc, _STATUS["cpu"])]
    ops = [(f"{name}-registry", name, _STATUS[name]) for name in ("reference", "triton", "cpu")]
    return plain + ops


FUNCTIONS = _functions()


def _resolve(fn):
    return get_backend(fn, "cpu") if isinstance(fn, str) else fn


def good_inputs(batch=1):
    gen = torch.Generator().manual_seed(0)
    return dict(q=torch.randn(batch, 2, 3, 16, generator=gen), k=torch.randn(batch, 2, S, 16, generator=gen),
                v=torch.randn(batch, 2, S, 16, generator=gen), q_index=torch.zeros(batch, 3, dtype=torch.long),
                text_len=torch.full((batch,), 4), text_bias=torch.full((batch,), 1.4))


def _with(batch=1, **changes):
    def make():
        args = good_inputs(batch)
        for name, change in changes.items():
            args[name] = change(args[name])
        return args
    return make


CASES = [
    ("q-rank", _with(q=lambda t: t[0]), r"^q must be a 4-D \[B, H, Q, d\] tensor, got shape \(2, 3, 16\)$"),
    ("k-rank", _with(k=lambda t: t[0]), r"^k must be a 4-D \[B, H, S, d\] tensor, got shape \(2, 84, 16\)$"),
    ("v-heads", _with(v=lambda t: t[:, :1]),
     r"^k \(1, 2, 84, 16\) and v \(1, 1, 84, 16\) must both be \[B=1, H=2, S, d=16\] to match q \(1, 2, 3, 16\)$"),
    ("kv-head-dim", _with(k=lambda t: t.repeat(1, 1, 1, 2), v=lambda t: t.repeat(1, 1, 1, 2)),
     r"^k \(1, 2, 84, 32\) and v \(1, 2, 84, 32\) must both be \[B=1, H=2, S, d=16\]"),
    ("short-cache", _with(k=lambda t: t[:, :, :-1], v=lambda t: t[:, :, :-1]),
     (r"^the cache holds 83 rows; the rule needs 84 \(text_capacity 4 \+ frame_len 16 x cache_slots 5 of pass "
      r"'stage1'\)$")),
    ("mixed-dtypes", _with(k=lambda t: t.half(), v=lambda t: t.half()),
     r"^q, k and v must share one floating-point dtype, got torch.float32, torch.float16, torch.float16$"),
    ("integer-qkv", _with(q=lambda t: t.long(), k=lambda t: t.long(), v=lambda t: t.long()),
     r"^q, k and v must share one floating-point dtype, got torch.int64"),
    ("q_index-shape", _with(q_index=lambda t: t[:, :2]), r"^q_index must be \[B=1, Q=3\], got \(1, 2\)$"),
    ("q_index-dtype", _with(q_index=lambda t: t.float()), r"^q_index must be an integer tensor, got torch.float32$"),
    ("text_len-dtype", _with(text_len=lambda t: t.float()), r"^text_len must be an integer tensor, got torch.float32$"),
    ("text_len-shape", _with(text_len=lambda t: t.repeat(2)),
     r"^text_len and text_bias must be \[B=1\] tensors, got \(2,\) and \(1,\)$"),
    ("text_bias-shape", _with(text_bias=lambda t: t[None]),
     r"^text_len and text_bias must be \[B=1\] tensors, got \(1,\) and \(1, 1\)$"),
    ("text-too-long", _with(text_len=lambda t: t + 1), r"^text_len\[0\] = 5 must lie in 1..text_capacity \(4\)$"),
    ("text-empty", _with(text_len=lambda t: t * 0), r"^text_len\[0\] = 0 must lie in 1..text_capacity \(4\)$"),
    ("second-sequence", _with(batch=2, text_len=lambda t: torch.tensor([4, 9])),
     r"^text_len\[1\] = 9 must lie in 1..text_capacity \(4\)$"),
]
"""(id, inputs, the message every backend raises)."""

DEVICE_CASES = [
    ("k-device", _with(k=lambda t: t.to("meta")), r"^k is on meta, q on cpu: k, v and q_index must be on q's device$"),
    ("q_index-device", _with(q_index=lambda t: t.to("meta")), r"^q_index is on meta, q on cpu"),
    ("text_bias-device", _with(text_bias=lambda t: t.to("meta")),
     r"^text_bias is on meta, q on cpu: it must be on q's device or the host$"),
]
"""Inputs on another device (meta tensors stand in for a second device on a CPU-only machine); the plain functions
only, since the dispatcher of a registered op routes a call with meta tensors to the op's fake implementation."""


def _require(status):
    if not status.available:
        pytest.skip(f"{status.name} backend: {status.reason}")


def _message(fn, args) -> str:
    with pytest.raises(ValueError) as info:
        fn(**args, rule=RULE)
    return str(info.value)


@pytest.mark.parametrize("case,make,pattern", CASES, ids=[c[0] for c in CASES])
def test_every_backend_raises_the_same_error(case, make, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_window_inputs(**make(), rule=RULE)
    messages = {}
    for name, fn, status in FUNCTIONS:
        if status.available:
            messages[name] = _message(_resolve(fn), make())
    assert {"reference", "reference-registry"} <= set(messages)
    expected = messages["reference"]
    assert all(m == expected for m in messages.values()), messages


@pytest.mark.parametrize("case,make,pattern", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
@pytest.mark.parametrize("name,fn,status", [f for f in FUNCTIONS if not isinstance(f[1], str)],
                         ids=[f[0] for f in FUNCTIONS if not isinstance(f[1], str)])
def test_inputs_on_another_device(case, make, pattern, name, fn, status):
    _require(status)
    with pytest.raises(ValueError, match=pattern):
        fn(**make(), rule=RULE)


@pytest.mark.parametrize("name,fn,status", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_good_inputs_pass_the_checks(name, fn, status):
    """The same inputs with text on the host, and a batch of two: every backend runs them."""
    _require(status)
    args = good_inputs(batch=2)
    out = _resolve(fn)(**args, rule=RULE)
    assert out.shape == args["q"].shape and out.dtype == args["q"].dtype


def test_the_value_check_is_skipped_during_cuda_graph_capture(monkeypatch):
    """A capture cannot read text lengths from the device: the range check is skipped, the others are not."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    args = good_inputs()
    check_window_inputs(**{**args, "text_len": torch.tensor([9])}, rule=RULE)
    with pytest.raises(ValueError, match="q_index must be"):
        check_window_inputs(**{**args, "q_index": args["q_index"][:, :1]}, rule=RULE)
