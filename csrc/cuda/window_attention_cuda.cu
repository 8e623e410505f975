// CUDA window attention: one warp per query, keys in warp-wide chunks of 32 read in place from the cache.
//
// Each warp walks the cache rows in chunks of 32 (one key per lane), evaluates the rule (rules.h) for its
// key, skips chunks no lane can see (warp vote), computes the scores with the query held in shared memory,
// and keeps an fp32 online softmax; every lane owns D / 32 output dimensions and accumulates P V with the
// chunk's probabilities broadcast by shuffles. No gather copies: K/V are read through their strides.
// This is the straightforward, exact version (CUDA cores, no tensor-core tiles yet).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "cogvideo/cuda_utils.cuh"
#include "cogvideo/rules.h"
#include "cogvideo/window_attention.h"

namespace cogvideo {
namespace {

constexpr int kWarps = 4;  // queries per block
constexpr unsigned kFull = detail::kFullWarp;

using detail::from_float;
using detail::to_float;
using detail::warp_max;
using detail::warp_sum;

struct Strides {
  int64_t q[4], k[4], v[4], o[4];
  int64_t qi[2];
};

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
window_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        T* __restrict__ out, Strides st, const int64_t* __restrict__ q_index,
                        const int32_t* __restrict__ text_len, const float* __restrict__ text_bias,
                        AttentionRule rule, int64_t heads, int64_t num_queries) {
  constexpr int kPerLane = (D + 31) / 32;
  __shared__ float q_shared[kWarps][D];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const int64_t b = blockIdx.y / heads, h = blockIdx.y % heads;
  if (m >= num_queries) return;  // a whole warp leaves together; no block-wide barrier follows

  const int tl = text_len[b];
  const float bias = text_bias[b];
  const QueryPos qp = decode_query(q_index[b * st.qi[0] + m * st.qi[1]], tl, rule);
  const float inv_sqrt_d = rsqrtf(static_cast<float>(D));
  const int64_t q_base = b * st.q[0] + h * st.q[1] + m * st.q[2];
  for (int d = lane; d < D; d += 32) q_shared[warp][d] = to_float(q[q_base + d * st.q[3]]) * inv_sqrt_d;
  __syncwarp();

  const bool text_visible = sees_text(qp, rule.temporal);
  const float text_add = text_biased(qp, rule.temporal) ? bias : 0.0f;
  const int frame_len = rule.frame_len();
  const int64_t rows = rule.cache_len();
  const T* k_head = k + b * st.k[0] + h * st.k[1];
  const T* v_head = v + b * st.v[0] + h * st.v[1];

  float acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
  float m_i = -INFINITY, l_i = 0.0f;

  for (int64_t base = 0; base < rows; base += 32) {
    const int64_t row = base + lane;
    bool visible = false;
    float add = 0.0f;
    if (row < rule.text_capacity) {
      visible = text_visible && row < tl;
      add = text_add;
    } else if (row < rows) {
      const int64_t rel = row - rule.text_capacity;
      visible = sees_frame_key(qp, static_cast<int>(rel / frame_len), cell_of(static_cast<int>(rel % frame_len), rule), rule);
    }
    if (!__any_sync(kFull, visible)) continue;
    float s = -INFINITY;
    if (visible) {
      const T* k_row = k_head + row * st.k[2];
      float dot = 0.0f;
#pragma unroll 8
      for (int d = 0; d < D; ++d) dot += q_shared[warp][d] * to_float(k_row[d * st.k[3]]);
      s = dot + add;
    }
    const float m_new = fmaxf(m_i, warp_max(s));
    const float p = visible ? __expf(s - m_new) : 0.0f;
    const float alpha = __expf(m_i - m_new);  // m_i = -inf on the first visible chunk: 0
    l_i = l_i * alpha + warp_sum(p);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] *= alpha;
    for (int j = 0; j < 32; ++j) {
      const float pj = __shfl_sync(kFull, p, j);
      if (pj == 0.0f) continue;  // uniform across the warp: pj is broadcast
      const T* v_row = v_head + (base + j) * st.v[2];
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < D) acc[i] += pj * to_float(v_row[d * st.v[3]]);
      }
    }
    m_i = m_new;
  }
  const float inv_l = l_i > 0.0f ? 1.0f / l_i : 0.0f;
  const int64_t o_base = b * st.o[0] + h * st.o[1] + m * st.o[2];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < D) out[o_base + d * st.o[3]] = from_float<T>(acc[i] * inv_l);
  }
}

template <typename T, int D>
void launch(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out, const QueryInfo& info,
            const AttentionRule& rule, cudaStream_t stream) {
  Strides st;
  for (int i = 0; i < 4; ++i) {
    st.q[i] = q.stride[i];
    st.k[i] = k.stride[i];
    st.v[i] = v.stride[i];
    st.o[i] = out.stride[i];
  }
  st.qi[0] = info.q_index_stride[0];
  st.qi[1] = info.q_index_stride[1];
  const int64_t num_q = q.shape[2];
  if (num_q == 0 || q.shape[0] * q.shape[1] == 0) return;
  dim3 grid(static_cast<unsigned>((num_q + kWarps - 1) / kWarps), static_cast<unsigned>(q.shape[0] * q.shape[1]));
  window_attention_kernel<T, D><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<const T*>(q.data), static_cast<const T*>(k.data), static_cast<const T*>(v.data),
      static_cast<T*>(out.data), st, info.q_index, info.text_len, info.text_bias, rule, q.shape[1], num_q);
}

template <typename T>
void dispatch_dim(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out,
                  const QueryInfo& info, const AttentionRule& rule, cudaStream_t stream) {
  switch (q.shape[3]) {
    case 16: launch<T, 16>(q, k, v, out, info, rule, stream); break;
    case 32: launch<T, 32>(q, k, v, out, info, rule, stream); break;
    case 64: launch<T, 64>(q, k, v, out, info, rule, stream); break;
    default: launch<T, 128>(q, k, v, out, info, rule, stream); break;
  }
}

}  // namespace

bool has_cuda() { return true; }

void window_attention_cuda(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out,
                           const QueryInfo& info, const AttentionRule& rule, void* stream) {
  validate(q, k, v, out, rule);
  if (info.q_index == nullptr || info.text_len == nullptr || info.text_bias == nullptr)
    throw InvalidArgument("q_index, text_len and text_bias must be given");
  if (q.shape[0] * q.shape[1] > 2147483647LL) throw InvalidArgument("batch x heads must fit the grid's y size");
  auto s = static_cast<cudaStream_t>(stream);
  switch (q.dtype) {
    case DType::kFloat32: dispatch_dim<float>(q, k, v, out, info, rule, s); break;
    case DType::kFloat16: dispatch_dim<__half>(q, k, v, out, info, rule, s); break;
    default: dispatch_dim<__nv_bfloat16>(q, k, v, out, info, rule, s); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("window_attention_cuda launch: ") + cudaGetErrorString(err));
}

}  // namespace cogvideo
