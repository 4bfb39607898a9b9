// roi_align: CUDA kernels for RoIAlign (torchvision.ops.roi_align), forward and backward.
//
// Math (as csrc/roi_align.cpp, geometry in T exactly as torchvision):
//   o = aligned ? 0.5 : 0; y0 = y1*scale - o; rh = y2*scale - o - y0 (>= 1 unless aligned); bh = rh/PH
//   gh = sampling_ratio > 0 ? sampling_ratio : ceil(rh / PH); count = max(gh*gw, 1)
//   sample (ph, iy): y = y0 + ph*bh + (iy + .5)*bh/gh;  tap: none if y < -1 or y > H, else y <= 0 -> 0,
//   lo = (int)y, lo >= H-1 -> lo = hi = H-1, else hi = lo+1; weights (1 - ly, ly), ly = y - lo.
//   out = sum over samples of the product of the y and x taps' bilinear weights times x / count.
// Layout: x, dx NCHW; rois (K, 5); y, dy (K, C, PH, PW); C-contiguous.
//
// Forward: one thread per output (k, c, ph, pw), pw fastest (grid-stride); the y tap is computed
// once per sample row, not per sample.
// Backward, deterministic by construction (no atomics, unlike torchvision): dx is GATHERED.
// The bilinear weight of a sample factors into a y part and an x part, so
//   dx[n, c, h, w] = sum_{k in image n} sum_{ph, pw} dy[k, c, ph, pw] * Ay[k, h, ph] * Ax[k, w, pw],
//   Ay[k, h, ph] = (1/count) * sum over the valid samples iy of bin ph of their weight on row h,
// (and Ax alike without 1/count): the sample validity (y in [-1, H] and x in [-1, W]) factors too.
// A first kernel tabulates Ay, Ax (K*(H*PH + W*PW) values) and, per (roi, row) and (roi, column),
// the contiguous range of bins whose samples touch it (K*(H+W) int2), rois in image order.
// The gather kernel gives a block to (n, block of CPT channels, 16x16 pixel tile), a thread to a
// pixel: the block first culls the rois of image n (CSR by image, one kernel of ours) to those that
// may touch the tile (a conservative extent test, compacted in order into shared memory), then each
// thread walks that short list, skips a roi after two table loads when (h, w) is outside its
// reach, else sums its bins for CPT channels. One writer per dx element and a fixed summation
// order (rois in CSR order): race-free, bit-identical.
// Why this design: the candidate rois of a pixel are found by the tile cull (K_n/256 block steps
// per tile) instead of K_n table loads per (pixel, channel block), the per-roi test is O(1), the
// dy loads of a warp (16 consecutive w) fall in the same few bins (coalesced), and the work is
// proportional to the rois' area like torchvision's scatter, without its float atomics.
#include "common.cuh"
#include "roi_align.h"

namespace pydl {
namespace {

using namespace roi_align_math;

constexpr int kBlock = 256;
constexpr int kCPT = 8;  // channels per gather thread
constexpr int kTile = 16;  // gather tile side: kTile * kTile == kBlock threads, one per pixel
static_assert(kTile * kTile == kBlock, "one gather thread per tile pixel");

template <typename T>
__global__ void roi_align_forward_kernel(const T* __restrict__ x, const T* __restrict__ rois, T* __restrict__ y,
                                         int64_t total, int64_t C, int64_t H, int64_t W, int64_t PH, int64_t PW,
                                         T scale, int64_t sr, bool aligned) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pw = i % PW, ph = (i / PW) % PH, c = (i / (PW * PH)) % C, k = i / (PW * PH * C);
    const AlignRoi<T> g = align_roi(rois + 5 * k, scale, aligned, PH, PW, sr);
    const T* plane = x + (g.b * C + c) * H * W;
    T acc = T(0);
    for (int64_t iy = 0; iy < g.gh; ++iy) {
      const Tap<T> a = make_tap(sample_pos(g.y0, ph, g.bh, iy, g.gh), H);
      if (!a.valid) continue;
      const T* r0 = plane + a.lo * W;
      const T* r1 = plane + a.hi * W;
      for (int64_t ix = 0; ix < g.gw; ++ix) {
        const Tap<T> b = make_tap(sample_pos(g.x0, pw, g.bw, ix, g.gw), W);
        if (!b.valid) continue;
        acc += a.wlo * b.wlo * __ldg(r0 + b.lo) + a.wlo * b.whi * __ldg(r0 + b.hi) +
               a.whi * b.wlo * __ldg(r1 + b.lo) + a.whi * b.whi * __ldg(r1 + b.hi);
      }
    }
    y[i] = acc / g.count;
  }
}

