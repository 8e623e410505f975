// CUDA super-resolution local attention: one warp per query, the in-frame window keys visited one at a time.
//
// Each warp owns one query (b, h, r, c). Lane l holds dims l, l + 32, ... of the query (scaled by 1 / sqrt(d))
// and of the output accumulator. The warp walks the high-resolution window rows/columns clipped to the frame,
// then the low-resolution window clipped to the low frame -- so every key it visits is visible -- reading each
// K and V row coalesced (consecutive lanes, consecutive dims). The score is a warp-wide sum; the softmax is
// online in fp32 (running max and sum, accumulator rescaled when the max grows). The loops are warp-uniform.
// This is the straightforward, exact version (CUDA cores, no shared-memory tiling).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "cogvideo/cuda_utils.cuh"
#include "cogvideo/local_attention.h"

namespace cogvideo {
namespace {

constexpr int kWarps = 4;  // queries per block

using detail::from_float;
using detail::to_float;
using detail::warp_sum;

// Strides in elements of dims 0..2 (the last dim is contiguous).
struct Strides {
  int64_t q[3], k[3], v[3], kl[3], vl[3], o[3];
};

// Online-softmax state of one warp's query; lane-local accumulator of kPerLane dims.
template <int kPerLane>
struct Online {
  float m = -INFINITY, l = 0.0f;
  float acc[kPerLane];
};

// Folds one visible key into the state: score = q . k (q pre-scaled), p = exp(score - max).
template <typename T, int D, int kPerLane>
__device__ __forceinline__ void visit(Online<kPerLane>& st, const float (&qv)[kPerLane], const T* __restrict__ k_row,
                                      const T* __restrict__ v_row, int lane) {
  float part = 0.0f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < D) part += qv[i] * to_float(k_row[d]);
  }
  const float s = warp_sum(part);  // identical in every lane
  const float m_new = fmaxf(st.m, s);
  const float alpha = __expf(st.m - m_new);  // st.m = -inf on the first key: 0
  const float p = __expf(s - m_new);
  st.l = st.l * alpha + p;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    st.acc[i] = st.acc[i] * alpha + (d < D ? p * to_float(v_row[d]) : 0.0f);
  }
  st.m = m_new;
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
local_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                       const T* __restrict__ k_low, const T* __restrict__ v_low, T* __restrict__ out, Strides st,
                       LocalGeometry g, float scale, int64_t heads, int64_t total_queries) {
  constexpr int kPerLane = (D + 31) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t query = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (query >= total_queries) return;  // a whole warp leaves together; no block-wide barrier follows
  const int64_t n = g.num_queries();
  const int64_t bh = query / n;
  const int cell = static_cast<int>(query % n);
  const int64_t b = bh / heads, h = bh % heads;
  const int grid = g.grid, lg = g.low_grid, ratio = g.ratio();
  const int r = cell / grid, c = cell % grid;

  const T* q_row = q + b * st.q[0] + h * st.q[1] + cell * st.q[2];
  float qv[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    qv[i] = d < D ? to_float(q_row[d]) * scale : 0.0f;
  }

  Online<kPerLane> s;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) s.acc[i] = 0.0f;

  // high-resolution window, clipped to the frame
  const int hr = g.half_rows(), hc = g.half_cols();
  const T* k_head = k + b * st.k[0] + h * st.k[1];
  const T* v_head = v + b * st.v[0] + h * st.v[1];
  for (int y = max(0, r - hr); y <= min(grid - 1, r + hr); ++y)
    for (int x = max(0, c - hc); x <= min(grid - 1, c + hc); ++x) {
      const int64_t key = static_cast<int64_t>(y) * grid + x;
      visit<T, D, kPerLane>(s, qv, k_head + key * st.k[2], v_head + key * st.v[2], lane);
    }

  // low-resolution window around the cell under the query, clipped to the low frame
  const int hl = g.half_low(), lr = r / ratio, lc = c / ratio;
  const T* kl_head = k_low + b * st.kl[0] + h * st.kl[1];
  const T* vl_head = v_low + b * st.vl[0] + h * st.vl[1];
  for (int y = max(0, lr - hl); y <= min(lg - 1, lr + hl); ++y)
    for (int x = max(0, lc - hl); x <= min(lg - 1, lc + hl); ++x) {
      const int64_t key = static_cast<int64_t>(y) * lg + x;
      visit<T, D, kPerLane>(s, qv, kl_head + key * st.kl[2], vl_head + key * st.vl[2], lane);
    }

  const float inv_l = s.l > 0.0f ? 1.0f / s.l : 0.0f;  // the query's own key is always visited: l >= 1
  T* o_row = out + b * st.o[0] + h * st.o[1] + cell * st.o[2];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < D) o_row[d] = from_float<T>(s.acc[i] * inv_l);
  }
}

template <typename T, int D>
void launch(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
            const TensorView& v_low, TensorView& out, const LocalGeometry& g, cudaStream_t stream) {
  Strides st;
  for (int i = 0; i < 3; ++i) {
    st.q[i] = q.stride[i];
    st.k[i] = k.stride[i];
    st.v[i] = v.stride[i];
    st.kl[i] = k_low.stride[i];
    st.vl[i] = v_low.stride[i];
    st.o[i] = out.stride[i];
  }
  const int64_t total = q.shape[0] * q.shape[1] * q.shape[2];
  if (total == 0) return;
  const int64_t blocks = (total + kWarps - 1) / kWarps;
  if (blocks > 2147483647LL) throw InvalidArgument("batch x heads x grid^2 is too large for one launch");
  local_attention_kernel<T, D><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(
      static_cast<const T*>(q.data), static_cast<const T*>(k.data), static_cast<const T*>(v.data),
      static_cast<const T*>(k_low.data), static_cast<const T*>(v_low.data), static_cast<T*>(out.data), st, g,
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), q.shape[1], total);
}

template <typename T>
void dispatch_dim(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
                  const TensorView& v_low, TensorView& out, const LocalGeometry& g, cudaStream_t stream) {
  switch (q.shape[3]) {
    case 16: launch<T, 16>(q, k, v, k_low, v_low, out, g, stream); break;
    case 32: launch<T, 32>(q, k, v, k_low, v_low, out, g, stream); break;
    case 64: launch<T, 64>(q, k, v, k_low, v_low, out, g, stream); break;
    case 128: launch<T, 128>(q, k, v, k_low, v_low, out, g, stream); break;
    default: launch<T, 256>(q, k, v, k_low, v_low, out, g, stream); break;
  }
}

}  // namespace

void local_attention_cuda(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
                          const TensorView& v_low, TensorView& out, const LocalGeometry& geometry, void* stream) {
  validate_local(q, k, v, k_low, v_low, out, geometry);
  auto s = static_cast<cudaStream_t>(stream);
  switch (q.dtype) {
    case DType::kFloat32: dispatch_dim<float>(q, k, v, k_low, v_low, out, geometry, s); break;
    case DType::kFloat16: dispatch_dim<__half>(q, k, v, k_low, v_low, out, geometry, s); break;
    default: dispatch_dim<__nv_bfloat16>(q, k, v, k_low, v_low, out, geometry, s); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("local_attention_cuda launch: ") + cudaGetErrorString(err));
}

}  // namespace cogvideo
