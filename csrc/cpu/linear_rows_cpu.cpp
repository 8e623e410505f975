// CPU batch-invariant fp32 linear, out[M, N] = x[M, K] . w[N, K]^T (+ bias): the fixed per-element reduction
// order of cogvideo/linear_rows.h, register-blocked. Compiled once per instruction-set variant (isa.h) into
// cogvideo::cpu_<isa>::linear_rows; the entry point linear_rows_cpu (dispatch.cpp) checks the inputs first.
//
// One 16-lane accumulator per output element is kParts vectors of the variant's width: one zmm (avx512), two
// ymm (avx2: lanes 0-7, 8-15), four xmm (baseline SSE2: lanes 0-3, ..., 12-15); a portable array of 16 floats
// elsewhere. The products go through explicit FMA intrinsics (avx2, avx512) or separate multiply and add
// (baseline), and this file is compiled with -ffp-contract=off (CMakeLists.txt), so the compiler cannot fuse or
// split them differently in different instantiations.
//
// Work split: the N weight rows are cut into blocks of kColBlock rows, shared among the OpenMP threads
// statically (each weight row is read from memory once per call). Within a block, the x rows go kRows at a time
// through tile<R, C> (R x rows by C weight rows, R * C accumulators in registers), which walks K in chunks of 16
// and, when K is not a multiple of 16, one last chunk loaded with zeros past K. tile<R, C> for the tail rows or
// columns is the same template with smaller R or C: every element sees the same operations whatever its tile.
// With several row tiles and K past kSegment, K is walked in segments and the accumulators are kept in a small
// per-thread buffer between them (stored and reloaded exactly: the sequence of operations per element does not
// change), so the x rows and the weight block of one segment stay in the L1/L2 cache. The first pass over a
// block (its first row tile) prefetches the thread's next block into L2, so the weight stream from memory
// overlaps the arithmetic: in a decode step every weight matrix comes from memory (the step reads more than the
// caches hold), where this streams 20-25% faster at 2-8 rows; a matrix of a few MB called again and again (a
// benchmark's loop) stays in the caches, where the prefetches cost load slots (~10% at 512 x 512). The tree of the avx2 / avx512 variants sums 8 / 16 accumulators at
// once (vsum_group: the same additions of the same operands, gathered by shuffles).
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cogvideo/linear_rows.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include "isa.h"  // after every other header: the instruction set of this variant applies to the code below

// GCC 12 reads the _mm512_undefined_ps() inside _mm512_shuffle_f32x4 / _mm512_permutexvar_ps as uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The vector path of this variant: 512 (AVX-512F, FMA), 256 (AVX2 + FMA), 128 (SSE2, no FMA), 0 (portable).
#if defined(COGVIDEO_CPU_ISA_AVX512) || (defined(COGVIDEO_CPU_ISA_NATIVE) && defined(__AVX512F__))
#define COGVIDEO_LR_PATH 512
#elif defined(COGVIDEO_CPU_ISA_AVX2) || (defined(COGVIDEO_CPU_ISA_NATIVE) && defined(__AVX2__) && defined(__FMA__))
#define COGVIDEO_LR_PATH 256
#elif defined(__SSE2__)
#define COGVIDEO_LR_PATH 128
#else
#define COGVIDEO_LR_PATH 0
#endif

