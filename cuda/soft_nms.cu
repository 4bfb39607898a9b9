// soft_nms: CUDA kernel for Soft-NMS (Bodla et al. 2017).
//
// Math: exactly the CPU rule (csrc/soft_nms.cpp). Candidates: score >= score_threshold (double
// compare). Working scores in double. Each step picks the candidate of highest working score
// (ties: the lowest index), records it, then decays every other candidate i by
//   gaussian: s_i = s_i * double(float(exp(-(iou * iou) / sigma)));  linear: s_i = s_i * (1 - iou) if iou > thr;
//   hard: remove i if iou > thr;  and removes the candidates with s_i < score_threshold.
// IoU in the boxes' dtype T, one rounding per operation (__f*_rn / __d*_rn: no FMA contraction),
// widened to double; an IoU that is not > 0 (0/0, NaN) counts as 0. The weight and the product
// are double operations in the CPU's order (__dmul_rn, __ddiv_rn; exp is CUDA's double exp).
// Layout: boxes (N, 4) row-major (x1, y1, x2, y2); scores (N,); outputs keep (N,) int64 and kept
// scores (N,) T, the first *count written; workspace ws: N doubles (working scores; -1 = gone,
// since every live score is >= score_threshold >= 0).
// Thread mapping: ONE block of kThreads threads runs all the picks (the picks are sequential),
// with no host round trip. Thread t owns boxes t, t + kThreads, ...: only it reads and writes
// their working scores, so those need no synchronization. Per step, every thread decays its
// boxes against the last pick and keeps its best (score, index); a block argmax (warp shuffles,
// then one warp over the warp results) gives the next pick. The (max score, min index) order is
// a total order, so the reduction is deterministic whatever its shape.
#include <cstdint>

#include "common.cuh"

namespace pydl {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr double kGone = -1.0;

__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// std::max / std::min as the CPU spells them (NaN falls through the same way).
template <typename T>
__device__ __forceinline__ T max_(T a, T b) { return (a < b) ? b : a; }
template <typename T>
__device__ __forceinline__ T min_(T a, T b) { return (b < a) ? b : a; }

// (s, i) beats (bs, bi): higher score, then lower index. Gone/empty entries are (-1, INT64_MAX).
__device__ __forceinline__ bool better(double s, long long i, double bs, long long bi) {
  return s > bs || (s == bs && i < bi);
}

__device__ __forceinline__ void warp_argmax(double& s, long long& i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const double os = __shfl_down_sync(0xffffffffu, s, off);
    const long long oi = __shfl_down_sync(0xffffffffu, i, off);
    if (better(os, oi, s, i)) s = os, i = oi;
  }
}

