// batch_norm: CPU kernels (training forward, evaluation forward, backward).
//
// Math, per channel c over its M = N * S values (S = H * W, or 1 for (N, C) input):
//   mean = sum(x) / M,  var = sum((x - mean)^2) / M (biased),  invstd = 1 / sqrt(var + eps)
//   y = (x - mean) * invstd * w + b
//   training also updates rm = (1 - m) rm + m mean, rv = (1 - m) rv + m var M / (M - 1).
// Numerics: two passes (mean, then squared deviations), never E[x^2] - E[x]^2, with the
// sums in double for every dtype (the float32 backward adds float partials of 16 terms per
// lane into its double sums: their rounding stays below float32's, and it needs a quarter of
// the conversions). x - mean is taken in T as (x - mean_hi) - mean_lo with
// mean = mean_hi + mean_lo split into two T values, so that data with a large offset
// (1e4 + unit noise in float32) keeps float32 accuracy in y without double arithmetic.
// Layout: x is (N, C, S) C-contiguous; channel c is N rows of S contiguous values, rows
// C * S apart. Threads: OpenMP over blocks of consecutive channels, scheduled dynamically
// (a preempted thread delays one block, not half of them; results do not depend on the
// thread). A block is sized to stay in cache (~256 KiB), so its passes after the first
// read cache, and is walked sample-major, so memory streams in runs of (channels * S).
// Inner loops are contiguous runs of S, vectorized (omp simd; AVX2/FMA clones picked at
// load time). (N, C) input (S == 1) takes a path whose inner loops run over channels.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"

#if defined(__GNUC__)
#define PYDL_INLINE inline __attribute__((always_inline))
#else
#define PYDL_INLINE inline
#endif

namespace pydl {
namespace {

// Split a double into hi + lo, both representable in T (lo == 0 for double).
template <typename T>
PYDL_INLINE void split(double v, T& hi, T& lo) {
  hi = static_cast<T>(v);
  lo = static_cast<T>(v - static_cast<double>(hi));
}

// ---------------------------------------------------------------- channel blocks (S > 1)
// A block is cb consecutive channels; x points at channel c0 of sample 0, samples are
// `stride` = C * S apart. Loops run sample-major (n, then channel, then s), so memory is
// read in contiguous runs of cb * S values (long streams for the prefetcher even when S
// is small); the block is sized to stay in cache between its passes.

// Sums run in kLanes independent double accumulators (several vector registers, so the
// adds pipeline instead of waiting on one dependency chain), combined in a fixed order.
constexpr int kLanes = 16;
constexpr int64_t kChunk = 16 * kLanes;

template <typename T>
PYDL_INLINE double lanes_sum(const double* r) {
  double t = 0.0;
  for (int j = 0; j < kLanes; ++j) t += r[j];
  return t;
}

// mean[j] and m2[j] = sum((x - mean)^2) of channels c0 + j, j < cb. acc: cb * kLanes doubles.
template <typename T>
PYDL_INLINE void block_stats_impl(const T* x, int64_t N, int64_t stride, int64_t S, int64_t cb,
                                  double* mean, double* m2, double* acc) {
  for (int64_t i = 0; i < cb * kLanes; ++i) acc[i] = 0.0;
  for (int64_t j = 0; j < cb; ++j) mean[j] = 0.0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < cb; ++j) {
      const T* p = x + n * stride + j * S;
      double r[kLanes];
      for (int l = 0; l < kLanes; ++l) r[l] = acc[j * kLanes + l];
      int64_t s = 0;
      for (; s + kLanes <= S; s += kLanes)
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) r[l] += static_cast<double>(p[s + l]);
      double t = mean[j];
      for (; s < S; ++s) t += static_cast<double>(p[s]);
      mean[j] = t;
      for (int l = 0; l < kLanes; ++l) acc[j * kLanes + l] = r[l];
    }
  const double M = static_cast<double>(N * S);
  for (int64_t j = 0; j < cb; ++j) mean[j] = (mean[j] + lanes_sum<T>(acc + j * kLanes)) / M;
  for (int64_t i = 0; i < cb * kLanes; ++i) acc[i] = 0.0;
  for (int64_t j = 0; j < cb; ++j) m2[j] = 0.0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < cb; ++j) {
      const T* p = x + n * stride + j * S;
      const double mu = mean[j];
      double r[kLanes];
      for (int l = 0; l < kLanes; ++l) r[l] = acc[j * kLanes + l];
      int64_t s = 0;
      for (; s + kLanes <= S; s += kLanes)
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) {
          const double d = static_cast<double>(p[s + l]) - mu;
          r[l] += d * d;
        }
      double t = m2[j];
      for (; s < S; ++s) {
        const double d = static_cast<double>(p[s]) - mu;
        t += d * d;
      }
      m2[j] = t;
      for (int l = 0; l < kLanes; ++l) acc[j * kLanes + l] = r[l];
    }
  for (int64_t j = 0; j < cb; ++j) m2[j] += lanes_sum<T>(acc + j * kLanes);
}

