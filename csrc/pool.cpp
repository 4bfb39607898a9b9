// pool: CPU kernels for 2-D max, average and adaptive average pooling, forward and backward.
//
// Math, per (n, c) plane, for output (oh, ow) and taps (i, j) of the window:
//   tap position   h = oh*sh - ph + i*dh,  w = ow*sw - pw + j*dw   (taps outside the image skipped)
//   max:           y = max over taps; argmax = h*W + w of the FIRST maximum in (i, j) scan order,
//                  except that a NaN always wins (the last NaN seen), exactly as PyTorch.
//   avg:           y = sum over taps / divisor, divisor = window size clipped to the padded image
//                  (count_include_pad), the number of taps inside the image, or divisor_override.
//   adaptive avg:  window rows [floor(oh*H/OH), ceil((oh+1)*H/OH)), same for columns; the mean.
// Layout: NCHW, C-contiguous; indices int64, flat within a plane (h*W + w), -1 for a window that
// holds no element of the image (possible only with dilation; no gradient flows there).
// Threads: OpenMP over the N*C planes. A plane belongs to one thread, so the backward scatters
// (dx[argmax] += dy, dx[window] += dy/divisor) are race-free and deterministic.
// Vectorization: within a row of outputs, the columns whose window lies inside the image run a
// branch-free loop over ow (stride 1 and 2 are compile-time constants so strided loads vectorize);
// the few border columns take a clipped scalar path. Max pooling is done separably (max over
// the window rows, then over the columns), which needs far fewer operations; with indices the
// pairs (value, flat index) are compared so as to pick PyTorch's argmax. 2x2 windows at
// stride 2 inside the image (float32, AVX2) take a dedicated 8-outputs-per-step kernel.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common.h"
#include "geometry.h"

namespace pydl {
namespace {

// One spatial axis of the pooling window.
struct Axis {
  int64_t in, out, k, s, p, d;
  int64_t start(int64_t o) const { return o * s - p; }
  // Taps [tap_lo, tap_hi) of window o that fall inside [0, in).
  // (Called per output row and border column: no division without dilation.)
  int64_t tap_lo(int64_t o) const {
    int64_t a = start(o);
    if (a >= 0) return 0;
    return d == 1 ? -a : (-a + d - 1) / d;
  }
  int64_t tap_hi(int64_t o) const {
    int64_t r = in - start(o);
    if (r <= 0) return 0;
    return std::min(k, d == 1 ? r : (r + d - 1) / d);
  }
  // Outputs [lo, hi) whose whole window is inside the image (no clipping needed).
  void interior(int64_t& lo, int64_t& hi) const {
    lo = std::min(out, (p + s - 1) / s);
    int64_t num = in - 1 - (k - 1) * d + p;
    hi = num < 0 ? 0 : std::min(out, num / s + 1);
    if (hi < lo) hi = lo;
  }
};

// Hot per-plane kernels run in an AVX2/FMA or a baseline variant (common.h's PYDL_SIMD_DISPATCH);
// the OpenMP loops stay outside them.
#define PYDL_POOL_TIS template <typename T, typename I, int S>
#define PYDL_POOL_TS template <typename T, int S>
#define PYDL_POOL_T template <typename T>
#define PYDL_POOL_TIS_ARGS <T, I, S>
#define PYDL_POOL_TS_ARGS <T, S>

// Small problems run on the calling thread: waking the team costs more than the work.
inline bool parallel_worth(int64_t elements) { return elements >= (int64_t(1) << 15); }
// Outputs from this size on are streamed past the cache; planes up to the scratch size are
// built in cache first.
constexpr int64_t kStreamBytes = int64_t(16) << 20;
constexpr int64_t kScratchPlaneBytes = int64_t(256) << 10;
// Tests force the streamed backward (1) or the direct scatter (2) on any size (0 = the rule).
std::atomic<int> g_max_pool_backward_stream{0};

// Finished bytes [pb, pe) of a plane built in the cache-resident buf, on their way to out with
// non-temporal stores a few at a time (step), each zeroed in buf behind it.
struct StreamOut {
  char* out;
  char* buf;
  int64_t pb = 0, pe = 0;
  int64_t left() const { return pe - pb; }
  // Takes over [b, e), moving the head up to out's next 16-byte boundary at once.
  void start(int64_t b, int64_t e) {
    pb = b, pe = e;
    tail(std::min<int64_t>(e - b, (16 - (reinterpret_cast<uintptr_t>(out + b) & 15)) & 15));
  }
  template <int64_t Bytes>
  void step() {
    for (int64_t c = 0; c < Bytes; c += 16) stream_move16(out + pb + c, buf + pb + c);
    pb += Bytes;
  }
  void finish() {
    for (; pe - pb >= 16; pb += 16) stream_move16(out + pb, buf + pb);
    tail(pe - pb);
  }