// Block-wide argmax; every thread returns with the winner. Two barriers: the first publishes
// the warp winners, the second the block winner (and keeps the next call's writes behind this
// call's reads).
__device__ __forceinline__ void block_argmax(double& s, long long& i, double* ws, long long* wi, double* res_s,
                                             long long* res_i) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  warp_argmax(s, i);
  if (lane == 0) {
    ws[warp] = s;
    wi[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    double v = lane < kWarps ? ws[lane] : kGone;
    long long k = lane < kWarps ? wi[lane] : INT64_MAX;
    warp_argmax(v, k);
    if (lane == 0) {
      *res_s = v;
      *res_i = k;
    }
  }
  __syncthreads();
  s = *res_s;
  i = *res_i;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    soft_nms_kernel(const T* __restrict__ boxes, const T* __restrict__ scores, int64_t n, double sigma,
                    double sthr, int method, double ithr, double* __restrict__ work, int64_t* __restrict__ keep,
                    T* __restrict__ kept, int64_t* __restrict__ count_out) {
  __shared__ double ws[kWarps];
  __shared__ long long wi[kWarps];
  __shared__ double res_s;
  __shared__ long long res_i;
  const int t = threadIdx.x;
  double bs = kGone;
  long long bi = INT64_MAX;
  for (int64_t i = t; i < n; i += kThreads) {
    const double si = static_cast<double>(scores[i]);
    const double v = (si >= sthr) ? si : kGone;  // NaN is never a candidate
    work[i] = v;
    if (v >= 0.0 && better(v, i, bs, bi)) bs = v, bi = i;
  }
  block_argmax(bs, bi, ws, wi, &res_s, &res_i);
  int64_t count = 0;
  while (bs >= 0.0) {  // uniform: every thread holds the same winner
    const int64_t p = bi;
    if (t == 0) {
      keep[count] = p;
      kept[count] = static_cast<T>(bs);
    }
    ++count;
    const T* pb = boxes + 4 * p;
    const T px1 = pb[0], py1 = pb[1], px2 = pb[2], py2 = pb[3];
    const T pa = mul_rn(sub_rn(px2, px1), sub_rn(py2, py1));
    bs = kGone;
    bi = INT64_MAX;
    for (int64_t i = t; i < n; i += kThreads) {
      double sc = work[i];
      if (!(sc >= 0.0)) continue;  // gone
      if (i == p) {
        work[i] = kGone;
        continue;
      }
      const T* b = boxes + 4 * i;
      const T bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
      const T iw = max_(T(0), sub_rn(min_(px2, bx2), max_(px1, bx1)));
      const T ih = max_(T(0), sub_rn(min_(py2, by2), max_(py1, by1)));
      const T inter = mul_rn(iw, ih);
      bool gone = false;
      if (inter > T(0)) {
        const T ab = mul_rn(sub_rn(bx2, bx1), sub_rn(by2, by1));
        const T q = div_rn(inter, sub_rn(add_rn(pa, ab), inter));
        const double iou = q > T(0) ? static_cast<double>(q) : 0.0;
        if (method == 0) {
          // the weight rounded to float, as on the CPU: libm and CUDA exp may differ by 1 ulp
          sc = __dmul_rn(sc, static_cast<double>(__double2float_rn(exp(__ddiv_rn(-__dmul_rn(iou, iou), sigma)))));
        } else if (iou > ithr) {
          if (method == 2) gone = true;
          else sc = __dmul_rn(sc, __dsub_rn(1.0, iou));
        }
      } else if (method == 2 && 0.0 > ithr) {  // iou 0 above a negative threshold
        gone = true;
      }
      if (gone || !(sc >= sthr)) {
        work[i] = kGone;
        continue;
      }
      work[i] = sc;
      if (better(sc, i, bs, bi)) bs = sc, bi = i;
    }
    block_argmax(bs, bi, ws, wi, &res_s, &res_i);
  }
  if (t == 0) *count_out = count;
}

template <typename T>
void soft_nms_forward(dptr boxes, dptr scores, int64_t n, double sigma, double sthr, int method, double ithr,
                      dptr work, dptr keep, dptr kept, dptr count, dptr stream) {
  soft_nms_kernel<T><<<1, kThreads, 0, as_stream(stream)>>>(
      as_ptr<const T>(boxes), as_ptr<const T>(scores), n, sigma, sthr, method, ithr, as_ptr<double>(work),
      as_ptr<int64_t>(keep), as_ptr<T>(kept), as_ptr<int64_t>(count));
  PYDL_LAUNCH_CHECK();
}

}  // namespace

void bind_soft_nms_cuda(py::module_& m) {
  m.def(
      "soft_nms_forward",
      [](dptr boxes, dptr scores, int64_t n, double sigma, double score_threshold, int method,
         double iou_threshold, int itemsize, dptr work, dptr keep, dptr kept, dptr count, dptr stream) {
        PYDL_CHECK(n >= 1, "soft_nms: n must be >= 1, got " << n);
        PYDL_CHECK(method >= 0 && method <= 2, "soft_nms: method must be 0, 1 or 2, got " << method);
        PYDL_CHECK(sigma > 0, "soft_nms: sigma must be > 0");
        PYDL_CHECK(score_threshold >= 0, "soft_nms: score_threshold must be >= 0");
        if (itemsize == 4) {
          soft_nms_forward<float>(boxes, scores, n, sigma, score_threshold, method, iou_threshold, work, keep,
                                  kept, count, stream);
        } else {
          PYDL_CHECK(itemsize == 8, "soft_nms: itemsize must be 4 or 8, got " << itemsize);
          soft_nms_forward<double>(boxes, scores, n, sigma, score_threshold, method, iou_threshold, work, keep,
                                   kept, count, stream);
        }
      },
      py::arg("boxes"), py::arg("scores"), py::arg("n"), py::arg("sigma"), py::arg("score_threshold"),
      py::arg("method"), py::arg("iou_threshold"), py::arg("itemsize"), py::arg("work"), py::arg("keep"),
      py::arg("kept_scores"), py::arg("count"), py::arg("stream"),
      "Soft-NMS in one block on the stream: picks to keep[:count], scores to kept_scores[:count], "
      "count to count[0]; work: n doubles.");
}

}  // namespace pydl
