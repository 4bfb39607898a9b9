// linear: CPU kernels of PyTorch's F.linear (y = x W^T + b), forward and backward, on OpenBLAS.
//
// Math, x viewed as (M, K) (M = product of the leading axes, K = in_features), W (N, K), b (N,):
//   forward          y  = x W^T + b      (M, N)   y_mn  = sum_k x_mk W_nk + b_n
//   backward input   dx = dy W           (M, K)   dx_mk = sum_n dy_mn W_nk   (d y_mn / d x_mk = W_nk)
//   backward weight  dW = dy^T x         (N, K)   dW_nk = sum_m dy_mn x_mk   (d y_mn / d W_nk = x_mk)
//   backward bias    db = sum_m dy_m     (N,)
// Layout: C-contiguous row-major matrices.
// Threads: OpenBLAS runs single-threaded (blas_single_thread) and each GEMM is split by OpenMP
// into one block of its result per thread, one GEMM call each: row blocks when the result has at
// least as many rows as columns, else column blocks (on 16-element boundaries), so the operand
// that every thread reads whole is the smaller one. No block splits the reduction: results do
// not depend on the thread count. The bias gradient: column blocks, rows summed in order in double.
// A reduction of length 0 (K = 0 forward, N = 0 input gradient, M = 0 weight and bias gradients)
// writes zeros (the forward: the bias) without calling BLAS.
// Algorithms: one per direction (GEMM; the bias gradient a column sum).
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "blas.h"
#include "common.h"

namespace pydl {
namespace {

constexpr int64_t kMinGemmWork = int64_t(1) << 18;  // multiply-adds below which one thread does it all
constexpr int64_t kMinSumWork = int64_t(1) << 15;   // elements, bias gradient

// fn(r0, r1, c0, c1) over blocks of an R x C result; `work` decides whether threads pay.
template <typename F>
void for_blocks(int64_t R, int64_t C, int64_t work, int64_t min_work, F&& fn) {
  if (work < min_work || max_threads() == 1 || R * C == 0) {
    fn(int64_t(0), R, int64_t(0), C);
    return;
  }
  const bool by_rows = R >= C;
#pragma omp parallel
  {
    const int64_t nt = team_size(), t = thread_id();
    const int64_t len = by_rows ? R : C, align = by_rows ? 1 : 16;
    const int64_t per = ((len + nt - 1) / nt + align - 1) / align * align;
    const int64_t b = std::min(len, t * per), e = std::min(len, b + per);
    if (b < e) {
      if (by_rows)
        fn(b, e, int64_t(0), C);
      else
        fn(int64_t(0), R, b, e);
    }
  }
}

// Rows [r0, r1), columns [c0, c1) of the row-major (., ld) matrix c set to v (or 0 when v is null).
template <typename T>
void fill_block(T* c, int64_t ld, int64_t r0, int64_t r1, int64_t c0, int64_t c1, const T* v) {
  for (int64_t r = r0; r < r1; ++r) {
    T* row = c + r * ld;
    if (v)
      std::copy(v + c0, v + c1, row + c0);
    else
      std::fill(row + c0, row + c1, T(0));
  }
}

template <typename T>
void check_2d(const carray<T>& a, const char* who, const char* name) {
  PYDL_CHECK(a.ndim() == 2, who << ": " << name << " must be 2-D");
}

// y (M, N) <- x (M, K) W^T + b; W (N, K), b (N,) or None.
template <typename T>
void linear_forward(carray<T> x, carray<T> w, std::optional<carray<T>> b, carray<T> y) {
  const char* who = "linear_forward";
  check_2d(x, who, "x"), check_2d(w, who, "w"), check_2d(y, who, "y");
  const int64_t M = x.shape(0), K = x.shape(1), N = w.shape(0);
  PYDL_CHECK(w.shape(1) == K, who << ": w must have shape (N, " << K << ")");
  PYDL_CHECK(y.shape(0) == M && y.shape(1) == N, who << ": y must have shape (" << M << ", " << N << ")");
  const T* bp = nullptr;
  if (b) {
    PYDL_CHECK(b->ndim() == 1 && b->shape(0) == N, who << ": b must have shape (" << N << ",)");
    bp = in_ptr(*b);
  }
  const T* xp = in_ptr(x);
  const T* wp = in_ptr(w);
  T* yp = out_ptr(y);
  blas_single_thread();
  py::gil_scoped_release nogil;
  for_blocks(M, N, M * N * K, kMinGemmWork, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    if (bp || K == 0) fill_block(yp, N, r0, r1, c0, c1, bp);
    if (K > 0)
      gemm(false, true, r1 - r0, c1 - c0, K, T(1), xp + r0 * K, K, wp + c0 * K, K, bp ? T(1) : T(0),
           yp + r0 * N + c0, N);
  });
}

// dx (M, K) <- dy (M, N) W (N, K).
template <typename T>
void linear_backward_input(carray<T> dy, carray<T> w, carray<T> dx) {
  const char* who = "linear_backward_input";
  check_2d(dy, who, "dy"), check_2d(w, who, "w"), check_2d(dx, who, "dx");
  const int64_t M = dy.shape(0), N = dy.shape(1), K = w.shape(1);
  PYDL_CHECK(w.shape(0) == N, who << ": w must have shape (" << N << ", K)");
  PYDL_CHECK(dx.shape(0) == M && dx.shape(1) == K, who << ": dx must have shape (" << M << ", " << K << ")");
  const T* gp = in_ptr(dy);
  const T* wp = in_ptr(w);
  T* dp = out_ptr(dx);
  blas_single_thread();
  py::gil_scoped_release nogil;
  for_blocks(M, K, M * N * K, kMinGemmWork, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    if (N == 0)
      fill_block(dp, K, r0, r1, c0, c1, static_cast<const T*>(nullptr));
    else
      gemm(false, false, r1 - r0, c1 - c0, N, T(1), gp + r0 * N, N, wp + c0, K, T(0), dp + r0 * K + c0, K);
  });
}

