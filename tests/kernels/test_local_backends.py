"""Local-attention backends by name, their registered ops, and the DSR model on each backend."""

import pytest
import torch

from cogvideo_engine.kernels.local_rules import LocalGeometry
from cogvideo_engine.kernels.registry import get_local_backend, local_backend_status

from helpers.kernel_cases import fake_and_real_strides, query_layouts
from helpers.local_cases import make_inputs
from helpers.models import SMALL_BOI, SMALL_LOCAL, small_dsr
from helpers.numerics import MODEL_FACTOR, assert_fp_close, float64_copy

_device = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernel runs (else the interpreter)
_status = {s.name: s for s in local_backend_status(_device)}
_cpu = {s.name: s for s in local_backend_status("cpu")}["cpu"]


def _require(status):
    if not status.available:
        pytest.skip(f"{status.name} backend: {status.reason}")


def test_names_and_reasons():
    from cogvideo_engine.kernels.local_reference import local_attention

    assert get_local_backend("reference") is local_attention
    best = get_local_backend(None, "cpu")
    assert best is local_attention or best.__name__ == "local_attention_csrc_op"
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        get_local_backend("flash")
    with pytest.raises(ValueError, match="cannot run the local attention on cpu"):
        get_local_backend("cuda", "cpu")


@pytest.mark.parametrize("op_name,status", [("local_attention_triton", _status["triton"]),
                                            ("local_attention_csrc", _cpu)])
def test_op_registration_passes_opcheck(op_name, status):
    _require(status)
    args = _op_args(op_name)  # (registers the ops)
    torch.library.opcheck(getattr(torch.ops.cogvideo_engine, op_name).default, args)


def _op_args(op_name: str, heads: int = 1) -> tuple:
    """A local op's arguments for a small geometry, on the op's device."""
    import cogvideo_engine.kernels.ops  # noqa: F401  (registers the ops)

    g = LocalGeometry(grid=6, low_grid=2)
    device = "cuda" if op_name.endswith("triton") and torch.cuda.is_available() else "cpu"
    return (*make_inputs(g, batch=1, heads=heads, device=device), g.grid, g.low_grid, g.window_rows, g.window_cols,
            g.low_window)


@pytest.mark.parametrize("op_name,status", [("local_attention_triton", _status["triton"]),
                                            ("local_attention_csrc", _cpu)])
def test_op_fake_returns_the_kernel_strides(op_name, status):
    _require(status)
    q, *rest = _op_args(op_name, heads=2)
    op = getattr(torch.ops.cogvideo_engine, op_name).default
    for q_layout in query_layouts(q):
        fake, real = fake_and_real_strides(op, (q_layout, *rest))
        assert fake == real, q_layout.stride()


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_dsr_model_on_each_backend_matches_the_reference(backend):
    _require(_status["triton"] if backend == "triton" else _cpu)
    model = small_dsr(seed=7)
    low = torch.randint(0, 20000, (1, SMALL_LOCAL.num_low), generator=torch.Generator().manual_seed(4))
    exact = float64_copy(model).hidden_states([[3, 1, 4]], low, SMALL_BOI, backend="reference")
    model.to(_device if backend == "triton" else "cpu")  # (the fp32 model where the backend runs)
    ref = model.hidden_states([[3, 1, 4]], low, SMALL_BOI, backend="reference").cpu()
    assert_fp_close(model.hidden_states([[3, 1, 4]], low, SMALL_BOI, backend=backend).cpu(), exact, ref,
                    factor=MODEL_FACTOR)
