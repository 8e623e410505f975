// CUDA window attention, two kernels behind one entry point; K/V are read in place through their strides.
//
// * Tensor-core tiles (fp16/bf16, head dim 64, sequences with at least kMinTileQueries queries: prefill):
//   a block of 4 warps owns 64 queries of one (sequence, head) and walks the cache in tiles of 64 rows. Per
//   tile the block evaluates the rule (rules.h) for its 64 x 64 (query, key) pairs into a shared bitmap and
//   skips the tile if no pair is visible (block vote) before loading K/V (16-byte vector loads where every row
//   is 16-byte aligned with unit stride along d, else element loads); then each warp computes its 16 x 64
//   scores Q K^T with WMMA (16x16x16, fp32 accumulation), applies scale, text bias and the bitmap, updates an
//   fp32 online softmax (two lanes per query row), and accumulates P V with WMMA into an fp32 output tile
//   kept in shared memory (rescaled per row by the softmax correction before each product).
// * Warp per query (every other case: fp32, other head dims, decode): each warp walks the cache rows in
//   chunks of 32, each lane deciding one row's visibility (the rule cells of a frame's positions are built once
//   per block in shared memory, and a lane's (slot, position) advances without division); chunks no lane can
//   see are skipped (warp vote). Each visible row is then read by the whole warp, lanes over d (coalesced; the
//   query sits in registers the same way), its score a warp sum; an fp32 online softmax per chunk, and every
//   lane owns D / 32 output dimensions.
//
// Grid: sequences x heads on the x axis (up to 2^31 - 1 blocks), query tiles on y (at most 65535).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cogvideo/cuda_utils.cuh"
#include "cogvideo/rules.h"
#include "cogvideo/window_attention.h"

namespace cogvideo {
namespace {

constexpr int kWarps = 4;  // queries per block
constexpr int64_t kMaxGridY = 65535;        // CUDA's limit on a grid's y (and z) axis
constexpr size_t kMaxStaticShared = 48 * 1024;  // dynamic shared memory a block gets without the opt-in
constexpr size_t kMinOptInShared = 166912;  // the opt-in per-block maximum of the smallest target built (sm_80: 163 KB)

size_t cells_bytes(const AttentionRule& rule) { return sizeof(Cell) * static_cast<size_t>(rule.frame_len()); }
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
  extern __shared__ Cell cells[];  // the rule cells of one frame's positions, built once per block
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int frame_len = rule.frame_len();
  for (int p = threadIdx.x; p < frame_len; p += blockDim.x) cells[p] = cell_of(p, rule);
  __syncthreads();
  const int64_t m = static_cast<int64_t>(blockIdx.y) * kWarps + warp;
  const int heads32 = static_cast<int>(heads);  // 32-bit division (no 64-bit division routine call)
  const int64_t b = static_cast<int>(blockIdx.x) / heads32, h = static_cast<int>(blockIdx.x) % heads32;
  if (m >= num_queries) return;  // a whole warp leaves together; no block-wide barrier follows

  const int tl = text_len[b];
  const float bias = text_bias[b];
  const QueryPos qp = decode_query(q_index[b * st.qi[0] + m * st.qi[1]], tl, rule);
  const float inv_sqrt_d = rsqrtf(static_cast<float>(D));
  const int64_t q_base = b * st.q[0] + h * st.q[1] + m * st.q[2];
  float q_reg[kPerLane];  // lane owns dimensions lane, lane + 32, ...: K rows are read coalesced across the warp
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    q_reg[i] = d < D ? to_float(q[q_base + d * st.q[3]]) * inv_sqrt_d : 0.0f;
  }

  const bool text_visible = sees_text(qp, rule.temporal);
  const float text_add = text_biased(qp, rule.temporal) ? bias : 0.0f;
  const int64_t rows = rule.cache_len();
  const T* k_head = k + b * st.k[0] + h * st.k[1];
  const T* v_head = v + b * st.v[0] + h * st.v[1];

  float acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
  float m_i = -INFINITY, l_i = 0.0f;
  int k_slot = 0, k_pos = 0;  // the lane's frame row as (slot, position), advanced by 32 rows per chunk
  bool in_frames = false;

