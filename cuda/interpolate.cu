// interpolate: CUDA kernels for 2-D nearest and bilinear resizing (F.interpolate), forward and backward.
//
// Math: the per-axis source rules of csrc/interpolate.cpp (PyTorch's CPU formulas, including the
// exact-copy and doubling shortcuts of legacy nearest, whose index is computed in float32):
//   nearest:  i0(o) = o (out == in), o >> 1 (out == 2 in), else min(floor(o * s), in - 1), s float32.
//   bilinear: i0(o) = min(floor(src), in - 1), l1 = clamp(src - i0, 0, 1), i1 = i0 + (i0 < in - 1),
//             src = s*o (align_corners) or max(s*(o + 0.5) - 0.5, 0); identity when out == in.
//   y[oh, ow] = sum over taps (1 - l1h | l1h) x (1 - l1w | l1w) of x[ih, iw];  dx = A_h^T dy A_w.
// Layout: NCHW, C-contiguous.
// Threads, forward: grid.x runs over output positions (oh, ow) (grid-stride), grid.y over chunks of
// kPlanes planes; a thread computes its taps once and writes that position in each plane of its
// chunk (consecutive threads -> consecutive ow: coalesced stores).
// Threads, backward (a gather, no atomics, deterministic): a small kernel first tabulates per axis the
// taps of every output (i0, l1) and, per input index i, the output range [lo, hi) whose taps can hit i
// (i0 == i for nearest; i0 in {i-1, i} for bilinear, found by binary search as i0 is non-decreasing).
// Then one thread per input position (ih, iw) and plane chunk sums w_h(oh, ih) w_w(ow, iw) dy[oh, ow]
// over its ranges, in a fixed order, and writes dx once.
#include <cstdint>

#include "common.cuh"

