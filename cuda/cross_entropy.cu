// softmax, log_softmax and softmax cross entropy: CUDA kernels, forward and backward.
//
// Math (row x of length C, the reduced axis; as csrc/cross_entropy.cpp):
//   m = max_c x_c, s = sum_c exp(x_c - m), ls = log s, log p_c = (x_c - m) - ls.
//   One read of the row: an online max and rescaled sum (when x_c > m: s *= exp(m - x_c),
//   m = x_c), merged across threads as (m, s) (+) (m', s') = (M, s e^(m-M) + s' e^(m'-M)).
//   Cross entropy with target distribution q (index t: q_c = (1-e) w_t [c == t] + (e/C) w_c;
//   probabilities y: q_c = w_c ((1-e) y_c + e/C)), S = sum_c q_c:
//     loss = sum_c q_c (m - x_c) + ls S, accumulated in the same pass as
//     sum_c q_c (x0 - x_c) + S (m - x0) with x0 = the row's first element (a fixed
//     reference, so no rescaling; x0 - x_c is exact where it matters, near the max).
//   Backward (elementwise, one more read of the row, one write):
//     dloss/dx_c = g (p_c S - q_c),  p_c = exp((x_c - m) - ls),
//   with (m, ls, S) saved per row by the forward and g = grad_loss (times 1/D for 'mean').
//
// Layout: (outer, C, inner) with the reduced axis strided by inner; R = outer * inner rows,
// row r = (o, k) starts at o*C*inner + k with element stride inner.
//
// Thread mapping: a group of G threads per row. inner == 1 (contiguous rows): G = 32 (a
// warp, 8 rows per 256-thread block) for C <= 2048, G = 512 (the block) above, with
// 16-byte vector loads/stores on the aligned middle of each row. inner > 1: G = 1, one
// thread per row, neighbouring threads reading neighbouring k (coalesced). Rows are
// visited by a grid-stride loop over row groups.
//
// Determinism: per-thread sums in element order, butterfly shuffles (every lane merges
// the same two values, commutatively), block merges in warp order; the loss sum goes
// through per-block partials (rows of a block in order) and a one-block finalize in fixed
// order. Grid sizes depend on the sizes only. No atomics.
#include <cfloat>

#include "common.cuh"

