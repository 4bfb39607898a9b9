// interpolate: CPU kernels for 2-D nearest and bilinear resizing (F.interpolate), forward and backward.
//
// Math, per spatial axis (in -> out), exactly PyTorch's CPU formulas:
//   nearest (legacy):  src(o) = o when out == in; o >> 1 when out == 2*in; otherwise
//                      min(floor(o * s), in - 1) in float32, s = 1/scale_factor if given, else in/out.
//   bilinear:          out == in: identity. Otherwise src = s*o (align_corners, s = (in-1)/(out-1), 0 for
//                      out == 1) or max(s*(o + 0.5) - 0.5, 0) (s = 1/scale_factor or in/out), in T;
//                      taps i0 = min(floor(src), in-1), i1 = i0 + (i0 < in-1), l1 = clamp(src - i0, 0, 1),
//                      l0 = 1 - l1.  y[oh, ow] = sum over the 2x2 taps of lh * lw * x[ih, iw].
// Backward: dx = A_h^T dy A_w. Each axis keeps, per input index i, the range [lo, hi) of outputs whose
// taps can hit i (src == i for nearest; i0 in {i-1, i} for bilinear, as i1 <= i0 + 1 and src is monotonic),
// with weight (i0 == i) l0 + (i1 == i) l1.
// Layout: NCHW, C-contiguous. Per-axis tables are built once per call.
// Threads: OpenMP over (plane, row) pairs. The forward writes output row (plane, oh); the backward owns
// input row (plane, ih), zeroes it and accumulates the output rows in its range, so it is race-free and
// deterministic for any thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"

namespace pydl {
namespace {

inline bool parallel_worth(int64_t work) { return work >= (int64_t(1) << 15); }

template <typename T>
struct Axis {
  int64_t in = 0, out = 0;
  std::vector<int64_t> i0, i1;  // per output: its two taps (equal for nearest)
  std::vector<T> l0, l1;        // per output: their weights
  std::vector<int64_t> lo, hi;  // per input: outputs [lo, hi) whose taps may hit it

