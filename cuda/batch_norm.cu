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
// reruns):
//   1. reduce: grid (G slices, C channels), 256 threads. A block reduces one slice of one
//      channel. Statistics: each thread merges chunks of U packs (two-pass in registers,
//      in double) into its (count, mean, m2) with Chan's formula; the block merges
//      threads by a fixed shuffle tree, then warps in order, and writes one partial.
//      Backward: the same shape with plain double sums of dy and dy * (x - mean).
//      For S == 1 ((N, C) input) one thread per channel walks the rows (coalesced).
//   2. finalize: one thread per channel merges its G partials in order g = 0..G-1, writes
//      the per-channel outputs (save_mean, save_invstd, running buffers, dw, db) and the
//      coefficients of the elementwise pass into the workspace.
//   3. apply: grid-stride over all packs; y = ((x - mean_hi) - mean_lo) * scale + shift
//      (mean = mean_hi + mean_lo split in T keeps float32 accuracy for offset data), or
//      dx = A dy + B ((x - mean_hi) - mean_lo) + K.
// 64-bit index math throughout; the channel of a pack is tracked incrementally.
#include <cmath>

#include "common.cuh"

namespace pydl {
namespace {

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

template <typename T>
__global__ void finalize_eval_kernel(int64_t C, const T* __restrict__ w, const T* __restrict__ b,
                                     const T* __restrict__ rm, const T* __restrict__ rv,
                                     T* __restrict__ params, double eps) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double invstd = 1.0 / sqrt(static_cast<double>(rv[c]) + eps);
    T* pc = params + c * kParams;
    split(static_cast<double>(rm[c]), pc[0], pc[1]);
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

// Grid-stride over all N * C * Sv packs; the channel is tracked incrementally.
struct Stride {
  int64_t col, c;           // current pack column and channel
  int64_t dcol, dc, Sv, C;  // grid stride in columns and channels (mod C)
  __device__ Stride(int64_t v, int64_t stride, int64_t Sv_, int64_t C_) : Sv(Sv_), C(C_) {
    const int64_t row = v / Sv;
    col = v - row * Sv;
    c = row % C;
    const int64_t drow = stride / Sv;
    dcol = stride - drow * Sv;
    dc = drow % C;
  }
  __device__ __forceinline__ void step() {
    col += dcol;
    c += dc;
    if (c >= C) c -= C;
    if (col >= Sv) {
      col -= Sv;
      if (++c >= C) c -= C;
    }
  }
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kBlock) apply_fwd_kernel(const T* __restrict__ x,
                                                           T* __restrict__ y,
                                                           const T* __restrict__ params,
                                                           int64_t total, int64_t Sv, int64_t C) {
  using P = Pack<T, VEC>;
  const P* xp = reinterpret_cast<const P*>(x);
  P* yp = reinterpret_cast<P*>(y);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= total) return;
  Stride st(v, stride, Sv, C);
  for (; v < total; v += stride) {
    const T* pc = params + st.c * kParams;
    const T mh = pc[0], ml = pc[1], sc = pc[2], sh = pc[3];
    const P p = xp[v];
    P q;
#pragma unroll
    for (int k = 0; k < VEC; ++k) q.v[k] = ((p.v[k] - mh) - ml) * sc + sh;
    yp[v] = q;
    st.step();
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kBlock) apply_bwd_kernel(const T* __restrict__ dy,
                                                           const T* __restrict__ x,
                                                           T* __restrict__ dx,
                                                           const T* __restrict__ params,
                                                           int64_t total, int64_t Sv, int64_t C) {
  using P = Pack<T, VEC>;
  const P* gp = reinterpret_cast<const P*>(dy);
  const P* xp = reinterpret_cast<const P*>(x);
  P* op = reinterpret_cast<P*>(dx);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= total) return;
  Stride st(v, stride, Sv, C);
  for (; v < total; v += stride) {
    const T* pc = params + st.c * kParams;
    const T mh = pc[0], ml = pc[1], A = pc[2], B = pc[3], K = pc[4];
    const P g = gp[v];
    const P p = xp[v];
    P q;
#pragma unroll
    for (int k = 0; k < VEC; ++k) q.v[k] = A * g.v[k] + B * ((p.v[k] - mh) - ml) + K;
    op[v] = q;
    st.step();
  }
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

unsigned int apply_grid(int64_t total) {
  const int64_t full = 8LL * sm_count();  // 8 blocks of 256 per SM: full occupancy
  int64_t g = (total + kBlock - 1) / kBlock;
  if (g > full) g = full;
  return static_cast<unsigned int>(g < 1 ? 1 : g);
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
      apply_fwd_kernel<T, V><<<apply_grid(total), kBlock, 0, stream>>>(
          as_ptr<const T>(x), as_ptr<T>(y), params, total, Sv, C);
    else
      apply_fwd_kernel<T, 1><<<apply_grid(total), kBlock, 0, stream>>>(
          as_ptr<const T>(x), as_ptr<T>(y), params, total, Sv, C);
    PYDL_LAUNCH_CHECK();
  }
}

template <typename T>
void forward_eval(dptr x, dptr w, dptr b, dptr rm, dptr rv, dptr y, dptr ws, int64_t ws_len,
                  int64_t N, int64_t C, int64_t S, double eps, dptr stream_) {
  if (C == 0) return;
  check_ws<T>(ws, ws_len, C);
  PYDL_CHECK(rm != 0 && rv != 0, "running_mean, running_var: required in evaluation mode");
  cudaStream_t stream = as_stream(stream_);
  constexpr int V = 16 / sizeof(T);
  const bool vec = S % V == 0 && aligned16(x) && aligned16(y);
  const int64_t Sv = vec ? S / V : S;
  T* params = reinterpret_cast<T*>(as_ptr<double>(ws) + 3LL * kMaxSlices * C);
  finalize_eval_kernel<T><<<channel_grid(C), kBlock, 0, stream>>>(
      C, as_ptr<const T>(w), as_ptr<const T>(b), as_ptr<const T>(rm), as_ptr<const T>(rv), params, eps);
  PYDL_LAUNCH_CHECK();
  const int64_t total = N * C * Sv;
  if (total > 0) {
    if (vec)
      apply_fwd_kernel<T, V><<<apply_grid(total), kBlock, 0, stream>>>(
          as_ptr<const T>(x), as_ptr<T>(y), params, total, Sv, C);
    else
      apply_fwd_kernel<T, 1><<<apply_grid(total), kBlock, 0, stream>>>(
          as_ptr<const T>(x), as_ptr<T>(y), params, total, Sv, C);
    PYDL_LAUNCH_CHECK();
  }
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
      apply_bwd_kernel<T, V><<<apply_grid(total), kBlock, 0, stream>>>(
          as_ptr<const T>(dy), as_ptr<const T>(x), as_ptr<T>(dx), params, total, Sv, C);
    else
      apply_bwd_kernel<T, 1><<<apply_grid(total), kBlock, 0, stream>>>(
          as_ptr<const T>(dy), as_ptr<const T>(x), as_ptr<T>(dx), params, total, Sv, C);
    PYDL_LAUNCH_CHECK();
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
      [](dptr x, dptr w, dptr b, dptr rm, dptr rv, dptr y, dptr ws, int64_t ws_len, int64_t N,
         int64_t C, int64_t S, double eps, bool is_double, dptr stream) {
        PYDL_CHECK(N >= 0 && C >= 0 && S >= 0, "sizes must be >= 0");
        if (is_double)
          forward_eval<double>(x, w, b, rm, rv, y, ws, ws_len, N, C, S, eps, stream);
        else
          forward_eval<float>(x, w, b, rm, rv, y, ws, ws_len, N, C, S, eps, stream);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
      py::arg("running_var"), py::arg("y"), py::arg("workspace"), py::arg("workspace_len"),
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
