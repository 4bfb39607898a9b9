// batch_norm: CUDA kernels (training forward, evaluation forward, backward).
//
// Math, per channel c over its M = N * S values (S = H * W, or 1 for (N, C) input):
//   mean = sum(x) / M,  var = sum((x - mean)^2) / M (biased),  invstd = 1 / sqrt(var + eps)
//   y = (x - mean) * invstd * w + b
//   training also updates rm = (1 - m) rm + m mean, rv = (1 - m) rv + m var M / (M - 1).
// Backward (xhat = (x - mean) invstd): db = sum(dy), dw = sum(dy xhat);
//   training: dx = w invstd / M (M dy - db - xhat dw) = A dy + B (x - mean) + K with
//     A = w invstd, B = -w invstd^2 dw / M, K = -w invstd db / M
//   (d mean / dx_i = 1 / M, d invstd / dx_i = -invstd^3 (x_i - mean) / M);
//   evaluation (mean, invstd constants): dx = A dy.
// Layout: x is (N, C, S) C-contiguous; channel c is N rows of S contiguous values,
// C * S apart. With S % VEC == 0 and 16-byte aligned pointers, rows are read as packs
// of VEC = 16 / sizeof(T) values (VEC = 1 otherwise).
// Kernels, all on the caller's stream, no atomics, fixed-order reductions (bit-identical
// reruns). Training, when a channel fits in the shared memory of a cluster of K <= 16
// blocks (see "fused" below): ONE kernel per direction, one HBM read of the inputs and one
// write of the output. Otherwise (channels of ~1.8 MB and up) three passes:
//   1. reduce: grid (G slices, C channels), 256 threads. A block reduces one slice of one
//      channel. Statistics: each thread merges chunks of U packs (two-pass in registers,
//      in double) into its (count, mean, m2) with Chan's formula; the block merges
//      threads by a fixed shuffle tree, then warps in order, and writes one partial.
//      Backward: the same shape with plain double sums of dy and dy * (x - mean).
//      For S == 1 ((N, C) input) one thread per channel walks the rows (coalesced).
//   2. finalize: one thread per channel merges its G partials in order g = 0..G-1, writes
//      the per-channel outputs (save_mean, save_invstd, running buffers, dw, db) and the
//      coefficients of the elementwise pass into the workspace.
//   3. apply: kApplyU packs per thread; y = ((x - mean_hi) - mean_lo) * scale + shift
//      (mean = mean_hi + mean_lo split in T keeps float32 accuracy for offset data), or
//      dx = A dy + B ((x - mean_hi) - mean_lo) + K.
// Evaluation forward: one elementwise kernel that derives the coefficients itself.
// Global offsets are 64-bit; per-pack channel arithmetic is 32-bit where sizes allow.
#include <cmath>

#include <cooperative_groups.h>

#include "common.cuh"

namespace pydl {
namespace {

namespace cg = cooperative_groups;

constexpr int kBlock = 256;
constexpr int kUnroll = 4;   // packs per thread per chunk
constexpr int kMaxSlices = 128;  // G <= kMaxSlices: sizes the workspace
constexpr int kParams = 5;   // per-channel coefficients of the apply pass

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

__device__ __forceinline__ void chan_merge(double& na, double& ma, double& m2a, double nb,
                                           double mb, double m2b) {
  if (nb == 0.0) return;
  const double n = na + nb;
  const double d = mb - ma;
  const double r = nb / n;
  ma += d * r;
  m2a += m2b + d * d * na * r;
  na = n;
}

// Fixed-order block reduction of Welford states; the result is valid in thread 0.
__device__ __forceinline__ void block_merge(double& n, double& mean, double& m2) {
  __shared__ double sn[kBlock / 32], sm[kBlock / 32], s2[kBlock / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const double on = __shfl_down_sync(0xffffffffu, n, off);
    const double om = __shfl_down_sync(0xffffffffu, mean, off);
    const double o2 = __shfl_down_sync(0xffffffffu, m2, off);
    chan_merge(n, mean, m2, on, om, o2);
  }
  if (lane == 0) {
    sn[warp] = n;
    sm[warp] = mean;
    s2[warp] = m2;
  }
  __syncthreads();
  if (warp == 0) {
    n = lane < kBlock / 32 ? sn[lane] : 0.0;
    mean = lane < kBlock / 32 ? sm[lane] : 0.0;
    m2 = lane < kBlock / 32 ? s2[lane] : 0.0;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const double on = __shfl_down_sync(0xffffffffu, n, off);
      const double om = __shfl_down_sync(0xffffffffu, mean, off);
      const double o2 = __shfl_down_sync(0xffffffffu, m2, off);
      chan_merge(n, mean, m2, on, om, o2);
    }
  }
}

// Fixed-order block sum of two doubles; the result is valid in thread 0.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kBlock / 32], sb[kBlock / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kBlock / 32 ? sa[lane] : 0.0;
    b = lane < kBlock / 32 ? sb[lane] : 0.0;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
    }
  }
}

// Slice g of G of a channel's Mv = N * Sv packs, and the (row, column) walk over it.
struct Walk {
  int64_t lo, hi;     // pack range [lo, hi) of this slice
  int64_t n, col;     // current row and pack column
  int64_t dn, dcol;   // one block stride (kBlock packs) in rows and columns
  int64_t Sv;
  __device__ Walk(int64_t Mv, int64_t Sv_, int g, int G) : Sv(Sv_) {
    const int64_t len = (Mv + G - 1) / G;
    lo = min(Mv, static_cast<int64_t>(g) * len);
    hi = min(Mv, lo + len);
    const int64_t v = lo + threadIdx.x;
    n = v / Sv;
    col = v - n * Sv;
    dn = kBlock / Sv;
    dcol = kBlock - dn * Sv;
  }
  __device__ __forceinline__ void step() {
    col += dcol;
    n += dn;
    if (col >= Sv) {
      col -= Sv;
      ++n;
    }
  }
};

// ---------------------------------------------------------------- reduce kernels

