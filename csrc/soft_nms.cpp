// soft_nms: CPU kernel for Soft-NMS (Bodla et al. 2017, "Improving Object Detection With One Line
// of Code").
//
// Math. Candidates are the boxes with score >= score_threshold (compared in double; a NaN score
// never is one). Working scores are held in double. Repeat while a candidate is left:
//   pick p = the candidate with the highest working score (ties: the lowest index); output
//   (p, T(s_p)) and remove p; then for every other candidate i, with iou = IoU(p, i):
//     gaussian: s_i = s_i * double(float(exp(-(iou * iou) / sigma)))   (see gauss())
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
// Algorithm (sparse, the usual path): only pairs with inter > 0 can change a score (any other
// pair has IoU 0 or NaN, weight 1), and for boxes with finite coordinates and positive extent
// that is exactly "x-ranges and y-ranges overlap strictly", symmetric in the pair; boxes without
// (NaN, inf, empty) overlap nothing that counts. So: list the overlapping pairs once (a sweep in
// x1 order), keep the candidates in a tournament tree (max score, then lowest index), and per
// pick decay only its listed neighbours (each decay updates one leaf and its ancestors). Picks,
// weights and products are the dense rule's, in the same order: identical results, in
// O((N + pairs) log N). Dense fallback: 'hard' with iou_threshold < 0 (every pair counts) and
// pathological overlap (more than 64 N + 4096 pairs, bounding the memory): the candidates live in
// compacted planes in index order; one pass per pick decays, drops, compacts them and finds the
// next pick (strict > on an index-ordered list keeps the lowest index on ties), O(N * picks).
// Single-threaded: each pick depends on the last.
#include <algorithm>
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

// exp(-(iou * iou) / sigma) in double, rounded to float: exp differs by up to 1 ulp between libm,
// CUDA and NumPy, and the float rounding makes the three agree (but for a 2^-28 chance).
inline double gauss(double iou, double sigma) {
  return static_cast<double>(static_cast<float>(std::exp(-(iou * iou) / sigma)));
}

// The decayed score of a candidate with score sc at IoU iou (not > 0: pass 0) from the pick;
// returns false when the box is removed ('hard').
inline bool decay(double& sc, double iou, int method, double sigma, double ithr) {
  if (method == kGaussian) {
    if (iou > 0) sc = sc * gauss(iou, sigma);
  } else if (iou > ithr) {
    if (method == kHard) return false;
    sc = sc * (1.0 - iou);
  }
  return true;
}

template <typename T>
inline double pair_iou(const T* a, T area_a, const T* b, T area_b) {
  const T iw = max_(T(0), min_(a[2], b[2]) - max_(a[0], b[0]));
  const T ih = max_(T(0), min_(a[3], b[3]) - max_(a[1], b[1]));
  const T inter = iw * ih;
  if (!(inter > T(0))) return 0.0;
  const T q = inter / ((area_a + area_b) - inter);
  return q > T(0) ? static_cast<double>(q) : 0.0;  // NaN and -0 count as 0
}

