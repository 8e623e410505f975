// Super-resolution "local attention" (level-1 attention of the DSR model): the C++ interface shared by the
// CPU and CUDA kernels.
//
// No Python and no libtorch: tensors cross as cogvideo::TensorView (data pointer + shape + strides in
// elements + dtype; the last dimension must be contiguous). Semantics are those of
// cogvideo_engine.kernels.local_reference.local_attention (rules: kernels/local_rules.py):
//
//   q, k, v      [B, H, N, d]  high-resolution cells in raster order, N = grid * grid (i = row * grid + col)
//   k_low, v_low [B, H, M, d]  low-resolution cells, M = low_grid * low_grid
//   out          [B, H, N, d]
//
// The query at (r, c) attends, with one joint softmax over (q / sqrt(d)) . k (fp32 accumulation and softmax),
//   * the high-resolution keys (r + dr, c + dc), |dr| <= window_rows / 2, |dc| <= window_cols / 2, and
//   * the low-resolution keys (r / ratio + dr, c / ratio + dc), |dr|, |dc| <= low_window / 2, ratio = grid / low_grid,
// keeping only the cells inside their frame; out = sum p . v in the input dtype. The query's own key is always
// visible, so no row is empty.
#pragma once

#include <cstdint>

#include "cogvideo/window_attention.h"  // DType, TensorView, InvalidArgument, COGVIDEO_HD

namespace cogvideo {

// Grid sizes and window extents (the released model: 60, 20, 9, 5, 5).
struct LocalGeometry {
  int grid = 60;         // high-resolution frame side, in tokens
  int low_grid = 20;     // low-resolution frame side
  int window_rows = 9;   // high-resolution window rows (odd)
  int window_cols = 5;   // high-resolution window columns (odd)
  int low_window = 5;    // low-resolution window side (odd)

  COGVIDEO_HD int ratio() const { return grid / low_grid; }
  COGVIDEO_HD int64_t num_queries() const { return static_cast<int64_t>(grid) * grid; }
  COGVIDEO_HD int64_t num_low() const { return static_cast<int64_t>(low_grid) * low_grid; }
  // Half-extents, clipped to what a frame can hold (a wider window sees nothing more).
  COGVIDEO_HD int half_rows() const { return window_rows / 2 < grid - 1 ? window_rows / 2 : grid - 1; }
  COGVIDEO_HD int half_cols() const { return window_cols / 2 < grid - 1 ? window_cols / 2 : grid - 1; }
  COGVIDEO_HD int half_low() const { return low_window / 2 < low_grid - 1 ? low_window / 2 : low_grid - 1; }
};

// Largest head dim the kernels take; supported head dims are 16, 32, 64, 128 and 256.
constexpr int kLocalMaxHeadDim = 256;

// Checks the geometry, shapes, dtypes and strides; throws InvalidArgument naming the violated constraint.
void validate_local(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
                    const TensorView& v_low, const TensorView& out, const LocalGeometry& geometry);

// CPU kernel (OpenMP across batch x heads x blocks of query rows). All pointers are host pointers.
void local_attention_cpu(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
                         const TensorView& v_low, TensorView& out, const LocalGeometry& geometry);

// CUDA kernel, launched on `stream` (a cudaStream_t, 0 = default). All pointers are device pointers.
// Without CUDA support in the build it throws InvalidArgument.
void local_attention_cuda(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& k_low,
                          const TensorView& v_low, TensorView& out, const LocalGeometry& geometry, void* stream);

}  // namespace cogvideo