namespace pydl {
namespace {

constexpr int kBlock = 256;
constexpr int kPlanes = 4;  // planes per thread: the taps are computed once for all of them

template <typename T>
struct AxisP {
  int64_t in, out;
  T s;         // bilinear scale
  float ns;    // nearest scale (float32, as PyTorch)
  bool ac;     // align_corners
};

template <typename T>
AxisP<T> make_axis(int64_t in, int64_t out, bool nearest, bool ac, double sf) {
  AxisP<T> a{in, out, T(0), 0.0f, ac};
  if (nearest) {
    a.ns = sf > 0 ? static_cast<float>(1.0 / sf) : static_cast<float>(in) / static_cast<float>(out);
  } else if (ac) {
    a.s = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
  } else {
    a.s = sf > 0 ? static_cast<T>(1.0 / sf) : static_cast<T>(in) / static_cast<T>(out);
  }
  return a;
}

__device__ __forceinline__ float dfloor(float v) { return floorf(v); }
__device__ __forceinline__ double dfloor(double v) { return floor(v); }

// First tap i0 and the weight l1 of the second tap, for output o.
template <typename T, bool NEAREST>
__device__ __forceinline__ void tap(const AxisP<T>& a, int64_t o, int64_t& i0, T& l1) {
  l1 = T(0);
  if (a.in == a.out) {
    i0 = o;
    return;
  }
  if (NEAREST) {
    if (a.out == 2 * a.in) {
      i0 = o >> 1;
    } else {
      const int64_t v = static_cast<int64_t>(floorf(__fmul_rn(static_cast<float>(o), a.ns)));
      i0 = v < a.in - 1 ? v : a.in - 1;
    }
    return;
  }
  T src = a.ac ? a.s * static_cast<T>(o) : a.s * (static_cast<T>(o) + T(0.5)) - T(0.5);
  if (!a.ac && src < T(0)) src = T(0);
  const int64_t v = static_cast<int64_t>(dfloor(src));
  i0 = v < a.in - 1 ? v : a.in - 1;
  const T l = src - static_cast<T>(i0);
  l1 = l < T(0) ? T(0) : (l > T(1) ? T(1) : l);
}

// The second tap: the next pixel, except at the last one and on identity axes.
template <typename T>
__device__ __forceinline__ int64_t second(const AxisP<T>& a, int64_t i0) {
  return (a.in != a.out && i0 < a.in - 1) ? i0 + 1 : i0;
}

template <typename T, typename I, bool NEAREST>
__global__ void __launch_bounds__(kBlock)
interpolate_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t planes, I spatial,
                           AxisP<T> ah, AxisP<T> aw) {
  const int64_t H = ah.in, W = aw.in, OH = ah.out, OW = aw.out;
  const int64_t chunks = (planes + kPlanes - 1) / kPlanes;
  for (I s = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; s < spatial;
       s += static_cast<I>(gridDim.x) * blockDim.x) {
    const I oh = s / static_cast<I>(OW), ow = s - oh * static_cast<I>(OW);
    int64_t h0, w0;
    T lh, lw;
    tap<T, NEAREST>(ah, oh, h0, lh);
    tap<T, NEAREST>(aw, ow, w0, lw);
    const int64_t h1 = second(ah, h0), w1 = second(aw, w0);
    for (int64_t ch = blockIdx.y; ch < chunks; ch += gridDim.y) {
#pragma unroll
      for (int q = 0; q < kPlanes; ++q) {
        const int64_t p = ch * kPlanes + q;
        if (p < planes) {
          const T* xp = x + p * H * W;
          T v;
          if (NEAREST) {
            v = xp[h0 * W + w0];
          } else {
            const T* r0 = xp + h0 * W;
            const T* r1 = xp + h1 * W;
            v = (T(1) - lh) * ((T(1) - lw) * r0[w0] + lw * r0[w1]) +
                lh * ((T(1) - lw) * r1[w0] + lw * r1[w1]);
          }
          y[(p * OH + oh) * OW + ow] = v;
        }
      }
    }
  }
}

// first(k): the first output whose tap i0 is >= k (out if none).
template <typename T, bool NEAREST>
__device__ int64_t first_at_least(const AxisP<T>& a, int64_t k) {
  int64_t lo = 0, hi = a.out;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    int64_t i0;
    T l1;
    tap<T, NEAREST>(a, mid, i0, l1);
    if (i0 >= k) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// Tables, int64 [lo_h (H), hi_h (H), lo_w (W), hi_w (W), i0_h (OH), i0_w (OW)], T [l1_h (OH), l1_w (OW)].
template <typename T, bool NEAREST>
__global__ void __launch_bounds__(kBlock)
interpolate_tables_kernel(int64_t* __restrict__ itab, T* __restrict__ ltab, AxisP<T> ah, AxisP<T> aw) {
  const int64_t H = ah.in, W = aw.in, OH = ah.out, OW = aw.out;
  const int64_t n = OH + OW + H + W;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (t < OH + OW) {  // an output: its taps
      const bool is_h = t < OH;
      const int64_t o = is_h ? t : t - OH;
      int64_t i0;
      T l1;
      tap<T, NEAREST>(is_h ? ah : aw, o, i0, l1);
      itab[2 * (H + W) + t] = i0;
      ltab[t] = l1;
    } else {  // an input: the outputs that can reach it
      const int64_t u = t - OH - OW;
      const bool is_h = u < H;
      const int64_t i = is_h ? u : u - H;
      const AxisP<T>& a = is_h ? ah : aw;
      int64_t* lo = itab + (is_h ? 0 : 2 * H);
      lo[i] = first_at_least<T, NEAREST>(a, NEAREST ? i : i - 1);
      lo[a.in + i] = first_at_least<T, NEAREST>(a, i + 1);
    }
  }
}

template <typename T, bool NEAREST>
__device__ __forceinline__ T weight(const AxisP<T>& a, int64_t i0, T l1, int64_t i) {
  if (NEAREST) return T(1);  // the range holds exactly the outputs with i0 == i
  T w = i0 == i ? T(1) - l1 : T(0);
  if (second(a, i0) == i) w += l1;
  return w;
}

template <typename T, typename I, bool NEAREST>
__global__ void __launch_bounds__(kBlock)
interpolate_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, const int64_t* __restrict__ itab,
                            const T* __restrict__ ltab, int64_t planes, I spatial, AxisP<T> ah, AxisP<T> aw) {
  const int64_t H = ah.in, W = aw.in, OH = ah.out, OW = aw.out;
  const int64_t* lo_h = itab;
  const int64_t* hi_h = itab + H;
  const int64_t* lo_w = itab + 2 * H;
  const int64_t* hi_w = itab + 2 * H + W;
  const int64_t* i0_h = itab + 2 * (H + W);
  const int64_t* i0_w = i0_h + OH;
  const T* l1_h = ltab;
  const T* l1_w = ltab + OH;
  const int64_t chunks = (planes + kPlanes - 1) / kPlanes;
  for (I s = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; s < spatial;
       s += static_cast<I>(gridDim.x) * blockDim.x) {
    const I ih = s / static_cast<I>(W), iw = s - ih * static_cast<I>(W);
    const int64_t oh0 = lo_h[ih], oh1 = hi_h[ih], ow0 = lo_w[iw], ow1 = hi_w[iw];
    for (int64_t ch = blockIdx.y; ch < chunks; ch += gridDim.y) {
      const int64_t p0 = ch * kPlanes;
      T acc[kPlanes];
#pragma unroll
      for (int q = 0; q < kPlanes; ++q) acc[q] = T(0);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const T wh = weight<T, NEAREST>(ah, i0_h[oh], l1_h[oh], ih);
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          const T w = wh * weight<T, NEAREST>(aw, i0_w[ow], l1_w[ow], iw);
#pragma unroll
          for (int q = 0; q < kPlanes; ++q)
            if (p0 + q < planes) acc[q] += w * dy[((p0 + q) * OH + oh) * OW + ow];
        }
      }
#pragma unroll
      for (int q = 0; q < kPlanes; ++q)
        if (p0 + q < planes) dx[((p0 + q) * H + ih) * W + iw] = acc[q];
    }
  }
}

// ------------------------------------------------------------------------------ host side

