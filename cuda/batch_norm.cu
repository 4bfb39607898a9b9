// batch_norm: CUDA kernels (to be written).
#include "common.cuh"

namespace pydl {
void bind_batch_norm_cuda(py::module_& m) { (void)m; }
}  // namespace pydl
