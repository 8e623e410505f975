// CPU super-resolution local attention: queries vectorised L columns at a time (L = kLanes, the register width
// of the instruction set: 16 with AVX-512, 8 with AVX2, 4 with SSE2), K staged as transposed panels.
// Compiled once per instruction-set variant (isa.h) into cogvideo::cpu_<isa>::local_attention; the entry point
// local_attention_cpu (dispatch.cpp) checks the inputs and calls the variant chosen for this CPU.
//
// The key at window offset (dr, dc) of the query (r, c) is the high-resolution cell (r + dr, c + dc), and the
// low-resolution one is (r / ratio + dr, c / ratio + dc). So for L queries (r, c0 .. c0 + L - 1) of one frame
// row and one offset, the keys are L consecutive columns of one key row -- after expanding every
// low-resolution row to the high-resolution width (column x holds low cell x / ratio), the low offset dc is a
// shift of dc * ratio columns, with the same in-frame test 0 <= c + shift < grid.
//
// Per task (one batch entry, one head, a block of query rows), in fp32:
//   1. K rows are staged as "panels" [d][pad | grid columns | pad] (transposed, zero pads), lazily as the
//      query row advances; V rows are read in place (fp32) or staged row-major in fp32 (fp16/bf16).
//   2. Per query row: q transposed to [d][columns] and scaled by 1 / sqrt(d); per key row (panel) and block
//      of L columns the scores of the row's offsets are L-lane FMAs over d (one vector per offset), with
//      -inf from a column mask outside the frame; one softmax per column over all offsets of both windows.
//   3. out[c] = sum over the in-frame offsets of p * V row (D-wide vectors), a few adjacent columns at a time
//      so each V row they share is loaded once; normalised and written in the input dtype.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // the F16C conversions, used where the variant has them (COGVIDEO_CPU_HAS_F16C)
#endif

#include "cogvideo/dtype_convert.h"
#include "cogvideo/local_attention.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include "isa.h"  // after every other header: the instruction set of this variant applies to the code below

// The L-lane vector types are internal (anonymous namespace): no ABI crosses them, whatever the ISA.
#pragma GCC diagnostic ignored "-Wpsabi"

COGVIDEO_CPU_TARGET_BEGIN
#include "fast_exp.h"  // inside the variant's target region: its template runs on this variant's vectors