namespace pydl {
namespace {

constexpr int kMaxGrid = 65535 * 8;

template <typename T>
struct V16;
template <>
struct V16<float> {
  using type = float4;
};
template <>
struct V16<double> {
  using type = double2;
};

// Vector components by constant index (after unrolling), so vectors stay in registers
// (taking a local vector's address would put it in local memory).
__device__ __forceinline__ float comp(const float4& v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }
__device__ __forceinline__ double comp(const double2& v, int j) { return j == 0 ? v.x : v.y; }
__device__ __forceinline__ void set_comp(float4& v, int j, float x) {
  if (j == 0) v.x = x; else if (j == 1) v.y = x; else if (j == 2) v.z = x; else v.w = x;
}
__device__ __forceinline__ void set_comp(double2& v, int j, double x) {
  if (j == 0) v.x = x; else v.y = x;
}

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
template <typename T>
__device__ __forceinline__ T lowest();
template <>
__device__ __forceinline__ float lowest<float>() { return -FLT_MAX; }
template <>
__device__ __forceinline__ double lowest<double>() { return -DBL_MAX; }

// Thread `lane` of a group of G visits its elements of a row of n elements (stride
// `stride`): out[c] = f(c, a[c], b[c]) (b only when NIN == 2, out only when OUT). With
// stride 1 and all pointers equally aligned, the middle goes by 16-byte vectors.
template <typename T, int G, int NIN, bool OUT, class F>
__device__ __forceinline__ void row_loop(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                                         int64_t n, int64_t stride, int lane, F&& f) {
  auto one = [&](int64_t c) {
    const int64_t o = c * stride;
    const T r = f(c, a[o], NIN > 1 ? b[o] : T(0));
    if (OUT) out[o] = r;
  };
  constexpr int N = 16 / sizeof(T);
  using V = typename V16<T>::type;
  const uintptr_t al = reinterpret_cast<uintptr_t>(a) & 15;
  const bool vec = stride == 1 && (NIN < 2 || (reinterpret_cast<uintptr_t>(b) & 15) == al) &&
                   (!OUT || (reinterpret_cast<uintptr_t>(out) & 15) == al);
  if (!vec) {
    for (int64_t c = lane; c < n; c += G) one(c);
    return;
  }
  int64_t head = static_cast<int64_t>(((16 - al) & 15) / sizeof(T));
  if (head > n) head = n;
  for (int64_t c = lane; c < head; c += G) one(c);
  const int64_t nv = (n - head) / N;
#pragma unroll 4
  for (int64_t i = lane; i < nv; i += G) {
    const int64_t c0 = head + i * N;
    V va = *reinterpret_cast<const V*>(a + c0);
    V vb = va;
    if (NIN > 1) vb = *reinterpret_cast<const V*>(b + c0);
    V vo = va;
#pragma unroll
    for (int j = 0; j < N; ++j) set_comp(vo, j, f(c0 + j, comp(va, j), comp(vb, j)));
    if (OUT) *reinterpret_cast<V*>(out + c0) = vo;
  }
  for (int64_t c = head + nv * N + lane; c < n; c += G) one(c);
}

// Per-thread state: online (m, s) and two plain sums.
template <typename T>
struct St {
  T m, s, a, b;
  __device__ __forceinline__ void merge(const St& o) {
    const T M = m > o.m ? m : o.m;
    s = s * dexp(m - M) + o.s * dexp(o.m - M);  // m starts at lowest(), never -inf: no NaN
    m = M;
    a += o.a;
    b += o.b;
  }
  __device__ __forceinline__ void add(T v) {  // one element into (m, s)
    if (v > m) {
      s *= dexp(m - v);
      m = v;
    }
    s += dexp(v - m);
  }
};

template <typename T>
__device__ __forceinline__ St<T> shfl_xor(const St<T>& v, int mask) {
  St<T> o;
  o.m = __shfl_xor_sync(0xffffffffu, v.m, mask);
  o.s = __shfl_xor_sync(0xffffffffu, v.s, mask);
  o.a = __shfl_xor_sync(0xffffffffu, v.a, mask);
  o.b = __shfl_xor_sync(0xffffffffu, v.b, mask);
  return o;
}

// Merges st over the group of G threads; every thread of the group ends with the result.
// G == blockDim.x for G > 32 (all threads of the block must call it).
template <typename T, int G>
__device__ __forceinline__ void group_reduce(St<T>& st, St<T>* sh) {
  if constexpr (G == 1) {
    return;
  } else {
#pragma unroll
    for (int mask = 1; mask < (G < 32 ? G : 32); mask <<= 1) st.merge(shfl_xor(st, mask));
    if constexpr (G > 32) {
      constexpr int NW = G / 32;
      const int warp = threadIdx.x / 32;
      if ((threadIdx.x & 31) == 0) sh[warp] = st;
      __syncthreads();
      St<T> r = sh[0];
#pragma unroll
      for (int w = 1; w < NW; ++w) r.merge(sh[w]);
      st = r;
      __syncthreads();  // sh is reused by the next row
    }
  }
}

template <int G>
constexpr int block_for() {
  return G > 32 ? G : 256;
}

// ---------------------------------------------------------------- softmax

template <typename T, int G>
__global__ void __launch_bounds__(block_for<G>()) softmax_forward_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                         int64_t rows, int64_t L, int64_t inner,
                                                                         bool log) {
  constexpr int RPB = block_for<G>() / G;
  __shared__ St<T> sh[32];
  const int lane = threadIdx.x % G, grp = threadIdx.x / G;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * RPB; base < rows; base += static_cast<int64_t>(gridDim.x) * RPB) {
    const int64_t r = base + grp;
    if (G > 32 || r < rows) {  // G > 32: one row per block, r < rows holds
      const int64_t o = r / inner, k = r - o * inner;
      const T* xr = x + o * L * inner + k;
      T* yr = y + o * L * inner + k;
      St<T> st{lowest<T>(), T(0), T(0), T(0)};
      row_loop<T, G, 1, false>(xr, nullptr, nullptr, L, inner, lane, [&](int64_t, T v, T) {
        st.add(v);
        return T(0);
      });
      group_reduce<T, G>(st, sh);
      const T m = st.m, ls = dlog(st.s), inv = T(1) / st.s;
      if (log) {
        row_loop<T, G, 1, true>(xr, nullptr, yr, L, inner, lane, [&](int64_t, T v, T) { return (v - m) - ls; });
      } else {
        row_loop<T, G, 1, true>(xr, nullptr, yr, L, inner, lane, [&](int64_t, T v, T) { return dexp(v - m) * inv; });
      }
    }
  }
}

