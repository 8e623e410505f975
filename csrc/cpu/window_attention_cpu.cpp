// CPU window attention: queries tiled by shared key set, K/V packed per tile, fp32 math, OpenMP.
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

#include "cogvideo/rules.h"
#include "cogvideo/window_attention.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cogvideo {
namespace {

constexpr int kTileM = 16;  // queries per tile
constexpr int kRowBlock = 4;  // query rows per micro-kernel pass
constexpr int kKeyBlock = 64;  // keys per micro-kernel pass (QK^T)

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero in half
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 + (113 - e)
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN stays NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

inline float load_elem(const void* base, int64_t offset, DType dt) {
  switch (dt) {
    case DType::kFloat32: return static_cast<const float*>(base)[offset];
    case DType::kFloat16: return half_to_float(static_cast<const uint16_t*>(base)[offset]);
    default: return bf16_to_float(static_cast<const uint16_t*>(base)[offset]);
  }
}

inline void store_elem(void* base, int64_t offset, DType dt, float value) {
  switch (dt) {
    case DType::kFloat32: static_cast<float*>(base)[offset] = value; break;
    case DType::kFloat16: static_cast<uint16_t*>(base)[offset] = float_to_half(value); break;
    default: static_cast<uint16_t*>(base)[offset] = float_to_bf16(value); break;
  }
}

// exp for x <= 0 (softmax after subtracting the row max): Cephes-style range reduction and polynomial,
// ~1e-7 relative error, branch-free so the softmax loop vectorises. exp(x < -87) is taken as 0.
inline float exp_nonpositive(float x) {
  const float clamped = std::max(x, -87.0f);
  const float fx = std::floor(clamped * 1.44269504088896341f + 0.5f);
  float r = clamped - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const int32_t e = static_cast<int32_t>(fx) + 127;
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < -87.0f ? 0.0f : y * scale;
}

struct Tile {
  int64_t batch = 0;
  int num_queries = 0;
  int64_t query_slot[kTileM];          // position of each query in q_index's second dimension
  std::vector<int64_t> rows;           // cache rows of the union of visible keys
  std::vector<float> additive;         // [kTileM, rows.size()]: 0, text bias, or -inf
};

// Tiles of queries sharing a rule group, and their key rows and additive terms.
std::vector<Tile> plan_tiles(const TensorView& q, const QueryInfo& info, const AttentionRule& rule) {
  const int64_t batch = q.shape[0], num_q = q.shape[2];
  const int frame_len = rule.frame_len();
  std::vector<std::vector<Tile>> per_batch(batch);
#pragma omp parallel for schedule(dynamic)
  for (int64_t b = 0; b < batch; ++b) {
    const int text_len = info.text_len[b];
    std::vector<QueryPos> pos(num_q);
    std::vector<int64_t> order;
    std::vector<int64_t> group(num_q);
    for (int64_t i = 0; i < num_q; ++i) {
      const int64_t qi = info.q_index[b * info.q_index_stride[0] + i * info.q_index_stride[1]];
      pos[i] = decode_query(qi, text_len, rule.num_given, rule.grid);
      if (pos[i].kind == kPadding) continue;
      group[i] = query_group(pos[i], rule);
      order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return group[a] < group[c]; });
    std::vector<Tile>& tiles = per_batch[b];
    std::vector<uint8_t> seen(rule.num_slots * static_cast<size_t>(frame_len));
    for (size_t start = 0; start < order.size();) {
      Tile t;
      t.batch = b;
      size_t end = start;
      while (end < order.size() && end - start < static_cast<size_t>(kTileM) && group[order[end]] == group[order[start]])
        ++end;
      t.num_queries = static_cast<int>(end - start);
      bool any_text = false;
      std::fill(seen.begin(), seen.end(), 0);
      for (int m = 0; m < t.num_queries; ++m) {
        const QueryPos& qp = pos[order[start + m]];
        t.query_slot[m] = order[start + m];
        any_text = any_text || sees_text(qp, rule.temporal);
        if (qp.kind <= kText) continue;
        for (int s = 0; s < rule.num_slots; ++s)
          for (int p = 0; p < frame_len; ++p)
            if (!seen[s * frame_len + p] && sees_frame_key(qp, s, p, rule)) seen[s * frame_len + p] = 1;
      }
      if (any_text)
        for (int j = 0; j < text_len; ++j) t.rows.push_back(j);
      for (int s = 0; s < rule.num_slots; ++s)
        for (int p = 0; p < frame_len; ++p)
          if (seen[s * frame_len + p]) t.rows.push_back(rule.text_capacity + static_cast<int64_t>(s) * frame_len + p);
      const size_t n = t.rows.size();
      t.additive.assign(kTileM * n, -std::numeric_limits<float>::infinity());
      for (int m = 0; m < t.num_queries; ++m) {
        const QueryPos& qp = pos[t.query_slot[m]];
        const float bias = text_biased(qp, rule.temporal) ? info.text_bias[b] : 0.0f;
        for (size_t j = 0; j < n; ++j) {
          const int64_t row = t.rows[j];
          bool visible;
          float value = 0.0f;
          if (row < rule.text_capacity) {
            visible = sees_text(qp, rule.temporal);
            value = bias;
          } else {
            const int64_t rel = row - rule.text_capacity;
            visible = sees_frame_key(qp, static_cast<int>(rel / frame_len), static_cast<int>(rel % frame_len), rule);
          }
          if (visible) t.additive[m * n + j] = value;
        }
      }
      tiles.push_back(std::move(t));
      start = end;
    }
  }
  std::vector<Tile> all;
  for (auto& tiles : per_batch)
    for (auto& t : tiles) all.push_back(std::move(t));
  return all;
}

