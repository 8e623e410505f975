// C++ test of the batch-invariant CPU linear (cogvideo/linear_rows.h) without Python, in every CPU kernel
// variant this build and CPU can run:
//   * against a double-precision loop (a bound of a few fp32 roundings of sum |x w|);
//   * the documented operation order, bit for bit: a scalar emulation (16 lanes over k, std::fma in the FMA
//     variants, multiply then add in the baseline one, the fixed tree, + bias);
//   * invariance: a row computed alone, at other positions of larger batches, next to rows of zeros or huge
//     values, and with other OpenMP thread counts, gives the same bits;
//   * the input checks name their constraint.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cogvideo/linear_rows.h"
#include "test_util.h"

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace cogvideo;
using namespace cogvideo_test;

namespace {

TensorView view2(const float* data, int64_t rows, int64_t cols, int64_t row_stride) {
  TensorView t;
  t.data = const_cast<float*>(data);
  t.dtype = DType::kFloat32;
  t.ndim = 2;
  t.shape[0] = rows;
  t.shape[1] = cols;
  t.stride[0] = row_stride;
  t.stride[1] = 1;
  return t;
}

TensorView view1(const float* data, int64_t n) {
  TensorView t;
  t.data = const_cast<float*>(data);
  t.dtype = DType::kFloat32;
  t.ndim = 1;
  t.shape[0] = n;
  t.stride[0] = 1;
  return t;
}

// out [M, N] (row stride N) = x [M, K] (row stride sx) . w [N, K]^T (+ bias)
std::vector<float> run(const std::vector<float>& x, int64_t M, int64_t K, int64_t sx, const std::vector<float>& w,
                       int64_t N, const std::vector<float>* bias) {
  std::vector<float> out(static_cast<size_t>(M * N), -1.0f);
  TensorView ov = view2(out.data(), M, N, N);
  const TensorView xv = view2(x.data(), M, K, sx), wv = view2(w.data(), N, K, K);
  TensorView bv;
  if (bias != nullptr) bv = view1(bias->data(), N);
  linear_rows_cpu(ov, xv, wv, bias != nullptr ? &bv : nullptr);
  return out;
}

// The documented order (linear_rows.h) for one element, in scalar code.
float emulate(const float* x, const float* w, int64_t K, const float* bias, bool fma) {
  float acc[16] = {};
  for (int64_t k = 0; k < (K + 15) / 16 * 16; ++k) {
    const float xv = k < K ? x[k] : 0.0f, wv = k < K ? w[k] : 0.0f;
    float& a = acc[k % 16];
    if (fma) {
      a = std::fma(xv, wv, a);
    } else {
      volatile float prod = xv * wv;  // rounded on its own (no contraction)
      a = a + prod;
    }
  }
  float s8[8], s4[4], s2[2];
  for (int l = 0; l < 8; ++l) s8[l] = acc[l] + acc[l + 8];
  for (int l = 0; l < 4; ++l) s4[l] = s8[l] + s8[l + 4];
  for (int l = 0; l < 2; ++l) s2[l] = s4[l] + s4[l + 2];
  const float s = s2[0] + s2[1];
  return bias != nullptr ? s + *bias : s;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

std::string shape_name(int64_t M, int64_t N, int64_t K) {
  return "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
}

void check_shapes(std::mt19937& gen) {
  std::normal_distribution<float> normal;
  const bool fma = std::string(cpu_isa()) != "baseline";
  struct Shape {
    int64_t M, N, K;
  };
  for (const Shape s : {Shape{1, 1, 1}, Shape{1, 7, 5}, Shape{3, 13, 16}, Shape{5, 9, 37}, Shape{13, 33, 100},
                        Shape{8, 16, 2048 + 48 + 3}, Shape{70, 19, 4099}, Shape{1, 17, 1100}, Shape{2, 21, 1500},
                        Shape{2, 5, 0}}) {
    for (const bool with_bias : {false, true}) {
      const int64_t sx = s.K + 3;  // x rows with a gap between them
      std::vector<float> x(static_cast<size_t>(s.M * sx)), w(static_cast<size_t>(s.N * s.K)), b(s.N);
      for (float& v : x) v = normal(gen);
      for (float& v : w) v = normal(gen);
      for (float& v : b) v = normal(gen);
      const std::vector<float> out = run(x, s.M, s.K, sx, w, s.N, with_bias ? &b : nullptr);
      double worst = 0;
      bool order_ok = true;
      for (int64_t i = 0; i < s.M; ++i)
        for (int64_t j = 0; j < s.N; ++j) {
          double exact = with_bias ? b[j] : 0.0, mag = with_bias ? std::fabs(b[j]) : 0.0;
          for (int64_t k = 0; k < s.K; ++k) {
            exact += static_cast<double>(x[i * sx + k]) * w[j * s.K + k];
            mag += std::fabs(static_cast<double>(x[i * sx + k]) * w[j * s.K + k]);
          }
          const float got = out[i * s.N + j];
          // a sum of K terms in fp32 with 16 partial sums: at most (K / 16 + 6) roundings of the magnitude
          const double bound = (static_cast<double>(s.K) / 16 + 6) * 6e-8 * mag + 1e-30;
          worst = std::fmax(worst, std::fabs(got - exact) / bound);
          const float want = emulate(&x[i * sx], &w[j * s.K], s.K, with_bias ? &b[j] : nullptr, fma);
          order_ok = order_ok && std::memcmp(&got, &want, sizeof(float)) == 0;
        }
      const std::string name = shape_name(s.M, s.N, s.K) + (with_bias ? " with bias" : "");
      expect(worst <= 1.0, name + ": within the fp32 bound of the double-precision sum (" + std::to_string(worst) +
                               " of it)");
      expect(order_ok, name + ": bit-identical to the scalar emulation of the documented order");
    }
  }
}

void check_invariance(std::mt19937& gen, int64_t K) {
  std::normal_distribution<float> normal;
  const int64_t N = 37, rows = 5;  // N not a multiple of the blocks
  std::vector<float> w(N * K), b(N), probe(rows * K);
  for (float& v : w) v = normal(gen);
  for (float& v : b) v = normal(gen);
  for (float& v : probe) v = normal(gen);
  // each probe row alone: the reference bits
  std::vector<std::vector<float>> alone(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> x(probe.begin() + r * K, probe.begin() + (r + 1) * K);
    alone[r] = run(x, 1, K, K, w, N, &b);
  }
  for (const int64_t M : {int64_t{2}, int64_t{7}, int64_t{16}, int64_t{33}}) {
    for (const int fill : {0, 1, 2}) {  // other rows: random, zeros, huge
      std::vector<float> x(M * K);
      for (float& v : x) v = fill == 0 ? normal(gen) : fill == 1 ? 0.0f : 1e30f * normal(gen);
      const int64_t pos = (M * 5 + fill) % M;
      const int64_t r = (M + fill) % rows;
      std::memcpy(&x[pos * K], &probe[r * K], K * sizeof(float));
      const std::vector<float> out = run(x, M, K, K, w, N, &b);
      expect(same_bits(&out[pos * N], alone[r].data(), N),
             "K=" + std::to_string(K) + ": row " + std::to_string(r) + " at position " + std::to_string(pos) + " of " + std::to_string(M) +
                 " (other rows " + (fill == 0 ? "random" : fill == 1 ? "zeros" : "huge") + ") == the row alone");
    }
  }
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  std::vector<float> x(33 * K);
  for (float& v : x) v = normal(gen);
  std::vector<float> ww(2000 * K), bb(2000);
  for (float& v : ww) v = normal(gen);
  for (float& v : bb) v = normal(gen);
  omp_set_num_threads(1);
  const std::vector<float> one = run(x, 33, K, K, ww, 2000, &bb);
  omp_set_num_threads(3);
  const std::vector<float> three = run(x, 33, K, K, ww, 2000, &bb);
  omp_set_num_threads(threads);
  expect(same_bits(one.data(), three.data(), one.size()), "1 and 3 OpenMP threads give the same bits");
#endif
}

void check_errors() {
  std::vector<float> x(6), w(6), out(4), b(2);
  auto refused = [&](const std::string& what, const std::string& needle, auto&& call) {
    try {
      call();
      expect(false, what + " is refused");
    } catch (const InvalidArgument& e) {
      expect(std::string(e.what()).find(needle) != std::string::npos,
             what + ": the message names the constraint ('" + needle + "'): " + e.what());
    }
  };
  TensorView ov = view2(out.data(), 2, 2, 2), xv = view2(x.data(), 2, 3, 3), wv = view2(w.data(), 2, 3, 3);
  TensorView bv = view1(b.data(), 2);
  refused("fp16 x", "float32", [&] {
    TensorView h = xv;
    h.dtype = DType::kFloat16;
    linear_rows_cpu(ov, h, wv, &bv);
  });
  refused("w with another K", "K", [&] {
    TensorView w2 = view2(w.data(), 3, 2, 2);
    linear_rows_cpu(ov, xv, w2, nullptr);
  });
  refused("out of another shape", "[M, N]", [&] {
    TensorView o2 = view2(out.data(), 1, 2, 2);
    linear_rows_cpu(o2, xv, wv, nullptr);
  });
  refused("bias of another length", "bias", [&] {
    TensorView b2 = view1(b.data(), 1);
    linear_rows_cpu(ov, xv, wv, &b2);
  });
  refused("a non-contiguous last dimension", "contiguous", [&] {
    TensorView x2 = xv;
    x2.stride[1] = 2;
    x2.stride[0] = 1;
    linear_rows_cpu(ov, x2, wv, nullptr);
  });
  refused("a 3-D x", "2-D", [&] {
    TensorView x3 = xv;
    x3.ndim = 3;
    x3.shape[2] = 1;
    x3.stride[2] = 1;
    linear_rows_cpu(ov, x3, wv, nullptr);
  });
}

}  // namespace

int main() {
  std::mt19937 gen(7);
  for_each_cpu_isa([&] {
    check_shapes(gen);
    check_invariance(gen, 531);   // K not a multiple of 16
    check_invariance(gen, 1500);  // K past one segment
    check_errors();
  });
  return finish();
}