COGVIDEO_CPU_TARGET_BEGIN
namespace cogvideo {
namespace COGVIDEO_CPU_NS {
namespace {

constexpr int kLanes = 16;  // the partial sums per element (linear_rows.h): the same in every variant

// ---- one 16-lane accumulator: kParts vectors; load, masked load of the last chunk, multiply-add, sum tree ----
#if COGVIDEO_LR_PATH == 512
constexpr int kParts = 1;
using vec = __m512;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vload(const float* p, int) { return _mm512_loadu_ps(p); }
// lanes [0, n) of the chunk at p (n in 1..15), zeros beyond; the masked lanes are not read
inline vec vload_tail(const float* p, int, int n) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
}
inline vec vfma(vec x, vec w, vec acc) { return _mm512_fmadd_ps(x, w, acc); }
inline void in_register(vec& v) { asm("" : "+v"(v)); }
// The tree of 16 accumulators at once: sums[e] = the tree of v[e] (linear_rows.h), each step the same additions
// (low lanes + high lanes) of the same operands as one accumulator at a time, gathered by shuffles.
constexpr int kGroup = 16;
inline void vsum_group(const vec (*v)[kParts], float* sums) {
  __m512 t[8], u[4], r[2];
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p)  // element pairs: [a lanes 0-7 | b lanes 0-7] + [a lanes 8-15 | b lanes 8-15]
    t[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p][0], v[2 * p + 1][0], 0x44),
                         _mm512_shuffle_f32x4(v[2 * p][0], v[2 * p + 1][0], 0xEE));
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q)  // quarter j of u[q]: s4 of element 4q + j
    u[q] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * q], t[2 * q + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * q], t[2 * q + 1], 0xDD));
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h)  // quarter j of r[h]: s2 of elements 8h + j, 8h + 4 + j
    r[h] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * h], u[2 * h + 1], 0x44),
                         _mm512_shuffle_ps(u[2 * h], u[2 * h + 1], 0xEE));
  // lane 4j + m: the sum of element 4m + j; permuted to lane order
  const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(r[0], r[1], 0x88), _mm512_shuffle_ps(r[0], r[1], 0xDD));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(sums, _mm512_permutexvar_ps(order, f));
}
// 4 x 4 tiles: 16 zmm accumulators, 4 weight vectors, 1 x vector (of 32 registers); with one or two x rows (the
// decode of one or two sequences) 8 weight rows per tile, so the weights stream through 8 or 16 accumulators.
constexpr int kRows = 4, kCols = 4, kMaxCols = 8;
constexpr int tile_cols(int rows) { return rows <= 2 ? 8 : 4; }
#elif COGVIDEO_LR_PATH == 256
constexpr int kParts = 2;
using vec = __m256;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vload(const float* p, int part) { return _mm256_loadu_ps(p + 8 * part); }
inline vec vload_tail(const float* p, int part, int n) {
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8 * part), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_maskload_ps(p + 8 * part, mask);  // masked lanes are not read
}
inline vec vfma(vec x, vec w, vec acc) { return _mm256_fmadd_ps(x, w, acc); }
inline void in_register(vec& v) { asm("" : "+x"(v)); }
// The tree of 8 accumulators at once: sums[e] = the tree of v[e] (linear_rows.h), as in the avx512 path.
constexpr int kGroup = 8;
inline void vsum_group(const vec (*v)[kParts], float* sums) {
  __m256 t[8], s4[4], r[2];
#pragma GCC unroll 8
  for (int e = 0; e < 8; ++e) t[e] = _mm256_add_ps(v[e][0], v[e][1]);  // s8
#pragma GCC unroll 4
  for (int p = 0; p < 4; ++p)  // half j of s4[p]: s4 of element 2p + j
    s4[p] = _mm256_add_ps(_mm256_permute2f128_ps(t[2 * p], t[2 * p + 1], 0x20),
                          _mm256_permute2f128_ps(t[2 * p], t[2 * p + 1], 0x31));
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h)  // half j of r[h]: s2 of elements 4h + j, 4h + 2 + j
    r[h] = _mm256_add_ps(_mm256_shuffle_ps(s4[2 * h], s4[2 * h + 1], 0x44),
                         _mm256_shuffle_ps(s4[2 * h], s4[2 * h + 1], 0xEE));
  // lane 4j + m: the sum of element 2m + j; permuted to lane order
  const __m256 f = _mm256_add_ps(_mm256_shuffle_ps(r[0], r[1], 0x88), _mm256_shuffle_ps(r[0], r[1], 0xDD));
  _mm256_storeu_ps(sums, _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}
// 3 x 2 tiles: 12 ymm accumulators, 2 weight vectors, 1 x vector (of 16 registers); 1 x 4 for one x row
constexpr int kRows = 3, kCols = 2, kMaxCols = 4;
constexpr int tile_cols(int rows) { return rows == 1 ? 4 : 2; }
#elif COGVIDEO_LR_PATH == 128
constexpr int kParts = 4;
using vec = __m128;
inline vec vzero() { return _mm_setzero_ps(); }
inline vec vload(const float* p, int part) { return _mm_loadu_ps(p + 4 * part); }
inline vec vload_tail(const float* p, int part, int n) {
  float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < 4 && 4 * part + i < n; ++i) buf[i] = p[4 * part + i];
  return _mm_loadu_ps(buf);
}
inline vec vfma(vec x, vec w, vec acc) { return _mm_add_ps(acc, _mm_mul_ps(x, w)); }  // two roundings
inline void in_register(vec& v) { asm("" : "+x"(v)); }
// The tree of one accumulator: (q0 + q2, q1 + q3) are s8's lanes 0-3 and 4-7.
inline float vsum(const vec (&a)[kParts]) {
  const __m128 s4 = _mm_add_ps(_mm_add_ps(a[0], a[2]), _mm_add_ps(a[1], a[3]));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}
