// The CPU entry points: check the inputs (once, in baseline code), then run the kernels of the instruction-set
// variant chosen for this CPU (cogvideo/cpu_isa.h). CMake defines COGVIDEO_HAVE_CPU_<NAME> for each variant it
// compiled (csrc/cpu/isa.h).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cogvideo/cpu_isa.h"
#include "cogvideo/decode_stack.h"
#include "cogvideo/linear_rows.h"
#include "cogvideo/local_attention.h"
#include "cogvideo/window_attention.h"

namespace cogvideo {

// The kernels of one variant (window_attention_cpu.cpp, local_attention_cpu.cpp, linear_rows_cpu.cpp and
// decode_stack_cpu.cpp in namespace cpu_<name>), called with checked inputs.
#define COGVIDEO_DECLARE_CPU_VARIANT(ns)                                                                      \
  namespace ns {                                                                                              \
  void window_attention(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out,       \
                        const QueryInfo& info, const AttentionRule& rule);                                    \
  void local_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low, \
                       const TensorView& v_low, TensorView& out, const LocalGeometry& geometry);              \
  void linear_rows(TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias);          \
  void decode_stack(const DecodeStack& stack, float* x, int64_t batch, int64_t num_q, const QueryInfo& info,     \
                    const DecodeChannel* channels, int num_channels, int64_t scratch_row, float* logits,        \
                    DecodeTimings* timings);                                                                  \
  }

#ifdef COGVIDEO_HAVE_CPU_NATIVE
COGVIDEO_DECLARE_CPU_VARIANT(cpu_native)
#endif
#ifdef COGVIDEO_HAVE_CPU_AVX512
COGVIDEO_DECLARE_CPU_VARIANT(cpu_avx512)
#endif
#ifdef COGVIDEO_HAVE_CPU_AVX2
COGVIDEO_DECLARE_CPU_VARIANT(cpu_avx2)
#endif
#ifdef COGVIDEO_HAVE_CPU_BASELINE
COGVIDEO_DECLARE_CPU_VARIANT(cpu_baseline)
#endif

namespace {

struct Variant {
  const char* name;
  bool (*supported)();
  decltype(&window_attention_cpu) window;
  decltype(&local_attention_cpu) local;
  decltype(&linear_rows_cpu) linear;
  decltype(&decode_stack_cpu) decode;
};

[[maybe_unused]] bool always() { return true; }

#if defined(COGVIDEO_HAVE_CPU_AVX2) || defined(COGVIDEO_HAVE_CPU_AVX512)  // x86-64, GCC (CMakeLists.txt)
// The psABI levels the variants are compiled for (isa.h); libgcc also checks that the OS saves the AVX and
// AVX-512 register state. GCC before 12 knows no level names: the features it can name instead.
[[maybe_unused]] bool x86_64_v3() {
  __builtin_cpu_init();
#if __GNUC__ >= 12
  return __builtin_cpu_supports("x86-64-v3");
#else
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("sse4.2");
#endif
}
[[maybe_unused]] bool x86_64_v4() {
  __builtin_cpu_init();
#if __GNUC__ >= 12
  return __builtin_cpu_supports("x86-64-v4");
#else
  return x86_64_v3() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
#endif
}
#endif

// Best first.
const Variant kVariants[] = {
#ifdef COGVIDEO_HAVE_CPU_NATIVE
    {"native", always, cpu_native::window_attention, cpu_native::local_attention, cpu_native::linear_rows,
     cpu_native::decode_stack},
#endif
#ifdef COGVIDEO_HAVE_CPU_AVX512
    {"avx512", x86_64_v4, cpu_avx512::window_attention, cpu_avx512::local_attention, cpu_avx512::linear_rows,
     cpu_avx512::decode_stack},
#endif
#ifdef COGVIDEO_HAVE_CPU_AVX2
    {"avx2", x86_64_v3, cpu_avx2::window_attention, cpu_avx2::local_attention, cpu_avx2::linear_rows,
     cpu_avx2::decode_stack},
#endif
#ifdef COGVIDEO_HAVE_CPU_BASELINE
    {"baseline", always, cpu_baseline::window_attention, cpu_baseline::local_attention, cpu_baseline::linear_rows,
     cpu_baseline::decode_stack},
#endif
};
static_assert(sizeof(kVariants) > 0, "no CPU kernel variant compiled (COGVIDEO_HAVE_CPU_<NAME>)");

std::string names(const std::vector<std::string>& list) {
  std::string s;
  for (const std::string& n : list) s += (s.empty() ? "" : ", ") + n;
  return s;
}

const Variant* find(const std::string& name) {
  for (const Variant& v : kVariants)
    if (name == v.name && v.supported()) return &v;
  return nullptr;
}

// The best supported variant, or the one COGVIDEO_CPU_ISA names.
const Variant* pick() {
  const Variant* best = nullptr;
  for (const Variant& v : kVariants)
    if (v.supported()) {
      best = &v;
      break;
    }
  if (best == nullptr) best = &kVariants[sizeof(kVariants) / sizeof(kVariants[0]) - 1];
  const char* asked = std::getenv("COGVIDEO_CPU_ISA");
  if (asked != nullptr && *asked != '\0') {
    if (const Variant* v = find(asked)) return v;
    std::fprintf(stderr, "cogvideo: COGVIDEO_CPU_ISA=%s is not one of the CPU kernel variants this build and CPU "
                 "can run (%s); using %s\n", asked, names(cpu_isas()).c_str(), best->name);
  }
  return best;
}

std::atomic<const Variant*>& current_slot() {
  static std::atomic<const Variant*> slot{pick()};
  return slot;
}

const Variant& current() { return *current_slot().load(std::memory_order_relaxed); }

}  // namespace