// y = ((x - mean_hi) - mean_lo) * scale + shift, in T; par = {mh, ml, scale, shift} per channel.
template <typename T>
PYDL_INLINE void block_apply_impl(const T* x, T* y, int64_t N, int64_t stride, int64_t S,
                                  int64_t cb, const T* par) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < cb; ++j) {
      const T* p = x + n * stride + j * S;
      T* q = y + n * stride + j * S;
      const T mh = par[4 * j], ml = par[4 * j + 1], sc = par[4 * j + 2], sh = par[4 * j + 3];
#pragma omp simd
      for (int64_t s = 0; s < S; ++s) q[s] = ((p[s] - mh) - ml) * sc + sh;
    }
}

// Flat elements [e0, e1) of (N * C) planes of S, plane p in channel p % C, into out[0, e1 - e0):
// evaluation needs no statistics, so it streams through memory in order.
template <typename T>
PYDL_INLINE void range_apply_impl(const T* x, T* out, int64_t e0, int64_t e1, int64_t C, int64_t S,
                                  const T* par) {
  for (int64_t e = e0; e < e1;) {
    const int64_t pl = e / S, n = std::min((pl + 1) * S, e1) - e;
    const T* p = x + e;
    T* q = out + (e - e0);
    const T* pc = par + 4 * (pl % C);
    const T mh = pc[0], ml = pc[1], sc = pc[2], sh = pc[3];
#pragma omp simd
    for (int64_t s = 0; s < n; ++s) q[s] = ((p[s] - mh) - ml) * sc + sh;
    e += n;
  }
}

// sdy[j] = sum(dy), sdyx[j] = sum(dy * (x - mean)) in double. acc: 2 * cb * kLanes doubles.
template <typename T>
PYDL_INLINE void block_bwd_sums_impl(const T* dy, const T* x, int64_t N, int64_t stride,
                                     int64_t S, int64_t cb, const double* mean, double* sdy,
                                     double* sdyx, double* acc) {
  for (int64_t i = 0; i < 2 * cb * kLanes; ++i) acc[i] = 0.0;
  for (int64_t j = 0; j < cb; ++j) sdy[j] = sdyx[j] = 0.0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < cb; ++j) {
      const T* g = dy + n * stride + j * S;
      const T* p = x + n * stride + j * S;
      const double mu = mean[j];
      double a[kLanes], b[kLanes];
      for (int l = 0; l < kLanes; ++l) {
        a[l] = acc[2 * j * kLanes + l];
        b[l] = acc[(2 * j + 1) * kLanes + l];
      }
      int64_t s = 0;
      if (std::is_same<T, float>::value) {
        // float32: products and short partial sums (kChunk / kLanes terms per lane) in float,
        // each partial added to the double lanes: a quarter of the conversions (they bound
        // this loop once x and dy are in cache), and a partial's rounding (~1e-7 of its
        // terms) stays below float32's own.
        T mh, ml;
        split(mu, mh, ml);
        for (int64_t e; S - s >= kLanes; s = e) {
          e = s + std::min<int64_t>(kChunk, (S - s) / kLanes * kLanes);
          T fa[kLanes], fb[kLanes];
          for (int l = 0; l < kLanes; ++l) fa[l] = fb[l] = T(0);
          for (int64_t k = s; k < e; k += kLanes)
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) {
              const T gd = g[k + l];
              fa[l] += gd;
              fb[l] += gd * ((p[k + l] - mh) - ml);
            }
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) {
            a[l] += static_cast<double>(fa[l]);
            b[l] += static_cast<double>(fb[l]);
          }
        }
      }
      for (; s + kLanes <= S; s += kLanes)
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) {
          const double gd = static_cast<double>(g[s + l]);
          a[l] += gd;
          b[l] += gd * (static_cast<double>(p[s + l]) - mu);
        }
      double ta = sdy[j], tb = sdyx[j];
      for (; s < S; ++s) {
        const double gd = static_cast<double>(g[s]);
        ta += gd;
        tb += gd * (static_cast<double>(p[s]) - mu);
      }
      sdy[j] = ta;
      sdyx[j] = tb;
      for (int l = 0; l < kLanes; ++l) {
        acc[2 * j * kLanes + l] = a[l];
        acc[(2 * j + 1) * kLanes + l] = b[l];
      }
    }
  for (int64_t j = 0; j < cb; ++j) {
    sdy[j] += lanes_sum<T>(acc + 2 * j * kLanes);
    sdyx[j] += lanes_sum<T>(acc + (2 * j + 1) * kLanes);
  }
}

