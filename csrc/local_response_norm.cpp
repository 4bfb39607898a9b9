// local_response_norm: CPU kernels (stub; filled by its issue).
#include "common.h"

namespace pydl {
void bind_local_response_norm(py::module_& m) { (void)m; }
}  // namespace pydl
