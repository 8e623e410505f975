// A batch-invariant fp32 linear layer for the CPU decode steps: the C++ interface.
//
//   out[M, N] = x[M, K] . w[N, K]^T (+ bias[N])        (torch.nn.functional.linear's layout)
//
// Every output element is computed with ONE fixed sequence of fp32 operations that depends only on K and on the
// instruction-set variant (cogvideo/cpu_isa.h) -- never on M, on the row's position in the batch, on the other
// rows' values, on the N block it falls into or on the OpenMP thread count. So a row of `out` is bit-identical
// whatever else is batched with it, which is what lets the engine batch the decode rows of several requests
// into one forward without changing any request's sampled tokens. For element (i, j):
//
//   1. 16 lane partial sums: lane l (0..15) accumulates x[i, k] * w[j, k] over k = l, l + 16, l + 32, ... in
//      increasing k, starting from +0: acc_l = fma(x, w, acc_l) in the avx2 / avx512 variants (one rounding),
//      acc_l = acc_l + x * w (two roundings) in the baseline variant. When K is not a multiple of 16 the last
//      chunk holds zeros beyond K (both x and w), so the lanes past the end add 0 * 0 like any other element.
//   2. a fixed tree: s8[l] = acc[l] + acc[l + 8] (l < 8), s4[l] = s8[l] + s8[l + 4], s2[l] = s4[l] + s4[l + 2],
//      s = s2[0] + s2[1];
//   3. out[i, j] = s + bias[j] (no addition without a bias).
//
// The numbers differ between the variants (FMA or not) but not within one; the CPU, the build and the variant
// in use (cpu_isa()) must therefore be the same for two results to agree bit for bit.
//
// Meant for decode: M from 1 to a few dozen rows, K up to ~12k, N up to ~20k. The work is split over N only
// (OpenMP, static), so the weight matrix streams from memory once per call; a thread register-blocks several
// weight rows by several x rows, through one template per block size (the tail blocks perform exactly the
// operations of the full ones, element by element).
#pragma once

#include "cogvideo/window_attention.h"  // DType, TensorView, InvalidArgument

namespace cogvideo {

// Checks the inputs of linear_rows_cpu; throws InvalidArgument naming the constraint: out, x and bias fp32, w fp32
// or bf16, out [M, N], x [M, K], w [N, K], bias [N] (or null), their last dimension contiguous (stride 1),
// non-null data.
void validate_linear_rows(const TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias);

// out = x . w^T (+ bias), batch-invariant (above); `bias` may be null. bf16 weights are widened to fp32 exactly
// as they are loaded (half the bytes streamed; the same operations on the rounded weights). Host pointers. `out` must not overlap the
// inputs. Row strides (stride[0]) are free; the last dimension must be contiguous.
void linear_rows_cpu(TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias);

}  // namespace cogvideo
