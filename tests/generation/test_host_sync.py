"""The runner's forward has no host synchronisation: with every operation that reads a device tensor back to the
host made to raise (``.item()``, ``.tolist()``, ``bool()`` / ``int()`` / ``float()`` of a tensor, ``nonzero``,
``.cpu()``, ``.numpy()``, data-dependent shapes), a prefill forward and decode steps of the tiny default model run
through -- eagerly, not only under CUDA-graph capture. On a GPU each of these would stall the stream (and break a
graph capture); on this CPU the same code path shows them."""

import contextlib

import pytest
import torch

from cogvideo_engine.generation.runner import ModelRunner, layouts_for
from cogvideo_engine.io.checkpoints import load_model
from cogvideo_engine.io.default_assets import default_model_path
from cogvideo_engine.kernels.reference import check_window_inputs, text_lengths_checked
from cogvideo_engine.kernels.registry import backend_status
from cogvideo_engine.kernels.rules import Pass

SYNCS = {torch.Tensor: ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy",
                        "nonzero", "unique", "masked_select", "argwhere", "__repr__"),
         torch: ("nonzero", "unique", "masked_select", "argwhere")}
"""What reads a device tensor back to the host (a value, or a shape that depends on values)."""


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_sync():
    """Every operation of :data:`SYNCS` raises :class:`HostSync` inside (patched on ``torch.Tensor`` and ``torch``
    themselves, so code inside custom ops and C++-dispatched Python kernels is seen too -- a torch function mode
    is switched off inside the operations it intercepts)."""
    def refuse(name):
        def raising(*args, **kwargs):
            raise HostSync(f"{name} reads a tensor back to the host")
        return raising

    saved = [(owner, name, getattr(owner, name)) for owner, names in SYNCS.items() for name in names]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, refuse(f"{getattr(owner, '__name__', owner)}.{name}"))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def test_the_mode_catches_a_sync():
    t = torch.ones(3)
    with no_host_sync(), pytest.raises(HostSync, match="item"):
        t.sum().item()
    with no_host_sync(), pytest.raises(HostSync, match="nonzero"):
        torch.nonzero(t)
    with no_host_sync(), pytest.raises(HostSync):
        bool(t.any())
    with no_host_sync(), pytest.raises(HostSync, match="tolist"):
        t.tolist()


@pytest.fixture(scope="module")
def model():
    return load_model(default_model_path(1), dtype=torch.float32, device="cpu")


def test_runner_forward_reads_nothing_back(model):
    """With the C++ kernels (the same Python path as the CUDA ones; the dense reference backend is the oracle and
    builds its masks from host values, and the Triton interpreter runs kernels on the host)."""
    if not next(s for s in backend_status("cpu") if s.name == "cpu").available:
        pytest.skip("the C++ CPU kernels are not built (COGVIDEO_NO_EXT=1?)")
    runner = ModelRunner(model, backend="cpu")
    frame_len = model.config.geometry.frame_len
    layouts = layouts_for(model, Pass.STAGE1, [7, 12], Pass.STAGE1.max_targets)
    cache = runner.new_cache(layouts, text_capacity=74)
    text_bias = torch.tensor([0.0, -1.5])
    q_text = torch.arange(7)[None]
    ids = torch.randint(0, 20000, (1, 7 + frame_len))
    row = cache.row(0)
    q_index = torch.cat([q_text, runner.frame_index(row, [(0, p) for p in range(frame_len)])], dim=1)
    position = runner.position_ids(row, q_index)
    with no_host_sync():  # a prefill forward
        runner._forward(row, ids, q_index, position, text_bias[:1], True)
    for positions in ([(1, 0)], [(1, 1), (2, 0)]):  # decode steps of one and two positions
        inputs = runner.step_inputs(cache, positions, torch.randint(0, 20000, (2, len(positions))), text_bias)
        with no_host_sync():
            logits = runner._forward(cache, *inputs, True, invariant=runner.batch_invariant)
        assert logits.shape[:2] == (2, len(positions)) and torch.isfinite(logits).all()


def test_text_lengths_are_checked_once_when_the_cache_is_bound(model):
    runner = ModelRunner(model)
    layouts = layouts_for(model, Pass.STAGE1, [7], Pass.STAGE1.max_targets)
    cache = runner.new_cache(layouts, text_capacity=20)
    with pytest.raises(ValueError, match="text capacity 20"):
        cache.bind(layouts_for(model, Pass.STAGE1, [30], Pass.STAGE1.max_targets))
    # outside a forward the kernels still check the values they are given; inside text_lengths_checked they do not
    rule = cache.rule("spatial", 0)
    k = torch.zeros(1, 1, rule.cache_len, 8)
    args = (torch.zeros(1, 1, 1, 8), k, k, torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]), torch.zeros(1))
    with pytest.raises(ValueError, match="text_len"):
        check_window_inputs(*args, rule)
    with text_lengths_checked(), no_host_sync():
        check_window_inputs(*args, rule)