// softmax:     dx = y (dy - sum_c dy_c y_c)   (dy_k/dx_c = y_k (delta_kc - y_c))
// log_softmax: dx = dy - exp(y) sum_c dy_c    (dy_k/dx_c = delta_kc - p_c)
template <typename T, int G>
__global__ void __launch_bounds__(block_for<G>()) softmax_backward_kernel(const T* __restrict__ dy,
                                                                          const T* __restrict__ y,
                                                                          T* __restrict__ dx, int64_t rows, int64_t L,
                                                                          int64_t inner, bool log) {
  constexpr int RPB = block_for<G>() / G;
  __shared__ St<T> sh[32];
  const int lane = threadIdx.x % G, grp = threadIdx.x / G;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * RPB; base < rows; base += static_cast<int64_t>(gridDim.x) * RPB) {
    const int64_t r = base + grp;
    if (G > 32 || r < rows) {
      const int64_t off = (r / inner) * L * inner + r % inner;
      St<T> st{lowest<T>(), T(0), T(0), T(0)};
      row_loop<T, G, 2, false>(dy + off, y + off, nullptr, L, inner, lane, [&](int64_t, T g, T v) {
        st.a += log ? g : g * v;
        return T(0);
      });
      group_reduce<T, G>(st, sh);
      const T acc = st.a;
      if (log) {
        row_loop<T, G, 2, true>(dy + off, y + off, dx + off, L, inner, lane,
                                [&](int64_t, T g, T v) { return g - dexp(v) * acc; });
      } else {
        row_loop<T, G, 2, true>(dy + off, y + off, dx + off, L, inner, lane,
                                [&](int64_t, T g, T v) { return v * (g - acc); });
      }
    }
  }
}

// ---------------------------------------------------------------- cross entropy

struct CeParams {
  int64_t rows, C, inner, ignore_index;
  double eps;
  bool per_row_grad;
};

// Forward: per row the loss (into loss[r] when given), stats (m, ls, S); per block the
// partial sums (loss, divisor weight, invalid targets) of its rows in row order.
// Invalid class indices are counted and treated as ignored (never read out of bounds).
template <typename T, int G, bool PROB, bool SMOOTH>
__global__ void __launch_bounds__(block_for<G>()) ce_forward_kernel(const T* __restrict__ x,
                                                                    const int64_t* __restrict__ ti,
                                                                    const T* __restrict__ tp,
                                                                    const T* __restrict__ w, T* __restrict__ loss,
                                                                    T* __restrict__ stats,
                                                                    double* __restrict__ partial, CeParams p) {
  constexpr int RPB = block_for<G>() / G;
  __shared__ St<T> sh[32];
  __shared__ double rowv[RPB][3];
  const int lane = threadIdx.x % G, grp = threadIdx.x / G;
  const int64_t C = p.C, inner = p.inner;
  const T keep = T(1.0 - p.eps), smooth = T(p.eps / double(C));
  double sum_l = 0, sum_w = 0, sum_bad = 0;  // thread 0
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * RPB; base < p.rows;
       base += static_cast<int64_t>(gridDim.x) * RPB) {
    const int64_t r = base + grp;
    double vl = 0, vw = 0, vb = 0;
    if (G > 32 || r < p.rows) {
      const int64_t off = (r / inner) * C * inner + r % inner;
      const T* xr = x + off;
      int64_t t = 0;
      bool valid = true;
      if (!PROB) {
        t = ti[r];
        valid = t != p.ignore_index && t >= 0 && t < C;
        vb = (!valid && t != p.ignore_index) ? 1.0 : 0.0;
      }
      if (valid) {
        const T x0 = xr[0];
        St<T> st{lowest<T>(), T(0), T(0), T(0)};
        row_loop<T, G, PROB ? 2 : 1, false>(xr, PROB ? tp + off : nullptr, nullptr, C, inner, lane,
                                            [&](int64_t c, T v, T yc) {
                                              st.add(v);
                                              if (PROB) {
                                                const T q = (w ? w[c] : T(1)) * (keep * yc + smooth);
                                                st.a += q * (x0 - v);
                                                st.b += q;
                                              } else if (SMOOTH) {
                                                const T wc = w ? w[c] : T(1);
                                                st.a += wc * (x0 - v);
                                                st.b += wc;
                                              }
                                              return T(0);
                                            });
        group_reduce<T, G>(st, sh);
        if (lane == 0) {
          const T m = st.m, ls = dlog(st.s);
          T l, S;
          if (PROB) {
            S = st.b;
            l = st.a + S * (m - x0) + ls * S;
            vw = 1.0;
          } else {
            const T xt = xr[t * inner];
            const T wt = w ? w[t] : T(1);
            l = keep * wt * ((m - xt) + ls);
            S = keep * wt;
            if (SMOOTH) {  // sum_c w_c (m - x_c) + W ls, W = st.b
              l += smooth * (st.a + st.b * (m - x0) + st.b * ls);
              S += smooth * st.b;
            }
            vw = double(wt);
          }
          stats[3 * r] = m;
          stats[3 * r + 1] = ls;
          stats[3 * r + 2] = S;
          if (loss) loss[r] = l;
          vl = double(l);
        }
      } else if (lane == 0) {
        stats[3 * r] = T(0);
        stats[3 * r + 1] = T(0);
        stats[3 * r + 2] = T(0);
        if (loss) loss[r] = T(0);
      }
    }
    if (lane == 0) {
      rowv[grp][0] = vl;
      rowv[grp][1] = vw;
      rowv[grp][2] = vb;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int g = 0; g < RPB; ++g) {
        sum_l += rowv[g][0];
        sum_w += rowv[g][1];
        sum_bad += rowv[g][2];
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[3 * static_cast<int64_t>(blockIdx.x)] = sum_l;
    partial[3 * static_cast<int64_t>(blockIdx.x) + 1] = sum_w;
    partial[3 * static_cast<int64_t>(blockIdx.x) + 2] = sum_bad;
  }
}

