// pool: CUDA kernels for 2-D max, average and adaptive average pooling, forward and backward.
//
// Math, per (n, c) plane (see csrc/pool.cpp for the full statement):
//   max:  y = max over the window taps inside the image; argmax = h*W + w of the first maximum
//         in (i, j) scan order, a NaN always wins (the last NaN): PyTorch's rule. A window with no
//         tap inside the image gives -inf and index -1.
//   avg:  y = window sum / divisor (clipped-to-padded-image size, taps inside, or an override).
//   adaptive avg: mean over rows [floor(oh*H/OH), ceil((oh+1)*H/OH)), same for columns.
// Layout: NCHW, C-contiguous; indices int64, flat within a plane.
// Thread mapping:
//   forward max/avg: one thread per output, grid-stride; window sizes 2 and 3 are unrolled at
//     compile time so all taps' loads are in flight together.
//   adaptive forward: one warp per output (lanes stride over the window, fixed-order shuffle sum).
//   backward (all): GATHER, one thread per V consecutive input elements of a row (V = 4/2/1 as the
//     row length and alignment allow, one vector store): each sums the outputs whose windows cover
//     it. No atomics, so results are deterministic and bit-identical across runs.
// Index math: when every array has < 2^31 elements, thread indices are 32-bit and are split into
// (plane, row, column) by multiply-shift division (Div<uint32_t>); otherwise 64-bit division.
// Flat memory offsets are always formed in 64 bits.
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "common.cuh"