namespace cogvideo {
namespace COGVIDEO_CPU_NS {
namespace {

// query columns per vector: the variant's register width (isa.h), 16 with AVX-512, 8 with AVX2, 4 with SSE2
constexpr int kLanes = COGVIDEO_CPU_VECTOR_BYTES / static_cast<int>(sizeof(float));
constexpr int kMaxShifts = 8;  // window offsets of one key row per micro-kernel pass

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf loadu(const float* p) {
  vf r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}

inline void storeu(float* p, const vf& x) { std::memcpy(p, &x, sizeof(x)); }

inline vf splat(float x) { return vf{} + x; }

inline vf vmax(const vf& a, const vf& b) { return a > b ? a : b; }

// exp(x) for x <= 0 (scores minus the row max), L lanes: Cephes-style range reduction and polynomial, about
// 1e-7 relative error; x < -87 (and -inf, NaN) gives 0.
inline vf exp_nonpositive(const vf& x) {
  const vf lo = splat(-87.0f);
  vf n;
  const vf y = exp_core(x > lo ? x : lo, n);
  const vi e = (vi)n - (vi)splat(kExpMagic);  // vector casts reinterpret the bits
  const vf scale = (vf)((e + 127) << 23);
  return x > lo ? y * scale : vf{};
}

// ---- dtype conversion (cogvideo/dtype_convert.h) ------------------------------------------------------

using detail::bf16_to_float;
using detail::float_to_bf16;
using detail::float_to_half;
using detail::half_to_float;

// n contiguous elements of a row to fp32.
inline void load_row(const void* base, int64_t offset, DType dt, int n, float* dst) {
  switch (dt) {
    case DType::kFloat32:
      std::memcpy(dst, static_cast<const float*>(base) + offset, static_cast<size_t>(n) * sizeof(float));
      break;
    case DType::kBFloat16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
#pragma omp simd
      for (int i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
      break;
    }
    default: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      int i = 0;
#if COGVIDEO_CPU_HAS_F16C
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
      for (; i < n; ++i) dst[i] = half_to_float(src[i]);
      break;
    }
  }
}

// n fp32 values into a contiguous row of the output dtype (round to nearest even).
inline void store_row(void* base, int64_t offset, DType dt, int n, const float* src) {
  switch (dt) {
    case DType::kFloat32:
      std::memcpy(static_cast<float*>(base) + offset, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case DType::kBFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + offset;
#pragma omp simd
      for (int i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
      break;
    }
    default: {
      uint16_t* dst = static_cast<uint16_t*>(base) + offset;
      int i = 0;
#if COGVIDEO_CPU_HAS_F16C
      for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
      for (; i < n; ++i) dst[i] = float_to_half(src[i]);
      break;
    }
  }
}

// ---- the kernel --------------------------------------------------------------------------------------------

// Call-wide constants.
struct Plan {
  int grid = 0, low_grid = 0, ratio = 1;
  int hr = 0, hc = 0, hl = 0;  // clipped half-extents: high rows, high columns, low window
  int pad = 0;                 // panel columns left and right of the frame (the largest column shift)
  int width_q = 0;             // query columns rounded up to whole vectors
  int width = 0;               // panel row length: pad + width_q + pad
  float scale = 1.0f;          // 1 / sqrt(d)
  std::vector<float> mask;     // [width]: 0 for in-frame columns, -inf outside; index pad + x
};

// One window offset of a query row: where its K panel is, its column shift, where its V rows are.
struct Key {
  const float* panel;  // K panel of the key row, at column 0 of the frame (i.e. pad elements in)
  int shift;           // panel column = query column + shift (dc, or dc * ratio for low-resolution keys)
  int64_t v_offset;    // V element offset of the key row's cell 0
};

// The offsets of one query row: high-resolution ones first (key row by key row, 2 hc + 1 each), then
// low-resolution ones (2 hl + 1 per key row); scores [key][width_q].
struct QueryRow {
  int r = 0;
  std::vector<Key> keys;
  int num_high = 0;
  float* q_t = nullptr;     // [D][width_q], scaled
  float* scores = nullptr;  // [keys][width_q]
};

struct Workspace {
  std::vector<float> k_high, k_low, v_high, v_low, q_t, row, scores;
  QueryRow row_state;
};

struct Args {
  const TensorView *q, *k, *v, *k_low, *v_low;
  TensorView* out;
  Plan plan;
};

inline int64_t head_offset(const TensorView& t, int64_t b, int64_t h) { return b * t.stride[0] + h * t.stride[1]; }

// `count` consecutive cells (rows of d elements) starting at element `offset` into dst as fp32 [count][d].
template <int D>
void load_cells(const TensorView& t, int64_t offset, int count, float* dst) {
  for (int i = 0; i < count; ++i) load_row(t.data, offset + i * t.stride[2], t.dtype, D, dst + i * D);
}

// A transposed, zero-padded K panel [D][width] from `count` row-major cells; cell i fills the panel columns
// i * ratio .. i * ratio + ratio - 1.
template <int D>
void make_panel(const float* cells, int count, const Plan& p, int ratio, float* panel) {
  for (int d = 0; d < D; ++d) {
    float* o = panel + static_cast<int64_t>(d) * p.width;
    std::fill(o, o + p.pad, 0.0f);
    std::fill(o + p.pad + p.grid, o + p.width, 0.0f);
  }
  float* base = panel + p.pad;
  if (ratio == 1) {
    for (int i = 0; i < count; ++i)
      for (int d = 0; d < D; ++d) base[static_cast<int64_t>(d) * p.width + i] = cells[i * D + d];
  } else {
    for (int i = 0; i < count; ++i)
      for (int d = 0; d < D; ++d) {
        float* o = base + static_cast<int64_t>(d) * p.width + i * ratio;
        for (int t = 0; t < ratio; ++t) o[t] = cells[i * D + d];
      }
  }
}

// Scores of NS offsets of one key row for L query columns: sc[s * width_q + lane] = q_t . panel shifted by
// keys[s].shift, + the column mask (-inf outside the frame).
template <int D, int NS>
inline void scores_block(const float* q_t, int width_q, const float* panel, int width, const Key* keys,
                         const float* mask, float* sc) {
  int shift[NS];
  vf acc[NS];
  for (int s = 0; s < NS; ++s) {
    shift[s] = keys[s].shift;
    acc[s] = vf{};
  }
  for (int d = 0; d < D; ++d) {
    const vf qv = loadu(q_t + static_cast<int64_t>(d) * width_q);
    const float* row = panel + static_cast<int64_t>(d) * width;
    for (int s = 0; s < NS; ++s) acc[s] += qv * loadu(row + shift[s]);
  }
  for (int s = 0; s < NS; ++s) storeu(sc + s * width_q, acc[s] + loadu(mask + shift[s]));
}

template <int D>
void scores_dispatch(int ns, const float* q_t, int width_q, const float* panel, int width, const Key* keys,
                     const float* mask, float* sc) {
  switch (ns) {
    case 1: scores_block<D, 1>(q_t, width_q, panel, width, keys, mask, sc); break;
    case 2: scores_block<D, 2>(q_t, width_q, panel, width, keys, mask, sc); break;
    case 3: scores_block<D, 3>(q_t, width_q, panel, width, keys, mask, sc); break;
    case 4: scores_block<D, 4>(q_t, width_q, panel, width, keys, mask, sc); break;
    case 5: scores_block<D, 5>(q_t, width_q, panel, width, keys, mask, sc); break;
    case 6: scores_block<D, 6>(q_t, width_q, panel, width, keys, mask, sc); break;
    case 7: scores_block<D, 7>(q_t, width_q, panel, width, keys, mask, sc); break;
    default: scores_block<D, kMaxShifts>(q_t, width_q, panel, width, keys, mask, sc); break;
  }
}

// Scores of a whole query row, a key row (panel) at a time: the panel stays in L1 across column blocks.
template <int D>
void score_row(const Plan& p, QueryRow& qr) {
  const int num_keys = static_cast<int>(qr.keys.size());
  for (int i = 0; i < num_keys;) {
    int j = i + 1;
    while (j < num_keys && j - i < kMaxShifts && qr.keys[j].panel == qr.keys[i].panel) ++j;
    for (int c0 = 0; c0 < p.grid; c0 += kLanes)
      scores_dispatch<D>(j - i, qr.q_t + c0, p.width_q, qr.keys[i].panel + c0, p.width, &qr.keys[i],
                         p.mask.data() + p.pad + c0, qr.scores + static_cast<int64_t>(i) * p.width_q + c0);
    i = j;
  }
}

// Where P V reads its V rows.
struct VSource {
  const float* high;
  int64_t high_cell;  // elements between consecutive cells
  const float* low;
  int64_t low_cell;
};

// out for the query columns c .. c + G - 1 of one row (scores already turned into unnormalised probabilities,
// inv = 1 / their sums): every V row in the union of the G windows is loaded once and accumulated into each
// column whose window holds it. Not inlined: on its own the accumulators stay in registers.
template <int D, int G>
__attribute__((noinline)) void pv_group(const Plan& p, const QueryRow& qr, const VSource& vs, int c, const float* inv,
                                        TensorView& out, int64_t out_offset) {
  constexpr int J = D / kLanes;
  const int wq = p.width_q;
  vf acc[G][J];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < J; ++j) acc[g][j] = vf{};
  const int num_keys = static_cast<int>(qr.keys.size());
  {
    const int n = 2 * p.hc + 1;
    const int x0 = std::max(0, c - p.hc), x1 = std::min(p.grid - 1, c + G - 1 + p.hc);
    for (int e = 0; e < qr.num_high; e += n) {
      const float* vr = vs.high + qr.keys[e].v_offset;
      // w[s * wq + g]: probability of column c + g at offset s
      const float* w = qr.scores + static_cast<int64_t>(e + p.hc) * wq + c;
      for (int x = x0; x <= x1; ++x) {
        vf vv[J];
        const float* row = vr + x * vs.high_cell;
        for (int j = 0; j < J; ++j) vv[j] = loadu(row + j * kLanes);
        for (int g = 0; g < G; ++g) {
          const int s = x - c - g;
          if (s < -p.hc || s > p.hc) continue;
          const vf wv = splat(w[s * wq + g]);
          for (int j = 0; j < J; ++j) acc[g][j] += wv * vv[j];
        }
      }
    }
  }
  {
    const int n = 2 * p.hl + 1;
    const int x0 = std::max(0, c / p.ratio - p.hl), x1 = std::min(p.low_grid - 1, (c + G - 1) / p.ratio + p.hl);
    for (int e = qr.num_high; e < num_keys; e += n) {
      const float* vr = vs.low + qr.keys[e].v_offset;
      const float* w = qr.scores + static_cast<int64_t>(e + p.hl) * wq + c;
      for (int x = x0; x <= x1; ++x) {
        vf vv[J];
        const float* row = vr + x * vs.low_cell;
        for (int j = 0; j < J; ++j) vv[j] = loadu(row + j * kLanes);
        for (int g = 0; g < G; ++g) {
          const int s = x - (c + g) / p.ratio;
          if (s < -p.hl || s > p.hl) continue;
          const vf wv = splat(w[s * wq + g]);
          for (int j = 0; j < J; ++j) acc[g][j] += wv * vv[j];
        }
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    float o[D];
    const vf scale = splat(inv[g]);
    for (int j = 0; j < J; ++j) storeu(o + j * kLanes, acc[g][j] * scale);
    store_row(out.data, out_offset + (c + g) * out.stride[2], out.dtype, D, o);
  }
}

// Softmax of every column of a scored row (in place: unnormalised probabilities), then out = P V.
template <int D>
void finish_row(const Plan& p, QueryRow& qr, const VSource& vs, TensorView& out, int64_t row_offset) {
  const int num_keys = static_cast<int>(qr.keys.size()), wq = p.width_q;
  // columns per P V pass: their D / kLanes accumulators each take half the vector registers at most
  // (with AVX-512: 4 columns for d <= 64, 2 for 128, 1 for 256)
  constexpr int kGroup = std::max(1, COGVIDEO_CPU_VECTOR_REGS / 2 / (D / kLanes));
  for (int c0 = 0; c0 < p.grid; c0 += kLanes) {
    float* sc = qr.scores + c0;
    vf mx = splat(-std::numeric_limits<float>::infinity());
    for (int e = 0; e < num_keys; ++e) mx = vmax(mx, loadu(sc + static_cast<int64_t>(e) * wq));
    vf sum = vf{};
    for (int e = 0; e < num_keys; ++e) {
      const vf pe = exp_nonpositive(loadu(sc + static_cast<int64_t>(e) * wq) - mx);
      storeu(sc + static_cast<int64_t>(e) * wq, pe);
      sum += pe;
    }
    float inv[kLanes];
    storeu(inv, splat(1.0f) / sum);  // sum >= 1 on frame columns (the row max contributes exp(0))
    const int c1 = std::min(p.grid, c0 + kLanes);
    int c = c0;
    for (; c + kGroup <= c1; c += kGroup) pv_group<D, kGroup>(p, qr, vs, c, inv + (c - c0), out, row_offset);
    for (; c < c1; ++c) pv_group<D, 1>(p, qr, vs, c, inv + (c - c0), out, row_offset);
  }
}

// Query rows [r0, r1) of head (b, h).
template <int D>
void run_block(const Args& a, int64_t b, int64_t h, int r0, int r1, Workspace& ws) {
  const Plan& p = a.plan;
  const TensorView &q = *a.q, &k = *a.k, &v = *a.v, &kl = *a.k_low, &vl = *a.v_low;
  TensorView& out = *a.out;
  const int grid = p.grid, lg = p.low_grid, ratio = p.ratio, wq = p.width_q;
  const int64_t panel_size = static_cast<int64_t>(D) * p.width;

  // key rows this block touches
  const int y0 = std::max(0, r0 - p.hr), y1 = std::min(grid, r1 + p.hr);
  const int ly0 = std::max(0, r0 / ratio - p.hl), ly1 = std::min(lg, (r1 - 1) / ratio + p.hl + 1);
  ws.k_high.resize(static_cast<size_t>(y1 - y0) * panel_size);
  ws.k_low.resize(static_cast<size_t>(ly1 - ly0) * panel_size);
  ws.row.resize(static_cast<size_t>(grid) * D);
  ws.q_t.resize(static_cast<size_t>(D) * wq);
  const size_t max_keys =
      static_cast<size_t>(2 * p.hr + 1) * (2 * p.hc + 1) + static_cast<size_t>(2 * p.hl + 1) * (2 * p.hl + 1);
  ws.scores.resize(max_keys * wq);
  ws.row_state.q_t = ws.q_t.data();
  ws.row_state.scores = ws.scores.data();

  // V: fp32 rows in place, else staged row-major in fp32
  VSource vs;
  int vh_row0, vl_row0;  // frame row at vs.high / vs.low
  if (v.dtype == DType::kFloat32) {
    vs = {static_cast<const float*>(v.data) + head_offset(v, b, h), v.stride[2],
          static_cast<const float*>(vl.data) + head_offset(vl, b, h), vl.stride[2]};
    vh_row0 = vl_row0 = 0;
  } else {
    ws.v_high.resize(static_cast<size_t>(y1 - y0) * grid * D);
    ws.v_low.resize(static_cast<size_t>(ly1 - ly0) * lg * D);
    vs = {ws.v_high.data(), D, ws.v_low.data(), D};
    vh_row0 = y0;
    vl_row0 = ly0;
  }
  const bool stage_v = v.dtype != DType::kFloat32;

  const int64_t kh_off = head_offset(k, b, h), kl_off = head_offset(kl, b, h);
  const int64_t vh_off = head_offset(v, b, h), vl_off = head_offset(vl, b, h);
  const int64_t q_off = head_offset(q, b, h), o_off = head_offset(out, b, h);
  int next_high = y0, next_low = ly0;  // first key rows not staged yet

  // stages the key rows query row r is the first to need
  auto stage = [&](int r) {
    for (const int last = std::min(y1, r + p.hr + 1); next_high < last; ++next_high) {
      const int y = next_high;
      load_cells<D>(k, kh_off + static_cast<int64_t>(y) * grid * k.stride[2], grid, ws.row.data());
      make_panel<D>(ws.row.data(), grid, p, 1, ws.k_high.data() + (y - y0) * panel_size);
      if (stage_v)
        load_cells<D>(v, vh_off + static_cast<int64_t>(y) * grid * v.stride[2], grid,
                      ws.v_high.data() + static_cast<int64_t>(y - y0) * grid * D);
    }
    for (const int last = std::min(ly1, r / ratio + p.hl + 1); next_low < last; ++next_low) {
      const int y = next_low;
      load_cells<D>(kl, kl_off + static_cast<int64_t>(y) * lg * kl.stride[2], lg, ws.row.data());
      make_panel<D>(ws.row.data(), lg, p, ratio, ws.k_low.data() + (y - ly0) * panel_size);
      if (stage_v)
        load_cells<D>(vl, vl_off + static_cast<int64_t>(y) * lg * vl.stride[2], lg,
                      ws.v_low.data() + static_cast<int64_t>(y - ly0) * lg * D);
    }
  };

  // q of row r transposed and scaled (pad columns zero), and the row's window offsets
  auto prepare = [&](QueryRow& qr, int r) {
    qr.r = r;
    load_cells<D>(q, q_off + static_cast<int64_t>(r) * grid * q.stride[2], grid, ws.row.data());
    for (int d = 0; d < D; ++d) {
      float* o = qr.q_t + static_cast<int64_t>(d) * wq;
      for (int x = 0; x < grid; ++x) o[x] = ws.row[x * D + d] * p.scale;
      std::fill(o + grid, o + wq, 0.0f);
    }
    qr.keys.clear();
    for (int y = std::max(0, r - p.hr); y <= std::min(grid - 1, r + p.hr); ++y)
      for (int dc = -p.hc; dc <= p.hc; ++dc)
        qr.keys.push_back({ws.k_high.data() + (y - y0) * panel_size + p.pad, dc,
                           static_cast<int64_t>(y - vh_row0) * grid * vs.high_cell});
    qr.num_high = static_cast<int>(qr.keys.size());
    const int lr = r / ratio;
    for (int y = std::max(0, lr - p.hl); y <= std::min(lg - 1, lr + p.hl); ++y)
      for (int dc = -p.hl; dc <= p.hl; ++dc)
        qr.keys.push_back({ws.k_low.data() + (y - ly0) * panel_size + p.pad, dc * ratio,
                           static_cast<int64_t>(y - vl_row0) * lg * vs.low_cell});
  };

  QueryRow& qr = ws.row_state;
  for (int r = r0; r < r1; ++r) {
    stage(r);
    prepare(qr, r);
    score_row<D>(p, qr);
    finish_row<D>(p, qr, vs, out, o_off + static_cast<int64_t>(r) * grid * out.stride[2]);
  }
}

template <int D>
void run_all(const Args& a) {
  const Plan& p = a.plan;
  const int64_t heads = a.q->shape[1], bh = a.q->shape[0] * heads;
  if (bh == 0) return;
#ifdef _OPENMP
  const int64_t threads = omp_get_max_threads();
#else
  const int64_t threads = 1;
#endif
  // split each head into blocks of query rows only when batch x heads alone cannot keep the threads busy
  const int64_t want = std::min<int64_t>(p.grid, (4 * threads + bh - 1) / bh);
  const int rows_per_block = static_cast<int>((p.grid + want - 1) / want);
  const int blocks = (p.grid + rows_per_block - 1) / rows_per_block;
  const int64_t tasks = bh * blocks;
#pragma omp parallel
  {
    thread_local Workspace ws;  // kept across calls: no page faults on every call
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t head = task / blocks;
      const int blk = static_cast<int>(task % blocks);
      const int r0 = blk * rows_per_block, r1 = std::min(p.grid, r0 + rows_per_block);
      run_block<D>(a, head / heads, head % heads, r0, r1, ws);
    }
  }
}

}  // namespace

// Inputs checked by the entry point (dispatch.cpp: local_attention_cpu).
void local_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
                     const TensorView& v_low, TensorView& out, const LocalGeometry& geometry) {
  Args a{&q, &k, &v, &k_low, &v_low, &out, Plan{}};
  Plan& p = a.plan;
  p.grid = geometry.grid;
  p.low_grid = geometry.low_grid;
  p.ratio = geometry.ratio();
  p.hr = geometry.half_rows();
  p.hc = geometry.half_cols();
  p.hl = geometry.half_low();
  p.pad = std::max(p.hc, p.hl * p.ratio);
  p.width_q = (p.grid + kLanes - 1) / kLanes * kLanes;
  p.width = p.pad + p.width_q + p.pad;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(q.shape[3])));
  p.mask.assign(p.width, -std::numeric_limits<float>::infinity());
  std::fill(p.mask.begin() + p.pad, p.mask.begin() + p.pad + p.grid, 0.0f);
  switch (q.shape[3]) {
    case 16: run_all<16>(a); break;
    case 32: run_all<32>(a); break;
    case 64: run_all<64>(a); break;
    case 128: run_all<128>(a); break;
    default: run_all<256>(a); break;
  }
}

}  // namespace COGVIDEO_CPU_NS
}  // namespace cogvideo
COGVIDEO_CPU_TARGET_END
