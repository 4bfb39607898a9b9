// local_response_norm: CPU kernels (PyTorch's F.local_response_norm), forward and backward.
//
// Math, for x viewed as (N, C, M) (M = product of the trailing axes), per column (n, m):
//   window(c) = [c - lo, c + hi] with lo = size/2, hi = (size-1)/2, channels outside [0, C) are zero;
//   S_c = sum_{c' in window(c)} x_c'^2,   s_c = k + (alpha/size) S_c,   y_c = x_c s_c^-beta.
// Backward (derivation). c' in window(c) <=> c in [c' - hi, c' + lo] (the transposed window), and
// d s_c / d x_j = (2 alpha/size) x_j [j in window(c)], so
//   dL/dx_j = dy_j s_j^-beta + sum_c dy_c x_c (-beta) s_c^(-beta-1) (2 alpha/size) x_j [j in window(c)]
//           = dy_j s_j^-beta - (2 alpha beta/size) x_j sum_{c = j-hi}^{j+lo} t_c,  t_c = dy_c x_c s_c^(-beta-1).
// The forward returns only y: the backward recomputes s from x (sliding sums, cheap next to the rest),
// so the op stays stateless and the layer caches x alone.
// Sliding sums along C, accumulated in double: S for channel c+1 = S_c + x_{c+1+hi}^2 - x_{c-lo}^2
// (clamped at 0 against rounding). The backward runs three such windows one column pass: at step e it
// adds t_e (window at e), drops t_{e-size} (window at e-size) and writes dx_{e-lo} (window at e-lo), so the
// running sum of t is exactly sum_{c=j-hi}^{j+lo} t_c for j = e - lo.
// Layout: C-contiguous (N, C, M). Threads: OpenMP over (n, block of kB columns); each thread owns whole
// columns, every output element is written once, no races. The lanes of a block vectorize.
#include <algorithm>
#include <cmath>

#include "common.h"

namespace pydl {
namespace {

constexpr int64_t kB = 64;  // columns per block (lanes)

inline bool parallel_worth(int64_t work) { return work >= (int64_t(1) << 15); }

// s^-beta; the common exponents take sqrt paths that vectorize (P: 0 generic, 1 0.75, 2 0.5, 3 1).
template <int P>
inline double neg_pow(double s, double beta) {
  if constexpr (P == 1) return 1.0 / std::sqrt(s * std::sqrt(s));
  else if constexpr (P == 2) return 1.0 / std::sqrt(s);
  else if constexpr (P == 3) return 1.0 / s;
  else return std::pow(s, -beta);
}

inline int pow_kind(double beta) {
  if (beta == 0.75) return 1;
  if (beta == 0.5) return 2;
  if (beta == 1.0) return 3;
  return 0;
}

// Sum of x^2 over window(center) for nb lanes; advance() moves the center by one channel.
template <typename T>
struct Slide {
  const T* x;  // column block base: channel c, lane b at x[c*M + b]
  int64_t M, C, lo, hi, nb, center;
  double S[kB];

