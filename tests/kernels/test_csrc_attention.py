"""The csrc kernels (C++ CPU; CUDA on a GPU) against the reference twin, over the shared rule cases."""

import pytest
import torch

from cogvideo_engine.kernels.csrc_ops import csrc_status, window_attention_csrc
from cogvideo_engine.kernels.layout import AttentionRule
from cogvideo_engine.kernels.rules import FrameGeometry, Pass

from helpers.kernel_cases import RULE_CASES, RULE_IDS, all_positions, assert_matches_reference, check, decode_queries
from helpers.models import SMALL_GEOMETRY

cpu_ok, cpu_why = csrc_status("cpu")
pytestmark = pytest.mark.skipif(not cpu_ok, reason=f"cpu backend: {cpu_why}")
cuda_ok, cuda_why = csrc_status("cuda")
needs_cuda = pytest.mark.skipif(not cuda_ok, reason=f"cuda backend: {cuda_why}")


@pytest.mark.parametrize("pass_,channel,parity", RULE_CASES, ids=RULE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_every_position_of_every_rule(pass_, channel, parity, dtype):
    rule = AttentionRule(pass_, channel, parity, SMALL_GEOMETRY, text_capacity=6)
    check(window_attention_csrc, rule, all_positions(rule, [6, 3]), [6, 3], [1.4, 0.0], device="cpu", dtype=dtype)


@pytest.mark.parametrize("pass_,channel,parity", RULE_CASES, ids=RULE_IDS)
def test_cpu_every_position_real_geometry(pass_, channel, parity):
    """Real 20x20 geometry (window 10, shift 5), d = 64: large group tiles, causal and bidirectional."""
    rule = AttentionRule(pass_, channel, parity, FrameGeometry(), text_capacity=20)
    check(window_attention_csrc, rule, all_positions(rule, [20, 7]), [20, 7], [1.4, 0.0], device="cpu", d=64,
          heads=2)


@pytest.mark.parametrize("fill", ["ones", "arange"])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_cpu_structured_inputs_and_head_dims(fill, d):
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=4)
    check(window_attention_csrc, rule, all_positions(rule, [4, 2]), [4, 2], [1.4, 1.4], device="cpu", d=d,
          fill=fill)


@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_decode_real_geometry(parity, dtype):
    rule = AttentionRule(Pass.STAGE2, "temporal", parity, FrameGeometry(), text_capacity=9)
    out = check(window_attention_csrc, rule, decode_queries(rule, [9, 5]), [9, 5], [1.4, 0.0], device="cpu",
                d=64, dtype=dtype)
    assert out[1, :, 1].abs().max() == 0


def test_cpu_strided_views():
    """K/V as views of a bigger [layers, B, H, S, d] buffer and a transposed q: strides are honoured."""
    rule = AttentionRule(Pass.STAGE1, "temporal", 0, SMALL_GEOMETRY, text_capacity=3)
    q_index = all_positions(rule, [3])
    buf = torch.randn(3, 1, 2, rule.cache_len, 16)
    q = torch.randn(1, q_index.shape[1], 2, 16).transpose(1, 2)
    meta = (q_index, torch.tensor([3]), torch.tensor([1.4]))
    assert_matches_reference(window_attention_csrc(q, buf[1], buf[2], *meta, rule), (q, buf[1], buf[2], *meta), rule)


def test_cpu_errors_name_the_constraint():
    rule = AttentionRule(Pass.STAGE1, "spatial", 0, SMALL_GEOMETRY, text_capacity=4)
    q = torch.randn(1, 2, 3, 16)
    k = torch.randn(1, 2, rule.cache_len, 16)
    meta = dict(q_index=torch.zeros(1, 3, dtype=torch.long), text_len=torch.tensor([4]),
                text_bias=torch.tensor([1.4]))
    with pytest.raises(ValueError, match="the rule needs"):
        window_attention_csrc(q, k[:, :, :-1], k[:, :, :-1], rule=rule, **meta)
    with pytest.raises(ValueError, match="head dim 24"):
        window_attention_csrc(torch.randn(1, 2, 3, 24), torch.randn(1, 2, rule.cache_len, 24),
                              torch.randn(1, 2, rule.cache_len, 24), rule=rule, **meta)
    with pytest.raises(ValueError, match=r"text_len\[0\] = 5"):
        window_attention_csrc(q, k, k, rule=rule, **{**meta, "text_len": torch.tensor([5])})
    with pytest.raises(ValueError, match="share one floating-point dtype"):
        window_attention_csrc(q, k.half(), k.half(), rule=rule, **meta)
    with pytest.raises(ValueError, match="float64 is not supported"):
        window_attention_csrc(q.double(), k.double(), k.double(), rule=rule, **meta)
    with pytest.raises(ValueError, match="q_index must be"):
        window_attention_csrc(q, k, k, rule=rule, **{**meta, "q_index": torch.zeros(1, 2, dtype=torch.long)})


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("pass_,channel,parity", RULE_CASES, ids=RULE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_every_position_real_geometry(pass_, channel, parity, dtype):
    rule = AttentionRule(pass_, channel, parity, FrameGeometry(), text_capacity=24)
    check(window_attention_csrc, rule, all_positions(rule, [24, 7]), [24, 7], [1.4, 0.0], device="cuda", heads=4,
          d=64, dtype=dtype)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_cuda_decode_and_head_dims(d):
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, FrameGeometry(), text_capacity=9)
    check(window_attention_csrc, rule, decode_queries(rule, [9, 5]), [9, 5], [1.4, 0.0], device="cuda", d=d,
          dtype=torch.bfloat16)


@pytest.mark.gpu
@needs_cuda
def test_cuda_small_geometry_all_rules_fp32():
    for pass_, channel, parity in RULE_CASES:
        rule = AttentionRule(pass_, channel, parity, SMALL_GEOMETRY, text_capacity=6)
        check(window_attention_csrc, rule, all_positions(rule, [6, 3]), [6, 3], [1.4, 0.0], device="cuda")
