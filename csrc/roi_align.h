// roi_align: the per-roi and per-sample arithmetic, one copy shared by the CPU kernels
// (csrc/roi_align.cpp) and the CUDA kernels (cuda/roi_align.cu), so that what the CPU tests
// check about a roi's grid and its bilinear taps also holds on the GPU.
#pragma once
#include <cmath>
#include <cstdint>

#include "geometry.h"  // PYDL_HD

namespace pydl {
namespace roi_align_math {

// A roi (batch index, x1, y1, x2, y2) in feature-map coordinates: its top-left corner, its
// bin size, its sampling grid per bin (gh x gw) and the divisor of a bin's sum.
template <typename T>
struct AlignRoi {
  int64_t b, gh, gw;
  T y0, x0, bh, bw, count;
};

template <typename T>
PYDL_HD inline AlignRoi<T> align_roi(const T* r, T scale, bool aligned, int64_t PH, int64_t PW, int64_t sr) {
  AlignRoi<T> g;
  const T off = aligned ? T(0.5) : T(0);
  g.b = static_cast<int64_t>(r[0]);
  g.x0 = r[1] * scale - off;
  g.y0 = r[2] * scale - off;
  T rw = r[3] * scale - off - g.x0;
  T rh = r[4] * scale - off - g.y0;
  if (!aligned) {  // malformed rois are forced to 1x1
    rw = rw > T(1) ? rw : T(1);
    rh = rh > T(1) ? rh : T(1);
  }
  g.bh = rh / static_cast<T>(PH);
  g.bw = rw / static_cast<T>(PW);
  g.gh = sr > 0 ? sr : static_cast<int64_t>(std::ceil(rh / static_cast<T>(PH)));
  g.gw = sr > 0 ? sr : static_cast<int64_t>(std::ceil(rw / static_cast<T>(PW)));
  const int64_t cnt = g.gh * g.gw;
  g.count = static_cast<T>(cnt > 1 ? cnt : 1);
  return g;
}

// The two neighbouring rows (or columns) of a sample at v and their bilinear weights.
template <typename T>
struct Tap {
  int64_t lo, hi;
  T wlo, whi;
  bool valid;  // false: the sample lies outside the map and counts as 0 (skipped)
};

template <typename T>
PYDL_HD inline Tap<T> make_tap(T v, int64_t L) {
  Tap<T> t{0, 0, T(0), T(0), false};
  if (v < T(-1) || v > static_cast<T>(L)) return t;
  if (v <= T(0)) v = T(0);
  int64_t lo = static_cast<int64_t>(v), hi;
  if (lo >= L - 1) {
    hi = lo = L - 1;
    v = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  const T l = v - static_cast<T>(lo);
  t.lo = lo;
  t.hi = hi;
  t.wlo = T(1) - l;
  t.whi = l;
  t.valid = true;
  return t;
}

// Position of sample i (of g) of bin p along one axis, as torchvision computes it.
template <typename T>
PYDL_HD inline T sample_pos(T start, int64_t p, T b, int64_t i, int64_t g) {
  return start + static_cast<T>(p) * b + static_cast<T>(static_cast<float>(i) + .5f) * b / static_cast<T>(g);
}

}  // namespace roi_align_math
}  // namespace pydl
