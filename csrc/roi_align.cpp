// roi_align: CPU kernels (stub; filled by its issue).
#include "common.h"

namespace pydl {
void bind_roi_align(py::module_& m) { (void)m; }
}  // namespace pydl
