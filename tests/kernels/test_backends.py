"""Backend registry, op registration, and the whole model on the Triton backend (interpreter on CPU)."""

import pytest
import torch

from cogvideo_engine.generation.scoring import stream_input_ids
from cogvideo_engine.info import report
from cogvideo_engine.kernels.layout import AttentionRule
from cogvideo_engine.kernels.registry import backend_status, default_backend, get_backend
from cogvideo_engine.kernels.rules import FrameGeometry, Pass, StreamLayout

from helpers.golden import check_against_golden
from helpers.kernel_cases import assert_matches_reference, fake_and_real_strides, query_layouts
from helpers.models import SMALL_BOI, SMALL_GEOMETRY, small_model
from helpers.numerics import MODEL_FACTOR, assert_fp_close

_device = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernel runs (else the interpreter)
triton_ready = {s.name: s for s in backend_status(_device)}["triton"]
needs_triton = pytest.mark.skipif(not triton_ready.available, reason=f"triton backend: {triton_ready.reason}")
cpu_ready = {s.name: s for s in backend_status("cpu")}["cpu"]
needs_cpu = pytest.mark.skipif(not cpu_ready.available, reason=f"cpu backend: {cpu_ready.reason}")


def test_registry_names_and_reasons(monkeypatch):
    status = {s.name: s for s in backend_status("cpu")}
    assert default_backend("cpu") == ("cpu" if status["cpu"].available else "reference")
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        get_backend("flash")
    with pytest.raises(ValueError, match="'cuda' cannot run on cpu: the cuda kernel runs on cuda tensors"):
        get_backend("cuda", "cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status = {s.name: s for s in backend_status("cpu")}
    assert not status["triton"].available and "TRITON_INTERPRET=1" in status["triton"].reason
    assert "attention backends on cpu" in report()


OPS = [("window_attention_triton", triton_ready, _device), ("window_attention_csrc", cpu_ready, "cpu")]


@pytest.mark.parametrize("op_name,ready,device", OPS)
def test_op_registration_passes_opcheck(op_name, ready, device):
    if not ready.available:
        pytest.skip(f"{ready.name} backend: {ready.reason}")
    torch.library.opcheck(_op(op_name), _op_args(torch.randn(2, 2, 5, 16, device=device)))


def _op(op_name: str):
    import cogvideo_engine.kernels.ops  # noqa: F401  (importing ops registers every op)

    return getattr(torch.ops.cogvideo_engine, op_name).default


def _op_args(q: torch.Tensor) -> tuple:
    """A window op's arguments around queries ``q [2, 2, 5, 16]`` (on q's device): a stage-2 temporal launch, two
    sequences."""
    from cogvideo_engine.kernels.ops import rule_args

    rule = AttentionRule(Pass.STAGE2, "temporal", 1, SMALL_GEOMETRY, text_capacity=3)
    k, v = (torch.randn(2, 2, rule.cache_len, 16, device=q.device) for _ in range(2))
    lay = StreamLayout(Pass.STAGE2, 3, 2, SMALL_GEOMETRY)
    q_index = torch.tensor([[0, lay.index(0, 5), lay.index(2, 15), lay.index(3, 3), lay.index(4, 0)]] * 2,
                           device=q.device)
    return (q, k, v, q_index, torch.tensor([3, 2], device=q.device), torch.tensor([1.4, 0.0], device=q.device),
            *rule_args(rule))


@pytest.mark.parametrize("op_name,ready,device", OPS)
def test_op_fake_returns_the_kernel_strides(op_name, ready, device):
    """What torch.compile plans with (the fake) is what the kernel makes, for queries in any layout."""
    if not ready.available:
        pytest.skip(f"{ready.name} backend: {ready.reason}")
    op = _op(op_name)
    strides = set()
    for q in query_layouts(torch.randn(2, 2, 5, 16, device=device)):
        fake, real = fake_and_real_strides(op, _op_args(q))
        assert fake == real, q.stride()
        strides.add(real)
    assert len(strides) == 2  # like q when its last dimension is unit-stride, else contiguous


def _model_matches_reference(pass_, backend, device="cpu"):
    """Logits of the fp32 model on ``backend`` (on ``device``) against the fp64 reference model on the CPU, bounded
    by the fp32 reference model's own error there (on ``device``): the full teacher-forced forward, then the cached
    step path."""
    model, exact_model = small_model(pass_.model_stage).to(device), small_model(pass_.model_stage, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    layout = StreamLayout(pass_, 4, pass_.max_targets, SMALL_GEOMETRY)
    frame = SMALL_GEOMETRY.frame_len
    ids = stream_input_ids(layout, torch.randint(20000, SMALL_BOI, (2, 4), generator=gen),
                           torch.randint(0, 20000, (2, layout.num_given, frame), generator=gen),
                           torch.randint(0, 20000, (2, layout.num_targets, frame), generator=gen), SMALL_BOI)
    exact = exact_model.forward_full(ids, layout, 1.4)
    on = ids.to(device)
    assert_fp_close(model.forward_full(on, layout, 1.4, backend=backend).cpu(), exact,
                    model.forward_full(on, layout, 1.4, backend="reference").cpu(), what="full forward",
                    factor=MODEL_FACTOR)
    caches = [m.new_cache(layout, 2) for m in (exact_model, model, model)]
    ctx = layout.context_len
    for lo, hi in [(0, ctx), (ctx, ctx + 1), (ctx + 1, ctx + 2)]:
        exact_part, ref, fused = (m.extend(c, x[:, lo:hi], range(lo, hi), 1.4, backend=b).cpu() for m, c, x, b in
                                  zip((exact_model, model, model), caches, (ids, on, on),
                                      ("reference", "reference", backend), strict=True))
        assert_fp_close(fused, exact_part, ref, what=f"extend {lo}..{hi}", factor=MODEL_FACTOR)


@needs_triton
@pytest.mark.parametrize("pass_", list(Pass))
def test_model_on_triton_matches_the_reference(pass_):
    _model_matches_reference(pass_, "triton", _device)


@needs_cpu
@pytest.mark.parametrize("pass_", list(Pass))
def test_model_on_cpu_kernel_matches_the_reference(pass_):
    _model_matches_reference(pass_, "cpu")


@needs_cpu
def test_golden_first_frame_on_the_cpu_kernel(golden_dir):
    """The golden first-frame pass through the C++ kernel: the original's logits, within what fp32 allows."""
    check_against_golden(golden_dir, "stage1_first_frame", backend="cpu")


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_inputs():
    rule = AttentionRule(Pass.STAGE2, "temporal", 1, FrameGeometry(), text_capacity=9)
    lay = StreamLayout(Pass.STAGE2, 9, 2)
    q_index = torch.tensor([[lay.index(3, 215), lay.index(4, 25)]] * 2, device="cuda")
    q = torch.randn(2, 48, 2, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 48, rule.cache_len, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    return rule, (q, k, v, q_index, torch.tensor([9, 9], device="cuda"), torch.tensor([1.4, 0.0], device="cuda"))


@pytest.mark.gpu
@gpu
def test_gpu_triton_op_under_torch_compile():
    from cogvideo_engine.kernels.ops import window_attention_triton_op

    rule, args = _gpu_inputs()
    compiled = torch.compile(lambda *a: window_attention_triton_op(*a, rule) * 2.0, fullgraph=True)
    assert_matches_reference(compiled(*args) / 2.0, args, rule)  # halving is exact


@pytest.mark.gpu
@gpu
def test_gpu_triton_op_in_a_cuda_graph():
    from cogvideo_engine.kernels.ops import window_attention_triton_op

    rule, args = _gpu_inputs()
    expected = window_attention_triton_op(*args, rule)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        window_attention_triton_op(*args, rule)  # warm up (compile) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = window_attention_triton_op(*args, rule)
    args[0].mul_(1.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)  # the replay launches the captured kernel on the same inputs


@needs_cpu
def test_fused_backends_refuse_the_windowed_stage1_rules():
    from cogvideo_engine.kernels.ops import window_attention_csrc_op

    rule = AttentionRule(Pass.STAGE1, "temporal", 1, SMALL_GEOMETRY, text_capacity=3, stage1_windowed=True)
    q = torch.randn(1, 1, 2, 16)
    k = torch.randn(1, 1, rule.cache_len, 16)
    with pytest.raises(NotImplementedError, match="backend='reference'"):
        window_attention_csrc_op(q, k, k, torch.zeros(1, 2, dtype=torch.long), torch.tensor([3]),
                                 torch.tensor([1.4]), rule)
