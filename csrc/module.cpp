// pydl._cpu: the CPU kernels. Each op file binds its own functions (bind_<op>).
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "geometry.h"

namespace pydl {
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_batch_norm(py::module_& m);
void bind_cross_entropy(py::module_& m);
void bind_nms(py::module_& m);
void bind_roi_pool(py::module_& m);
void bind_roi_align(py::module_& m);
void bind_deform_conv(py::module_& m);
void bind_interpolate(py::module_& m);
void bind_local_response_norm(py::module_& m);
void bind_soft_nms(py::module_& m);
}  // namespace pydl

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "pydl CPU kernels (C++, OpenMP, OpenBLAS)";
  // Module-local translator: tried before the process-wide list, which other extensions
  // (PyTorch) share and which crashed on our exceptions there.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const py::builtin_exception& e) {
      e.set_error();
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "pydl: out of memory");
    } catch (const std::exception& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
  // Exposed so tests can hold the C++ geometry against pydl/_geometry.py.
  // Stride 0 would divide by zero (SIGFPE): the one input these helpers cannot take.
  m.def("conv_out_size", [](int64_t i, int64_t k, int64_t s, int64_t p, int64_t d) {
    PYDL_CHECK(s > 0, "stride must be positive");
    return pydl::conv_out_size(i, k, s, p, d);
  });
  m.def("conv_transpose_out_size", &pydl::conv_transpose_out_size);
  m.def("pool_out_size", [](int64_t i, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
    PYDL_CHECK(s > 0, "stride must be positive");
    return pydl::pool_out_size(i, k, s, p, d, ceil_mode);
  });
  m.def("max_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  pydl::bind_conv(m);
  pydl::bind_pool(m);
  pydl::bind_batch_norm(m);
  pydl::bind_cross_entropy(m);
  pydl::bind_nms(m);
  pydl::bind_roi_pool(m);
  pydl::bind_roi_align(m);
  pydl::bind_deform_conv(m);
  pydl::bind_interpolate(m);
  pydl::bind_local_response_norm(m);
  pydl::bind_soft_nms(m);
}