// dx = A * dy + B * ((x - mean_hi) - mean_lo) + K, in T; par = {mh, ml, A, B, K} per channel.
template <typename T>
PYDL_INLINE void block_bwd_apply_impl(const T* dy, const T* x, T* dx, int64_t N, int64_t stride,
                                      int64_t S, int64_t cb, const T* par) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < cb; ++j) {
      const T* g = dy + n * stride + j * S;
      const T* p = x + n * stride + j * S;
      T* q = dx + n * stride + j * S;
      const T mh = par[5 * j], ml = par[5 * j + 1], A = par[5 * j + 2], B = par[5 * j + 3],
              K = par[5 * j + 4];
#pragma omp simd
      for (int64_t s = 0; s < S; ++s) q[s] = A * g[s] + B * ((p[s] - mh) - ml) + K;
    }
}

// Flat elements [e0, e1) as range_apply_impl, as block_bwd_apply_impl: once every channel's
// coefficients are known, dx streams through memory in order.
template <typename T>
PYDL_INLINE void range_bwd_apply_impl(const T* dy, const T* x, T* out, int64_t e0, int64_t e1,
                                      int64_t C, int64_t S, const T* par) {
  for (int64_t e = e0; e < e1;) {
    const int64_t pl = e / S, n = std::min((pl + 1) * S, e1) - e;
    const T* g = dy + e;
    const T* p = x + e;
    T* q = out + (e - e0);
    const T* pc = par + 5 * (pl % C);
    const T mh = pc[0], ml = pc[1], A = pc[2], B = pc[3], K = pc[4];
#pragma omp simd
    for (int64_t s = 0; s < n; ++s) q[s] = A * g[s] + B * ((p[s] - mh) - ml) + K;
    e += n;
  }
}

// The block kernels, each in its AVX2/FMA and baseline variants (common.h); the OpenMP loops
// stay in the callers.
#define PYDL_BN_TPL template <typename T>
PYDL_SIMD_DISPATCH(PYDL_BN_TPL, <T>, void, block_stats,
                   (const T* x, int64_t N, int64_t st, int64_t S, int64_t cb, double* mean, double* m2, double* acc),
                   (x, N, st, S, cb, mean, m2, acc))
PYDL_SIMD_DISPATCH(PYDL_BN_TPL, <T>, void, block_apply,
                   (const T* x, T* y, int64_t N, int64_t st, int64_t S, int64_t cb, const T* par),
                   (x, y, N, st, S, cb, par))
PYDL_SIMD_DISPATCH(PYDL_BN_TPL, <T>, void, range_apply,
                   (const T* x, T* out, int64_t e0, int64_t e1, int64_t C, int64_t S, const T* par),
                   (x, out, e0, e1, C, S, par))
PYDL_SIMD_DISPATCH(PYDL_BN_TPL, <T>, void, block_bwd_sums,
                   (const T* dy, const T* x, int64_t N, int64_t st, int64_t S, int64_t cb, const double* mean,
                    double* sdy, double* sdyx, double* acc),
                   (dy, x, N, st, S, cb, mean, sdy, sdyx, acc))
PYDL_SIMD_DISPATCH(PYDL_BN_TPL, <T>, void, range_bwd_apply,
                   (const T* dy, const T* x, T* out, int64_t e0, int64_t e1, int64_t C, int64_t S, const T* par),
                   (dy, x, out, e0, e1, C, S, par))
PYDL_SIMD_DISPATCH(PYDL_BN_TPL, <T>, void, block_bwd_apply,
                   (const T* dy, const T* x, T* dx, int64_t N, int64_t st, int64_t S, int64_t cb, const T* par),
                   (dy, x, dx, N, st, S, cb, par))
#undef PYDL_BN_TPL