namespace pydl {
namespace {

constexpr int kBlock = 256;

template <typename T>
__device__ __forceinline__ T neg_inf() { return -std::numeric_limits<T>::infinity(); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Division of a thread's flat index by a size fixed at launch. 32-bit: a multiply-high, an add
// and a shift (the invariant-divisor method of Granlund and Montgomery; exact for n, d < 2^31,
// which the host guarantees before choosing it); 64-bit: a plain division.
template <typename I>
struct Div;
template <>
struct Div<uint32_t> {
  uint32_t d, m, s;
  explicit Div(int64_t dd) : d(static_cast<uint32_t>(dd)), m(0), s(0) {
    while ((uint64_t(1) << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};
template <>
struct Div<int64_t> {
  int64_t d;
  explicit Div(int64_t dd) : d(dd) {}
  __device__ __forceinline__ int64_t div(int64_t n) const { return n / d; }
};

struct Win {  // the pooling window, both axes
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// ------------------------------------------------------------------------------- max pooling

template <typename T, typename I, int K, bool IDX>
__global__ void __launch_bounds__(kBlock)
max_pool2d_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ ind,
                          I total, Div<I> dOH, Div<I> dOW, int64_t H, int64_t W, Win win) {
  const int KH = K ? K : win.kh, KW = K ? K : win.kw;
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const I t = dOW.div(i);
    const I ow = i - t * dOW.d;
    const I nc = dOH.div(t);
    const I oh = t - nc * dOH.d;
    const T* __restrict__ plane = x + static_cast<int64_t>(nc) * H * W;
    const int64_t h0 = static_cast<int64_t>(oh) * win.sh - win.ph;
    const int64_t w0 = static_cast<int64_t>(ow) * win.sw - win.pw;
    T m = neg_inf<T>();
    int64_t best = -1;
#pragma unroll
    for (int a = 0; a < KH; ++a) {
      const int64_t h = h0 + static_cast<int64_t>(a) * win.dh;
      if (h < 0 || h >= H) continue;
#pragma unroll
      for (int b = 0; b < KW; ++b) {
        const int64_t w = w0 + static_cast<int64_t>(b) * win.dw;
        if (w < 0 || w >= W) continue;
        const int64_t k = h * W + w;
        const T v = __ldg(plane + k);
        // The first tap inside the image starts; later ones replace on > or NaN.
        if (best < 0 || v > m || v != v) {
          m = v;
          best = k;
        }
      }
    }
    y[i] = m;
    if (IDX) ind[i] = best;
  }
}

// The common 3x3 / stride 2 / padding 1 float32 case without indices, W == 2 OW, OW % 4 == 0:
// one thread makes 4 adjacent outputs of a row (one 16-byte store). Their windows span input
// columns 8j - 1 .. 8j + 7 of each of the 3 rows: two aligned 16-byte loads and one scalar,
// 9 loads for 4 outputs instead of 36. Padding taps (column -1, rows outside) count as -inf,
// which leaves a max unchanged; a NaN tap always wins, as in the generic kernel.
__device__ __forceinline__ void max_nan(float& m, float v) { m = (v > m || v != v) ? v : m; }

template <typename I>
__global__ void __launch_bounds__(kBlock)
max_pool2d_3s2_f32_kernel(const float* __restrict__ x, float* __restrict__ y, I total4, Div<I> dOW4,
                          Div<I> dOH, I H, I W) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total4; i += stride) {
    const I t = dOW4.div(i);
    const I j = i - t * dOW4.d;
    const I nc = dOH.div(t);
    const I oh = t - nc * dOH.d;
    const float* __restrict__ plane = x + static_cast<int64_t>(nc) * H * W;
    const float ninf = -INFINITY;
    float4 a[3], b[3];
    float l[3];
#pragma unroll
    for (int r = 0; r < 3; ++r) {
      const int64_t h = static_cast<int64_t>(oh) * 2 - 1 + r;
      if (h >= 0 && h < static_cast<int64_t>(H)) {
        const float* row = plane + h * W + static_cast<int64_t>(j) * 8;
        a[r] = __ldg(reinterpret_cast<const float4*>(row));
        b[r] = __ldg(reinterpret_cast<const float4*>(row + 4));
        l[r] = j > 0 ? __ldg(row - 1) : ninf;
      } else {
        a[r] = b[r] = make_float4(ninf, ninf, ninf, ninf);
        l[r] = ninf;
      }
    }
    float4 o = make_float4(ninf, ninf, ninf, ninf);
#pragma unroll
    for (int r = 0; r < 3; ++r) {  // rows in scan order; columns 2q - 1, 2q, 2q + 1 of output q
      max_nan(o.x, l[r]);
      max_nan(o.x, a[r].x);
      max_nan(o.x, a[r].y);
      max_nan(o.y, a[r].y);
      max_nan(o.y, a[r].z);
      max_nan(o.y, a[r].w);
      max_nan(o.z, a[r].w);
      max_nan(o.z, b[r].x);
      max_nan(o.z, b[r].y);
      max_nan(o.w, b[r].y);
      max_nan(o.w, b[r].z);
      max_nan(o.w, b[r].w);
    }
    reinterpret_cast<float4*>(y)[i] = o;
  }
}

// First and last output (inclusive) whose window [o*s - p, o*s - p + (k-1)*d] can hold position
// pos; the caller checks each candidate exactly.
__device__ __forceinline__ void covering(int64_t pos_lo, int64_t pos_hi, int64_t k, int64_t s,
                                         int64_t p, int64_t d, int64_t out, int64_t& lo,
                                         int64_t& hi) {
  const int64_t a = pos_lo + p - (k - 1) * d;
  lo = a <= 0 ? 0 : (a + s - 1) / s;
  hi = (pos_hi + p) / s;
  if (hi > out - 1) hi = out - 1;
}

// dx[h, w] = sum of dy[oh, ow] over the outputs whose argmax is (h, w); only outputs whose window
// covers (h, w) can have it, so those are the only ones read.
template <typename T, typename I, int V>
__global__ void __launch_bounds__(kBlock)
max_pool2d_backward_kernel(const T* __restrict__ dy, const int64_t* __restrict__ ind,
                           T* __restrict__ dx, I total, Div<I> dH, Div<I> dWV, int64_t W, int64_t OH,
                           int64_t OW, Win win) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const I t = dWV.div(i);
    const I wq = i - t * dWV.d;
    const I nc = dH.div(t);
    const I h = t - nc * dH.d;
    const int64_t w0 = static_cast<int64_t>(wq) * V;
    const int64_t hw0 = static_cast<int64_t>(h) * W + w0;  // flat index of this thread's first element
    int64_t oh_lo, oh_hi, ow_lo, ow_hi;
    covering(h, h, win.kh, win.sh, win.ph, win.dh, OH, oh_lo, oh_hi);
    covering(w0, w0 + V - 1, win.kw, win.sw, win.pw, win.dw, OW, ow_lo, ow_hi);
    const int64_t obase = static_cast<int64_t>(nc) * OH * OW;
    Vec<T, V> acc;
#pragma unroll
    for (int v = 0; v < V; ++v) acc.v[v] = T(0);
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        const int64_t o = obase + oh * OW + ow;
        const int64_t k = __ldg(ind + o) - hw0;
        if (k >= 0 && k < V) {
          const T g = __ldg(dy + o);
#pragma unroll
          for (int v = 0; v < V; ++v)
            if (k == v) acc.v[v] += g;
        }
      }
    }
    *reinterpret_cast<Vec<T, V>*>(dx + static_cast<int64_t>(nc) * dH.d * W + hw0) = acc;
  }
}