template <typename T, int VEC>
__global__ void __launch_bounds__(kBlock) stats_kernel(const T* __restrict__ x, int64_t N,
                                                       int64_t C, int64_t S, int G,
                                                       double* __restrict__ part) {
  using P = Pack<T, VEC>;
  const int64_t Sv = S / VEC, CSv = C * Sv;
  for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
    const P* xc = reinterpret_cast<const P*>(x + c * S);
    Walk w(N * Sv, Sv, blockIdx.x, G);
    double tn = 0.0, tm = 0.0, t2 = 0.0;
    for (int64_t base = w.lo + threadIdx.x; base < w.hi; base += kUnroll * kBlock) {
      P p[kUnroll];
      int cnt = 0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (base + u * kBlock < w.hi) {
          p[u] = xc[w.n * CSv + w.col];
          ++cnt;
        }
        w.step();
      }
      // Two passes over the chunk in registers, then merge it.
      double s = 0.0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (u < cnt)
#pragma unroll
          for (int k = 0; k < VEC; ++k) s += static_cast<double>(p[u].v[k]);
      const double nb = static_cast<double>(cnt * VEC);
      const double mb = s / nb;
      double m2b = 0.0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (u < cnt)
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            const double d = static_cast<double>(p[u].v[k]) - mb;
            m2b += d * d;
          }
      chan_merge(tn, tm, t2, nb, mb, m2b);
    }
    block_merge(tn, tm, t2);
    if (threadIdx.x == 0) {
      double* q = part + (c * G + blockIdx.x) * 3;
      q[0] = tn;
      q[1] = tm;
      q[2] = t2;
    }
    __syncthreads();  // shared scratch of block_merge is reused by the next channel
  }
}

// (N, C) input: thread per channel, rows walked in chunks of kUnroll (coalesced over c).
template <typename T>
__global__ void stats_rows_kernel(const T* __restrict__ x, int64_t N, int64_t C,
                                  double* __restrict__ part) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double tn = 0.0, tm = 0.0, t2 = 0.0;
    for (int64_t n0 = 0; n0 < N; n0 += kUnroll) {
      const int cnt = static_cast<int>(min(static_cast<int64_t>(kUnroll), N - n0));
      double v[kUnroll];
      double s = 0.0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        v[u] = u < cnt ? static_cast<double>(x[(n0 + u) * C + c]) : 0.0;
        s += v[u];
      }
      const double mb = s / cnt;
      double m2b = 0.0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (u < cnt) m2b += (v[u] - mb) * (v[u] - mb);
      chan_merge(tn, tm, t2, static_cast<double>(cnt), mb, m2b);
    }
    part[c * 3 + 0] = tn;
    part[c * 3 + 1] = tm;
    part[c * 3 + 2] = t2;
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kBlock) bwd_sums_kernel(const T* __restrict__ dy,
                                                          const T* __restrict__ x,
                                                          const T* __restrict__ mean_p,
                                                          int64_t N, int64_t C, int64_t S, int G,
                                                          double* __restrict__ part) {
  using P = Pack<T, VEC>;
  const int64_t Sv = S / VEC, CSv = C * Sv;
  for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
    const P* xc = reinterpret_cast<const P*>(x + c * S);
    const P* gc = reinterpret_cast<const P*>(dy + c * S);
    const double mean = static_cast<double>(mean_p[c]);
    Walk w(N * Sv, Sv, blockIdx.x, G);
    double a = 0.0, b = 0.0;
    for (int64_t base = w.lo + threadIdx.x; base < w.hi; base += kUnroll * kBlock) {
      P p[kUnroll], g[kUnroll];
      bool ok[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        ok[u] = base + u * kBlock < w.hi;
        if (ok[u]) {
          const int64_t i = w.n * CSv + w.col;
          p[u] = xc[i];
          g[u] = gc[i];
        }
        w.step();
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (ok[u])
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            const double gd = static_cast<double>(g[u].v[k]);
            a += gd;
            b += gd * (static_cast<double>(p[u].v[k]) - mean);
          }
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
      double* q = part + (c * G + blockIdx.x) * 2;
      q[0] = a;
      q[1] = b;
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void bwd_sums_rows_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                     const T* __restrict__ mean_p, int64_t N, int64_t C,
                                     double* __restrict__ part) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double mean = static_cast<double>(mean_p[c]);
    double a = 0.0, b = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const double gd = static_cast<double>(dy[n * C + c]);
      a += gd;
      b += gd * (static_cast<double>(x[n * C + c]) - mean);
    }
    part[c * 2 + 0] = a;
    part[c * 2 + 1] = b;
  }
}

// ---------------------------------------------------------------- finalize kernels

template <typename T>
__device__ __forceinline__ void split(double v, T& hi, T& lo) {
  hi = static_cast<T>(v);
  lo = static_cast<T>(v - static_cast<double>(hi));
}

// Training: merge partials, write stats, update running buffers, coefficients (mh, ml, scale, shift).
template <typename T>
__global__ void finalize_train_kernel(const double* __restrict__ part, int G, int64_t C,
                                      const T* __restrict__ w, const T* __restrict__ b,
                                      T* __restrict__ rm, T* __restrict__ rv,
                                      T* __restrict__ save_mean, T* __restrict__ save_invstd,
                                      T* __restrict__ params, double momentum, double eps) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double n = 0.0, mean = 0.0, m2 = 0.0;
    for (int g = 0; g < G; ++g) {
      const double* q = part + (c * G + g) * 3;
      chan_merge(n, mean, m2, q[0], q[1], q[2]);
    }
    const double invstd = n > 0.0 ? 1.0 / sqrt(m2 / n + eps) : 0.0;
    save_mean[c] = static_cast<T>(mean);
    save_invstd[c] = static_cast<T>(invstd);
    if (rm != nullptr && n > 1.0) {
      rm[c] = static_cast<T>((1.0 - momentum) * static_cast<double>(rm[c]) + momentum * mean);
      rv[c] = static_cast<T>((1.0 - momentum) * static_cast<double>(rv[c]) +
                             momentum * (m2 / (n - 1.0)));
    }
    T* pc = params + c * kParams;
    split(mean, pc[0], pc[1]);
    pc[2] = static_cast<T>((w ? static_cast<double>(w[c]) : 1.0) * invstd);
    pc[3] = b ? b[c] : T(0);
  }
}

