// interpolate: CPU kernels (stub; filled by its issue).
#include "common.h"

namespace pydl {
void bind_interpolate(py::module_& m) { (void)m; }
}  // namespace pydl