// One block: sums the partials in a fixed order; writes the reduced loss (reduction 1
// 'mean': sum / D, 0 / 0 = NaN as PyTorch; 2 'sum') and norm = [backward scale, invalid].
template <typename T>
__global__ void __launch_bounds__(256) ce_finalize_kernel(const double* __restrict__ partial, int64_t nparts,
                                                          T* __restrict__ loss, double* __restrict__ norm,
                                                          int reduction) {
  __shared__ double sh[3][256];
  double l = 0, d = 0, b = 0;
  for (int64_t i = threadIdx.x; i < nparts; i += 256) {
    l += partial[3 * i];
    d += partial[3 * i + 1];
    b += partial[3 * i + 2];
  }
  sh[0][threadIdx.x] = l;
  sh[1][threadIdx.x] = d;
  sh[2][threadIdx.x] = b;
  __syncthreads();
  for (int h = 128; h > 0; h >>= 1) {
    if (threadIdx.x < h) {
      for (int k = 0; k < 3; ++k) sh[k][threadIdx.x] += sh[k][threadIdx.x + h];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double L = sh[0][0], D = sh[1][0];
    if (reduction == 1) loss[0] = T(L / D);
    if (reduction == 2) loss[0] = T(L);
    norm[0] = reduction == 1 ? 1.0 / D : 1.0;
    norm[1] = sh[2][0];
  }
}

// Backward: dx_c = g (p_c S - q_c); index targets: g S p_c - g (e/C) w_c - g (1-e) w_t [c == t],
// ignored (or invalid) rows 0; probabilities: g S p_c - g w_c ((1-e) y_c + e/C).
template <typename T, int G, bool PROB>
__global__ void __launch_bounds__(block_for<G>()) ce_backward_kernel(
    const T* __restrict__ grad, const T* __restrict__ x, const int64_t* __restrict__ ti, const T* __restrict__ tp,
    const T* __restrict__ w, const T* __restrict__ stats, const double* __restrict__ norm, T* __restrict__ dx,
    CeParams p) {
  constexpr int RPB = block_for<G>() / G;
  const int lane = threadIdx.x % G, grp = threadIdx.x / G;
  const int64_t C = p.C, inner = p.inner;
  const T keep = T(1.0 - p.eps), smooth = T(p.eps / double(C));
  const double scale = norm[0];
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * RPB; base < p.rows;
       base += static_cast<int64_t>(gridDim.x) * RPB) {
    const int64_t r = base + grp;
    if (!(G > 32 || r < p.rows)) continue;
    const int64_t off = (r / inner) * C * inner + r % inner;
    int64_t t = 0;
    if (!PROB) {
      t = ti[r];
      if (t == p.ignore_index || t < 0 || t >= C) {
        row_loop<T, G, 1, true>(x + off, nullptr, dx + off, C, inner, lane, [&](int64_t, T, T) { return T(0); });
        continue;
      }
    }
    const T g = T(double(grad[p.per_row_grad ? r : 0]) * scale);
    const T m = stats[3 * r], ls = stats[3 * r + 1], gS = g * stats[3 * r + 2];
    if (PROB) {
      row_loop<T, G, 2, true>(x + off, tp + off, dx + off, C, inner, lane, [&](int64_t c, T v, T yc) {
        const T q = (w ? w[c] : T(1)) * (keep * yc + smooth);
        return dexp((v - m) - ls) * gS - g * q;
      });
    } else {
      const T ca = g * keep * (w ? w[t] : T(1)), cb = g * smooth;
      row_loop<T, G, 1, true>(x + off, nullptr, dx + off, C, inner, lane, [&](int64_t c, T v, T) {
        const T d = dexp((v - m) - ls) * gS - cb * (w ? w[c] : T(1));
        return c == t ? d - ca : d;
      });
    }
  }
}

