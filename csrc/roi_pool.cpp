// roi_pool: CPU kernels for RoI max pooling (torchvision.ops.roi_pool), forward and backward.
//
// Math, per roi k = (b, x1, y1, x2, y2) and bin (ph, pw), geometry in T exactly as torchvision:
//   x1' = round(x1 * scale) (half away from zero), ...;  rh = max(y2' - y1' + 1, 1), rw alike
//   bh = rh / PH;  rows [floor(ph * bh) + y1', ceil((ph + 1) * bh) + y1') clipped to [0, H]
//   y = max over the bin, from -FLT_MAX with strict '>' (first maximum, NaN never wins);
//   an empty bin gives 0 and argmax -1.  argmax = h * W + w within the image plane.
// Backward: dx[b, c].flat[argmax[k, c, ph, pw]] += dy[k, c, ph, pw] for entries inside their bin.
// Layout: x, dx NCHW; rois (K, 5); y, dy, argmax (K, C, PH, PW); all C-contiguous.
// Threads: forward, OpenMP over (roi, block of 16 channels), the roi's bins computed once per
// block. Backward, OpenMP over (image, block of channels) of dx; those planes belong to one thread,
// which visits the rois of its image in increasing k: race-free, and the summation order is fixed
// (bit-identical reruns).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"