constexpr int kGroup = 1;
inline void vsum_group(const vec (*v)[kParts], float* sums) { sums[0] = vsum(v[0]); }
// 3 x 1 tiles: 12 xmm accumulators, 1 weight and 1 x vector (of 16 registers); 1 x 2 for one x row
constexpr int kRows = 3, kCols = 1, kMaxCols = 2;
constexpr int tile_cols(int rows) { return rows == 1 ? 2 : 1; }
#else
constexpr int kParts = 1;
struct vec {
  float v[kLanes];
};
inline vec vzero() { return vec{}; }
inline vec vload(const float* p, int) {
  vec r;
  std::memcpy(r.v, p, sizeof(r.v));
  return r;
}
inline vec vload_tail(const float* p, int, int n) {
  vec r{};
  std::memcpy(r.v, p, static_cast<size_t>(n) * sizeof(float));
  return r;
}
inline void in_register(vec&) {}
inline vec vfma(const vec& x, const vec& w, vec acc) {
  for (int l = 0; l < kLanes; ++l) acc.v[l] = acc.v[l] + x.v[l] * w.v[l];  // -ffp-contract=off: two roundings
  return acc;
}
inline float vsum(const vec (&a)[kParts]) {
  float s8[8], s4[4], s2[2];
  for (int l = 0; l < 8; ++l) s8[l] = a[0].v[l] + a[0].v[l + 8];
  for (int l = 0; l < 4; ++l) s4[l] = s8[l] + s8[l + 4];
  for (int l = 0; l < 2; ++l) s2[l] = s4[l] + s4[l + 2];
  return s2[0] + s2[1];
}
constexpr int kGroup = 1;
inline void vsum_group(const vec (*v)[kParts], float* sums) { sums[0] = vsum(v[0]); }
constexpr int kRows = 2, kCols = 2, kMaxCols = 2;
constexpr int tile_cols(int) { return 2; }
#endif

constexpr int kWidth = kLanes / kParts;  // floats per vector
static_assert(kWidth * kParts == kLanes, "a 16-lane accumulator is a whole number of vectors");

// bf16 weights: a bf16 is the upper half of the fp32 with the same value, so widening is exact (and the products
// and sums are the fp32 kernel's, on the rounded weights).
#if COGVIDEO_LR_PATH == 512
inline vec vload_bf16(const uint16_t* p, int) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#elif COGVIDEO_LR_PATH == 256
inline vec vload_bf16(const uint16_t* p, int part) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * part));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#elif COGVIDEO_LR_PATH == 128
inline vec vload_bf16(const uint16_t* p, int part) {
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 4 * part));
  return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));  // each value in the upper half
}
#else
inline vec vload_bf16(const uint16_t* p, int) {
  vec r;
  for (int l = 0; l < kLanes; ++l) {
    const uint32_t bits = static_cast<uint32_t>(p[l]) << 16;
    std::memcpy(&r.v[l], &bits, sizeof(float));
  }
  return r;
}
#endif
inline vec vload_bf16_tail(const uint16_t* p, int part, int n) {  // lanes [0, n) of the chunk, zeros beyond
  uint16_t chunk[kLanes] = {};
  std::memcpy(chunk, p, static_cast<size_t>(n) * sizeof(uint16_t));
  return vload_bf16(chunk, part);
}
// A weight chunk as fp32 lanes, by the weights' type.
inline vec wload(const float* p, int part) { return vload(p, part); }
inline vec wload(const uint16_t* p, int part) { return vload_bf16(p, part); }
inline vec wload_tail(const float* p, int part, int n) { return vload_tail(p, part, n); }
inline vec wload_tail(const uint16_t* p, int part, int n) { return vload_bf16_tail(p, part, n); }

