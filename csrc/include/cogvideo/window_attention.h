// Fused CogVideo window attention: the C++ interface shared by the CPU and CUDA kernels.
//
// No Python and no libtorch: tensors cross as data pointers + shapes + strides (in elements) + dtype.
// Semantics are those of cogvideo_engine.kernels.reference.window_attention (Python):
//
//   out[B, H, Q, d] = attention of q[B, H, Q, d] over the cache rows k, v [B, H, S, d] that the rule allows,
//                     with one softmax over [text | frame keys], scores (q / sqrt(d)) . k + text bias.
//
// Cache layout: rows 0 .. text_capacity-1 hold text (row j = text token j; rows >= text_len[b] unused), then
// slot s, block position p (raster, p = x * grid + y) at row text_capacity + s * grid * grid + p.
// q_index[b, i] is the stream index of query i of sequence b (text 0..text_len-1, frames text_len + 400 s + p;
// -1 = padding, output zeros).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define COGVIDEO_HD __host__ __device__ __forceinline__
#else
#define COGVIDEO_HD inline
#endif

namespace cogvideo {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// A strided view of up to 4 dimensions; strides are in elements.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int ndim = 0;
  int64_t shape[4] = {0, 0, 0, 0};
  int64_t stride[4] = {0, 0, 0, 0};
};

// The static part of one launch: pass, channel, layer parity and frame geometry (kernels/layout.py).
struct AttentionRule {
  bool temporal = false;             // temporal (attention-plus) channel, else spatial
  bool windowed = false;             // stage-2 temporal: 3-D Swin windows (else stage-1 full causal)
  bool bidirectional_given = false;  // stage-2 spatial: given rows see their whole frame
  int num_given = 0;                 // given slots of the pass (0, 1 or 3)
  int cache_slots = 1;                // slots the cache holds (given + max targets)
  int grid = 20;                     // frame side in tokens (frame_len = grid * grid)
  int window = 10;
  int shift = 0;                     // this layer's shift (5 on odd stage-2 layers, else 0)
  int text_capacity = 1;             // cache rows reserved for text

  COGVIDEO_HD int frame_len() const { return grid * grid; }
  COGVIDEO_HD int64_t cache_len() const { return text_capacity + static_cast<int64_t>(frame_len()) * cache_slots; }
};

// Per-sequence and per-query integers; q_index is [B, Q] int64 with strides in elements.
struct QueryInfo {
  const int64_t* q_index = nullptr;
  int64_t q_index_stride[2] = {0, 0};
  const int32_t* text_len = nullptr;  // [B], contiguous
  const float* text_bias = nullptr;   // [B], contiguous
};

// Raised on inputs that break a constraint; the message names it.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Checks shapes, dtypes and the rule; throws InvalidArgument. Host-side values (text_len) are checked by
// the CPU entry point only (the CUDA one receives device pointers).
void validate(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
              const AttentionRule& rule);

// CPU kernel (OpenMP across sequences x heads x query tiles). All pointers are host pointers.
void window_attention_cpu(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out,
                          const QueryInfo& info, const AttentionRule& rule);

// Whether the library was built with the CUDA kernel.
bool has_cuda();

// CUDA kernel, launched on `stream` (a cudaStream_t, 0 = default). All pointers are device pointers.
void window_attention_cuda(const TensorView& q, const TensorView& k, const TensorView& v, TensorView& out,
                           const QueryInfo& info, const AttentionRule& rule, void* stream);

}  // namespace cogvideo
