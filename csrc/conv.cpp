// conv: CPU kernels (to be written).
#include "common.h"

namespace pydl {
void bind_conv(py::module_& m) { (void)m; }
}  // namespace pydl
