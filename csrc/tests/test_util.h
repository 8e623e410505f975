// Helpers shared by the C++ kernel tests: failure counting and reference fp16 / bf16 round trips (written
// independently of the kernels' own conversions, cogvideo/dtype_convert.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cogvideo/cpu_isa.h"

namespace cogvideo_test {

inline int failures = 0;
inline std::string context;  // the CPU kernel variant under test, in every failure message

inline void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL%s: %s\n", context.empty() ? "" : (" [" + context + "]").c_str(), what.c_str());
    ++failures;
  }
}

// Runs `body` once per CPU kernel variant this build and CPU can run (cogvideo/cpu_isa.h), each selected in
// turn; then restores the variant chosen at start-up. Checks the dispatch itself on the way.
template <typename Body>
void for_each_cpu_isa(Body body) {
  const std::string chosen = cogvideo::cpu_isa();
  const std::vector<std::string> isas = cogvideo::cpu_isas();
  const char* asked = std::getenv("COGVIDEO_CPU_ISA");
  expect(!isas.empty() && (isas.front() == chosen || (asked != nullptr && *asked != '\0')),
         "the variant chosen at start-up (" + chosen + ") is the best listed, as COGVIDEO_CPU_ISA is not set");
  for (const std::string& isa : isas) {
    cogvideo::set_cpu_isa(isa);
    expect(cogvideo::cpu_isa() == isa, "set_cpu_isa(" + isa + ") selects it");
    context = isa;
    std::printf("CPU kernel variant %s\n", isa.c_str());
    body();
  }
  context.clear();
  cogvideo::set_cpu_isa(chosen);
  try {
    cogvideo::set_cpu_isa("no-such-isa");
    expect(false, "set_cpu_isa refuses an unknown variant");
  } catch (const std::invalid_argument& e) {
    expect(std::string(e.what()).find("no-such-isa") != std::string::npos, "the refusal names the variant");
  }
}

// The summary line and the process exit status.
inline int finish() {
  if (failures) std::printf("%d failure(s)\n", failures);
  else std::printf("all passed\n");
  return failures ? 1 : 0;
}

// fp32 -> bf16, round to nearest even (finite inputs).
inline uint16_t to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

inline float from_bf16(uint16_t h) {
  const uint32_t x = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// fp16 of values that are exactly representable normal halves or zero (inputs are rounded to 1/64 first).
inline uint16_t to_half_exact(float f) {
  if (f == 0.0f) return 0;
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t e = ((x >> 23) & 0xffu) - 127 + 15;
  return static_cast<uint16_t>(sign | (e << 10) | ((x & 0x7fffffu) >> 13));
}

inline float from_half(uint16_t h) {
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -24)
                           : std::ldexp(1.0f + m / 1024.0f, static_cast<int>(e) - 15);
  return (h & 0x8000u) ? -mag : mag;
}

}  // namespace cogvideo_test