// --------------------------------------------------------------------------- average pooling

// Divisor of window (oh, ow) and whether it holds any input element (PyTorch's formula).
__device__ __forceinline__ int64_t avg_window(int64_t oh, int64_t ow, int64_t H, int64_t W,
                                              const Win& win, bool include_pad,
                                              int64_t divisor_override, int64_t& hs, int64_t& he,
                                              int64_t& ws, int64_t& we) {
  hs = oh * win.sh - win.ph;
  ws = ow * win.sw - win.pw;
  he = min(hs + win.kh, H + win.ph);
  we = min(ws + win.kw, W + win.pw);
  const int64_t pool = (he - hs) * (we - ws);
  hs = max(hs, int64_t(0));
  ws = max(ws, int64_t(0));
  he = min(he, H);
  we = min(we, W);
  if (divisor_override) return divisor_override;
  return include_pad ? pool : (he - hs) * (we - ws);
}

template <typename T, typename I, int K>
__global__ void __launch_bounds__(kBlock)
avg_pool2d_forward_kernel(const T* __restrict__ x, T* __restrict__ y, I total, Div<I> dOH, Div<I> dOW,
                          int64_t H, int64_t W, Win win, bool include_pad, int64_t divisor_override) {
  const int KH = K ? K : win.kh, KW = K ? K : win.kw;
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const I t = dOW.div(i);
    const I ow = i - t * dOW.d;
    const I nc = dOH.div(t);
    const I oh = t - nc * dOH.d;
    int64_t hs, he, ws, we;
    const int64_t div = avg_window(oh, ow, H, W, win, include_pad, divisor_override, hs, he, ws, we);
    if (hs >= he || ws >= we) {  // window entirely in the padding
      y[i] = T(0);
      continue;
    }
    const T* __restrict__ plane = x + static_cast<int64_t>(nc) * H * W;
    const int64_t h0 = static_cast<int64_t>(oh) * win.sh - win.ph;
    const int64_t w0 = static_cast<int64_t>(ow) * win.sw - win.pw;
    T acc = T(0);
#pragma unroll
    for (int a = 0; a < KH; ++a) {
      const int64_t h = h0 + a;
      if (h < hs || h >= he) continue;
#pragma unroll
      for (int b = 0; b < KW; ++b) {
        const int64_t w = w0 + b;
        if (w < ws || w >= we) continue;
        acc += __ldg(plane + h * W + w);
      }
    }
    y[i] = acc / static_cast<T>(div);
  }
}

