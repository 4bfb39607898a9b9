// deform_conv: CUDA kernels of deformable convolution (torchvision.ops.deform_conv2d semantics).
//
// Math (see csrc/deform_conv.cpp for the derivation): for channel c of offset group og, tap t
// and output pixel l the point is (h, w) = (oh*sh - ph + i*dh + off_h, ow*sw - pw + j*dw + off_w);
// col[(c, t), l] = m * bilinear(x[c], h, w) (neighbours outside the image read 0; the sample is 0
// outside (-1, H) x (-1, W)). The GEMMs with the weight run in cuBLAS (pydl/cuda/deform_conv.py).
// Layout: NCHW; offset (N, 2*og*T, Ho, Wo) with (dh, dw) per tap; mask (N, og*T, Ho, Wo).
//
// Kernels (grid-stride loops, 64-bit indices, launched on the caller's stream):
//  * deform_im2col: one thread per (image, channel, tap, pixel), pixel fastest (coalesced
//    offset reads and column writes); the column layout is given by an image and a row stride,
//    so the same kernel writes per-image matrices (forward) or images side by side (dW).
//  * dx (the adjoint of the sampling) as a deterministic gather: every sampling point
//    (image, og, tap, pixel) adds to at most four input pixels, with the same pattern for all
//    channels of the offset group. deform_entries writes one entry per (point, corner):
//    key = (image, og, input pixel) (or a sentinel past the end when the corner is outside),
//    id = the entry's own index, weight = m * bilinear weight. A stable radix sort by key
//    (CUB) groups each input pixel's entries in id order; deform_segments finds each key's
//    first entry by binary search; deform_col2im_gather has one thread per (image, channel,
//    input pixel) summing weight * dcol over its segment in that fixed order. No atomics:
//    bit-identical reruns.
//  * deform_coord: one thread per (image, og, tap, pixel) sums over the group's channels
//    (a fixed order) the offset gradients m * dcol * d sample / d(h, w) and the mask gradient
//    dcol * sample.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