// Channels per block: as many as fit kCacheBytes of streamed input (bytes_per_channel),
// but at least 8 blocks when C allows, so that the threads balance.
constexpr int64_t kCacheBytes = 256 * 1024;
inline int64_t block_channels(int64_t C, int64_t bytes_per_channel) {
  int64_t cb = bytes_per_channel > 0 ? kCacheBytes / bytes_per_channel : C;
  const int64_t most = C / 8 > 1 ? C / 8 : 1;
  if (cb > most) cb = most;
  return cb < 1 ? 1 : cb;
}

// ---------------------------------------------------------------- drivers

constexpr int64_t kStreamBytes = int64_t(24) << 20;
constexpr int64_t kLongRunBytes = int64_t(8) << 10;
// Tests force each apply of the backward (1 stream, 2 block_stream, 3 block; 0 = the rule),
// since the rule depends on the host's last-level cache.
std::atomic<int> g_bn_backward_apply{0};

// Writes dst[e0, e1) through apply(b, e, out) (which fills out[0, e - b) with elements [b, e)):
// straight into dst, or, with `stream`, a chunk at a time into an L1 buffer that goes out with
// non-temporal stores, so that the output neither reads its lines first nor evicts the inputs.
template <typename T, typename F>
void write_range(T* dst, int64_t e0, int64_t e1, bool stream, F&& apply, bool fence = true) {
  if (!stream) {
    apply(e0, e1, dst + e0);
    return;
  }
  constexpr int64_t kChunk = (int64_t(16) << 10) / static_cast<int64_t>(sizeof(T));
  alignas(64) T buf[kChunk];
  for (int64_t e = e0; e < e1;) {
    int64_t n = std::min(kChunk, e1 - e);
    // Chunks end on dst's 64-byte boundaries: no cache line is split between two copies.
    if (e + n < e1)
      n -= static_cast<int64_t>((reinterpret_cast<uintptr_t>(dst + e + n) & 63) / sizeof(T));
    apply(e, e + n, buf);
    stream_copy(dst + e, buf, static_cast<size_t>(n) * sizeof(T), false);
    e += n;
  }
  if (fence) stream_fence();
}

struct Dims {
  int64_t N, C, S;
};

// Per-channel work items: parallel over channels when there are enough of them.
inline bool parallel_worth(const Dims& d) { return d.C > 1 && d.N * d.C * d.S >= 32768; }

// Channel blocks for the S == 1 path: inner loops run over channels of one row.
constexpr int64_t kBlock = 256;

template <typename T>
void forward_train(const T* x, const T* w, const T* b, T* rm, T* rv, T* y, T* save_mean,
                   T* save_invstd, Dims d, double momentum, double eps) {
  const int64_t N = d.N, C = d.C, S = d.S, M = N * S;
  auto finish = [&](int64_t c, double mean, double m2) -> double {
    // Called once per channel with its stats: invstd, running buffers, saved stats.
    const double var = M > 0 ? m2 / static_cast<double>(M) : 0.0;
    const double invstd = M > 0 ? 1.0 / std::sqrt(var + eps) : 0.0;
    save_mean[c] = static_cast<T>(mean);
    save_invstd[c] = static_cast<T>(invstd);
    if (rm != nullptr && M > 1) {
      const double unbiased = m2 / static_cast<double>(M - 1);
      rm[c] = static_cast<T>((1.0 - momentum) * static_cast<double>(rm[c]) + momentum * mean);
      rv[c] = static_cast<T>((1.0 - momentum) * static_cast<double>(rv[c]) + momentum * unbiased);
    }
    return invstd;  // in double, not the rounded save_invstd
  };
  if (S == 1) {
#pragma omp parallel for schedule(dynamic, 1) if (parallel_worth(d) && C > kBlock)
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      const int64_t nc = std::min(kBlock, C - c0);
      double sum[kBlock], m2[kBlock];
      T mh[kBlock], ml[kBlock], sc[kBlock], sh[kBlock];
      for (int64_t j = 0; j < nc; ++j) sum[j] = m2[j] = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + n * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < nc; ++j) sum[j] += static_cast<double>(p[j]);
      }
      for (int64_t j = 0; j < nc; ++j) sum[j] = M > 0 ? sum[j] / static_cast<double>(M) : 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + n * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < nc; ++j) {
          const double dv = static_cast<double>(p[j]) - sum[j];
          m2[j] += dv * dv;
        }
      }
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t c = c0 + j;
        const double invstd = finish(c, sum[j], m2[j]);
        const double scale = (w ? static_cast<double>(w[c]) : 1.0) * invstd;
        split(sum[j], mh[j], ml[j]);
        sc[j] = static_cast<T>(scale);
        sh[j] = b ? b[c] : T(0);
      }
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + n * C + c0;
        T* q = y + n * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < nc; ++j) q[j] = ((p[j] - mh[j]) - ml[j]) * sc[j] + sh[j];
      }
    }
    return;
  }
  const int64_t cb = block_channels(C, N * S * static_cast<int64_t>(sizeof(T)));
  const int64_t nblocks = (C + cb - 1) / cb;
