// The convolution epilogue: y = act(conv(x) + bias + residual), applied by every forward path to
// an output row segment right after it is computed, while it is still in cache (no extra pass).
#pragma once
#include <cstdint>
#include <cstring>

#include "activation.h"

namespace pydl {

// Activations a convolution can end with (pydl.functional.conv2d's `activation`).
enum class Act : int { none = 0, relu = 1, relu6 = 2, leaky_relu = 3, silu = 4, hardswish = 5 };

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
    // In place (dst == src) the loops read and write one pointer: with two, exact aliasing
    // fails the compiler's overlap check and its vectorized loop is skipped.
    if (dst == src)
      run_impl<true>(dst, dst, off, bp, n);
    else
      run_impl<false>(dst, src, off, bp, n);
  }

 private:
  template <bool InPlace>
  void run_impl(T* dst, const T* src_, int64_t off, const T* bp, int64_t n) const {
    const T* src = InPlace ? dst : src_;
    const T* r = residual ? residual + off : nullptr;
    const T b = bp ? *bp : T(0);
    if (act == Act::none) {
      if (r) {
        for (int64_t i = 0; i < n; ++i) dst[i] = (InPlace ? dst[i] : src[i]) + b + r[i];
      } else if (bp) {
        for (int64_t i = 0; i < n; ++i) dst[i] = (InPlace ? dst[i] : src[i]) + b;
      } else if (!InPlace) {
        std::memcpy(dst, src, (size_t)n * sizeof(T));
      }
      return;
    }
    // One loop per activation (the math of csrc/activation.h): the switch stays outside.
    switch (act) {
      case Act::relu:
        return body<InPlace>(dst, src, r, b, n, act::Relu<T>{});
      case Act::relu6:
        return body<InPlace>(dst, src, r, b, n, act::Hardtanh<T>{T(0), T(6)});
      case Act::leaky_relu:
        return body<InPlace>(dst, src, r, b, n, act::LeakyRelu<T>{slope});
      case Act::silu:
        return body<InPlace>(dst, src, r, b, n, act::Silu<T>{});
      case Act::hardswish:
        return body<InPlace>(dst, src, r, b, n, act::Hardswish<T>{});
      default:
        return;
    }
  }

  template <bool InPlace, typename Op>
  static void body(T* dst, const T* src, const T* r, T b, int64_t n, const Op op) {
    if (r)
      for (int64_t i = 0; i < n; ++i) dst[i] = op.forward((InPlace ? dst[i] : src[i]) + b + r[i]);
    else
      for (int64_t i = 0; i < n; ++i) dst[i] = op.forward((InPlace ? dst[i] : src[i]) + b);
  }
};

}  // namespace pydl
