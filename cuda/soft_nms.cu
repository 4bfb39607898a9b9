// soft_nms: CUDA kernels (stub; filled by its issue).
#include "common.cuh"

namespace pydl {
void bind_soft_nms_cuda(py::module_& m) { (void)m; }
}  // namespace pydl
