// softmax, log_softmax and softmax cross entropy: CPU kernels, forward and backward.
//
// Math (per row x of length L, the reduced axis):
//   m = max_c x_c,  s = sum_c exp(x_c - m),  ls = log s,  log p_c = (x_c - m) - ls.
//   Keeping (m, ls) instead of lse = m + ls keeps float32 exact for logits of 1e4:
//   x_c - m is formed first (small), ls is small, so nothing large is rounded.
//   Cross entropy with class index t, class weights w (W = sum_c w_c, all 1 without),
//   label smoothing e over C classes:
//     loss = (1-e) w_t (-log p_t) + (e/C) sum_c w_c (-log p_c)
//          = (1-e) w_t ((m - x_t) + ls) + (e/C) (W ls + sum_c w_c (m - x_c))
//   With probability targets y: q_c = w_c ((1-e) y_c + e/C), S = sum_c q_c,
//     loss = sum_c q_c (-log p_c) = sum_c q_c (m - x_c) + ls S.
//   Every term added is >= 0 (m - x_c >= 0), so no cancellation.
//
// Layout: every op sees its input as (outer, L, inner), the reduced axis L strided by
// inner. Rows r in [0, outer*inner): row r is (o, k) = (r / inner, r % inner). The fast
// path inner == 1 works on contiguous rows in place; inner > 1 gathers a tile of rows
// into a contiguous buffer (C x B -> B x C transpose, cache-sized) and runs the same
// row code, then scatters outputs back.
//
// Threads: OpenMP over fixed chunks of rows (the chunking depends only on the sizes,
// not on the thread count). Inside a row, `omp simd` loops with an inlined polynomial
// exp vectorize (an AVX2/FMA build of every row function, picked at run time from the
// CPU's features; the SSE2 baseline otherwise); rows under 16 elements run scalar.
// The forward keeps per row (m, ls, S = sum_c q_c) for the backward, which is then
// elementwise: dloss/dx_c = g (p_c S - q_c).
// Reductions across rows (the loss sum, the weight sum) run per chunk in row order,
// then over chunks in chunk order: bit-identical results for any thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "vexp.h"

namespace pydl {
namespace {

#define PYDL_INLINE inline __attribute__((always_inline))
#define PYDL_LAMBDA_INLINE __attribute__((always_inline))

// ---------------------------------------------------------------- row primitives

// Rows shorter than this run scalar: the set-up and the lane merge of a SIMD reduction
// cost more than they save there (C = 10 classes).
constexpr int64_t kShortRow = 16;

template <typename T>
PYDL_INLINE T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  if (n < kShortRow) {
    for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
  }
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

template <typename T>
PYDL_INLINE T row_sumexp(const T* x, int64_t n, T m) {
  T s = 0;
  if (n < kShortRow) {
    for (int64_t i = 0; i < n; ++i) s += vexp(x[i] - m);
    return s;
  }
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += vexp(x[i] - m);
  return s;
}

// ---------------------------------------------------------------- row iteration
// Calls f(r, in_0 row, ..., out row) for rows r in [r0, r1) of the (outer, L, inner)
// view; rows are contiguous (length L) whatever inner is. NIN inputs, one optional
// output (nullptr: none).
template <typename T, int NIN>
struct Rows {
  const T* in[NIN];
  T* out;
  int64_t L, inner;
};

template <typename T, int NIN, class F>
PYDL_INLINE void for_rows(const Rows<T, NIN>& a, int64_t r0, int64_t r1, F&& f) {
  const int64_t L = a.L, inner = a.inner;
  if (inner == 1) {
    const T* rows[NIN];
    for (int64_t r = r0; r < r1; ++r) {
      for (int i = 0; i < NIN; ++i) rows[i] = a.in[i] + r * L;
      f(r, rows, a.out ? a.out + r * L : nullptr);
    }
    return;
  }
  // Tile of B rows sharing o: gathered to B x L buffers (about 256 KiB per array).
  const int64_t B = std::max<int64_t>(1, std::min<int64_t>(64, (int64_t(1) << 16) / std::max<int64_t>(L, 1)));
  thread_local std::vector<T> buf;
  buf.resize(static_cast<size_t>((NIN + 1) * B * L));
  for (int64_t r = r0; r < r1;) {
    const int64_t o = r / inner, k0 = r % inner;
    const int64_t nb = std::min<int64_t>({B, inner - k0, r1 - r});
    for (int i = 0; i < NIN; ++i) {
      const T* src = a.in[i] + o * L * inner + k0;
      T* dst = buf.data() + i * B * L;
      for (int64_t c = 0; c < L; ++c)
        for (int64_t j = 0; j < nb; ++j) dst[j * L + c] = src[c * inner + j];
    }
    T* obuf = buf.data() + NIN * B * L;
    for (int64_t j = 0; j < nb; ++j) {
      const T* rows[NIN];
      for (int i = 0; i < NIN; ++i) rows[i] = buf.data() + i * B * L + j * L;
      f(r + j, rows, a.out ? obuf + j * L : nullptr);
    }
    if (a.out) {
      T* dst = a.out + o * L * inner + k0;
      for (int64_t c = 0; c < L; ++c)
        for (int64_t j = 0; j < nb; ++j) dst[c * inner + j] = obuf[j * L + c];
    }
    r += nb;
  }
}

// Fixed chunks of rows (independent of the thread count), run in parallel when the
// work pays for the threads; fn(chunk, r0, r1).
template <class F>
void parallel_chunks(int64_t rows, int64_t L, F&& fn) {
  if (rows <= 0) return;
  const int64_t per = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(L, 1));
  const int64_t nchunks = (rows + per - 1) / per;
  const bool par = rows * std::max<int64_t>(L, 1) >= (int64_t(1) << 15) && nchunks > 1;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t ch = 0; ch < nchunks; ++ch) fn(ch, ch * per, std::min(rows, (ch + 1) * per));
}