// 32-bit positions while the grid-stride sum (at most ~2^29 past the end) cannot overflow.
constexpr int64_t kI32 = int64_t(1) << 30;

dim3 grid2(int64_t spatial, int64_t planes) {
  const int64_t chunks = (planes + kPlanes - 1) / kPlanes;
  return dim3(grid_for(spatial, kBlock), static_cast<unsigned>(chunks < 65535 ? chunks : 65535));
}

template <typename T>
void interpolate_forward(dptr x, dptr y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
                         bool nearest, bool align_corners, double sf_h, double sf_w, dptr stream) {
  const int64_t planes = N * C;
  if (planes == 0) return;
  PYDL_CHECK(H >= 1 && W >= 1 && OH >= 1 && OW >= 1, "interpolate_forward: empty image or output");
  const AxisP<T> ah = make_axis<T>(H, OH, nearest, align_corners, sf_h);
  const AxisP<T> aw = make_axis<T>(W, OW, nearest, align_corners, sf_w);
  const int64_t spatial = OH * OW;
  const dim3 g = grid2(spatial, planes);
  cudaStream_t st = as_stream(stream);
  const T* xp = as_ptr<const T>(x);
  T* yp = as_ptr<T>(y);
  if (spatial < kI32) {
    const int32_t s = static_cast<int32_t>(spatial);
    if (nearest) interpolate_forward_kernel<T, int32_t, true><<<g, kBlock, 0, st>>>(xp, yp, planes, s, ah, aw);
    else interpolate_forward_kernel<T, int32_t, false><<<g, kBlock, 0, st>>>(xp, yp, planes, s, ah, aw);
  } else {
    if (nearest) interpolate_forward_kernel<T, int64_t, true><<<g, kBlock, 0, st>>>(xp, yp, planes, spatial, ah, aw);
    else interpolate_forward_kernel<T, int64_t, false><<<g, kBlock, 0, st>>>(xp, yp, planes, spatial, ah, aw);
  }
  PYDL_LAUNCH_CHECK();
}

// itab: int64 scratch of 2*(H+W) + OH + OW entries; ltab: T scratch of OH + OW entries.
template <typename T>
void interpolate_backward(dptr dy, dptr dx, dptr itab, dptr ltab, int64_t N, int64_t C, int64_t H, int64_t W,
                          int64_t OH, int64_t OW, bool nearest, bool align_corners, double sf_h, double sf_w,
                          dptr stream) {
  const int64_t planes = N * C;
  if (planes == 0) return;
  PYDL_CHECK(H >= 1 && W >= 1 && OH >= 1 && OW >= 1, "interpolate_backward: empty image or output");
  const AxisP<T> ah = make_axis<T>(H, OH, nearest, align_corners, sf_h);
  const AxisP<T> aw = make_axis<T>(W, OW, nearest, align_corners, sf_w);
  cudaStream_t st = as_stream(stream);
  int64_t* it = as_ptr<int64_t>(itab);
  T* lt = as_ptr<T>(ltab);
  const unsigned gt = grid_for(H + W + OH + OW, kBlock);
  if (nearest) interpolate_tables_kernel<T, true><<<gt, kBlock, 0, st>>>(it, lt, ah, aw);
  else interpolate_tables_kernel<T, false><<<gt, kBlock, 0, st>>>(it, lt, ah, aw);
  PYDL_LAUNCH_CHECK();
  const int64_t spatial = H * W;
  const dim3 g = grid2(spatial, planes);
  const T* gp = as_ptr<const T>(dy);
  T* dp = as_ptr<T>(dx);
  if (spatial < kI32) {
    const int32_t s = static_cast<int32_t>(spatial);
    if (nearest) interpolate_backward_kernel<T, int32_t, true><<<g, kBlock, 0, st>>>(gp, dp, it, lt, planes, s, ah, aw);
    else interpolate_backward_kernel<T, int32_t, false><<<g, kBlock, 0, st>>>(gp, dp, it, lt, planes, s, ah, aw);
  } else {
    if (nearest) interpolate_backward_kernel<T, int64_t, true><<<g, kBlock, 0, st>>>(gp, dp, it, lt, planes, spatial, ah, aw);
    else interpolate_backward_kernel<T, int64_t, false><<<g, kBlock, 0, st>>>(gp, dp, it, lt, planes, spatial, ah, aw);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void bind_typed(py::module_& m, const char* suffix) {
  const std::string s(suffix);
  m.def(("interpolate_forward_" + s).c_str(), &interpolate_forward<T>,
        "(x, y, N, C, H, W, OH, OW, nearest, align_corners, sf_h, sf_w, stream)");
  m.def(("interpolate_backward_" + s).c_str(), &interpolate_backward<T>,
        "(dy, dx, itab, ltab, N, C, H, W, OH, OW, nearest, align_corners, sf_h, sf_w, stream)");
}

}  // namespace

void bind_interpolate_cuda(py::module_& m) {
  bind_typed<float>(m, "f32");
  bind_typed<double>(m, "f64");
}

}  // namespace pydl
