"""The super-resolution local-attention rules and reference twin against independent constructions."""

import pytest
import torch

from cogvideo_engine.kernels.local_reference import local_additive, local_attention
from cogvideo_engine.kernels.local_rules import DSR_GEOMETRY, LocalGeometry, visible_count

from helpers.local_cases import LOCAL_GEOMETRIES, LOCAL_IDS, make_inputs, unfold_attention
from helpers.numerics import assert_fp_close


@pytest.mark.parametrize("geometry", LOCAL_GEOMETRIES, ids=LOCAL_IDS)
def test_reference_matches_unfold_formulation(geometry):
    """Both formulations in fp32 and in fp64, against the unfold one in fp64."""
    inputs = make_inputs(geometry, d=8)
    exact = unfold_attention(*[t.double() for t in inputs], geometry)
    assert_fp_close(local_attention(*[t.double() for t in inputs], geometry, query_chunk=7), exact)
    assert_fp_close(local_attention(*inputs, geometry, query_chunk=7), exact, unfold_attention(*inputs, geometry))


def test_released_window_counts():
    g = DSR_GEOMETRY
    assert (g.grid, g.low_grid, g.ratio, g.keys_per_query) == (60, 20, 3, 70)
    assert visible_count(g, 0) == 5 * 3 + 3 * 3            # corner: rows 0..4, cols 0..2; low 0..2 x 0..2
    assert visible_count(g, 30 * 60 + 30) == 70
    assert visible_count(g, 59 * 60 + 59) == 5 * 3 + 3 * 3
    additive = local_additive(g)
    assert additive.shape == (3600, 4000)
    assert int(torch.isfinite(additive).sum()) == sum(visible_count(g, q) for q in range(3600))


def test_low_window_is_centred_on_the_low_resolution_cell():
    g = DSR_GEOMETRY
    row = local_additive(g)[3 * 60 + 3][3600:].reshape(20, 20)  # query (3, 3) -> low cell (1, 1)
    seen = torch.isfinite(row).nonzero().tolist()
    assert seen == [[r, c] for r in range(4) for c in range(4)]


@pytest.mark.parametrize("bad, match", [
    (dict(grid=10, low_grid=4), "multiple"), (dict(window_rows=4), "odd"), (dict(low_grid=0), "positive")])
def test_geometry_errors_name_the_constraint(bad, match):
    with pytest.raises(ValueError, match=match):
        LocalGeometry(**bad)


def test_input_errors_name_the_constraint():
    g = LOCAL_GEOMETRIES[0]
    q, k, v, kl, vl = make_inputs(g)
    with pytest.raises(ValueError, match="queries"):
        local_attention(q[:, :, :5], k, v, kl, vl, g)
    with pytest.raises(ValueError, match="k_low"):
        local_attention(q, k, v, kl[:, :, :1], vl, g)
    with pytest.raises(ValueError, match="dtype"):
        local_attention(q, k.double(), v, kl, vl, g)
