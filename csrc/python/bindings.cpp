// pybind11 bindings of the cogvideo kernels: tensors cross as (data pointer, dtype, shape, strides).
// No libtorch: the Python side (kernels/csrc_ops.py) passes torch tensors' pointers and strides.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cogvideo/cpu_isa.h"
#include "cogvideo/decode_stack.h"
#include "cogvideo/linear_rows.h"
#include "cogvideo/local_attention.h"
#include "cogvideo/window_attention.h"

#ifndef COGVIDEO_VERSION
#define COGVIDEO_VERSION "unknown"
#endif

namespace py = pybind11;
using cogvideo::AttentionRule;
using cogvideo::DType;
using cogvideo::InvalidArgument;
using cogvideo::QueryInfo;
using cogvideo::TensorView;

namespace {

using TensorArg = std::tuple<uintptr_t, std::string, std::vector<int64_t>, std::vector<int64_t>>;

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  throw InvalidArgument("dtype " + name + " is not supported (float32, float16 or bfloat16)");
}

// A view of `ndim` dimensions (the kernel's own checks then name what each tensor must be).
TensorView view(const TensorArg& arg, const char* name, int ndim = 4) {
  const auto& [ptr, dtype, shape, strides] = arg;
  if (shape.size() != strides.size() || shape.size() > 4)
    throw InvalidArgument(std::string(name) + " must have one stride per dimension and at most 4 dimensions");
  if (static_cast<int>(shape.size()) != ndim)
    throw InvalidArgument(std::string(name) + " must be a " + std::to_string(ndim) + "-D tensor, got " +
                          std::to_string(shape.size()) + "-D");
  TensorView t;
  t.data = reinterpret_cast<void*>(ptr);
  t.dtype = parse_dtype(dtype);
  t.ndim = ndim;
  for (int i = 0; i < ndim; ++i) {
    t.shape[i] = shape[i];
    t.stride[i] = strides[i];
  }
  return t;
}

// (temporal, windowed, bidirectional_given, num_given, cache_slots, grid, window, shift, text_capacity)
using RuleArg = std::tuple<bool, bool, bool, int, int, int, int, int, int>;

AttentionRule make_rule(const RuleArg& arg) {
  AttentionRule rule;
  std::tie(rule.temporal, rule.windowed, rule.bidirectional_given, rule.num_given, rule.cache_slots, rule.grid,
           rule.window, rule.shift, rule.text_capacity) = arg;
  return rule;
}

QueryInfo query_info(uintptr_t q_index, int64_t q_index_stride0, int64_t q_index_stride1, uintptr_t text_len,
                     uintptr_t text_bias) {
  QueryInfo info;
  info.q_index = reinterpret_cast<const int64_t*>(q_index);
  info.q_index_stride[0] = q_index_stride0;
  info.q_index_stride[1] = q_index_stride1;
  info.text_len = reinterpret_cast<const int32_t*>(text_len);
  info.text_bias = reinterpret_cast<const float*>(text_bias);
  return info;
}

void window_attention(const std::string& device, const TensorArg& q, const TensorArg& k, const TensorArg& v,
                      const TensorArg& out, uintptr_t q_index, int64_t q_index_stride0, int64_t q_index_stride1,
                      uintptr_t text_len, uintptr_t text_bias, bool temporal, bool windowed,
                      bool bidirectional_given, int num_given, int cache_slots, int grid, int window, int shift,
                      int text_capacity, uintptr_t stream) {
  TensorView qv = view(q, "q"), kv = view(k, "k"), vv = view(v, "v"), ov = view(out, "out");
  const QueryInfo info = query_info(q_index, q_index_stride0, q_index_stride1, text_len, text_bias);
  const AttentionRule rule =
      make_rule({temporal, windowed, bidirectional_given, num_given, cache_slots, grid, window, shift, text_capacity});
  py::gil_scoped_release release;
  if (device == "cpu") {
    cogvideo::window_attention_cpu(qv, kv, vv, ov, info, rule);
  } else if (device == "cuda") {
    cogvideo::window_attention_cuda(qv, kv, vv, ov, info, rule, reinterpret_cast<void*>(stream));
  } else {
    throw InvalidArgument("device must be 'cpu' or 'cuda', got '" + device + "'");
  }
}

