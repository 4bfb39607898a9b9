// cross_entropy: CPU kernels (to be written).
#include "common.h"

namespace pydl {
void bind_cross_entropy(py::module_& m) { (void)m; }
}  // namespace pydl
