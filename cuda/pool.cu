// pool: CUDA kernels (to be written).
#include "common.cuh"

namespace pydl {
void bind_pool_cuda(py::module_& m) { (void)m; }
}  // namespace pydl
