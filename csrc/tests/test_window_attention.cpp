// C++ test of the CPU kernel without Python: against a brute-force dense attention over every cache row,
// for each rule (spatial / stage-1 temporal / stage-2 temporal on both parities), fp32 and bf16, in every CPU
// kernel variant (instruction set) this build and CPU can run.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <cstdio>
#include <random>
#include <vector>

#include "cogvideo/rules.h"
#include "cogvideo/window_attention.h"
#include "test_util.h"

using namespace cogvideo;
using namespace cogvideo_test;

namespace {

TensorView view4(void* data, DType dt, int64_t b, int64_t h, int64_t n, int64_t d) {
  TensorView t;
  t.data = data;
  t.dtype = dt;
  t.ndim = 4;
  int64_t shape[4] = {b, h, n, d};
  int64_t stride[4] = {h * n * d, n * d, d, 1};
  for (int i = 0; i < 4; ++i) {
    t.shape[i] = shape[i];
    t.stride[i] = stride[i];
  }
  return t;
}

// Dense reference for one query: softmax over every cache row the rule allows.
void reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v, int64_t S,
               int D, int64_t qi, int text_len, float bias, const AttentionRule& r, int64_t b, int64_t h, int64_t H,
               int64_t Q, int64_t m, float* out) {
  const QueryPos qp = decode_query(qi, text_len, r);
  std::vector<double> s(S, -INFINITY);
  double mx = -INFINITY;
  for (int64_t row = 0; row < S; ++row) {
    bool vis;
    double add = 0;
    if (row < r.text_capacity) {
      vis = row < text_len && sees_text(qp, r.temporal);
      add = text_biased(qp, r.temporal) ? bias : 0.0;
    } else {
      const int64_t rel = row - r.text_capacity;
      vis = sees_frame_key(qp, static_cast<int>(rel / r.frame_len()), cell_of(static_cast<int>(rel % r.frame_len()), r), r);
    }
    if (!vis) continue;
    double dot = 0;
    for (int d = 0; d < D; ++d)
      dot += static_cast<double>(q[((b * H + h) * Q + m) * D + d]) / std::sqrt(static_cast<double>(D)) *
             k[((b * H + h) * S + row) * D + d];
    s[row] = dot + add;
    mx = std::max(mx, s[row]);
  }
  for (int d = 0; d < D; ++d) out[d] = 0;
  if (mx == -INFINITY) return;
  double sum = 0;
  for (int64_t row = 0; row < S; ++row) sum += std::isinf(s[row]) ? 0 : std::exp(s[row] - mx);
  for (int64_t row = 0; row < S; ++row) {
    if (std::isinf(s[row])) continue;
    const double p = std::exp(s[row] - mx) / sum;
    for (int d = 0; d < D; ++d) out[d] += static_cast<float>(p * v[((b * H + h) * S + row) * D + d]);
  }
}

void run_case(const char* name, AttentionRule r, DType dt, double tol) {
  const int64_t B = 2, H = 2;
  const int D = 32;
  const int text_len[2] = {r.text_capacity, 2};
  const float bias[2] = {1.4f, 0.0f};
  const int64_t S = r.cache_len();
  // every stream position of each sequence as a query
  int64_t Q = 0;
  for (int b = 0; b < B; ++b) Q = std::max<int64_t>(Q, text_len[b] + r.frame_len() * r.cache_slots);
  std::vector<int64_t> q_index(B * Q, -1);
  for (int b = 0; b < B; ++b)
    for (int64_t i = 0; i < text_len[b] + r.frame_len() * r.cache_slots; ++i) q_index[b * Q + i] = i;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  std::vector<float> q(B * H * Q * D), k(B * H * S * D), v(B * H * S * D);
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = normal(gen);
  if (dt == DType::kBFloat16)
    for (auto* t : {&q, &k, &v})
      for (auto& x : *t) x = from_bf16(to_bf16(x));  // the reference sees the same rounded inputs
  std::vector<uint16_t> q16, k16, v16, o16(B * H * Q * D);
  std::vector<float> o(B * H * Q * D);
  TensorView qv, kv, vv, ov;
  if (dt == DType::kFloat32) {
    qv = view4(q.data(), dt, B, H, Q, D);
    kv = view4(k.data(), dt, B, H, S, D);
    vv = view4(v.data(), dt, B, H, S, D);
    ov = view4(o.data(), dt, B, H, Q, D);
  } else {
    for (float x : q) q16.push_back(to_bf16(x));
    for (float x : k) k16.push_back(to_bf16(x));
    for (float x : v) v16.push_back(to_bf16(x));
    qv = view4(q16.data(), dt, B, H, Q, D);
    kv = view4(k16.data(), dt, B, H, S, D);
    vv = view4(v16.data(), dt, B, H, S, D);
    ov = view4(o16.data(), dt, B, H, Q, D);
  }
  QueryInfo info;
  info.q_index = q_index.data();
  info.q_index_stride[0] = Q;
  info.q_index_stride[1] = 1;
  info.text_len = text_len;
  info.text_bias = bias;
  window_attention_cpu(qv, kv, vv, ov, info, r);
  double worst = 0;
  std::vector<float> expected(D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t m = 0; m < Q; ++m) {
        const int64_t qi = q_index[b * Q + m];
        if (qi < 0) std::fill(expected.begin(), expected.end(), 0.0f);
        else reference(q, k, v, S, D, qi, text_len[b], bias[b], r, b, h, H, Q, m, expected.data());
        for (int d = 0; d < D; ++d) {
          const int64_t at = ((b * H + h) * Q + m) * D + d;
          const float got = dt == DType::kFloat32 ? o[at] : from_bf16(o16[at]);
          worst = std::max(worst, static_cast<double>(std::fabs(got - expected[d])));
        }
      }
  std::printf("%-40s max |err| %.2e\n", name, worst);
  expect(worst <= tol, name);
}

}  // namespace

