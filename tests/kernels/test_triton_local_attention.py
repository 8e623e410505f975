"""The fused Triton local attention against the dense reference twin (interpreter on CPU, the real thing on GPU).

The interpreter costs about 0.1 s per program (one query row of one head by default), so the CPU cases keep
batch, heads and head dim small; the released 60x60 geometry runs once with one head here, and at full size
in the gpu-marked tests.
"""

import functools

import pytest
import torch

from cogvideo_engine.kernels import triton_common
from cogvideo_engine.kernels.local_rules import DSR_GEOMETRY, LocalGeometry

from helpers.kernel_cases import DEVICE, gpu
from helpers.local_cases import LOCAL_GEOMETRIES, LOCAL_IDS, assert_local_matches_reference, check_local, make_inputs

triton_local = pytest.importorskip("cogvideo_engine.kernels.triton_local_attention", reason="triton not installed")
if triton_local.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)

kernel = triton_local.local_attention_triton

# (geometry, batch, heads): two frames x two heads where the interpreter is quick, fewer on the 30x30 frame
_SIZES = {30: (1, 2)}


def _bh(geometry):
    return _SIZES.get(geometry.grid, (2, 2))


@pytest.mark.parametrize("geometry", LOCAL_GEOMETRIES, ids=LOCAL_IDS)
def test_every_geometry_fp32(geometry):
    batch, heads = _bh(geometry)
    check_local(kernel, geometry, batch=batch, heads=heads, device=DEVICE)


@pytest.mark.parametrize("geometry", LOCAL_GEOMETRIES, ids=LOCAL_IDS)
def test_every_geometry_fp16(geometry):
    check_local(kernel, geometry, batch=1, heads=1, dtype=torch.float16, device=DEVICE, seed=1)


@pytest.mark.parametrize("geometry", [LOCAL_GEOMETRIES[1], LOCAL_GEOMETRIES[2]], ids=[LOCAL_IDS[1], LOCAL_IDS[2]])
def test_bf16(geometry):
    """bf16 under the interpreter takes the fp32-emulated path (triton_common.upcast_bf16); the GPU tests below
    run the tensor-core path."""
    check_local(kernel, geometry, batch=1, heads=2, dtype=torch.bfloat16, device=DEVICE)


def test_structured_inputs():
    check_local(kernel, LOCAL_GEOMETRIES[1], batch=1, heads=2, fill="arange", device=DEVICE)


@pytest.mark.parametrize("block_q,block_rows", [(16, 1), (32, 4), (8, 2), (16, 8)])
def test_tile_shapes(block_q, block_rows):
    """Several column tiles per row (the last one partly outside the frame), several query rows per program
    (the last row tile partly below the frame), and tiles narrower than the window's reach."""
    check_local(functools.partial(kernel, block_q=block_q, block_rows=block_rows), LocalGeometry(grid=18, low_grid=6),
                batch=1, heads=1, device=DEVICE)


def test_local_tiles_cover_the_window():
    assert triton_local.local_tiles(DSR_GEOMETRY, 64) == (64, 32)  # a whole row; the whole 20-column low row
    assert triton_local.local_tiles(DSR_GEOMETRY, 16) == (32, 16)  # 16 + 2 * 2 columns; (15 // 3 + 2) + 4
    assert triton_local.local_tiles(LocalGeometry(grid=15, low_grid=15, window_rows=1, window_cols=1,
                                                  low_window=1), 16) == (16, 16)


@pytest.mark.parametrize("d", [8, 24, 32])
def test_head_dims_are_padded(d):
    """d below the smallest tl.dot extent, and not a power of two, is zero-padded in registers."""
    check_local(kernel, LOCAL_GEOMETRIES[0], batch=1, heads=2, d=d, device=DEVICE)


def test_strided_views_of_one_projection():
    """q, k, v as views of one [B, N, 3, H, d] tensor, k_low / v_low of one [B, M, 2, H, d] tensor, and a last
    dim with stride 2."""
    g = LOCAL_GEOMETRIES[2]
    b, h, d = 2, 2, 16
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, g.num_queries, 3, h, d, generator=gen).to(DEVICE)
    kv_low = torch.randn(b, g.num_low, 2, h, 2 * d, generator=gen).to(DEVICE)[..., ::2]
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    k_low, v_low = (kv_low[:, :, i].transpose(1, 2) for i in range(2))
    assert not q.is_contiguous() and k_low.stride(-1) == 2
    out = kernel(q, k, v, k_low, v_low, g)
    assert out.is_contiguous()
    assert_local_matches_reference(out, [t.contiguous() for t in (q, k, v, k_low, v_low)], g)