 private:
  void tail(int64_t n) {
    std::memcpy(out + pb, buf + pb, n);
    std::memset(buf + pb, 0, n);
    pb += n;
  }
};

template <typename T>
constexpr T neg_inf() { return -std::numeric_limits<T>::infinity(); }

// ------------------------------------------------------------------------------- max pooling

// Max pooling with indices, separably. PyTorch scans a window row-major and a tap replaces the
// running max when (v > m) or v is NaN, so the winner is the first maximum in scan order, or
// the last NaN. Within a window, scan order is the order of flat in-plane indices, so that rule
// is a total order on (value, flat index): NaN above everything, NaNs by larger index, equal
// values by smaller index. A max under a total order can be taken in any grouping: first per
// column over the window's rows (contiguous, vectorized), then over the window's columns.
// (A direct scan would gather every tap at the column stride.)
template <typename T, typename I>
inline bool idx_wins(T v, I f, T m, I b) {
  return (v > m) | ((v == m) & (f < b)) | ((v != v) & ((m == m) | (f > b)));
}

// One plane. r and f hold a row's column winners (value, flat index); tmp an output row's
// indices when I is narrower than int64.
template <typename T, typename I, int S>
__attribute__((always_inline)) inline void
max_forward_plane_idx_impl(const T* plane, T* y, int64_t* ind, T* r, I* f, I* tmp,
                           const Axis& ah, const Axis& aw, int64_t c_lo, int64_t c_hi) {
  const int64_t W = aw.in, OH = ah.out, OW = aw.out, kw = aw.k, pw = aw.p, dw = aw.d;
  const int64_t s = S ? S : aw.s;
  const I Wi = static_cast<I>(W);  // I-typed loop counters keep the index lanes as wide as T's
  for (int64_t oh = 0; oh < OH; ++oh) {
    T* __restrict o = y + oh * OW;
    int64_t* oind = ind + oh * OW;
    I* __restrict id;
    if constexpr (std::is_same<I, int64_t>::value) id = oind;
    else id = tmp;
    const int64_t ih0 = ah.start(oh), ilo = ah.tap_lo(oh), ihi = ah.tap_hi(oh);
    if (ilo >= ihi) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        o[ow] = neg_inf<T>();
        oind[ow] = -1;
      }
      continue;
    }
    // Vertical pass: per column, the first maximum over the window's rows (or the last NaN).
    {
      const T* __restrict r0 = plane + (ih0 + ilo * ah.d) * W;
      const I b0 = static_cast<I>((ih0 + ilo * ah.d) * W);
      T* __restrict rr = r;
      I* __restrict ff = f;
      for (I w = 0; w < Wi; ++w) {
        rr[w] = r0[w];
        ff[w] = b0 + w;
      }
      for (int64_t i = ilo + 1; i < ihi; ++i) {
        const T* __restrict ri = plane + (ih0 + i * ah.d) * W;
        const I bi = static_cast<I>((ih0 + i * ah.d) * W);
        for (I w = 0; w < Wi; ++w) {
          const T v = ri[w], m = rr[w];
          const bool c = (v > m) | (v != v);
          rr[w] = c ? v : m;
          ff[w] = c ? bi + w : ff[w];
        }
      }
    }
    // Horizontal pass: interior columns branch-free, borders clipped.
    const int64_t n = c_hi - c_lo;
    if (n > 0) {
      T* __restrict oi = o + c_lo;
      I* __restrict ii = id + c_lo;
      const T* __restrict rp = r + c_lo * s - pw;
      const I* __restrict fp = f + c_lo * s - pw;
      for (int64_t q = 0; q < n; ++q) {
        oi[q] = rp[q * s];
        ii[q] = fp[q * s];
      }
      for (int64_t j = 1; j < kw; ++j) {
        const T* __restrict rj = rp + j * dw;
        const I* __restrict fj = fp + j * dw;
        for (int64_t q = 0; q < n; ++q) {
          const T v = rj[q * s], m = oi[q];
          const I fv = fj[q * s], b = ii[q];
          const bool c = idx_wins(v, fv, m, b);
          oi[q] = c ? v : m;
          ii[q] = c ? fv : b;
        }
      }
    }
    for (int64_t ow = 0; ow < OW; ++ow) {
      if (ow == c_lo) ow = c_hi;
      if (ow >= OW) break;
      const int64_t iw0 = aw.start(ow), jlo = aw.tap_lo(ow), jhi = aw.tap_hi(ow);
      if (jlo >= jhi) {
        o[ow] = neg_inf<T>();
        id[ow] = -1;
        continue;
      }
      T m = r[iw0 + jlo * dw];
      I b = f[iw0 + jlo * dw];
      for (int64_t j = jlo + 1; j < jhi; ++j) {
        const T v = r[iw0 + j * dw];
        const I fv = f[iw0 + j * dw];
        if (idx_wins(v, fv, m, b)) {
          m = v;
          b = fv;
        }
      }
      o[ow] = m;
      id[ow] = b;
    }
    if constexpr (!std::is_same<I, int64_t>::value)
      for (int64_t ow = 0; ow < OW; ++ow) oind[ow] = id[ow];
  }
}
PYDL_SIMD_DISPATCH(PYDL_POOL_TIS, PYDL_POOL_TIS_ARGS, void, max_forward_plane_idx,
                   (const T* plane, T* y, int64_t* ind, T* r, I* f, I* tmp, const Axis& ah, const Axis& aw,
                    int64_t c_lo, int64_t c_hi),
                   (plane, y, ind, r, f, tmp, ah, aw, c_lo, c_hi))

// NaN-propagating max: v replaces m when larger or NaN (once m is NaN it stays NaN).
template <typename T>
inline T nan_max(T m, T v) {
  return ((v > m) | (v != v)) ? v : m;
}

// Max pooling without indices is separable: r = max over the window rows (contiguous, fully
// vectorized), then y = max over the window columns of r. The value is the same as the
// direct scan (the max, or NaN if the window holds one).
template <typename T, int S>
__attribute__((always_inline)) inline void
max_forward_plane_sep_impl(const T* plane, T* y, T* r, const Axis& ah,
                           const Axis& aw, int64_t c_lo, int64_t c_hi) {
  const int64_t W = aw.in, OH = ah.out, OW = aw.out, kw = aw.k, pw = aw.p, dw = aw.d;
  const int64_t s = S ? S : aw.s;
  for (int64_t oh = 0; oh < OH; ++oh) {
    T* __restrict o = y + oh * OW;
    const int64_t ih0 = ah.start(oh), ilo = ah.tap_lo(oh), ihi = ah.tap_hi(oh);
    if (ilo >= ihi) {
      for (int64_t ow = 0; ow < OW; ++ow) o[ow] = neg_inf<T>();
      continue;
    }
    // Vertical pass over the window's rows.
    const T* __restrict r0 = plane + (ih0 + ilo * ah.d) * W;
    const T* rv = r0;
    if (ihi - ilo > 1) {
      const T* __restrict r1 = plane + (ih0 + (ilo + 1) * ah.d) * W;
      T* __restrict rr = r;
      for (int64_t w = 0; w < W; ++w) rr[w] = nan_max(r0[w], r1[w]);
      for (int64_t i = ilo + 2; i < ihi; ++i) {
        const T* __restrict ri = plane + (ih0 + i * ah.d) * W;
        for (int64_t w = 0; w < W; ++w) rr[w] = nan_max(rr[w], ri[w]);
      }
      rv = r;
    }
    // Horizontal pass: interior columns branch-free, borders clipped.
    const int64_t n = c_hi - c_lo;
    if (n > 0) {
      T* __restrict oi = o + c_lo;
      const T* __restrict rp = rv + c_lo * s - pw;
      for (int64_t q = 0; q < n; ++q) oi[q] = rp[q * s];
      for (int64_t j = 1; j < kw; ++j) {
        const T* __restrict rj = rp + j * dw;
        for (int64_t q = 0; q < n; ++q) oi[q] = nan_max(oi[q], rj[q * s]);
      }
    }
    for (int64_t ow = 0; ow < OW; ++ow) {
      if (ow == c_lo) ow = c_hi;
      if (ow >= OW) break;
      const int64_t iw0 = aw.start(ow), jlo = aw.tap_lo(ow), jhi = aw.tap_hi(ow);
      T m = neg_inf<T>();
      for (int64_t j = jlo; j < jhi; ++j) m = nan_max(m, rv[iw0 + j * dw]);
      o[ow] = m;
    }
  }
}
PYDL_SIMD_DISPATCH(PYDL_POOL_TS, PYDL_POOL_TS_ARGS, void, max_forward_plane_sep,
                   (const T* plane, T* y, T* r, const Axis& ah, const Axis& aw, int64_t c_lo, int64_t c_hi),
                   (plane, y, r, ah, aw, c_lo, c_hi))

// ---- 2x2 windows at stride 2, all inside the image (the classic downsampling pool), float32.
// The general kernels spend most of their time on loop control for such short windows; here
// each step takes 8 outputs from 16 columns of the window's two rows, deinterleaves even and
// odd columns, and picks the winner as a tree: within each row first, then top against bottom.
// That tree picks what PyTorch's (0,0),(0,1),(1,0),(1,1) scan picks, ties and NaNs included:
// a later element replaces only if strictly larger or NaN, so the first maximum and the last
// NaN win either way.
#if defined(__GNUC__) && defined(__x86_64__)
#define PYDL_POOL2X2 1