void local_attention(const std::string& device, const TensorArg& q, const TensorArg& k, const TensorArg& v,
                     const TensorArg& k_low, const TensorArg& v_low, const TensorArg& out, int grid, int low_grid,
                     int window_rows, int window_cols, int low_window, uintptr_t stream) {
  TensorView qv = view(q, "q"), kv = view(k, "k"), vv = view(v, "v"), klv = view(k_low, "k_low"),
             vlv = view(v_low, "v_low"), ov = view(out, "out");
  cogvideo::LocalGeometry geometry;
  geometry.grid = grid;
  geometry.low_grid = low_grid;
  geometry.window_rows = window_rows;
  geometry.window_cols = window_cols;
  geometry.low_window = low_window;
  py::gil_scoped_release release;
  if (device == "cpu") {
    cogvideo::local_attention_cpu(qv, kv, vv, klv, vlv, ov, geometry);
  } else if (device == "cuda") {
    cogvideo::local_attention_cuda(qv, kv, vv, klv, vlv, ov, geometry, reinterpret_cast<void*>(stream));
  } else {
    throw InvalidArgument("device must be 'cpu' or 'cuda', got '" + device + "'");
  }
}

void linear_rows(const TensorArg& out, const TensorArg& x, const TensorArg& w, const std::optional<TensorArg>& bias) {
  TensorView ov = view(out, "out", 2), xv = view(x, "x", 2), wv = view(w, "w", 2);
  TensorView bv;
  if (bias) bv = view(*bias, "bias", 1);
  py::gil_scoped_release release;
  cogvideo::linear_rows_cpu(ov, xv, wv, bias ? &bv : nullptr);
}

// The decode stack (cogvideo/decode_stack.h), bound once to a model's tensors: one layer is the 18 tensors of
// cogvideo::DecodeLayer in its order.
class DecodeStackHandle {
 public:
  DecodeStackHandle(const std::vector<std::vector<TensorArg>>& layers, const TensorArg& final_ln_w,
                    const TensorArg& final_ln_b, const TensorArg& head, int heads, int head_dim, float eps) {
    for (const std::vector<TensorArg>& l : layers) {
      if (l.size() != 18) throw InvalidArgument("decode_stack: a layer is 18 tensors, got " + std::to_string(l.size()));
      auto vec = [&](int i, const char* name) { return view(l[i], name, 1); };
      auto mat = [&](int i, const char* name) { return view(l[i], name, 2); };
      stack_.layers.push_back({vec(0, "ln_in_w"), vec(1, "ln_in_b"), mat(2, "qkv_w"), vec(3, "qkv_b"),
                               mat(4, "base_w"), vec(5, "base_b"), mat(6, "mixed_w"), vec(7, "mixed_b"),
                               vec(8, "ln_third_w"), vec(9, "ln_third_b"), vec(10, "ln_post_w"),
                               vec(11, "ln_post_b"), mat(12, "up_w"), vec(13, "up_b"), mat(14, "down_w"),
                               vec(15, "down_b"), vec(16, "ln_fourth_w"), vec(17, "ln_fourth_b")});
    }
    stack_.final_ln_w = view(final_ln_w, "final_ln_w", 1);
    stack_.final_ln_b = view(final_ln_b, "final_ln_b", 1);
    stack_.head = view(head, "head", 2);
    stack_.heads = heads;
    stack_.head_dim = head_dim;
    stack_.eps = eps;
    cogvideo::validate_decode_stack(stack_);
  }

  // channels: per channel (k data_ptr, v data_ptr, layer stride, batch stride, even layers' rule, odd layers' rule)
  void forward(const TensorArg& x, int64_t batch, int64_t num_q, uintptr_t q_index, int64_t q_index_stride0,
               int64_t q_index_stride1, uintptr_t text_len, uintptr_t text_bias,
               const std::vector<std::tuple<uintptr_t, uintptr_t, int64_t, int64_t, RuleArg, RuleArg>>& channels,
               int64_t scratch_row, const std::optional<TensorArg>& logits) {
    const int64_t hidden = static_cast<int64_t>(stack_.heads) * stack_.head_dim;
    TensorView xv = view(x, "x", 2);
    if (xv.dtype != DType::kFloat32 || xv.shape[0] != batch * num_q || xv.shape[1] != hidden ||
        xv.stride[0] != hidden || xv.stride[1] != 1)
      throw InvalidArgument("decode_stack: x must be a contiguous fp32 [batch * num_q, hidden] tensor");
    float* out = nullptr;
    if (logits) {
      TensorView lv = view(*logits, "logits", 2);
      if (lv.dtype != DType::kFloat32 || lv.shape[0] != batch * num_q || lv.shape[1] != stack_.head.shape[0] ||
          lv.stride[0] != lv.shape[1] || lv.stride[1] != 1)
        throw InvalidArgument("decode_stack: logits must be a contiguous fp32 [batch * num_q, vocab] tensor");
      out = static_cast<float*>(lv.data);
    }
    std::vector<cogvideo::DecodeChannel> cs;
    for (const auto& [k, v, layer_stride, batch_stride, even, odd] : channels) {
      cogvideo::DecodeChannel c;
      c.k = reinterpret_cast<float*>(k);
      c.v = reinterpret_cast<float*>(v);
      c.layer_stride = layer_stride;
      c.batch_stride = batch_stride;
      c.rules[0] = make_rule(even);
      c.rules[1] = make_rule(odd);
      cs.push_back(c);
    }
    const QueryInfo info = query_info(q_index, q_index_stride0, q_index_stride1, text_len, text_bias);
    py::gil_scoped_release release;
    cogvideo::decode_stack_cpu(stack_, static_cast<float*>(xv.data), batch, num_q, info, cs.data(),
                               static_cast<int>(cs.size()), scratch_row, out, &timings_);
  }

