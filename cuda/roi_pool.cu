// roi_pool: CUDA kernels (stub; filled by its issue).
#include "common.cuh"

namespace pydl {
void bind_roi_pool_cuda(py::module_& m) { (void)m; }
}  // namespace pydl