// The 2x2 step on 8 outputs (AVX) or 4 (SSE): the same tree, lane ops from these.
struct Lanes8 {
  using V = __m256;
  using VI = __m256i;
  static constexpr int n = 8;
  static PYDL_AVX2_INL V load(const float* p) { return _mm256_loadu_ps(p); }
  static PYDL_AVX2_INL V even(V a, V b) { return _mm256_shuffle_ps(a, b, 0x88); }
  static PYDL_AVX2_INL V odd(V a, V b) { return _mm256_shuffle_ps(a, b, 0xDD); }
  static PYDL_AVX2_INL V cmp_gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static PYDL_AVX2_INL V is_nan(V a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static PYDL_AVX2_INL V or_(V a, V b) { return _mm256_or_ps(a, b); }
  static PYDL_AVX2_INL V blend(V a, V b, V m) { return _mm256_blendv_ps(a, b, m); }
  static PYDL_AVX2_INL VI bits(V a) { return _mm256_castps_si256(a); }
  static PYDL_AVX2_INL VI set1(int32_t v) { return _mm256_set1_epi32(v); }
  static PYDL_AVX2_INL VI add(VI a, VI b) { return _mm256_add_epi32(a, b); }
  static PYDL_AVX2_INL VI sub(VI a, VI b) { return _mm256_sub_epi32(a, b); }
  static PYDL_AVX2_INL VI and_(VI a, VI b) { return _mm256_and_si256(a, b); }
  // Shuffles stay within 128-bit halves: lanes hold outputs {0,1,4,5 | 2,3,6,7} until stored.
  static PYDL_AVX2_INL VI lane2() { return _mm256_setr_epi32(0, 2, 8, 10, 4, 6, 12, 14); }
  static PYDL_AVX2_INL void store(float* o, V r) {
    _mm256_storeu_ps(o, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(r), 0xD8)));
  }
  static PYDL_AVX2_INL void store(int64_t* id, VI k) {
    k = _mm256_permute4x64_epi64(k, 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(id), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(k)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(id + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(k, 1)));
  }
};
struct Lanes4 {
  using V = __m128;
  using VI = __m128i;
  static constexpr int n = 4;
  static PYDL_AVX2_INL V load(const float* p) { return _mm_loadu_ps(p); }
  static PYDL_AVX2_INL V even(V a, V b) { return _mm_shuffle_ps(a, b, 0x88); }
  static PYDL_AVX2_INL V odd(V a, V b) { return _mm_shuffle_ps(a, b, 0xDD); }
  static PYDL_AVX2_INL V cmp_gt(V a, V b) { return _mm_cmp_ps(a, b, _CMP_GT_OQ); }
  static PYDL_AVX2_INL V is_nan(V a) { return _mm_cmp_ps(a, a, _CMP_UNORD_Q); }
  static PYDL_AVX2_INL V or_(V a, V b) { return _mm_or_ps(a, b); }
  static PYDL_AVX2_INL V blend(V a, V b, V m) { return _mm_blendv_ps(a, b, m); }
  static PYDL_AVX2_INL VI bits(V a) { return _mm_castps_si128(a); }
  static PYDL_AVX2_INL VI set1(int32_t v) { return _mm_set1_epi32(v); }
  static PYDL_AVX2_INL VI add(VI a, VI b) { return _mm_add_epi32(a, b); }
  static PYDL_AVX2_INL VI sub(VI a, VI b) { return _mm_sub_epi32(a, b); }
  static PYDL_AVX2_INL VI and_(VI a, VI b) { return _mm_and_si128(a, b); }
  static PYDL_AVX2_INL VI lane2() { return _mm_setr_epi32(0, 2, 4, 6); }  // in order
  static PYDL_AVX2_INL void store(float* o, V r) { _mm_storeu_ps(o, r); }
  static PYDL_AVX2_INL void store(int64_t* id, VI k) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(id), _mm256_cvtepi32_epi64(k));
  }
};

// Lanes where v replaces m: v > m or v is NaN.
template <class L>
PYDL_AVX2_INL typename L::V replaces(typename L::V m, typename L::V v) {
  return L::or_(L::cmp_gt(v, m), L::is_nan(v));
}

// Outputs [q, q + L::n) of one row; see max2x2_row.
template <class L, bool IDX>
PYDL_AVX2_INL void max2x2_step(const float* a, const float* b, int64_t q, int32_t base, int32_t W,
                                  float* o, int64_t* id) {
  using V = typename L::V;
  const V a0 = L::load(a + 2 * q), a1 = L::load(a + 2 * q + L::n);
  const V b0 = L::load(b + 2 * q), b1 = L::load(b + 2 * q + L::n);
  const V ae = L::even(a0, a1), ao = L::odd(a0, a1), be = L::even(b0, b1), bo = L::odd(b0, b1);
  const V ct = replaces<L>(ae, ao), cb = replaces<L>(be, bo);
  const V t = L::blend(ae, ao, ct), u = L::blend(be, bo, cb);
  const V rv = replaces<L>(t, u);
  L::store(o + q, L::blend(t, u, rv));
  if (IDX) {
    // index = base + 2q + (bottom ? W : 0) + (odd column ? 1 : 0); a true mask is -1.
    auto k = L::add(L::set1(base + 2 * static_cast<int32_t>(q)), L::lane2());
    k = L::sub(k, L::bits(L::blend(ct, cb, rv)));
    L::store(id + q, L::add(k, L::and_(L::bits(rv), L::set1(W))));
  }
}

// One output row: a and b are the window's two input rows from its first column, n outputs,
// flat in-plane index of a[0] is base (indices fit int32: the caller checks the plane size).
template <bool IDX>
PYDL_AVX2 void max2x2_row(const float* a, const float* b, int64_t n, int32_t base, int32_t W,
                             float* o, int64_t* id) {
  int64_t q = 0;
  for (; q + 8 <= n; q += 8) max2x2_step<Lanes8, IDX>(a, b, q, base, W, o, id);
  for (; q + 4 <= n; q += 4) max2x2_step<Lanes4, IDX>(a, b, q, base, W, o, id);
  for (; q < n; ++q) {  // same tree, scalar
    const float* pa = a + 2 * q;
    const float* pb = b + 2 * q;
    const bool ct = (pa[1] > pa[0]) | (pa[1] != pa[1]), cb = (pb[1] > pb[0]) | (pb[1] != pb[1]);
    const float t = ct ? pa[1] : pa[0], u = cb ? pb[1] : pb[0];
    const bool rv = (u > t) | (u != u);
    o[q] = rv ? u : t;
    if (IDX) id[q] = base + 2 * q + (rv ? W + cb : ct);
  }
}

template <bool IDX>
PYDL_AVX2 void max2x2_plane(const float* plane, float* y, int64_t* ind, int64_t W, int64_t OH,
                               int64_t OW) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    const float* a = plane + 2 * oh * W;
    max2x2_row<IDX>(a, a + W, OW, static_cast<int32_t>(2 * oh * W), static_cast<int32_t>(W), y + oh * OW,
                    IDX ? ind + oh * OW : nullptr);
  }
}

// Whether the 2x2 path takes this call.
inline bool max2x2_fits(const Axis& ah, const Axis& aw) {
  return ah.k == 2 && aw.k == 2 && ah.s == 2 && aw.s == 2 && ah.p == 0 && aw.p == 0 && ah.d == 1 &&
         aw.d == 1 && 2 * ah.out <= ah.in && 2 * aw.out <= aw.in &&
         ah.in * aw.in < (int64_t(1) << 31) && use_avx2();
}

