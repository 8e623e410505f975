"""The fused Triton kernel against the reference twin, over the shared rule cases (interpreter on CPU).

bf16 runs here too: under the interpreter the kernel takes its fp32-emulated path (``triton_common.upcast_bf16``:
both products in fp32 on the bf16 operands, ``p`` and the output rounded to the nearest bf16), whose numerics
are those of the tensor-core path the gpu-marked tests run.
"""

import functools

import pytest
import torch

from cogvideo_engine.kernels import triton_common
from cogvideo_engine.kernels.layout import AttentionRule
from cogvideo_engine.kernels.reference import rule_additive
from cogvideo_engine.kernels.rules import FrameGeometry, Pass, StreamLayout

from helpers.kernel_cases import (DEVICE, RULE_CASES, RULE_IDS, all_positions, assert_matches_reference, check,
                                  decode_queries, gpu, make_cache)
from helpers.models import SMALL_GEOMETRY

triton_attention = pytest.importorskip("cogvideo_engine.kernels.triton_attention", reason="triton not installed")
if triton_attention.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)

kernel = triton_attention.window_attention_triton
decode = functools.partial(kernel, path="decode")


@pytest.mark.parametrize("pass_,channel,parity", RULE_CASES, ids=RULE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_every_position_of_every_rule(pass_, channel, parity, dtype):
    """Prefill-style: all positions (text rows, given and target rows, every window edge) of 2 sequences
    with different text lengths and text biases sharing a batch."""
    rule = AttentionRule(pass_, channel, parity, SMALL_GEOMETRY, text_capacity=6)
    check(kernel, rule, all_positions(rule, [6, 3]), [6, 3], [1.4, 0.0], device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("pass_,channel,parity", RULE_CASES, ids=RULE_IDS)
def test_decode_path_at_every_position_of_every_rule(pass_, channel, parity):
    """The split-KV decode path at every position (text, given and target rows, every window edge), forced: one
    program per query, so a short sequence keeps the interpreter's time down (fp32: the path computes in fp32
    whatever the dtype; bf16 and other text lengths below)."""
    rule = AttentionRule(pass_, channel, parity, SMALL_GEOMETRY, text_capacity=5)
    check(decode, rule, all_positions(rule, [3]), [3], [1.4], device=DEVICE, heads=1)


@pytest.mark.parametrize("pass_,channel,parity", RULE_CASES, ids=RULE_IDS)
def test_decode_path_loads_only_visible_rows(pass_, channel, parity):
    """Real geometry, decode queries of the wavefront kind: the K rows the decode path loads are exactly the visible
    (query, key) pairs (the prefill path, for contrast, loads whole tiles some query of the block sees)."""
    rule = AttentionRule(pass_, channel, parity, FrameGeometry(), text_capacity=9)
    q_index, text_len = decode_queries(rule, [9, 5]), [9, 5]
    counts = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    check(functools.partial(decode, counts=counts), rule, q_index, text_len, [1.4, 0.0], device=DEVICE, heads=1)
    visible = sum(int(torch.isfinite(rule_additive(rule, q_index[b], t, 0.0, rule.cache_len)).sum())
                  for b, t in enumerate(text_len))
    loaded, lanes, programs, working = counts.tolist()
    assert loaded == visible and lanes >= loaded and working <= programs
    text_splits, frame_splits = triton_attention.decode_splits(rule)
    assert programs == q_index.numel() * (text_splits + frame_splits * (rule.cache_slots if rule.temporal else 1))
    prefill = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    check(functools.partial(kernel, path="prefill", counts=prefill), rule, q_index, text_len, [1.4, 0.0],
          device=DEVICE, heads=1)
    assert prefill[0] >= visible / q_index.shape[1]  # a row loaded once serves every query of the block


@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_decode_path_head_dims_bf16(d):
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=5)
    check(decode, rule, decode_queries(rule, [5, 2]), [5, 2], [1.4, 0.0], device=DEVICE, d=d, dtype=torch.bfloat16)


def test_path_choice_and_its_errors():
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=5)
    q_index = decode_queries(rule, [5, 2])
    k, v = make_cache(rule, [5, 2], 2, 1, 16, torch.float32, DEVICE)
    q = torch.randn(2, 1, 2, 16, device=DEVICE)
    args = (q, k, v, q_index.to(DEVICE), torch.tensor([5, 2], device=DEVICE), torch.tensor([1.4, 0.0], device=DEVICE))
    by_default, on_decode = (torch.zeros(4, dtype=torch.int64, device=DEVICE) for _ in range(2))
    kernel(*args, rule, counts=by_default)
    kernel(*args, rule, path="decode", counts=on_decode)
    assert torch.equal(by_default, on_decode)  # up to DECODE_MAX_QUERIES queries per sequence: the decode path
    with pytest.raises(ValueError, match="path must be one of 'prefill', 'decode'"):
        kernel(*args, rule, path="split")
    with pytest.raises(ValueError, match="block_m sets the prefill path's query tile"):
        kernel(*args, rule, path="decode", block_m=16)
    with pytest.raises(ValueError, match="counts must be an int64 tensor of 4"):
        kernel(*args, rule, counts=torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("fill", ["ones", "arange"])
@pytest.mark.parametrize("pass_,channel,parity", [(Pass.STAGE2, "temporal", 1), (Pass.STAGE1, "temporal", 0),
                                                  (Pass.STAGE2, "spatial", 0)])
def test_structured_inputs(pass_, channel, parity, fill):
    rule = AttentionRule(pass_, channel, parity, SMALL_GEOMETRY, text_capacity=4)
    check(kernel, rule, all_positions(rule, [4, 2]), [4, 2], [1.4, 1.4], device=DEVICE, fill=fill)


@pytest.mark.parametrize("fill", ["ones", "arange"])
def test_structured_inputs_bf16(fill):
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=4)
    check(kernel, rule, all_positions(rule, [4, 2]), [4, 2], [1.4, 1.4], device=DEVICE, fill=fill,
          dtype=torch.bfloat16)