// The 2x2 / stride 2 / no padding case over even-sized rows (the common downsampling layer):
// R outputs per thread from one 2R-wide vector load per input row, one R-wide vector store.
// Every window is full, so the divisor is 4 (or the override).
template <typename T, typename I, int R>
__global__ void __launch_bounds__(kBlock)
avg_pool2d_forward_2x2_kernel(const T* __restrict__ x, T* __restrict__ y, I total, Div<I> dOWR, int64_t W,
                              T div) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const I t = dOWR.div(i);  // = n*C*OH + c*OH + oh: input rows 2t and 2t+1 (H == 2*OH)
    const I q = i - t * dOWR.d;
    const T* p0 = x + static_cast<int64_t>(t) * 2 * W + static_cast<int64_t>(q) * 2 * R;
    const Vec<T, 2 * R> a = *reinterpret_cast<const Vec<T, 2 * R>*>(p0);
    const Vec<T, 2 * R> b = *reinterpret_cast<const Vec<T, 2 * R>*>(p0 + W);
    Vec<T, R> o;
#pragma unroll
    for (int r = 0; r < R; ++r) {  // the generic kernel's summation order, so both agree bitwise
      T acc = T(0);
      acc += a.v[2 * r];
      acc += a.v[2 * r + 1];
      acc += b.v[2 * r];
      acc += b.v[2 * r + 1];
      o.v[r] = acc / div;
    }
    *reinterpret_cast<Vec<T, R>*>(y + (static_cast<int64_t>(t) * dOWR.d + q) * R) = o;
  }
}

// y = sum(window) / div, so dx[h, w] = sum over the windows covering (h, w) of dy / div.
template <typename T, typename I, int V>
__global__ void __launch_bounds__(kBlock)
avg_pool2d_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, I total, Div<I> dH, Div<I> dWV,
                           int64_t W, int64_t OH, int64_t OW, Win win, bool include_pad,
                           int64_t divisor_override) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const I t = dWV.div(i);
    const I wq = i - t * dWV.d;
    const I nc = dH.div(t);
    const I h = t - nc * dH.d;
    const int64_t w0 = static_cast<int64_t>(wq) * V;
    int64_t oh_lo, oh_hi, ow_lo, ow_hi;
    covering(h, h, win.kh, win.sh, win.ph, 1, OH, oh_lo, oh_hi);
    covering(w0, w0 + V - 1, win.kw, win.sw, win.pw, 1, OW, ow_lo, ow_hi);
    const T* __restrict__ g = dy + static_cast<int64_t>(nc) * OH * OW;
    Vec<T, V> acc;
#pragma unroll
    for (int v = 0; v < V; ++v) acc.v[v] = T(0);
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        int64_t hs, he, ws, we;
        const int64_t div = avg_window(oh, ow, dH.d, W, win, include_pad, divisor_override, hs, he, ws, we);
        if (h < hs || h >= he) continue;
        const T gv = __ldg(g + oh * OW + ow) / static_cast<T>(div);
#pragma unroll
        for (int v = 0; v < V; ++v)
          if (w0 + v >= ws && w0 + v < we) acc.v[v] += gv;
      }
    }
    *reinterpret_cast<Vec<T, V>*>(dx + (static_cast<int64_t>(nc) * dH.d + h) * W + w0) = acc;
  }
}

// ------------------------------------------------------------------ adaptive average pooling

__device__ __forceinline__ int64_t ad_start(int64_t i, int64_t out, int64_t in) { return (i * in) / out; }
__device__ __forceinline__ int64_t ad_end(int64_t i, int64_t out, int64_t in) {
  return ((i + 1) * in + out - 1) / out;
}

// One warp per output cell: lanes stride over the window, then a fixed shuffle tree (deterministic).
template <typename T>
__global__ void __launch_bounds__(kBlock)
adaptive_avg_pool2d_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t total,
                                   int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; o < total;
       o += warps) {
    const int64_t ow = o % OW, t = o / OW, oh = t % OH, nc = t / OH;
    const int64_t hs = ad_start(oh, OH, H), he = ad_end(oh, OH, H);
    const int64_t ws = ad_start(ow, OW, W), we = ad_end(ow, OW, W);
    const int64_t ww = we - ws, n = (he - hs) * ww;
    const T* __restrict__ plane = x + nc * H * W;
    // double sums: a float sum of ~2^31 elements (a global pool of a huge plane) stalls once
    // the partial sum's ulp outgrows the addends; memory bound, so the wider adds are free.
    double acc = 0.0;
    for (int64_t e = lane; e < n; e += 32) acc += __ldg(plane + (hs + e / ww) * W + ws + e % ww);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[o] = static_cast<T>(acc / static_cast<double>(n));
  }
}

