// exp for x <= 0, shared by the CPU kernels (softmax after subtracting the row max, the decode stack's GeLU; the
// local attention's vectors use exp_core):
// Cephes-style range reduction and polynomial, 8e-8 max relative error. Written without branches or
// float-to-int conversions (rounding by the 1.5 * 2^23 trick) so loops calling it vectorise. exp(x < -87) is
// taken as 0. Internal linkage: each kernel variant (isa.h) inlines its own copy with its own instruction set.
#pragma once

#include <cstdint>

namespace cogvideo {
namespace {

constexpr float kExpMagic = 12582912.0f;  // 1.5 * 2^23: x + magic rounds x to an integer in the low mantissa bits

// The shared core for a scalar or a vector type F (GCC vector extensions): for `clamped` in [-87, 0], y with
// exp(clamped) = y * 2^k, and n = k + kExpMagic as a float (its bits minus the magic's are k; each caller scales
// by 2^k with its own bit casts).
template <class F>
inline F exp_core(const F& clamped, F& n) {
  n = clamped * 1.44269504088896341f + kExpMagic;  // round(x / ln 2)
  const F fx = n - kExpMagic;
  F r = clamped - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  const F z = r * r;
  F y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  return y * z + r + 1.0f;
}

inline float exp_nonpositive(float x) {
  float n;
  const float y = exp_core(x > -87.0f ? x : -87.0f, n);
  const int32_t e = __builtin_bit_cast(int32_t, n) - __builtin_bit_cast(int32_t, kExpMagic);
  const float scale = __builtin_bit_cast(float, (e + 127) << 23);
  return x < -87.0f ? 0.0f : y * scale;
}

}  // namespace
}  // namespace cogvideo
