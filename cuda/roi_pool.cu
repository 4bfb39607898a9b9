// roi_pool: CUDA kernels for RoI max pooling (torchvision.ops.roi_pool), forward and backward.
//
// Math (as csrc/roi_pool.cpp, geometry in T exactly as torchvision): corners rounded half away
// from zero after scaling, roi at least 1x1, bin p spans [floor(p*b) + start, ceil((p+1)*b) + start)
// clipped to the image; y = first strict maximum from -FLT_MAX (0 and argmax -1 for an empty bin).
// Layout: x, dx NCHW; rois (K, 5); y, dy, argmax (K, C, PH, PW) with argmax = h*W + w; C-contiguous.
//
// Forward: one thread per output (k, c, ph, pw), pw fastest (grid-stride loop).
// Backward, deterministic by construction (no atomics): dx is GATHERED. Bins are monotone in p,
// so for a roi the bins that contain row h form a contiguous range [ph0, ph1) (1-2 bins, more for
// rois smaller than the output); a first kernel tabulates these ranges per (roi, row) and
// (roi, column) (K*(H+W) int2, tiny), rois in image order (CSR by image: one kernel of ours).
// The gather kernel gives a block to (n, block of CPT channels, 16x16 pixel tile), a thread to a
// pixel. The block culls the rois of image n to those whose bin extent meets the tile (one pass,
// compacted in CSR order into shared memory); each thread then walks that short list, skips a roi
// in two table loads when (h, w) is outside its bins, otherwise checks the argmax of the candidate
// bins for each of its channels. Each dx element is written once by one thread with a fixed
// summation order (rois in CSR order): race-free and bit-identical across runs.
// Why this design. The useful work is the candidate checks: one argmax load per (pixel, bin
// containing it, channel), as many as the forward's reads of x; warps (16 consecutive w) hit the
// same few bins, so those loads coalesce. The overhead is finding the candidate rois: a scan of
// all the image's rois per (pixel, channel block) costs K_n table loads each (the old design,
// far slower than torchvision); the tile cull costs K_n/256 block steps per tile and
// leaves each thread only the rois meeting its tile (detection boxes are small against the
// image: typically a fraction of K_n). Sorting the K*C*PH*PW (target, dy) pairs instead (radix
// sort + segmented sums) would take ~10 full passes over those pairs, more than the whole gather.
#include <cfloat>

#include "common.cuh"