inline int64_t chunk_count(int64_t rows, int64_t L) {
  if (rows <= 0) return 0;
  const int64_t per = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(L, 1));
  return (rows + per - 1) / per;
}

// ---------------------------------------------------------------- softmax

template <typename T>
PYDL_INLINE void softmax_fwd_rows_impl(const Rows<T, 1>& a, bool log, int64_t r0, int64_t r1) {
  const int64_t L = a.L;
  for_rows(a, r0, r1, [&](int64_t, const T* const* in, T* y) PYDL_LAMBDA_INLINE {
    const T* x = in[0];
    const T m = row_max(x, L);
    if (log) {
      const T ls = std::log(row_sumexp(x, L, m));
#pragma omp simd
      for (int64_t c = 0; c < L; ++c) y[c] = (x[c] - m) - ls;
    } else {
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < L; ++c) {
        const T e = vexp(x[c] - m);
        y[c] = e;
        s += e;
      }
      const T inv = T(1) / s;
#pragma omp simd
      for (int64_t c = 0; c < L; ++c) y[c] *= inv;
    }
  });
}

// softmax:     dx = y * (dy - sum_c dy_c y_c)    (d y_k / d x_c = y_k (delta_kc - y_c))
// log_softmax: dx = dy - exp(y) * sum_c dy_c     (d y_k / d x_c = delta_kc - p_c)
template <typename T>
PYDL_INLINE void softmax_bwd_rows_impl(const Rows<T, 2>& a, bool log, int64_t r0, int64_t r1) {
  const int64_t L = a.L;
  for_rows(a, r0, r1, [&](int64_t, const T* const* in, T* dx) PYDL_LAMBDA_INLINE {
    const T* dy = in[0];
    const T* y = in[1];
    T acc = 0;
    if (log) {
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < L; ++c) acc += dy[c];
#pragma omp simd
      for (int64_t c = 0; c < L; ++c) dx[c] = dy[c] - vexp(y[c]) * acc;
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < L; ++c) acc += dy[c] * y[c];
#pragma omp simd
      for (int64_t c = 0; c < L; ++c) dx[c] = y[c] * (dy[c] - acc);
    }
  });
}

// ---------------------------------------------------------------- cross entropy

