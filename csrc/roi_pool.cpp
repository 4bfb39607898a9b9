// roi_pool: CPU kernels (stub; filled by its issue).
#include "common.h"

namespace pydl {
void bind_roi_pool(py::module_& m) { (void)m; }
}  // namespace pydl
