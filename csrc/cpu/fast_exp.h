// exp for x <= 0, shared by the CPU kernels (softmax after subtracting the row max, the decode stack's GeLU):
// Cephes-style range reduction and polynomial, 8e-8 max relative error. Written without branches or
// float-to-int conversions (rounding by the 1.5 * 2^23 trick) so loops calling it vectorise. exp(x < -87) is
// taken as 0. Internal linkage: each kernel variant (isa.h) inlines its own copy with its own instruction set.
#pragma once

#include <cstdint>

namespace cogvideo {
namespace {

inline float exp_nonpositive(float x) {
  const float clamped = x > -87.0f ? x : -87.0f;
  const float magic = 12582912.0f;
  const float n = clamped * 1.44269504088896341f + magic;  // round(x / ln 2) in the low mantissa bits
  const float fx = n - magic;
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
  const int32_t e = __builtin_bit_cast(int32_t, n) - __builtin_bit_cast(int32_t, magic);
  const float scale = __builtin_bit_cast(float, (e + 127) << 23);
  return x < -87.0f ? 0.0f : y * scale;
}

}  // namespace
}  // namespace cogvideo