namespace pydl {
namespace {

constexpr int kBlock = 256;

struct DG {
  int64_t C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, OG;
  __host__ __device__ int64_t T() const { return kh * kw; }
  __host__ __device__ int64_t L() const { return Ho * Wo; }
  __host__ __device__ int64_t cpg() const { return C / OG; }
};

// The sampling point of tap t, pixel l from the offsets of one (image, og).
template <typename T>
__device__ __forceinline__ void point(const DG& g, const T* offg, int64_t t, int64_t l, T& h, T& w) {
  const int64_t i = t / g.kw, j = t - i * g.kw, oh = l / g.Wo, ow = l - oh * g.Wo;
  const T* o = offg + 2 * t * g.L() + l;
  h = T(oh * g.sh - g.ph + i * g.dh) + o[0];
  w = T(ow * g.sw - g.pw + j * g.dw) + o[g.L()];
}

template <typename T>
struct Corners {
  bool in;
  int64_t h0, w0;
  T lh, lw;
  bool v00, v01, v10, v11;
  __device__ __forceinline__ void at(T h, T w, int64_t H, int64_t W) {
    in = h > T(-1) && w > T(-1) && h < T(H) && w < T(W);
    h0 = w0 = 0;
    lh = lw = T(0);
    v00 = v01 = v10 = v11 = false;
    if (!in) return;
    const T fh = floor(h), fw = floor(w);
    h0 = (int64_t)fh, w0 = (int64_t)fw;
    lh = h - fh, lw = w - fw;
    const bool r0 = h0 >= 0, r1 = h0 + 1 <= H - 1, c0 = w0 >= 0, c1 = w0 + 1 <= W - 1;
    v00 = r0 && c0, v01 = r0 && c1, v10 = r1 && c0, v11 = r1 && c1;
  }
  __device__ __forceinline__ void load(const T* p, int64_t W, T& a, T& b, T& c, T& d) const {
    const int64_t o = h0 * W + w0;
    a = v00 ? p[o] : T(0);
    b = v01 ? p[o + 1] : T(0);
    c = v10 ? p[o + W] : T(0);
    d = v11 ? p[o + W + 1] : T(0);
  }
};

// col[j*img_stride + (c*T + t)*row_stride + l] = m * sample, for cnt images.
template <typename T>
__global__ void im2col_kernel(const T* __restrict__ x, const T* __restrict__ off, const T* __restrict__ mask,
                              T* __restrict__ col, DG g, int64_t cnt, int64_t img_stride, int64_t row_stride) {
  const int64_t L = g.L(), TT = g.T(), total = cnt * g.C * TT * L;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t l = idx % L, t = (idx / L) % TT, c = (idx / (L * TT)) % g.C, j = idx / (L * TT * g.C);
    const int64_t og = c / g.cpg();
    T h, w;
    point(g, off + (j * g.OG + og) * 2 * TT * L, t, l, h, w);
    Corners<T> s;
    s.at(h, w, g.H, g.W);
    T v = T(0);
    if (s.in) {
      T a, b, cc, d;
      s.load(x + (j * g.C + c) * g.H * g.W, g.W, a, b, cc, d);
      const T hh = 1 - s.lh, hw = 1 - s.lw;
      v = hh * hw * a + hh * s.lw * b + s.lh * hw * cc + s.lh * s.lw * d;
      if (mask) v *= mask[((j * g.OG + og) * TT + t) * L + l];
    }
    col[j * img_stride + (c * TT + t) * row_stride + l] = v;
  }
}

// One entry per (image, og, tap, pixel, corner) e: key = (j*OG + og)*HW + input pixel, or
// nkeys when the corner contributes nothing; id = e; weight = m * bilinear weight.
template <typename T>
__global__ void entries_kernel(const T* __restrict__ off, const T* __restrict__ mask, DG g, int64_t cnt,
                               unsigned int* __restrict__ keys, int* __restrict__ ids, T* __restrict__ weights) {
  const int64_t L = g.L(), TT = g.T(), HW = g.H * g.W, total = cnt * g.OG * TT * L;
  const unsigned int sentinel = (unsigned int)(cnt * g.OG * HW);
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < total;
       p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t l = p % L, t = (p / L) % TT, jo = p / (L * TT);  // jo = j*OG + og
    T h, w;
    point(g, off + jo * 2 * TT * L, t, l, h, w);
    Corners<T> s;
    s.at(h, w, g.H, g.W);
    const T m = mask ? mask[p] : T(1);  // mask index (j*OG + og)*T*L + t*L + l == p
    const T hh = 1 - s.lh, hw = 1 - s.lw;
    const T f[4] = {hh * hw, hh * s.lw, s.lh * hw, s.lh * s.lw};
    const bool v[4] = {s.v00, s.v01, s.v10, s.v11};
    const int64_t base = jo * HW + s.h0 * g.W + s.w0;
    const int64_t delta[4] = {0, 1, g.W, g.W + 1};
    for (int q = 0; q < 4; ++q) {
      const int64_t e = 4 * p + q;
      keys[e] = v[q] ? (unsigned int)(base + delta[q]) : sentinel;
      ids[e] = (int)e;
      weights[e] = v[q] ? m * f[q] : T(0);
    }
  }
}

// start[k] = the first sorted position with key >= k, for k in [0, nkeys].
__global__ void segments_kernel(const unsigned int* __restrict__ keys, int64_t n, int64_t nkeys,
                                int* __restrict__ start) {
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k <= nkeys;
       k += (int64_t)gridDim.x * blockDim.x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if ((int64_t)keys[mid] < k) lo = mid + 1;
      else hi = mid;
    }
    start[k] = (int)lo;
  }
}

// dx[j, c, pix] = sum over the sorted entries of (j, og(c), pix) of weight * dcol[j, (c, t), l].
template <typename T>
__global__ void col2im_gather_kernel(const T* __restrict__ dcol, const int* __restrict__ start,
                                     const int* __restrict__ ids, const T* __restrict__ weights, T* __restrict__ dx,
                                     DG g, int64_t cnt, int64_t img_stride) {
  const int64_t L = g.L(), TT = g.T(), HW = g.H * g.W, total = cnt * g.C * HW;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t pix = idx % HW, c = (idx / HW) % g.C, j = idx / (HW * g.C);
    const int64_t key = (j * g.OG + c / g.cpg()) * HW + pix;
    const T* dc = dcol + j * img_stride + c * TT * L;  // rows (c, t) of image j
    T sum = T(0);
    for (int e = start[key]; e < start[key + 1]; ++e) {
      const int64_t id = ids[e], p = id >> 2;
      const int64_t l = p % L, t = (p / L) % TT;
      sum += weights[id] * dc[t * L + l];
    }
    dx[idx] = sum;
  }
}

