"""One parametrised list of rule cases and the checking helpers shared by every kernel backend's tests."""

import pytest
import torch

from cogvideo_engine.kernels.layout import AttentionRule
from cogvideo_engine.kernels.reference import window_attention
from cogvideo_engine.kernels.rules import Pass, StreamLayout

from .numerics import assert_fp_close
from .specializations import COUNTING

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
"""Where the kernel tests put their tensors: the GPU where there is one, else the CPU (the interpreter)."""
gpu = pytest.mark.skipif(not (torch.cuda.is_available() or COUNTING), reason="needs a CUDA device")
"""The skip of a GPU-only test (it runs, kernel-less, when the tests count specializations)."""

RULE_CASES = [(p, c, par) for p in Pass for c in ("spatial", "temporal") for par in (0, 1)
              if not (par == 1 and not (p is Pass.STAGE2 and c == "temporal"))]
"""(pass, channel, layer parity): every distinct rule (parity only matters for the stage-2 temporal channel)."""

RULE_IDS = [f"{p.value}-{c}-{par}" for p, c, par in RULE_CASES]


def make_cache(rule, text_len, batch, heads, d, dtype, device, fill="randn", seed=0):
    """K/V ``[B, H, cache_len, d]``; unused text rows are poisoned with 1e4 so reading them would show."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, rule.cache_len, d)
    if fill == "randn":
        k, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    elif fill == "ones":
        k, v = torch.ones(shape), torch.ones(shape)
    else:  # arange: every key and value distinct and ordered
        k = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) % 7 / 7
        v = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) % 11 / 11
    for b, t in enumerate(text_len):
        k[b, :, t:rule.text_capacity] = 1e4
        v[b, :, t:rule.text_capacity] = 1e4
    return k.to(device, dtype), v.to(device, dtype)


def all_positions(rule, text_len):
    """``[B, Q]`` query indices: every stream position of each sequence, padded with -1."""
    lengths = [StreamLayout(rule.pass_, t, rule.pass_.max_targets, rule.geometry).length for t in text_len]
    q_index = torch.full((len(text_len), max(lengths)), -1, dtype=torch.long)
    for b, n in enumerate(lengths):
        q_index[b, :n] = torch.arange(n)
    return q_index


def check(kernel, rule, q_index, text_len, text_bias, *, device, heads=2, d=16, dtype=torch.float32,
          fill="randn", seed=0):
    """Run ``kernel`` and the reference twin on the same inputs and compare; returns the kernel's output.

    Both are measured against the reference in float64 on the same (rounded) inputs: the kernel may err at most
    twice what the reference errs in ``dtype``, plus a few ulps of the output's magnitude (:mod:`numerics`).
    """
    batch, n_q = q_index.shape
    k, v = make_cache(rule, text_len, batch, heads, d, dtype, device, fill, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(batch, heads, n_q, d, generator=gen).to(device, dtype)
    meta = (q_index.to(device), torch.tensor(text_len, device=device), torch.tensor(text_bias, device=device))
    out = kernel(q, k, v, *meta, rule)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_matches_reference(out, (q, k, v, *meta), rule)
    return out


def assert_matches_reference(out, args, rule):
    """``out`` of a window kernel on ``args = (q, k, v, q_index, text_len, text_bias)`` against the reference
    twin in float64 on the same inputs, with the bound of :mod:`numerics` (the reference's own error in
    ``q.dtype`` and a few ulps of the output's magnitude)."""
    q, k, v, *meta = args
    exact = window_attention(q.double(), k.double(), v.double(), *meta, rule)
    assert_fp_close(out, exact, window_attention(q, k, v, *meta, rule), what=f"{rule} {q.dtype}")


def decode_queries(geometry_rule: AttentionRule, text_len):
    """Decode-style queries: one or two per sequence in different slots, at window / shifted-region edges."""
    g = geometry_rule.geometry
    lay = [StreamLayout(geometry_rule.pass_, t, geometry_rule.pass_.max_targets, g) for t in text_len]
    first_target = geometry_rule.pass_.num_given
    last = g.frame_len - 1
    mid = (g.window - 1) * g.grid + (g.window - 1)  # bottom-right cell of the first window
    rows = [[lay[0].index(first_target, mid), lay[0].index(geometry_rule.cache_slots - 1, 0)],
            [lay[1].index(first_target, last), -1]]
    return torch.tensor(rows)


def query_layouts(q: torch.Tensor) -> list[torch.Tensor]:
    """``q [B, H, Q, d]`` contiguous, with its heads and queries swapped in memory (the runner's views of the fused
    projection) and with a non-unit last stride: the same values in three layouts."""
    swapped = q.transpose(1, 2).contiguous().transpose(1, 2)
    strided = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    return [q, swapped, strided]


def fake_and_real_strides(op, args) -> tuple[tuple, tuple]:
    """The output strides of a registered op's fake (under FakeTensorMode, what torch.compile plans with) and of
    the op itself on ``args``."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    return fake.stride(), real.stride()