@pytest.mark.compile_heavy
def test_released_geometry_one_head():
    """The released 60x60 / 20x20 geometry with the default tiles (one whole row per program)."""
    check_local(kernel, DSR_GEOMETRY, batch=1, heads=1, device=DEVICE)


def test_empty_batch():
    inputs = make_inputs(LOCAL_GEOMETRIES[0], batch=0, device=DEVICE)
    assert kernel(*inputs, LOCAL_GEOMETRIES[0]).shape == inputs[0].shape


def test_input_errors(monkeypatch):
    g = LOCAL_GEOMETRIES[0]
    q, k, v, kl, vl = make_inputs(g, batch=1, heads=1, device=DEVICE)
    with pytest.raises(ValueError, match="queries"):
        kernel(q[:, :, :5], k, v, kl, vl, g)
    with pytest.raises(ValueError, match="k_low"):
        kernel(q, k, v, kl[:, :, :1], vl, g)
    with pytest.raises(ValueError, match="fp16, bf16 or fp32"):
        kernel(*(t.double() for t in (q, k, v, kl, vl)), g)
    with pytest.raises(ValueError, match="head dim d=320"):
        kernel(*(torch.zeros(*t.shape[:3], 320, device=DEVICE) for t in (q, k, v, kl, vl)), g)
    with pytest.raises(ValueError, match="block_q must be a power of two"):
        kernel(q, k, v, kl, vl, g, block_q=12)
    with pytest.raises(ValueError, match="at least 16"):
        kernel(q, k, v, kl, vl, g, block_q=4, block_rows=2)
    monkeypatch.setattr(triton_common, "INTERPRETED", False)
    with pytest.raises(ValueError, match="CUDA tensors"):
        kernel(q.cpu(), k.cpu(), v.cpu(), kl.cpu(), vl.cpu(), g)
    monkeypatch.setattr(triton_common, "triton_status", lambda: (False, "triton is not installed"))
    with pytest.raises(RuntimeError, match="not installed"):
        kernel(q, k, v, kl, vl, g)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("geometry", LOCAL_GEOMETRIES + [DSR_GEOMETRY], ids=LOCAL_IDS + ["released"])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, marks=pytest.mark.compile_heavy), torch.float16,
                                   torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_gpu_every_geometry_every_dtype(geometry, dtype):
    check_local(kernel, geometry, batch=2, heads=4, d=64, dtype=dtype, device=DEVICE)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("block_q,block_rows", [(16, 4), (32, 1), (64, 2)])  # each value once: every pair of
@pytest.mark.parametrize("d", [16, 64, 128])  # the 3 x 3 grid is one more compile the GPU check pays for
def test_gpu_tiles_and_head_dims_released_geometry(block_q, block_rows, d):
    check_local(functools.partial(kernel, block_q=block_q, block_rows=block_rows), DSR_GEOMETRY, batch=1,
                heads=2, d=d, dtype=torch.float16, device=DEVICE)


@pytest.mark.gpu
@gpu
def test_gpu_released_shape_bf16_strided():
    """Released shape: 12 frames x 48 heads x 3600 queries, d=64, bf16, q/k/v as views of one projection;
    frames 0 and 11 and a few heads are compared with the reference (which is dense, hence the slice)."""
    g, b, h, d = DSR_GEOMETRY, 12, 48, 64
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(b, g.num_queries, 3, h, d, generator=gen).to(DEVICE, torch.bfloat16)
    kv_low = torch.randn(b, g.num_low, 2, h, d, generator=gen).to(DEVICE, torch.bfloat16)
    inputs = [qkv[:, :, i].transpose(1, 2) for i in range(3)] + [kv_low[:, :, i].transpose(1, 2) for i in range(2)]
    out = kernel(*inputs, g)
    pick = [t[[0, 11]][:, [0, 17, 47]] for t in inputs]
    assert_local_matches_reference(out[[0, 11]][:, [0, 17, 47]], pick, g)