// doffset (rows 2*(og*T + t), +1) and dmask (row og*T + t) of each point: sums over channels.
template <typename T>
__global__ void coord_kernel(const T* __restrict__ x, const T* __restrict__ dcol, const T* __restrict__ off,
                             const T* __restrict__ mask, T* __restrict__ doff, T* __restrict__ dmask, DG g,
                             int64_t cnt, int64_t img_stride) {
  const int64_t L = g.L(), TT = g.T(), HW = g.H * g.W, total = cnt * g.OG * TT * L;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < total;
       p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t l = p % L, t = (p / L) % TT, jo = p / (L * TT), og = jo % g.OG, j = jo / g.OG;
    T h, w;
    point(g, off + jo * 2 * TT * L, t, l, h, w);
    Corners<T> s;
    s.at(h, w, g.H, g.W);
    const T m = mask ? mask[p] : T(1);
    T gh = T(0), gw = T(0), gm = T(0);
    if (s.in) {
      const T hh = 1 - s.lh, hw = 1 - s.lw;
      for (int64_t c = og * g.cpg(); c < (og + 1) * g.cpg(); ++c) {
        T a, b, cc, d;
        s.load(x + (j * g.C + c) * HW, g.W, a, b, cc, d);
        const T gv = dcol[j * img_stride + (c * TT + t) * L + l];
        gh += gv * (hw * (cc - a) + s.lw * (d - b));
        gw += gv * (hh * (b - a) + s.lh * (d - cc));
        gm += gv * (hh * hw * a + hh * s.lw * b + s.lh * hw * cc + s.lh * s.lw * d);
      }
    }
    const int64_t orow = (jo * TT + t) * 2 * L;  // offset row 2*(og*T + t) of image j
    if (doff) {
      doff[orow + l] = m * gh;
      doff[orow + L + l] = m * gw;
    }
    if (dmask) dmask[p] = gm;
  }
}

DG make_dg(int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t Ho, int64_t Wo, int64_t sh,
           int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t OG) {
  PYDL_CHECK(OG >= 1 && C % OG == 0, "deform_conv2d: offset_groups must divide C");
  PYDL_CHECK(kh >= 1 && kw >= 1 && Ho >= 1 && Wo >= 1 && sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1,
             "deform_conv2d: bad geometry");
  return DG{C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, OG};
}

int key_bits(int64_t nkeys) {
  int b = 1;
  while (b < 32 && (int64_t(1) << b) <= nkeys) ++b;
  return b;
}

template <typename T>
void im2col(dptr x, dptr off, dptr mask, dptr col, const DG& g, int64_t cnt, int64_t img_stride, int64_t row_stride,
            dptr stream) {
  const int64_t total = cnt * g.C * g.T() * g.L();
  if (total == 0) return;
  im2col_kernel<T><<<grid_for(total, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(x), as_ptr<const T>(off), mask ? as_ptr<const T>(mask) : nullptr, as_ptr<T>(col), g, cnt,
      img_stride, row_stride);
  PYDL_LAUNCH_CHECK();
}

