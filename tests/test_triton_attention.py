"""The fused Triton kernel against the reference twin, over the rule cases (interpreter on CPU)."""

import pytest
import torch

from cogvideo_engine.kernels.layout import AttentionRule
from cogvideo_engine.kernels.reference import window_attention
from cogvideo_engine.kernels.rules import FrameGeometry, Pass, StreamLayout

from conftest import SMALL_GEOMETRY

triton_attention = pytest.importorskip("cogvideo_engine.kernels.triton_attention", reason="triton not installed")
if triton_attention.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
CASES = [(p, c, par) for p in Pass for c in ("spatial", "temporal") for par in (0, 1)
         if not (par == 1 and not (p is Pass.STAGE2 and c == "temporal"))]


def make_cache(rule, text_len, batch, heads, d, dtype, fill="randn", seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, rule.cache_len, d)
    if fill == "randn":
        k, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    elif fill == "ones":
        k, v = torch.ones(shape), torch.ones(shape)
    else:  # arange: every key and value distinct and ordered
        k = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) % 7 / 7
        v = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) % 11 / 11
    for b, t in enumerate(text_len):  # poison the unused text rows: reading them would show
        k[b, :, t:rule.text_capacity] = 1e4
        v[b, :, t:rule.text_capacity] = 1e4
    return k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def all_positions(rule, text_len):
    lengths = [StreamLayout(rule.pass_, t, rule.pass_.max_targets, rule.geometry).length for t in text_len]
    q_index = torch.full((len(text_len), max(lengths)), -1, dtype=torch.long)
    for b, n in enumerate(lengths):
        q_index[b, :n] = torch.arange(n)
    return q_index


def check(rule, q_index, text_len, text_bias, *, heads=2, d=16, dtype=torch.float32, fill="randn", seed=0):
    batch, n_q = q_index.shape
    k, v = make_cache(rule, text_len, batch, heads, d, dtype, fill, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(batch, heads, n_q, d, generator=gen).to(DEVICE, dtype)
    args = (q, k, v, q_index.to(DEVICE), torch.tensor(text_len, device=DEVICE),
            torch.tensor(text_bias, device=DEVICE))
    out = triton_attention.window_attention_triton(*args, rule)
    ref = window_attention(*args, rule)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])
    return out


@pytest.mark.parametrize("pass_,channel,parity", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_position_of_every_rule(pass_, channel, parity, dtype):
    """Prefill-style: all positions (text rows, given and target rows, every window edge) of 2 sequences
    with different text lengths and text biases sharing a batch."""
    rule = AttentionRule(pass_, channel, parity, SMALL_GEOMETRY, text_capacity=6)
    text_len = [6, 3]
    check(rule, all_positions(rule, text_len), text_len, [1.4, 0.0], dtype=dtype)


@pytest.mark.parametrize("fill", ["ones", "arange"])
@pytest.mark.parametrize("pass_,channel,parity", [(Pass.STAGE2, "temporal", 1), (Pass.STAGE1, "temporal", 0),
                                                  (Pass.STAGE2, "spatial", 0)])
def test_structured_inputs(pass_, channel, parity, fill):
    rule = AttentionRule(pass_, channel, parity, SMALL_GEOMETRY, text_capacity=4)
    check(rule, all_positions(rule, [4, 2]), [4, 2], [1.4, 1.4], fill=fill)


@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_head_dims(d):
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=3)
    check(rule, all_positions(rule, [3]), [3], [1.4], d=d, heads=1)


@pytest.mark.parametrize("parity", [0, 1])
def test_decode_queries_in_different_frames_real_geometry(parity):
    """Decode: one or two queries per sequence in different slots (the wavefront), real 20x20 geometry,
    window 10 / shift 5, queries at window and shifted-region edges; one padded query slot."""
    rule = AttentionRule(Pass.STAGE2, "temporal", parity, FrameGeometry(), text_capacity=9)
    text_len = [9, 5]
    lay = [StreamLayout(Pass.STAGE2, t, 2) for t in text_len]
    q_index = torch.tensor([[lay[0].index(3, 20 * 9 + 9), lay[0].index(4, 0)],
                            [lay[1].index(3, 399), -1]])
    out = check(rule, q_index, text_len, [1.4, 0.0], heads=2, d=64)
    assert out[1, :, 1].abs().max() == 0  # the padded query writes zeros


def test_stage1_decode_real_geometry_fp16():
    rule = AttentionRule(Pass.STAGE1, "temporal", 0, FrameGeometry(), text_capacity=20)
    lay = StreamLayout(Pass.STAGE1, 20, 4)
    q_index = torch.tensor([[lay.index(2, 0), lay.index(4, 399)]])
    check(rule, q_index, [20], [0.0], d=64, dtype=torch.float16)


def test_input_checks():
    rule = AttentionRule(Pass.STAGE1, "spatial", 0, SMALL_GEOMETRY, text_capacity=4)
    q = torch.randn(1, 2, 3, 16)
    k = torch.randn(1, 2, rule.cache_len, 16)
    good = dict(q_index=torch.zeros(1, 3, dtype=torch.long), text_len=torch.tensor([4]),
                text_bias=torch.tensor([1.4]))
    f = triton_attention.window_attention_triton
    with pytest.raises(ValueError, match="needs"):
        f(q, k[:, :, :-1], k[:, :, :-1], rule=rule, **good)
    with pytest.raises(ValueError, match="head dim 24"):
        f(torch.randn(1, 2, 3, 24), torch.randn(1, 2, rule.cache_len, 24), torch.randn(1, 2, rule.cache_len, 24),
          rule=rule, **good)
    with pytest.raises(ValueError, match="text lengths"):
        f(q, k, k, rule=rule, **{**good, "text_len": torch.tensor([5])})
    with pytest.raises(ValueError, match="share one of"):
        f(q, k.half(), k.half(), rule=rule, **good)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("pass_,channel,parity", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_every_position_real_geometry(pass_, channel, parity, dtype):
    """Real 20x20 geometry, window 10 / shift 5, head dim 64, every position of two sequences with different
    text lengths and biases (prefill), in every dtype including bf16."""
    rule = AttentionRule(pass_, channel, parity, FrameGeometry(), text_capacity=24)
    check(rule, all_positions(rule, [24, 7]), [24, 7], [1.4, 0.0], heads=4, d=64, dtype=dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("block_m,block_n", [(16, 32), (64, 64), (128, 64)])
def test_gpu_tile_sizes_and_head_dims(d, block_m, block_n):
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, FrameGeometry(), text_capacity=9)
    q_index = all_positions(rule, [9])
    k, v = make_cache(rule, [9], 1, 2, d, torch.float16)
    q = torch.randn(1, 2, q_index.shape[1], d, device=DEVICE, dtype=torch.float16)
    args = (q, k, v, q_index.to(DEVICE), torch.tensor([9], device=DEVICE), torch.tensor([1.4], device=DEVICE))
    out = triton_attention.window_attention_triton(*args, rule, block_m=block_m, block_n=block_n)
    torch.testing.assert_close(out.float(), window_attention(*args, rule).float(), **TOL[torch.float16])
