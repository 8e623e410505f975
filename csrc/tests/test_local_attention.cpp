// C++ test of the CPU local-attention kernel without Python: against a naive per-query loop over every
// high- and low-resolution cell (visibility tested cell by cell, double precision), for several geometries
// (edges on every side, ratios 1..3, widths beyond one 16-column vector), fp32, fp16 and bf16 inputs,
// strided (non-contiguous) views, in every CPU kernel variant (instruction set) this build and CPU can run, and
// the errors that name their constraint.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cogvideo/dtype_convert.h"
#include "cogvideo/local_attention.h"
#include "test_util.h"

using namespace cogvideo;
using namespace cogvideo_test;

namespace {

// Naive reference for query cell i of one head: every key cell tested against the rule (local_rules.py).
void reference(const LocalGeometry& g, int D, const float* q, const float* k, const float* v, const float* kl,
               const float* vl, int i, float* out) {
  const int grid = g.grid, lg = g.low_grid, ratio = grid / lg;
  const int r = i / grid, c = i % grid;
  std::vector<double> s;
  std::vector<const float*> vrows;
  auto add = [&](const float* krow, const float* vrow) {
    double dot = 0;
    for (int d = 0; d < D; ++d) dot += static_cast<double>(q[i * D + d]) * krow[d];
    s.push_back(dot / std::sqrt(static_cast<double>(D)));
    vrows.push_back(vrow);
  };
  for (int j = 0; j < grid * grid; ++j) {
    const int dr = j / grid - r, dc = j % grid - c;
    if (std::abs(dr) <= g.window_rows / 2 && std::abs(dc) <= g.window_cols / 2) add(k + j * D, v + j * D);
  }
  for (int j = 0; j < lg * lg; ++j) {
    const int dr = j / lg - r / ratio, dc = j % lg - c / ratio;
    if (std::abs(dr) <= g.low_window / 2 && std::abs(dc) <= g.low_window / 2) add(kl + j * D, vl + j * D);
  }
  const double mx = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (double x : s) sum += std::exp(x - mx);
  for (int d = 0; d < D; ++d) {
    double o = 0;
    for (size_t j = 0; j < s.size(); ++j) o += std::exp(s[j] - mx) / sum * vrows[j][d];
    out[d] = static_cast<float>(o);
  }
}

// A [B, H, rows, D] view into `buf` whose rows are `row_pitch` elements apart (>= D: non-contiguous when >).
TensorView view4(void* data, DType dt, int64_t B, int64_t H, int64_t rows, int64_t D, int64_t row_pitch) {
  TensorView t;
  t.data = data;
  t.dtype = dt;
  t.ndim = 4;
  const int64_t shape[4] = {B, H, rows, D};
  // heads outermost in memory, then batch: dims 0 and 1 are "transposed" relative to a contiguous tensor
  const int64_t stride[4] = {rows * row_pitch, B * rows * row_pitch, row_pitch, 1};
  for (int i = 0; i < 4; ++i) {
    t.shape[i] = shape[i];
    t.stride[i] = stride[i];
  }
  return t;
}

// One typed tensor: logical fp32 values [B][H][rows][D] plus its storage in the kernel's dtype and layout.
struct Tensor {
  std::vector<float> values;     // logical, contiguous [B, H, rows, D], already rounded to the dtype
  std::vector<float> f32;        // storage (fp32)
  std::vector<uint16_t> f16;     // storage (fp16 / bf16)
  TensorView view;
};

Tensor make_tensor(std::mt19937& gen, DType dt, int64_t B, int64_t H, int64_t rows, int D, int64_t pitch, bool random) {
  std::normal_distribution<float> normal;
  Tensor t;
  t.values.resize(B * H * rows * D);
  for (auto& x : t.values) {
    x = random ? normal(gen) : 0.0f;
    if (dt == DType::kFloat16) x = std::round(x * 64.0f) / 64.0f;  // exact in fp16
    if (dt == DType::kBFloat16) x = from_bf16(to_bf16(x));
  }
  const size_t storage = static_cast<size_t>(B * H * rows * pitch);
  void* data;
  if (dt == DType::kFloat32) {
    t.f32.assign(storage, 1e30f);  // padding between rows is poison
    data = t.f32.data();
  } else {
    t.f16.assign(storage, 0x7c00u);  // +inf in fp16, a huge value in bf16: poison
    data = t.f16.data();
  }
  t.view = view4(data, dt, B, H, rows, D, pitch);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < rows; ++i)
        for (int d = 0; d < D; ++d) {
          const float x = t.values[((b * H + h) * rows + i) * D + d];
          const int64_t at = b * t.view.stride[0] + h * t.view.stride[1] + i * t.view.stride[2] + d;
          if (dt == DType::kFloat32) t.f32[at] = x;
          else t.f16[at] = dt == DType::kFloat16 ? to_half_exact(x) : to_bf16(x);
        }
  return t;
}