// dx of cnt images from dcol (image stride img_stride, row stride L); the scratch buffers
// come from Python (sizes from deform_conv2d_col2im_scratch).
template <typename T>
void col2im(dptr dcol, dptr off, dptr mask, dptr dx, const DG& g, int64_t cnt, int64_t img_stride, dptr keys,
            dptr keys_sorted, dptr ids, dptr ids_sorted, dptr weights, dptr start, dptr temp, int64_t temp_bytes,
            dptr stream) {
  const int64_t points = cnt * g.OG * g.T() * g.L(), n = 4 * points, nkeys = cnt * g.OG * g.H * g.W;
  PYDL_CHECK(n < (int64_t(1) << 31) && nkeys < (int64_t(1) << 32) - 1, "deform_conv2d: chunk too large");
  if (cnt * g.C * g.H * g.W == 0) return;
  cudaStream_t st = as_stream(stream);
  entries_kernel<T><<<grid_for(points, kBlock), kBlock, 0, st>>>(as_ptr<const T>(off),
                                                                 mask ? as_ptr<const T>(mask) : nullptr, g, cnt,
                                                                 as_ptr<unsigned int>(keys), as_ptr<int>(ids),
                                                                 as_ptr<T>(weights));
  PYDL_LAUNCH_CHECK();
  size_t tb = (size_t)temp_bytes;
  PYDL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(as_ptr<void>(temp), tb, as_ptr<const unsigned int>(keys),
                                                  as_ptr<unsigned int>(keys_sorted), as_ptr<const int>(ids),
                                                  as_ptr<int>(ids_sorted), (int)n, 0, key_bits(nkeys), st));
  segments_kernel<<<grid_for(nkeys + 1, kBlock), kBlock, 0, st>>>(as_ptr<const unsigned int>(keys_sorted), n, nkeys,
                                                                  as_ptr<int>(start));
  PYDL_LAUNCH_CHECK();
  const int64_t total = cnt * g.C * g.H * g.W;
  col2im_gather_kernel<T><<<grid_for(total, kBlock), kBlock, 0, st>>>(
      as_ptr<const T>(dcol), as_ptr<const int>(start), as_ptr<const int>(ids_sorted), as_ptr<const T>(weights),
      as_ptr<T>(dx), g, cnt, img_stride);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void coord(dptr x, dptr dcol, dptr off, dptr mask, dptr doff, dptr dmask, const DG& g, int64_t cnt,
           int64_t img_stride, dptr stream) {
  const int64_t points = cnt * g.OG * g.T() * g.L();
  if (points == 0) return;
  coord_kernel<T><<<grid_for(points, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(x), as_ptr<const T>(dcol), as_ptr<const T>(off), mask ? as_ptr<const T>(mask) : nullptr,
      doff ? as_ptr<T>(doff) : nullptr, dmask ? as_ptr<T>(dmask) : nullptr, g, cnt, img_stride);
  PYDL_LAUNCH_CHECK();
}

}  // namespace

void bind_deform_conv_cuda(py::module_& m) {
  m.def("deform_conv2d_im2col",
        [](dptr x, dptr off, dptr mask, dptr col, int64_t cnt, int64_t C, int64_t H, int64_t W, int64_t kh,
           int64_t kw, int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
           int64_t dw, int64_t OG, int64_t img_stride, int64_t row_stride, bool f64, dptr stream) {
          const DG g = make_dg(C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, OG);
          py::gil_scoped_release nogil;
          if (f64) im2col<double>(x, off, mask, col, g, cnt, img_stride, row_stride, stream);
          else im2col<float>(x, off, mask, col, g, cnt, img_stride, row_stride, stream);
        });
  // Bytes of CUB sort scratch for n entries with keys below nkeys.
  m.def("deform_conv2d_sort_temp_bytes", [](int64_t n, int64_t nkeys) {
    PYDL_CHECK(n >= 0 && n < (int64_t(1) << 31), "deform_conv2d: too many entries");
    size_t bytes = 0;
    PYDL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const unsigned int*)nullptr,
                                                    (unsigned int*)nullptr, (const int*)nullptr, (int*)nullptr,
                                                    (int)n, 0, key_bits(nkeys)));
    return (int64_t)bytes;
  });
  m.def("deform_conv2d_col2im",
        [](dptr dcol, dptr off, dptr mask, dptr dx, int64_t cnt, int64_t C, int64_t H, int64_t W, int64_t kh,
           int64_t kw, int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
           int64_t dw, int64_t OG, int64_t img_stride, dptr keys, dptr keys_sorted, dptr ids, dptr ids_sorted,
           dptr weights, dptr start, dptr temp, int64_t temp_bytes, bool f64, dptr stream) {
          const DG g = make_dg(C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, OG);
          py::gil_scoped_release nogil;
          if (f64)
            col2im<double>(dcol, off, mask, dx, g, cnt, img_stride, keys, keys_sorted, ids, ids_sorted, weights,
                           start, temp, temp_bytes, stream);
          else
            col2im<float>(dcol, off, mask, dx, g, cnt, img_stride, keys, keys_sorted, ids, ids_sorted, weights,
                          start, temp, temp_bytes, stream);
        });
  m.def("deform_conv2d_coord",
        [](dptr x, dptr dcol, dptr off, dptr mask, dptr doff, dptr dmask, int64_t cnt, int64_t C, int64_t H,
           int64_t W, int64_t kh, int64_t kw, int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph,
           int64_t pw, int64_t dh, int64_t dw, int64_t OG, int64_t img_stride, bool f64, dptr stream) {
          const DG g = make_dg(C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, OG);
          py::gil_scoped_release nogil;
          if (f64) coord<double>(x, dcol, off, mask, doff, dmask, g, cnt, img_stride, stream);
          else coord<float>(x, dcol, off, mask, doff, dmask, g, cnt, img_stride, stream);
        });
}

}  // namespace pydl
