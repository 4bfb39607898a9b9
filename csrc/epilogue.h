// The convolution epilogue: y = act(conv(x) + bias + residual), applied by every forward path to
// an output row segment right after it is computed, while it is still in cache (no extra pass).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pydl {

// Activations a convolution can end with (pydl.functional.conv2d's `activation`).
enum class Act : int { none = 0, relu = 1, relu6 = 2, leaky_relu = 3, silu = 4, hardswish = 5 };

// The activations' scalar math, PyTorch's: NaN propagates (the comparisons are false for NaN).
template <typename T>
inline T act_apply(Act a, T v, T slope) {
  switch (a) {
    case Act::relu:
      return v < T(0) ? T(0) : v;
    case Act::relu6:
      return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
    case Act::leaky_relu:
      return v < T(0) ? v * slope : v;
    case Act::silu:
      return v / (T(1) + std::exp(-v));
    case Act::hardswish: {  // PyTorch's x * min(max(x + 3, 0), 6) / 6 (-inf gives NaN there too)
      const T t = v + T(3);
      return v * (t < T(0) ? T(0) : (t > T(6) ? T(6) : t)) / T(6);
    }
    default:
      return v;
  }
}

template <typename T>
struct Epilogue {
  const T* bias = nullptr;      // (K,) or null
  const T* residual = nullptr;  // y's shape (C-contiguous) or null
  Act act = Act::none;
  T slope = T(0.01);  // leaky_relu's negative slope

  // Channel k's bias for run(), or null (no bias, or the path already added it).
  const T* bias_at(int64_t k) const { return bias ? bias + k : nullptr; }

  // Whether run() changes anything beyond adding the bias.
  bool fused() const { return residual || act != Act::none; }

  // dst[i] = act(src[i] + *bp + residual[off + i]) for i < n; off is dst's offset in y, bp the
  // bias still to add (null: none). dst may equal src.
  void run(T* dst, const T* src, int64_t off, const T* bp, int64_t n) const {
    const T* r = residual ? residual + off : nullptr;
    const T b = bp ? *bp : T(0);
    if (act == Act::none) {
      if (r) {
        for (int64_t i = 0; i < n; ++i) dst[i] = src[i] + b + r[i];
      } else if (bp) {
        for (int64_t i = 0; i < n; ++i) dst[i] = src[i] + b;
      } else if (dst != src) {
        std::memcpy(dst, src, (size_t)n * sizeof(T));
      }
      return;
    }
    // One loop per activation: the switch stays outside, so each loop vectorizes.
    switch (act) {
      case Act::relu:
        body(dst, src, r, b, n, [](T v) { return v < T(0) ? T(0) : v; });
        break;
      case Act::relu6:
        body(dst, src, r, b, n, [](T v) { return v < T(0) ? T(0) : (v > T(6) ? T(6) : v); });
        break;
      case Act::leaky_relu: {
        const T s = slope;
        body(dst, src, r, b, n, [s](T v) { return v < T(0) ? v * s : v; });
        break;
      }
      default: {
        const Act a = act;
        const T s = slope;
        body(dst, src, r, b, n, [a, s](T v) { return act_apply(a, v, s); });
      }
    }
  }

 private:
  template <typename F>
  static void body(T* dst, const T* src, const T* r, T b, int64_t n, F f) {
    if (r)
      for (int64_t i = 0; i < n; ++i) dst[i] = f(src[i] + b + r[i]);
    else
      for (int64_t i = 0; i < n; ++i) dst[i] = f(src[i] + b);
  }
};

}  // namespace pydl
