"""The csrc super-resolution local-attention kernels (C++ CPU; CUDA on a GPU) against the reference twin."""

import pytest
import torch

from cogvideo_engine.kernels.csrc_ops import csrc_status, local_attention_csrc
from cogvideo_engine.kernels.local_rules import LocalGeometry

from helpers.local_cases import (DSR_GEOMETRY, LOCAL_GEOMETRIES, LOCAL_IDS, assert_local_matches_reference, check_local,
                         make_inputs)

cpu_ok, cpu_why = csrc_status("cpu")
pytestmark = pytest.mark.skipif(not cpu_ok, reason=f"cpu backend: {cpu_why}")
cuda_ok, cuda_why = csrc_status("cuda")
needs_cuda = pytest.mark.skipif(not cuda_ok, reason=f"cuda backend: {cuda_why}")


@pytest.mark.parametrize("geometry", LOCAL_GEOMETRIES, ids=LOCAL_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_every_geometry(geometry, dtype):
    check_local(local_attention_csrc, geometry, dtype=dtype)


@pytest.mark.parametrize("geometry", [LOCAL_GEOMETRIES[1], LOCAL_GEOMETRIES[4]], ids=[LOCAL_IDS[1], LOCAL_IDS[4]])
@pytest.mark.parametrize("d", [16, 64, 128])
def test_cpu_head_dims(geometry, d):
    check_local(local_attention_csrc, geometry, d=d, batch=1)


@pytest.mark.parametrize("geometry", LOCAL_GEOMETRIES, ids=LOCAL_IDS)
def test_cpu_structured_inputs(geometry):
    """Distinct, ordered entries: a key or value read from the wrong cell shows."""
    check_local(local_attention_csrc, geometry, fill="arange", d=32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_released_geometry(dtype):
    """The released 60x60 from 20x20 geometry (9x5 and 5x5 windows), d = 64."""
    check_local(local_attention_csrc, DSR_GEOMETRY, batch=1, heads=2, d=64, dtype=dtype)


def test_cpu_strided_views():
    """q, k, v as views of one [B, N, 3, H, d] projection (and k_low, v_low of a [B, M, 2, H, d] one): strides
    are honoured without copies; a last dimension that is not contiguous is copied first."""
    g, b, h, d = LOCAL_GEOMETRIES[4], 2, 3, 16
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, g.num_queries, 3, h, d, generator=gen)
    kv_low = torch.randn(b, g.num_low, 2, h, d, generator=gen)
    q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
    k_low, v_low = (kv_low[:, :, i].permute(0, 2, 1, 3) for i in range(2))
    assert not q.is_contiguous() and q.stride(-1) == 1
    assert_local_matches_reference(local_attention_csrc(q, k, v, k_low, v_low, g), (q, k, v, k_low, v_low), g)
    q_t = q.contiguous().transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, stride(-1) != 1
    assert q_t.stride(-1) != 1
    out = local_attention_csrc(q_t, k, v, k_low, v_low, g)
    assert out.is_contiguous()
    assert_local_matches_reference(out, (q, k, v, k_low, v_low), g)


def test_cpu_windows_wider_than_the_frame():
    g = LocalGeometry(grid=4, low_grid=2, window_rows=15, window_cols=11, low_window=7)
    check_local(local_attention_csrc, g, d=16)


def test_cpu_errors_name_the_constraint():
    g = LOCAL_GEOMETRIES[0]
    q, k, v, kl, vl = make_inputs(g)
    with pytest.raises(ValueError, match="queries"):
        local_attention_csrc(q[:, :, :5], k, v, kl, vl, g)
    with pytest.raises(ValueError, match="k_low"):
        local_attention_csrc(q, k, v, kl[:, :, :1], vl, g)
    with pytest.raises(ValueError, match="share one dtype"):
        local_attention_csrc(q, k, v, kl, vl.half(), g)
    with pytest.raises(ValueError, match="head dim 24"):
        local_attention_csrc(*make_inputs(g, d=24), g)
    with pytest.raises(ValueError, match="float64 is not supported"):
        local_attention_csrc(*[t.double() for t in (q, k, v, kl, vl)], g)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("geometry", LOCAL_GEOMETRIES, ids=LOCAL_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_every_geometry(geometry, dtype):
    check_local(local_attention_csrc, geometry, dtype=dtype, device="cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("d", [16, 32, 64, 128, 256])
def test_cuda_head_dims(d):
    check_local(local_attention_csrc, LOCAL_GEOMETRIES[4], d=d, dtype=torch.bfloat16, device="cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_released_geometry(dtype):
    check_local(local_attention_csrc, DSR_GEOMETRY, batch=2, heads=4, d=64, dtype=dtype, device="cuda")


@pytest.mark.gpu
@needs_cuda
def test_cuda_strided_views_and_side_stream():
    g, b, h, d = DSR_GEOMETRY, 1, 2, 64
    qkv = torch.randn(b, g.num_queries, 3, h, d, device="cuda")
    kv_low = torch.randn(b, g.num_low, 2, h, d, device="cuda")
    q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
    k_low, v_low = (kv_low[:, :, i].permute(0, 2, 1, 3) for i in range(2))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = local_attention_csrc(q, k, v, k_low, v_low, g)
    torch.cuda.current_stream().wait_stream(stream)
    assert_local_matches_reference(out, (q, k, v, k_low, v_low), g)