// Backward of the 2x2 path: the windows tile the plane without overlap, so each dx element is
// written once, dy where the window's index points and 0 elsewhere: no zero pass and no
// read-modify-write scatter. Returns false, part-written, at the first index outside its
// window (indices are the caller's); the caller then redoes the plane with the general scatter.
// 8 outputs a step work on 32-bit window positions (0..3) rather than four 64-bit compares per 4 outputs.
PYDL_AVX2 bool max2x2_backward_plane(const float* gy, const int64_t* ind, float* dx, int64_t H, int64_t W,
                                        int64_t OH, int64_t OW) {
  const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);  // low dwords of 64-bit masks
  const __m256i vW = _mm256_set1_epi64x(W), vW1 = _mm256_set1_epi64x(W + 1), one = _mm256_set1_epi64x(1);
  const __m256i step = _mm256_setr_epi64x(0, 2, 4, 6), eight = _mm256_set1_epi64x(8);
  const __m256i vW32 = _mm256_set1_epi32(static_cast<int32_t>(W));
  const __m256i vWm1 = _mm256_set1_epi32(static_cast<int32_t>(W - 1));
  const __m256i one32 = _mm256_set1_epi32(1), two32 = _mm256_set1_epi32(2);
  // Each output's position / gradient twice, for the two dx columns of its window.
  const __m256i dup_lo_p = _mm256_setr_epi32(0, 0, 1, 1, 4, 4, 5, 5);
  const __m256i dup_hi_p = _mm256_setr_epi32(2, 2, 3, 3, 6, 6, 7, 7);
  const __m256i dup_lo_g = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
  const __m256i dup_hi_g = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
  const __m256i top_pos = _mm256_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1);
  const __m256i bot_pos = _mm256_setr_epi32(2, 3, 2, 3, 2, 3, 2, 3);
  for (int64_t oh = 0; oh < OH; ++oh) {
    float* top = dx + 2 * oh * W;
    float* bot = top + W;
    const int64_t* ir = ind + oh * OW;
    const float* gr = gy + oh * OW;
    const int64_t base = 2 * oh * W;
    int64_t q = 0;
    for (; q + 8 <= OW; q += 8) {
      // d = index - window origin, for 8 outputs: the low dwords as int32 (lane order
      // 0,1,4,5,2,3,6,7 after the shuffle), the high dwords must be 0.
      const __m256i org = _mm256_add_epi64(_mm256_set1_epi64x(base + 2 * q), step);
      const __m256 a = _mm256_castsi256_ps(
          _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ir + q)), org));
      const __m256 b = _mm256_castsi256_ps(_mm256_sub_epi64(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ir + q + 4)), _mm256_add_epi64(org, eight)));
      const __m256i d = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
      const __m256i hi = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
      // Position in the window: row = d >= W, col = d - row * W; valid when col is 0 or 1.
      const __m256i row = _mm256_cmpgt_epi32(d, vWm1);
      const __m256i col = _mm256_sub_epi32(d, _mm256_and_si256(row, vW32));
      const __m256i badv = _mm256_or_si256(hi, _mm256_andnot_si256(one32, col));
      if (!_mm256_testz_si256(badv, badv)) return false;
      const __m256i pos = _mm256_add_epi32(col, _mm256_and_si256(row, two32));  // 0..3
      const __m256 g = _mm256_loadu_ps(gr + q);
      for (int h = 0; h < 2; ++h) {  // outputs q..q+3, then q+4..q+7: 8 dx columns each
        const __m256i pd = _mm256_permutevar8x32_epi32(pos, h ? dup_hi_p : dup_lo_p);
        const __m256 gd = _mm256_permutevar8x32_ps(g, h ? dup_hi_g : dup_lo_g);
        const __m256 mt = _mm256_castsi256_ps(_mm256_cmpeq_epi32(pd, top_pos));
        const __m256 mb = _mm256_castsi256_ps(_mm256_cmpeq_epi32(pd, bot_pos));
        _mm256_storeu_ps(top + 2 * q + 8 * h, _mm256_and_ps(gd, mt));
        _mm256_storeu_ps(bot + 2 * q + 8 * h, _mm256_and_ps(gd, mb));
      }
    }
    for (; q + 4 <= OW; q += 4) {
      const __m256i d = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ir + q)),
                                         _mm256_add_epi64(_mm256_set1_epi64x(base + 2 * q), step));
      const __m256i mc[4] = {_mm256_cmpeq_epi64(d, _mm256_setzero_si256()), _mm256_cmpeq_epi64(d, one),
                             _mm256_cmpeq_epi64(d, vW), _mm256_cmpeq_epi64(d, vW1)};
      const __m256i any = _mm256_or_si256(_mm256_or_si256(mc[0], mc[1]), _mm256_or_si256(mc[2], mc[3]));
      if (_mm256_movemask_epi8(any) != -1) return false;
      const __m128 g = _mm_loadu_ps(gr + q);
      __m128 t[4];
      for (int c = 0; c < 4; ++c)
        t[c] = _mm_and_ps(g, _mm_castsi128_ps(_mm256_castsi256_si128(_mm256_permutevar8x32_epi32(mc[c], pick))));
      for (int r = 0; r < 2; ++r) {
        float* row = (r ? bot : top) + 2 * q;
        _mm_storeu_ps(row, _mm_unpacklo_ps(t[2 * r], t[2 * r + 1]));
        _mm_storeu_ps(row + 4, _mm_unpackhi_ps(t[2 * r], t[2 * r + 1]));
      }
    }
    for (; q < OW; ++q) {
      const int64_t d = ir[q] - (base + 2 * q);
      if (d != 0 && d != 1 && d != W && d != W + 1) return false;
      const float v[2] = {0.f, gr[q]};  // selected by index: no data-dependent branch
      top[2 * q] = v[d == 0];
      top[2 * q + 1] = v[d == 1];
      bot[2 * q] = v[d == W];
      bot[2 * q + 1] = v[d == W + 1];
    }
    for (int64_t w = 2 * OW; w < W; ++w) top[w] = bot[w] = 0.f;  // columns no window reaches
  }
  std::memset(dx + 2 * OH * W, 0, sizeof(float) * (H - 2 * OH) * W);  // rows no window reaches
  return true;
}
#endif

template <typename T, typename I, int S, bool IDX>
void max_forward_impl(const T* x, T* y, int64_t* ind, int64_t planes, const Axis& ah,
                      const Axis& aw) {
  const int64_t HW = ah.in * aw.in, OHW = ah.out * aw.out;
#ifdef PYDL_POOL2X2
  if constexpr (std::is_same<T, float>::value && S == 2) {
    if (max2x2_fits(ah, aw)) {
#pragma omp parallel for schedule(static) if (parallel_worth(planes * (HW + OHW)))
      for (int64_t pl = 0; pl < planes; ++pl)
        max2x2_plane<IDX>(x + pl * HW, y + pl * OHW, IDX ? ind + pl * OHW : nullptr, aw.in, ah.out, aw.out);
      return;
    }
  }
#endif
  int64_t c_lo, c_hi;
  aw.interior(c_lo, c_hi);
#pragma omp parallel if (parallel_worth(planes * (ah.in * aw.in + ah.out * aw.out)))
  {
    // int32 argmax while a row is being built (vectorizes with float), int64 on the way out.
    std::vector<I> tmp(IDX && !std::is_same<I, int64_t>::value ? aw.out : 0), fbuf(IDX ? aw.in : 0);
    std::vector<T> rbuf(aw.in);
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl) {
      if constexpr (!IDX)
        max_forward_plane_sep<T, S>(x + pl * HW, y + pl * OHW, rbuf.data(), ah, aw, c_lo, c_hi);
      else
        max_forward_plane_idx<T, I, S>(x + pl * HW, y + pl * OHW, ind + pl * OHW, rbuf.data(),
                                       fbuf.data(), tmp.data(), ah, aw, c_lo, c_hi);
    }
  }
}