float read(const Tensor& t, int64_t b, int64_t h, int64_t i, int d) {
  const int64_t at = b * t.view.stride[0] + h * t.view.stride[1] + i * t.view.stride[2] + d;
  switch (t.view.dtype) {
    case DType::kFloat32: return t.f32[at];
    case DType::kFloat16: return from_half(t.f16[at]);
    default: return from_bf16(t.f16[at]);
  }
}

const char* name_of(DType dt) {
  return dt == DType::kFloat32 ? "fp32" : dt == DType::kFloat16 ? "fp16" : "bf16";
}

void run_case(const LocalGeometry& g, DType dt, int D, int64_t pitch_extra, double tol) {
  const int64_t B = 2, H = 3, N = g.num_queries(), M = g.num_low();
  std::mt19937 gen(11 + g.grid + D);
  Tensor q = make_tensor(gen, dt, B, H, N, D, D + pitch_extra, true);
  Tensor k = make_tensor(gen, dt, B, H, N, D, D + 2 * pitch_extra, true);
  Tensor v = make_tensor(gen, dt, B, H, N, D, D, true);
  Tensor kl = make_tensor(gen, dt, B, H, M, D, D + pitch_extra, true);
  Tensor vl = make_tensor(gen, dt, B, H, M, D, D + 3 * pitch_extra, true);
  Tensor out = make_tensor(gen, dt, B, H, N, D, D + pitch_extra, false);
  local_attention_cpu(q.view, k.view, v.view, kl.view, vl.view, out.view, g);
  double worst = 0;
  std::vector<float> expected(D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hn = (b * H + h) * N * D, hm = (b * H + h) * M * D;
      for (int i = 0; i < N; ++i) {
        reference(g, D, q.values.data() + hn, k.values.data() + hn, v.values.data() + hn, kl.values.data() + hm,
                  vl.values.data() + hm, i, expected.data());
        for (int d = 0; d < D; ++d)
          worst = std::max(worst, static_cast<double>(std::fabs(read(out, b, h, i, d) - expected[d])));
      }
    }
  char name[160];
  std::snprintf(name, sizeof(name), "grid %d low %d window %dx%d low %d, d %d, %s%s", g.grid, g.low_grid,
                g.window_rows, g.window_cols, g.low_window, D, name_of(dt), pitch_extra ? ", strided" : "");
  std::printf("%-64s max |err| %.2e\n", name, worst);
  expect(worst <= tol, name);
}

LocalGeometry geometry(int grid, int low_grid, int rows, int cols, int low) {
  LocalGeometry g;
  g.grid = grid;
  g.low_grid = low_grid;
  g.window_rows = rows;
  g.window_cols = cols;
  g.low_window = low;
  return g;
}

template <typename F>
void expect_error(F&& f, const std::string& fragment) {
  try {
    f();
    expect(false, "expected an error naming '" + fragment + "'");
  } catch (const InvalidArgument& e) {
    expect(std::string(e.what()).find(fragment) != std::string::npos,
           "message '" + std::string(e.what()) + "' should name '" + fragment + "'");
  }
}