#pragma omp parallel if (parallel_worth(d))
  {
    std::vector<double> scratch(static_cast<size_t>(cb) * (kLanes + 2));
    std::vector<T> par(static_cast<size_t>(cb) * 4);
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t c0 = blk * cb, nc = std::min(cb, C - c0);
      double* mean = scratch.data();
      double* m2 = mean + cb;
      double* acc = m2 + cb;
      if (M > 0) {
        block_stats(x + c0 * S, N, C * S, S, nc, mean, m2, acc);
      } else {
        for (int64_t j = 0; j < nc; ++j) mean[j] = m2[j] = 0.0;
      }
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t c = c0 + j;
        const double invstd = finish(c, mean[j], m2[j]);
        split(mean[j], par[4 * j], par[4 * j + 1]);
        par[4 * j + 2] = static_cast<T>((w ? static_cast<double>(w[c]) : 1.0) * invstd);
        par[4 * j + 3] = b ? b[c] : T(0);
      }
      if (M > 0) block_apply(x + c0 * S, y + c0 * S, N, C * S, S, nc, par.data());
    }
  }
}

template <typename T>
void forward_eval(const T* x, const T* w, const T* b, const T* rm, const T* rv, T* y, Dims d,
                  double eps) {
  const int64_t N = d.N, C = d.C, S = d.S;
  auto params = [&](int64_t c, T& mh, T& ml, T& scale, T& shift) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(rv[c]) + eps);
    split(static_cast<double>(rm[c]), mh, ml);
    scale = static_cast<T>((w ? static_cast<double>(w[c]) : 1.0) * invstd);
    shift = b ? b[c] : T(0);
  };
  if (S == 1) {
#pragma omp parallel for schedule(dynamic, 1) if (parallel_worth(d) && C > kBlock)
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      const int64_t nc = std::min(kBlock, C - c0);
      T mh[kBlock], ml[kBlock], sc[kBlock], sh[kBlock];
      for (int64_t j = 0; j < nc; ++j) params(c0 + j, mh[j], ml[j], sc[j], sh[j]);
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + n * C + c0;
        T* q = y + n * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < nc; ++j) q[j] = ((p[j] - mh[j]) - ml[j]) * sc[j] + sh[j];
      }
    }
    return;
  }
  std::vector<T> par(static_cast<size_t>(C) * 4);
  for (int64_t c = 0; c < C; ++c) params(c, par[4 * c], par[4 * c + 1], par[4 * c + 2], par[4 * c + 3]);
  const int64_t planes = N * C;
#pragma omp parallel if (parallel_worth(d))
  {
    // One contiguous run of planes per thread: x and y stream in order.
    const int64_t nt = team_size(), t = thread_id();
    const int64_t e0 = planes * t / nt * S, e1 = planes * (t + 1) / nt * S;
    range_apply(x, y + e0, e0, e1, C, S, par.data());
  }
}