// y = mean(window), so dx[h, w] = sum over the windows covering (h, w) of dy / window size.
// Windows covering row h: oh in [floor(h*OH/H), floor((h+1)*OH/H)], each checked exactly.
template <typename T>
__global__ void __launch_bounds__(kBlock)
adaptive_avg_pool2d_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, int64_t total,
                                    int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t w = i % W, t = i / W, h = t % H, nc = t / H;
    const int64_t oh_lo = (h * OH) / H, oh_hi = min(OH - 1, ((h + 1) * OH) / H);
    const int64_t ow_lo = (w * OW) / W, ow_hi = min(OW - 1, ((w + 1) * OW) / W);
    const T* __restrict__ g = dy + nc * OH * OW;
    T acc = T(0);
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      const int64_t hs = ad_start(oh, OH, H), he = ad_end(oh, OH, H);
      if (h < hs || h >= he) continue;
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        const int64_t ws = ad_start(ow, OW, W), we = ad_end(ow, OW, W);
        if (w < ws || w >= we) continue;
        acc += __ldg(g + oh * OW + ow) / static_cast<T>((he - hs) * (we - ws));
      }
    }
    dx[i] = acc;
  }
}

// ------------------------------------------------------------------------------ host side

constexpr int64_t kI32 = int64_t(1) << 31;

// Widest vector (elements) that divides the row length and the pointer's alignment: 16 bytes max.
template <typename T>
int vec_width(int64_t W, dptr p) {
  for (int v = 16 / static_cast<int>(sizeof(T)); v > 1; v /= 2)
    if (W % v == 0 && p % (v * sizeof(T)) == 0) return v;
  return 1;
}

template <typename T, typename I, bool IDX>
void launch_max_fwd(const T* x, T* y, int64_t* ind, int64_t total, int64_t OH, int64_t OW,
                    int64_t H, int64_t W, const Win& w, cudaStream_t st) {
  const unsigned g = grid_for(total, kBlock);
  const I t = static_cast<I>(total);
  const Div<I> oh(OH), ow(OW);
  if (w.kh == 3 && w.kw == 3)
    max_pool2d_forward_kernel<T, I, 3, IDX><<<g, kBlock, 0, st>>>(x, y, ind, t, oh, ow, H, W, w);
  else if (w.kh == 2 && w.kw == 2)
    max_pool2d_forward_kernel<T, I, 2, IDX><<<g, kBlock, 0, st>>>(x, y, ind, t, oh, ow, H, W, w);
  else
    max_pool2d_forward_kernel<T, I, 0, IDX><<<g, kBlock, 0, st>>>(x, y, ind, t, oh, ow, H, W, w);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void max_pool2d_forward(dptr x, dptr y, dptr ind, int64_t N, int64_t C, int64_t H, int64_t W,
                        int64_t OH, int64_t OW, int kh, int kw, int sh, int sw, int ph, int pw,
                        int dh, int dw, dptr stream) {
  PYDL_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0,
             "max_pool2d_forward: bad window");
  const int64_t total = N * C * OH * OW;
  if (total == 0) return;
  const Win w{kh, kw, sh, sw, ph, pw, dh, dw};
  const bool narrow = total < kI32 && N * C * H * W < kI32;
  cudaStream_t st = as_stream(stream);
  const T* xp = as_ptr<const T>(x);
  T* yp = as_ptr<T>(y);
  int64_t* ip = as_ptr<int64_t>(ind);
  if constexpr (std::is_same<T, float>::value) {
    if (!ind && kh == 3 && kw == 3 && sh == 2 && sw == 2 && ph == 1 && pw == 1 && dh == 1 &&
        dw == 1 && OW % 4 == 0 && W == 2 * OW && x % 16 == 0 && y % 16 == 0) {
      const int64_t total4 = total / 4;
      if (narrow)
        max_pool2d_3s2_f32_kernel<uint32_t><<<grid_for(total4, kBlock), kBlock, 0, st>>>(
            xp, yp, static_cast<uint32_t>(total4), Div<uint32_t>(OW / 4), Div<uint32_t>(OH),
            static_cast<uint32_t>(H), static_cast<uint32_t>(W));
      else
        max_pool2d_3s2_f32_kernel<int64_t><<<grid_for(total4, kBlock), kBlock, 0, st>>>(
            xp, yp, total4, Div<int64_t>(OW / 4), Div<int64_t>(OH), H, W);
      PYDL_LAUNCH_CHECK();
      return;
    }
  }
  if (ind) {
    if (narrow) launch_max_fwd<T, uint32_t, true>(xp, yp, ip, total, OH, OW, H, W, w, st);
    else launch_max_fwd<T, int64_t, true>(xp, yp, ip, total, OH, OW, H, W, w, st);
  } else {
    if (narrow) launch_max_fwd<T, uint32_t, false>(xp, yp, nullptr, total, OH, OW, H, W, w, st);
    else launch_max_fwd<T, int64_t, false>(xp, yp, nullptr, total, OH, OW, H, W, w, st);
  }
}