// Backward: sums -> dw, db and coefficients (mh, ml, A, B, K) of dx.
template <typename T>
__global__ void finalize_bwd_kernel(const double* __restrict__ part, int G, int64_t C, int64_t M,
                                    const T* __restrict__ w, const T* __restrict__ mean_p,
                                    const T* __restrict__ invstd_p, T* __restrict__ dw,
                                    T* __restrict__ db, T* __restrict__ params, bool training) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sdy = 0.0, sdyx = 0.0;
    for (int g = 0; g < G; ++g) {
      sdy += part[(c * G + g) * 2 + 0];
      sdyx += part[(c * G + g) * 2 + 1];
    }
    const double invstd = static_cast<double>(invstd_p[c]);
    const double wc = w ? static_cast<double>(w[c]) : 1.0;
    const double gw = invstd * sdyx;
    if (dw) dw[c] = static_cast<T>(gw);
    if (db) db[c] = static_cast<T>(sdy);
    T* pc = params + c * kParams;
    split(static_cast<double>(mean_p[c]), pc[0], pc[1]);
    pc[2] = static_cast<T>(wc * invstd);
    const bool full = training && M > 0;
    pc[3] = full ? static_cast<T>(-wc * invstd * invstd * gw / static_cast<double>(M)) : T(0);
    pc[4] = full ? static_cast<T>(-wc * invstd * sdy / static_cast<double>(M)) : T(0);
  }
}

// ---------------------------------------------------------------- apply kernels

// Each thread handles kApplyU packs kBlock apart (all loads issued before any math, so
// kApplyU 16-byte loads are in flight per thread); the channel of pack v is (v / Sv) % C,
// in 32-bit arithmetic (I = uint32_t) whenever the pack count allows.
constexpr int kApplyU = 4;

template <typename T, int VEC, typename I>
__global__ void __launch_bounds__(kBlock) apply_fwd_kernel(const T* __restrict__ x,
                                                           T* __restrict__ y,
                                                           const T* __restrict__ params,
                                                           I total, I Sv, I C) {
  using P = Pack<T, VEC>;
  const P* xp = reinterpret_cast<const P*>(x);
  P* yp = reinterpret_cast<P*>(y);
  const I base = static_cast<I>(blockIdx.x) * (kApplyU * kBlock) + threadIdx.x;
  P p[kApplyU];
#pragma unroll
  for (int u = 0; u < kApplyU; ++u) {
    const I v = base + u * kBlock;
    if (v < total) p[u] = xp[v];
  }
#pragma unroll
  for (int u = 0; u < kApplyU; ++u) {
    const I v = base + u * kBlock;
    if (v < total) {
      const T* pc = params + ((v / Sv) % C) * kParams;
      const T mh = pc[0], ml = pc[1], sc = pc[2], sh = pc[3];
      P q;
#pragma unroll
      for (int k = 0; k < VEC; ++k) q.v[k] = ((p[u].v[k] - mh) - ml) * sc + sh;
      yp[v] = q;
    }
  }
}

template <typename T, int VEC, typename I>
__global__ void __launch_bounds__(kBlock) apply_bwd_kernel(const T* __restrict__ dy,
                                                           const T* __restrict__ x,
                                                           T* __restrict__ dx,
                                                           const T* __restrict__ params,
                                                           I total, I Sv, I C) {
  using P = Pack<T, VEC>;
  const P* gp = reinterpret_cast<const P*>(dy);
  const P* xp = reinterpret_cast<const P*>(x);
  P* op = reinterpret_cast<P*>(dx);
  const I base = static_cast<I>(blockIdx.x) * (kApplyU * kBlock) + threadIdx.x;
  P g[kApplyU], p[kApplyU];
#pragma unroll
  for (int u = 0; u < kApplyU; ++u) {
    const I v = base + u * kBlock;
    if (v < total) {
      g[u] = gp[v];
      p[u] = xp[v];
    }
  }
#pragma unroll
  for (int u = 0; u < kApplyU; ++u) {
    const I v = base + u * kBlock;
    if (v < total) {
      const T* pc = params + ((v / Sv) % C) * kParams;
      const T mh = pc[0], ml = pc[1], A = pc[2], B = pc[3], K = pc[4];
      P q;
#pragma unroll
      for (int k = 0; k < VEC; ++k) q.v[k] = A * g[u].v[k] + B * ((p[u].v[k] - mh) - ml) + K;
      op[v] = q;
    }
  }
}

// Evaluation forward in one kernel: each thread derives its channels' coefficients from the
// running statistics itself (recomputed only when the channel changes between its packs;
// the same double formulas as the CPU), and threads c of the grid also write
// save_mean[c] = running_mean[c], save_invstd[c] = 1 / sqrt(running_var[c] + eps).
template <typename T, int VEC, typename I>
__global__ void __launch_bounds__(kBlock) eval_fwd_kernel(
    const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ b,
    const T* __restrict__ rm, const T* __restrict__ rv, T* __restrict__ save_mean,
    T* __restrict__ save_invstd, I total, I Sv, I C, double eps) {
  using P = Pack<T, VEC>;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * kBlock) {
    if (save_mean) save_mean[c] = rm[c];
    if (save_invstd) save_invstd[c] = static_cast<T>(1.0 / sqrt(static_cast<double>(rv[c]) + eps));
  }
  const P* xp = reinterpret_cast<const P*>(x);
  P* yp = reinterpret_cast<P*>(y);
  const I base = static_cast<I>(blockIdx.x) * (kApplyU * kBlock) + threadIdx.x;
  P p[kApplyU];
#pragma unroll
  for (int u = 0; u < kApplyU; ++u) {
    const I v = base + u * kBlock;
    if (v < total) p[u] = xp[v];
  }
  I cur = C;  // no channel yet
  T mh = T(0), ml = T(0), sc = T(0), sh = T(0);
#pragma unroll
  for (int u = 0; u < kApplyU; ++u) {
    const I v = base + u * kBlock;
    if (v < total) {
      const I c = (v / Sv) % C;
      if (c != cur) {
        cur = c;
        const double invstd = 1.0 / sqrt(static_cast<double>(rv[c]) + eps);
        split(static_cast<double>(rm[c]), mh, ml);
        sc = static_cast<T>((w ? static_cast<double>(w[c]) : 1.0) * invstd);
        sh = b ? b[c] : T(0);
      }
      P q;
#pragma unroll
      for (int k = 0; k < VEC; ++k) q.v[k] = ((p[u].v[k] - mh) - ml) * sc + sh;
      yp[v] = q;
    }
  }
}

