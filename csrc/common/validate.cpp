// Input checks shared by the CPU and CUDA entry points; every message names the constraint it enforces.
#include <string>

#include "cogvideo/window_attention.h"

namespace cogvideo {
namespace {

std::string shape_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
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

}  // namespace cogvideo
