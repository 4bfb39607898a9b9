// pydl._cuda: the CUDA kernels. Each op file binds its own functions (bind_<op>_cuda).
#include "common.cuh"

namespace pydl {
void bind_conv_cuda(py::module_& m);
void bind_pool_cuda(py::module_& m);
void bind_batch_norm_cuda(py::module_& m);
void bind_cross_entropy_cuda(py::module_& m);
void bind_nms_cuda(py::module_& m);
void bind_roi_pool_cuda(py::module_& m);
void bind_roi_align_cuda(py::module_& m);
void bind_deform_conv_cuda(py::module_& m);
void bind_interpolate_cuda(py::module_& m);
void bind_local_response_norm_cuda(py::module_& m);
void bind_soft_nms_cuda(py::module_& m);
void bind_activation_cuda(py::module_& m);

// Smoke kernel: proves the module's device code runs on this GPU.
__global__ void fill_kernel(float* p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    p[i] = v;
}
}  // namespace pydl

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pydl CUDA kernels";
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
  m.def("device_count", []() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  });
  m.def("runtime_version", []() {
    int v = 0;
    PYDL_CUDA_CHECK(cudaRuntimeGetVersion(&v));
    return v;
  });
  m.def("fill", [](pydl::dptr p, int64_t n, float v, pydl::dptr stream) {
    pydl::fill_kernel<<<pydl::grid_for(n, 256), 256, 0, pydl::as_stream(stream)>>>(
        pydl::as_ptr<float>(p), n, v);
    PYDL_LAUNCH_CHECK();
  });
  // Test-only: a launch with an invalid configuration (more threads per block than any GPU
  // allows), so tests can check that CUDA errors raise RuntimeError with file:line.
  m.def("_test_bad_launch", [](pydl::dptr p, int64_t n, pydl::dptr stream) {
    pydl::fill_kernel<<<1, 4096, 0, pydl::as_stream(stream)>>>(pydl::as_ptr<float>(p), n, 0.f);
    PYDL_LAUNCH_CHECK();
  });
  m.def("conv_out_size", [](int64_t i, int64_t k, int64_t s, int64_t p, int64_t d) {
    PYDL_CHECK(s > 0, "stride must be positive");
    return pydl::conv_out_size(i, k, s, p, d);
  });
  pydl::bind_conv_cuda(m);
  pydl::bind_pool_cuda(m);
  pydl::bind_batch_norm_cuda(m);
  pydl::bind_cross_entropy_cuda(m);
  pydl::bind_nms_cuda(m);
  pydl::bind_roi_pool_cuda(m);
  pydl::bind_roi_align_cuda(m);
  pydl::bind_deform_conv_cuda(m);
  pydl::bind_interpolate_cuda(m);
  pydl::bind_local_response_norm_cuda(m);
  pydl::bind_soft_nms_cuda(m);
  pydl::bind_activation_cuda(m);
}