// ---------------------------------------------------------------- fused (smem-resident) kernels
//
// When a channel's values fit in the shared memory of a cluster of K <= 8 blocks (one
// cluster per channel, block r of the cluster holds packs [r L, (r + 1) L) of the
// channel's Mv = N * Sv packs in dynamic shared memory), HBM sees one read of x (and dy)
// and one write of y (dx):
//   training forward: load (double sum) -> cluster sum -> mean -> sum of squared
//   deviations from shared memory (two-pass, exact for offset data) -> cluster sum ->
//   invstd -> y from shared memory.
//   training backward: load x and dy (double sums of dy and dy (x - mean)) -> cluster
//   sums -> dw, db, coefficients -> dx from shared memory.
// Cluster sums are deterministic: each block reduces in a fixed tree, publishes its
// partial in its own shared memory, and after cluster.sync() every block adds the K
// partials in rank order (reading its peers' shared memory), so all blocks agree bit for
// bit. A last cluster.sync() keeps every block's shared memory alive until its peers
// have read it. Local pack indices are 32-bit (a slice is at most ~227 KB).
constexpr int kFBlock = 512;
constexpr int kFU = 8;  // packs loaded per thread before use
// Clusters of up to 8 blocks are portable; 16 (non-portable, H100) is tried first where it
// halves the slices (two resident blocks per SM), with 8 as the fallback.
constexpr int kMaxCluster = 16;
constexpr int kPortableCluster = 8;

// Cluster primitives. Clusters exist from sm_90 on; builds for older GPUs (which the host
// never sends to the fused kernels, see fused_ok) get the one-block-cluster equivalents.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PYDL_BN_CLUSTERS 1
#endif
__device__ __forceinline__ unsigned int cl_blocks() {
#ifdef PYDL_BN_CLUSTERS
  return cg::this_cluster().num_blocks();
#else
  return 1;
#endif
}
__device__ __forceinline__ unsigned int cl_rank() {
#ifdef PYDL_BN_CLUSTERS
  return cg::this_cluster().block_rank();
#else
  return 0;
#endif
}
__device__ __forceinline__ void cl_sync() {
#ifdef PYDL_BN_CLUSTERS
  cg::this_cluster().sync();
#else
  __syncthreads();
#endif
}
__device__ __forceinline__ const double* cl_peer(double* p, unsigned int r) {
#ifdef PYDL_BN_CLUSTERS
  return cg::this_cluster().map_shared_rank(p, r);
#else
  return p;
#endif
}

// Fixed-order sum over the block of NV doubles; every thread gets the result.
template <int NV>
__device__ __forceinline__ void fblock_sum(double (&v)[NV], double* scratch /* NV*16 */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < NV; ++j)
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[j] += __shfl_down_sync(0xffffffffu, v[j], off);
  if (lane == 0)
#pragma unroll
    for (int j = 0; j < NV; ++j) scratch[j * (kFBlock / 32) + warp] = v[j];
  __syncthreads();
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    double t = 0.0;
    for (int w = 0; w < kFBlock / 32; ++w) t += scratch[j * (kFBlock / 32) + w];
    v[j] = t;
  }
  __syncthreads();  // scratch is reused by the next call
}

// Sum of NV doubles over the cluster, in rank order; every thread of every block gets it.
// slot: this block's shared publication slot (distinct per call site).
template <int NV>
__device__ __forceinline__ void cluster_sum(double (&v)[NV], double* slot) {
  if (threadIdx.x == 0)
#pragma unroll
    for (int j = 0; j < NV; ++j) slot[j] = v[j];
  cl_sync();
  const unsigned int K = cl_blocks();
#pragma unroll
  for (int j = 0; j < NV; ++j) v[j] = 0.0;
  for (unsigned int r = 0; r < K; ++r) {
    const double* peer = cl_peer(slot, r);
#pragma unroll
    for (int j = 0; j < NV; ++j) v[j] += peer[j];
  }
}

// The slice of this block: packs [lo, hi) of the channel, local index i -> global pack.
struct Slice {
  uint32_t lo, len;  // first pack, pack count
  uint32_t Sv;
  int64_t rowstride, cbase;  // C * Sv, c * Sv
  __device__ __forceinline__ int64_t at(uint32_t i) const {
    const uint32_t v = lo + i;
    const uint32_t n = v / Sv;
    return n * rowstride + cbase + (v - n * Sv);
  }
};

