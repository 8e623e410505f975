// Stand-ins when the library is built without CUDA.
#include "cogvideo/local_attention.h"
#include "cogvideo/window_attention.h"

namespace cogvideo {
namespace {

constexpr const char* kNoCuda =
    "this build of the cogvideo kernels has no CUDA support (built without nvcc, or with COGVIDEO_CUDA=OFF)";

}  // namespace

bool has_cuda() { return false; }

void window_attention_cuda(const TensorView&, const TensorView&, const TensorView&, TensorView&, const QueryInfo&,
                           const AttentionRule&, void*) {
  throw InvalidArgument(kNoCuda);
}

void local_attention_cuda(const TensorView&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                          TensorView&, const LocalGeometry&, void*) {
  throw InvalidArgument(kNoCuda);
}

}  // namespace cogvideo