// ---------------------------------------------------------------- launch

int group_for(int64_t C, int64_t inner) {
  if (inner != 1) return 1;
  return C <= 2048 ? 32 : 512;
}

unsigned int grid_rows(int64_t rows, int G) {
  const int64_t rpb = (G > 32 ? G : 256) / G;
  int64_t g = (rows + rpb - 1) / rpb;
  if (g > kMaxGrid) g = kMaxGrid;
  return static_cast<unsigned int>(g < 1 ? 1 : g);
}

template <typename T>
void softmax_forward_t(dptr x, dptr y, int64_t rows, int64_t L, int64_t inner, bool log, cudaStream_t s) {
  const int G = group_for(L, inner);
  const unsigned grid = grid_rows(rows, G);
  if (G == 1) {
    softmax_forward_kernel<T, 1><<<grid, block_for<1>(), 0, s>>>(as_ptr<const T>(x), as_ptr<T>(y), rows, L, inner, log);
  } else if (G == 32) {
    softmax_forward_kernel<T, 32><<<grid, block_for<32>(), 0, s>>>(as_ptr<const T>(x), as_ptr<T>(y), rows, L, inner, log);
  } else {
    softmax_forward_kernel<T, 512><<<grid, block_for<512>(), 0, s>>>(as_ptr<const T>(x), as_ptr<T>(y), rows, L, inner, log);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void softmax_backward_t(dptr dy, dptr y, dptr dx, int64_t rows, int64_t L, int64_t inner, bool log, cudaStream_t s) {
  const int G = group_for(L, inner);
  const unsigned grid = grid_rows(rows, G);
  auto a = as_ptr<const T>(dy);
  auto b = as_ptr<const T>(y);
  auto o = as_ptr<T>(dx);
  if (G == 1) {
    softmax_backward_kernel<T, 1><<<grid, block_for<1>(), 0, s>>>(a, b, o, rows, L, inner, log);
  } else if (G == 32) {
    softmax_backward_kernel<T, 32><<<grid, block_for<32>(), 0, s>>>(a, b, o, rows, L, inner, log);
  } else {
    softmax_backward_kernel<T, 512><<<grid, block_for<512>(), 0, s>>>(a, b, o, rows, L, inner, log);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T, int G, bool PROB>
void ce_forward_g(const T* x, const int64_t* ti, const T* tp, const T* w, T* loss, T* stats, double* partial,
                  const CeParams& p, unsigned grid, cudaStream_t s) {
  if (p.eps > 0 && !PROB) {
    ce_forward_kernel<T, G, PROB, true><<<grid, block_for<G>(), 0, s>>>(x, ti, tp, w, loss, stats, partial, p);
  } else {
    ce_forward_kernel<T, G, PROB, false><<<grid, block_for<G>(), 0, s>>>(x, ti, tp, w, loss, stats, partial, p);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T, bool PROB>
void ce_forward_t(dptr x, dptr target, dptr w, dptr loss, dptr stats, dptr norm, dptr work, int64_t nwork,
                  const CeParams& p, int reduction, cudaStream_t s) {
  const int G = group_for(p.C, p.inner);
  const unsigned grid = grid_rows(p.rows, G);
  PYDL_CHECK(p.rows == 0 || nwork >= 3 * static_cast<int64_t>(grid), "workspace too small");
  const T* xp = as_ptr<const T>(x);
  const int64_t* ti = PROB ? nullptr : as_ptr<const int64_t>(target);
  const T* tp = PROB ? as_ptr<const T>(target) : nullptr;
  const T* wp = w ? as_ptr<const T>(w) : nullptr;
  T* lp = reduction == 0 ? as_ptr<T>(loss) : nullptr;
  T* sp = as_ptr<T>(stats);
  double* part = as_ptr<double>(work);
  if (p.rows > 0) {
    if (G == 1)
      ce_forward_g<T, 1, PROB>(xp, ti, tp, wp, lp, sp, part, p, grid, s);
    else if (G == 32)
      ce_forward_g<T, 32, PROB>(xp, ti, tp, wp, lp, sp, part, p, grid, s);
    else
      ce_forward_g<T, 512, PROB>(xp, ti, tp, wp, lp, sp, part, p, grid, s);
  }
  ce_finalize_kernel<T><<<1, 256, 0, s>>>(part, p.rows > 0 ? static_cast<int64_t>(grid) : 0,
                                           reduction == 0 ? nullptr : as_ptr<T>(loss), as_ptr<double>(norm), reduction);
  PYDL_LAUNCH_CHECK();
}

template <typename T, bool PROB>
void ce_backward_t(dptr grad, dptr x, dptr target, dptr w, dptr stats, dptr norm, dptr dx, const CeParams& p,
                   cudaStream_t s) {
  if (p.rows == 0) return;
  const int G = group_for(p.C, p.inner);
  const unsigned grid = grid_rows(p.rows, G);
  const T* gp = as_ptr<const T>(grad);
  const T* xp = as_ptr<const T>(x);
  const int64_t* ti = PROB ? nullptr : as_ptr<const int64_t>(target);
  const T* tp = PROB ? as_ptr<const T>(target) : nullptr;
  const T* wp = w ? as_ptr<const T>(w) : nullptr;
  const T* sp = as_ptr<const T>(stats);
  const double* np = as_ptr<const double>(norm);
  T* o = as_ptr<T>(dx);
  if (G == 1)
    ce_backward_kernel<T, 1, PROB><<<grid, block_for<1>(), 0, s>>>(gp, xp, ti, tp, wp, sp, np, o, p);
  else if (G == 32)
    ce_backward_kernel<T, 32, PROB><<<grid, block_for<32>(), 0, s>>>(gp, xp, ti, tp, wp, sp, np, o, p);
  else
    ce_backward_kernel<T, 512, PROB><<<grid, block_for<512>(), 0, s>>>(gp, xp, ti, tp, wp, sp, np, o, p);
  PYDL_LAUNCH_CHECK();
}

void check_sizes(int64_t outer, int64_t L, int64_t inner) {
  PYDL_CHECK(outer >= 0 && L >= 0 && inner >= 0, "negative size");
}

}  // namespace

void bind_cross_entropy_cuda(py::module_& m) {
  m.def(
      "softmax_forward",
      [](dptr x, dptr y, int64_t outer, int64_t L, int64_t inner, bool log, bool dbl, dptr stream) {
        check_sizes(outer, L, inner);
        if (outer * inner == 0 || L == 0) return;
        if (dbl)
          softmax_forward_t<double>(x, y, outer * inner, L, inner, log, as_stream(stream));
        else
          softmax_forward_t<float>(x, y, outer * inner, L, inner, log, as_stream(stream));
      },
      py::arg("x"), py::arg("y"), py::arg("outer"), py::arg("L"), py::arg("inner"), py::arg("log"),
      py::arg("double"), py::arg("stream"));
  m.def(
      "softmax_backward",
      [](dptr dy, dptr y, dptr dx, int64_t outer, int64_t L, int64_t inner, bool log, bool dbl, dptr stream) {
        check_sizes(outer, L, inner);
        if (outer * inner == 0 || L == 0) return;
        if (dbl)
          softmax_backward_t<double>(dy, y, dx, outer * inner, L, inner, log, as_stream(stream));
        else
          softmax_backward_t<float>(dy, y, dx, outer * inner, L, inner, log, as_stream(stream));
      },
      py::arg("grad_out"), py::arg("y"), py::arg("grad_x"), py::arg("outer"), py::arg("L"), py::arg("inner"),
      py::arg("log"), py::arg("double"), py::arg("stream"));
  m.def(
      "cross_entropy_workspace",
      [](int64_t outer, int64_t C, int64_t inner) -> int64_t {
        check_sizes(outer, C, inner);
        return 3 * static_cast<int64_t>(grid_rows(outer * inner, group_for(C, inner)));
      },
      "float64 elements of scratch cross_entropy_forward needs", py::arg("outer"), py::arg("C"), py::arg("inner"));
  m.def(
      "cross_entropy_forward",
      [](dptr x, dptr target, dptr weight, dptr loss, dptr stats, dptr norm, dptr work, int64_t nwork, int64_t outer,
         int64_t C, int64_t inner, int64_t ignore_index, double eps, int reduction, bool prob, bool dbl,
         dptr stream, bool readback) -> double {
        check_sizes(outer, C, inner);
        PYDL_CHECK(C >= 1, "C must be >= 1");
        PYDL_CHECK(reduction >= 0 && reduction <= 2, "reduction code");
        CeParams p{outer * inner, C, inner, ignore_index, eps, false};
        auto s = as_stream(stream);
        if (dbl) {
          if (prob)
            ce_forward_t<double, true>(x, target, weight, loss, stats, norm, work, nwork, p, reduction, s);
          else
            ce_forward_t<double, false>(x, target, weight, loss, stats, norm, work, nwork, p, reduction, s);
        } else {
          if (prob)
            ce_forward_t<float, true>(x, target, weight, loss, stats, norm, work, nwork, p, reduction, s);
          else
            ce_forward_t<float, false>(x, target, weight, loss, stats, norm, work, nwork, p, reduction, s);
        }
        if (!readback) return -1.0;
        // The invalid-target count norm[1], for the caller's ValueError: one 8-byte copy into
        // pinned memory and a wait on the stream (the GIL stays held: the buffer is shared).
        static double* pinned = nullptr;
        if (pinned == nullptr)
          PYDL_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&pinned), sizeof(double), cudaHostAllocPortable));
        PYDL_CUDA_CHECK(cudaMemcpyAsync(pinned, as_ptr<double>(norm) + 1, sizeof(double), cudaMemcpyDeviceToHost, s));
        PYDL_CUDA_CHECK(cudaStreamSynchronize(s));
        return *pinned;
      },
      py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("loss"), py::arg("stats"), py::arg("norm"),
      py::arg("work"), py::arg("nwork"), py::arg("outer"), py::arg("C"), py::arg("inner"), py::arg("ignore_index"),
      py::arg("label_smoothing"), py::arg("reduction"), py::arg("prob"), py::arg("double"), py::arg("stream"),
      py::arg("readback") = false,
      "Returns the number of invalid class indices when readback (waits for the stream), else -1.");
  m.def(
      "cross_entropy_backward",
      [](dptr grad, dptr x, dptr target, dptr weight, dptr stats, dptr norm, dptr dx, int64_t outer, int64_t C,
         int64_t inner, int64_t ignore_index, double eps, int reduction, bool prob, bool dbl, dptr stream) {
        check_sizes(outer, C, inner);
        PYDL_CHECK(C >= 1, "C must be >= 1");
        CeParams p{outer * inner, C, inner, ignore_index, eps, reduction == 0};
        auto s = as_stream(stream);
        if (dbl) {
          if (prob)
            ce_backward_t<double, true>(grad, x, target, weight, stats, norm, dx, p, s);
          else
            ce_backward_t<double, false>(grad, x, target, weight, stats, norm, dx, p, s);
        } else {
          if (prob)
            ce_backward_t<float, true>(grad, x, target, weight, stats, norm, dx, p, s);
          else
            ce_backward_t<float, false>(grad, x, target, weight, stats, norm, dx, p, s);
        }
      },
      py::arg("grad_loss"), py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("stats"),
      py::arg("norm"), py::arg("grad_logits"), py::arg("outer"), py::arg("C"), py::arg("inner"),
      py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("reduction"), py::arg("prob"), py::arg("double"),
      py::arg("stream"));
}

}  // namespace pydl
