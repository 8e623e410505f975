// Input checks shared by the CPU and CUDA entry points; every message names the constraint it enforces.
#include <string>

#include "cogvideo/local_attention.h"
#include "cogvideo/window_attention.h"

namespace cogvideo {
namespace {

std::string shape_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    default: return "bfloat16";
  }
}

}  // namespace

void validate(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
              const AttentionRule& rule) {
  for (const TensorView* t : {&q, &k, &v, &out}) {
    if (t->ndim != 4) throw InvalidArgument("q, k, v and out must be 4-D [B, H, N, d], got " + shape_str(*t));
    if (t->data == nullptr && t->shape[0] * t->shape[1] * t->shape[2] * t->shape[3] > 0)
      throw InvalidArgument("a tensor has a null data pointer");
  }
  if (k.dtype != q.dtype || v.dtype != q.dtype || out.dtype != q.dtype)
    throw InvalidArgument("q, k, v and out must share one dtype (fp32, fp16 or bf16)");
  const int64_t d = q.shape[3];
  if (d != 16 && d != 32 && d != 64 && d != 128)
    throw InvalidArgument("head dim " + std::to_string(d) + " is not supported (16, 32, 64 or 128)");
  for (int i : {0, 1, 3}) {
    if (k.shape[i] != q.shape[i] || v.shape[i] != q.shape[i])
      throw InvalidArgument("k " + shape_str(k) + " and v " + shape_str(v) + " must match q " + shape_str(q) +
                            " in batch, heads and head dim");
  }
  if (k.shape[2] != v.shape[2]) throw InvalidArgument("k and v must have the same number of cache rows");
  for (int i = 0; i < 4; ++i)
    if (out.shape[i] != q.shape[i]) throw InvalidArgument("out must have q's shape " + shape_str(q));
  if (rule.grid <= 0 || rule.window <= 0 || rule.grid % rule.window != 0)
    throw InvalidArgument("frame grid must be a positive multiple of the window");
  if (rule.shift < 0 || rule.shift >= rule.window) throw InvalidArgument("shift must lie in [0, window)");
  if (rule.cache_slots < 1 || rule.num_given < 0 || rule.num_given > rule.cache_slots)
    throw InvalidArgument("num_given must lie in 0..cache_slots and cache_slots >= 1");
  if (rule.text_capacity < 1) throw InvalidArgument("text_capacity must be >= 1");
  if (k.shape[2] < rule.cache_len())
    throw InvalidArgument("the cache holds " + std::to_string(k.shape[2]) + " rows; the rule needs " +
                          std::to_string(rule.cache_len()) + " (text_capacity + frame_len * cache_slots)");
}

void validate_local(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
                    const TensorView& v_low, const TensorView& out, const LocalGeometry& g) {
  if (g.grid <= 0 || g.low_grid <= 0 || g.window_rows <= 0 || g.window_cols <= 0 || g.low_window <= 0)
    throw InvalidArgument(
        "local geometry: grid, low_grid, window_rows, window_cols and low_window must be positive");
  if (g.grid > 32768) throw InvalidArgument("local geometry: grid " + std::to_string(g.grid) + " exceeds 32768");
  if (g.grid % g.low_grid != 0)
    throw InvalidArgument("local geometry: grid " + std::to_string(g.grid) + " must be a multiple of low_grid " +
                          std::to_string(g.low_grid));
  const struct {
    const char* name;
    int value;
  } windows[] = {{"window_rows", g.window_rows}, {"window_cols", g.window_cols}, {"low_window", g.low_window}};
  for (const auto& w : windows)
    if (w.value % 2 == 0)
      throw InvalidArgument(std::string("local geometry: ") + w.name +
                            " must be odd (a window centred on the query), got " + std::to_string(w.value));

  const struct {
    const char* name;
    const TensorView* t;
    int64_t rows;
  } tensors[] = {{"q", &q, g.num_queries()}, {"k", &k, g.num_queries()}, {"v", &v, g.num_queries()},
                 {"k_low", &k_low, g.num_low()}, {"v_low", &v_low, g.num_low()}, {"out", &out, g.num_queries()}};
  for (const auto& e : tensors)
    if (e.t->ndim != 4)
      throw InvalidArgument(std::string(e.name) + " must be 4-D [B, H, rows, d], got " + shape_str(*e.t));
  const int64_t d = q.shape[3];
  if (d != 16 && d != 32 && d != 64 && d != 128 && d != 256)
    throw InvalidArgument("head dim " + std::to_string(d) + " is not supported (16, 32, 64, 128 or 256)");
  for (const auto& e : tensors) {
    const TensorView& t = *e.t;
    if (t.dtype != q.dtype)
      throw InvalidArgument(std::string(e.name) + " is " + dtype_name(t.dtype) + " but q is " + dtype_name(q.dtype) +
                            ": q, k, v, k_low, v_low and out must share one dtype");
    if (t.shape[0] != q.shape[0] || t.shape[1] != q.shape[1] || t.shape[2] != e.rows || t.shape[3] != d)
      throw InvalidArgument(std::string(e.name) + " must be [B=" + std::to_string(q.shape[0]) +
                            ", H=" + std::to_string(q.shape[1]) + ", " + std::to_string(e.rows) +
                            (e.rows == g.num_queries() ? " (grid^2)" : " (low_grid^2)") + ", d=" + std::to_string(d) +
                            "], got " + shape_str(t));
    if (t.stride[3] != 1)
      throw InvalidArgument(std::string(e.name) + "'s last dimension must be contiguous (stride 1), got stride " +
                            std::to_string(t.stride[3]));
    if (t.data == nullptr && t.shape[0] * t.shape[1] > 0)
      throw InvalidArgument(std::string(e.name) + " has a null data pointer");
  }
}

}  // namespace cogvideo