// dw (N, K) <- dy (M, N)^T x (M, K).
template <typename T>
void linear_backward_weight(carray<T> dy, carray<T> x, carray<T> dw) {
  const char* who = "linear_backward_weight";
  check_2d(dy, who, "dy"), check_2d(x, who, "x"), check_2d(dw, who, "dw");
  const int64_t M = dy.shape(0), N = dy.shape(1), K = x.shape(1);
  PYDL_CHECK(x.shape(0) == M, who << ": x must have " << M << " rows");
  PYDL_CHECK(dw.shape(0) == N && dw.shape(1) == K, who << ": dw must have shape (" << N << ", " << K << ")");
  const T* gp = in_ptr(dy);
  const T* xp = in_ptr(x);
  T* dp = out_ptr(dw);
  blas_single_thread();
  py::gil_scoped_release nogil;
  for_blocks(N, K, M * N * K, kMinGemmWork, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    if (M == 0)
      fill_block(dp, K, r0, r1, c0, c1, static_cast<const T*>(nullptr));
    else  // op(A) = dy^T: A in memory is dy (M x N, stride N), its columns r0.. start at dy + r0
      gemm(true, false, r1 - r0, c1 - c0, M, T(1), gp + r0, N, xp + c0, K, T(0), dp + r0 * K + c0, K);
  });
}

// db (N,) <- column sums of dy (M, N).
template <typename T>
void linear_backward_bias(carray<T> dy, carray<T> db) {
  const char* who = "linear_backward_bias";
  check_2d(dy, who, "dy");
  const int64_t M = dy.shape(0), N = dy.shape(1);
  PYDL_CHECK(db.ndim() == 1 && db.shape(0) == N, who << ": db must have shape (" << N << ",)");
  const T* gp = in_ptr(dy);
  T* dp = out_ptr(db);
  py::gil_scoped_release nogil;
  for_blocks(1, N, M * N, kMinSumWork, [&](int64_t, int64_t, int64_t c0, int64_t c1) {
    constexpr int64_t kW = 256;  // columns summed together: the accumulators stay in L1
    double acc[kW];
    for (int64_t j0 = c0; j0 < c1; j0 += kW) {
      const int64_t w = std::min(kW, c1 - j0);
      for (int64_t j = 0; j < w; ++j) acc[j] = 0;
      for (int64_t m = 0; m < M; ++m) {
        const T* row = gp + m * N + j0;
        for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<double>(row[j]);
      }
      for (int64_t j = 0; j < w; ++j) dp[j0 + j] = static_cast<T>(acc[j]);
    }
  });
}

// y <- alpha x + beta y, elementwise over two arrays of one size (the optimizers' updates: one
// pass where NumPy's expressions took several). Above a size where threads pay, one BLAS call
// per thread on its slice.
template <typename T>
void axpby(T alpha, carray<T> x, T beta, carray<T> y) {
  PYDL_CHECK(x.size() == y.size(), "_axpby: x and y differ in size (" << x.size() << " vs " << y.size() << ")");
  const int64_t n = static_cast<int64_t>(x.size());
  const T* xp = in_ptr(x);
  T* yp = out_ptr(y);
  PYDL_CHECK(xp + n <= yp || yp + n <= xp || n == 0, "_axpby: x and y overlap");
  blas_single_thread();
  py::gil_scoped_release nogil;
  for_blocks(1, n, n, int64_t(1) << 16, [&](int64_t, int64_t, int64_t c0, int64_t c1) {
    pydl::axpby(c1 - c0, alpha, xp + c0, beta, yp + c0);
  });
}

template <typename T>
void bind_typed(py::module_& m) {
  m.def("_axpby", &axpby<T>, py::arg("alpha"), py::arg("x").noconvert(), py::arg("beta"), py::arg("y").noconvert(),
        "y <- alpha x + beta y (C-contiguous arrays of one size and dtype)");
  // noconvert: wrong dtypes or layouts are refused instead of silently copied.
  m.def("linear_forward", &linear_forward<T>, py::arg("x").noconvert(), py::arg("w").noconvert(),
        py::arg("b").noconvert().none(true), py::arg("y").noconvert(), "y <- x w^T + b; x (M, K), w (N, K), b (N,) or None");
  m.def("linear_backward_input", &linear_backward_input<T>, py::arg("dy").noconvert(), py::arg("w").noconvert(),
        py::arg("dx").noconvert(), "dx <- dy w; dy (M, N), w (N, K)");
  m.def("linear_backward_weight", &linear_backward_weight<T>, py::arg("dy").noconvert(), py::arg("x").noconvert(),
        py::arg("dw").noconvert(), "dw <- dy^T x; dy (M, N), x (M, K)");
  m.def("linear_backward_bias", &linear_backward_bias<T>, py::arg("dy").noconvert(), py::arg("db").noconvert(),
        "db <- column sums of dy (M, N)");
}

}  // namespace

void bind_linear(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace pydl