// The host fp16 / bf16 conversions of the CPU kernels (cogvideo/dtype_convert.h): every half and bf16 value
// round-trips, ties round to even, overflow gives inf, NaN stays a quiet NaN of the same sign.
void check_dtype_convert() {
  using namespace cogvideo::detail;
  auto bits = [](float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    return x;
  };
  int bad = 0;
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const bool half_nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
    const uint16_t back = float_to_half(half_to_float(static_cast<uint16_t>(h)));
    if (half_nan ? back != ((h & 0x8000u) | 0x7e00u) : back != h) ++bad;
    const bool finite = (h & 0x7fffu) < 0x7c00u;
    if (finite && half_to_float(static_cast<uint16_t>(h)) != from_half(static_cast<uint16_t>(h))) ++bad;
    const bool bf_nan = (h & 0x7f80u) == 0x7f80u && (h & 0x7fu);
    const uint16_t bf_back = float_to_bf16(bf16_to_float(static_cast<uint16_t>(h)));
    if (bf_nan ? bf_back != (h | 0x40u) : bf_back != h) ++bad;
  }
  expect(bad == 0, "fp16 / bf16 round trips");
  expect(float_to_half(1.0f + 0x1p-11f) == 0x3c00u && float_to_half(1.0f + 3 * 0x1p-11f) == 0x3c02u,
         "fp16 ties to even");
  expect(float_to_half(0x1p-25f) == 0 && float_to_half(0x1.8p-25f) == 1 && float_to_half(0x1p-24f) == 1,
         "fp16 subnormal rounding");
  expect(float_to_half(65520.0f) == 0x7c00u && float_to_half(65519.0f) == 0x7bffu, "fp16 overflow");
  expect(float_to_half(-INFINITY) == 0xfc00u && float_to_bf16(INFINITY) == 0x7f80u, "inf stays inf");
  expect(float_to_half(-NAN) == 0xfe00u && (float_to_bf16(std::nanf("")) & 0x7fc0u) == 0x7fc0u, "NaN stays quiet NaN");
  expect(float_to_bf16(from_bf16(0x3f80u) + 0x1p-8f) == 0x3f80u && bits(bf16_to_float(0x3f81u)) == 0x3f810000u,
         "bf16 ties to even");
}

}  // namespace

int main() {
  check_dtype_convert();
  const LocalGeometry geometries[] = {
      geometry(6, 2, 9, 5, 5),     // every window clipped on every side; ratio 3
      geometry(12, 4, 9, 5, 5),    // interior queries in both windows
      geometry(8, 4, 3, 5, 3),     // ratio 2, other extents
      geometry(5, 5, 1, 1, 1),     // ratio 1: the query's own key and its low twin
      geometry(21, 7, 9, 5, 5),    // wider than one 16-column vector, grid not a multiple of 16
      geometry(4, 2, 15, 11, 7),   // windows wider than the frame
  };
  for_each_cpu_isa([&] {
    for (const LocalGeometry& g : geometries) {
      run_case(g, DType::kFloat32, 16, 0, 2e-5);
      run_case(g, DType::kBFloat16, 32, 0, 3e-2);
      run_case(g, DType::kFloat16, 16, 0, 4e-3);
    }
    run_case(geometries[1], DType::kFloat32, 64, 8, 2e-5);
    run_case(geometries[4], DType::kFloat16, 128, 16, 4e-3);
    run_case(geometries[2], DType::kFloat32, 256, 0, 2e-5);
  });

  // errors name their constraint
  std::vector<float> buf(2 * 36 * 64, 0.0f);
  const LocalGeometry g = geometry(6, 2, 9, 5, 5);
  auto tv = [&](int64_t rows, int D, DType dt = DType::kFloat32) {
    return view4(buf.data(), dt, 1, 1, rows, D, D);
  };
  TensorView q = tv(36, 16), low = tv(4, 16);
  expect_error([&] { local_attention_cpu(q, q, q, low, low, q, geometry(6, 4, 9, 5, 5)); }, "multiple of low_grid");
  expect_error([&] { local_attention_cpu(q, q, q, low, low, q, geometry(6, 2, 8, 5, 5)); }, "window_rows must be odd");
  expect_error([&] { local_attention_cpu(q, q, q, low, low, q, geometry(6, 2, 9, 5, 4)); }, "low_window must be odd");
  expect_error([&] {
    TensorView q24 = tv(36, 24), low24 = tv(4, 24);
    local_attention_cpu(q24, q24, q24, low24, low24, q24, g);
  }, "head dim 24");
  expect_error([&] { local_attention_cpu(q, q, q, tv(9, 16), low, q, g); }, "k_low must be [B=1, H=1, 4 (low_grid^2)");
  expect_error([&] { local_attention_cpu(q, tv(35, 16), q, low, low, q, g); }, "k must be [B=1, H=1, 36 (grid^2)");
  expect_error([&] { local_attention_cpu(q, q, q, low, tv(4, 16, DType::kBFloat16), q, g); }, "share one dtype");
  TensorView strided = q;
  strided.stride[3] = 2;
  expect_error([&] { local_attention_cpu(q, q, strided, low, low, q, g); }, "v's last dimension must be contiguous");
  TensorView flat = q;
  flat.ndim = 3;
  expect_error([&] { local_attention_cpu(q, q, q, low, low, flat, g); }, "out must be 4-D");

  return finish();
}