template <typename T, typename I, int V>
void launch_max_bwd(const T* dy, const int64_t* ind, T* dx, int64_t planes, int64_t H, int64_t W,
                    int64_t OH, int64_t OW, const Win& w, cudaStream_t st) {
  const int64_t total = planes * H * (W / V);
  max_pool2d_backward_kernel<T, I, V><<<grid_for(total, kBlock), kBlock, 0, st>>>(
      dy, ind, dx, static_cast<I>(total), Div<I>(H), Div<I>(W / V), W, OH, OW, w);
  PYDL_LAUNCH_CHECK();
}

template <typename T, typename I>
void dispatch_max_bwd(int v, const T* dy, const int64_t* ind, T* dx, int64_t planes, int64_t H,
                      int64_t W, int64_t OH, int64_t OW, const Win& w, cudaStream_t st) {
  if (v == 4) launch_max_bwd<T, I, 4>(dy, ind, dx, planes, H, W, OH, OW, w, st);
  else if (v == 2) launch_max_bwd<T, I, 2>(dy, ind, dx, planes, H, W, OH, OW, w, st);
  else launch_max_bwd<T, I, 1>(dy, ind, dx, planes, H, W, OH, OW, w, st);
}

// The gather needs the window geometry to find the outputs covering an input element; the
// argmax itself decides which of them contribute.
template <typename T>
void max_pool2d_backward(dptr dy, dptr ind, dptr dx, int64_t N, int64_t C, int64_t H, int64_t W,
                         int64_t OH, int64_t OW, int kh, int kw, int sh, int sw, int ph, int pw,
                         int dh, int dw, dptr stream) {
  PYDL_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0,
             "max_pool2d_backward: bad window");
  const int64_t planes = N * C;
  if (planes * H * W == 0) return;
  const Win w{kh, kw, sh, sw, ph, pw, dh, dw};
  const int v = vec_width<T>(W, dx);
  const bool narrow = planes * H * W < kI32 && planes * OH * OW < kI32;
  cudaStream_t st = as_stream(stream);
  if (narrow)
    dispatch_max_bwd<T, uint32_t>(v, as_ptr<const T>(dy), as_ptr<const int64_t>(ind), as_ptr<T>(dx),
                                  planes, H, W, OH, OW, w, st);
  else
    dispatch_max_bwd<T, int64_t>(v, as_ptr<const T>(dy), as_ptr<const int64_t>(ind), as_ptr<T>(dx),
                                 planes, H, W, OH, OW, w, st);
}