def test_decode_queries_bf16():
    """Decode queries (different slots, window edges, a padded query) in bf16, with a head dim of 32."""
    rule = AttentionRule(Pass.STAGE2, "temporal", 0, SMALL_GEOMETRY, text_capacity=5)
    out = check(kernel, rule, decode_queries(rule, [5, 2]), [5, 2], [1.4, 0.0], device=DEVICE, d=32,
                dtype=torch.bfloat16)
    assert out[1, :, 1].abs().max() == 0


@pytest.mark.skipif(not triton_common.INTERPRETED, reason="the bf16 work-around is taken under the interpreter only")
def test_interpreter_takes_the_bf16_work_around():
    assert triton_common.upcast_bf16(torch.bfloat16)
    assert not triton_common.upcast_bf16(torch.float16) and not triton_common.upcast_bf16(torch.float32)


@pytest.mark.parametrize("d", [16, 32, pytest.param(64, marks=pytest.mark.compile_heavy),
                               pytest.param(128, marks=pytest.mark.compile_heavy)])
def test_head_dims(d):
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=3)
    check(kernel, rule, all_positions(rule, [3]), [3], [1.4], device=DEVICE, d=d, heads=1)


@pytest.mark.compile_heavy
@pytest.mark.parametrize("parity", [0, 1])
def test_decode_queries_in_different_frames_real_geometry(parity):
    """Decode: one or two queries per sequence in different slots (the wavefront), real 20x20 geometry,
    window 10 / shift 5, queries at window and shifted-region edges; one padded query slot."""
    rule = AttentionRule(Pass.STAGE2, "temporal", parity, FrameGeometry(), text_capacity=9)
    out = check(kernel, rule, decode_queries(rule, [9, 5]), [9, 5], [1.4, 0.0], device=DEVICE, d=64)
    assert out[1, :, 1].abs().max() == 0  # the padded query writes zeros