namespace pydl {
namespace {

constexpr int kBlock = 256;
constexpr int kCPT = 8;  // channels per gather thread
constexpr int kTile = 16;  // gather tile side: kTile * kTile == kBlock threads, one per pixel
static_assert(kTile * kTile == kBlock, "one gather thread per tile pixel");

template <typename T>
struct PoolRoi {
  int64_t b, y0, x0;
  T bh, bw;
};

template <typename T>
__device__ inline int64_t round_coord(T v) {
  const T lim = T(1LL << 40);  // Python bounds |c * scale| by 2^30; keeps the conversion defined
  v = v < -lim ? -lim : (v > lim ? lim : v);
  return static_cast<int64_t>(round(v));  // half away from zero, as std::round
}

template <typename T>
__device__ inline PoolRoi<T> pool_roi(const T* r, T scale, int64_t PH, int64_t PW) {
  PoolRoi<T> g;
  g.b = static_cast<int64_t>(r[0]);
  g.x0 = round_coord<T>(r[1] * scale);
  g.y0 = round_coord<T>(r[2] * scale);
  const int64_t x1 = round_coord<T>(r[3] * scale), y1 = round_coord<T>(r[4] * scale);
  const int64_t rw = max(x1 - g.x0 + 1, int64_t(1)), rh = max(y1 - g.y0 + 1, int64_t(1));
  g.bh = static_cast<T>(rh) / static_cast<T>(PH);
  g.bw = static_cast<T>(rw) / static_cast<T>(PW);
  return g;
}

template <typename T>
__device__ inline void bin_range(int64_t p, T b, int64_t start, int64_t L, int64_t& lo, int64_t& hi) {
  lo = static_cast<int64_t>(floor(static_cast<T>(p) * b)) + start;
  hi = static_cast<int64_t>(ceil(static_cast<T>(p + 1) * b)) + start;
  lo = min(max(lo, int64_t(0)), L);
  hi = min(max(hi, int64_t(0)), L);
}

template <typename T>
__global__ void roi_pool_forward_kernel(const T* __restrict__ x, const T* __restrict__ rois, T* __restrict__ y,
                                        int64_t* __restrict__ argmax, int64_t total, int64_t C, int64_t H,
                                        int64_t W, int64_t PH, int64_t PW, T scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pw = i % PW, ph = (i / PW) % PH, c = (i / (PW * PH)) % C, k = i / (PW * PH * C);
    const PoolRoi<T> g = pool_roi(rois + 5 * k, scale, PH, PW);
    int64_t hs, he, ws, we;
    bin_range(ph, g.bh, g.y0, H, hs, he);
    bin_range(pw, g.bw, g.x0, W, ws, we);
    const bool empty = he <= hs || we <= ws;
    T best = empty ? T(0) : static_cast<T>(-FLT_MAX);
    int64_t arg = -1;
    const T* plane = x + (g.b * C + c) * H * W;
    for (int64_t h = hs; h < he; ++h)
      for (int64_t w = ws; w < we; ++w) {
        const T v = plane[h * W + w];
        if (v > best) {
          best = v;
          arg = h * W + w;
        }
      }
    y[i] = best;
    if (argmax) argmax[i] = arg;
  }
}

// ranges[r*(H+W) + t] for the r-th roi in image order (k = order[r]): t < H: bins [x, y) whose rows
// contain row t; t >= H: bins whose columns contain column t - H. Empty when x >= y. Indexed by
// the sorted position so that the gather reads it without first loading order[r].
template <typename T>
__global__ void roi_pool_ranges_kernel(const T* __restrict__ rois, const int64_t* __restrict__ order,
                                       int2* __restrict__ ranges, int64_t K, int64_t H, int64_t W, int64_t PH,
                                       int64_t PW, T scale) {
  const int64_t L = H + W, total = K * L;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / L, t = i % L;
    const PoolRoi<T> g = pool_roi(rois + 5 * order[r], scale, PH, PW);
    const bool rows = t < H;
    const int64_t pos = rows ? t : t - H, P = rows ? PH : PW, len = rows ? H : W, start = rows ? g.y0 : g.x0;
    const T b = rows ? g.bh : g.bw;
    int lo = 0, hi = 0;
    bool found = false;
    for (int64_t p = 0; p < P; ++p) {
      int64_t s, e;
      bin_range(p, b, start, len, s, e);
      if (pos >= s && pos < e) {
        if (!found) lo = static_cast<int>(p);
        hi = static_cast<int>(p) + 1;
        found = true;
      } else if (found) {
        break;  // bins are monotone: the range is contiguous
      }
    }
    ranges[i] = make_int2(lo, hi);
  }
}