// Thread (r, t), r-th roi in image order (k = order[r]): t < H tabulates row h = t (Ay[r, h, :] and
// its bin range), t >= H column t - H. ranges[r*(H+W) + t] = [first, last + 1) of the bins with a
// valid sample touching it. Indexed by the sorted position, so the gather needs no order[r] first.
template <typename T>
__global__ void roi_align_tables_kernel(const T* __restrict__ rois, const int64_t* __restrict__ order,
                                        int2* __restrict__ ranges, T* __restrict__ ay, T* __restrict__ ax, int64_t K,
                                        int64_t H, int64_t W, int64_t PH, int64_t PW, T scale, int64_t sr,
                                        bool aligned) {
  const int64_t L = H + W, total = K * L;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / L, t = i % L;  // k: the sorted position r
    const AlignRoi<T> g = align_roi(rois + 5 * order[k], scale, aligned, PH, PW, sr);
    const bool rows = t < H;
    const int64_t pos = rows ? t : t - H, P = rows ? PH : PW, len = rows ? H : W, G = rows ? g.gh : g.gw;
    const T start = rows ? g.y0 : g.x0, b = rows ? g.bh : g.bw;
    const T norm = rows ? T(1) / g.count : T(1);
    T* out = rows ? ay + (k * H + pos) * PH : ax + (k * W + pos) * PW;
    int lo = 0, hi = 0;
    bool found = false;
    for (int64_t p = 0; p < P; ++p) {
      T s = T(0);
      bool touch = false;
      for (int64_t j = 0; j < G; ++j) {
        const Tap<T> tp = make_tap(sample_pos(start, p, b, j, G), len);
        if (!tp.valid) continue;
        if (tp.lo == pos) {
          s += tp.wlo;
          touch = true;
        }
        if (tp.hi == pos) {
          s += tp.whi;
          touch = true;
        }
      }
      out[p] = s * norm;
      if (touch) {
        if (!found) lo = static_cast<int>(p);
        hi = static_cast<int>(p) + 1;
        found = true;
      }
    }
    ranges[i] = make_int2(lo, hi);
  }
}

// Is [lo, hi) of pixel rows (or columns) possibly touched by a sample of the roi? Samples lie in
// [start, start + P*b] (either order for aligned, malformed rois) up to rounding; their taps are
// within one pixel of the sample, or rows 0, 1 / L-1 when clamped. The margin (2 pixels plus far
// more than the rounding error at any magnitude) only lets through more rois: a cull, not a test.
template <typename T>
__device__ inline bool may_touch(T start, T b, int64_t P, int64_t lo, int64_t hi) {
  const T end = start + b * static_cast<T>(P);
  const T vmin = start < end ? start : end, vmax = start < end ? end : start;
  const T m = T(2) + (fabs(start) + fabs(end)) * T(1e-5);
  return vmin - m < static_cast<T>(hi) && vmax + m >= static_cast<T>(lo);
}