template <typename T>
struct CeArgs {
  const int64_t* target;  // index targets (rows,) or nullptr
  const T* weight;        // (C,) or nullptr
  const T* grad;          // backward: grad_loss, (rows,) or (1,)
  T* loss;                // forward 'none': (rows,); else nullptr
  T* stats;               // (rows, 3): m, ls, S
  double* partial;        // forward: (chunks, 3): loss sum, weight sum, bad count
  double scale;           // backward: 1/D for 'mean', else 1
  int64_t C, ignore_index;
  double eps;             // label smoothing
  T wsum;                 // sum_c w_c (C without weights)
  bool per_row_grad;
};

// Index targets, forward. Rows with an ignored (or invalid: counted, treated as
// ignored, never read out of bounds) target have loss 0 and weight 0.
template <typename T>
PYDL_INLINE void ce_fwd_rows_impl(const Rows<T, 1>& rows, const CeArgs<T>& a, int64_t ch, int64_t r0,
                                  int64_t r1) {
  const int64_t C = a.C;
  const T* w = a.weight;
  double lsum = 0, wtot = 0, bad = 0;
  const T keep = T(1 - a.eps), smooth = T(a.eps / double(C));
  for_rows(rows, r0, r1, [&](int64_t r, const T* const* in, T*) PYDL_LAMBDA_INLINE {
    const T* x = in[0];
    const int64_t t = a.target[r];
    T* st = a.stats + 3 * r;
    if (t == a.ignore_index || t < 0 || t >= C) {
      if (t != a.ignore_index) bad += 1;
      st[0] = st[1] = st[2] = 0;
      if (a.loss) a.loss[r] = 0;
      return;
    }
    const T m = row_max(x, C);
    T s = 0, sm = 0;
    if (a.eps > 0) {
      if (w) {
#pragma omp simd reduction(+ : s, sm)
        for (int64_t c = 0; c < C; ++c) {
          s += vexp(x[c] - m);
          sm += w[c] * (m - x[c]);
        }
      } else {
#pragma omp simd reduction(+ : s, sm)
        for (int64_t c = 0; c < C; ++c) {
          s += vexp(x[c] - m);
          sm += m - x[c];
        }
      }
    } else {
      s = row_sumexp(x, C, m);
    }
    const T ls = std::log(s);
    const T wt = w ? w[t] : T(1);
    T l = keep * wt * ((m - x[t]) + ls);
    if (a.eps > 0) l += smooth * (a.wsum * ls + sm);
    st[0] = m;
    st[1] = ls;
    st[2] = keep * wt + smooth * a.wsum;  // S = sum_c q_c, for the backward
    if (a.loss) a.loss[r] = l;
    lsum += double(l);
    wtot += double(wt);
  });
  a.partial[3 * ch] = lsum;
  a.partial[3 * ch + 1] = wtot;
  a.partial[3 * ch + 2] = bad;
}

// Index targets, backward. loss_i = -sum_c q_c log p_c with
// q_c = (1-e) w_t delta_ct + (e/C) w_c, and d(-log p_k)/dx_c = p_c - delta_kc, so
// dloss/dx_c = p_c S - q_c = p_c g S - b w_c - a delta_ct with S = sum_k q_k (saved
// by the forward), a = g (1-e) w_t, b = g e / C, g = grad_loss (times 1/D for 'mean').
// Ignored rows: 0.
template <typename T>
PYDL_INLINE void ce_bwd_rows_impl(const Rows<T, 1>& rows, const CeArgs<T>& a, int64_t r0, int64_t r1) {
  const int64_t C = a.C;
  const T* w = a.weight;
  for_rows(rows, r0, r1, [&](int64_t r, const T* const* in, T* dx) PYDL_LAMBDA_INLINE {
    const T* x = in[0];
    const int64_t t = a.target[r];
    if (t == a.ignore_index || t < 0 || t >= C) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dx[c] = 0;
      return;
    }
    const T g = T(double(a.per_row_grad ? a.grad[r] : a.grad[0]) * a.scale);
    const T* st = a.stats + 3 * r;
    const T m = st[0], ls = st[1];
    const T wt = w ? w[t] : T(1);
    const T ca = g * T(1 - a.eps) * wt;
    const T cb = g * T(a.eps / double(C));
    const T cp = g * st[2];
    if (w && a.eps > 0) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dx[c] = vexp((x[c] - m) - ls) * cp - cb * w[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dx[c] = vexp((x[c] - m) - ls) * cp - cb;
    }
    dx[t] -= ca;
  });
}

