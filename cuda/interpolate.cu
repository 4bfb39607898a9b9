// interpolate: CUDA kernels (stub; filled by its issue).
#include "common.cuh"

namespace pydl {
void bind_interpolate_cuda(py::module_& m) { (void)m; }
}  // namespace pydl
