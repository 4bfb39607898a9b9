// activation: the math of every elementwise activation, written once for both devices
// (csrc/activation.cpp loops over it with OpenMP, cuda/activation.cu with grid-stride kernels).
//
// Each activation is a struct templated on the element type (float, double) holding its
// parameters (cast to T, as PyTorch casts its scalars to the tensor's type), with
//   forward(x)        -> y = f(x)
//   backward(dy, v)   -> dx = dy f'(x), where v is x, or y for Sigmoid and Tanh.
// Derivatives at the kinks and the NaN behaviour are PyTorch's (its CPU kernels' comparisons):
//   relu/hardtanh   dx = 0 where x <= lo or x >= hi (so relu'(0) = 0, hardtanh'(lo) = hardtanh'(hi) = 0)
//   leaky_relu      dx = dy where x > 0, else s dy (the slope at 0)
//   hardswish       0 for x < -3, dy (x/3 + 1/2) for -3 <= x <= 3 (-dy/2 at -3, 3 dy/2 at 3), dy above
// Forward comparisons are written so that a NaN x falls through to the branch returning x (or a
// product with it): NaN in, NaN out. Backward comparisons are false for NaN, so relu, hardtanh,
// relu6 and hardswish pass dy through at NaN and leaky_relu scales it by s, as PyTorch does.
#pragma once
#include <math.h>

#if !defined(__CUDA_ARCH__)
#include "vexp.h"
#endif

// As csrc/geometry.h defines it (the same text, so either header may come first).
#if defined(__CUDACC__)
#define PYDL_HD __host__ __device__
#else
#define PYDL_HD
#endif

namespace pydl {
namespace act {

#if defined(__CUDA_ARCH__)  // the GPU: CUDA's device math
PYDL_HD inline float exp_t(float x) { return expf(x); }
PYDL_HD inline double exp_t(double x) { return exp(x); }
#else  // the CPU: vexp.h's e^x, which omp simd loops vectorize
PYDL_HD inline float exp_t(float x) { return vexp(x); }
PYDL_HD inline double exp_t(double x) { return vexp(x); }
#endif
PYDL_HD inline float tanh_t(float x) { return tanhf(x); }
PYDL_HD inline double tanh_t(double x) { return tanh(x); }

// kHeavy: calls exp/tanh; the CPU threads such loops at smaller sizes.

// y = max(x, 0)
template <typename T>
struct Relu {
  static constexpr bool kHeavy = false;
  PYDL_HD T forward(T x) const { return x < T(0) ? T(0) : x; }
  PYDL_HD T backward(T g, T x) const { return x <= T(0) ? T(0) : g; }  // y works as x: y > 0 iff x > 0
};

// y = min(max(x, lo), hi); relu6 is lo = 0, hi = 6 (as in PyTorch).
template <typename T>
struct Hardtanh {
  static constexpr bool kHeavy = false;
  T lo, hi;
  PYDL_HD T forward(T x) const {
    const T v = x < lo ? lo : x;
    return v > hi ? hi : v;
  }
  PYDL_HD T backward(T g, T x) const { return (x <= lo || x >= hi) ? T(0) : g; }  // y works as x too
};

// y = x for x > 0, s x otherwise.
template <typename T>
struct LeakyRelu {
  static constexpr bool kHeavy = false;
  T s;
  PYDL_HD T forward(T x) const { return x > T(0) ? x : x * s; }
  PYDL_HD T backward(T g, T x) const { return x > T(0) ? g : g * s; }
};

// y = x sigmoid(x) = x / (1 + e^-x).
// d/dx [x s(x)] = s + x s'(x) = s + x s (1 - s) = s (1 + x (1 - s)).
template <typename T>
struct Silu {
  static constexpr bool kHeavy = true;
  PYDL_HD T forward(T x) const { return x / (T(1) + exp_t(-x)); }
  PYDL_HD T backward(T g, T x) const {
    const T s = T(1) / (T(1) + exp_t(-x));
    return g * s * (T(1) + x * (T(1) - s));
  }
};

// y = x min(max(x + 3, 0), 6) / 6: 0 below -3, x (x + 3) / 6 on [-3, 3], x above 3.
// On (-3, 3): d/dx [x (x + 3) / 6] = (2x + 3) / 6 = x/3 + 1/2.
template <typename T>
struct Hardswish {
  static constexpr bool kHeavy = false;
  PYDL_HD T forward(T x) const {
    T r = x + T(3);
    r = r < T(0) ? T(0) : r;
    r = r > T(6) ? T(6) : r;
    return x * r / T(6);
  }
  PYDL_HD T backward(T g, T x) const {
    return x < T(-3) ? T(0) : (x <= T(3) ? g * (x / T(3) + T(0.5)) : g);
  }
};

// y = 1 / (1 + e^-x); e^-x overflows to inf for very negative x, giving 0 (no NaN).
// Backward from the output: s' = s (1 - s).
template <typename T>
struct Sigmoid {
  static constexpr bool kHeavy = true;
  PYDL_HD T forward(T x) const { return T(1) / (T(1) + exp_t(-x)); }
  PYDL_HD T backward(T g, T y) const { return g * (T(1) - y) * y; }
};

// Backward from the output: tanh' = 1 - tanh^2.
template <typename T>
struct Tanh {
  static constexpr bool kHeavy = true;
  PYDL_HD T forward(T x) const { return tanh_t(x); }
  PYDL_HD T backward(T g, T y) const { return g * (T(1) - y * y); }
};

}  // namespace act
}  // namespace pydl