  std::tuple<double, double, double> last_timings() const {
    return {timings_.linear, timings_.attention, timings_.total};
  }

 private:
  cogvideo::DecodeStack stack_;
  cogvideo::DecodeTimings timings_;
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "CogVideo fused window-attention and local-attention kernels (C++ CPU and CUDA) and the "
            "batch-invariant CPU linear, without libtorch.";
  m.attr("__version__") = COGVIDEO_VERSION;  // the package version this extension was built from
  m.def("has_cuda", &cogvideo::has_cuda, "Whether the library was built with the CUDA kernel.");
  cogvideo::cpu_isa();  // the CPU kernel variant is chosen here, at import (COGVIDEO_CPU_ISA is read now)
  m.def("cpu_isa", []() { return std::string(cogvideo::cpu_isa()); },
        "The instruction-set variant the CPU kernels run: 'avx512', 'avx2', 'baseline' (x86-64 builds pick the "
        "best the CPU supports at import; COGVIDEO_CPU_ISA=<name> asks for a lower one) or 'native' "
        "(a COGVIDEO_NATIVE=1 build).");
  m.def("cpu_isas", &cogvideo::cpu_isas, "The CPU kernel variants of this build that this CPU can run, best first.");
  m.def("set_cpu_isa", &cogvideo::set_cpu_isa, py::arg("name"),
        "Runs the CPU kernels with variant `name` (one of cpu_isas()) from now on; for tests and benchmarks.");
  m.def("window_attention", &window_attention, py::arg("device"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("q_index"), py::arg("q_index_stride0"), py::arg("q_index_stride1"),
        py::arg("text_len"), py::arg("text_bias"), py::arg("temporal"), py::arg("windowed"),
        py::arg("bidirectional_given"), py::arg("num_given"), py::arg("cache_slots"), py::arg("grid"),
        py::arg("window"), py::arg("shift"), py::arg("text_capacity"), py::arg("stream") = 0,
        "Window attention into `out`; tensors are (data_ptr, dtype name, shape, strides in elements).");
  m.def("local_attention", &local_attention, py::arg("device"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("k_low"), py::arg("v_low"), py::arg("out"), py::arg("grid"), py::arg("low_grid"),
        py::arg("window_rows"), py::arg("window_cols"), py::arg("low_window"), py::arg("stream") = 0,
        "Super-resolution local attention into `out`; tensors are (data_ptr, dtype name, shape, strides).");
  m.def("linear_rows", &linear_rows, py::arg("out"), py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
        "Batch-invariant fp32 linear on the CPU into `out[M, N]` = x[M, K] . w[N, K]^T (+ bias[N]): one fixed "
        "reduction order per element, so a row does not depend on the other rows, M or the thread count. "
        "Tensors are (data_ptr, dtype name, shape, strides in elements); the last dimensions must be contiguous.");
  py::class_<DecodeStackHandle>(m, "DecodeStack",
                                "A model's CPU decode forward in one call (cogvideo/decode_stack.h), bound to its "
                                "fp32 tensors, which must outlive it.")
      .def(py::init<const std::vector<std::vector<TensorArg>>&, const TensorArg&, const TensorArg&, const TensorArg&,
                    int, int, float>(),
           py::arg("layers"), py::arg("final_ln_w"), py::arg("final_ln_b"), py::arg("head"), py::arg("heads"),
           py::arg("head_dim"), py::arg("eps"))
      .def("forward", &DecodeStackHandle::forward, py::arg("x"), py::arg("batch"), py::arg("num_q"),
           py::arg("q_index"), py::arg("q_index_stride0"), py::arg("q_index_stride1"), py::arg("text_len"),
           py::arg("text_bias"), py::arg("channels"), py::arg("scratch_row"), py::arg("logits") = py::none(),
           "One decode forward: x [batch * num_q, hidden] updated in place, the caches' K/V rows written, logits "
           "[batch * num_q, vocab] filled (if given).")
      .def("last_timings", &DecodeStackHandle::last_timings,
           "(linear, attention, total) seconds of the last forward, wall clock on the calling thread.");
}