// S[m, j] = sum_d qs[m, d] * kt[d, j] for kRowBlock rows at a time, kKeyBlock keys per pass.
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

// O[m, :] = sum_j p[m, j] * v[j, :] for kRowBlock rows at a time.
template <int D>
void weighted_values(const float* p, int rows, const float* v, int64_t n, int64_t n_pad, float* o) {
  for (int m0 = 0; m0 < rows; m0 += kRowBlock) {
    float acc[kRowBlock][D] = {};
    for (int64_t j = 0; j < n; ++j) {
      const float* vrow = v + j * D;
      for (int r = 0; r < kRowBlock; ++r) {
        const float w = p[(m0 + r) * n_pad + j];
#pragma omp simd
        for (int d = 0; d < D; ++d) acc[r][d] += w * vrow[d];
      }
    }
    std::memcpy(o + m0 * D, acc, sizeof(acc));
  }
}

template <int D>
void run_tile_head(const Tile& t, int64_t h, const TensorView& q, const TensorView& k, const TensorView& v,
                   TensorView& out, const int64_t* q_cols) {
  const int64_t n = static_cast<int64_t>(t.rows.size());
  const int64_t n_pad = (n + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  const int rows = (t.num_queries + kRowBlock - 1) / kRowBlock * kRowBlock;
  const float sqrt_d = std::sqrt(static_cast<float>(D));  // scores are (q / sqrt(d)) . k, as the original
  thread_local std::vector<float> qs, kt, vv, s, o;
  qs.assign(static_cast<size_t>(rows) * D, 0.0f);
  kt.assign(static_cast<size_t>(D) * n_pad, 0.0f);
  vv.resize(static_cast<size_t>(n) * D);
  s.resize(static_cast<size_t>(rows) * n_pad);
  o.resize(static_cast<size_t>(rows) * D);
  const int64_t b = t.batch;
  for (int m = 0; m < t.num_queries; ++m) {
    const int64_t base = b * q.stride[0] + h * q.stride[1] + q_cols[m] * q.stride[2];
    for (int d = 0; d < D; ++d) qs[m * D + d] = load_elem(q.data, base + d * q.stride[3], q.dtype) / sqrt_d;
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t kb = b * k.stride[0] + h * k.stride[1] + t.rows[j] * k.stride[2];
    const int64_t vb = b * v.stride[0] + h * v.stride[1] + t.rows[j] * v.stride[2];
    for (int d = 0; d < D; ++d) {
      kt[d * n_pad + j] = load_elem(k.data, kb + d * k.stride[3], k.dtype);
      vv[j * D + d] = load_elem(v.data, vb + d * v.stride[3], v.dtype);
    }
  }
  scores<D>(qs.data(), rows, kt.data(), n_pad, s.data());
  for (int m = 0; m < t.num_queries; ++m) {
    float* row = s.data() + m * n_pad;
    const float* add = t.additive.data() + m * n;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      row[j] += add[j];
      mx = std::max(mx, row[j]);
    }
    if (mx == -std::numeric_limits<float>::infinity()) {  // sees nothing: zeros
      std::fill(row, row + n_pad, 0.0f);
      continue;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      const float e = exp_nonpositive(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  }
  for (int m = t.num_queries; m < rows; ++m) std::fill(s.data() + m * n_pad, s.data() + (m + 1) * n_pad, 0.0f);
  weighted_values<D>(s.data(), rows, vv.data(), n, n_pad, o.data());
  for (int m = 0; m < t.num_queries; ++m) {
    const int64_t base = b * out.stride[0] + h * out.stride[1] + q_cols[m] * out.stride[2];
    for (int d = 0; d < D; ++d) store_elem(out.data, base + d * out.stride[3], out.dtype, o[m * D + d]);
  }
}

template <int D>
void run_all(const std::vector<Tile>& tiles, const TensorView& q, const TensorView& k, const TensorView& v,
             TensorView& out) {
  const int64_t heads = q.shape[1];
  const int64_t tasks = static_cast<int64_t>(tiles.size()) * heads;
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {
    const Tile& t = tiles[task / heads];
    run_tile_head<D>(t, task % heads, q, k, v, out, t.query_slot);
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

void window_attention_cpu(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out,
                          const QueryInfo& info, const AttentionRule& rule) {
  validate(q, k, v, out, rule);
  if (info.q_index == nullptr || info.text_len == nullptr || info.text_bias == nullptr)
    throw InvalidArgument("q_index, text_len and text_bias must be given");
  for (int64_t b = 0; b < q.shape[0]; ++b)
    if (info.text_len[b] < 1 || info.text_len[b] > rule.text_capacity)
      throw InvalidArgument("text_len[" + std::to_string(b) + "] = " + std::to_string(info.text_len[b]) +
                            " must lie in 1..text_capacity (" + std::to_string(rule.text_capacity) + ")");
  zero_output(out);  // padded queries and rows that see nothing
  const std::vector<Tile> tiles = plan_tiles(q, info, rule);
  switch (q.shape[3]) {
    case 16: run_all<16>(tiles, q, k, v, out); break;
    case 32: run_all<32>(tiles, q, k, v, out); break;
    case 64: run_all<64>(tiles, q, k, v, out); break;
    default: run_all<128>(tiles, q, k, v, out); break;
  }
}

}  // namespace cogvideo