// Probability targets, forward: q_c = w_c ((1-e) y_c + e/C), S = sum q,
// loss = sum_c q_c (m - x_c) + ls S. S is kept for the backward.
template <typename T>
PYDL_INLINE void ce_prob_fwd_rows_impl(const Rows<T, 2>& rows, const CeArgs<T>& a, int64_t ch, int64_t r0,
                                       int64_t r1) {
  const int64_t C = a.C;
  const T* w = a.weight;
  double lsum = 0;
  const T keep = T(1 - a.eps), smooth = T(a.eps / double(C));
  for_rows(rows, r0, r1, [&](int64_t r, const T* const* in, T*) PYDL_LAMBDA_INLINE {
    const T* x = in[0];
    const T* y = in[1];
    const T m = row_max(x, C);
    T s = 0, A = 0, S = 0;
#pragma omp simd reduction(+ : s, A, S)
    for (int64_t c = 0; c < C; ++c) {
      s += vexp(x[c] - m);
      const T q = (w ? w[c] : T(1)) * (keep * y[c] + smooth);
      A += q * (m - x[c]);
      S += q;
    }
    const T ls = std::log(s);
    const T l = A + ls * S;
    T* st = a.stats + 3 * r;
    st[0] = m;
    st[1] = ls;
    st[2] = S;
    if (a.loss) a.loss[r] = l;
    lsum += double(l);
  });
  a.partial[3 * ch] = lsum;
  a.partial[3 * ch + 1] = double(r1 - r0);
  a.partial[3 * ch + 2] = 0;
}

// Probability targets, backward: dloss/dx_c = g (p_c S - q_c).
template <typename T>
PYDL_INLINE void ce_prob_bwd_rows_impl(const Rows<T, 2>& rows, const CeArgs<T>& a, int64_t r0, int64_t r1) {
  const int64_t C = a.C;
  const T* w = a.weight;
  const T keep = T(1 - a.eps), smooth = T(a.eps / double(C));
  for_rows(rows, r0, r1, [&](int64_t r, const T* const* in, T* dx) PYDL_LAMBDA_INLINE {
    const T* x = in[0];
    const T* y = in[1];
    const T g = T(double(a.per_row_grad ? a.grad[r] : a.grad[0]) * a.scale);
    const T* st = a.stats + 3 * r;
    const T m = st[0], ls = st[1], gS = g * st[2];
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T q = (w ? w[c] : T(1)) * (keep * y[c] + smooth);
      dx[c] = vexp((x[c] - m) - ls) * gS - g * q;
    }
  });
}

// Per-dtype entry points compiled twice, AVX2+FMA and the baseline, picked at run time by
// use_avx2(). OpenMP regions stay outside them: outlined OpenMP bodies are not cloned.
#if defined(__x86_64__) && defined(__GNUC__)
#define PYDL_X86_CLONES 1
#define PYDL_DISPATCH(fn, ...) (use_avx2() ? fn##_avx2(__VA_ARGS__) : fn##_base(__VA_ARGS__))
#else
#define PYDL_DISPATCH(fn, ...) fn##_base(__VA_ARGS__)
#endif

