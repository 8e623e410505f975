// CPU window attention: queries tiled by shared key set, K/V packed per tile, fp32 math, OpenMP. Compiled once
// per instruction-set variant (isa.h) into cogvideo::cpu_<isa>::window_attention; the entry point
// window_attention_cpu (dispatch.cpp) checks the inputs and calls the variant chosen for this CPU.
//
// 1. Per sequence, valid queries are ordered by their rule group (rules.h: query_group) -- e.g. all stage-2
//    given rows of one cyclic window -- so a tile of up to kTileM queries shares almost all of its keys.
// 2. Per tile (shared by all heads): the union of visible cache rows and an additive term per
//    (query, row): 0, the text bias, or -inf.
// 3. Per (tile, head), in parallel: pack the rows' K (transposed) and V in fp32, S = (q / sqrt(d)) K^T +
//    additive, one softmax per row over the packed keys, O = P V; rows that see nothing write zeros.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "cogvideo/dtype_convert.h"
#include "cogvideo/rules.h"
#include "cogvideo/window_attention.h"
#include "fast_exp.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include "isa.h"  // after every other header: the instruction set of this variant applies to the code below

COGVIDEO_CPU_TARGET_BEGIN
namespace cogvideo {
namespace COGVIDEO_CPU_NS {
namespace {

constexpr int kTileM = 320;        // queries per tile of a bidirectional group (one key set for all)
constexpr int kTileMCausal = 128;  // queries per tile of a causal group (keys grow with the query)
constexpr int kDirectMax = 4;      // tiles this small (decode) read K/V rows in place instead of packing
constexpr int kPrefetchRows = 8;   // how far ahead the decode path fetches the K/V rows it reads in place
constexpr int kRowBlock = 6;  // query rows per micro-kernel pass
constexpr int kKeyBlock = 64;  // keys per micro-kernel pass (QK^T)

using detail::bf16_to_float;
using detail::load_elem;
using detail::store_elem;

struct Tile {
  int64_t batch = 0;
  std::vector<int64_t> query_cols;  // position of each query in q_index's second dimension
  std::vector<int64_t> rows;        // cache rows of the union of visible keys
  std::vector<float> additive;      // [queries, rows.size()]: 0, the text bias, or -inf
};

// Tiles of up to kTileM queries of one rule group (sharing their key set up to causality), with the union
// of their visible cache rows and the additive term of every (query, row).
std::vector<Tile> plan_tiles(const TensorView& q, const QueryInfo& info, const AttentionRule& rule) {
  const int64_t batch = q.shape[0], num_q = q.shape[2];
  const int frame_len = rule.frame_len();
  std::vector<Cell> cells(frame_len);
  for (int p = 0; p < frame_len; ++p) cells[p] = cell_of(p, rule);

  std::vector<Tile> tiles;
  std::vector<std::vector<QueryPos>> positions(batch);
  for (int64_t b = 0; b < batch; ++b) {
    const int text_len = info.text_len[b];
    std::vector<QueryPos>& pos = positions[b];
    pos.resize(num_q);
    std::vector<int64_t> order, group(num_q);
    for (int64_t i = 0; i < num_q; ++i) {
      pos[i] = decode_query(info.q_index[b * info.q_index_stride[0] + i * info.q_index_stride[1]], text_len, rule);
      if (pos[i].kind == kPadding) continue;
      group[i] = query_group(pos[i], rule);
      order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return group[a] < group[c]; });
    for (size_t start = 0; start < order.size();) {
      const QueryPos& first = pos[order[start]];
      const bool bidirectional = first.kind == kGiven && (rule.windowed || (!rule.temporal && rule.bidirectional_given));
      const size_t limit = bidirectional ? kTileM : kTileMCausal;
      size_t end = start;
      while (end < order.size() && end - start < limit && group[order[end]] == group[order[start]]) ++end;
      Tile t;
      t.batch = b;
      t.query_cols.assign(order.begin() + start, order.begin() + end);
      tiles.push_back(std::move(t));
      start = end;
    }
  }

#pragma omp parallel for schedule(dynamic)
  for (size_t ti = 0; ti < tiles.size(); ++ti) {
    Tile& t = tiles[ti];
    const std::vector<QueryPos>& pos = positions[t.batch];
    const int text_len = info.text_len[t.batch];
    bool any_text = false;
    for (int64_t col : t.query_cols) any_text = any_text || sees_text(pos[col], rule.temporal);
    if (any_text)
      for (int j = 0; j < text_len; ++j) t.rows.push_back(j);
    for (int s = 0; s < rule.cache_slots; ++s)
      for (int p = 0; p < frame_len; ++p)
        for (int64_t col : t.query_cols)
          if (sees_frame_key(pos[col], s, cells[p], rule)) {
            t.rows.push_back(rule.text_capacity + static_cast<int64_t>(s) * frame_len + p);
            break;
          }
    const size_t n = t.rows.size();
    t.additive.assign(t.query_cols.size() * n, -std::numeric_limits<float>::infinity());
    for (size_t m = 0; m < t.query_cols.size(); ++m) {
      const QueryPos& qp = pos[t.query_cols[m]];
      const bool text_ok = sees_text(qp, rule.temporal);
      const float bias = text_biased(qp, rule.temporal) ? info.text_bias[t.batch] : 0.0f;
      float* add = t.additive.data() + m * n;
      for (size_t j = 0; j < n; ++j) {
        const int64_t row = t.rows[j];
        if (row < rule.text_capacity) {
          if (text_ok) add[j] = bias;
        } else {
          const int64_t rel = row - rule.text_capacity;
          if (sees_frame_key(qp, static_cast<int>(rel / frame_len), cells[rel % frame_len], rule)) add[j] = 0.0f;
        }
      }
    }
  }
  return tiles;
}

// One row (D elements) of a strided tensor as fp32.
template <int D>
inline void load_row(const TensorView& t, int64_t offset, float* dst) {
  if (t.dtype == DType::kFloat32 && t.stride[3] == 1) {
    std::memcpy(dst, static_cast<const float*>(t.data) + offset, D * sizeof(float));
  } else if (t.dtype == DType::kBFloat16 && t.stride[3] == 1) {
    const uint16_t* src = static_cast<const uint16_t*>(t.data) + offset;
#pragma omp simd
    for (int d = 0; d < D; ++d) dst[d] = bf16_to_float(src[d]);
  } else {
    for (int d = 0; d < D; ++d) dst[d] = load_elem(t.data, offset + d * t.stride[3], t.dtype);
  }
}

// S[m, j] = sum_d qs[m, d] * kt[d, j], kRowBlock query rows x kKeyBlock keys per pass (register tile).
template <int D>
void scores(const float* qs, int rows, const float* kt, int64_t n_pad, float* s) {
  for (int m0 = 0; m0 < rows; m0 += kRowBlock) {
    for (int64_t j0 = 0; j0 < n_pad; j0 += kKeyBlock) {
      float acc[kRowBlock][kKeyBlock] = {};
      for (int d = 0; d < D; ++d) {
        const float* krow = kt + d * n_pad + j0;
        for (int r = 0; r < kRowBlock; ++r) {
          const float a = qs[(m0 + r) * D + d];
#pragma omp simd
          for (int j = 0; j < kKeyBlock; ++j) acc[r][j] += a * krow[j];
        }
      }
      for (int r = 0; r < kRowBlock; ++r) std::memcpy(s + (m0 + r) * n_pad + j0, acc[r], sizeof(acc[r]));
    }
  }
}

// O[m, :] = sum_j p[m, j] * v_rows[j][:], kRowBlock query rows per pass.
template <int D>
void weighted_values(const float* p, int rows, const float* const* v_rows, int64_t n, int64_t n_pad, float* o) {
  for (int m0 = 0; m0 < rows; m0 += kRowBlock) {
    float acc[kRowBlock][D] = {};
    for (int64_t j = 0; j < n; ++j) {
      const float* vrow = v_rows[j];
      for (int r = 0; r < kRowBlock; ++r) {
        const float w = p[(m0 + r) * n_pad + j];
#pragma omp simd
        for (int d = 0; d < D; ++d) acc[r][d] += w * vrow[d];
      }
    }
    std::memcpy(o + m0 * D, acc, sizeof(acc));
  }
}

// Softmax of one score row over n keys, in place (additive already applied); false if the row sees nothing.
inline bool softmax_row(float* row, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = row[j] > mx ? row[j] : mx;
  if (mx == -std::numeric_limits<float>::infinity()) return false;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_nonpositive(row[j] - mx);
    row[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  return true;
}

// One query of a decode-sized tile (fp32 rows), every head: its visible rows read in place, row by row with the
// heads of a row side by side in memory (one stream through the cache rows, not one per head), scores as dot
// products, one softmax per head over the visible rows, then P V over the same rows.
template <int D>
void run_query_direct(const Tile& t, int m, const TensorView& q, const TensorView& k, const TensorView& v,
                      TensorView& out) {
  const int64_t n = static_cast<int64_t>(t.rows.size());
  const int64_t heads = q.shape[1];
  const float sqrt_d = std::sqrt(static_cast<float>(D));
  const int64_t b = t.batch;
  thread_local std::vector<float> qs, s, acc;
  thread_local std::vector<int64_t> seen;  // offsets of the visible rows in the cache
  thread_local std::vector<float> add;     // and their additive terms (0 or the text bias)
  seen.clear();
  add.clear();
  const float* additive = t.additive.data() + m * n;
  for (int64_t j = 0; j < n; ++j)
    if (additive[j] != -std::numeric_limits<float>::infinity()) {
      seen.push_back(t.rows[j]);
      add.push_back(additive[j]);
    }
  const int64_t nv = static_cast<int64_t>(seen.size());
  qs.resize(heads * D);
  s.resize(heads * std::max<int64_t>(nv, 1));
  acc.assign(heads * D, 0.0f);
  for (int64_t h = 0; h < heads; ++h) {
    load_row<D>(q, b * q.stride[0] + h * q.stride[1] + t.query_cols[m] * q.stride[2], qs.data() + h * D);
    for (int d = 0; d < D; ++d) qs[h * D + d] /= sqrt_d;
  }
  const float* k_base = static_cast<const float*>(k.data) + b * k.stride[0];
  const float* v_base = static_cast<const float*>(v.data) + b * v.stride[0];
  // the rows are scattered (a window's cells, each row a few hundred bytes of this task's heads): fetched
  // kPrefetchRows ahead, so several are on their way from memory at once
  auto prefetch = [&](const float* base, const TensorView& t, int64_t j) {
    if (j >= nv) return;
    const float* row = base + seen[j] * t.stride[2];
    for (int64_t h = 0; h < heads; ++h)
      for (int d = 0; d < D; d += 16) __builtin_prefetch(row + h * t.stride[1] + d, 0, 3);
  };
  for (int64_t j = 0; j < kPrefetchRows; ++j) prefetch(k_base, k, j);
  for (int64_t j = 0; j < nv; ++j) {
    prefetch(k_base, k, j + kPrefetchRows);
    const float* krow = k_base + seen[j] * k.stride[2];
    for (int64_t h = 0; h < heads; ++h) {
      const float* kh = krow + h * k.stride[1];
      const float* qh = qs.data() + h * D;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int d = 0; d < D; ++d) dot += qh[d] * kh[d];
      s[h * nv + j] = dot + add[j];
    }
  }
  for (int64_t h = 0; h < heads && nv > 0; ++h) softmax_row(s.data() + h * nv, nv);  // nv > 0: a finite max
  for (int64_t j = 0; j < kPrefetchRows; ++j) prefetch(v_base, v, j);
  for (int64_t j = 0; j < nv; ++j) {
    prefetch(v_base, v, j + kPrefetchRows);
    const float* vrow = v_base + seen[j] * v.stride[2];
    for (int64_t h = 0; h < heads; ++h) {
      const float w = s[h * nv + j];
      const float* vh = vrow + h * v.stride[1];
      float* ah = acc.data() + h * D;
#pragma omp simd
      for (int d = 0; d < D; ++d) ah[d] += w * vh[d];
    }
  }
  for (int64_t h = 0; h < heads; ++h) {  // a query that sees nothing writes zeros
    const int64_t base = b * out.stride[0] + h * out.stride[1] + t.query_cols[m] * out.stride[2];
    for (int d = 0; d < D; ++d) store_elem(out.data, base + d * out.stride[3], out.dtype, acc[h * D + d]);
  }
}

template <int D>
void run_tile_head(const Tile& t, int64_t h, const TensorView& q, const TensorView& k, const TensorView& v,
                   TensorView& out) {
  const int64_t n = static_cast<int64_t>(t.rows.size());
  const int num_q = static_cast<int>(t.query_cols.size());
  const int64_t n_pad = std::max<int64_t>(kKeyBlock, (n + kKeyBlock - 1) / kKeyBlock * kKeyBlock);
  const int rows = (num_q + kRowBlock - 1) / kRowBlock * kRowBlock;
  const float sqrt_d = std::sqrt(static_cast<float>(D));  // scores are (q / sqrt(d)) . k, as the original
  thread_local std::vector<float> qs, kt, vv, s, o;
  thread_local std::vector<const float*> v_rows;
  qs.assign(static_cast<size_t>(rows) * D, 0.0f);
  kt.resize(static_cast<size_t>(D) * n_pad);
  const bool v_direct = v.dtype == DType::kFloat32 && v.stride[3] == 1;  // read fp32 V rows in place
  if (!v_direct) vv.resize(static_cast<size_t>(n) * D);
  v_rows.resize(n);
  s.resize(static_cast<size_t>(rows) * n_pad);
  o.resize(static_cast<size_t>(rows) * D);
  const int64_t b = t.batch;
  for (int m = 0; m < num_q; ++m) {
    float* dst = qs.data() + m * D;
    load_row<D>(q, b * q.stride[0] + h * q.stride[1] + t.query_cols[m] * q.stride[2], dst);
    for (int d = 0; d < D; ++d) dst[d] /= sqrt_d;
  }
  // K transposed in blocks of 16 keys (contiguous 64-byte writes), V as rows
  constexpr int kT = 16;
  float block[kT][D];
  for (int64_t j0 = 0; j0 < n_pad; j0 += kT) {
    for (int jj = 0; jj < kT; ++jj) {
      const int64_t j = j0 + jj;
      if (j < n) {
        load_row<D>(k, b * k.stride[0] + h * k.stride[1] + t.rows[j] * k.stride[2], block[jj]);
        const int64_t v_offset = b * v.stride[0] + h * v.stride[1] + t.rows[j] * v.stride[2];
        if (v_direct) {
          v_rows[j] = static_cast<const float*>(v.data) + v_offset;
        } else {
          load_row<D>(v, v_offset, vv.data() + j * D);
          v_rows[j] = vv.data() + j * D;
        }
      } else {
        std::fill(block[jj], block[jj] + D, 0.0f);
      }
    }
    for (int d = 0; d < D; ++d) {
      float* dst = kt.data() + d * n_pad + j0;
#pragma omp simd
      for (int jj = 0; jj < kT; ++jj) dst[jj] = block[jj][d];
    }
  }
  scores<D>(qs.data(), rows, kt.data(), n_pad, s.data());
  for (int m = 0; m < rows; ++m) {
    float* row = s.data() + m * n_pad;
    bool any = false;
    if (m < num_q) {
      const float* add = t.additive.data() + m * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] += add[j];
      any = softmax_row(row, n);
    }
    if (!any) std::fill(row, row + n_pad, 0.0f);  // padding rows and rows that see nothing: zeros
  }
  weighted_values<D>(s.data(), rows, v_rows.data(), n, n_pad, o.data());
  for (int m = 0; m < num_q; ++m) {
    const int64_t base = b * out.stride[0] + h * out.stride[1] + t.query_cols[m] * out.stride[2];
    for (int d = 0; d < D; ++d) store_elem(out.data, base + d * out.stride[3], out.dtype, o[m * D + d]);
  }
}

// A unit of work: one query of a decode-sized tile, every head (m >= 0), or one head of a whole tile (m < 0).
struct Task {
  int64_t tile;
  int m;
  int64_t head;
};

template <int D>
void run_all(const std::vector<Tile>& tiles, const TensorView& q, const TensorView& k, const TensorView& v,
             TensorView& out) {
  const int64_t heads = q.shape[1];
  const bool fp32_rows = k.dtype == DType::kFloat32 && v.dtype == DType::kFloat32 && k.stride[3] == 1 &&
                         v.stride[3] == 1;
  auto direct = [&](const Tile& t) { return fp32_rows && t.query_cols.size() <= static_cast<size_t>(kDirectMax); };
  // a decode query is one task over all heads: its rows stream through the cache whole (measured faster than
  // splitting the heads over the threads, even when a single query leaves a thread idle)
  std::vector<Task> tasks;
  for (size_t ti = 0; ti < tiles.size(); ++ti)
    if (direct(tiles[ti]))
      for (size_t m = 0; m < tiles[ti].query_cols.size(); ++m)
        tasks.push_back({static_cast<int64_t>(ti), static_cast<int>(m), 0});
  for (int64_t h = 0; h < heads; ++h)  // head-major: consecutive tasks reuse one head's K/V in cache
    for (size_t ti = 0; ti < tiles.size(); ++ti)
      if (!direct(tiles[ti])) tasks.push_back({static_cast<int64_t>(ti), -1, h});
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Task& task = tasks[i];
    if (task.m >= 0) {
      run_query_direct<D>(tiles[task.tile], task.m, q, k, v, out);
    } else {
      run_tile_head<D>(tiles[task.tile], task.head, q, k, v, out);
    }
  }
}

void zero_output(TensorView& out) {
  for (int64_t b = 0; b < out.shape[0]; ++b)
    for (int64_t h = 0; h < out.shape[1]; ++h)
      for (int64_t m = 0; m < out.shape[2]; ++m)
        for (int64_t d = 0; d < out.shape[3]; ++d)
          store_elem(out.data, b * out.stride[0] + h * out.stride[1] + m * out.stride[2] + d * out.stride[3],
                     out.dtype, 0.0f);
}

}  // namespace

// Inputs checked by the entry point (dispatch.cpp: window_attention_cpu).
void window_attention(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out,
                      const QueryInfo& info, const AttentionRule& rule) {
  zero_output(out);  // padded queries and rows that see nothing
  const std::vector<Tile> tiles = plan_tiles(q, info, rule);
  switch (q.shape[3]) {
    case 16: run_all<16>(tiles, q, k, v, out); break;
    case 32: run_all<32>(tiles, q, k, v, out); break;
    case 64: run_all<64>(tiles, q, k, v, out); break;
    default: run_all<128>(tiles, q, k, v, out); break;
  }
}

}  // namespace COGVIDEO_CPU_NS
}  // namespace cogvideo
COGVIDEO_CPU_TARGET_END