// Sparse path (see the header); returns -1 when the pair lists would grow past the budget.
// The sweep may take O(N^2) steps on long thin boxes, still cheaper than the dense pass.
template <typename T>
int64_t soft_nms_sparse(const T* boxes, const T* scores, int64_t n, double sigma, double sthr, int method,
                        double ithr, int64_t* keep, T* kept) {
  std::vector<int64_t> cand;
  std::vector<double> s(n, -1.0);
  std::vector<T> area(n);
  for (int64_t i = 0; i < n; ++i) {
    const double si = static_cast<double>(scores[i]);
    if (!(si >= sthr)) continue;
    s[i] = si;
    const T* b = boxes + 4 * i;
    area[i] = (b[2] - b[0]) * (b[3] - b[1]);
    cand.push_back(i);
  }
  const int64_t m = static_cast<int64_t>(cand.size());
  const int64_t budget = 64 * m + 4096;
  // Boxes that can overlap anything, by x1 (ties by index: any order works, the pairs are symmetric).
  std::vector<int64_t> byx;
  for (int64_t i : cand) {
    const T* b = boxes + 4 * i;
    if (std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3]) && b[2] > b[0] &&
        b[3] > b[1])
      byx.push_back(i);
  }
  std::sort(byx.begin(), byx.end(), [boxes](int64_t a, int64_t b) {
    return boxes[4 * a] < boxes[4 * b] || (boxes[4 * a] == boxes[4 * b] && a < b);
  });
  std::vector<int64_t> pi, pj;  // overlapping pairs
  for (size_t u = 0; u < byx.size(); ++u) {
    const T* a = boxes + 4 * byx[u];
    for (size_t v = u + 1; v < byx.size(); ++v) {
      const T* b = boxes + 4 * byx[v];
      if (!(b[0] < a[2])) break;  // x1 order: no later box starts before a ends
      if (b[1] < a[3] && a[1] < b[3]) {
        if (static_cast<int64_t>(pi.size()) >= budget) return -1;
        pi.push_back(byx[u]);
        pj.push_back(byx[v]);
      }
    }
  }
  // CSR adjacency, both directions.
  std::vector<int64_t> begin(n + 1, 0), adj(2 * pi.size());
  for (size_t e = 0; e < pi.size(); ++e) ++begin[pi[e] + 1], ++begin[pj[e] + 1];
  for (int64_t i = 0; i < n; ++i) begin[i + 1] += begin[i];
  {
    std::vector<int64_t> at(begin.begin(), begin.end() - 1);
    for (size_t e = 0; e < pi.size(); ++e) adj[at[pi[e]]++] = pj[e], adj[at[pj[e]]++] = pi[e];
  }
  // Tournament tree over all n boxes: node k holds the best (score, then lowest index) of its
  // leaves; gone boxes have score -1. A decay updates one leaf and its ancestors, O(log n).
  int64_t leaves = 1;
  while (leaves < n) leaves *= 2;
  std::vector<int64_t> tree(2 * leaves, -1);
  auto beats = [&s](int64_t a, int64_t b) {  // a is better than b (-1: no box)
    if (b < 0) return a >= 0;
    if (a < 0) return false;
    return s[a] > s[b] || (s[a] == s[b] && a < b);
  };
  for (int64_t i = 0; i < n; ++i) tree[leaves + i] = s[i] >= 0.0 ? i : -1;
  for (int64_t k = leaves - 1; k >= 1; --k) tree[k] = beats(tree[2 * k + 1], tree[2 * k]) ? tree[2 * k + 1] : tree[2 * k];
  auto update = [&](int64_t i) {
    int64_t k = leaves + i;
    tree[k] = s[i] >= 0.0 ? i : -1;
    for (k /= 2; k >= 1; k /= 2) tree[k] = beats(tree[2 * k + 1], tree[2 * k]) ? tree[2 * k + 1] : tree[2 * k];
  };
  int64_t count = 0;
  while (tree[1] >= 0) {
    const int64_t p = tree[1];
    keep[count] = p;
    kept[count] = static_cast<T>(s[p]);
    ++count;
    s[p] = -1.0;
    update(p);
    const T* bp = boxes + 4 * p;
    for (int64_t r = begin[p]; r < begin[p + 1]; ++r) {
      const int64_t j = adj[r];
      double sc = s[j];
      if (!(sc >= 0.0)) continue;
      const double iou = pair_iou(bp, area[p], boxes + 4 * j, area[j]);
      if (!decay(sc, iou, method, sigma, ithr) || !(sc >= sthr)) sc = -1.0;
      if (sc != s[j]) {
        s[j] = sc;
        update(j);
      }
    }
  }
  return count;
}

template <typename T>
int64_t soft_nms_dense(const T* boxes, const T* scores, int64_t n, double sigma, double sthr, int method,
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
          sc = sc * gauss(iou, sigma);
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
int64_t soft_nms_forward(const T* boxes, const T* scores, int64_t n, double sigma, double sthr, int method,
                         double ithr, int64_t* keep, T* kept) {
  if (!(method == kHard && ithr < 0)) {
    const int64_t count = soft_nms_sparse(boxes, scores, n, sigma, sthr, method, ithr, keep, kept);
    if (count >= 0) return count;
  }
  return soft_nms_dense(boxes, scores, n, sigma, sthr, method, ithr, keep, kept);
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
        PYDL_CHECK(same_dtype(boxes, scores) && same_dtype(boxes, kept_scores),
                   "soft_nms: boxes, scores and kept_scores must share a dtype");
        return dispatch_float(boxes, "soft_nms", "boxes", [&](auto t) {
          return soft_nms_bind<decltype(t)>(boxes, scores, sigma, score_threshold, method, iou_threshold, keep,
                                            kept_scores);
        });
      },
      py::arg("boxes"), py::arg("scores"), py::arg("sigma"), py::arg("score_threshold"), py::arg("method"),
      py::arg("iou_threshold"), py::arg("keep"), py::arg("kept_scores"),
      "Soft-NMS (method 0 gaussian, 1 linear, 2 hard): picks to keep[:count] and their scores to "
      "kept_scores[:count]; returns count.");
}

}  // namespace pydl