__device__ __forceinline__ Slice slice_of(int64_t N, int64_t C, int64_t Sv, uint32_t L,
                                          int64_t c, unsigned int rank) {
  const uint32_t Mv = static_cast<uint32_t>(N * Sv);
  Slice s;
  s.lo = min(Mv, rank * L);
  s.len = min(Mv, s.lo + L) - s.lo;
  s.Sv = static_cast<uint32_t>(Sv);
  s.rowstride = C * Sv;
  s.cbase = c * Sv;
  return s;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kFBlock) fused_train_fwd_kernel(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ rm,
    T* __restrict__ rv, T* __restrict__ y, T* __restrict__ save_mean, T* __restrict__ save_invstd,
    int64_t N, int64_t C, int64_t Sv, uint32_t L, double momentum, double eps) {
  using P = Pack<T, VEC>;
  extern __shared__ __align__(16) unsigned char fsmem[];
  P* buf = reinterpret_cast<P*>(fsmem);
  __shared__ double scratch[2 * (kFBlock / 32)];
  __shared__ double slot1[1], slot2[1];
  const unsigned int rank = cl_rank();
  const int64_t c = blockIdx.x / cl_blocks();
  const Slice sl = slice_of(N, C, Sv, L, c, rank);
  const P* xp = reinterpret_cast<const P*>(x);
  P* yp = reinterpret_cast<P*>(y);
  const double M = static_cast<double>(N * Sv * VEC);

  double acc[1] = {0.0};
  // kFU loads in flight per thread before any is used (one resident block per SM or two:
  // latency is hidden by these, not by other blocks).
  for (uint32_t i0 = threadIdx.x; i0 < sl.len; i0 += kFU * kFBlock) {
    P p[kFU];
#pragma unroll
    for (int u = 0; u < kFU; ++u)
      if (i0 + u * kFBlock < sl.len) p[u] = xp[sl.at(i0 + u * kFBlock)];
#pragma unroll
    for (int u = 0; u < kFU; ++u)
      if (i0 + u * kFBlock < sl.len) {
        buf[i0 + u * kFBlock] = p[u];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[0] += static_cast<double>(p[u].v[k]);
      }
  }
  fblock_sum<1>(acc, scratch);
  cluster_sum<1>(acc, slot1);
  const double mean = acc[0] / M;

  acc[0] = 0.0;
  for (uint32_t i = threadIdx.x; i < sl.len; i += kFBlock) {
    const P p = buf[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const double d = static_cast<double>(p.v[k]) - mean;
      acc[0] += d * d;
    }
  }
  fblock_sum<1>(acc, scratch);
  cluster_sum<1>(acc, slot2);
  const double m2 = acc[0];
  const double invstd = 1.0 / sqrt(m2 / M + eps);
  if (rank == 0 && threadIdx.x == 0) {
    save_mean[c] = static_cast<T>(mean);
    save_invstd[c] = static_cast<T>(invstd);
    if (rm != nullptr && M > 1.0) {
      rm[c] = static_cast<T>((1.0 - momentum) * static_cast<double>(rm[c]) + momentum * mean);
      rv[c] = static_cast<T>((1.0 - momentum) * static_cast<double>(rv[c]) +
                             momentum * (m2 / (M - 1.0)));
    }
  }
  T mh, ml;
  split(mean, mh, ml);
  const T sc = static_cast<T>((w ? static_cast<double>(w[c]) : 1.0) * invstd);
  const T sh = b ? b[c] : T(0);
  for (uint32_t i = threadIdx.x; i < sl.len; i += kFBlock) {
    const P p = buf[i];
    P q;
#pragma unroll
    for (int k = 0; k < VEC; ++k) q.v[k] = ((p.v[k] - mh) - ml) * sc + sh;
    yp[sl.at(i)] = q;
  }
  cl_sync();  // peers may still be reading slot1 / slot2
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kFBlock) fused_train_bwd_kernel(
    const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
    const T* __restrict__ mean_p, const T* __restrict__ invstd_p, T* __restrict__ dx,
    T* __restrict__ dw, T* __restrict__ db, int64_t N, int64_t C, int64_t Sv, uint32_t L) {
  using P = Pack<T, VEC>;
  extern __shared__ __align__(16) unsigned char fsmem[];
  P* bx = reinterpret_cast<P*>(fsmem);
  P* bg = bx + L;
  __shared__ double scratch[2 * (kFBlock / 32)];
  __shared__ double slot[2];
  const unsigned int rank = cl_rank();
  const int64_t c = blockIdx.x / cl_blocks();
  const Slice sl = slice_of(N, C, Sv, L, c, rank);
  const P* xp = reinterpret_cast<const P*>(x);
  const P* gp = reinterpret_cast<const P*>(dy);
  P* op = reinterpret_cast<P*>(dx);
  const double mean = static_cast<double>(mean_p[c]);

  double acc[2] = {0.0, 0.0};  // sum dy, sum dy (x - mean)
  constexpr int U = kFU / 2;
  for (uint32_t i0 = threadIdx.x; i0 < sl.len; i0 += U * kFBlock) {
    P p[U], g[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i0 + u * kFBlock < sl.len) {
        const int64_t gi = sl.at(i0 + u * kFBlock);
        p[u] = xp[gi];
        g[u] = gp[gi];
      }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i0 + u * kFBlock < sl.len) {
        if (op != nullptr) {  // kept only for dx (the sums alone need one read)
          bx[i0 + u * kFBlock] = p[u];
          bg[i0 + u * kFBlock] = g[u];
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const double gd = static_cast<double>(g[u].v[k]);
          acc[0] += gd;
          acc[1] += gd * (static_cast<double>(p[u].v[k]) - mean);
        }
      }
  }
  fblock_sum<2>(acc, scratch);
  cluster_sum<2>(acc, slot);
  const double sdy = acc[0], sdyx = acc[1];
  const double invstd = static_cast<double>(invstd_p[c]);
  const double wc = w ? static_cast<double>(w[c]) : 1.0;
  const double gw = invstd * sdyx;
  const double M = static_cast<double>(N * Sv * VEC);
  if (rank == 0 && threadIdx.x == 0) {
    if (dw) dw[c] = static_cast<T>(gw);
    if (db) db[c] = static_cast<T>(sdy);
  }
  T mh, ml;
  split(mean, mh, ml);
  const T A = static_cast<T>(wc * invstd);
  const T Bc = static_cast<T>(-wc * invstd * invstd * gw / M);
  const T K = static_cast<T>(-wc * invstd * sdy / M);
  for (uint32_t i = threadIdx.x; op != nullptr && i < sl.len; i += kFBlock) {
    const P p = bx[i];
    const P g = bg[i];
    P q;
#pragma unroll
    for (int k = 0; k < VEC; ++k) q.v[k] = A * g.v[k] + Bc * ((p.v[k] - mh) - ml) + K;
    op[sl.at(i)] = q;
  }
  cl_sync();  // peers may still be reading slot
}

// ---------------------------------------------------------------- host side

int sm_count() {
  int dev = 0, n = 0;
  PYDL_CUDA_CHECK(cudaGetDevice(&dev));
  PYDL_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n > 0 ? n : 1;
}

// Slices per channel: enough blocks to fill the GPU a few times over, but at least one
// full chunk (kUnroll * kBlock packs) per block.
int slices_for(int64_t N, int64_t C, int64_t Sv) {
  const int64_t Mv = N * Sv;
  const int64_t want = (4LL * sm_count() + C - 1) / C;
  const int64_t most = (Mv + kUnroll * kBlock - 1) / (kUnroll * kBlock);
  int64_t g = want < most ? want : most;
  if (g > kMaxSlices) g = kMaxSlices;
  return static_cast<int>(g < 1 ? 1 : g);
}


int smem_optin() {
  static int v = -1;
  if (v < 0) {
    int dev = 0;
    PYDL_CUDA_CHECK(cudaGetDevice(&dev));
    PYDL_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  }
  return v;
}

// Cluster size K for the fused kernels (0: the channel does not fit), with L packs per
// block; per_pack = bytes of shared memory per pack (sizeof(P) times the tensors held).
// Prefers slices of at most half the shared memory (two blocks per SM), then more blocks
// while the grid would not fill the GPU.
// Thread block clusters: compute capability 9.0 and up.
bool fused_ok() {
  static int v = -1;
  if (v < 0) {
    int dev = 0, major = 0;
    PYDL_CUDA_CHECK(cudaGetDevice(&dev));
    PYDL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    v = major >= 9 ? 1 : 0;
  }
  return v == 1;
}