template <typename T, typename I, bool IDX>
void max_forward_s(const T* x, T* y, int64_t* ind, int64_t planes, const Axis& ah, const Axis& aw) {
  if (aw.s == 1) max_forward_impl<T, I, 1, IDX>(x, y, ind, planes, ah, aw);
  else if (aw.s == 2) max_forward_impl<T, I, 2, IDX>(x, y, ind, planes, ah, aw);
  else max_forward_impl<T, I, 0, IDX>(x, y, ind, planes, ah, aw);
}

template <typename T>
void max_pool2d_forward(carray<T> x, carray<T> y, py::object indices, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  PYDL_CHECK(x.ndim() == 4 && y.ndim() == 4, "max_pool2d_forward: x and y must be 4-D");
  PYDL_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0,
             "max_pool2d_forward: bad window");
  const int64_t N = x.shape(0), C = x.shape(1);
  PYDL_CHECK(y.shape(0) == N && y.shape(1) == C, "max_pool2d_forward: y shape");
  Axis ah{x.shape(2), y.shape(2), kh, sh, ph, dh};
  Axis aw{x.shape(3), y.shape(3), kw, sw, pw, dw};
  const T* xp = in_ptr(x);
  T* yp = out_ptr(y);
  int64_t* ip = nullptr;
  if (!indices.is_none()) {
    auto ind = indices.cast<carray<int64_t>>();
    PYDL_CHECK(ind.ndim() == 4 && ind.shape(0) == N && ind.shape(1) == C &&
                   ind.shape(2) == ah.out && ind.shape(3) == aw.out,
               "max_pool2d_forward: indices must have y's shape");
    ip = out_ptr(ind);
  }
  const int64_t planes = N * C;
  if (planes == 0 || ah.out == 0 || aw.out == 0) return;
  const bool narrow = std::is_same<T, float>::value && ah.in * aw.in < (int64_t(1) << 31);
  py::gil_scoped_release release;
  if (!ip) max_forward_s<T, int64_t, false>(xp, yp, nullptr, planes, ah, aw);
  else if (narrow) max_forward_s<T, int32_t, true>(xp, yp, ip, planes, ah, aw);
  else max_forward_s<T, int64_t, true>(xp, yp, ip, planes, ah, aw);
}

// dx = 0; dx[argmax[o]] += dy[o] per plane (the derivative of a max is 1 at the element chosen).
// The window geometry is only checked here (the GPU gather needs it to find covering outputs).
template <typename T>
int64_t max_pool2d_backward(carray<T> dy, carray<int64_t> indices, carray<T> dx, int64_t kh, int64_t kw,
                         int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  PYDL_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0,
             "max_pool2d_backward: bad window");
  PYDL_CHECK(dy.ndim() == 4 && dx.ndim() == 4 && indices.ndim() == 4,
             "max_pool2d_backward: arrays must be 4-D");
  for (int a = 0; a < 4; ++a)
    PYDL_CHECK(indices.shape(a) == dy.shape(a), "max_pool2d_backward: indices must have dy's shape");
  PYDL_CHECK(dx.shape(0) == dy.shape(0) && dx.shape(1) == dy.shape(1),
             "max_pool2d_backward: dx and dy disagree on N, C");
  const int64_t planes = dx.shape(0) * dx.shape(1);
  const int64_t W = dx.shape(3), HW = dx.shape(2) * W, OHW = dy.shape(2) * dy.shape(3);
  const T* g = in_ptr(dy);
  const int64_t* ind = in_ptr(indices);
  T* d = out_ptr(dx);
  int64_t bad = 0;
  const int64_t plane_bytes = HW * static_cast<int64_t>(sizeof(T));
  auto scatter = [HW](T* dp, const T* gp, const int64_t* ip, int64_t n) {
    int64_t nbad = 0;
    for (int64_t q = 0; q < n; ++q) {
      const int64_t k = ip[q];
      if (static_cast<uint64_t>(k) < static_cast<uint64_t>(HW)) dp[k] += gp[q];
      else nbad += (k != -1);
    }
    return nbad;
  };
  // A dx of a last-level cache or more: each plane is built in a cache-resident scratch plane and
  // streamed out, so dx is written once instead of read and written (see stream_copy).
  const int forced = g_max_pool_backward_stream.load();
  if (plane_bytes <= kScratchPlaneBytes && (forced ? forced == 1 : planes * plane_bytes >= kStreamBytes)) {
    const int64_t H = dx.shape(2), OH = dy.shape(2), OW = dy.shape(3);
    const int64_t plane_row_bytes = W * static_cast<int64_t>(sizeof(T));
    std::vector<T> scratch(static_cast<size_t>(max_threads() * HW));
    py::gil_scoped_release release;
#pragma omp parallel reduction(+ : bad)
    {
      T* buf = scratch.data() + thread_id() * HW;
      std::memset(buf, 0, sizeof(T) * HW);  // kept zero between planes
#pragma omp for schedule(static)
      for (int64_t pl = 0; pl < planes; ++pl) {
        const T* gp = g + pl * OHW;
        const int64_t* ip = ind + pl * OHW;
        T* out = d + pl * HW;
        // Rows go out as soon as no later output row's window reaches them: those the previous
        // output row finished stream out 16 bytes per output during this row's scatter, so the
        // stores to memory overlap the adds instead of going out in one burst after each row.
        // That needs every index inside its window's rows (true of max_pool2d's own); the first
        // that is not sends the plane to the plain build-then-copy below.
        StreamOut rest{reinterpret_cast<char*>(out), reinterpret_cast<char*>(buf)};
        constexpr int64_t kStep = 4 * int64_t(sizeof(T));  // streamed per output
        int64_t done = 0;  // rows [0, done) are final in buf
        bool plain = false;
        for (int64_t oh = 0; oh < OH; ++oh) {
          const int64_t r0 = std::max<int64_t>(0, oh * sh - ph);
          const int64_t lo = r0 * W, hi = std::min(H, oh * sh - ph + (kh - 1) * dh + 1) * W;
          const int64_t* ir = ip + oh * OW;
          const T* gr = gp + oh * OW;
          const int64_t m = std::min(OW, rest.left() / kStep);
          int64_t q = 0;
          for (; q < m; ++q) {
            const int64_t k = ir[q];
            if (k >= lo && k < hi) buf[k] += gr[q];
            else if (k != -1) break;
            rest.step<kStep>();
          }
          if (q == m) {
            for (; q < OW; ++q) {
              const int64_t k = ir[q];
              if (k >= lo && k < hi) buf[k] += gr[q];
              else if (k != -1) break;
            }
          }
          if (q < OW) {
            plain = true;
            break;
          }
          rest.finish();
          const int64_t next = oh + 1 < OH ? std::min(H, std::max<int64_t>(done, (oh + 1) * sh - ph)) : H;
          rest.start(done * plane_row_bytes, next * plane_row_bytes);
          done = next;
        }
        if (!plain) rest.finish();
        if (plain) {
          std::memset(buf, 0, sizeof(T) * HW);
          bad += scatter(buf, gp, ip, OHW);
          stream_copy(out, buf, static_cast<size_t>(plane_bytes), false);
          std::memset(buf, 0, sizeof(T) * HW);
        }
      }
      stream_fence();
    }
    return bad;
  }
  py::gil_scoped_release release;
