// The CPU decode forward of CogVideo's transformer in one call: every layer and the logits head of a decode step,
// with no Python between the operations (cogvideo_engine.generation.runner.ModelRunner._layers is its plain-
// PyTorch twin and the definition of what it computes).
//
// Per layer (h = hidden, ch = 2 channels in the passes that mix the temporal channel, else 1):
//   a    = LN_in(x)
//   qkv  = a . qkv_w[:3h*ch]^T + qkv_b[:3h*ch]            (both channels' Q|K|V in one linear)
//   cache rows  <- each query's K and V of each channel  (row `rows[m]`: its cache row, or the scratch row)
//   ctx_c = window attention of channel c's Q over its cache, with the layer's rule (rule parity = layer % 2)
//   out  = mixes[m] ? [ctx_0 | ctx_1] . mixed_w^T + mixed_b : ctx_0 . base_w^T + base_b
//   x   += LN_third(out)
//   x   += LN_fourth(gelu_tanh(LN_post(x) . up_w^T + up_b) . down_w^T + down_b)
// then logits = LN_final(x) . head^T. Every linear is linear_rows_cpu (batch-invariant), every attention
// window_attention_cpu, and LayerNorm, GeLU and the residual adds work row by row with a fixed order of
// operations, so a row's logits are bit-identical whatever else shares the step (batch invariance, as the
// twin's); they differ from the twin's in the last bits only (LayerNorm and GeLU are computed here, not by
// torch).
#pragma once

#include <cstdint>
#include <vector>

#include "cogvideo/window_attention.h"  // DType, TensorView, AttentionRule, QueryInfo, InvalidArgument

namespace cogvideo {

// One layer's parameters: 1-D fp32 vectors [n] and 2-D weights [N, K] with a contiguous last dimension, fp32 or
// bf16 (linear_rows_cpu widens a bf16 weight as it reads it: half the bytes streamed).
struct DecodeLayer {
  TensorView ln_in_w, ln_in_b;
  TensorView qkv_w, qkv_b;          // [3h * channels (of the widest pass), h]
  TensorView base_w, base_b;        // [h, h]
  TensorView mixed_w, mixed_b;      // [h, 2h] (alpha folded in); unused in passes without the temporal channel
  TensorView ln_third_w, ln_third_b;
  TensorView ln_post_w, ln_post_b;
  TensorView up_w, up_b;            // [4h, h]
  TensorView down_w, down_b;        // [h, 4h]
  TensorView ln_fourth_w, ln_fourth_b;
};

// One channel's cache in a step: the K and V of every layer, row r of batch row b of layer l at
// data + l * layer_stride + b * batch_stride + r * heads * head_dim (fp32, heads x head_dim contiguous), and
// the rule of the even and of the odd layers.
struct DecodeChannel {
  float* k = nullptr;
  float* v = nullptr;
  int64_t layer_stride = 0;
  int64_t batch_stride = 0;
  AttentionRule rules[2];
};

// The model's stack, bound once (the tensors it views must outlive it and stay where they are).
struct DecodeStack {
  std::vector<DecodeLayer> layers;
  TensorView final_ln_w, final_ln_b;
  TensorView head;  // [V, h]: the logits head (fp32 or bf16, like the layers' weights)
  int heads = 0;
  int head_dim = 0;
  float eps = 1e-5f;
};

// Where a forward's time went (seconds, wall clock on the calling thread): the linears (the weight streams), the
// attention calls, and the whole call.
struct DecodeTimings {
  double linear = 0.0;
  double attention = 0.0;
  double total = 0.0;
};

// Checks a stack's tensors against each other (shapes, dtypes, contiguous last dimensions); throws InvalidArgument.
void validate_decode_stack(const DecodeStack& stack);

// One decode forward over `batch` rows of `num_q` queries each: x [batch * num_q, h] (fp32, contiguous, updated in
// place: the last layer's output), q_index [batch, num_q] (stream indices, -1 = padding; strides in `info`),
// `channels` (1 or 2) caches, logits [batch * num_q, V] (fp32, contiguous; null: no logits). A query's cache row is
// its text row or text_capacity + its frame offset (padding: the scratch row `scratch_row`, never read); frame
// queries of a 2-channel pass take the mixed output projection, the others the base one. Host pointers.
// `timings` (may be null) receives where the time went.
void decode_stack_cpu(const DecodeStack& stack, float* x, int64_t batch, int64_t num_q, const QueryInfo& info,
                      const DecodeChannel* channels, int num_channels, int64_t scratch_row, float* logits,
                      DecodeTimings* timings = nullptr);

}  // namespace cogvideo