int fused_cluster(int64_t N, int64_t C, int64_t Sv, int64_t per_pack, uint32_t& L,
                  int max_k = kMaxCluster) {
  const int64_t Mv = N * Sv;
  if (!fused_ok() || Mv <= 0 || Mv >= (1LL << 31)) return 0;
  const int64_t budget = smem_optin() - 1024;  // static shared memory and the reserve
  auto fits = [&](int K, int64_t lim) { return (Mv + K - 1) / K * per_pack <= lim; };
  int K = 0;
  for (int k = 1; k <= max_k && K == 0; k *= 2)
    if (fits(k, budget / 2)) K = k;
  for (int k = 1; k <= max_k && k <= kPortableCluster && K == 0; k *= 2)
    if (fits(k, budget)) K = k;
  if (K == 0) return 0;
  while (K < kPortableCluster && K < max_k && C * K < sm_count() &&
         (Mv + 2 * K - 1) / (2 * K) >= kFBlock)
    K *= 2;
  L = static_cast<uint32_t>((Mv + K - 1) / K);
  return K;
}

// Launches kernel with clusters of K blocks (one cluster per channel) and smem bytes of
// dynamic shared memory; false (nothing launched) where the GPU cannot run such clusters.
template <typename... KArgs, typename... Args>
bool launch_fused(void (*kernel)(KArgs...), int64_t C, int K, size_t smem, cudaStream_t stream,
                  Args... args) {
  PYDL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  if (K > kPortableCluster &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (C * K > INT32_MAX) return false;  // past the grid's x limit: the unfused kernels take it
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned int>(C * K));
  cfg.blockDim = dim3(kFBlock);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = K;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess || clusters < 1) {
    (void)cudaGetLastError();  // clear the sticky-free error of the query
    return false;
  }
  PYDL_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
  return true;
}

unsigned int apply_grid(int64_t total) {
  int64_t g = (total + kApplyU * kBlock - 1) / (kApplyU * kBlock);
  return static_cast<unsigned int>(g < 1 ? 1 : g);
}

