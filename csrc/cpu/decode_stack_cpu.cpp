// The CPU decode forward in one call (cogvideo/decode_stack.h). Compiled once per instruction-set variant (isa.h)
// into cogvideo::cpu_<isa>::decode_stack; the entry point decode_stack_cpu (dispatch.cpp) checks the inputs
// first. The layers' linears go through linear_rows_cpu and their attention through window_attention_cpu (each
// with its checks and its own OpenMP loop, in the same variant); LayerNorm, GeLU, the residual adds and the K/V
// cache writes are here, vectorised with the variant's instructions, GeLU over the threads when a step has many
// rows.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cogvideo/decode_stack.h"
#include "cogvideo/linear_rows.h"
#include "fast_exp.h"

#include "isa.h"  // after every other header: the instruction set of this variant applies to the code below

COGVIDEO_CPU_TARGET_BEGIN
namespace cogvideo {
namespace COGVIDEO_CPU_NS {
namespace {

TensorView matrix(float* data, int64_t rows, int64_t cols, int64_t row_stride) {
  TensorView t;
  t.data = data;
  t.dtype = DType::kFloat32;
  t.ndim = 2;
  t.shape[0] = rows;
  t.shape[1] = cols;
  t.stride[0] = row_stride;
  t.stride[1] = 1;
  return t;
}

TensorView first_rows(TensorView t, int64_t rows) {  // the leading rows of a weight [N, K] or a bias [N]
  t.shape[0] = rows;
  return t;
}

// [batch, heads, n, head_dim] view of rows of `row_width` floats, head `h` of row r at data + r * row_width + h * d.
TensorView heads_view(float* data, int64_t batch, int heads, int64_t n, int head_dim, int64_t row_width,
                      int64_t batch_stride) {
  TensorView t;
  t.data = data;
  t.dtype = DType::kFloat32;
  t.ndim = 4;
  t.shape[0] = batch;
  t.shape[1] = heads;
  t.shape[2] = n;
  t.shape[3] = head_dim;
  t.stride[0] = batch_stride;
  t.stride[1] = head_dim;
  t.stride[2] = row_width;
  t.stride[3] = 1;
  return t;
}

const float* f32(const TensorView& t) { return static_cast<const float*>(t.data); }

// y = LayerNorm(x) * w + b over n elements (mean and variance in double, two passes, vector lanes summed in a
// fixed order); `add`: y += that instead.
void layer_norm_row(const float* x, float* y, const TensorView& w, const TensorView& b, int64_t n, float eps,
                    bool add) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += x[j];
  const double mean = sum / static_cast<double>(n);
  double sq = 0.0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < n; ++j) {
    const double c = x[j] - mean;
    sq += c * c;
  }
  const float rstd = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(n) + eps));
  const float m = static_cast<float>(mean);
  const float* wp = f32(w);
  const float* bp = f32(b);
  if (add) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = y[j] + ((x[j] - m) * rstd * wp[j] + bp[j]);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - m) * rstd * wp[j] + bp[j];
  }
}

void layer_norm(const float* x, float* y, const TensorView& w, const TensorView& b, int64_t rows, int64_t n,
                float eps, bool add) {
  for (int64_t r = 0; r < rows; ++r) layer_norm_row(x + r * n, y + r * n, w, b, n, eps, add);
}

// SwissArmyTransformer's GeLU, 0.5 x (1 + tanh(y)) with y = sqrt(2 / pi) x (1 + 0.044715 x^2), in place, as
// x / (1 + exp(-2y)): with t = exp(-2|y|) <= 1, x / (1 + t) for y >= 0 and x t / (1 + t) below (no overflow, no
// cancellation in 1 + tanh).
inline float gelu_tanh_one(float v) {
  const float y = 0.7978845608028654f * v * (1.0f + 0.044715f * v * v);
  const float t = exp_nonpositive(-2.0f * std::fabs(y));
  const float num = y >= 0.0f ? v : v * t;
  return num / (1.0f + t);
}

void gelu_tanh(float* x, int64_t n) {
  constexpr int64_t kParallelFrom = 1 << 15;  // elements: below this the threads' start-up costs more
  if (n >= kParallelFrom) {
#pragma omp parallel for simd schedule(static)
    for (int64_t j = 0; j < n; ++j) x[j] = gelu_tanh_one(x[j]);
  } else {  // (not an if clause: GCC 12 runs `parallel for simd if (false)` unvectorised, 10x slower)
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) x[j] = gelu_tanh_one(x[j]);
  }
}

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void linear(float* out, int64_t out_stride, const float* x, int64_t rows, int64_t k, int64_t x_stride,
            const TensorView& w, const TensorView* bias, DecodeTimings& timings) {
  const Clock::time_point t0 = Clock::now();
  TensorView o = matrix(out, rows, w.shape[0], out_stride);
  const TensorView in = matrix(const_cast<float*>(x), rows, k, x_stride);
  linear_rows_cpu(o, in, w, bias);
  timings.linear += since(t0);
}

}  // namespace

