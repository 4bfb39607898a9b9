// batch_norm: CPU kernels (to be written).
#include "common.h"

namespace pydl {
void bind_batch_norm(py::module_& m) { (void)m; }
}  // namespace pydl