#define PYDL_CE_VARIANT(T, ATTR, SUF)                                                                      \
  ATTR void softmax_fwd_rows##SUF(const Rows<T, 1>& a, bool log, int64_t r0, int64_t r1) {                 \
    softmax_fwd_rows_impl(a, log, r0, r1);                                                                 \
  }                                                                                                        \
  ATTR void softmax_bwd_rows##SUF(const Rows<T, 2>& a, bool log, int64_t r0, int64_t r1) {                 \
    softmax_bwd_rows_impl(a, log, r0, r1);                                                                 \
  }                                                                                                        \
  ATTR void ce_fwd_rows##SUF(const Rows<T, 1>& rw, const CeArgs<T>& a, int64_t ch, int64_t r0, int64_t r1) { \
    ce_fwd_rows_impl(rw, a, ch, r0, r1);                                                                   \
  }                                                                                                        \
  ATTR void ce_bwd_rows##SUF(const Rows<T, 1>& rw, const CeArgs<T>& a, int64_t r0, int64_t r1) {           \
    ce_bwd_rows_impl(rw, a, r0, r1);                                                                       \
  }                                                                                                        \
  ATTR void ce_prob_fwd_rows##SUF(const Rows<T, 2>& rw, const CeArgs<T>& a, int64_t ch, int64_t r0,        \
                                  int64_t r1) {                                                            \
    ce_prob_fwd_rows_impl(rw, a, ch, r0, r1);                                                              \
  }                                                                                                        \
  ATTR void ce_prob_bwd_rows##SUF(const Rows<T, 2>& rw, const CeArgs<T>& a, int64_t r0, int64_t r1) {      \
    ce_prob_bwd_rows_impl(rw, a, r0, r1);                                                                  \
  }

PYDL_CE_VARIANT(float, , _base)
PYDL_CE_VARIANT(double, , _base)
#ifdef PYDL_X86_CLONES
PYDL_CE_VARIANT(float, PYDL_AVX2, _avx2)
PYDL_CE_VARIANT(double, PYDL_AVX2, _avx2)
#endif
#undef PYDL_CE_VARIANT


// ---------------------------------------------------------------- bindings

void check_view(const py::array& a, const char* name, int64_t n) {
  PYDL_CHECK(numel(a) == n, name << ": expected " << n << " elements, got " << numel(a));
}

template <typename T>
void softmax_forward(const carray<T>& x, carray<T>& y, int64_t outer, int64_t L, int64_t inner, bool log) {
  PYDL_CHECK(outer >= 0 && L >= 0 && inner >= 0, "negative size");
  check_view(x, "x", outer * L * inner);
  check_view(y, "y", outer * L * inner);
  if (L == 0) return;
  Rows<T, 1> a{{in_ptr(x)}, out_ptr(y), L, inner};
  py::gil_scoped_release nogil;
  parallel_chunks(outer * inner, L, [&](int64_t, int64_t r0, int64_t r1) { PYDL_DISPATCH(softmax_fwd_rows, a, log, r0, r1); });
}

template <typename T>
void softmax_backward(const carray<T>& dy, const carray<T>& y, carray<T>& dx, int64_t outer, int64_t L,
                      int64_t inner, bool log) {
  PYDL_CHECK(outer >= 0 && L >= 0 && inner >= 0, "negative size");
  check_view(dy, "grad_out", outer * L * inner);
  check_view(y, "y", outer * L * inner);
  check_view(dx, "grad_x", outer * L * inner);
  if (L == 0) return;
  Rows<T, 2> a{{in_ptr(dy), in_ptr(y)}, out_ptr(dx), L, inner};
  py::gil_scoped_release nogil;
  parallel_chunks(outer * inner, L, [&](int64_t, int64_t r0, int64_t r1) { PYDL_DISPATCH(softmax_bwd_rows, a, log, r0, r1); });
}

template <typename T>
T weight_sum(const T* w, int64_t C) {
  if (!w) return T(C);
  T s = 0;
  for (int64_t c = 0; c < C; ++c) s += w[c];
  return s;
}