// One block per (n, channel block, kTile x kTile pixel tile), one thread per pixel. The block culls
// the rois of image n (CSR order) to those that may touch the tile (may_touch), compacting them in
// order into shared memory a chunk at a time; each thread then sums over that list exactly as over
// all the rois (the exact per-pixel test is the ranges table): same order, deterministic.
template <typename T>
__global__ void roi_align_backward_kernel(const T* __restrict__ dy, const T* __restrict__ rois,
                                          const int2* __restrict__ ranges, const T* __restrict__ ay,
                                          const T* __restrict__ ax, const int64_t* __restrict__ order,
                                          const int64_t* __restrict__ first, T* __restrict__ dx, int64_t N, int64_t C,
                                          int64_t H, int64_t W, int64_t PH, int64_t PW, T scale, int64_t sr,
                                          bool aligned) {
  __shared__ int lst[kBlock];
  __shared__ int warp_cnt[kBlock / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t CB = (C + kCPT - 1) / kCPT, TH = (H + kTile - 1) / kTile, TW = (W + kTile - 1) / kTile;
  const int64_t tasks = N * CB * TH * TW, L = H + W, PP = PH * PW;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {  // uniform over the block
    const int64_t tw = task % TW, th = (task / TW) % TH, cb = (task / (TW * TH)) % CB, n = task / (TW * TH * CB);
    const int64_t h0 = th * kTile, w0 = tw * kTile;
    const int64_t h1 = min(h0 + kTile, H), w1 = min(w0 + kTile, W);
    const int64_t h = h0 + threadIdx.x / kTile, w = w0 + threadIdx.x % kTile;
    const bool inside = h < H && w < W;
    const int64_t c0 = cb * kCPT;
    T acc[kCPT];
#pragma unroll
    for (int j = 0; j < kCPT; ++j) acc[j] = T(0);
    const int64_t i0 = first[n], i1 = first[n + 1];
    for (int64_t base = i0; base < i1; base += kBlock) {
      const int64_t rc = base + threadIdx.x;
      bool meets = false;
      if (rc < i1) {
        const AlignRoi<T> g = align_roi(rois + 5 * order[rc], scale, aligned, PH, PW, sr);
        meets = may_touch(g.y0, g.bh, PH, h0, h1) && may_touch(g.x0, g.bw, PW, w0, w1);
      }
      const unsigned m = __ballot_sync(0xffffffffu, meets);
      if (lane == 0) warp_cnt[warp] = __popc(m);
      __syncthreads();
      int off = __popc(m & ((1u << lane) - 1u));
      for (int j = 0; j < warp; ++j) off += warp_cnt[j];
      if (meets) lst[off] = threadIdx.x;
      const int cnt = __syncthreads_count(meets);  // barrier: lst complete
      if (inside) {
        for (int q = 0; q < cnt; ++q) {
          const int64_t r = base + lst[q];
          const int2 rr = ranges[r * L + h];
          if (rr.x >= rr.y) continue;
          const int2 cr = ranges[r * L + H + w];
          if (cr.x >= cr.y) continue;
          const int64_t k = order[r];
          const T* ayk = ay + (r * H + h) * PH;
          const T* axk = ax + (r * W + w) * PW;
          for (int ph = rr.x; ph < rr.y; ++ph) {
            const T wy = ayk[ph];
            for (int pw = cr.x; pw < cr.y; ++pw) {
              const T wgt = wy * axk[pw];
              const int64_t o = (k * C + c0) * PP + ph * PW + pw;
#pragma unroll
              for (int j = 0; j < kCPT; ++j)
                if (c0 + j < C) acc[j] += __ldg(dy + o + j * PP) * wgt;
            }
          }
        }
      }
      __syncthreads();  // lst and warp_cnt are rewritten by the next chunk
    }
    if (inside) {
#pragma unroll
      for (int j = 0; j < kCPT; ++j)
        if (c0 + j < C) dx[((n * C + c0 + j) * H + h) * W + w] = acc[j];
    }
  }
}

template <typename T>
void roi_align_forward(dptr x, dptr rois, dptr y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t PH,
                       int64_t PW, double spatial_scale, int64_t sampling_ratio, bool aligned, dptr stream) {
  PYDL_CHECK(N >= 0 && C >= 0 && H >= 0 && W >= 0 && K >= 0 && PH >= 1 && PW >= 1, "roi_align_forward: bad sizes");
  const int64_t total = K * C * PH * PW;
  if (total == 0) return;
  PYDL_CHECK(H >= 1 && W >= 1, "roi_align_forward: empty image");
  roi_align_forward_kernel<T><<<grid_for(total, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(x), as_ptr<const T>(rois), as_ptr<T>(y), total, C, H, W, PH, PW, static_cast<T>(spatial_scale),
      sampling_ratio, aligned);
  PYDL_LAUNCH_CHECK();
}

// Workspace from the glue: ranges K*(H+W) int2, taps K*(H*PH + W*PW) T; order (K) and first (N+1)
// int64: the rois sorted by image.
template <typename T>
void roi_align_backward(dptr dy, dptr rois, dptr order, dptr first, dptr ranges, dptr taps, dptr dx, int64_t N,
                        int64_t C, int64_t H, int64_t W, int64_t K, int64_t PH, int64_t PW, double spatial_scale,
                        int64_t sampling_ratio, bool aligned, dptr stream) {
  PYDL_CHECK(N >= 0 && C >= 0 && H >= 0 && W >= 0 && K >= 0 && PH >= 1 && PW >= 1, "roi_align_backward: bad sizes");
  const int64_t total = N * C * H * W;
  if (total == 0) return;
  cudaStream_t st = as_stream(stream);
  T* ay = as_ptr<T>(taps);
  T* ax = ay + K * H * PH;
  if (K > 0) {
    roi_align_tables_kernel<T><<<grid_for(K * (H + W), kBlock), kBlock, 0, st>>>(
        as_ptr<const T>(rois), as_ptr<const int64_t>(order), as_ptr<int2>(ranges), ay, ax, K, H, W, PH, PW,
        static_cast<T>(spatial_scale), sampling_ratio, aligned);
    PYDL_LAUNCH_CHECK();
  }
  const int64_t tasks = N * ((C + kCPT - 1) / kCPT) * ((H + kTile - 1) / kTile) * ((W + kTile - 1) / kTile);
  const int64_t cap = 65535LL * 32;  // the block-stride loop covers the rest
  roi_align_backward_kernel<T><<<static_cast<unsigned>(tasks < cap ? tasks : cap), kBlock, 0, st>>>(
      as_ptr<const T>(dy), as_ptr<const T>(rois), as_ptr<const int2>(ranges), ay, ax, as_ptr<const int64_t>(order),
      as_ptr<const int64_t>(first), as_ptr<T>(dx), N, C, H, W, PH, PW, static_cast<T>(spatial_scale), sampling_ratio,
      aligned);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void bind_typed(py::module_& m, const char* suffix) {
  const std::string s(suffix);
  m.def(("roi_align_forward_" + s).c_str(), &roi_align_forward<T>,
        "(x, rois, y, N, C, H, W, K, PH, PW, spatial_scale, sampling_ratio, aligned, stream)");
  m.def(("roi_align_backward_" + s).c_str(), &roi_align_backward<T>,
        "(dy, rois, order, first, ranges, taps, dx, N, C, H, W, K, PH, PW, spatial_scale, sampling_ratio, "
        "aligned, stream)");
}

}  // namespace

void bind_roi_align_cuda(py::module_& m) {
  bind_typed<float>(m, "f32");
  bind_typed<double>(m, "f64");
}

}  // namespace pydl
