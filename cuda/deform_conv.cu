// deform_conv: CUDA kernels (stub; filled by its issue).
#include "common.cuh"

namespace pydl {
void bind_deform_conv_cuda(py::module_& m) { (void)m; }
}  // namespace pydl
