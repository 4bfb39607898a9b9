// nms: CPU kernels for greedy non-maximum suppression (plain and per-category) and box IoU.
//
// Math (torchvision.ops semantics, in the boxes' dtype T, one rounding per operation):
//   area = (x2 - x1) * (y2 - y1)
//   inter = max(0, min(x2a, x2b) - max(x1a, x1b)) * max(0, min(y2a, y2b) - max(y1a, y1b))
//   iou = inter / (area_a + area_b - inter);   b is suppressed by a kept a when (double)iou > thr.
// Greedy order: decreasing score, ties to the lower index, NaN scores first (torch.sort's order).
// Layout: boxes (N, 4) row-major (x1, y1, x2, y2); scores (N,); optional category ids (N,) int64.
//
// Algorithm: sort once, then walk boxes in that order; a kept box only visits the boxes that
// share a cell of a uniform grid with it (CSR lists, compacted as boxes get decided). With
// categories (batched_nms), each category gets its own walk and grid. For
// iou_threshold >= 0 this is exact: a pair sharing no cell has no x- or y-overlap, so inter = 0
// and iou is 0 or 0/0 = NaN, never > thr. Boxes that cannot overlap anything (zero or negative
// extent, non-finite coordinates) stay out of the grid. A negative threshold falls back to the
// all-pairs walk (every pair can then suppress). Single-threaded: the greedy walk is sequential
// and cheap once the grid prunes it. box_iou: one OpenMP thread per block of rows.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "common.h"

// IoU must round exactly as the reference and torchvision: no fused multiply-adds. No FP traps
// either (the default assumes them and then will not if-convert the min/max selects of box_iou).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

