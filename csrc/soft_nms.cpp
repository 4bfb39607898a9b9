// soft_nms: CPU kernels (stub; filled by its issue).
#include "common.h"

namespace pydl {
void bind_soft_nms(py::module_& m) { (void)m; }
}  // namespace pydl