// reduction: 0 'none', 1 'mean', 2 'sum'. Writes loss ((rows,) for 'none', else (1,)),
// stats (rows, 3) and norm (2,) float64 = [backward scale (1/D for 'mean'), number of
// invalid targets]. D = sum of target weights of the non-ignored rows (index targets)
// or the number of rows (probabilities): PyTorch's divisor.
template <typename T, bool PROB>
void ce_forward(const carray<T>& logits, const py::array& target, const carray<T>& weight, carray<T>& loss,
                carray<T>& stats, carray<double>& norm, int64_t outer, int64_t C, int64_t inner,
                int64_t ignore_index, double eps, int reduction, bool has_weight) {
  PYDL_CHECK(outer >= 0 && C >= 1 && inner >= 0, "bad sizes");
  PYDL_CHECK(reduction >= 0 && reduction <= 2, "reduction code");
  const int64_t rows = outer * inner;
  check_view(logits, "logits", rows * C);
  check_view(target, "target", PROB ? rows * C : rows);
  check_view(stats, "stats", rows * 3);
  check_view(loss, "loss", reduction == 0 ? rows : 1);
  check_view(norm, "norm", 2);
  if (has_weight) check_view(weight, "weight", C);
  CeArgs<T> a{};
  a.weight = has_weight ? in_ptr(weight) : nullptr;
  a.loss = reduction == 0 ? out_ptr(loss) : nullptr;
  a.stats = out_ptr(stats);
  a.C = C;
  a.ignore_index = ignore_index;
  a.eps = eps;
  a.wsum = weight_sum(a.weight, C);
  std::vector<double> partial(static_cast<size_t>(3 * std::max<int64_t>(chunk_count(rows, C), 1)), 0.0);
  a.partial = partial.data();
  double* nrm = out_ptr(norm);
  T* lout = out_ptr(loss);
  carray<T> tgt_f;
  carray<int64_t> tgt_i;
  Rows<T, PROB ? 2 : 1> rw{};
  rw.in[0] = in_ptr(logits);
  if constexpr (PROB) {
    tgt_f = py::cast<carray<T>>(target);
    rw.in[1] = tgt_f.data();
  } else {
    tgt_i = py::cast<carray<int64_t>>(target);
    a.target = tgt_i.data();
  }
  rw.out = nullptr;
  rw.L = C;
  rw.inner = inner;
  {
    py::gil_scoped_release nogil;
    parallel_chunks(rows, C, [&](int64_t ch, int64_t r0, int64_t r1) {
      if constexpr (PROB)
        PYDL_DISPATCH(ce_prob_fwd_rows, rw, a, ch, r0, r1);
      else
        PYDL_DISPATCH(ce_fwd_rows, rw, a, ch, r0, r1);
    });
  }
  double lsum = 0, wtot = 0, bad = 0;
  for (size_t ch = 0; ch < partial.size() / 3; ++ch) {
    lsum += partial[3 * ch];
    wtot += partial[3 * ch + 1];
    bad += partial[3 * ch + 2];
  }
  const double scale = reduction == 1 ? 1.0 / wtot : 1.0;  // 0 rows kept: inf, loss NaN
  if (reduction == 1) lout[0] = T(lsum / wtot);                // 0 / 0 -> NaN, as PyTorch
  if (reduction == 2) lout[0] = T(lsum);
  nrm[0] = scale;
  nrm[1] = bad;
}