def test_stage1_decode_real_geometry_fp16():
    rule = AttentionRule(Pass.STAGE1, "temporal", 0, FrameGeometry(), text_capacity=20)
    lay = StreamLayout(Pass.STAGE1, 20, 4)
    q_index = torch.tensor([[lay.index(2, 0), lay.index(4, 399)]])
    check(kernel, rule, q_index, [20], [0.0], device=DEVICE, d=64, dtype=torch.float16)


def test_input_checks(monkeypatch):
    """The shared checks (tests/test_window_checks.py runs them on every backend) and this backend's own."""
    rule = AttentionRule(Pass.STAGE1, "spatial", 0, SMALL_GEOMETRY, text_capacity=4)
    q = torch.randn(1, 2, 3, 16, device=DEVICE)
    k = torch.randn(1, 2, rule.cache_len, 16, device=DEVICE)
    good = dict(q_index=torch.zeros(1, 3, dtype=torch.long, device=DEVICE), text_len=torch.tensor([4]),
                text_bias=torch.tensor([1.4]))
    with pytest.raises(ValueError, match="the rule needs"):
        kernel(q, k[:, :, :-1], k[:, :, :-1], rule=rule, **good)
    with pytest.raises(ValueError, match=r"text_len\[0\] = 5 must lie in 1..text_capacity \(4\)"):
        kernel(q, k, k, rule=rule, **{**good, "text_len": torch.tensor([5])})
    with pytest.raises(ValueError, match="share one floating-point dtype"):
        kernel(q, k.half(), k.half(), rule=rule, **good)
    with pytest.raises(ValueError, match="head dim 24 is not supported by the triton backend"):
        kernel(torch.randn(1, 2, 3, 24, device=DEVICE), torch.randn(1, 2, rule.cache_len, 24, device=DEVICE),
               torch.randn(1, 2, rule.cache_len, 24, device=DEVICE), rule=rule, **good)
    with pytest.raises(ValueError, match=r"takes fp16, bf16 or fp32 inputs, got torch\.float64"):
        kernel(q.double(), k.double(), k.double(), rule=rule, **good)
    monkeypatch.setattr(triton_common, "INTERPRETED", False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kernel(q.cpu(), k.cpu(), k.cpu(), rule=rule, **{**good, "q_index": good["q_index"].cpu()})
    monkeypatch.setattr(triton_common, "triton_status", lambda: (False, "triton is not installed"))
    with pytest.raises(RuntimeError, match="not installed"):
        kernel(q, k, k, rule=rule, **good)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("pass_,channel,parity", RULE_CASES, ids=RULE_IDS)
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, marks=pytest.mark.compile_heavy), torch.float16,
                                   torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_gpu_every_position_real_geometry(pass_, channel, parity, dtype):
    """Real 20x20 geometry, window 10 / shift 5, head dim 64, every position of two sequences with different
    text lengths and biases (prefill), in every dtype including bf16."""
    rule = AttentionRule(pass_, channel, parity, FrameGeometry(), text_capacity=24)
    check(kernel, rule, all_positions(rule, [24, 7]), [24, 7], [1.4, 0.0], device=DEVICE, heads=4, d=64,
          dtype=dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("block_m,block_n", [(16, 32), (64, 64), (128, 64)])
def test_gpu_tile_sizes_and_head_dims(d, block_m, block_n):
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, FrameGeometry(), text_capacity=9)
    q_index = all_positions(rule, [9]).to(DEVICE)
    k, v = make_cache(rule, [9], 1, 2, d, torch.float16, DEVICE)
    q = torch.randn(1, 2, q_index.shape[1], d, device=DEVICE, dtype=torch.float16)
    args = (q, k, v, q_index, torch.tensor([9], device=DEVICE), torch.tensor([1.4], device=DEVICE))
    assert_matches_reference(kernel(*args, rule, block_m=block_m, block_n=block_n), args, rule)


