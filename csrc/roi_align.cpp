// roi_align: CPU kernels for RoIAlign (torchvision.ops.roi_align), forward and backward.
//
// Math, per roi k = (b, x1, y1, x2, y2), geometry in T exactly as torchvision:
//   o = aligned ? 0.5 : 0;  y0 = y1 * scale - o, rh = y2 * scale - o - y0 (>= 1 unless aligned)
//   bh = rh / PH;  gh = sampling_ratio > 0 ? sampling_ratio : ceil(rh / PH);  count = max(gh*gw, 1)
//   sample (ph, iy): y = y0 + ph * bh + (iy + 0.5) * bh / gh   (x alike)
//   tap of a sample along an axis of length L: none if y < -1 or y > L; else y <= 0 -> 0,
//   lo = (int)y, lo >= L-1 -> lo = hi = L-1 (y = lo), else hi = lo + 1; weights (1 - ly, ly).
//   out[k, c, ph, pw] = sum over samples of  w_lo^y w_lo^x x[lo_y, lo_x] + ... (4 terms) / count
// The bilinear weights factor into a y part and an x part, so each roi's samples are two small
// tap tables (PH*gh rows, PW*gw columns), computed once per roi and reused for every channel.
// Backward (the adjoint): every sample adds dy / count times its four weights to its neighbours.
// Layout: x, dx NCHW; rois (K, 5); y, dy (K, C, PH, PW); all C-contiguous.
// Threads: forward, OpenMP over (roi, block of channels). Backward, OpenMP over (image, block of
// channels): a dx plane belongs to one thread, which visits its image's rois in increasing k,
// so there are no races and the summation order is fixed (bit-identical reruns).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "roi_align.h"

namespace pydl {
namespace {

using namespace roi_align_math;

constexpr int64_t kChannelBlock = 16;

// taps[p * g + i] for bin p, sample i along one axis.
template <typename T>
inline void axis_taps(Tap<T>* taps, T start, T b, int64_t g, int64_t P, int64_t L) {
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < g; ++i) {
      taps[p * g + i] = make_tap(sample_pos(start, p, b, i, g), L);
    }
}

// Validates the rois (backstop: Python checked them) and returns the largest tap table size.
template <typename T>
int64_t scan_rois(const T* rp, int64_t K, int64_t N, T scale, bool aligned, int64_t PH, int64_t PW, int64_t sr) {
  int64_t most = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T* r = rp + 5 * k;
    PYDL_CHECK(r[0] >= 0 && r[0] < static_cast<T>(N), "roi_align: batch index out of range");
    PYDL_CHECK(std::isfinite(r[1]) && std::isfinite(r[2]) && std::isfinite(r[3]) && std::isfinite(r[4]),
               "roi_align: non-finite box coordinate");
    const AlignRoi<T> g = align_roi(r, scale, aligned, PH, PW, sr);
    most = std::max(most, PH * std::max<int64_t>(g.gh, 0) + PW * std::max<int64_t>(g.gw, 0));
  }
  return most;
}

template <typename T>
void roi_align_forward(const carray<T>& x, const carray<T>& rois, carray<T>& y, double spatial_scale,
                       int64_t sampling_ratio, bool aligned) {
  PYDL_CHECK(x.ndim() == 4 && rois.ndim() == 2 && rois.shape(1) == 5 && y.ndim() == 4,
             "roi_align_forward: bad ranks");
  const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  const int64_t K = rois.shape(0), PH = y.shape(2), PW = y.shape(3);
  PYDL_CHECK(y.shape(0) == K && y.shape(1) == C && PH >= 1 && PW >= 1, "roi_align_forward: bad output shape");
  const T* xp = in_ptr(x);
  const T* rp = in_ptr(rois);
  T* yp = out_ptr(y);
  const T scale = static_cast<T>(spatial_scale);
  const int64_t most = scan_rois(rp, K, N, scale, aligned, PH, PW, sampling_ratio);
  py::gil_scoped_release nogil;
  // Tap tables, one per thread, allocated before the parallel region (a bad_alloc raises here).
  const int nt = max_threads();
  std::vector<Tap<T>> buf(static_cast<size_t>(nt) * static_cast<size_t>(std::max<int64_t>(most, 1)));
  const int64_t CB = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t kb = 0; kb < K * CB; ++kb) {
    const int64_t k = kb / CB, c0 = (kb % CB) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
    const AlignRoi<T> g = align_roi(rp + 5 * k, scale, aligned, PH, PW, sampling_ratio);
    const int64_t gh = std::max<int64_t>(g.gh, 0), gw = std::max<int64_t>(g.gw, 0);
    Tap<T>* ty = buf.data() + static_cast<size_t>(thread_id()) * std::max<int64_t>(most, 1);
    Tap<T>* tx = ty + PH * gh;
    axis_taps(ty, g.y0, g.bh, gh, PH, H);
    axis_taps(tx, g.x0, g.bw, gw, PW, W);
    for (int64_t c = c0; c < c1; ++c) {
      const T* plane = xp + (g.b * C + c) * H * W;
      T* out = yp + (k * C + c) * PH * PW;
      for (int64_t ph = 0; ph < PH; ++ph)
        for (int64_t pw = 0; pw < PW; ++pw) {
          T acc = 0;
          for (int64_t iy = 0; iy < gh; ++iy) {
            const Tap<T> a = ty[ph * gh + iy];
            if (!a.valid) continue;
            const T* r0 = plane + a.lo * W;
            const T* r1 = plane + a.hi * W;
            for (int64_t ix = 0; ix < gw; ++ix) {
              const Tap<T> b = tx[pw * gw + ix];
              if (!b.valid) continue;
              acc += a.wlo * b.wlo * r0[b.lo] + a.wlo * b.whi * r0[b.hi] + a.whi * b.wlo * r1[b.lo] +
                     a.whi * b.whi * r1[b.hi];
            }
          }
          out[ph * PW + pw] = acc / g.count;
        }
    }
  }
}