const char* cpu_isa() { return current().name; }

std::vector<std::string> cpu_isas() {
  std::vector<std::string> list;
  for (const Variant& v : kVariants)
    if (v.supported()) list.emplace_back(v.name);
  return list;
}

void set_cpu_isa(const std::string& name) {
  const Variant* v = find(name);
  if (v == nullptr)
    throw InvalidArgument("CPU kernel variant '" + name + "' is not one this build and CPU can run (" +
                          names(cpu_isas()) + ")");
  current_slot().store(v, std::memory_order_relaxed);
}

void window_attention_cpu(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out,
                          const QueryInfo& info, const AttentionRule& rule) {
  validate(q, k, v, out, rule);
  if (info.q_index == nullptr || info.text_len == nullptr || info.text_bias == nullptr)
    throw InvalidArgument("q_index, text_len and text_bias must be given");
  for (int64_t b = 0; b < q.shape[0]; ++b)
    if (info.text_len[b] < 1 || info.text_len[b] > rule.text_capacity)
      throw InvalidArgument("text_len[" + std::to_string(b) + "] = " + std::to_string(info.text_len[b]) +
                            " must lie in 1..text_capacity (" + std::to_string(rule.text_capacity) + ")");
  current().window(q, k, v, out, info, rule);
}

void local_attention_cpu(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
                         const TensorView& v_low, TensorView& out, const LocalGeometry& geometry) {
  validate_local(q, k, v, k_low, v_low, out, geometry);
  current().local(q, k, v, k_low, v_low, out, geometry);
}

void validate_linear_rows(const TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias) {
  auto shape = [](const TensorView& t) {
    std::string s = "[";
    for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
    return s + "]";
  };
  struct Named {
    const TensorView* t;
    const char* name;
    int ndim;
    const char* dims;
  };
  const Named all[] = {{&out, "out", 2, "[M, N]"}, {&x, "x", 2, "[M, K]"}, {&w, "w", 2, "[N, K]"},
                       {bias, "bias", 1, "[N]"}};
  for (const Named& n : all) {
    if (n.t == nullptr) continue;
    if (n.t->ndim != n.ndim)
      throw InvalidArgument(std::string("linear_rows: ") + n.name + " must be " + std::to_string(n.ndim) + "-D " +
                            n.dims + ", got " + shape(*n.t));
    if (n.t->dtype != DType::kFloat32 && !(n.t == &w && n.t->dtype == DType::kBFloat16))
      throw InvalidArgument(std::string("linear_rows: ") + n.name +
                            (n.t == &w ? " must be float32 or bfloat16" : " must be float32 (fp32 math)"));
    int64_t numel = 1;
    for (int i = 0; i < n.t->ndim; ++i) {
      if (n.t->shape[i] < 0) throw InvalidArgument(std::string("linear_rows: ") + n.name + " has a negative size");
      numel *= n.t->shape[i];
    }
    if (numel > 0 && n.t->data == nullptr)
      throw InvalidArgument(std::string("linear_rows: ") + n.name + " has a null data pointer");
    if (numel > 0 && n.t->shape[n.ndim - 1] > 1 && n.t->stride[n.ndim - 1] != 1)
      throw InvalidArgument(std::string("linear_rows: ") + n.name + "'s last dimension must be contiguous " +
                            "(stride 1), got stride " + std::to_string(n.t->stride[n.ndim - 1]));
  }
  if (w.shape[1] != x.shape[1])
    throw InvalidArgument("linear_rows: w " + shape(w) + " must be [N, K] with x's K (x is " + shape(x) + ")");
  if (out.shape[0] != x.shape[0] || out.shape[1] != w.shape[0])
    throw InvalidArgument("linear_rows: out " + shape(out) + " must be [M, N] = [" + std::to_string(x.shape[0]) +
                          ", " + std::to_string(w.shape[0]) + "] (x's rows, w's rows)");
  if (bias != nullptr && bias->shape[0] != w.shape[0])
    throw InvalidArgument("linear_rows: bias " + shape(*bias) + " must be [N] with N = " +
                          std::to_string(w.shape[0]) + " (w's rows)");
}