int main() {
  AttentionRule base;
  base.grid = 4;
  base.window = 2;
  base.text_capacity = 5;
  AttentionRule stage1_spatial = base, stage1_temporal = base, stage2_spatial = base, stage2_even = base;
  stage1_spatial.num_given = 1;
  stage1_spatial.cache_slots = 5;
  stage1_temporal = stage1_spatial;
  stage1_temporal.temporal = true;
  stage2_spatial.num_given = 3;
  stage2_spatial.cache_slots = 5;
  stage2_spatial.bidirectional_given = true;
  stage2_even = stage2_spatial;
  stage2_even.bidirectional_given = false;
  stage2_even.temporal = true;
  stage2_even.windowed = true;
  AttentionRule stage2_odd = stage2_even;
  stage2_odd.shift = 1;
  AttentionRule first_frame = base;
  first_frame.cache_slots = 1;

  // the rule arithmetic itself, in the real geometry: cyclic windows share (0,0) and (19,19) on odd layers
  AttentionRule real = stage2_odd;
  real.grid = 20;
  real.window = 10;
  real.shift = 5;
  const QueryPos given00 = decode_query(9, 9, real);
  expect(sees_frame_key(given00, 2, cell_of(19 * 20 + 19, real), real), "cyclic window: (0,0) sees (19,19)");
  expect(!sees_frame_key(decode_query(9 + 4 * 20 + 4, 9, real), 1, cell_of(5 * 20 + 5, real), real),
         "(4,4) does not see (5,5)");
  const QueryPos target44 = decode_query(9 + 1200 + 4 * 20 + 4, 9, real);
  expect(sees_frame_key(target44, 2, cell_of(0, real), real) && !sees_frame_key(target44, 2, cell_of(105, real), real),
         "clamped window: (4,4) sees (0,0), not (5,5)");

  for_each_cpu_isa([&] {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      const bool f32 = dt == DType::kFloat32;
      const double tol = f32 ? 2e-5 : 2e-2;
      run_case(f32 ? "first frame spatial fp32" : "first frame spatial bf16", first_frame, dt, tol);
      run_case(f32 ? "stage1 spatial fp32" : "stage1 spatial bf16", stage1_spatial, dt, tol);
      run_case(f32 ? "stage1 temporal fp32" : "stage1 temporal bf16", stage1_temporal, dt, tol);
      run_case(f32 ? "stage2 spatial fp32" : "stage2 spatial bf16", stage2_spatial, dt, tol);
      run_case(f32 ? "stage2 temporal even fp32" : "stage2 temporal even bf16", stage2_even, dt, tol);
      run_case(f32 ? "stage2 temporal odd fp32" : "stage2 temporal odd bf16", stage2_odd, dt, tol);
    }
  });

  // errors name their constraint
  try {
    std::vector<float> buf(64 * 4);
    TensorView t = view4(buf.data(), DType::kFloat32, 1, 1, 2, 24);
    QueryInfo info;
    window_attention_cpu(t, t, t, t, info, base);
    expect(false, "head dim 24 must be refused");
  } catch (const InvalidArgument& e) {
    expect(std::string(e.what()).find("head dim 24") != std::string::npos, "head-dim message");
  }
  return finish();
}