// A block of weight rows (a multiple of every tile width; a thread takes a contiguous range of blocks) and the K
// segment the accumulators stay in registers for (a multiple of 16): a block's segment is 8 rows x 4 KB = 32 KB,
// in the L1 cache with the x rows of a tile. Measured on the 2-core Sapphire Rapids VM, one thread: 4 x 4 tiles
// as fast as 6 x 4 and 4 x 6 (within the noise of a shared machine), 8 x 3 and 8 x 2 slower; blocks of 8 and
// segments of 1024 at least as fast as blocks of 4 or 16 and segments of 512 or 2048.
constexpr int kColBlock = 8;
static_assert(kColBlock % kMaxCols == 0 && kColBlock % kCols == 0, "a block is a whole number of column tiles");
constexpr int64_t kSegment = 1024;

struct Problem {
  const float* x;
  int64_t sx;  // x row stride
  const void* w;  // float or bf16 (uint16_t) elements
  int64_t sw;  // w row stride
  const float* bias;  // null: none
  float* out;
  int64_t so;  // out row stride
  int64_t M, N, K;
  int64_t segment;  // K per pass over a block (a multiple of 16)
};

// The partial sums of R x rows (i0 ..) by C weight rows (j0 ..) over k in [k0, k1): from `acc` (or zeros when
// k0 == 0), and stored back to `acc` (acc[r][c] is 16 floats: kParts vectors), or, when k1 == K, summed by the
// tree, plus the bias, into out. k0 is a multiple of 16; k1 is one too, or K.
template <typename W, int R, int C>
void tile(const Problem& p, int64_t i0, int64_t j0, int64_t k0, int64_t k1, float* acc_buf, int64_t prefetch) {
  const float* xr[R];
  const W* wr[C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) xr[r] = p.x + (i0 + r) * p.sx;
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) wr[c] = static_cast<const W*>(p.w) + (j0 + c) * p.sw;
  vec acc[R][C][kParts];
  if (k0 == 0) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
#pragma GCC unroll 4
        for (int q = 0; q < kParts; ++q) acc[r][c][q] = vzero();
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
#pragma GCC unroll 4
        for (int q = 0; q < kParts; ++q) acc[r][c][q] = vload(acc_buf + (r * C + c) * kLanes, q);
  }
  const int64_t full_end = k0 + ((k1 - k0) & ~int64_t{kLanes - 1});
  for (int64_t k = k0; k < full_end; k += kLanes) {
    if (prefetch != 0) {  // weights needed later: fetched into the cache while these are computed
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) __builtin_prefetch(wr[c] + k + prefetch, 0, 2);
    }
#pragma GCC unroll 4
    for (int q = 0; q < kParts; ++q) {
      vec wv[C];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        wv[c] = wload(wr[c] + k, q);
        if constexpr (R > 1) in_register(wv[c]);  // loaded once for R rows (GCC may fold it into each FMA)
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        vec xv = vload(xr[r] + k, q);
        if constexpr (C > 1) in_register(xv);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) acc[r][c][q] = vfma(xv, wv[c], acc[r][c][q]);
      }
    }
  }
  if (full_end < k1) {  // the last chunk of K, zeros past its end
    const int n = static_cast<int>(k1 - full_end);
#pragma GCC unroll 4
    for (int q = 0; q < kParts; ++q) {
      vec wv[C];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) wv[c] = wload_tail(wr[c] + full_end, q, n);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const vec xv = vload_tail(xr[r] + full_end, q, n);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) acc[r][c][q] = vfma(xv, wv[c], acc[r][c][q]);
      }
    }
  }
  if (k1 < p.K) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) std::memcpy(acc_buf + (r * C + c) * kLanes, acc[r][c], kLanes * sizeof(float));
    return;
  }
  constexpr int kElems = R * C, kPadded = (kElems + kGroup - 1) / kGroup * kGroup;
  float sums[kPadded];
#pragma GCC unroll 4
  for (int g = 0; g < kElems; g += kGroup) {
    vec group[kGroup][kParts];
#pragma GCC unroll 16
    for (int e = 0; e < kGroup; ++e)
#pragma GCC unroll 4
      for (int q = 0; q < kParts; ++q) group[e][q] = g + e < kElems ? acc[(g + e) / C][(g + e) % C][q] : vzero();
    vsum_group(group, sums + g);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* o = p.out + (i0 + r) * p.so + j0;
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) o[c] = p.bias != nullptr ? sums[r * C + c] + p.bias[j0 + c] : sums[r * C + c];
  }
}