void linear_rows_cpu(TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias) {
  validate_linear_rows(out, x, w, bias);
  current().linear(out, x, w, bias);
}


namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw InvalidArgument("decode_stack: " + what);
}

void require_vector(const TensorView& t, int64_t n, const std::string& name) {
  require(t.data != nullptr && t.dtype == DType::kFloat32 && t.ndim == 1 && t.shape[0] >= n && t.stride[0] == 1,
          name + " must be a contiguous fp32 vector of " + std::to_string(n));
}

void require_matrix(const TensorView& t, int64_t rows, int64_t cols, const std::string& name) {
  require(t.data != nullptr && (t.dtype == DType::kFloat32 || t.dtype == DType::kBFloat16) && t.ndim == 2 &&
              t.shape[0] >= rows && t.shape[1] == cols && t.stride[1] == 1,
          name + " must be an fp32 or bf16 [" + std::to_string(rows) + ", " + std::to_string(cols) +
              "] matrix with a contiguous last dimension");
}

}  // namespace

void validate_decode_stack(const DecodeStack& s) {
  require(s.heads > 0 && s.head_dim > 0 && !s.layers.empty(), "needs heads, a head dim and at least one layer");
  const int64_t h = static_cast<int64_t>(s.heads) * s.head_dim;
  for (size_t i = 0; i < s.layers.size(); ++i) {
    const DecodeLayer& l = s.layers[i];
    const std::string at = "layer " + std::to_string(i) + " ";
    require_vector(l.ln_in_w, h, at + "ln_in_w");
    require_vector(l.ln_in_b, h, at + "ln_in_b");
    require_matrix(l.qkv_w, 3 * h, h, at + "qkv_w");
    require_vector(l.qkv_b, l.qkv_w.shape[0], at + "qkv_b");
    require_matrix(l.base_w, h, h, at + "base_w");
    require_vector(l.base_b, h, at + "base_b");
    require_matrix(l.mixed_w, h, 2 * h, at + "mixed_w");
    require_vector(l.mixed_b, h, at + "mixed_b");
    require_vector(l.ln_third_w, h, at + "ln_third_w");
    require_vector(l.ln_third_b, h, at + "ln_third_b");
    require_vector(l.ln_post_w, h, at + "ln_post_w");
    require_vector(l.ln_post_b, h, at + "ln_post_b");
    require_matrix(l.up_w, l.up_w.shape[0], h, at + "up_w");
    require_vector(l.up_b, l.up_w.shape[0], at + "up_b");
    require_matrix(l.down_w, h, l.up_w.shape[0], at + "down_w");
    require_vector(l.down_b, h, at + "down_b");
    require_vector(l.ln_fourth_w, h, at + "ln_fourth_w");
    require_vector(l.ln_fourth_b, h, at + "ln_fourth_b");
  }
  require_vector(s.final_ln_w, h, "final_ln_w");
  require_vector(s.final_ln_b, h, "final_ln_b");
  require_matrix(s.head, s.head.shape[0], h, "head");
}


void decode_stack_cpu(const DecodeStack& stack, float* x, int64_t batch, int64_t num_q, const QueryInfo& info,
                      const DecodeChannel* channels, int num_channels, int64_t scratch_row, float* logits,
                      DecodeTimings* timings) {
  require(num_channels == 1 || num_channels == 2, "takes 1 or 2 channels");
  require(batch > 0 && num_q > 0 && x != nullptr && channels != nullptr, "needs rows, x and the caches");
  require(3 * static_cast<int64_t>(stack.heads) * stack.head_dim * num_channels <= stack.layers[0].qkv_w.shape[0],
          "the stack's qkv weights hold fewer channels than the step asks for");
  require(info.q_index != nullptr && info.text_len != nullptr && info.text_bias != nullptr,
          "needs q_index, text_len and text_bias");
  current().decode(stack, x, batch, num_q, info, channels, num_channels, scratch_row, logits, timings);
}

}  // namespace cogvideo
