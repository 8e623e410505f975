// Host-side fp16 / bf16 <-> fp32 conversions (bit exact, no compiler or CPU half support needed) and
// load / store of one element of a TensorView dtype as fp32. Shared by the CPU kernels.
//
//   half_to_float / bf16_to_float  exact (fp16 subnormals normalised, inf and NaN kept)
//   float_to_half / float_to_bf16  round to nearest even; overflow gives inf, inf stays inf, NaN gives a
//                                  quiet NaN of the same sign
//
// float_to_bf16 has no branches, so loops over it vectorise (#pragma omp simd).
//
// The functions are `static` (internal linkage in every translation unit, as when each kernel file had its own
// copy in an anonymous namespace): with external linkage GCC inlines and clones the kernels' row loaders
// differently, and the CPU kernels ran 5-8% slower (single thread, -O3 -march=native).
#pragma once

#include <cstdint>
#include <cstring>

#include "cogvideo/window_attention.h"  // DType

namespace cogvideo {
namespace detail {

static inline uint32_t float_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}

static inline float float_from_bits(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal half: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {  // inf, NaN (payload kept)
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return float_from_bits(bits);
}

static inline uint16_t float_to_half(float f) {  // round to nearest even
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN -> quiet NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow (or inf) -> inf
  if (abs < 0x38800000u) {  // half subnormal or zero
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
  uint32_t half = (abs - 0x38000000u) >> 13;
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

static inline float bf16_to_float(uint16_t h) {
  return float_from_bits(static_cast<uint32_t>(h) << 16);
}

static inline uint16_t float_to_bf16(float f) {  // round to nearest even
  const uint32_t x = float_bits(f);
  const bool nan = (x & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(nan ? ((x >> 16) | 0x40u) : rounded);  // NaN stays (quiet) NaN
}

// Element `offset` (in elements) of a tensor of dtype `dt`, as fp32.
static inline float load_elem(const void* base, int64_t offset, DType dt) {
  switch (dt) {
    case DType::kFloat32: return static_cast<const float*>(base)[offset];
    case DType::kFloat16: return half_to_float(static_cast<const uint16_t*>(base)[offset]);
    default: return bf16_to_float(static_cast<const uint16_t*>(base)[offset]);
  }
}

// Stores an fp32 value as element `offset` of a tensor of dtype `dt` (round to nearest even).
static inline void store_elem(void* base, int64_t offset, DType dt, float value) {
  switch (dt) {
    case DType::kFloat32: static_cast<float*>(base)[offset] = value; break;
    case DType::kFloat16: static_cast<uint16_t*>(base)[offset] = float_to_half(value); break;
    default: static_cast<uint16_t*>(base)[offset] = float_to_bf16(value); break;
  }
}

}  // namespace detail
}  // namespace cogvideo