namespace pydl {
namespace {

// std::max / std::min spelled out: the NaN behaviour is part of the rule (see the reference).
template <typename T>
inline T max_(T a, T b) { return (a < b) ? b : a; }
template <typename T>
inline T min_(T a, T b) { return (b < a) ? b : a; }

template <typename T>
inline T box_area(const T* b) { return (b[2] - b[0]) * (b[3] - b[1]); }

template <typename T>
inline void inter_union(const T* a, T area_a, const T* b, T area_b, T& inter, T& uni) {
  const T w = max_(T(0), min_(a[2], b[2]) - max_(a[0], b[0]));
  const T h = max_(T(0), min_(a[3], b[3]) - max_(a[1], b[1]));
  inter = w * h;
  uni = (area_a + area_b) - inter;
}

template <typename T>
inline bool suppresses(const T* a, T area_a, const T* b, T area_b, double thr) {
  T inter, uni;
  inter_union(a, area_a, b, area_b, inter, uni);
  const T iou = inter / uni;  // 0/0 = NaN compares false: a zero union never suppresses
  return static_cast<double>(iou) > thr;
}

// Unsigned keys whose ascending order is the greedy order: NaN first, then decreasing score
// (-0.0 ties with +0.0). The GPU uses the same map (cuda/nms.cu).
inline uint32_t desc_key(float s) {
  if (std::isnan(s)) return 0u;
  if (s == 0.0f) s = 0.0f;
  uint32_t u;
  std::memcpy(&u, &s, sizeof u);
  return ~((u & 0x80000000u) ? ~u : (u | 0x80000000u));
}
inline uint64_t desc_key(double s) {
  if (std::isnan(s)) return 0u;
  if (s == 0.0) s = 0.0;
  uint64_t u;
  std::memcpy(&u, &s, sizeof u);
  return ~((u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull));
}

// Greedy order by a stable LSD radix sort (8-bit digits) of the keys: equal scores keep the
// lower index first. Digits shared by every key (common in the high bytes) are skipped.
template <typename T>
std::vector<int64_t> score_order(const T* scores, int64_t n) {
  using K = decltype(desc_key(T(0)));
  constexpr int kDigits = sizeof(K);
  std::vector<K> key(n), key2(n);
  std::vector<int64_t> idx(n), idx2(n);
  std::vector<int64_t> hist(kDigits * 256, 0);
  for (int64_t i = 0; i < n; ++i) {
    const K k = desc_key(scores[i]);
    key[i] = k;
    idx[i] = i;
    for (int d = 0; d < kDigits; ++d) ++hist[d * 256 + ((k >> (8 * d)) & 0xff)];
  }
  for (int d = 0; d < kDigits; ++d) {
    int64_t* h = hist.data() + d * 256;
    if (h[(key[0] >> (8 * d)) & 0xff] == n) continue;  // one bucket holds everything
    int64_t sum = 0;
    for (int b = 0; b < 256; ++b) {
      const int64_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t at = h[(key[i] >> (8 * d)) & 0xff]++;
      key2[at] = key[i];
      idx2[at] = idx[i];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
  return idx;
}

// Uniform grid over the boxes that can overlap something, CSR lists of box ids per cell.
template <typename T>
struct Grid {
  int64_t gx = 1, gy = 1;
  double x0 = 0, y0 = 0, sx = 0, sy = 0;
  std::vector<int64_t> begin, end, ids;
  std::vector<int32_t> span;  // per box: first and last cell column, first and last cell row

  // Monotone in v (a monotone map, truncated after the clamp, so = floor): overlapping ranges
  // share a cell.
  static int32_t cell(double v, double v0, double s, int64_t g) {
    const double c = (v - v0) * s;
    if (!(c > 0)) return 0;
    if (c >= static_cast<double>(g - 1)) return static_cast<int32_t>(g - 1);
    return static_cast<int32_t>(c);
  }

  int64_t set_spans(const T* boxes, const std::vector<char>& valid, const int64_t* mem, int64_t n) {
    int64_t total = 0;
    for (int64_t a = 0; a < n; ++a) {
      const int64_t i = mem[a];
      if (!valid[i]) continue;
      const T* b = boxes + 4 * i;
      int32_t* sp = span.data() + 4 * i;
      sp[0] = cell(double(b[0]), x0, sx, gx);
      sp[1] = cell(double(b[2]), x0, sx, gx);
      sp[2] = cell(double(b[1]), y0, sy, gy);
      sp[3] = cell(double(b[3]), y0, sy, gy);
      total += int64_t(sp[1] - sp[0] + 1) * (sp[3] - sp[2] + 1);
    }
    return total;
  }

  // Over the boxes mem[0..n) (ids < the size of valid); span holds every id's cells.
  void build(const T* boxes, const std::vector<char>& valid, const int64_t* mem, int64_t n) {
    double minx = INFINITY, miny = INFINITY, maxx = -INFINITY, maxy = -INFINITY, sw = 0, sh = 0;
    int64_t m = 0;
    for (int64_t a = 0; a < n; ++a) {
      const int64_t i = mem[a];
      if (!valid[i]) continue;
      const T* b = boxes + 4 * i;
      minx = std::min(minx, double(b[0]));
      miny = std::min(miny, double(b[1]));
      maxx = std::max(maxx, double(b[2]));
      maxy = std::max(maxy, double(b[3]));
      sw += double(b[2]) - double(b[0]);
      sh += double(b[3]) - double(b[1]);
      ++m;
    }
    x0 = minx;
    y0 = miny;
    // Cells about the mean box size (a typical box covers ~4 cells), at most ~4 cells per box.
    auto cells_along = [m](double extent, double mean) -> int64_t {
      if (m == 0 || !std::isfinite(extent) || !(extent > 0) || !(mean > 0)) return 1;
      const double g = std::ceil(extent / mean);
      return g < 1 ? 1 : static_cast<int64_t>(std::min(g, 4096.0));
    };
    gx = cells_along(maxx - minx, sw / std::max<int64_t>(m, 1));
    gy = cells_along(maxy - miny, sh / std::max<int64_t>(m, 1));
    while (gx * gy > 4 * m + 16) (gx >= gy ? gx : gy) = std::max<int64_t>(1, (gx >= gy ? gx : gy) / 2);
    span.resize(4 * valid.size());
    int64_t total;
    for (;;) {  // skewed sizes: coarsen until the lists stay linear in m
      sx = gx > 1 ? gx / (maxx - minx) : 0.0;
      sy = gy > 1 ? gy / (maxy - miny) : 0.0;
      total = set_spans(boxes, valid, mem, n);
      if (total <= 16 * m + 64 || (gx == 1 && gy == 1)) break;
      gx = std::max<int64_t>(1, gx / 2);
      gy = std::max<int64_t>(1, gy / 2);
    }
    const int64_t ncell = gx * gy;
    begin.assign(ncell + 1, 0);
    for (int64_t a = 0; a < n; ++a) {
      const int64_t i = mem[a];
      if (!valid[i]) continue;
      const int32_t* sp = span.data() + 4 * i;
      for (int64_t y = sp[2]; y <= sp[3]; ++y)
        for (int64_t x = sp[0]; x <= sp[1]; ++x) ++begin[y * gx + x + 1];
    }
    for (int64_t c = 0; c < ncell; ++c) begin[c + 1] += begin[c];
    end.assign(begin.begin(), begin.end() - 1);
    ids.resize(total);
    for (int64_t a = 0; a < n; ++a) {
      const int64_t i = mem[a];
      if (!valid[i]) continue;
      const int32_t* sp = span.data() + 4 * i;
      for (int64_t y = sp[2]; y <= sp[3]; ++y)
        for (int64_t x = sp[0]; x <= sp[1]; ++x) ids[end[y * gx + x]++] = i;
    }
  }
};

// Greedy NMS among the boxes mem[0..m), given by decreasing score: sets kept[i] for the kept ones.
template <typename T>
void greedy(const T* boxes, const T* area, const int64_t* mem, int64_t m, double thr,
            const std::vector<char>& valid, std::vector<char>& decided, std::vector<char>& kept,
            std::vector<int64_t>& stamp, Grid<T>& grid) {
  if (!(thr >= 0)) {  // every pair may suppress: the plain all-pairs walk
    for (int64_t a = 0; a < m; ++a) {
      const int64_t i = mem[a];
      if (decided[i]) continue;
      decided[i] = kept[i] = 1;
      const T* bi = boxes + 4 * i;
      for (int64_t b = a + 1; b < m; ++b) {
        const int64_t j = mem[b];
        if (!decided[j] && suppresses(bi, area[i], boxes + 4 * j, area[j], thr)) decided[j] = 1;
      }
    }
    return;
  }
  grid.build(boxes, valid, mem, m);
  for (int64_t a = 0; a < m; ++a) {
    const int64_t i = mem[a];
    if (decided[i]) continue;
    decided[i] = kept[i] = 1;
    if (!valid[i]) continue;
    const T* bi = boxes + 4 * i;
    const T ai = area[i];
    const int32_t* sp = grid.span.data() + 4 * i;
    for (int64_t y = sp[2]; y <= sp[3]; ++y) {
      for (int64_t x = sp[0]; x <= sp[1]; ++x) {
        const int64_t c = y * grid.gx + x;
        int64_t w = grid.begin[c];
        for (int64_t r = grid.begin[c], re = grid.end[c]; r < re; ++r) {
          const int64_t j = grid.ids[r];
          if (decided[j]) continue;  // drop decided boxes from the list
          if (stamp[j] != i) {        // j may sit in several of i's cells: test it once
            stamp[j] = i;
            if (suppresses(bi, ai, boxes + 4 * j, area[j], thr)) {
              decided[j] = 1;
              continue;
            }
          }
          grid.ids[w++] = j;
        }
        grid.end[c] = w;
      }
    }
  }
}

// Writes the kept indices to out[0..count) by decreasing score; returns count. With categories,
// each category runs its own greedy (on its own grid), then the kept flags are read in rank order.
template <typename T>
int64_t nms_forward(const T* boxes, const T* scores, const int64_t* cls, int64_t n, double thr,
                    int64_t* out) {
  if (n <= 0) return 0;
  const std::vector<int64_t> order = score_order(scores, n);
  std::vector<T> area(n);
  std::vector<char> valid(n);
  for (int64_t i = 0; i < n; ++i) {
    const T* b = boxes + 4 * i;
    area[i] = box_area(b);
    valid[i] = std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) &&
               std::isfinite(b[3]) && b[2] > b[0] && b[3] > b[1];
  }
  std::vector<char> decided(n, 0), kept(n, 0);
  std::vector<int64_t> stamp(n, -1);
  Grid<T> grid;
  if (!cls) {
    greedy(boxes, area.data(), order.data(), n, thr, valid, decided, kept, stamp, grid);
  } else {
    std::vector<int64_t> grouped(order);  // by category, rank order inside each
    std::stable_sort(grouped.begin(), grouped.end(), [cls](int64_t a, int64_t b) { return cls[a] < cls[b]; });
    for (int64_t g0 = 0, g1; g0 < n; g0 = g1) {
      for (g1 = g0 + 1; g1 < n && cls[grouped[g1]] == cls[grouped[g0]]; ++g1) {
      }
      greedy(boxes, area.data(), grouped.data() + g0, g1 - g0, thr, valid, decided, kept, stamp, grid);
    }
  }
  int64_t count = 0;
  for (int64_t a = 0; a < n; ++a)
    if (kept[order[a]]) out[count++] = order[a];
  return count;
}

// out[i, j] = IoU(boxes1[i], boxes2[j]); 0 where the union is 0. boxes2 is first split into
// coordinate planes so that the inner loop is unit-stride and vectorizes.
template <typename T>
void box_iou_forward(const T* b1, int64_t n, const T* b2, int64_t m, T* out) {
  std::vector<T> planes(5 * m);
  T *x1 = planes.data(), *y1 = x1 + m, *x2 = y1 + m, *y2 = x2 + m, *ar = y2 + m;
  for (int64_t j = 0; j < m; ++j) {
    x1[j] = b2[4 * j];
    y1[j] = b2[4 * j + 1];
    x2[j] = b2[4 * j + 2];
    y2[j] = b2[4 * j + 3];
    ar[j] = box_area(b2 + 4 * j);
  }
#pragma omp parallel for schedule(static) if (n * m > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T ax1 = b1[4 * i], ay1 = b1[4 * i + 1], ax2 = b1[4 * i + 2], ay2 = b1[4 * i + 3];
    const T ai = box_area(b1 + 4 * i);
    T* o = out + i * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      const T w = max_(T(0), min_(ax2, x2[j]) - max_(ax1, x1[j]));
      const T h = max_(T(0), min_(ay2, y2[j]) - max_(ay1, y1[j]));
      const T inter = w * h;
      const T uni = (ai + ar[j]) - inter;
      const bool empty = uni == T(0);
      const T q = inter / (empty ? T(1) : uni);  // no speculated 0/0: the loop vectorizes
      o[j] = empty ? T(0) : q;
    }
  }
}

template <typename T>
int64_t nms_bind(const py::array& boxes, const py::array& scores, const py::object& idxs, double thr,
                 carray<int64_t>& out) {
  auto b = boxes.cast<carray<T>>();
  auto s = scores.cast<carray<T>>();
  const int64_t n = b.ndim() == 2 ? b.shape(0) : -1;
  PYDL_CHECK(b.ndim() == 2 && b.shape(1) == 4, "nms: boxes must have shape (N, 4)");
  PYDL_CHECK(s.ndim() == 1 && s.shape(0) == n, "nms: scores must have shape (N,)");
  PYDL_CHECK(out.ndim() == 1 && out.shape(0) >= n, "nms: out must have shape (N,)");
  const int64_t* cls = nullptr;
  carray<int64_t> c;
  if (!idxs.is_none()) {
    c = idxs.cast<carray<int64_t>>();
    PYDL_CHECK(c.ndim() == 1 && c.shape(0) == n, "nms: idxs must have shape (N,)");
    cls = c.data();
  }
  const T* bp = b.data();
  const T* sp = s.data();
  int64_t* op = out_ptr(out);
  py::gil_scoped_release release;
  return nms_forward(bp, sp, cls, n, thr, op);
}

template <typename T>
void box_iou_bind(const py::array& boxes1, const py::array& boxes2, py::array& out) {
  auto b1 = boxes1.cast<carray<T>>();
  auto b2 = boxes2.cast<carray<T>>();
  auto o = out.cast<carray<T>>();
  PYDL_CHECK(b1.ndim() == 2 && b1.shape(1) == 4, "box_iou: boxes1 must have shape (N, 4)");
  PYDL_CHECK(b2.ndim() == 2 && b2.shape(1) == 4, "box_iou: boxes2 must have shape (M, 4)");
  const int64_t n = b1.shape(0), m = b2.shape(0);
  PYDL_CHECK(o.ndim() == 2 && o.shape(0) == n && o.shape(1) == m, "box_iou: out must have shape (N, M)");
  const T* p1 = b1.data();
  const T* p2 = b2.data();
  T* op = out_ptr(o);
  py::gil_scoped_release release;
  box_iou_forward(p1, n, p2, m, op);
}

}  // namespace