template <typename T, typename I>
void launch_avg_fwd(const T* x, T* y, int64_t total, int64_t OH, int64_t OW, int64_t H, int64_t W,
                    const Win& w, bool inc, int64_t div, cudaStream_t st) {
  const unsigned g = grid_for(total, kBlock);
  const I t = static_cast<I>(total);
  const Div<I> oh(OH), ow(OW);
  if (w.kh == 2 && w.kw == 2)
    avg_pool2d_forward_kernel<T, I, 2><<<g, kBlock, 0, st>>>(x, y, t, oh, ow, H, W, w, inc, div);
  else if (w.kh == 3 && w.kw == 3)
    avg_pool2d_forward_kernel<T, I, 3><<<g, kBlock, 0, st>>>(x, y, t, oh, ow, H, W, w, inc, div);
  else
    avg_pool2d_forward_kernel<T, I, 0><<<g, kBlock, 0, st>>>(x, y, t, oh, ow, H, W, w, inc, div);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void avg_pool2d_forward(dptr x, dptr y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
                        int64_t OW, int kh, int kw, int sh, int sw, int ph, int pw,
                        bool count_include_pad, int64_t divisor_override, dptr stream) {
  PYDL_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && divisor_override >= 0,
             "avg_pool2d_forward: bad window");
  const int64_t total = N * C * OH * OW;
  if (total == 0) return;
  const Win w{kh, kw, sh, sw, ph, pw, 1, 1};
  cudaStream_t st = as_stream(stream);
  const bool narrow = total < kI32 && N * C * H * W < kI32;
  if (narrow && kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0 && H == 2 * OH &&
      W == 2 * OW) {
    // Full windows only: the divisor is 4 or the override. R outputs per thread, 16-byte loads
    // where the row length and the pointers allow.
    const T div = static_cast<T>(divisor_override ? divisor_override : 4);
    int r = 16 / (2 * static_cast<int>(sizeof(T)));
    while (r > 1 && !(W % (2 * r) == 0 && x % (2 * r * sizeof(T)) == 0 && y % (r * sizeof(T)) == 0)) r /= 2;
    if (W % (2 * r) == 0 && x % (2 * r * sizeof(T)) == 0 && y % (r * sizeof(T)) == 0) {
      const int64_t rows = N * C * OH, owr = OW / r, t = rows * owr;
      if (r == 2)
        avg_pool2d_forward_2x2_kernel<T, uint32_t, 2><<<grid_for(t, kBlock), kBlock, 0, st>>>(
            as_ptr<const T>(x), as_ptr<T>(y), static_cast<uint32_t>(t), Div<uint32_t>(owr), W, div);
      else
        avg_pool2d_forward_2x2_kernel<T, uint32_t, 1><<<grid_for(t, kBlock), kBlock, 0, st>>>(
            as_ptr<const T>(x), as_ptr<T>(y), static_cast<uint32_t>(t), Div<uint32_t>(owr), W, div);
      PYDL_LAUNCH_CHECK();
      return;
    }
  }
  if (narrow)
    launch_avg_fwd<T, uint32_t>(as_ptr<const T>(x), as_ptr<T>(y), total, OH, OW, H, W, w,
                                count_include_pad, divisor_override, st);
  else
    launch_avg_fwd<T, int64_t>(as_ptr<const T>(x), as_ptr<T>(y), total, OH, OW, H, W, w,
                               count_include_pad, divisor_override, st);
}

template <typename T, typename I, int V>
void launch_avg_bwd(const T* dy, T* dx, int64_t planes, int64_t H, int64_t W, int64_t OH,
                    int64_t OW, const Win& w, bool inc, int64_t div, cudaStream_t st) {
  const int64_t total = planes * H * (W / V);
  avg_pool2d_backward_kernel<T, I, V><<<grid_for(total, kBlock), kBlock, 0, st>>>(
      dy, dx, static_cast<I>(total), Div<I>(H), Div<I>(W / V), W, OH, OW, w, inc, div);
  PYDL_LAUNCH_CHECK();
}