#ifdef PYDL_POOL2X2
  if constexpr (std::is_same<T, float>::value) {
    const Axis ah{dx.shape(2), dy.shape(2), kh, sh, ph, dh}, aw{W, dy.shape(3), kw, sw, pw, dw};
    if (max2x2_fits(ah, aw)) {
#pragma omp parallel for schedule(static) if (parallel_worth(planes * (HW + OHW))) reduction(+ : bad)
      for (int64_t pl = 0; pl < planes; ++pl) {
        T* dp = d + pl * HW;
        if (!max2x2_backward_plane(g + pl * OHW, ind + pl * OHW, dp, ah.in, W, ah.out, aw.out)) {
          std::memset(dp, 0, sizeof(T) * HW);
          bad += scatter(dp, g + pl * OHW, ind + pl * OHW, OHW);
        }
      }
      return bad;
    }
  }
#endif
  if (HW <= 4096) {
    // The plane stays in cache: zero it, then scatter.
#pragma omp parallel for schedule(static) if (parallel_worth(planes * (HW + OHW))) reduction(+ : bad)
    for (int64_t pl = 0; pl < planes; ++pl) {
      T* dp = d + pl * HW;
      std::memset(dp, 0, sizeof(T) * HW);
      bad += scatter(dp, g + pl * OHW, ind + pl * OHW, OHW);
    }
    return bad;
  }
#pragma omp parallel for schedule(static) if (parallel_worth(planes * (HW + OHW))) reduction(+ : bad)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* dp = d + pl * HW;
    const T* gp = g + pl * OHW;
    const int64_t* ip = ind + pl * OHW;
    // A large plane is zeroed lazily, just ahead of the scatter: argmaxes advance through the
    // plane with the output rows, so zeroing and adds hit the same cache lines back to back.
    // An index at or past the frontier first pushes it a row beyond itself, so every element
    // is zeroed before its first add, whatever order the indices come in.
    int64_t frontier = 0;
    for (int64_t q = 0; q < OHW; ++q) {
      const int64_t k = ip[q];
      if (static_cast<uint64_t>(k) < static_cast<uint64_t>(HW)) {
        if (k >= frontier) {
          const int64_t nf = std::min(HW, k + W);
          std::memset(dp + frontier, 0, sizeof(T) * (nf - frontier));
          frontier = nf;
        }
        dp[k] += gp[q];
      } else {
        bad += (k != -1);
      }
    }
    std::memset(dp + frontier, 0, sizeof(T) * (HW - frontier));
  }
  // The count goes back to Python, which raises: no C++ exception on a user-input path (on
  // the GPU image, one thrown after `import torch` crashed the process - see the closing note).
  return bad;
}

// --------------------------------------------------------------------------- average pooling

// Divisors of one axis, as T: per output, the window size clipped to the padded image
// (count_include_pad) or the number of taps inside the image.
template <typename T>
std::vector<T> axis_counts(const Axis& a, bool include_pad) {
  std::vector<T> c(a.out);
  for (int64_t o = 0; o < a.out; ++o) {
    const int64_t s = a.start(o);
    const int64_t e = std::min(s + a.k, a.in + a.p);
    c[o] = static_cast<T>(include_pad ? e - s : a.tap_hi(o) - a.tap_lo(o));
  }
  return c;
}

// Per-axis divisors (hc per output row, wc per output column); the divisor is hc[oh] * wc[ow].
template <typename T>
struct AvgDiv {
  std::vector<T> hc, wc;
  AvgDiv(const Axis& ah, const Axis& aw, bool include_pad, int64_t divisor_override)
      : hc(axis_counts<T>(ah, include_pad)), wc(axis_counts<T>(aw, include_pad)) {
    if (divisor_override) {
      std::fill(hc.begin(), hc.end(), static_cast<T>(divisor_override));
      std::fill(wc.begin(), wc.end(), T(1));
    }
  }
};

template <typename T, int S>
__attribute__((always_inline)) inline void
avg_forward_plane_impl(const T* plane, T* y, const Axis& ah, const Axis& aw,
                       const T* hc, const T* wd, int64_t c_lo, int64_t c_hi) {
  const int64_t W = aw.in, OH = ah.out, OW = aw.out, kw = aw.k, pw = aw.p;
  const int64_t s = S ? S : aw.s;
  for (int64_t oh = 0; oh < OH; ++oh) {
    T* __restrict o = y + oh * OW;
    const int64_t ih0 = ah.start(oh), ilo = ah.tap_lo(oh), ihi = ah.tap_hi(oh);
    if (ilo >= ihi) {  // window entirely in the padding: 0, as PyTorch
      for (int64_t ow = 0; ow < OW; ++ow) o[ow] = T(0);
      continue;
    }
    const T hd = hc[oh];
    // Interior: sum the taps into the output row, then divide.
    const int64_t n = c_hi - c_lo;
    if (n > 0) {
      T* __restrict oi = o + c_lo;
      for (int64_t q = 0; q < n; ++q) oi[q] = T(0);
      for (int64_t ih = ih0 + ilo; ih < ih0 + ihi; ++ih) {
        for (int64_t j = 0; j < kw; ++j) {
          const T* __restrict xp = plane + ih * W + c_lo * s - pw + j;
          for (int64_t q = 0; q < n; ++q) oi[q] += xp[q * s];
        }
      }
      for (int64_t q = 0; q < n; ++q) oi[q] = oi[q] / (hd * wd[c_lo + q]);
    }
    for (int64_t ow = 0; ow < OW; ++ow) {
      if (ow == c_lo) ow = c_hi;
      if (ow >= OW) break;
      const int64_t iw0 = aw.start(ow), jlo = aw.tap_lo(ow), jhi = aw.tap_hi(ow);
      if (jlo >= jhi) {
        o[ow] = T(0);
        continue;
      }
      T acc = T(0);
      for (int64_t ih = ih0 + ilo; ih < ih0 + ihi; ++ih)
        for (int64_t j = jlo; j < jhi; ++j) acc += plane[ih * W + iw0 + j];
      o[ow] = acc / (hd * wd[ow]);
    }
  }
}
PYDL_SIMD_DISPATCH(PYDL_POOL_TS, PYDL_POOL_TS_ARGS, void, avg_forward_plane,
                   (const T* plane, T* y, const Axis& ah, const Axis& aw, const T* hc, const T* wd, int64_t c_lo,
                    int64_t c_hi),
                   (plane, y, ah, aw, hc, wd, c_lo, c_hi))

template <typename T, int S>
void avg_forward_impl(const T* x, T* y, int64_t planes, const Axis& ah, const Axis& aw,
                      bool include_pad, int64_t divisor_override) {
  int64_t c_lo, c_hi;
  aw.interior(c_lo, c_hi);
  const AvgDiv<T> div(ah, aw, include_pad, divisor_override);
  const int64_t HW = ah.in * aw.in, OHW = ah.out * aw.out;
#pragma omp parallel for schedule(static) \
    if (parallel_worth(planes * (ah.in * aw.in + ah.out * aw.out)))
  for (int64_t pl = 0; pl < planes; ++pl)
    avg_forward_plane<T, S>(x + pl * HW, y + pl * OHW, ah, aw, div.hc.data(), div.wc.data(), c_lo, c_hi);
}

