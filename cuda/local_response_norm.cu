// local_response_norm: CUDA kernels (stub; filled by its issue).
#include "common.cuh"

namespace pydl {
void bind_local_response_norm_cuda(py::module_& m) { (void)m; }
}  // namespace pydl