// Returns the number of invalid class indices (0 for probability targets): they get a zero
// gradient like ignored ones, and the caller raises. Counting here, in the pass that reads the
// targets anyway, spares the caller a separate check when the forward was skipped (saved=).
template <typename T, bool PROB>
int64_t ce_backward(const carray<T>& grad, const carray<T>& logits, const py::array& target,
                 const carray<T>& weight, const carray<T>& stats, const carray<double>& norm, carray<T>& dx,
                 int64_t outer, int64_t C, int64_t inner, int64_t ignore_index, double eps, int reduction,
                 bool has_weight) {
  PYDL_CHECK(outer >= 0 && C >= 1 && inner >= 0, "bad sizes");
  const int64_t rows = outer * inner;
  check_view(logits, "logits", rows * C);
  check_view(dx, "grad_logits", rows * C);
  check_view(target, "target", PROB ? rows * C : rows);
  check_view(stats, "stats", rows * 3);
  check_view(grad, "grad_loss", reduction == 0 ? rows : 1);
  check_view(norm, "norm", 2);
  if (has_weight) check_view(weight, "weight", C);
  CeArgs<T> a{};
  a.weight = has_weight ? in_ptr(weight) : nullptr;
  a.grad = in_ptr(grad);
  a.stats = const_cast<T*>(in_ptr(stats));
  a.scale = norm.data()[0];
  a.C = C;
  a.ignore_index = ignore_index;
  a.eps = eps;
  a.wsum = weight_sum(a.weight, C);
  a.per_row_grad = reduction == 0;
  carray<T> tgt_f;
  carray<int64_t> tgt_i;
  Rows<T, PROB ? 2 : 1> rw{};
  rw.in[0] = in_ptr(logits);
  if constexpr (PROB) {
    tgt_f = py::cast<carray<T>>(target);
    rw.in[1] = tgt_f.data();
  } else {
    tgt_i = py::cast<carray<int64_t>>(target);
    a.target = tgt_i.data();
  }
  rw.out = out_ptr(dx);
  rw.L = C;
  rw.inner = inner;
  py::gil_scoped_release nogil;
  std::atomic<int64_t> bad{0};
  parallel_chunks(rows, C, [&](int64_t, int64_t r0, int64_t r1) {
    if constexpr (PROB) {
      PYDL_DISPATCH(ce_prob_bwd_rows, rw, a, r0, r1);
    } else {
      PYDL_DISPATCH(ce_bwd_rows, rw, a, r0, r1);
      int64_t n = 0;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = a.target[r];
        n += t != ignore_index && (t < 0 || t >= C);
      }
      if (n) bad += n;
    }
  });
  return bad.load();
}

template <typename T>
void bind_dtype(py::module_& m) {
  m.def("softmax_forward", &softmax_forward<T>, py::arg("x").noconvert(), py::arg("y").noconvert(),
        py::arg("outer"), py::arg("L"), py::arg("inner"), py::arg("log"));
  m.def("softmax_backward", &softmax_backward<T>, py::arg("grad_out").noconvert(), py::arg("y").noconvert(),
        py::arg("grad_x").noconvert(), py::arg("outer"), py::arg("L"), py::arg("inner"), py::arg("log"));
  m.def("cross_entropy_forward", &ce_forward<T, false>, py::arg("logits").noconvert(), py::arg("target"),
        py::arg("weight").noconvert(), py::arg("loss").noconvert(), py::arg("stats").noconvert(),
        py::arg("norm").noconvert(), py::arg("outer"), py::arg("C"), py::arg("inner"), py::arg("ignore_index"),
        py::arg("label_smoothing"), py::arg("reduction"), py::arg("has_weight"));
  m.def("cross_entropy_prob_forward", &ce_forward<T, true>, py::arg("logits").noconvert(), py::arg("target"),
        py::arg("weight").noconvert(), py::arg("loss").noconvert(), py::arg("stats").noconvert(),
        py::arg("norm").noconvert(), py::arg("outer"), py::arg("C"), py::arg("inner"), py::arg("ignore_index"),
        py::arg("label_smoothing"), py::arg("reduction"), py::arg("has_weight"));
  m.def("cross_entropy_backward", &ce_backward<T, false>, py::arg("grad_loss").noconvert(),
        py::arg("logits").noconvert(), py::arg("target"), py::arg("weight").noconvert(),
        py::arg("stats").noconvert(), py::arg("norm").noconvert(), py::arg("grad_logits").noconvert(),
        py::arg("outer"), py::arg("C"), py::arg("inner"), py::arg("ignore_index"), py::arg("label_smoothing"),
        py::arg("reduction"), py::arg("has_weight"));
  m.def("cross_entropy_prob_backward", &ce_backward<T, true>, py::arg("grad_loss").noconvert(),
        py::arg("logits").noconvert(), py::arg("target"), py::arg("weight").noconvert(),
        py::arg("stats").noconvert(), py::arg("norm").noconvert(), py::arg("grad_logits").noconvert(),
        py::arg("outer"), py::arg("C"), py::arg("inner"), py::arg("ignore_index"), py::arg("label_smoothing"),
        py::arg("reduction"), py::arg("has_weight"));
}

}  // namespace

void bind_cross_entropy(py::module_& m) {
  bind_dtype<float>(m);
  bind_dtype<double>(m);
}

}  // namespace pydl
