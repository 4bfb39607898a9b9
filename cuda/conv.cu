// conv: CUDA kernels (to be written).
#include "common.cuh"

namespace pydl {
void bind_conv_cuda(py::module_& m) { (void)m; }
}  // namespace pydl
