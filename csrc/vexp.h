// vexp: e^x in plain arithmetic that `omp simd` loops vectorize (libm's exp is one call per
// element), for softmax / cross entropy and the exp-based activations on the CPU.
#pragma once
#include <cstdint>
#include <limits>

namespace pydl {

// exp(x), accurate up to x = 88 / 709 (inf above; softmax passes x <= 0): x = k ln2 + r, |r| <= ln2/2,
// exp(r) by its Taylor polynomial (degree 7 float: rel. error < 1e-8; degree 13
// double: < 2e-16), 2^k built in the exponent bits. k comes out of the round-to-nearest
// "magic number" add, so no float->int conversion is needed (vectorizes on AVX2).
// Below the smallest normal result it returns 0 (x < -87 / -708); NaN stays NaN.
inline __attribute__((always_inline)) float vexp(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  float t = x * 1.44269504088896341f + magic;
  float kf = t - magic;
  float r = x - kf * 0.693145751953125f;  // ln2 high part: kf * hi is exact
  r = r - kf * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // Unsigned: the same bits, without the UB of shifting a negative k (x < -87, whose result
  // the select below discards) or of overflowing the subtraction.
  uint32_t k = __builtin_bit_cast(uint32_t, t) - __builtin_bit_cast(uint32_t, magic);
  float scale = __builtin_bit_cast(float, (k + 127u) << 23);
  return x < -87.0f ? 0.0f : (x > 88.0f ? std::numeric_limits<float>::infinity() : p * scale);
}

inline __attribute__((always_inline)) double vexp(double x) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  double t = x * 1.4426950408889634074 + magic;
  double kf = t - magic;
  double r = x - kf * 0.693147180369123816490;
  r = r - kf * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  uint64_t k = __builtin_bit_cast(uint64_t, t) - __builtin_bit_cast(uint64_t, magic);  // unsigned: see above
  double scale = __builtin_bit_cast(double, (k + 1023u) << 52);
  return x < -708.0 ? 0.0 : (x > 709.0 ? std::numeric_limits<double>::infinity() : p * scale);
}

}  // namespace pydl