// Backward. With xhat = (x - mean) * invstd, y = w * xhat + b, M values per channel:
//   db = sum(dy),  dw = sum(dy * xhat) = invstd * sum(dy * (x - mean)).
// Evaluation (mean, invstd are constants): dx = dy * w * invstd.
// Training: mean and invstd depend on x; d mean / dx_i = 1/M and
//   d invstd / dx_i = -invstd^3 (x_i - mean) / M, so
//   dx = invstd * w / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))
//      = A * dy + B * (x - mean) + K  with  A = w * invstd,
//        B = -w * invstd^2 * dw / M,  K = -w * invstd * db / M.
// One reduction pass (both sums) and one apply pass per channel.
template <typename T>
void backward(const T* dy, const T* x, const T* w, const T* mean_p, const T* invstd_p, T* dx,
              T* dw, T* db, Dims d, bool training) {
  const int64_t N = d.N, C = d.C, S = d.S, M = N * S;
  const bool need_sums = training || dw != nullptr || db != nullptr;
  auto coeffs = [&](int64_t c, double sdy, double sdyx, T& A, T& B, T& K) {
    const double invstd = static_cast<double>(invstd_p[c]);
    const double wc = w ? static_cast<double>(w[c]) : 1.0;
    const double gw = invstd * sdyx;
    if (dw) dw[c] = static_cast<T>(gw);
    if (db) db[c] = static_cast<T>(sdy);
    A = static_cast<T>(wc * invstd);
    if (training && M > 0) {
      B = static_cast<T>(-wc * invstd * invstd * gw / static_cast<double>(M));
      K = static_cast<T>(-wc * invstd * sdy / static_cast<double>(M));
    } else {
      B = T(0);
      K = T(0);
    }
  };
  if (S == 1) {
#pragma omp parallel for schedule(dynamic, 1) if (parallel_worth(d) && C > kBlock)
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      const int64_t nc = std::min(kBlock, C - c0);
      double sa[kBlock], sb[kBlock], mean[kBlock];
      T mh[kBlock], ml[kBlock], A[kBlock], B[kBlock], K[kBlock];
      for (int64_t j = 0; j < nc; ++j) {
        sa[j] = sb[j] = 0.0;
        mean[j] = static_cast<double>(mean_p[c0 + j]);
      }
      if (need_sums) {
        for (int64_t n = 0; n < N; ++n) {
          const T* g = dy + n * C + c0;
          const T* p = x + n * C + c0;
#pragma omp simd
          for (int64_t j = 0; j < nc; ++j) {
            const double gd = static_cast<double>(g[j]);
            sa[j] += gd;
            sb[j] += gd * (static_cast<double>(p[j]) - mean[j]);
          }
        }
      }
      for (int64_t j = 0; j < nc; ++j) {
        coeffs(c0 + j, sa[j], sb[j], A[j], B[j], K[j]);
        split(mean[j], mh[j], ml[j]);
      }
      if (dx) {
        for (int64_t n = 0; n < N; ++n) {
          const T* g = dy + n * C + c0;
          const T* p = x + n * C + c0;
          T* q = dx + n * C + c0;
#pragma omp simd
          for (int64_t j = 0; j < nc; ++j)
            q[j] = A[j] * g[j] + B[j] * ((p[j] - mh[j]) - ml[j]) + K[j];
        }
      }
    }
    return;
  }
  const int64_t cb = block_channels(C, 2 * N * S * static_cast<int64_t>(sizeof(T)));
  const int64_t nblocks = (C + cb - 1) / cb;
  const int64_t bytes3 = 3 * N * C * S * static_cast<int64_t>(sizeof(T));
  // The apply of dx, one of three (g_bn_backward_apply forces one; 0 = this rule):
  //  block_stream: x, dy and dx past the last-level cache with long runs per sample (a block's
  //    cb * S values): block by block with non-temporal dx, so the apply rereads x and dy from
  //    L2 and dx neither reads its lines nor evicts them (short runs lose that way).
  //  stream: up to kStreamBytes: all channels' sums first, then dx in memory order (long
  //    streams), with non-temporal dx past the last-level cache.
  //  block: larger ones block by block, each block's apply rereading x and dy from L2.
  const bool past_cache = bytes3 > last_level_cache_bytes();
  const int forced = g_bn_backward_apply.load();
  const bool block_stream =
      dx != nullptr && (forced ? forced == 2
                               : past_cache && cb * S * static_cast<int64_t>(sizeof(T)) >= kLongRunBytes);
  const bool stream = dx != nullptr && (forced ? forced == 1 : bytes3 <= kStreamBytes && !block_stream);
  // Both keep every channel's coefficients; the plain block path only its block's.
  const bool all_coeffs = stream || block_stream;
  std::vector<T> all(all_coeffs ? static_cast<size_t>(C) * 5 : 0);