  void init(int64_t c) {
    center = c;
    for (int64_t b = 0; b < nb; ++b) S[b] = 0;
    const int64_t a = std::max<int64_t>(0, c - lo), e = std::min<int64_t>(C - 1, c + hi);
    for (int64_t cc = a; cc <= e; ++cc) {
      const T* r = x + cc * M;
      for (int64_t b = 0; b < nb; ++b) S[b] += static_cast<double>(r[b]) * r[b];
    }
  }
  void advance() {
    const int64_t in = center + 1 + hi, out = center - lo;
    if (in >= 0 && in < C) {
      const T* r = x + in * M;
      for (int64_t b = 0; b < nb; ++b) S[b] += static_cast<double>(r[b]) * r[b];
    }
    if (out >= 0 && out < C) {
      const T* r = x + out * M;
      for (int64_t b = 0; b < nb; ++b) S[b] = std::max(0.0, S[b] - static_cast<double>(r[b]) * r[b]);
    }
    ++center;
  }
};

template <typename T, int P>
void forward_block(const T* x, T* y, int64_t C, int64_t M, int64_t nb, int64_t size, double alpha,
                   double beta, double k) {
  Slide<T> s{x, M, C, size / 2, (size - 1) / 2, nb, 0, {}};
  s.init(0);
  const double a = alpha / static_cast<double>(size);
  for (int64_t c = 0; c < C; ++c) {
    const T* xr = x + c * M;
    T* yr = y + c * M;
    for (int64_t b = 0; b < nb; ++b)
      yr[b] = static_cast<T>(static_cast<double>(xr[b]) * neg_pow<P>(k + a * s.S[b], beta));
    s.advance();
  }
}

template <typename T, int P>
void backward_block(const T* dy, const T* x, T* dx, int64_t C, int64_t M, int64_t nb, int64_t size,
                    double alpha, double beta, double k) {
  const int64_t lo = size / 2, hi = (size - 1) / 2;
  Slide<T> lead{x, M, C, lo, hi, nb, 0, {}}, lag{x, M, C, lo, hi, nb, 0, {}}, cur{x, M, C, lo, hi, nb, 0, {}};
  lead.init(0);
  lag.init(-size);
  cur.init(-lo);
  double tsum[kB];
  for (int64_t b = 0; b < nb; ++b) tsum[b] = 0;
  const double a = alpha / static_cast<double>(size);
  const double coef = 2.0 * alpha * beta / static_cast<double>(size);
  for (int64_t e = 0; e < C + lo; ++e) {
    if (e < C) {  // t_e enters
      const T* xr = x + e * M;
      const T* gr = dy + e * M;
      for (int64_t b = 0; b < nb; ++b) {
        const double s = k + a * lead.S[b];
        tsum[b] += static_cast<double>(gr[b]) * xr[b] * neg_pow<P>(s, beta) / s;
      }
    }
    const int64_t q = e - size;
    if (q >= 0) {  // t_{e-size} leaves
      const T* xr = x + q * M;
      const T* gr = dy + q * M;
      for (int64_t b = 0; b < nb; ++b) {
        const double s = k + a * lag.S[b];
        tsum[b] -= static_cast<double>(gr[b]) * xr[b] * neg_pow<P>(s, beta) / s;
      }
    }
    const int64_t j = e - lo;
    if (j >= 0) {
      const T* xr = x + j * M;
      const T* gr = dy + j * M;
      T* dr = dx + j * M;
      for (int64_t b = 0; b < nb; ++b) {
        const double s = k + a * cur.S[b];
        dr[b] = static_cast<T>(static_cast<double>(gr[b]) * neg_pow<P>(s, beta) - coef * xr[b] * tsum[b]);
      }
    }
    lead.advance();
    lag.advance();
    cur.advance();
  }
}

template <typename T>
void check_shapes(const carray<T>& a, const carray<T>& b, const char* who) {
  PYDL_CHECK(a.ndim() == 3 && b.ndim() == 3, who << ": arrays must be viewed as (N, C, M)");
  for (int d = 0; d < 3; ++d) PYDL_CHECK(a.shape(d) == b.shape(d), who << ": shapes differ");
}

template <typename T, typename F>
void for_blocks(int64_t N, int64_t C, int64_t M, F&& body) {
  const int64_t nblk = (M + kB - 1) / kB;
  const int64_t total = N * nblk;
#pragma omp parallel for schedule(static) if (parallel_worth(N * C * M))
  for (int64_t t = 0; t < total; ++t) {
    const int64_t n = t / nblk, m0 = (t % nblk) * kB;
    body(n * C * M + m0, std::min(kB, M - m0));
  }
}

// y <- local_response_norm(x); x and y viewed as (N, C, M).
template <typename T>
void local_response_norm_forward(carray<T> x, carray<T> y, int64_t size, double alpha, double beta, double k) {
  check_shapes(x, y, "local_response_norm_forward");
  PYDL_CHECK(size >= 1, "local_response_norm_forward: size must be >= 1");
  const int64_t N = x.shape(0), C = x.shape(1), M = x.shape(2);
  const T* xp = in_ptr(x);
  T* yp = out_ptr(y);
  if (N * C * M == 0) return;
  py::gil_scoped_release release;
  const int P = pow_kind(beta);
  for_blocks<T>(N, C, M, [&](int64_t off, int64_t nb) {
    switch (P) {
      case 1: forward_block<T, 1>(xp + off, yp + off, C, M, nb, size, alpha, beta, k); break;
      case 2: forward_block<T, 2>(xp + off, yp + off, C, M, nb, size, alpha, beta, k); break;
      case 3: forward_block<T, 3>(xp + off, yp + off, C, M, nb, size, alpha, beta, k); break;
      default: forward_block<T, 0>(xp + off, yp + off, C, M, nb, size, alpha, beta, k);
    }
  });
}

// dx <- gradient of local_response_norm at x for grad_out dy (all viewed as (N, C, M)).
template <typename T>
void local_response_norm_backward(carray<T> dy, carray<T> x, carray<T> dx, int64_t size, double alpha,
                                  double beta, double k) {
  check_shapes(x, dy, "local_response_norm_backward");
  check_shapes(x, dx, "local_response_norm_backward");
  PYDL_CHECK(size >= 1, "local_response_norm_backward: size must be >= 1");
  const int64_t N = x.shape(0), C = x.shape(1), M = x.shape(2);
  const T* gp = in_ptr(dy);
  const T* xp = in_ptr(x);
  T* dp = out_ptr(dx);
  if (N * C * M == 0) return;
  py::gil_scoped_release release;
  const int P = pow_kind(beta);
  for_blocks<T>(N, C, M, [&](int64_t off, int64_t nb) {
    switch (P) {
      case 1: backward_block<T, 1>(gp + off, xp + off, dp + off, C, M, nb, size, alpha, beta, k); break;
      case 2: backward_block<T, 2>(gp + off, xp + off, dp + off, C, M, nb, size, alpha, beta, k); break;
      case 3: backward_block<T, 3>(gp + off, xp + off, dp + off, C, M, nb, size, alpha, beta, k); break;
      default: backward_block<T, 0>(gp + off, xp + off, dp + off, C, M, nb, size, alpha, beta, k);
    }
  });
}

template <typename T>
void bind_typed(py::module_& m) {
  m.def("local_response_norm_forward", &local_response_norm_forward<T>, py::arg("x"), py::arg("y"),
        py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"),
        "y <- x / (k + alpha/size * window sum of x^2 over channels)^beta; arrays viewed as (N, C, M)");
  m.def("local_response_norm_backward", &local_response_norm_backward<T>, py::arg("dy"), py::arg("x"),
        py::arg("dx"), py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"),
        "dx <- gradient of local_response_norm; arrays viewed as (N, C, M)");
}

}  // namespace

void bind_local_response_norm(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace pydl
