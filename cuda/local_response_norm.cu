// local_response_norm: CUDA kernels (PyTorch's F.local_response_norm), forward and backward.
//
// Math (derivation in csrc/local_response_norm.cpp), x viewed as (N, C, M), per column (n, m):
//   S_c = sum_{c' = c - size/2}^{c + (size-1)/2} x_c'^2 (zero outside [0, C)),  s_c = k + alpha/size S_c,
//   y_c = x_c s_c^-beta,
//   dx_j = dy_j s_j^-beta - (2 alpha beta/size) x_j sum_{c = j-(size-1)/2}^{j+size/2} dy_c x_c s_c^(-beta-1).
// Sliding window sums along C in double (S_{c+1} = S_c + entering^2 - leaving^2, clamped at 0). The
// backward slides three windows in one pass: at step e it adds t_e, drops t_{e-size} and writes dx_{e-size/2}.
// Layout: C-contiguous (N, C, M): channel c of column (n, m) at (n*C + c)*M + m.
// Threads: one per column (n, m), grid-stride; consecutive threads take consecutive m, so every load and
// store of a channel step is coalesced, and the re-reads of the trailing window hit L1/L2. Each output
// element is written by exactly one thread: no atomics, deterministic.
#include <cstdint>

#include "common.cuh"

namespace pydl {
namespace {

constexpr int kBlock = 256;

// s^-beta (P: 0 generic, 1 beta 0.75, 2 beta 0.5, 3 beta 1); float data takes the float math.
template <int P>
__device__ __forceinline__ float neg_pow_f(float s, float beta) {
  if (P == 1) return 1.0f / sqrtf(s * sqrtf(s));
  if (P == 2) return 1.0f / sqrtf(s);
  if (P == 3) return 1.0f / s;
  return powf(s, -beta);
}
template <int P>
__device__ __forceinline__ double neg_pow_d(double s, double beta) {
  if (P == 1) return 1.0 / sqrt(s * sqrt(s));
  if (P == 2) return 1.0 / sqrt(s);
  if (P == 3) return 1.0 / s;
  return pow(s, -beta);
}

template <typename T, int P>
__device__ __forceinline__ double spow(double s, double beta) {
  if (sizeof(T) == 4) return static_cast<double>(neg_pow_f<P>(static_cast<float>(s), static_cast<float>(beta)));
  return neg_pow_d<P>(s, beta);
}

// Sum of x^2 over window(center) of one column; advance() moves the center by one channel.
template <typename T>
struct Slide {
  const T* x;  // column base: channel c at x[c*M]
  int64_t M, C, lo, hi, center;
  double S;

  __device__ void init(int64_t c) {
    center = c;
    S = 0;
    const int64_t a = c - lo > 0 ? c - lo : 0, e = c + hi < C - 1 ? c + hi : C - 1;
    for (int64_t cc = a; cc <= e; ++cc) {
      const double v = x[cc * M];
      S += v * v;
    }
  }
  __device__ void advance() {
    const int64_t in = center + 1 + hi, out = center - lo;
    if (in >= 0 && in < C) {
      const double v = x[in * M];
      S += v * v;
    }
    if (out >= 0 && out < C) {
      const double v = x[out * M];
      S = fmax(0.0, S - v * v);
    }
    ++center;
  }
};

template <typename T, int P>
__global__ void __launch_bounds__(kBlock)
lrn_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t N, int64_t C, int64_t M, int64_t size,
                   double alpha, double beta, double k) {
  const int64_t cols = N * M;
  const double a = alpha / static_cast<double>(size);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < cols;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / M, m = t - n * M;
    const int64_t base = n * C * M + m;
    Slide<T> s{x + base, M, C, size / 2, (size - 1) / 2, 0, 0.0};
    s.init(0);
    for (int64_t c = 0; c < C; ++c) {
      const double v = x[base + c * M];
      y[base + c * M] = static_cast<T>(v * spow<T, P>(k + a * s.S, beta));
      s.advance();
    }
  }
}

