// soft_nms: CPU kernel for Soft-NMS (Bodla et al. 2017, "Improving Object Detection With One Line
// of Code").
//
// Math. Candidates are the boxes with score >= score_threshold (compared in double; a NaN score
// never is one). Working scores are held in double. Repeat while a candidate is left:
//   pick p = the candidate with the highest working score (ties: the lowest index); output
//   (p, T(s_p)) and remove p; then for every other candidate i, with iou = IoU(p, i):
//     gaussian: s_i = s_i * exp(-(iou * iou) / sigma)
//     linear:   s_i = s_i * (1 - iou)            if iou > iou_threshold
//     hard:     remove i                          if iou > iou_threshold   (classic NMS)
//   and remove every candidate whose s_i < score_threshold.
// IoU is nms.cpp's, in the boxes' dtype T with one rounding per operation (no FMA):
//   inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1)),  area = (x2-x1)*(y2-y1),
//   iou = inter / (area_p + area_i - inter), then widened to double; an IoU that is not > 0
//   (0/0 from zero-area pairs, NaN from NaN coordinates, -0) counts as 0: no decay.
// The weight and the product are double operations in this exact order (the NumPy reference and
// the CUDA kernel do the same), so all three pick the same boxes.
// Layout: boxes (N, 4) row-major (x1, y1, x2, y2); scores (N,); outputs keep (N,) int64 and
// kept scores (N,) T, of which the first count (the return value) are written.
// Algorithm: the candidates live in compacted coordinate planes in index order; one pass per pick
// decays, drops and compacts them and finds the next pick (strict > on an index-ordered list
// keeps the lowest index on ties). O(N * picks); single-threaded (each pass depends on the last).
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"

// Same roundings as nms.cpp and the reference: no fused multiply-adds.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace pydl {
namespace {

enum Method : int { kGaussian = 0, kLinear = 1, kHard = 2 };

template <typename T>
inline T max_(T a, T b) { return (a < b) ? b : a; }
template <typename T>
inline T min_(T a, T b) { return (b < a) ? b : a; }

template <typename T>
int64_t soft_nms_forward(const T* boxes, const T* scores, int64_t n, double sigma, double sthr, int method,
                         double ithr, int64_t* keep, T* kept) {
  std::vector<T> x1, y1, x2, y2, ar;
  std::vector<double> s;
  std::vector<int64_t> id;
  for (int64_t i = 0; i < n; ++i) {
    const double si = static_cast<double>(scores[i]);
    if (!(si >= sthr)) continue;
    const T* b = boxes + 4 * i;
    x1.push_back(b[0]);
    y1.push_back(b[1]);
    x2.push_back(b[2]);
    y2.push_back(b[3]);
    ar.push_back((b[2] - b[0]) * (b[3] - b[1]));
    s.push_back(si);
    id.push_back(i);
  }
  int64_t m = static_cast<int64_t>(id.size());
  int64_t p = -1;
  double best = -1.0;
  for (int64_t a = 0; a < m; ++a)
    if (s[a] > best) best = s[a], p = a;
  int64_t count = 0;
  while (p >= 0) {
    keep[count] = id[p];
    kept[count] = static_cast<T>(s[p]);
    ++count;
    const T px1 = x1[p], py1 = y1[p], px2 = x2[p], py2 = y2[p], pa = ar[p];
    int64_t w = 0, next = -1;
    best = -1.0;
    for (int64_t a = 0; a < m; ++a) {
      if (a == p) continue;
      const T iw = max_(T(0), min_(px2, x2[a]) - max_(px1, x1[a]));
      const T ih = max_(T(0), min_(py2, y2[a]) - max_(py1, y1[a]));
      const T inter = iw * ih;
      double sc = s[a];
      if (inter > T(0)) {  // inter = 0 (or NaN): iou is 0, -0 or NaN, all counted as 0
        const T q = inter / ((pa + ar[a]) - inter);
        const double iou = q > T(0) ? static_cast<double>(q) : 0.0;
        if (method == kGaussian) {
          sc = sc * std::exp(-(iou * iou) / sigma);
        } else if (iou > ithr) {
          if (method == kHard) continue;
          sc = sc * (1.0 - iou);
        }
      } else if (method != kGaussian && 0.0 > ithr) {  // iou 0 above a negative threshold
        if (method == kHard) continue;
        // linear: a factor 1 - 0 = 1 changes nothing
      }
      if (!(sc >= sthr)) continue;
      x1[w] = x1[a];
      y1[w] = y1[a];
      x2[w] = x2[a];
      y2[w] = y2[a];
      ar[w] = ar[a];
      id[w] = id[a];
      s[w] = sc;
      if (sc > best) best = sc, next = w;
      ++w;
    }
    m = w;
    p = next;
  }
  return count;
}

template <typename T>
int64_t soft_nms_bind(const py::array& boxes, const py::array& scores, double sigma, double sthr, int method,
                      double ithr, carray<int64_t>& keep, const py::array& kept_scores) {
  auto b = boxes.cast<carray<T>>();
  auto s = scores.cast<carray<T>>();
  auto k = kept_scores.cast<carray<T>>();
  PYDL_CHECK(b.ndim() == 2 && b.shape(1) == 4, "soft_nms: boxes must have shape (N, 4)");
  const int64_t n = b.shape(0);
  PYDL_CHECK(s.ndim() == 1 && s.shape(0) == n, "soft_nms: scores must have shape (N,)");
  PYDL_CHECK(keep.ndim() == 1 && keep.shape(0) >= n, "soft_nms: keep must have shape (N,)");
  PYDL_CHECK(k.ndim() == 1 && k.shape(0) >= n, "soft_nms: kept_scores must have shape (N,)");
  PYDL_CHECK(method >= 0 && method <= 2, "soft_nms: method must be 0 (gaussian), 1 (linear) or 2 (hard)");
  PYDL_CHECK(sigma > 0, "soft_nms: sigma must be > 0");
  const T* bp = b.data();
  const T* sp = s.data();
  int64_t* kp = out_ptr(keep);
  T* ksp = out_ptr(k);
  py::gil_scoped_release release;
  return soft_nms_forward(bp, sp, n, sigma, sthr, method, ithr, kp, ksp);
}

}  // namespace

void bind_soft_nms(py::module_& m) {
  m.def(
      "soft_nms",
      [](const py::array& boxes, const py::array& scores, double sigma, double score_threshold, int method,
         double iou_threshold, carray<int64_t> keep, const py::array& kept_scores) -> int64_t {
        PYDL_CHECK(boxes.dtype().is(scores.dtype()) && boxes.dtype().is(kept_scores.dtype()),
                   "soft_nms: boxes, scores and kept_scores must share a dtype");
        if (boxes.dtype().is(py::dtype::of<float>()))
          return soft_nms_bind<float>(boxes, scores, sigma, score_threshold, method, iou_threshold, keep,
                                      kept_scores);
        PYDL_CHECK(boxes.dtype().is(py::dtype::of<double>()), "soft_nms: boxes must be float32 or float64");
        return soft_nms_bind<double>(boxes, scores, sigma, score_threshold, method, iou_threshold, keep,
                                     kept_scores);
      },
      py::arg("boxes"), py::arg("scores"), py::arg("sigma"), py::arg("score_threshold"), py::arg("method"),
      py::arg("iou_threshold"), py::arg("keep"), py::arg("kept_scores"),
      "Soft-NMS (method 0 gaussian, 1 linear, 2 hard): picks to keep[:count] and their scores to "
      "kept_scores[:count]; returns count.");
}

}  // namespace pydl