  // Weight of output o on input i (for o in [lo[i], hi[i])).
  T weight(int64_t o, int64_t i) const {
    T w = 0;
    if (i0[o] == i) w += l0[o];
    if (i1[o] == i) w += l1[o];
    return w;
  }
};

// PyTorch's nearest_idx: float32 arithmetic, with its exact-copy and doubling shortcuts.
inline int64_t nearest_src(int64_t o, int64_t in, int64_t out, double scale_factor) {
  if (out == in) return o;
  if (out == 2 * in) return o >> 1;
  const float s = scale_factor > 0 ? static_cast<float>(1.0 / scale_factor)
                                   : static_cast<float>(in) / static_cast<float>(out);
  return std::min(static_cast<int64_t>(std::floor(static_cast<float>(o) * s)), in - 1);
}

template <typename T>
Axis<T> make_axis(int64_t in, int64_t out, bool nearest, bool align_corners, double scale_factor) {
  Axis<T> a;
  a.in = in;
  a.out = out;
  a.i0.resize(out);
  a.i1.resize(out);
  a.l0.resize(out);
  a.l1.resize(out);
  if (nearest) {
    for (int64_t o = 0; o < out; ++o) {
      a.i0[o] = a.i1[o] = nearest_src(o, in, out, scale_factor);
      a.l0[o] = 1;
      a.l1[o] = 0;
    }
  } else {
    T s;
    if (align_corners) s = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
    else s = scale_factor > 0 ? static_cast<T>(1.0 / scale_factor) : static_cast<T>(in) / static_cast<T>(out);
    for (int64_t o = 0; o < out; ++o) {
      if (in == out) {
        a.i0[o] = a.i1[o] = o;
        a.l0[o] = 1;
        a.l1[o] = 0;
        continue;
      }
      T src = align_corners ? s * static_cast<T>(o) : s * (static_cast<T>(o) + T(0.5)) - T(0.5);
      if (!align_corners && src < 0) src = 0;
      const int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
      const T l1 = std::min(std::max(src - static_cast<T>(i0), T(0)), T(1));
      a.i0[o] = i0;
      a.i1[o] = i0 + (i0 < in - 1 ? 1 : 0);
      a.l0[o] = T(1) - l1;
      a.l1[o] = l1;
    }
  }
  // first(k) = first output with i0 >= k (i0 is non-decreasing in o).
  std::vector<int64_t> first(in + 2, out);
  {
    int64_t o = 0;
    for (int64_t k = 0; k <= in + 1; ++k) {
      while (o < out && a.i0[o] < k) ++o;
      first[k] = o;
    }
  }
  a.lo.resize(in);
  a.hi.resize(in);
  for (int64_t i = 0; i < in; ++i) {
    a.lo[i] = nearest ? first[i] : first[i > 0 ? i - 1 : 0];
    a.hi[i] = first[i + 1];
  }
  return a;
}

template <typename T>
void check_pair(const carray<T>& big, const carray<T>& small, const char* who) {
  PYDL_CHECK(big.ndim() == 4 && small.ndim() == 4, who << ": arrays must be 4-D");
  PYDL_CHECK(big.shape(0) == small.shape(0) && big.shape(1) == small.shape(1),
             who << ": batch and channels of input and output differ");
}

// y <- interpolate(x); y's shape gives the output size.
template <typename T>
void interpolate_forward(carray<T> x, carray<T> y, bool nearest, bool align_corners, double sf_h, double sf_w) {
  check_pair(x, y, "interpolate_forward");
  const int64_t planes = x.shape(0) * x.shape(1);
  const int64_t H = x.shape(2), W = x.shape(3), OH = y.shape(2), OW = y.shape(3);
  const T* xp = in_ptr(x);
  T* yp = out_ptr(y);
  if (planes == 0) return;
  PYDL_CHECK(H >= 1 && W >= 1 && OH >= 1 && OW >= 1, "interpolate_forward: empty image or output");
  py::gil_scoped_release release;
  const Axis<T> ah = make_axis<T>(H, OH, nearest, align_corners, sf_h);
  const Axis<T> aw = make_axis<T>(W, OW, nearest, align_corners, sf_w);
  const int64_t* w0 = aw.i0.data();
  const int64_t* w1 = aw.i1.data();
  const T* lw0 = aw.l0.data();
  const T* lw1 = aw.l1.data();
  const bool w_doubled = nearest && OW == 2 * W;  // then w0[ow] = ow >> 1 (PyTorch's shortcut)
#pragma omp parallel for collapse(2) schedule(static) if (parallel_worth(planes * OH * OW))
  for (int64_t pl = 0; pl < planes; ++pl) {
    for (int64_t oh = 0; oh < OH; ++oh) {
      T* o = yp + (pl * OH + oh) * OW;
      const T* r0 = xp + (pl * H + ah.i0[oh]) * W;
      if (nearest) {
        if (w_doubled) {  // the common x2 case: a duplicating copy that vectorizes
          for (int64_t iw = 0; iw < W; ++iw) o[2 * iw] = o[2 * iw + 1] = r0[iw];
        } else {
          for (int64_t ow = 0; ow < OW; ++ow) o[ow] = r0[w0[ow]];
        }
        continue;
      }
      const T* r1 = xp + (pl * H + ah.i1[oh]) * W;
      const T a0 = ah.l0[oh], a1 = ah.l1[oh];
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t j0 = w0[ow], j1 = w1[ow];
        o[ow] = a0 * (lw0[ow] * r0[j0] + lw1[ow] * r0[j1]) + a1 * (lw0[ow] * r1[j0] + lw1[ow] * r1[j1]);
      }
    }
  }
}

// dx <- A_h^T dy A_w: input row (plane, ih) sums the output rows in its range, scattering along w.
template <typename T>
void interpolate_backward(carray<T> dy, carray<T> dx, bool nearest, bool align_corners, double sf_h,
                          double sf_w) {
  check_pair(dx, dy, "interpolate_backward");
  const int64_t planes = dx.shape(0) * dx.shape(1);
  const int64_t H = dx.shape(2), W = dx.shape(3), OH = dy.shape(2), OW = dy.shape(3);
  const T* gp = in_ptr(dy);
  T* dp = out_ptr(dx);
  if (planes == 0) return;
  PYDL_CHECK(H >= 1 && W >= 1 && OH >= 1 && OW >= 1, "interpolate_backward: empty image or output");
  py::gil_scoped_release release;
  const Axis<T> ah = make_axis<T>(H, OH, nearest, align_corners, sf_h);
  const Axis<T> aw = make_axis<T>(W, OW, nearest, align_corners, sf_w);
  const int64_t* w0 = aw.i0.data();
  const int64_t* w1 = aw.i1.data();
  const T* lw0 = aw.l0.data();
  const T* lw1 = aw.l1.data();
  const bool w_doubled = nearest && OW == 2 * W;  // then w0[ow] = ow >> 1 (PyTorch's shortcut)
#pragma omp parallel for collapse(2) schedule(static) if (parallel_worth(planes * (H * W + OH * OW)))
  for (int64_t pl = 0; pl < planes; ++pl) {
    for (int64_t ih = 0; ih < H; ++ih) {
      T* d = dp + (pl * H + ih) * W;
      std::memset(d, 0, sizeof(T) * W);
      for (int64_t oh = ah.lo[ih]; oh < ah.hi[ih]; ++oh) {
        const T* g = gp + (pl * OH + oh) * OW;
        if (nearest) {
          if (w_doubled) {
            for (int64_t iw = 0; iw < W; ++iw) d[iw] += g[2 * iw] + g[2 * iw + 1];
          } else {
            for (int64_t ow = 0; ow < OW; ++ow) d[w0[ow]] += g[ow];
          }
          continue;
        }
        const T wh = ah.weight(oh, ih);
        if (wh == T(0)) continue;
        for (int64_t ow = 0; ow < OW; ++ow) {
          const T v = wh * g[ow];
          d[w0[ow]] += lw0[ow] * v;
          d[w1[ow]] += lw1[ow] * v;
        }
      }
    }
  }
}

template <typename T>
void bind_typed(py::module_& m) {
  m.def("interpolate_forward", &interpolate_forward<T>, py::arg("x"), py::arg("y"), py::arg("nearest"),
        py::arg("align_corners"), py::arg("sf_h"), py::arg("sf_w"),
        "y <- nearest/bilinear resize of x (N, C, H, W) to y's size; sf_* the given scale factors (0: none)");
  m.def("interpolate_backward", &interpolate_backward<T>, py::arg("dy"), py::arg("dx"), py::arg("nearest"),
        py::arg("align_corners"), py::arg("sf_h"), py::arg("sf_w"),
        "dx <- gradient of interpolate (dx's shape is the input's)");
}

}  // namespace

void bind_interpolate(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace pydl