template <typename T, int P>
__global__ void __launch_bounds__(kBlock)
lrn_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, int64_t N, int64_t C,
                    int64_t M, int64_t size, double alpha, double beta, double k) {
  const int64_t cols = N * M;
  const int64_t lo = size / 2, hi = (size - 1) / 2;
  const double a = alpha / static_cast<double>(size);
  const double coef = 2.0 * alpha * beta / static_cast<double>(size);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < cols;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / M, m = t - n * M;
    const int64_t base = n * C * M + m;
    Slide<T> lead{x + base, M, C, lo, hi, 0, 0.0}, lag{x + base, M, C, lo, hi, 0, 0.0},
        cur{x + base, M, C, lo, hi, 0, 0.0};
    lead.init(0);
    lag.init(-size);
    cur.init(-lo);
    double tsum = 0;
    for (int64_t e = 0; e < C + lo; ++e) {
      if (e < C) {  // t_e enters (window at e)
        const double s = k + a * lead.S;
        tsum += static_cast<double>(dy[base + e * M]) * static_cast<double>(x[base + e * M]) *
                spow<T, P>(s, beta) / s;
      }
      const int64_t q = e - size;
      if (q >= 0) {  // t_{e-size} leaves (window at e-size)
        const double s = k + a * lag.S;
        tsum -= static_cast<double>(dy[base + q * M]) * static_cast<double>(x[base + q * M]) *
                spow<T, P>(s, beta) / s;
      }
      const int64_t j = e - lo;
      if (j >= 0) {  // the sum now covers [j - hi, j + lo]
        const double s = k + a * cur.S;
        const int64_t o = base + j * M;
        dx[o] = static_cast<T>(static_cast<double>(dy[o]) * spow<T, P>(s, beta) -
                               coef * static_cast<double>(x[o]) * tsum);
      }
      lead.advance();
      lag.advance();
      cur.advance();
    }
  }
}

int pow_kind(double beta) {
  if (beta == 0.75) return 1;
  if (beta == 0.5) return 2;
  if (beta == 1.0) return 3;
  return 0;
}

template <typename T>
void local_response_norm_forward(dptr x, dptr y, int64_t N, int64_t C, int64_t M, int64_t size, double alpha,
                                 double beta, double k, dptr stream) {
  PYDL_CHECK(size >= 1, "local_response_norm_forward: size must be >= 1");
  if (N * C * M == 0) return;
  const unsigned g = grid_for(N * M, kBlock);
  cudaStream_t st = as_stream(stream);
  const T* xp = as_ptr<const T>(x);
  T* yp = as_ptr<T>(y);
  switch (pow_kind(beta)) {
    case 1: lrn_forward_kernel<T, 1><<<g, kBlock, 0, st>>>(xp, yp, N, C, M, size, alpha, beta, k); break;
    case 2: lrn_forward_kernel<T, 2><<<g, kBlock, 0, st>>>(xp, yp, N, C, M, size, alpha, beta, k); break;
    case 3: lrn_forward_kernel<T, 3><<<g, kBlock, 0, st>>>(xp, yp, N, C, M, size, alpha, beta, k); break;
    default: lrn_forward_kernel<T, 0><<<g, kBlock, 0, st>>>(xp, yp, N, C, M, size, alpha, beta, k);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void local_response_norm_backward(dptr dy, dptr x, dptr dx, int64_t N, int64_t C, int64_t M, int64_t size,
                                  double alpha, double beta, double k, dptr stream) {
  PYDL_CHECK(size >= 1, "local_response_norm_backward: size must be >= 1");
  if (N * C * M == 0) return;
  const unsigned g = grid_for(N * M, kBlock);
  cudaStream_t st = as_stream(stream);
  const T* gp = as_ptr<const T>(dy);
  const T* xp = as_ptr<const T>(x);
  T* dp = as_ptr<T>(dx);
  switch (pow_kind(beta)) {
    case 1: lrn_backward_kernel<T, 1><<<g, kBlock, 0, st>>>(gp, xp, dp, N, C, M, size, alpha, beta, k); break;
    case 2: lrn_backward_kernel<T, 2><<<g, kBlock, 0, st>>>(gp, xp, dp, N, C, M, size, alpha, beta, k); break;
    case 3: lrn_backward_kernel<T, 3><<<g, kBlock, 0, st>>>(gp, xp, dp, N, C, M, size, alpha, beta, k); break;
    default: lrn_backward_kernel<T, 0><<<g, kBlock, 0, st>>>(gp, xp, dp, N, C, M, size, alpha, beta, k);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void bind_typed(py::module_& m, const char* suffix) {
  const std::string s(suffix);
  m.def(("local_response_norm_forward_" + s).c_str(), &local_response_norm_forward<T>,
        "(x, y, N, C, M, size, alpha, beta, k, stream)");
  m.def(("local_response_norm_backward_" + s).c_str(), &local_response_norm_backward<T>,
        "(dy, x, dx, N, C, M, size, alpha, beta, k, stream)");
}

}  // namespace

void bind_local_response_norm_cuda(py::module_& m) {
  bind_typed<float>(m, "f32");
  bind_typed<double>(m, "f64");
}

}  // namespace pydl