// Backward: y = sum(window)/div, so dx[h, w] = sum over windows covering (h, w) of dy/div.
// Each plane: dx = 0, g = dy/div for one output row, then g is added to every tap of its
// window (a scatter inside a plane that this thread alone owns: no races, fixed order).
template <typename T, int S>
__attribute__((always_inline)) inline void
avg_backward_plane_impl(const T* gy_plane, T* plane, T* g, const Axis& ah,
                        const Axis& aw, const T* hc, const T* wc, int64_t c_lo,
                        int64_t c_hi) {
  const int64_t W = aw.in, OH = ah.out, OW = aw.out, kw = aw.k, pw = aw.p;
  const int64_t s = S ? S : aw.s;
  std::memset(plane, 0, sizeof(T) * ah.in * W);
  for (int64_t oh = 0; oh < OH; ++oh) {
    const int64_t ih0 = ah.start(oh), ilo = ah.tap_lo(oh), ihi = ah.tap_hi(oh);
    if (ilo >= ihi) continue;
    const T* __restrict gy = gy_plane + oh * OW;
    const T hd = hc[oh];
    for (int64_t ow = 0; ow < OW; ++ow) g[ow] = gy[ow] / (hd * wc[ow]);
    const int64_t n = c_hi - c_lo;
    for (int64_t ih = ih0 + ilo; ih < ih0 + ihi; ++ih) {
      T* row = plane + ih * W;
      if (n > 0 && S == 2 && kw == 2) {  // 2-wide, stride-2 windows tile the row: one pass
        T* __restrict dp = row + c_lo * 2 - pw;
        const T* __restrict gi = g + c_lo;
        for (int64_t q = 0; q < n; ++q) {
          const T v = gi[q];
          dp[2 * q] += v;
          dp[2 * q + 1] += v;
        }
      } else if (n > 0) {
        for (int64_t j = 0; j < kw; ++j) {
          T* __restrict dp = row + c_lo * s - pw + j;
          const T* __restrict gi = g + c_lo;
          for (int64_t q = 0; q < n; ++q) dp[q * s] += gi[q];
        }
      }
      for (int64_t ow = 0; ow < OW; ++ow) {
        if (ow == c_lo) ow = c_hi;
        if (ow >= OW) break;
        const int64_t iw0 = aw.start(ow), jlo = aw.tap_lo(ow), jhi = aw.tap_hi(ow);
        for (int64_t j = jlo; j < jhi; ++j) row[iw0 + j] += g[ow];
      }
    }
  }
}
PYDL_SIMD_DISPATCH(PYDL_POOL_TS, PYDL_POOL_TS_ARGS, void, avg_backward_plane,
                   (const T* gy_plane, T* plane, T* g, const Axis& ah, const Axis& aw, const T* hc, const T* wc,
                    int64_t c_lo, int64_t c_hi),
                   (gy_plane, plane, g, ah, aw, hc, wc, c_lo, c_hi))

template <typename T, int S>
void avg_backward_impl(const T* dy, T* dx, int64_t planes, const Axis& ah, const Axis& aw,
                       bool include_pad, int64_t divisor_override) {
  int64_t c_lo, c_hi;
  aw.interior(c_lo, c_hi);
  const AvgDiv<T> div(ah, aw, include_pad, divisor_override);
  const int64_t HW = ah.in * aw.in, OHW = ah.out * aw.out;
#pragma omp parallel if (parallel_worth(planes * (ah.in * aw.in + ah.out * aw.out)))
  {
    std::vector<T> gbuf(aw.out);
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl)
      avg_backward_plane<T, S>(dy + pl * OHW, dx + pl * HW, gbuf.data(), ah, aw, div.hc.data(),
                               div.wc.data(), c_lo, c_hi);
  }
}

template <typename T>
void avg_pool2d_forward(carray<T> x, carray<T> y, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                        int64_t ph, int64_t pw, bool count_include_pad, int64_t divisor_override) {
  PYDL_CHECK(x.ndim() == 4 && y.ndim() == 4, "avg_pool2d_forward: x and y must be 4-D");
  PYDL_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && divisor_override >= 0,
             "avg_pool2d_forward: bad window");
  PYDL_CHECK(y.shape(0) == x.shape(0) && y.shape(1) == x.shape(1), "avg_pool2d_forward: y shape");
  Axis ah{x.shape(2), y.shape(2), kh, sh, ph, 1};
  Axis aw{x.shape(3), y.shape(3), kw, sw, pw, 1};
  const int64_t planes = x.shape(0) * x.shape(1);
  const T* xp = in_ptr(x);
  T* yp = out_ptr(y);
  if (planes == 0 || ah.out == 0 || aw.out == 0) return;
  py::gil_scoped_release release;
  if (sw == 1) avg_forward_impl<T, 1>(xp, yp, planes, ah, aw, count_include_pad, divisor_override);
  else if (sw == 2) avg_forward_impl<T, 2>(xp, yp, planes, ah, aw, count_include_pad, divisor_override);
  else avg_forward_impl<T, 0>(xp, yp, planes, ah, aw, count_include_pad, divisor_override);
}

template <typename T>
void avg_pool2d_backward(carray<T> dy, carray<T> dx, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                         int64_t ph, int64_t pw, bool count_include_pad, int64_t divisor_override) {
  PYDL_CHECK(dy.ndim() == 4 && dx.ndim() == 4, "avg_pool2d_backward: dy and dx must be 4-D");
  PYDL_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && divisor_override >= 0,
             "avg_pool2d_backward: bad window");
  PYDL_CHECK(dy.shape(0) == dx.shape(0) && dy.shape(1) == dx.shape(1), "avg_pool2d_backward: dy shape");
  Axis ah{dx.shape(2), dy.shape(2), kh, sh, ph, 1};
  Axis aw{dx.shape(3), dy.shape(3), kw, sw, pw, 1};
  const int64_t planes = dx.shape(0) * dx.shape(1);
  const T* gp = in_ptr(dy);
  T* dp = out_ptr(dx);
  if (planes == 0 || ah.in == 0 || aw.in == 0) return;
  py::gil_scoped_release release;
  if (sw == 1) avg_backward_impl<T, 1>(gp, dp, planes, ah, aw, count_include_pad, divisor_override);
  else if (sw == 2) avg_backward_impl<T, 2>(gp, dp, planes, ah, aw, count_include_pad, divisor_override);
  else avg_backward_impl<T, 0>(gp, dp, planes, ah, aw, count_include_pad, divisor_override);
}

// ------------------------------------------------------------------ adaptive average pooling

// Sum of n contiguous values in double, four partial sums to break the add chain.
template <typename T>
inline double row_sum(const T* p, int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t q = 0;
  for (; q + 4 <= n; q += 4) {
    a0 += p[q];
    a1 += p[q + 1];
    a2 += p[q + 2];
    a3 += p[q + 3];
  }
  for (; q < n; ++q) a0 += p[q];
  return (a0 + a1) + (a2 + a3);
}