  for (int64_t base = 0; base < rows; base += 32) {
    const int64_t row = base + lane;
    if (in_frames) {  // no division per row: the position wraps into the next slot
      k_pos += 32;
      while (k_pos >= frame_len) {
        k_pos -= frame_len;
        ++k_slot;
      }
    }
    bool visible = false;
    float add = 0.0f;
    if (row < rule.text_capacity) {
      visible = text_visible && row < tl;
      add = text_add;
    } else if (row < rows) {
      if (!in_frames) {  // the lane's first frame row (a 32-bit division: cache rows fit an int)
        const int rel = static_cast<int>(row - rule.text_capacity);
        k_slot = rel / frame_len;
        k_pos = rel - k_slot * frame_len;
        in_frames = true;
      }
      visible = sees_frame_key(qp, k_slot, cells[k_pos], rule);
    }
    const unsigned seen = __ballot_sync(kFull, visible);
    if (seen == 0u) continue;
    float s = -INFINITY;
    for (unsigned left = seen; left != 0u; left &= left - 1u) {  // the visible rows, one warp-wide dot each
      const int j = __ffs(left) - 1;
      const T* k_row = k_head + (base + j) * st.k[2];
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < D) part += q_reg[i] * to_float(k_row[d * st.k[3]]);
      }
      const float dot = warp_sum(part);
      if (lane == j) s = dot + add;
    }
    const float m_new = fmaxf(m_i, warp_max(s));
    const float p = visible ? __expf(s - m_new) : 0.0f;
    const float alpha = __expf(m_i - m_new);  // m_i = -inf on the first visible chunk: 0
    l_i = l_i * alpha + warp_sum(p);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] *= alpha;
    for (unsigned left = seen; left != 0u; left &= left - 1u) {
      const int j = __ffs(left) - 1;
      const float pj = __shfl_sync(kFull, p, j);
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

// ---- tensor-core tiles -----------------------------------------------------------------------------------

constexpr int kTileM = 64;           // queries per block (4 warps x 16 rows)
constexpr int kTileN = 64;           // cache rows per tile
constexpr int kTileWarps = 4;
constexpr int kMinTileQueries = 16;  // fewer queries per sequence (decode steps): the warp-per-query kernel

template <int D>
struct TileLayout {  // shared-memory carve-up; every offset and leading dimension keeps WMMA's 32-byte alignment
  static constexpr int kLdT = D + 8;        // Q/K/V rows (16-bit elements)
  static constexpr int kLdS = kTileN + 4;   // score rows (fp32)
  static constexpr int kLdP = kTileN + 8;   // probability rows (16-bit), aliased onto each warp's score rows
  static constexpr int kLdO = D + 4;        // output accumulator rows (fp32)
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + sizeof(uint16_t) * kTileM * kLdT;
  static constexpr size_t kV = kK + sizeof(uint16_t) * kTileN * kLdT;
  static constexpr size_t kS = kV + sizeof(uint16_t) * kTileN * kLdT;
  static constexpr size_t kO = kS + sizeof(float) * kTileM * kLdS;
  static constexpr size_t kVis = kO + sizeof(float) * kTileM * kLdO;
  static constexpr size_t kRows = kVis + kTileM * kTileN;  // per query row: QueryPos, text flags
  static constexpr size_t kBytes = kRows + kTileM * (sizeof(QueryPos) + sizeof(float) + sizeof(int));
};

template <typename T, int D>
__global__ void __launch_bounds__(kTileWarps * 32)
window_attention_tc_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           T* __restrict__ out, Strides st, const int64_t* __restrict__ q_index,
                           const int32_t* __restrict__ text_len, const float* __restrict__ text_bias,
                           AttentionRule rule, int64_t heads, int64_t num_queries, bool vec16) {
  using namespace nvcuda;
  using L = TileLayout<D>;
  static_assert(D % 16 == 0, "WMMA tiles need a head dim that is a multiple of 16");
  constexpr int kVecs = D / 8;  // 16-byte vectors per row
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem + L::kQ);
  T* k_s = reinterpret_cast<T*>(smem + L::kK);
  T* v_s = reinterpret_cast<T*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  float* o_s = reinterpret_cast<float*>(smem + L::kO);
  unsigned char* vis_s = smem + L::kVis;
  QueryPos* qpos_s = reinterpret_cast<QueryPos*>(smem + L::kRows);
  float* text_add_s = reinterpret_cast<float*>(qpos_s + kTileM);
  int* text_vis_s = reinterpret_cast<int*>(text_add_s + kTileM);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  const int heads32 = static_cast<int>(heads);
  const int64_t b = static_cast<int>(blockIdx.x) / heads32, h = static_cast<int>(blockIdx.x) % heads32;
  const int tl = text_len[b];
  const float bias = text_bias[b];

  // the block's queries: rule coordinates, and Q (zeros past the end) in shared memory
  for (int r = tid; r < kTileM; r += blockDim.x) {
    const int64_t m = m0 + r;
    const QueryPos qp = decode_query(m < num_queries ? q_index[b * st.qi[0] + m * st.qi[1]] : -1, tl, rule);
    qpos_s[r] = qp;
    text_vis_s[r] = sees_text(qp, rule.temporal) ? 1 : 0;
    text_add_s[r] = text_biased(qp, rule.temporal) ? bias : 0.0f;
  }
  const int64_t q_base = b * st.q[0] + h * st.q[1];
  if (vec16) {  // 16-byte loads: 8 elements of a row per thread
    for (int i = tid; i < kTileM * kVecs; i += blockDim.x) {
      const int r = i / kVecs, d = (i % kVecs) * 8;
      const int64_t m = m0 + r;
      *reinterpret_cast<uint4*>(q_s + r * L::kLdT + d) =
          m < num_queries ? *reinterpret_cast<const uint4*>(q + q_base + m * st.q[2] + d) : uint4{0, 0, 0, 0};
    }
  } else {
    for (int i = tid; i < kTileM * D; i += blockDim.x) {
      const int r = i / D, d = i % D;
      const int64_t m = m0 + r;
      q_s[r * L::kLdT + d] = m < num_queries ? q[q_base + m * st.q[2] + d * st.q[3]] : from_float<T>(0.0f);
    }
  }
  for (int i = tid; i < kTileM * L::kLdO; i += blockDim.x) o_s[i] = 0.0f;
  __syncthreads();

  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> q_frag[D / 16];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) wmma::load_matrix_sync(q_frag[kk], q_s + warp * 16 * L::kLdT + kk * 16, L::kLdT);

  // softmax state of the two rows... each query row is owned by two lanes (32 key columns each)
  const int my_row = warp * 16 + lane / 2;  // block row
  const int my_col0 = (lane % 2) * (kTileN / 2);
  float m_i = -INFINITY, l_i = 0.0f;
  const float scale = rsqrtf(static_cast<float>(D));
  const int frame_len = rule.frame_len();
  const int64_t rows = rule.cache_len();
  const int64_t k_head = b * st.k[0] + h * st.k[1], v_head = b * st.v[0] + h * st.v[1];
  float* s_w = s_s + warp * 16 * L::kLdS;
  T* p_w = reinterpret_cast<T*>(s_w);  // this warp's probabilities overwrite its own scores

  for (int64_t base = 0; base < rows; base += kTileN) {
    // 1. visibility of every (query, key) pair of the tile; one key column per thread
    int any = 0;
    {
      const int c = tid % kTileN;
      const int64_t row = base + c;
      bool is_text = false, frame = false;
      int k_slot = 0;
      Cell k_cell{0, 0, 0, 0, 0, 0, 0};
      if (row < rule.text_capacity) {
        is_text = row < tl;
      } else if (row < rows) {
        const int64_t rel = row - rule.text_capacity;
        k_slot = static_cast<int>(rel / frame_len);
        k_cell = cell_of(static_cast<int>(rel % frame_len), rule);
        frame = true;
      }
      for (int r = tid / kTileN; r < kTileM; r += blockDim.x / kTileN) {
        const bool seen = is_text ? text_vis_s[r] != 0 : frame && sees_frame_key(qpos_s[r], k_slot, k_cell, rule);
        vis_s[r * kTileN + c] = seen ? 1 : 0;
        any |= seen ? 1 : 0;
      }
    }
    if (!__syncthreads_or(any)) continue;  // uniform: no pair of the tile is visible

    // 2. K and V tiles (zeros past the cache)
    if (vec16) {
      for (int i = tid; i < kTileN * kVecs; i += blockDim.x) {
        const int c = i / kVecs, d = (i % kVecs) * 8;
        const int64_t row = base + c;
        const bool in = row < rows;
        *reinterpret_cast<uint4*>(k_s + c * L::kLdT + d) =
            in ? *reinterpret_cast<const uint4*>(k + k_head + row * st.k[2] + d) : uint4{0, 0, 0, 0};
        *reinterpret_cast<uint4*>(v_s + c * L::kLdT + d) =
            in ? *reinterpret_cast<const uint4*>(v + v_head + row * st.v[2] + d) : uint4{0, 0, 0, 0};
      }
    } else {
      for (int i = tid; i < kTileN * D; i += blockDim.x) {
        const int c = i / D, d = i % D;
        const int64_t row = base + c;
        const bool in = row < rows;
        k_s[c * L::kLdT + d] = in ? k[k_head + row * st.k[2] + d * st.k[3]] : from_float<T>(0.0f);
        v_s[c * L::kLdT + d] = in ? v[v_head + row * st.v[2] + d * st.v[3]] : from_float<T>(0.0f);
      }
    }
    __syncthreads();

    // 3. this warp's 16 x 64 scores
#pragma unroll
    for (int n = 0; n < kTileN / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> k_frag;  // K^T: column j = key j
        wmma::load_matrix_sync(k_frag, k_s + n * 16 * L::kLdT + kk * 16, L::kLdT);
        wmma::mma_sync(acc, q_frag[kk], k_frag, acc);
      }
      wmma::store_matrix_sync(s_w + n * 16, acc, L::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // 4. online softmax of the warp's rows: read the half row, then (after the warp syncs) write P over it
    float s_val[kTileN / 2];
    float tile_max = -INFINITY;
    const int r_local = lane / 2;
#pragma unroll
    for (int j = 0; j < kTileN / 2; ++j) {
      const int c = my_col0 + j;
      const bool seen = vis_s[my_row * kTileN + c] != 0;
      const float add = base + c < rule.text_capacity ? text_add_s[my_row] : 0.0f;
      s_val[j] = seen ? s_w[r_local * L::kLdS + c] * scale + add : -INFINITY;
      tile_max = fmaxf(tile_max, s_val[j]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFull, tile_max, 1));
    const float m_new = fmaxf(m_i, tile_max);
    const float m_safe = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = __expf(m_i - m_safe);
    float sum = 0.0f;
    __syncwarp();
#pragma unroll
    for (int j = 0; j < kTileN / 2; ++j) {
      const float p = __expf(s_val[j] - m_safe);  // exp(-inf) = 0 for hidden keys
      sum += p;
      p_w[r_local * L::kLdP + my_col0 + j] = from_float<T>(p);
    }
    sum += __shfl_xor_sync(kFull, sum, 1);
    l_i = l_i * alpha + sum;
    m_i = m_new;
    for (int d = (lane % 2) * (D / 2); d < (lane % 2 + 1) * (D / 2); ++d) o_s[my_row * L::kLdO + d] *= alpha;
    __syncwarp();

    // 5. O += P V for the warp's rows
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      float* o_tile = o_s + warp * 16 * L::kLdO + n * 16;
      wmma::load_matrix_sync(acc, o_tile, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kTileN / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v_frag;
        wmma::load_matrix_sync(p_frag, p_w + kk * 16, L::kLdP);
        wmma::load_matrix_sync(v_frag, v_s + kk * 16 * L::kLdT + n * 16, L::kLdT);
        wmma::mma_sync(acc, p_frag, v_frag, acc);
      }
      wmma::store_matrix_sync(o_tile, acc, L::kLdO, wmma::mem_row_major);
    }
    __syncthreads();  // K/V/bitmap are overwritten by the next tile
  }

  // 6. normalise and store (rows that saw nothing: zeros)
  const int64_t m = m0 + my_row;
  if (m < num_queries) {
    const float inv_l = l_i > 0.0f ? 1.0f / l_i : 0.0f;
    const int64_t o_base = b * st.o[0] + h * st.o[1] + m * st.o[2];
    for (int d = (lane % 2) * (D / 2); d < (lane % 2 + 1) * (D / 2); ++d)
      out[o_base + d * st.o[3]] = from_float<T>(o_s[my_row * L::kLdO + d] * inv_l);
  }
}