void bind_nms(py::module_& m) {
  m.def(
      "nms",
      [](const py::array& boxes, const py::array& scores, const py::object& idxs, double thr,
         carray<int64_t> out) -> int64_t {
        PYDL_CHECK(same_dtype(boxes, scores), "nms: boxes and scores must share a dtype");
        return dispatch_float(boxes, "nms", "boxes",
                              [&](auto t) { return nms_bind<decltype(t)>(boxes, scores, idxs, thr, out); });
      },
      py::arg("boxes"), py::arg("scores"), py::arg("idxs"), py::arg("iou_threshold"), py::arg("out"),
      "Greedy NMS (idxs: per-category, or None); writes kept indices to out, returns their count.");
  m.def(
      "box_iou",
      [](const py::array& boxes1, const py::array& boxes2, py::array out) {
        PYDL_CHECK(same_dtype(boxes1, boxes2) && same_dtype(boxes1, out),
                   "box_iou: boxes1, boxes2 and out must share a dtype");
        dispatch_float(boxes1, "box_iou", "boxes1", [&](auto t) { box_iou_bind<decltype(t)>(boxes1, boxes2, out); });
      },
      py::arg("boxes1"), py::arg("boxes2"), py::arg("out"), "Pairwise IoU into out (N, M).");
}

}  // namespace pydl