// Global average pooling of planes [0, n): each plane is one contiguous run, summed in double
// in vector lanes (omp simd); an AVX2 clone is picked at load time. (Per-row sums would run
// short loops on small planes such as a ResNet head's 7x7.)
template <typename T>
__attribute__((always_inline)) inline void global_avg_planes_impl(const T* x, T* y, int64_t n, int64_t HW) {
  int64_t pl = 0;
  // Four planes at a time: four independent add chains (one chain is latency-bound on small
  // planes, a vector add per 4 values waiting on the previous one). The caller starts every
  // thread's range at a multiple of 4, so which planes take the quad loop and which the tail
  // (possibly summed in another order) does not depend on the thread count.
  for (; pl + 4 <= n; pl += 4) {
    const T *p0 = x + pl * HW, *p1 = p0 + HW, *p2 = p1 + HW, *p3 = p2 + HW;
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t q = 0; q < HW; ++q) {
      a0 += static_cast<double>(p0[q]);
      a1 += static_cast<double>(p1[q]);
      a2 += static_cast<double>(p2[q]);
      a3 += static_cast<double>(p3[q]);
    }
    const double count = static_cast<double>(HW);
    y[pl] = static_cast<T>(a0 / count);
    y[pl + 1] = static_cast<T>(a1 / count);
    y[pl + 2] = static_cast<T>(a2 / count);
    y[pl + 3] = static_cast<T>(a3 / count);
  }
  for (; pl < n; ++pl) {
    const T* p = x + pl * HW;
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t q = 0; q < HW; ++q) acc += static_cast<double>(p[q]);
    y[pl] = static_cast<T>(acc / static_cast<double>(HW));
  }
}
PYDL_SIMD_DISPATCH(PYDL_POOL_T, <T>, void, global_avg_planes, (const T* x, T* y, int64_t n, int64_t HW), (x, y, n, HW))

template <typename T>
void adaptive_avg_pool2d_forward(carray<T> x, carray<T> y) {
  PYDL_CHECK(x.ndim() == 4 && y.ndim() == 4, "adaptive_avg_pool2d_forward: x and y must be 4-D");
  PYDL_CHECK(y.shape(0) == x.shape(0) && y.shape(1) == x.shape(1), "adaptive_avg_pool2d_forward: y shape");
  const int64_t H = x.shape(2), W = x.shape(3), OH = y.shape(2), OW = y.shape(3);
  const int64_t planes = x.shape(0) * x.shape(1);
  PYDL_CHECK(planes == 0 || (H >= 1 && W >= 1 && OH >= 1 && OW >= 1),
             "adaptive_avg_pool2d_forward: empty image or output");
  const T* xp = in_ptr(x);
  T* yp = out_ptr(y);
  if (planes == 0) return;
  py::gil_scoped_release release;
  if (OH == 1 && OW == 1) {  // global pooling: the window is the whole (contiguous) plane
#pragma omp parallel if (parallel_worth(planes * H * W))
    {
      const int64_t nt = team_size(), t = thread_id(), quads = (planes + 3) / 4;
      const int64_t p0 = std::min(planes, 4 * (quads * t / nt)), p1 = std::min(planes, 4 * (quads * (t + 1) / nt));
      global_avg_planes(xp + p0 * H * W, yp + p0, p1 - p0, H * W);
    }
    return;
  }
#pragma omp parallel for schedule(static) if (parallel_worth(planes * (H * W + OH * OW)))
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* plane = xp + pl * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t hs = adaptive_start(oh, OH, H), he = adaptive_end(oh, OH, H);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t ws = adaptive_start(ow, OW, W), we = adaptive_end(ow, OW, W);
        double acc = 0;
        for (int64_t h = hs; h < he; ++h) acc += row_sum(plane + h * W + ws, we - ws);
        yp[(pl * OH + oh) * OW + ow] = static_cast<T>(acc / static_cast<double>((he - hs) * (we - ws)));
      }
    }
  }
}

// y = mean(window), so dx[h, w] = sum over windows covering (h, w) of dy / window size.
template <typename T>
void adaptive_avg_pool2d_backward(carray<T> dy, carray<T> dx) {
  PYDL_CHECK(dy.ndim() == 4 && dx.ndim() == 4, "adaptive_avg_pool2d_backward: dy and dx must be 4-D");
  PYDL_CHECK(dy.shape(0) == dx.shape(0) && dy.shape(1) == dx.shape(1), "adaptive_avg_pool2d_backward: dy shape");
  const int64_t H = dx.shape(2), W = dx.shape(3), OH = dy.shape(2), OW = dy.shape(3);
  const int64_t planes = dx.shape(0) * dx.shape(1);
  PYDL_CHECK(planes == 0 || (H >= 1 && W >= 1 && OH >= 1 && OW >= 1),
             "adaptive_avg_pool2d_backward: empty image or output");
  const T* gp = in_ptr(dy);
  T* dp = out_ptr(dx);
  if (planes == 0) return;
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (parallel_worth(planes * (H * W + OH * OW)))
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* plane = dp + pl * H * W;
    const T* g = gp + pl * OH * OW;
    if (OH == 1 && OW == 1) {  // global pooling: a broadcast
      const T v = static_cast<T>(g[0] / static_cast<double>(H * W));
      std::fill(plane, plane + H * W, v);
      continue;
    }
    std::memset(plane, 0, sizeof(T) * H * W);
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t hs = adaptive_start(oh, OH, H), he = adaptive_end(oh, OH, H);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t ws = adaptive_start(ow, OW, W), we = adaptive_end(ow, OW, W);
        const T v = static_cast<T>(g[oh * OW + ow] / static_cast<double>((he - hs) * (we - ws)));
        for (int64_t h = hs; h < he; ++h)
          for (int64_t w = ws; w < we; ++w) plane[h * W + w] += v;
      }
    }
  }
}

template <typename T>
void bind_typed(py::module_& m) {
  m.def("max_pool2d_forward", &max_pool2d_forward<T>, py::arg("x"), py::arg("y"), py::arg("indices"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("dh"), py::arg("dw"),
        "y (and indices unless None) <- max pooling of x (N, C, H, W); y's shape gives the output size");
  m.def("max_pool2d_backward", &max_pool2d_backward<T>, py::arg("dy"), py::arg("indices"), py::arg("dx"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("dh"), py::arg("dw"), "dx <- scatter of dy to the argmax indices");
  m.def("avg_pool2d_forward", &avg_pool2d_forward<T>, py::arg("x"), py::arg("y"), py::arg("kh"),
        py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("count_include_pad"), py::arg("divisor_override"),
        "y <- average pooling of x; divisor_override 0 means none");
  m.def("avg_pool2d_backward", &avg_pool2d_backward<T>, py::arg("dy"), py::arg("dx"), py::arg("kh"),
        py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("count_include_pad"), py::arg("divisor_override"), "dx <- gradient of average pooling");
  m.def("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward<T>, py::arg("x"), py::arg("y"),
        "y <- adaptive average pooling of x to y's spatial size");
  m.def("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward<T>, py::arg("dy"), py::arg("dx"),
        "dx <- gradient of adaptive average pooling");
}

}  // namespace

void bind_pool(py::module_& m) {
  m.def("_set_max_pool_backward_stream", [](int mode) {
    PYDL_CHECK(mode >= 0 && mode <= 2, "mode: expected 0 (auto), 1 (streamed) or 2 (direct)");
    return g_max_pool_backward_stream.exchange(mode);
  });
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace pydl