// The elementwise pass over all packs, 32-bit index math where it fits.
template <typename T, int VEC>
void launch_apply_fwd(dptr x, dptr y, const T* params, int64_t total, int64_t Sv, int64_t C,
                      cudaStream_t stream) {
  if (total + kApplyU * kBlock < (1LL << 32))
    apply_fwd_kernel<T, VEC, uint32_t><<<apply_grid(total), kBlock, 0, stream>>>(
        as_ptr<const T>(x), as_ptr<T>(y), params, static_cast<uint32_t>(total),
        static_cast<uint32_t>(Sv), static_cast<uint32_t>(C));
  else
    apply_fwd_kernel<T, VEC, int64_t><<<apply_grid(total), kBlock, 0, stream>>>(
        as_ptr<const T>(x), as_ptr<T>(y), params, total, Sv, C);
  PYDL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void launch_apply_bwd(dptr dy, dptr x, dptr dx, const T* params, int64_t total, int64_t Sv,
                      int64_t C, cudaStream_t stream) {
  if (total + kApplyU * kBlock < (1LL << 32))
    apply_bwd_kernel<T, VEC, uint32_t><<<apply_grid(total), kBlock, 0, stream>>>(
        as_ptr<const T>(dy), as_ptr<const T>(x), as_ptr<T>(dx), params,
        static_cast<uint32_t>(total), static_cast<uint32_t>(Sv), static_cast<uint32_t>(C));
  else
    apply_bwd_kernel<T, VEC, int64_t><<<apply_grid(total), kBlock, 0, stream>>>(
        as_ptr<const T>(dy), as_ptr<const T>(x), as_ptr<T>(dx), params, total, Sv, C);
  PYDL_LAUNCH_CHECK();
}

unsigned int channel_grid(int64_t C) {
  int64_t g = (C + kBlock - 1) / kBlock;
  if (g > 65535) g = 65535;
  return static_cast<unsigned int>(g < 1 ? 1 : g);
}

bool aligned16(dptr p) { return p % 16 == 0; }

int64_t workspace_len(int64_t C) {
  // partials (3 doubles per slice per channel) + per-channel coefficients (kParams T <= double)
  return C * (3LL * kMaxSlices + kParams);
}

template <typename T>
void check_ws(dptr ws, int64_t ws_len, int64_t C) {
  PYDL_CHECK(ws != 0 && ws_len >= workspace_len(C),
             "workspace: expected " << workspace_len(C) << " doubles, got " << ws_len);
  PYDL_CHECK(aligned16(ws), "workspace: expected 16-byte alignment");
}

template <typename T>
void forward_train(dptr x, dptr w, dptr b, dptr rm, dptr rv, dptr y, dptr sm, dptr si, dptr ws,
                   int64_t ws_len, int64_t N, int64_t C, int64_t S, double momentum, double eps,
                   dptr stream_) {
  if (C == 0) return;
  check_ws<T>(ws, ws_len, C);
  PYDL_CHECK((rm == 0) == (rv == 0), "running_mean and running_var: both or neither");
  cudaStream_t stream = as_stream(stream_);
  constexpr int V = 16 / sizeof(T);
  const bool vec = S % V == 0 && aligned16(x) && aligned16(y);
  const int64_t Sv = vec ? S / V : S;
  double* part = as_ptr<double>(ws);
  T* params = reinterpret_cast<T*>(part + 3LL * kMaxSlices * C);
  if (S > 1 && N * S > 0 && C < (1LL << 28)) {
    uint32_t L = 0;
    const int K = fused_cluster(N, C, Sv, vec ? 16 : static_cast<int64_t>(sizeof(T)), L);
    const size_t smem = static_cast<size_t>(L) * (vec ? 16 : sizeof(T));
    bool done = false;
    if (K > 0 && vec)
      done = launch_fused(fused_train_fwd_kernel<T, V>, C, K, smem, stream, as_ptr<const T>(x),
                          as_ptr<const T>(w), as_ptr<const T>(b), as_ptr<T>(rm), as_ptr<T>(rv),
                          as_ptr<T>(y), as_ptr<T>(sm), as_ptr<T>(si), N, C, Sv, L, momentum, eps);
    else if (K > 0)
      done = launch_fused(fused_train_fwd_kernel<T, 1>, C, K, smem, stream, as_ptr<const T>(x),
                          as_ptr<const T>(w), as_ptr<const T>(b), as_ptr<T>(rm), as_ptr<T>(rv),
                          as_ptr<T>(y), as_ptr<T>(sm), as_ptr<T>(si), N, C, Sv, L, momentum, eps);
    if (!done && K > kPortableCluster) {  // non-portable clusters refused: portable ones
      const int K8 = fused_cluster(N, C, Sv, vec ? 16 : static_cast<int64_t>(sizeof(T)), L,
                                   kPortableCluster);
      const size_t smem8 = static_cast<size_t>(L) * (vec ? 16 : sizeof(T));
      if (K8 > 0 && vec)
        done = launch_fused(fused_train_fwd_kernel<T, V>, C, K8, smem8, stream, as_ptr<const T>(x),
                            as_ptr<const T>(w), as_ptr<const T>(b), as_ptr<T>(rm), as_ptr<T>(rv),
                            as_ptr<T>(y), as_ptr<T>(sm), as_ptr<T>(si), N, C, Sv, L, momentum, eps);
      else if (K8 > 0)
        done = launch_fused(fused_train_fwd_kernel<T, 1>, C, K8, smem8, stream, as_ptr<const T>(x),
                            as_ptr<const T>(w), as_ptr<const T>(b), as_ptr<T>(rm), as_ptr<T>(rv),
                            as_ptr<T>(y), as_ptr<T>(sm), as_ptr<T>(si), N, C, Sv, L, momentum, eps);
    }
    if (done) return;
  }
  int G = 0;
  if (N * S > 0) {
    if (S == 1) {
      G = 1;
      stats_rows_kernel<T><<<channel_grid(C), kBlock, 0, stream>>>(as_ptr<const T>(x), N, C, part);
      PYDL_LAUNCH_CHECK();
    } else {
      G = slices_for(N, C, Sv);
      const dim3 grid(G, static_cast<unsigned int>(C < 65535 ? C : 65535));
      if (vec)
        stats_kernel<T, V><<<grid, kBlock, 0, stream>>>(as_ptr<const T>(x), N, C, S, G, part);
      else
        stats_kernel<T, 1><<<grid, kBlock, 0, stream>>>(as_ptr<const T>(x), N, C, S, G, part);
      PYDL_LAUNCH_CHECK();
    }
  }
  finalize_train_kernel<T><<<channel_grid(C), kBlock, 0, stream>>>(
      part, G, C, as_ptr<const T>(w), as_ptr<const T>(b), as_ptr<T>(rm), as_ptr<T>(rv),
      as_ptr<T>(sm), as_ptr<T>(si), params, momentum, eps);
  PYDL_LAUNCH_CHECK();
  const int64_t total = N * C * Sv;
  if (total > 0) {
    if (vec)
      launch_apply_fwd<T, V>(x, y, params, total, Sv, C, stream);
    else
      launch_apply_fwd<T, 1>(x, y, params, total, Sv, C, stream);
  }
}

template <typename T>
void forward_eval(dptr x, dptr w, dptr b, dptr rm, dptr rv, dptr y, dptr sm, dptr si, dptr /*ws*/,
                  int64_t /*ws_len*/, int64_t N, int64_t C, int64_t S, double eps, dptr stream_) {
  if (C == 0) return;
  PYDL_CHECK(rm != 0 && rv != 0, "running_mean, running_var: required in evaluation mode");
  cudaStream_t stream = as_stream(stream_);
  constexpr int V = 16 / sizeof(T);
  const bool vec = S % V == 0 && aligned16(x) && aligned16(y);
  const int64_t Sv = vec ? S / V : S;
  const int64_t total = N * C * Sv;
  // One launch; enough blocks for the packs, and at least enough for the channels' saves.
  int64_t g = (total + kApplyU * kBlock - 1) / (kApplyU * kBlock);
  const int64_t gc = (C + kBlock - 1) / kBlock;
  if (g < gc) g = gc < 65535 ? gc : 65535;
  const unsigned int grid = static_cast<unsigned int>(g < 1 ? 1 : g);
  const T *xp = as_ptr<const T>(x), *wp = as_ptr<const T>(w), *bp = as_ptr<const T>(b),
          *rmp = as_ptr<const T>(rm), *rvp = as_ptr<const T>(rv);
  T *yp = as_ptr<T>(y), *smp = as_ptr<T>(sm), *sip = as_ptr<T>(si);
  if (total + kApplyU * kBlock < (1LL << 32)) {
    const uint32_t t = static_cast<uint32_t>(total), sv = static_cast<uint32_t>(Sv),
                   c = static_cast<uint32_t>(C);
    if (vec)
      eval_fwd_kernel<T, V, uint32_t><<<grid, kBlock, 0, stream>>>(xp, yp, wp, bp, rmp, rvp, smp, sip, t, sv, c, eps);
    else
      eval_fwd_kernel<T, 1, uint32_t><<<grid, kBlock, 0, stream>>>(xp, yp, wp, bp, rmp, rvp, smp, sip, t, sv, c, eps);
  } else {
    if (vec)
      eval_fwd_kernel<T, V, int64_t><<<grid, kBlock, 0, stream>>>(xp, yp, wp, bp, rmp, rvp, smp, sip, total, Sv, C, eps);
    else
      eval_fwd_kernel<T, 1, int64_t><<<grid, kBlock, 0, stream>>>(xp, yp, wp, bp, rmp, rvp, smp, sip, total, Sv, C, eps);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void backward(dptr dy, dptr x, dptr w, dptr sm, dptr si, dptr dx, dptr dw, dptr db, dptr ws,
              int64_t ws_len, int64_t N, int64_t C, int64_t S, bool training, dptr stream_) {
  if (C == 0) return;
  check_ws<T>(ws, ws_len, C);
  cudaStream_t stream = as_stream(stream_);
  constexpr int V = 16 / sizeof(T);
  const bool vec = S % V == 0 && aligned16(x) && aligned16(dy) && (dx == 0 || aligned16(dx));
  const int64_t Sv = vec ? S / V : S;
  double* part = as_ptr<double>(ws);
  T* params = reinterpret_cast<T*>(part + 3LL * kMaxSlices * C);
  const bool need_sums = (training && dx != 0) || dw != 0 || db != 0;
  // Training: the fused kernel whenever it fits (also for dw / db alone, so that they are
  // bit-identical whatever output_mask asks for).
  if (training && need_sums && S > 1 && N * S > 0 && C < (1LL << 28)) {
    uint32_t L = 0;
    const int64_t pack = vec ? 16 : static_cast<int64_t>(sizeof(T));
    const int K = fused_cluster(N, C, Sv, 2 * pack, L);
    const size_t smem = dx != 0 ? 2 * static_cast<size_t>(L) * pack : 0;
    bool done = false;
    if (K > 0 && vec)
      done = launch_fused(fused_train_bwd_kernel<T, V>, C, K, smem, stream, as_ptr<const T>(dy),
                          as_ptr<const T>(x), as_ptr<const T>(w), as_ptr<const T>(sm),
                          as_ptr<const T>(si), as_ptr<T>(dx), as_ptr<T>(dw), as_ptr<T>(db), N, C,
                          Sv, L);
    else if (K > 0)
      done = launch_fused(fused_train_bwd_kernel<T, 1>, C, K, smem, stream, as_ptr<const T>(dy),
                          as_ptr<const T>(x), as_ptr<const T>(w), as_ptr<const T>(sm),
                          as_ptr<const T>(si), as_ptr<T>(dx), as_ptr<T>(dw), as_ptr<T>(db), N, C,
                          Sv, L);
    if (done) return;
  }
  int G = 0;
  if (need_sums && N * S > 0) {
    if (S == 1) {
      G = 1;
      bwd_sums_rows_kernel<T><<<channel_grid(C), kBlock, 0, stream>>>(
          as_ptr<const T>(dy), as_ptr<const T>(x), as_ptr<const T>(sm), N, C, part);
      PYDL_LAUNCH_CHECK();
    } else {
      G = slices_for(N, C, Sv);
      const dim3 grid(G, static_cast<unsigned int>(C < 65535 ? C : 65535));
      if (vec)
        bwd_sums_kernel<T, V><<<grid, kBlock, 0, stream>>>(
            as_ptr<const T>(dy), as_ptr<const T>(x), as_ptr<const T>(sm), N, C, S, G, part);
      else
        bwd_sums_kernel<T, 1><<<grid, kBlock, 0, stream>>>(
            as_ptr<const T>(dy), as_ptr<const T>(x), as_ptr<const T>(sm), N, C, S, G, part);
      PYDL_LAUNCH_CHECK();
    }
  }
  finalize_bwd_kernel<T><<<channel_grid(C), kBlock, 0, stream>>>(
      part, G, C, N * S, as_ptr<const T>(w), as_ptr<const T>(sm), as_ptr<const T>(si),
      as_ptr<T>(dw), as_ptr<T>(db), params, training);
  PYDL_LAUNCH_CHECK();
  const int64_t total = N * C * Sv;
  if (dx != 0 && total > 0) {
    if (vec)
      launch_apply_bwd<T, V>(dy, x, dx, params, total, Sv, C, stream);
    else
      launch_apply_bwd<T, 1>(dy, x, dx, params, total, Sv, C, stream);
  }
}

}  // namespace

void bind_batch_norm_cuda(py::module_& m) {
  m.def("batch_norm_workspace_len", &workspace_len, py::arg("C"),
        "float64 workspace elements the batch_norm kernels need for C channels.");
  m.def(
      "batch_norm_forward_train",
      [](dptr x, dptr w, dptr b, dptr rm, dptr rv, dptr y, dptr sm, dptr si, dptr ws,
         int64_t ws_len, int64_t N, int64_t C, int64_t S, double momentum, double eps,
         bool is_double, dptr stream) {
        PYDL_CHECK(N >= 0 && C >= 0 && S >= 0, "sizes must be >= 0");
        if (is_double)
          forward_train<double>(x, w, b, rm, rv, y, sm, si, ws, ws_len, N, C, S, momentum, eps, stream);
        else
          forward_train<float>(x, w, b, rm, rv, y, sm, si, ws, ws_len, N, C, S, momentum, eps, stream);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
      py::arg("running_var"), py::arg("y"), py::arg("save_mean"), py::arg("save_invstd"),
      py::arg("workspace"), py::arg("workspace_len"), py::arg("N"), py::arg("C"), py::arg("S"),
      py::arg("momentum"), py::arg("eps"), py::arg("is_double"), py::arg("stream"));
  m.def(
      "batch_norm_forward_eval",
      [](dptr x, dptr w, dptr b, dptr rm, dptr rv, dptr y, dptr sm, dptr si, dptr ws,
         int64_t ws_len, int64_t N, int64_t C, int64_t S, double eps, bool is_double,
         dptr stream) {
        PYDL_CHECK(N >= 0 && C >= 0 && S >= 0, "sizes must be >= 0");
        if (is_double)
          forward_eval<double>(x, w, b, rm, rv, y, sm, si, ws, ws_len, N, C, S, eps, stream);
        else
          forward_eval<float>(x, w, b, rm, rv, y, sm, si, ws, ws_len, N, C, S, eps, stream);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
      py::arg("running_var"), py::arg("y"), py::arg("save_mean"), py::arg("save_invstd"),
      py::arg("workspace"), py::arg("workspace_len"),
      py::arg("N"), py::arg("C"), py::arg("S"), py::arg("eps"), py::arg("is_double"),
      py::arg("stream"));
  m.def(
      "batch_norm_backward",
      [](dptr dy, dptr x, dptr w, dptr sm, dptr si, dptr dx, dptr dw, dptr db, dptr ws,
         int64_t ws_len, int64_t N, int64_t C, int64_t S, bool training, bool is_double,
         dptr stream) {
        PYDL_CHECK(N >= 0 && C >= 0 && S >= 0, "sizes must be >= 0");
        if (is_double)
          backward<double>(dy, x, w, sm, si, dx, dw, db, ws, ws_len, N, C, S, training, stream);
        else
          backward<float>(dy, x, w, sm, si, dx, dw, db, ws, ws_len, N, C, S, training, stream);
      },
      py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("save_mean"),
      py::arg("save_invstd"), py::arg("grad_x"), py::arg("grad_weight"), py::arg("grad_bias"),
      py::arg("workspace"), py::arg("workspace_len"), py::arg("N"), py::arg("C"), py::arg("S"),
      py::arg("training"), py::arg("is_double"), py::arg("stream"));
}

}  // namespace pydl
