// Stand-ins when the library is built without CUDA.
#include "cogvideo/local_attention.h"
#include "cogvideo/window_attention.h"

namespace cogvideo {

bool has_cuda() { return false; }

void window_attention_cuda(const TensorView&, const TensorView&, const TensorView&, TensorView&, const QueryInfo&,
                           const AttentionRule&, void*) {
  throw InvalidArgument("this build of the cogvideo kernels has no CUDA support (nvcc was not found)");
}

void local_attention_cuda(const TensorView&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                          TensorView&, const LocalGeometry&, void*) {
  throw InvalidArgument("this build of the cogvideo kernels has no CUDA support (nvcc was not found)");
}

}  // namespace cogvideo
