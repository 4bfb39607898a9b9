// GEMM through OpenBLAS (scipy-openblas32, symbols prefixed scipy_). Row-major,
// overloaded on float/double so templated kernels call one name.
//
// scipy-openblas32 takes 32-bit ints, while pydl's sizes are int64 (an image plane may pass
// 2**31 elements). pydl::gemm therefore never hands BLAS a value over INT32_MAX: a dimension
// that large is cut into chunks, and an oversized leading dimension is either made irrelevant
// (its operand cut to one row in memory, where BLAS ignores the stride) or replaced by the
// smallest legal value once it is. Cutting k accumulates the partial products (beta = 1 after
// the first chunk). The common case (everything small) costs a few comparisons.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>

#include "cblas.h"

namespace pydl {

// Largest int BLAS may see; tests lower it (_cpu._set_blas_int_max) to run the chunked paths
// on small matrices.
inline std::atomic<int64_t>& blas_int_max() {
  static std::atomic<int64_t> v{INT32_MAX};
  return v;
}

namespace blas_detail {

inline void call(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    (blasint)m, (blasint)n, (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb,
                    beta, c, (blasint)ldc);
}

inline void call(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                 int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    (blasint)m, (blasint)n, (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb,
                    beta, c, (blasint)ldc);
}

// C (m x n, row stride ldc) = alpha op(A) op(B) + beta C, row-major. In memory A is m x k
// (stride lda) or, transposed, k x m; B is k x n (stride ldb) or, transposed, n x k.
template <typename T>
void gemm64(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
            const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int64_t lim) {
  if (m <= 0 || n <= 0) return;
  const bool a_big = lda > lim, b_big = ldb > lim, c_big = ldc > lim;
  // Rows of C (and of A when not transposed): strides ldc / lda matter while m > 1.
  const bool m_stride = c_big || (!ta && a_big);
  if (m > lim || (m > 1 && m_stride)) {
    const int64_t step = m_stride ? 1 : lim;
    for (int64_t i = 0; i < m; i += step)
      gemm64(ta, tb, std::min(step, m - i), n, k, alpha, ta ? a + i : a + i * lda, lda, b, ldb, beta,
             c + i * ldc, ldc, lim);
    return;
  }
  // Columns of C (rows of B when transposed): ldb matters while n > 1.
  const bool n_stride = tb && b_big;
  if (n > lim || (n > 1 && n_stride)) {
    const int64_t step = n_stride ? 1 : lim;
    for (int64_t j = 0; j < n; j += step)
      gemm64(ta, tb, m, std::min(step, n - j), k, alpha, a, lda, tb ? b + j * ldb : b + j, ldb, beta, c + j,
             ldc, lim);
    return;
  }
  // The reduction (rows of A transposed, rows of B): lda / ldb matter while k > 1.
  const bool k_stride = (ta && a_big) || (!tb && b_big);
  if (k > lim || (k > 1 && k_stride)) {
    const int64_t step = k_stride ? 1 : lim;
    for (int64_t p = 0; p < k; p += step)
      gemm64(ta, tb, m, n, std::min(step, k - p), alpha, ta ? a + p * lda : a + p, lda, tb ? b + p : b + p * ldb,
             ldb, p ? T(1) : beta, c, ldc, lim);
    return;
  }
  // Any stride still too big belongs to an operand of one row in memory: BLAS only checks it
  // against the row length, so pass that.
  if (a_big) lda = std::max<int64_t>(1, ta ? m : k);
  if (b_big) ldb = std::max<int64_t>(1, tb ? k : n);
  if (c_big) ldc = std::max<int64_t>(1, n);
  call(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace blas_detail

// pydl's kernels split their GEMMs over OpenMP threads themselves, each call single-threaded:
// one thread pool, no nested parallelism. Called before the first GEMM of a kernel.
// It also runs one wide GEMM (a result of thousands of columns) on every pool thread: without
// it, fresh processes on a 2-core Zen 1 VM often ran every two-thread GEMM about 3x slower until
// the first such GEMM (a weight or input gradient) came along; the cause is not known.
inline void blas_single_thread() {
  static std::once_flag once;
  std::call_once(once, [] {
    scipy_openblas_set_num_threads(1);
    constexpr int m = 196, n = 4608, k = 64;
#pragma omp parallel
    {
      std::unique_ptr<float[]> buf(new (std::nothrow) float[(size_t)m * k + (size_t)k * n + (size_t)m * n]());
      if (buf) {
        float* a = buf.get();
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.f, a, k, a + m * k, n, 0.f,
                          a + m * k + k * n, n);
      }
    }
  });
}

inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  blas_detail::gemm64(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                      blas_int_max().load(std::memory_order_relaxed));
}

inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                 int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  blas_detail::gemm64(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                      blas_int_max().load(std::memory_order_relaxed));
}

// y <- alpha x + beta y over n elements (BLAS axpby), cut into calls of at most blas_int_max().
inline void axpby(int64_t n, float alpha, const float* x, float beta, float* y) {
  const int64_t lim = blas_int_max().load(std::memory_order_relaxed);
  for (int64_t i = 0; i < n; i += lim)
    scipy_cblas_saxpby((blasint)std::min(lim, n - i), alpha, x + i, 1, beta, y + i, 1);
}

inline void axpby(int64_t n, double alpha, const double* x, double beta, double* y) {
  const int64_t lim = blas_int_max().load(std::memory_order_relaxed);
  for (int64_t i = 0; i < n; i += lim)
    scipy_cblas_daxpby((blasint)std::min(lim, n - i), alpha, x + i, 1, beta, y + i, 1);
}

}  // namespace pydl
