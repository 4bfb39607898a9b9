// Output-size arithmetic for convolution, transposed convolution and pooling.
// The one C++ copy (pydl/_geometry.py is the one Python copy; tests/test_geometry.py
// holds them against each other). __host__ __device__ so CUDA kernels share it.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PYDL_HD __host__ __device__
#else
#define PYDL_HD
#endif

namespace pydl {

// floor((in + 2p - d(k-1) - 1) / s) + 1, as PyTorch.
PYDL_HD inline int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

PYDL_HD inline int64_t conv_transpose_out_size(int64_t in, int64_t k, int64_t s, int64_t p,
                                               int64_t d, int64_t op) {
  return (in - 1) * s - 2 * p + d * (k - 1) + op + 1;
}

// Pooling with ceil_mode: the last window must start inside the input or left padding.
PYDL_HD inline int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d,
                                     bool ceil_mode) {
  int64_t span = in + 2 * p - d * (k - 1) - 1;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// Adaptive pooling window [start, end) of output cell i.
PYDL_HD inline int64_t adaptive_start(int64_t i, int64_t out, int64_t in) { return (i * in) / out; }
PYDL_HD inline int64_t adaptive_end(int64_t i, int64_t out, int64_t in) {
  return ((i + 1) * in + out - 1) / out;
}

}  // namespace pydl