#pragma omp parallel if (parallel_worth(d))
  {
    std::vector<double> scratch(static_cast<size_t>(cb) * (2 * kLanes + 3));
    std::vector<T> par(all_coeffs ? 0 : static_cast<size_t>(cb) * 5);
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t c0 = blk * cb, nc = std::min(cb, C - c0);
      double* mean = scratch.data();
      double* sdy = mean + cb;
      double* sdyx = sdy + cb;
      double* acc = sdyx + cb;
      for (int64_t j = 0; j < nc; ++j) mean[j] = static_cast<double>(mean_p[c0 + j]);
      if (need_sums && M > 0) {
        block_bwd_sums(dy + c0 * S, x + c0 * S, N, C * S, S, nc, mean, sdy, sdyx, acc);
      } else {
        for (int64_t j = 0; j < nc; ++j) sdy[j] = sdyx[j] = 0.0;
      }
      T* pb = all_coeffs ? all.data() + 5 * c0 : par.data();
      for (int64_t j = 0; j < nc; ++j) {
        T* pj = pb + 5 * j;
        coeffs(c0 + j, sdy[j], sdyx[j], pj[2], pj[3], pj[4]);
        split(mean[j], pj[0], pj[1]);
      }
      if (block_stream && M > 0) {
        for (int64_t n = 0; n < N; ++n)
          write_range(
              dx, (n * C + c0) * S, (n * C + c0 + nc) * S, true,
              [&](int64_t b, int64_t e, T* out) { range_bwd_apply(dy, x, out, b, e, C, S, all.data()); },
              false);
      } else if (!stream && dx && M > 0) {
        block_bwd_apply(dy + c0 * S, x + c0 * S, dx + c0 * S, N, C * S, S, nc, pb);
      }
    }
    if (block_stream) stream_fence();  // once per thread, not per run
    if (stream && M > 0) {  // after the loop's barrier: every channel's coefficients are in `all`
      const int64_t nt = team_size(), t = thread_id(), planes = N * C;
      const T* par = all.data();
      write_range(dx, planes * t / nt * S, planes * (t + 1) / nt * S, past_cache,
                  [&](int64_t b, int64_t e, T* out) {
                    range_bwd_apply(dy, x, out, b, e, C, S, par);
                  });
    }
  }
}

// ---------------------------------------------------------------- binding helpers

template <typename T>
const T* get_in(const py::object& o, const char* name, int64_t size, bool optional = false) {
  if (o.is_none()) {
    PYDL_CHECK(optional, name << ": required");
    return nullptr;
  }
  py::array a = o.cast<py::array>();
  PYDL_CHECK(has_dtype<T>(a), name << ": wrong dtype");
  PYDL_CHECK(a.flags() & py::array::c_style, name << ": must be C-contiguous");
  PYDL_CHECK(numel(a) == size, name << ": expected " << size << " elements, got " << numel(a));
  return static_cast<const T*>(a.data());
}

template <typename T>
T* get_out(const py::object& o, const char* name, int64_t size, bool optional = false) {
  if (o.is_none()) {
    PYDL_CHECK(optional, name << ": required");
    return nullptr;
  }
  py::array a = o.cast<py::array>();
  PYDL_CHECK(has_dtype<T>(a), name << ": wrong dtype");
  PYDL_CHECK(a.flags() & py::array::c_style, name << ": must be C-contiguous");
  PYDL_CHECK(a.writeable(), name << ": read-only");
  PYDL_CHECK(numel(a) == size, name << ": expected " << size << " elements, got " << numel(a));
  return static_cast<T*>(a.mutable_data());
}

Dims dims_of(const py::array& x) {
  PYDL_CHECK(x.ndim() == 3, "x: expected a 3-D (N, C, S) array, got " << x.ndim() << "-D");
  return Dims{static_cast<int64_t>(x.shape(0)), static_cast<int64_t>(x.shape(1)),
              static_cast<int64_t>(x.shape(2))};
}

template <typename T>
void forward_train_py(const py::array& xa, const py::object& w, const py::object& b,
                      const py::object& rm, const py::object& rv, const py::object& y,
                      const py::object& sm, const py::object& si, double momentum, double eps) {
  const Dims d = dims_of(xa);
  const int64_t n = d.N * d.C * d.S;
  const T* x = get_in<T>(xa, "x", n);
  const T* wp = get_in<T>(w, "weight", d.C, true);
  const T* bp = get_in<T>(b, "bias", d.C, true);
  T* rmp = get_out<T>(rm, "running_mean", d.C, true);
  T* rvp = get_out<T>(rv, "running_var", d.C, true);
  PYDL_CHECK((rmp == nullptr) == (rvp == nullptr), "running_mean and running_var: both or neither");
  T* yp = get_out<T>(y, "y", n);
  T* smp = get_out<T>(sm, "save_mean", d.C);
  T* sip = get_out<T>(si, "save_invstd", d.C);
  py::gil_scoped_release nogil;
  forward_train<T>(x, wp, bp, rmp, rvp, yp, smp, sip, d, momentum, eps);
}

