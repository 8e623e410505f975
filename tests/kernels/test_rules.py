"""The attention-rule module against SPEC.md §3.3/§3.4, row by row, and against independent constructions."""

import functools
import itertools

import pytest
import torch

from cogvideo_engine.kernels.masks import spatial_mask, temporal_mask
from cogvideo_engine.kernels.rules import GIVEN, TARGET, TEXT, FrameGeometry, Pass, StreamLayout

from helpers.models import SMALL_GEOMETRY

REAL = FrameGeometry()
GEOMETRIES = [pytest.param(REAL, id="20x20-w10-s5"), pytest.param(SMALL_GEOMETRY, id="4x4-w2-s1")]


# -- independent constructions, written the way the original code computes them ---------------------------

def clamped_window_cells(g: FrameGeometry, p: int, shift: int) -> set[int]:
    """AR window: unrolled start/end arithmetic, clipped to the frame (SPEC.md §3.3)."""
    x, y = divmod(p, g.grid)
    if shift:
        xs, ys = ((x + shift) // g.window) * g.window - shift, ((y + shift) // g.window) * g.window - shift
    else:
        xs, ys = (x // g.window) * g.window, (y // g.window) * g.window
    xe, ye = min(xs + g.window, g.grid), min(ys + g.window, g.grid)
    return {a * g.grid + b for a in range(max(xs, 0), xe) for b in range(max(ys, 0), ye)}


def cyclic_window_of(g: FrameGeometry, shift: int) -> dict[int, int]:
    """Prefill window id of each cell: roll by -shift, then partition into window x window tiles."""
    ids = torch.arange(g.frame_len).view(g.grid, g.grid)
    rolled = torch.roll(ids, shifts=(-shift, -shift), dims=(0, 1))
    out = {}
    n = g.grid // g.window
    for i, j in itertools.product(range(n), range(n)):
        for cell in rolled[i * g.window:(i + 1) * g.window, j * g.window:(j + 1) * g.window].flatten().tolist():
            out[cell] = i * n + j
    return out


@functools.cache
def _dense(layout, channel, layer):
    idx = torch.arange(layout.length)
    m = spatial_mask(layout, idx, idx) if channel == "spatial" else temporal_mask(layout, idx, idx, layer)
    return m.visible


def temporal_keys(layout, q, layer):
    """Keys of a row from the dense mask (equal to the scalar rule: see test_dense_masks_equal_scalar_rules)."""
    return set(_dense(layout, "temporal", layer)[q].nonzero().flatten().tolist())


def spatial_keys(layout, q):
    return set(_dense(layout, "spatial", 0)[q].nonzero().flatten().tolist())


def text(layout):
    return set(range(layout.text_len))


def frame_indices(layout, slot, cells):
    return {layout.index(slot, p) for p in cells}


# -- the table of SPEC.md §3.4, row by row ------------------------------------------------------------------

@pytest.mark.parametrize("pass_", list(Pass))
def test_text_rows(pass_):
    layout = StreamLayout(pass_, text_len=7, num_targets=1, geometry=SMALL_GEOMETRY)
    for q in range(layout.text_len):
        assert layout.kind(q) == TEXT
        assert set(layout.spatial_keys(q)) == text(layout)
        assert layout.temporal_keys(q, 0) == [] and layout.temporal_keys(q, 1) == []
        assert not layout.mixes_temporal(q)


@pytest.mark.parametrize("g", GEOMETRIES)
def test_stage1_given_rows(g):
    layout = StreamLayout(Pass.STAGE1, text_len=5, num_targets=2, geometry=g)
    for p in (0, 1, g.grid, g.frame_len - 1):
        q = layout.index(0, p)
        assert layout.kind(q) == GIVEN
        assert set(layout.spatial_keys(q)) == text(layout) | frame_indices(layout, 0, range(p + 1))
        for layer in (0, 1):
            assert set(layout.temporal_keys(q, layer)) == text(layout) | set(range(layout.text_len, q + 1))
        assert layout.spatial_text_bias(q) and not layout.temporal_text_bias(q)
        assert layout.mixes_temporal(q)


@pytest.mark.parametrize("g", GEOMETRIES)
def test_stage1_target_rows(g):
    layout = StreamLayout(Pass.STAGE1, text_len=5, num_targets=3, geometry=g)
    for slot, p in [(1, 0), (1, 7), (2, g.frame_len - 1), (3, 3)]:
        q = layout.index(slot, p)
        assert layout.kind(q) == TARGET
        assert set(layout.spatial_keys(q)) == text(layout) | frame_indices(layout, slot, range(p + 1))
        assert set(layout.temporal_keys(q, 1)) == text(layout) | set(range(layout.text_len, q + 1))
        assert layout.spatial_text_bias(q) and layout.temporal_text_bias(q)


@pytest.mark.parametrize("g", GEOMETRIES)
def test_first_frame_rows(g):
    layout = StreamLayout(Pass.FIRST_FRAME, text_len=13, num_targets=1, geometry=g)
    assert layout.context_len == 13
    for p in (0, 5, g.frame_len - 1):
        q = layout.index(0, p)
        assert layout.kind(q) == TARGET
        assert set(layout.spatial_keys(q)) == text(layout) | frame_indices(layout, 0, range(p + 1))
        assert not layout.mixes_temporal(q)  # enforce_no_swin: dense_base output only


@pytest.mark.parametrize("g", GEOMETRIES)
@pytest.mark.parametrize("layer", [0, 1])
def test_stage2_given_rows_cyclic_windows(g, layer):
    layout = StreamLayout(Pass.STAGE2, text_len=6, num_targets=2, geometry=g)
    shift = layout.layer_shift(layer)
    window_of = cyclic_window_of(g, shift)
    for slot in range(3):
        for p in range(g.frame_len):
            q = layout.index(slot, p)
            assert layout.kind(q) == GIVEN
            same = {c for c in range(g.frame_len) if window_of[c] == window_of[p]}
            expected = text(layout) | set().union(*(frame_indices(layout, s, same) for s in range(3)))
            assert temporal_keys(layout, q, layer) == expected, (slot, p)
            if p % 5 == 0:
                assert spatial_keys(layout, q) == text(layout) | frame_indices(layout, slot, range(g.frame_len))
                assert set(layout.temporal_keys(q, layer)) == expected  # the scalar form, sampled
            assert not layout.temporal_text_bias(q) and layout.spatial_text_bias(q)


@pytest.mark.parametrize("g", GEOMETRIES)
@pytest.mark.parametrize("layer", [0, 1])
def test_stage2_target_rows_clamped_windows(g, layer):
    layout = StreamLayout(Pass.STAGE2, text_len=6, num_targets=2, geometry=g)
    shift = layout.layer_shift(layer)
    for slot in (3, 4):
        for p in range(g.frame_len):
            q = layout.index(slot, p)
            cells = clamped_window_cells(g, p, shift)
            expected = text(layout) | {q}
            for s in range(slot):
                expected |= frame_indices(layout, s, cells)
            expected |= frame_indices(layout, slot, {c for c in cells if c < p})
            assert temporal_keys(layout, q, layer) == expected, (slot, p)
            assert spatial_keys(layout, q) == text(layout) | frame_indices(layout, slot, range(p + 1))
            assert layout.temporal_text_bias(q)
            if p % 37 == 0:
                assert set(layout.temporal_keys(q, layer)) == expected  # the scalar form, sampled


def test_stage2_window_examples_real_geometry():
    """The examples of SPEC.md §3.3 in the real 20x20 geometry."""
    layout = StreamLayout(Pass.STAGE2, text_len=6, num_targets=2)
    cell = lambda x, y: x * 20 + y  # noqa: E731
    g0 = lambda x, y: layout.index(0, cell(x, y))  # noqa: E731
    # cyclic prefill windows on odd layers: (0,0) and (19,19) share one, (4,4) and (5,5) do not
    assert layout.temporal_visible(g0(0, 0), layout.index(2, cell(19, 19)), 1)
    assert not layout.temporal_visible(g0(4, 4), layout.index(1, cell(5, 5)), 1)
    assert layout.temporal_visible(g0(5, 5), layout.index(1, cell(14, 14)), 1)
    # even layers: plain 10x10 tiles
    assert layout.temporal_visible(g0(0, 0), layout.index(2, cell(9, 9)), 0)
    assert not layout.temporal_visible(g0(0, 0), layout.index(2, cell(19, 19)), 0)
    # clamped AR windows on odd layers: regions of 5/10/5 rows x 5/10/5 columns, no wrap-around
    t3 = lambda x, y: layout.index(3, cell(x, y))  # noqa: E731
    assert len(clamped_window_cells(REAL, cell(0, 0), 5)) == 25
    assert len(clamped_window_cells(REAL, cell(7, 0), 5)) == 50
    assert len(clamped_window_cells(REAL, cell(7, 7), 5)) == 100
    assert not layout.temporal_visible(t3(0, 0), layout.index(2, cell(19, 19)), 1)
    assert layout.temporal_visible(t3(4, 4), layout.index(2, cell(0, 0)), 1)
    assert not layout.temporal_visible(t3(4, 4), layout.index(2, cell(5, 5)), 1)
    assert layout.temporal_visible(t3(14, 14), layout.index(0, cell(5, 5)), 1)
    # slot 4 sees slot 3 (frame 1) but slot 3 never sees slot 4
    assert layout.temporal_visible(layout.index(4, 0), layout.index(3, 0), 0)
    assert not layout.temporal_visible(layout.index(3, 399), layout.index(4, 0), 0)


# -- positions, BOI shift, limits --------------------------------------------------------------------------

def test_stage2_slot_order_positions():
    layout = StreamLayout(Pass.STAGE2, text_len=9, num_targets=2)
    bases = [layout.position_id(layout.index(s, 0)) for s in range(5)]
    assert bases == [512, 1312, 2112, 912, 1712]
    assert layout.position_id(layout.index(3, 399)) == 1311
    assert [layout.position_id(i) for i in range(9)] == list(range(9))
    idx = torch.arange(layout.length)
    assert torch.equal(layout.position_id(idx), torch.tensor([layout.position_id(i) for i in range(layout.length)]))


def test_stage1_positions_and_boi_shift():
    layout = StreamLayout(Pass.STAGE1, text_len=20, num_targets=4)
    assert layout.position_id(20) == 512 and layout.position_id(420) == 912 and layout.position_id(2019) == 2511
    assert REAL.extra_table_start == 912
    assert [REAL.uses_extra_table(i) for i in (0, 911, 912, 2511)] == [False, False, True, True]
    assert [REAL.table_row(i) for i in (0, 911, 912, 2511)] == [0, 911, 0, 1599]
    assert [bool(layout.feeds_boi(i)) for i in (19, 20, 21, 419, 420, 820)] == [False, True, False, False,
                                                                                True, True]


def test_layout_limits():
    with pytest.raises(ValueError, match="text length 75"):
        StreamLayout(Pass.STAGE1, text_len=75, num_targets=1)
    StreamLayout(Pass.STAGE1, text_len=74, num_targets=4)
    StreamLayout(Pass.FIRST_FRAME, text_len=120, num_targets=1)  # the first frame has no 74-token budget
    with pytest.raises(ValueError, match="at most 2 target"):
        StreamLayout(Pass.STAGE2, text_len=5, num_targets=3)
    with pytest.raises(ValueError, match="unknown pass"):
        StreamLayout("stage3", text_len=5, num_targets=1)
    with pytest.raises(ValueError, match="multiple of the window"):
        FrameGeometry(grid=20, window=6)


# -- scalar rules == dense masks -----------------------------------------------------------------------------

@pytest.mark.parametrize("pass_", list(Pass))
def test_dense_masks_equal_scalar_rules(pass_):
    layout = StreamLayout(pass_, text_len=3, num_targets=pass_.max_targets, geometry=SMALL_GEOMETRY)
    idx = torch.arange(layout.length)
    sm = spatial_mask(layout, idx, idx)
    for layer in (0, 1):
        tm = temporal_mask(layout, idx, idx, layer)
        for q in range(layout.length):
            assert sm.visible[q].nonzero().flatten().tolist() == layout.spatial_keys(q)
            assert tm.visible[q].nonzero().flatten().tolist() == layout.temporal_keys(q, layer)
            t = set(range(layout.text_len))
            assert set(tm.text_bias[q].nonzero().flatten().tolist()) == \
                (t if layout.kind(q) == TARGET and layout.kind(q) != TEXT else set())
            assert set(sm.text_bias[q].nonzero().flatten().tolist()) == t