@pytest.mark.skipif(triton_common.triton is None, reason="triton is not installed")
def test_a_launch_over_the_gpus_limits_is_a_clear_error(monkeypatch):
    """Triton refuses a kernel needing more shared memory than the GPU gives a block when it loads it (the first
    launch); the wrapper says so with the numbers and the way out."""
    from triton.runtime.errors import OutOfResources

    class OverLimit:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise OutOfResources(232448 + 1024, 232448, "shared memory")
            return launch

    monkeypatch.setattr(triton_attention, "_window_attention_kernel", OverLimit())
    rule = AttentionRule(*RULE_CASES[0], SMALL_GEOMETRY, text_capacity=6)
    with pytest.raises(ValueError, match=r"needs 233472 of shared memory per block at these tiles, over this GPU's "
                                         r"232448: pass smaller tiles"):
        check(kernel, rule, all_positions(rule, [6, 3]), [6, 3], [1.4, 0.0], device=DEVICE, dtype=torch.float32)


WALK_GEOMETRY = FrameGeometry(grid=8, window=4, shift=2)
"""8x8 frames in 16-key tiles: four tiles per slot, a window's rows two of them, so each slot's range is cut."""


@pytest.mark.parametrize("pass_,channel,parity", RULE_CASES, ids=RULE_IDS)
def test_ranged_walk_at_every_position_of_every_rule(pass_, channel, parity):
    """The ranged prefill walk (each slot's rule-derived tile range, no branch) at every position of every rule,
    against the reference. Where no range wraps around the frame (all but the shifted cyclic windows of stage-2
    given rows) it walks the checked walk's tiles in the same order plus wholly masked ones, which change nothing:
    the same bits. It never walks more key lanes than the checked walk tests."""
    rule = AttentionRule(pass_, channel, parity, WALK_GEOMETRY, text_capacity=6)
    q_index, text_len = all_positions(rule, [6, 3]), [6, 3]
    outs, counts = {}, {}
    for walk in triton_attention.WALKS:
        counts[walk] = torch.zeros(4, dtype=torch.int64, device=DEVICE)
        run = functools.partial(kernel, path="prefill", walk=walk, block_m=16, block_n=16, counts=counts[walk])
        outs[walk] = check(run, rule, q_index, text_len, [1.4, 0.0], device=DEVICE, heads=1)
    if not (rule.windowed and rule.shift):
        assert torch.equal(outs["ranged"], outs["checked"])
    programs = len(text_len) * -(-q_index.shape[1] // 16)
    tested = programs * 16 * (-(-rule.text_capacity // 16) + rule.cache_slots * WALK_GEOMETRY.frame_len // 16)
    assert counts["ranged"][1] <= tested  # key lanes walked


def test_walk_is_checked():
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=5)
    with pytest.raises(ValueError, match="walk must be one of 'checked', 'ranged'"):
        check(functools.partial(kernel, walk="all"), rule, all_positions(rule, [5]), [5], [1.4], device=DEVICE)
    with pytest.raises(ValueError, match="walk sets the prefill path's frame-key walk"):
        check(functools.partial(decode, walk="ranged"), rule, decode_queries(rule, [5, 2]), [5, 2], [1.4, 0.0],
              device=DEVICE)


@pytest.mark.parametrize("path", triton_attention.PATHS)
def test_index_dtypes_give_the_same_bits(path):
    """q_index and text_len in int64 (as the runner passes them) or int32: the kernels narrow them as they load
    them (no conversion kernel per call), with the same result."""
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=5)
    q_index = (decode_queries(rule, [5, 2]) if path == "decode" else all_positions(rule, [5, 2])).to(DEVICE)
    k, v = make_cache(rule, [5, 2], 2, 1, 16, torch.float32, DEVICE)
    q = torch.randn(2, 1, q_index.shape[1], 16, device=DEVICE)
    bias = torch.tensor([1.4, 0.0], device=DEVICE)
    wide = kernel(q, k, v, q_index, torch.tensor([5, 2], device=DEVICE), bias, rule, path=path)
    narrow = kernel(q, k, v, q_index.int(), torch.tensor([5, 2], device=DEVICE, dtype=torch.int32), bias, rule,
                    path=path)
    assert torch.equal(wide, narrow)