template <typename T>
void forward_eval_py(const py::array& xa, const py::object& w, const py::object& b,
                     const py::object& rm, const py::object& rv, const py::object& y, double eps,
                     const py::object& sm, const py::object& si) {
  const Dims d = dims_of(xa);
  const int64_t n = d.N * d.C * d.S;
  const T* x = get_in<T>(xa, "x", n);
  const T* wp = get_in<T>(w, "weight", d.C, true);
  const T* bp = get_in<T>(b, "bias", d.C, true);
  const T* rmp = get_in<T>(rm, "running_mean", d.C);
  const T* rvp = get_in<T>(rv, "running_var", d.C);
  T* yp = get_out<T>(y, "y", n);
  T* smp = get_out<T>(sm, "save_mean", d.C, true);
  T* sip = get_out<T>(si, "save_invstd", d.C, true);
  py::gil_scoped_release nogil;
  forward_eval<T>(x, wp, bp, rmp, rvp, yp, d, eps);
  // The statistics the backward needs in evaluation mode: the running ones.
  for (int64_t c = 0; c < d.C; ++c) {
    if (smp) smp[c] = rmp[c];
    if (sip) sip[c] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(rvp[c]) + eps));
  }
}

template <typename T>
void backward_py(const py::object& dy, const py::array& xa, const py::object& w,
                 const py::object& sm, const py::object& si, const py::object& dx,
                 const py::object& dw, const py::object& db, bool training) {
  const Dims d = dims_of(xa);
  const int64_t n = d.N * d.C * d.S;
  const T* x = get_in<T>(xa, "x", n);
  const T* dyp = get_in<T>(dy, "grad_out", n);
  const T* wp = get_in<T>(w, "weight", d.C, true);
  const T* smp = get_in<T>(sm, "save_mean", d.C);
  const T* sip = get_in<T>(si, "save_invstd", d.C);
  T* dxp = get_out<T>(dx, "grad_x", n, true);
  T* dwp = get_out<T>(dw, "grad_weight", d.C, true);
  T* dbp = get_out<T>(db, "grad_bias", d.C, true);
  py::gil_scoped_release nogil;
  backward<T>(dyp, x, wp, smp, sip, dxp, dwp, dbp, d, training);
}

}  // namespace

void bind_batch_norm(py::module_& m) {
  m.def("_set_batch_norm_backward_apply", [](int mode) {
    PYDL_CHECK(mode >= 0 && mode <= 3, "mode: expected 0 (auto), 1 (stream), 2 (block_stream) or 3 (block)");
    return g_bn_backward_apply.exchange(mode);
  });
  m.def(
      "batch_norm_forward_train",
      [](const py::array& x, const py::object& weight, const py::object& bias,
         const py::object& running_mean, const py::object& running_var, const py::object& y,
         const py::object& save_mean, const py::object& save_invstd, double momentum,
         double eps) {
        dispatch_float(x, "batch_norm", "x", [&](auto t) {
          forward_train_py<decltype(t)>(x, weight, bias, running_mean, running_var, y, save_mean,
                                        save_invstd, momentum, eps);
        });
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
      py::arg("running_var"), py::arg("y"), py::arg("save_mean"), py::arg("save_invstd"),
      py::arg("momentum"), py::arg("eps"),
      "Training forward on x (N, C, S): batch statistics, y, save_mean, save_invstd (C,), and "
      "in-place running-buffer updates (running_* may be None).");
  m.def(
      "batch_norm_forward_eval",
      [](const py::array& x, const py::object& weight, const py::object& bias,
         const py::object& running_mean, const py::object& running_var, const py::object& y,
         double eps, const py::object& save_mean, const py::object& save_invstd) {
        dispatch_float(x, "batch_norm", "x", [&](auto t) {
          forward_eval_py<decltype(t)>(x, weight, bias, running_mean, running_var, y, eps, save_mean,
                                       save_invstd);
        });
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
      py::arg("running_var"), py::arg("y"), py::arg("eps"), py::arg("save_mean") = py::none(),
      py::arg("save_invstd") = py::none(),
      "Evaluation forward on x (N, C, S) with the running statistics.");
  m.def(
      "batch_norm_backward",
      [](const py::object& grad_out, const py::array& x, const py::object& weight,
         const py::object& save_mean, const py::object& save_invstd, const py::object& grad_x,
         const py::object& grad_weight, const py::object& grad_bias, bool training) {
        dispatch_float(x, "batch_norm", "x", [&](auto t) {
          backward_py<decltype(t)>(grad_out, x, weight, save_mean, save_invstd, grad_x, grad_weight,
                                   grad_bias, training);
        });
      },
      py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("save_mean"),
      py::arg("save_invstd"), py::arg("grad_x"), py::arg("grad_weight"), py::arg("grad_bias"),
      py::arg("training"),
      "Backward on (N, C, S): fills grad_x (N, C, S), grad_weight, grad_bias (C,) (each may be None).");
}

}  // namespace pydl
