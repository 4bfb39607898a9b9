// deform_conv: CPU kernels (stub; filled by its issue).
#include "common.h"

namespace pydl {
void bind_deform_conv(py::module_& m) { (void)m; }
}  // namespace pydl