// Inputs checked by the entry point (dispatch.cpp: decode_stack_cpu).
void decode_stack(const DecodeStack& s, float* x, int64_t batch, int64_t num_q, const QueryInfo& info,
                  const DecodeChannel* channels, int num_channels, int64_t scratch_row, float* logits,
                  DecodeTimings* timings_out) {
  const Clock::time_point start = Clock::now();
  DecodeTimings timings;
  const int ch = num_channels;
  const int64_t h = static_cast<int64_t>(s.heads) * s.head_dim, m_rows = batch * num_q;
  const int64_t qkv_width = 3 * h * ch, ffn = s.layers[0].up_w.shape[0];
  const int text_capacity = channels[0].rules[0].text_capacity;

  std::vector<int64_t> rows(m_rows);  // each query's cache row
  std::vector<char> mixes(m_rows);    // frame queries of a 2-channel pass: the mixed output projection
  bool any_mixed = false, any_base = false;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < num_q; ++i) {
      const int64_t q = info.q_index[b * info.q_index_stride[0] + i * info.q_index_stride[1]];
      const int64_t text_len = info.text_len[b];
      const bool frame = q >= text_len;
      rows[b * num_q + i] = q < 0 ? scratch_row : frame ? q - text_len + text_capacity : q;
      const bool mixed = ch == 2 && frame;
      mixes[b * num_q + i] = mixed;
      any_mixed = any_mixed || mixed;
      any_base = any_base || !mixed;
    }

  thread_local std::vector<float> a, qkv, ctx, out, base, up;
  a.resize(m_rows * h);
  qkv.resize(m_rows * qkv_width);
  ctx.resize(m_rows * ch * h);
  out.resize(m_rows * h);
  up.resize(m_rows * ffn);
  for (size_t l = 0; l < s.layers.size(); ++l) {
    const DecodeLayer& w = s.layers[l];
    layer_norm(x, a.data(), w.ln_in_w, w.ln_in_b, m_rows, h, s.eps, false);
    const TensorView qkv_b = first_rows(w.qkv_b, qkv_width);
    linear(qkv.data(), qkv_width, a.data(), m_rows, h, h, first_rows(w.qkv_w, qkv_width), &qkv_b, timings);
    for (int c = 0; c < ch; ++c) {
      const DecodeChannel& cc = channels[c];
      float* k_layer = cc.k + static_cast<int64_t>(l) * cc.layer_stride;
      float* v_layer = cc.v + static_cast<int64_t>(l) * cc.layer_stride;
      for (int64_t m = 0; m < m_rows; ++m) {
        const float* src = qkv.data() + m * qkv_width + c * 3 * h;
        const int64_t dst = (m / num_q) * cc.batch_stride + rows[m] * h;
        std::memcpy(k_layer + dst, src + h, h * sizeof(float));
        std::memcpy(v_layer + dst, src + 2 * h, h * sizeof(float));
      }
      const AttentionRule& rule = cc.rules[l % 2];
      const TensorView q = heads_view(qkv.data() + c * 3 * h, batch, s.heads, num_q, s.head_dim, qkv_width,
                                      num_q * qkv_width);
      const TensorView k = heads_view(k_layer, batch, s.heads, rule.cache_len(), s.head_dim, h, cc.batch_stride);
      const TensorView v = heads_view(v_layer, batch, s.heads, rule.cache_len(), s.head_dim, h, cc.batch_stride);
      TensorView o = heads_view(ctx.data() + c * h, batch, s.heads, num_q, s.head_dim, ch * h, num_q * ch * h);
      const Clock::time_point t0 = Clock::now();
      window_attention_cpu(q, k, v, o, info, rule);
      timings.attention += since(t0);
    }
    if (any_mixed) linear(out.data(), h, ctx.data(), m_rows, 2 * h, 2 * h, w.mixed_w, &w.mixed_b, timings);
    if (any_base) {
      float* target = any_mixed ? (base.resize(m_rows * h), base.data()) : out.data();
      linear(target, h, ctx.data(), m_rows, h, ch * h, w.base_w, &w.base_b, timings);
      if (any_mixed)
        for (int64_t m = 0; m < m_rows; ++m)
          if (!mixes[m]) std::memcpy(out.data() + m * h, target + m * h, h * sizeof(float));
    }
    layer_norm(out.data(), x, w.ln_third_w, w.ln_third_b, m_rows, h, s.eps, true);
    layer_norm(x, a.data(), w.ln_post_w, w.ln_post_b, m_rows, h, s.eps, false);
    linear(up.data(), ffn, a.data(), m_rows, h, h, w.up_w, &w.up_b, timings);
    gelu_tanh(up.data(), m_rows * ffn);
    linear(out.data(), h, up.data(), m_rows, ffn, ffn, w.down_w, &w.down_b, timings);
    layer_norm(out.data(), x, w.ln_fourth_w, w.ln_fourth_b, m_rows, h, s.eps, true);
  }
  if (logits != nullptr) {
    layer_norm(x, a.data(), s.final_ln_w, s.final_ln_b, m_rows, h, s.eps, false);
    linear(logits, s.head.shape[0], a.data(), m_rows, h, h, s.head, nullptr, timings);
  }
  timings.total = since(start);
  if (timings_out != nullptr) *timings_out = timings;
}

}  // namespace COGVIDEO_CPU_NS
}  // namespace cogvideo
COGVIDEO_CPU_TARGET_END
