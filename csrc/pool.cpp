// pool: CPU kernels (to be written).
#include "common.h"

namespace pydl {
void bind_pool(py::module_& m) { (void)m; }
}  // namespace pydl