// One block per (n, channel block, kTile x kTile pixel tile), one thread per pixel (a warp = two
// rows of 16 consecutive w): dx[n, c, h, w] = sum over the rois of image n (CSR order) and their
// bins (ph, pw) containing (h, w) of dy[k, c, ph, pw] where argmax[k, c, ph, pw] == h*W + w.
// The block first culls the image's rois to those whose bin extent meets the tile (the extent
// [lo of bin 0, hi of bin P-1) is a superset of every bin, bins being monotone), compacting them
// in CSR order into shared memory a chunk at a time; each thread then runs the exact per-pixel
// test on that short list only. Same summation order as a scan of all the rois: deterministic.
template <typename T>
__global__ void roi_pool_backward_kernel(const T* __restrict__ dy, const int64_t* __restrict__ argmax,
                                         const T* __restrict__ rois, const int2* __restrict__ ranges,
                                         const int64_t* __restrict__ order, const int64_t* __restrict__ first,
                                         T* __restrict__ dx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t PH,
                                         int64_t PW, T scale) {
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
    const int64_t c0 = cb * kCPT, self = h * W + w;
    T acc[kCPT];
#pragma unroll
    for (int j = 0; j < kCPT; ++j) acc[j] = T(0);
    const int64_t i0 = first[n], i1 = first[n + 1];
    for (int64_t base = i0; base < i1; base += kBlock) {
      const int64_t rc = base + threadIdx.x;
      bool meets = false;
      if (rc < i1) {
        const PoolRoi<T> g = pool_roi(rois + 5 * order[rc], scale, PH, PW);
        int64_t ylo, yhi, xlo, xhi, unused;
        bin_range(int64_t(0), g.bh, g.y0, H, ylo, unused);
        bin_range(PH - 1, g.bh, g.y0, H, unused, yhi);
        bin_range(int64_t(0), g.bw, g.x0, W, xlo, unused);
        bin_range(PW - 1, g.bw, g.x0, W, unused, xhi);
        meets = ylo < h1 && yhi > h0 && xlo < w1 && xhi > w0;
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
          for (int ph = rr.x; ph < rr.y; ++ph)
            for (int pw = cr.x; pw < cr.y; ++pw) {
              const int64_t o = (k * C + c0) * PP + ph * PW + pw;
#pragma unroll
              for (int j = 0; j < kCPT; ++j)
                if (c0 + j < C && argmax[o + j * PP] == self) acc[j] += dy[o + j * PP];
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

// Validation of the rois (and of a backward's argmax) in one pass, for the Python checks:
// flags[0] |= some batch index not an integer in [0, N); flags[1] |= some coordinate not finite
// or |c * scale| > 2^30 (in T, as NumPy evaluates the same test); flags[2] |= some index outside
// [-1, HW). Integer atomics only on failure: the flags are exact whatever the order.
template <typename T>
__global__ void roi_check_kernel(const T* __restrict__ rois, int64_t K, int64_t N, T scale,
                                 const int64_t* __restrict__ idx, int64_t M, int64_t HW, int* __restrict__ flags) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  bool bad_b = false, bad_c = false, bad_i = false;
  const T lim = static_cast<T>(1073741824.0), n = static_cast<T>(N);
  for (int64_t i = i0; i < 5 * K; i += stride) {
    const T v = rois[i];
    if (i % 5 == 0)
      bad_b |= !(v == floor(v) && v >= T(0) && v < n);
    else
      bad_c |= !(isfinite(v) && fabs(v) * scale <= lim);
  }
  for (int64_t i = i0; i < M; i += stride) {
    const int64_t a = idx[i];
    bad_i |= a < -1 || a >= HW;
  }
  if (bad_b) atomicOr(flags, 1);
  if (bad_c) atomicOr(flags + 1, 1);
  if (bad_i) atomicOr(flags + 2, 1);
}

// CSR of the rois by image, stable (roi index order within an image), no atomics: block n (of
// N + 1) counts the rois of images < n (first[n]) in one pass, then compacts those of image n to
// order[first[n] ...] in a second, chunk by chunk (warp ballot + per-warp counts in shared memory).
// Work 2*K per block: meant for small N (a batch of images); the glue falls back for huge N*K.
// Batch indices are validated integers in [0, N) before this runs.
template <typename T>
__global__ void rois_by_image_kernel(const T* __restrict__ rois, int64_t K, int64_t N, int64_t* __restrict__ order,
                                     int64_t* __restrict__ first) {
  __shared__ int warp_cnt[kBlock / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t n = blockIdx.x; n <= N; n += gridDim.x) {
    int64_t pos = 0;
    for (int64_t base = 0; base < K; base += blockDim.x) {
      const int64_t k = base + threadIdx.x;
      pos += __syncthreads_count(k < K && static_cast<int64_t>(rois[5 * k]) < n);
    }
    if (threadIdx.x == 0) first[n] = pos;
    if (n == N) continue;  // uniform over the block
    for (int64_t base = 0; base < K; base += blockDim.x) {
      const int64_t k = base + threadIdx.x;
      const bool pred = k < K && static_cast<int64_t>(rois[5 * k]) == n;
      const unsigned m = __ballot_sync(0xffffffffu, pred);
      if (lane == 0) warp_cnt[warp] = __popc(m);
      __syncthreads();
      int off = __popc(m & ((1u << lane) - 1u));
      for (int j = 0; j < warp; ++j) off += warp_cnt[j];
      if (pred) order[pos + off] = k;
      pos += __syncthreads_count(pred);  // also the barrier before warp_cnt is rewritten
    }
  }
}

// Returns (bad batch index, bad coordinate, bad index) flags; flags: a 3-int device workspace.
// One small copy back and a sync of the stream (the Python checks need the answer).
template <typename T>
py::tuple roi_check(dptr rois, int64_t K, int64_t N, double spatial_scale, dptr idx, int64_t M, int64_t HW,
                    dptr flags, dptr stream) {
  PYDL_CHECK(K >= 0 && N >= 0 && M >= 0 && (M == 0 || idx != 0), "roi_check: bad sizes");
  int host[3] = {0, 0, 0};
  {
    py::gil_scoped_release nogil;
    cudaStream_t st = as_stream(stream);
    PYDL_CUDA_CHECK(cudaMemsetAsync(as_ptr<int>(flags), 0, 3 * sizeof(int), st));
    const int64_t n = 5 * K > M ? 5 * K : M;
    if (n > 0) {
      roi_check_kernel<T><<<grid_for(n, kBlock), kBlock, 0, st>>>(as_ptr<const T>(rois), K, N,
                                                                   static_cast<T>(fabs(spatial_scale)),
                                                                   as_ptr<const int64_t>(idx), M, HW, as_ptr<int>(flags));
      PYDL_LAUNCH_CHECK();
    }
    PYDL_CUDA_CHECK(cudaMemcpyAsync(host, as_ptr<int>(flags), 3 * sizeof(int), cudaMemcpyDeviceToHost, st));
    PYDL_CUDA_CHECK(cudaStreamSynchronize(st));
  }
  return py::make_tuple(host[0] != 0, host[1] != 0, host[2] != 0);
}

// order (K) and first (N + 1), int64 device arrays.
template <typename T>
void rois_by_image(dptr rois, int64_t K, int64_t N, dptr order, dptr first, dptr stream) {
  PYDL_CHECK(K >= 0 && N >= 0, "rois_by_image: bad sizes");
  const int64_t blocks = N + 1 < 65535 ? N + 1 : 65535;
  rois_by_image_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(rois), K, N, as_ptr<int64_t>(order), as_ptr<int64_t>(first));
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void roi_pool_forward(dptr x, dptr rois, dptr y, dptr argmax, int64_t N, int64_t C, int64_t H, int64_t W,
                      int64_t K, int64_t PH, int64_t PW, double spatial_scale, dptr stream) {
  PYDL_CHECK(N >= 0 && C >= 0 && H >= 0 && W >= 0 && K >= 0 && PH >= 1 && PW >= 1, "roi_pool_forward: bad sizes");
  const int64_t total = K * C * PH * PW;
  if (total == 0) return;
  roi_pool_forward_kernel<T><<<grid_for(total, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(x), as_ptr<const T>(rois), as_ptr<T>(y), as_ptr<int64_t>(argmax), total, C, H, W, PH, PW,
      static_cast<T>(spatial_scale));
  PYDL_LAUNCH_CHECK();
}

// ranges: K*(H+W) int2 workspace; order (K) / first (N+1): the rois sorted by image (int64).
template <typename T>
void roi_pool_backward(dptr dy, dptr argmax, dptr rois, dptr order, dptr first, dptr ranges, dptr dx, int64_t N,
                       int64_t C, int64_t H, int64_t W, int64_t K, int64_t PH, int64_t PW, double spatial_scale,
                       dptr stream) {
  PYDL_CHECK(N >= 0 && C >= 0 && H >= 0 && W >= 0 && K >= 0 && PH >= 1 && PW >= 1, "roi_pool_backward: bad sizes");
  const int64_t total = N * C * H * W;
  if (total == 0) return;
  cudaStream_t st = as_stream(stream);
  if (K > 0) {
    roi_pool_ranges_kernel<T><<<grid_for(K * (H + W), kBlock), kBlock, 0, st>>>(
        as_ptr<const T>(rois), as_ptr<const int64_t>(order), as_ptr<int2>(ranges), K, H, W, PH, PW,
        static_cast<T>(spatial_scale));
    PYDL_LAUNCH_CHECK();
  }
  const int64_t tasks = N * ((C + kCPT - 1) / kCPT) * ((H + kTile - 1) / kTile) * ((W + kTile - 1) / kTile);
  const int64_t cap = 65535LL * 32;  // the block-stride loop covers the rest
  roi_pool_backward_kernel<T><<<static_cast<unsigned>(tasks < cap ? tasks : cap), kBlock, 0, st>>>(
      as_ptr<const T>(dy), as_ptr<const int64_t>(argmax), as_ptr<const T>(rois), as_ptr<const int2>(ranges),
      as_ptr<const int64_t>(order), as_ptr<const int64_t>(first), as_ptr<T>(dx), N, C, H, W, PH, PW,
      static_cast<T>(spatial_scale));
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void bind_typed(py::module_& m, const char* suffix) {
  const std::string s(suffix);
  m.def(("roi_pool_forward_" + s).c_str(), &roi_pool_forward<T>,
        "(x, rois, y, argmax or 0, N, C, H, W, K, PH, PW, spatial_scale, stream)");
  m.def(("roi_pool_backward_" + s).c_str(), &roi_pool_backward<T>,
        "(dy, argmax, rois, order, first, ranges, dx, N, C, H, W, K, PH, PW, spatial_scale, stream)");
  m.def(("roi_check_" + s).c_str(), &roi_check<T>,
        "(rois, K, N, spatial_scale, indices or 0, M, HW, flags, stream) -> (bad_batch, bad_coord, bad_index)");
  m.def(("rois_by_image_" + s).c_str(), &rois_by_image<T>, "(rois, K, N, order, first, stream)");
}

}  // namespace

void bind_roi_pool_cuda(py::module_& m) {
  bind_typed<float>(m, "f32");
  bind_typed<double>(m, "f64");
}

}  // namespace pydl