// Whether Q, K and V rows can be read as 16-byte vectors: 16-bit elements, unit stride along d, and every row
// start 16-byte aligned (the pointers and the strides of the other axes multiples of 8 elements).
template <typename T>
bool vec16_rows(const T* q, const T* k, const T* v, const Strides& st) {
  static_assert(sizeof(T) == 2, "the tensor-core tiles hold 16-bit elements");
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  auto rows_aligned = [](const int64_t* s) { return s[3] == 1 && s[0] % 8 == 0 && s[1] % 8 == 0 && s[2] % 8 == 0; };
  return aligned(q) && aligned(k) && aligned(v) && rows_aligned(st.q) && rows_aligned(st.k) && rows_aligned(st.v);
}

template <typename T, int D>
void launch_tiles(const T* q, const T* k, const T* v, T* out, const Strides& st, const QueryInfo& info,
                  const AttentionRule& rule, int64_t batch, int64_t heads, int64_t num_q, cudaStream_t stream) {
  constexpr size_t bytes = TileLayout<D>::kBytes;
  static_assert(bytes <= kMinOptInShared, "the tile's shared memory exceeds what an sm_80 block may opt in to");
  // The shared-memory opt-in is per device; done at the first launch on each (the warm-up, outside any capture).
  constexpr int kMaxDevices = 64;
  static bool configured[kMaxDevices] = {};
  int device = 0;
  cudaGetDevice(&device);
  if (device >= kMaxDevices || !configured[device]) {
    const cudaError_t err = cudaFuncSetAttribute(window_attention_tc_kernel<T, D>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess)
      throw std::runtime_error(std::string("window_attention_cuda: shared memory opt-in: ") + cudaGetErrorString(err));
    if (device < kMaxDevices) configured[device] = true;
  }
  dim3 grid(static_cast<unsigned>(batch * heads), static_cast<unsigned>((num_q + kTileM - 1) / kTileM));
  window_attention_tc_kernel<T, D><<<grid, kTileWarps * 32, bytes, stream>>>(
      q, k, v, out, st, info.q_index, info.text_len, info.text_bias, rule, heads, num_q, vec16_rows(q, k, v, st));
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
  if constexpr (!std::is_same_v<T, float> && D == 64) {
    if (num_q >= kMinTileQueries) {
      launch_tiles<T, D>(static_cast<const T*>(q.data), static_cast<const T*>(k.data), static_cast<const T*>(v.data),
                         static_cast<T*>(out.data), st, info, rule, q.shape[0], q.shape[1], num_q, stream);
      return;
    }
  }
  dim3 grid(static_cast<unsigned>(q.shape[0] * q.shape[1]), static_cast<unsigned>((num_q + kWarps - 1) / kWarps));
  window_attention_kernel<T, D><<<grid, kWarps * 32, cells_bytes(rule), stream>>>(
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
  // sequences x heads on the grid's x axis (up to 2^31 - 1), query tiles on y (CUDA allows 65535 there)
  if (q.shape[0] * q.shape[1] > 2147483647LL) throw InvalidArgument("batch x heads must be below 2^31");
  if ((q.shape[2] + kWarps - 1) / kWarps > kMaxGridY)
    throw InvalidArgument("at most " + std::to_string(kMaxGridY * kWarps) + " queries per sequence (" +
                          std::to_string(q.shape[2]) + " given): CUDA's grid allows " + std::to_string(kMaxGridY) +
                          " blocks on its y axis");
  if (cells_bytes(rule) > kMaxStaticShared)
    throw InvalidArgument("frames of " + std::to_string(rule.frame_len()) + " cells need " +
                          std::to_string(cells_bytes(rule)) + " bytes of shared memory for their rule cells, over " +
                          "the " + std::to_string(kMaxStaticShared) + " a block has without opt-in");
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