using TileFn = void (*)(const Problem&, int64_t, int64_t, int64_t, int64_t, float*, int64_t);

template <typename W, int R, int... Cs>
constexpr std::array<TileFn, sizeof...(Cs)> tile_row(std::integer_sequence<int, Cs...>) {
  return {&tile<W, R, (Cs + 1 <= tile_cols(R) ? Cs + 1 : tile_cols(R))>...};  // (wider entries are never used)
}

template <typename W, int... Rs>
constexpr std::array<std::array<TileFn, kMaxCols>, sizeof...(Rs)> tile_table(std::integer_sequence<int, Rs...>) {
  return {tile_row<W, Rs + 1>(std::make_integer_sequence<int, kMaxCols>{})...};
}

// kTiles<W>[R - 1][C - 1] = tile<W, R, C> for C <= tile_cols(R)
template <typename W>
constexpr std::array<std::array<TileFn, kMaxCols>, kRows> kTiles =
    tile_table<W>(std::make_integer_sequence<int, kRows>{});

// Weight rows [j0, j1) for every x row.
template <typename W>
void column_block(const Problem& p, int64_t j0, int64_t j1, float* acc_buf, bool last) {
  for (int64_t k0 = 0; k0 < p.K || k0 == 0; k0 += p.segment) {
    const int64_t k1 = std::min(p.K, k0 + p.segment);
    for (int64_t i0 = 0; i0 < p.M; i0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, p.M - i0));
      const int width = tile_cols(rows);
      float* acc_row = acc_buf + (i0 / kRows) * (kColBlock * kRows * kLanes);  // this row tile's share
      for (int64_t j = j0; j < j1; j += width) {
        const int cols = static_cast<int>(std::min<int64_t>(width, j1 - j));
        float* acc = acc_row + (j - j0) * rows * kLanes;
        // the first pass over this block's rows fetches the thread's next block into the L2 cache
        const int64_t pf = last || i0 != 0 ? 0 : kColBlock * p.sw;
        kTiles<W>[rows - 1][cols - 1](p, i0, j, k0, k1, acc, pf);
      }
    }
    if (k1 >= p.K) break;
  }
}

}  // namespace

void linear_rows(TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias) {
  Problem p;
  p.x = static_cast<const float*>(x.data);
  p.sx = x.stride[0];
  p.w = w.data;
  const bool bf16 = w.dtype == DType::kBFloat16;
  p.sw = w.stride[0];
  p.bias = bias != nullptr ? static_cast<const float*>(bias->data) : nullptr;
  p.out = static_cast<float*>(out.data);
  p.so = out.stride[0];
  p.M = x.shape[0];
  p.N = w.shape[0];
  p.K = x.shape[1];
  if (p.M == 0 || p.N == 0) return;
  const int64_t blocks = (p.N + kColBlock - 1) / kColBlock;
  // The accumulators kept between K segments: kColBlock x kRows elements (16 lanes each) per row tile.
  const int64_t row_tiles = (p.M + kRows - 1) / kRows;
  // One row tile reads each weight once: the whole K in one pass (segments pay off when row tiles share them).
  p.segment = row_tiles > 1 ? kSegment : (p.K + kLanes - 1) / kLanes * kLanes;
  const size_t acc_floats = p.K > p.segment ? static_cast<size_t>(row_tiles * kColBlock * kRows * kLanes) : 0;
  // Small problems run on the calling thread (the split never changes a result, only the time).
  const bool parallel = blocks > 1 && p.M * p.N * p.K >= (int64_t{1} << 18);
#pragma omp parallel if (parallel)
  {
    std::vector<float> acc_buf(acc_floats);
    int team = 1, me = 0;
#ifdef _OPENMP
    team = omp_get_num_threads();
    me = omp_get_thread_num();
#endif
    // a contiguous range of blocks per thread (so a thread's next block is its own: prefetched during this one)
    const int64_t b0 = blocks * me / team, b1 = blocks * (me + 1) / team;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kColBlock, j1 = std::min(p.N, (b + 1) * kColBlock);
      if (bf16) {
        column_block<uint16_t>(p, j0, j1, acc_buf.data(), b + 1 == b1);
      } else {
        column_block<float>(p, j0, j1, acc_buf.data(), b + 1 == b1);
      }
    }
  }
}

}  // namespace COGVIDEO_CPU_NS
}  // namespace cogvideo
COGVIDEO_CPU_TARGET_END