namespace pydl {
namespace {

template <typename T>
struct PoolRoi {
  int64_t b, y0, x0;  // batch index, rounded top-left corner
  T bh, bw;           // bin size
};

// The coordinates were checked in Python (finite, |c * scale| <= 2^30); the clamp only keeps the
// integer conversion defined should a caller bypass that.
template <typename T>
inline int64_t round_coord(T v) {
  const T lim = T(1LL << 40);
  v = std::min(std::max(v, -lim), lim);
  return static_cast<int64_t>(std::round(v));
}

template <typename T>
inline PoolRoi<T> pool_roi(const T* r, T scale, int64_t PH, int64_t PW) {
  PoolRoi<T> g;
  g.b = static_cast<int64_t>(r[0]);
  g.x0 = round_coord<T>(r[1] * scale);
  g.y0 = round_coord<T>(r[2] * scale);
  const int64_t x1 = round_coord<T>(r[3] * scale), y1 = round_coord<T>(r[4] * scale);
  const int64_t rw = std::max<int64_t>(x1 - g.x0 + 1, 1), rh = std::max<int64_t>(y1 - g.y0 + 1, 1);
  g.bh = static_cast<T>(rh) / static_cast<T>(PH);
  g.bw = static_cast<T>(rw) / static_cast<T>(PW);
  return g;
}

// Bin p along one axis: [lo, hi) clipped to [0, L].
template <typename T>
inline void bin_range(int64_t p, T b, int64_t start, int64_t L, int64_t& lo, int64_t& hi) {
  lo = static_cast<int64_t>(std::floor(static_cast<T>(p) * b)) + start;
  hi = static_cast<int64_t>(std::ceil(static_cast<T>(p + 1) * b)) + start;
  lo = std::min(std::max<int64_t>(lo, 0), L);
  hi = std::min(std::max<int64_t>(hi, 0), L);
}

template <typename T>
void check_rois(const T* rois, int64_t K, int64_t N) {
  for (int64_t k = 0; k < K; ++k) {
    const T* r = rois + 5 * k;
    PYDL_CHECK(r[0] >= 0 && r[0] < static_cast<T>(N), "roi_pool: batch index out of range");
    PYDL_CHECK(std::isfinite(r[1]) && std::isfinite(r[2]) && std::isfinite(r[3]) && std::isfinite(r[4]),
               "roi_pool: non-finite box coordinate");
  }
}

constexpr int64_t kChannelBlock = 16;

// The clipped bins of one roi: rows [b[2ph], b[2ph+1]), then columns [b[2PH+2pw], b[2PH+2pw+1]).
template <typename T>
inline void roi_bins(const PoolRoi<T>& g, int64_t PH, int64_t PW, int64_t H, int64_t W, int64_t* b) {
  for (int64_t ph = 0; ph < PH; ++ph) bin_range(ph, g.bh, g.y0, H, b[2 * ph], b[2 * ph + 1]);
  for (int64_t pw = 0; pw < PW; ++pw) bin_range(pw, g.bw, g.x0, W, b[2 * PH + 2 * pw], b[2 * PH + 2 * pw + 1]);
}

template <typename T>
void roi_pool_forward(const carray<T>& x, const carray<T>& rois, carray<T>& y, py::object argmax,
                      double spatial_scale) {
  PYDL_CHECK(x.ndim() == 4 && rois.ndim() == 2 && rois.shape(1) == 5 && y.ndim() == 4,
             "roi_pool_forward: bad ranks");
  const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  const int64_t K = rois.shape(0), PH = y.shape(2), PW = y.shape(3);
  PYDL_CHECK(y.shape(0) == K && y.shape(1) == C && PH >= 1 && PW >= 1, "roi_pool_forward: bad output shape");
  int64_t* am = nullptr;
  carray<int64_t> am_arr;
  if (!argmax.is_none()) {
    am_arr = argmax.cast<carray<int64_t>>();
    PYDL_CHECK(am_arr.size() == y.size(), "roi_pool_forward: bad argmax shape");
    am = out_ptr(am_arr);
  }
  const T* xp = in_ptr(x);
  const T* rp = in_ptr(rois);
  T* yp = out_ptr(y);
  check_rois(rp, K, N);
  const T scale = static_cast<T>(spatial_scale);
  const T lowest = static_cast<T>(-FLT_MAX);  // torchvision's start value, for both dtypes
  py::gil_scoped_release nogil;
  const int64_t nb = 2 * (PH + PW), CB = (C + kChannelBlock - 1) / kChannelBlock;
  std::vector<int64_t> buf(static_cast<size_t>(max_threads()) * nb);  // per-thread bin tables
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t kb = 0; kb < K * CB; ++kb) {
    const int64_t k = kb / CB, c0 = (kb % CB) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
    const PoolRoi<T> g = pool_roi(rp + 5 * k, scale, PH, PW);
    int64_t* bins = buf.data() + static_cast<size_t>(thread_id()) * nb;
    roi_bins(g, PH, PW, H, W, bins);
    const int64_t* cols = bins + 2 * PH;
    for (int64_t c = c0; c < c1; ++c) {
      const T* plane = xp + (g.b * C + c) * H * W;
      T* out = yp + (k * C + c) * PH * PW;
      int64_t* aout = am ? am + (k * C + c) * PH * PW : nullptr;
      for (int64_t ph = 0; ph < PH; ++ph) {
        const int64_t hs = bins[2 * ph], he = bins[2 * ph + 1];
        for (int64_t pw = 0; pw < PW; ++pw) {
          const int64_t ws = cols[2 * pw], we = cols[2 * pw + 1];
          const bool empty = he <= hs || we <= ws;
          T best = empty ? T(0) : lowest;
          int64_t arg = -1;
          for (int64_t h = hs; h < he; ++h)
            for (int64_t w = ws; w < we; ++w) {
              const T v = plane[h * W + w];
              if (v > best) {
                best = v;
                arg = h * W + w;
              }
            }
          out[ph * PW + pw] = best;
          if (aout) aout[ph * PW + pw] = arg;
        }
      }
    }
  }
}

template <typename T>
void roi_pool_backward(const carray<T>& dy, const carray<int64_t>& argmax, const carray<T>& rois,
                       carray<T>& dx, double spatial_scale) {
  PYDL_CHECK(dy.ndim() == 4 && rois.ndim() == 2 && rois.shape(1) == 5 && dx.ndim() == 4,
             "roi_pool_backward: bad ranks");
  const int64_t N = dx.shape(0), C = dx.shape(1), H = dx.shape(2), W = dx.shape(3);
  const int64_t K = rois.shape(0), PH = dy.shape(2), PW = dy.shape(3);
  PYDL_CHECK(dy.shape(0) == K && dy.shape(1) == C && argmax.size() == dy.size(),
             "roi_pool_backward: bad grad_out or argmax shape");
  const T* gp = in_ptr(dy);
  const int64_t* ap = in_ptr(argmax);
  const T* rp = in_ptr(rois);
  T* dxp = out_ptr(dx);
  check_rois(rp, K, N);
  const T scale = static_cast<T>(spatial_scale);
  py::gil_scoped_release nogil;
  // The rois of each image, in increasing k (counting sort): the fixed summation order.
  std::vector<int64_t> first(N + 1, 0), order(K);
  for (int64_t k = 0; k < K; ++k) ++first[static_cast<int64_t>(rp[5 * k]) + 1];
  for (int64_t n = 0; n < N; ++n) first[n + 1] += first[n];
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t k = 0; k < K; ++k) order[fill[static_cast<int64_t>(rp[5 * k])]++] = k;
  }
  const int64_t HW = H * W, nb = 2 * (PH + PW), CB = (C + kChannelBlock - 1) / kChannelBlock;
  std::vector<int64_t> buf(static_cast<size_t>(max_threads()) * nb);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t blk = 0; blk < N * CB; ++blk) {
    const int64_t n = blk / CB, c0 = (blk % CB) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
    std::memset(dxp + (n * C + c0) * HW, 0, sizeof(T) * (c1 - c0) * HW);
    int64_t* bins = buf.data() + static_cast<size_t>(thread_id()) * nb;
    const int64_t* cols = bins + 2 * PH;
    for (int64_t i = first[n]; i < first[n + 1]; ++i) {
      const int64_t k = order[i];
      roi_bins(pool_roi(rp + 5 * k, scale, PH, PW), PH, PW, H, W, bins);
      for (int64_t c = c0; c < c1; ++c) {
        T* plane = dxp + (n * C + c) * HW;
        const int64_t base = (k * C + c) * PH * PW;
        for (int64_t ph = 0; ph < PH; ++ph)
          for (int64_t pw = 0; pw < PW; ++pw) {
            const int64_t a = ap[base + ph * PW + pw];
            if (a < 0 || a >= HW) continue;
            const int64_t h = a / W, w = a % W;
            // Only an argmax inside its own bin counts (what the GPU's gather can find).
            if (h >= bins[2 * ph] && h < bins[2 * ph + 1] && w >= cols[2 * pw] && w < cols[2 * pw + 1])
              plane[a] += gp[base + ph * PW + pw];
          }
      }
    }
  }
}

template <typename T>
void bind_typed(py::module_& m) {
  m.def("roi_pool_forward", &roi_pool_forward<T>, py::arg("x"), py::arg("rois"), py::arg("y"),
        py::arg("argmax"), py::arg("spatial_scale"),
        "y (and int64 argmax unless None) <- RoI max pooling of x (N, C, H, W) over rois (K, 5)");
  m.def("roi_pool_backward", &roi_pool_backward<T>, py::arg("dy"), py::arg("argmax"), py::arg("rois"),
        py::arg("dx"), py::arg("spatial_scale"), "dx <- gradient of roi_pool (deterministic)");
}

}  // namespace

void bind_roi_pool(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace pydl
