// Shared by every CUDA kernel file: checks that throw (file and line in the message),
// launch helpers, and the convention that Python passes raw device pointers and the
// caller's CuPy stream as integers.
#pragma once
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>

#include "geometry.h"

namespace py = pybind11;

#define PYDL_CUDA_CHECK(expr)                                                                  \
  do {                                                                                         \
    cudaError_t pydl_err_ = (expr);                                                            \
    if (pydl_err_ != cudaSuccess) {                                                            \
      std::ostringstream pydl_os_;                                                             \
      pydl_os_ << "CUDA error " << cudaGetErrorName(pydl_err_) << ": "                          \
               << cudaGetErrorString(pydl_err_) << " at " << __FILE__ << ":" << __LINE__         \
               << " (" #expr ")";                                                              \
      throw std::runtime_error(pydl_os_.str());                                                \
    }                                                                                          \
  } while (0)

// After every <<<...>>>: catches bad launch configurations without synchronizing.
#define PYDL_LAUNCH_CHECK() PYDL_CUDA_CHECK(cudaGetLastError())

#define PYDL_CHECK(cond, msg)                                                              \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::ostringstream pydl_os_;                                                         \
      pydl_os_ << msg << " [" << __FILE__ << ":" << __LINE__ << ": " #cond "]";             \
      throw std::invalid_argument(pydl_os_.str());                                         \
    }                                                                                      \
  } while (0)

namespace pydl {

using dptr = std::uintptr_t;  // a device pointer as Python hands it over (cupy .data.ptr)

inline cudaStream_t as_stream(dptr s) { return reinterpret_cast<cudaStream_t>(s); }
template <typename T>
inline T* as_ptr(dptr p) { return reinterpret_cast<T*>(p); }

inline unsigned int grid_for(int64_t n, int block) {
  int64_t g = (n + block - 1) / block;
  const int64_t cap = 65535LL * 32;  // grid-stride loops cover the rest
  return static_cast<unsigned int>(g < 1 ? 1 : (g > cap ? cap : g));
}

}  // namespace pydl