template <typename T>
void roi_align_backward(const carray<T>& dy, const carray<T>& rois, carray<T>& dx, double spatial_scale,
                        int64_t sampling_ratio, bool aligned) {
  PYDL_CHECK(dy.ndim() == 4 && rois.ndim() == 2 && rois.shape(1) == 5 && dx.ndim() == 4,
             "roi_align_backward: bad ranks");
  const int64_t N = dx.shape(0), C = dx.shape(1), H = dx.shape(2), W = dx.shape(3);
  const int64_t K = rois.shape(0), PH = dy.shape(2), PW = dy.shape(3);
  PYDL_CHECK(dy.shape(0) == K && dy.shape(1) == C && PH >= 1 && PW >= 1, "roi_align_backward: bad grad_out shape");
  const T* gp = in_ptr(dy);
  const T* rp = in_ptr(rois);
  T* dxp = out_ptr(dx);
  const T scale = static_cast<T>(spatial_scale);
  const int64_t most = scan_rois(rp, K, N, scale, aligned, PH, PW, sampling_ratio);
  py::gil_scoped_release nogil;
  // The rois of each image, in increasing k (counting sort): the fixed summation order.
  std::vector<int64_t> first(N + 1, 0), order(K);
  for (int64_t k = 0; k < K; ++k) ++first[static_cast<int64_t>(rp[5 * k]) + 1];
  for (int64_t n = 0; n < N; ++n) first[n + 1] += first[n];
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t k = 0; k < K; ++k) order[fill[static_cast<int64_t>(rp[5 * k])]++] = k;
  }
  const int nt = max_threads();
  std::vector<Tap<T>> buf(static_cast<size_t>(nt) * static_cast<size_t>(std::max<int64_t>(most, 1)));
  const int64_t CB = (C + kChannelBlock - 1) / kChannelBlock, HW = H * W;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t nb = 0; nb < N * CB; ++nb) {
    const int64_t n = nb / CB, c0 = (nb % CB) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
    std::memset(dxp + (n * C + c0) * HW, 0, sizeof(T) * (c1 - c0) * HW);
    Tap<T>* ty = buf.data() + static_cast<size_t>(thread_id()) * std::max<int64_t>(most, 1);
    for (int64_t i = first[n]; i < first[n + 1]; ++i) {
      const int64_t k = order[i];
      const AlignRoi<T> g = align_roi(rp + 5 * k, scale, aligned, PH, PW, sampling_ratio);
      const int64_t gh = std::max<int64_t>(g.gh, 0), gw = std::max<int64_t>(g.gw, 0);
      Tap<T>* tx = ty + PH * gh;
      axis_taps(ty, g.y0, g.bh, gh, PH, H);
      axis_taps(tx, g.x0, g.bw, gw, PW, W);
      for (int64_t c = c0; c < c1; ++c) {
        T* plane = dxp + (n * C + c) * HW;
        const T* grad = gp + (k * C + c) * PH * PW;
        for (int64_t ph = 0; ph < PH; ++ph)
          for (int64_t pw = 0; pw < PW; ++pw) {
            const T gb = grad[ph * PW + pw];
            for (int64_t iy = 0; iy < gh; ++iy) {
              const Tap<T> a = ty[ph * gh + iy];
              if (!a.valid) continue;
              T* r0 = plane + a.lo * W;
              T* r1 = plane + a.hi * W;
              for (int64_t ix = 0; ix < gw; ++ix) {
                const Tap<T> b = tx[pw * gw + ix];
                if (!b.valid) continue;  // as torchvision: outside samples pass nothing
                // As torchvision: (grad * w) / count per neighbour.
                r0[b.lo] += gb * (a.wlo * b.wlo) / g.count;
                r0[b.hi] += gb * (a.wlo * b.whi) / g.count;
                r1[b.lo] += gb * (a.whi * b.wlo) / g.count;
                r1[b.hi] += gb * (a.whi * b.whi) / g.count;
              }
            }
          }
      }
    }
  }
}

template <typename T>
void bind_typed(py::module_& m) {
  m.def("roi_align_forward", &roi_align_forward<T>, py::arg("x"), py::arg("rois"), py::arg("y"),
        py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("aligned"),
        "y <- RoIAlign of x (N, C, H, W) over rois (K, 5)");
  m.def("roi_align_backward", &roi_align_backward<T>, py::arg("dy"), py::arg("rois"), py::arg("dx"),
        py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("aligned"),
        "dx <- gradient of roi_align (deterministic)");
}

}  // namespace

void bind_roi_align(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace pydl