template <typename T, typename I>
void dispatch_avg_bwd(int v, const T* dy, T* dx, int64_t planes, int64_t H, int64_t W, int64_t OH,
                      int64_t OW, const Win& w, bool inc, int64_t div, cudaStream_t st) {
  if (v == 4) launch_avg_bwd<T, I, 4>(dy, dx, planes, H, W, OH, OW, w, inc, div, st);
  else if (v == 2) launch_avg_bwd<T, I, 2>(dy, dx, planes, H, W, OH, OW, w, inc, div, st);
  else launch_avg_bwd<T, I, 1>(dy, dx, planes, H, W, OH, OW, w, inc, div, st);
}

template <typename T>
void avg_pool2d_backward(dptr dy, dptr dx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
                         int64_t OW, int kh, int kw, int sh, int sw, int ph, int pw,
                         bool count_include_pad, int64_t divisor_override, dptr stream) {
  PYDL_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && divisor_override >= 0,
             "avg_pool2d_backward: bad window");
  const int64_t planes = N * C;
  if (planes * H * W == 0) return;
  const Win w{kh, kw, sh, sw, ph, pw, 1, 1};
  const int v = vec_width<T>(W, dx);
  cudaStream_t st = as_stream(stream);
  if (planes * H * W < kI32 && planes * OH * OW < kI32)
    dispatch_avg_bwd<T, uint32_t>(v, as_ptr<const T>(dy), as_ptr<T>(dx), planes, H, W, OH, OW, w,
                                  count_include_pad, divisor_override, st);
  else
    dispatch_avg_bwd<T, int64_t>(v, as_ptr<const T>(dy), as_ptr<T>(dx), planes, H, W, OH, OW, w,
                                 count_include_pad, divisor_override, st);
}

template <typename T>
void adaptive_avg_pool2d_forward(dptr x, dptr y, int64_t N, int64_t C, int64_t H, int64_t W,
                                 int64_t OH, int64_t OW, dptr stream) {
  const int64_t total = N * C * OH * OW;
  if (total == 0) return;
  PYDL_CHECK(H >= 1 && W >= 1 && OH >= 1 && OW >= 1, "adaptive_avg_pool2d_forward: empty image or output");
  const int64_t threads = total * 32;
  adaptive_avg_pool2d_forward_kernel<T><<<grid_for(threads, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(x), as_ptr<T>(y), total, H, W, OH, OW);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void adaptive_avg_pool2d_backward(dptr dy, dptr dx, int64_t N, int64_t C, int64_t H, int64_t W,
                                  int64_t OH, int64_t OW, dptr stream) {
  const int64_t total = N * C * H * W;
  if (total == 0) return;
  PYDL_CHECK(H >= 1 && W >= 1 && OH >= 1 && OW >= 1, "adaptive_avg_pool2d_backward: empty image or output");
  adaptive_avg_pool2d_backward_kernel<T><<<grid_for(total, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(dy), as_ptr<T>(dx), total, H, W, OH, OW);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void bind_typed(py::module_& m, const char* suffix) {
  const std::string s(suffix);
  m.def(("max_pool2d_forward_" + s).c_str(), &max_pool2d_forward<T>,
        "(x, y, indices or 0, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, stream)");
  m.def(("max_pool2d_backward_" + s).c_str(), &max_pool2d_backward<T>,
        "(dy, indices, dx, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, stream)");
  m.def(("avg_pool2d_forward_" + s).c_str(), &avg_pool2d_forward<T>,
        "(x, y, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, stream)");
  m.def(("avg_pool2d_backward_" + s).c_str(), &avg_pool2d_backward<T>,
        "(dy, dx, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, stream)");
  m.def(("adaptive_avg_pool2d_forward_" + s).c_str(), &adaptive_avg_pool2d_forward<T>,
        "(x, y, N, C, H, W, OH, OW, stream)");
  m.def(("adaptive_avg_pool2d_backward_" + s).c_str(), &adaptive_avg_pool2d_backward<T>,
        "(dy, dx, N, C, H, W, OH, OW, stream)");
}

}  // namespace

void bind_pool_cuda(py::module_& m) {
  bind_typed<float>(m, "f32");
  bind_typed<double>(m, "f64");
}

}  // namespace pydl
