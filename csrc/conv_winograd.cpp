// conv, Winograd path: dense 3x3 stride-1 dilation-1 convolution by F(2x2, 3x3).
//
// Math (Lavin & Gray): every 2x2 output tile Y of one (image, out-channel) plane is
//   Y = A^T [ sum_i (G g_oi G^T) .* (B^T d_i B) ] A
// with d_i the 4x4 input patch of in-channel i under the tile and g_oi the 3x3 kernel;
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The sum over i for each of the 16 transformed positions e is a matrix product
//   M_e (Cout x tiles) = U_e (Cout x Cin) @ V_e (Cin x tiles),
// done by OpenBLAS GEMMs: 16 GEMMs replace the 9 taps' worth of direct FLOPs with 16/36 of
// them (2.25x fewer multiplies). Float error stays at the im2col level (the transforms are
// short sums with weights 1 and 1/2; measured ~4e-7 normwise in float32 at 64 channels).
// F(4x4, 3x3) would cut the GEMM work by another 1.8x but its transforms (weights up to 8,
// 1/24) cost accuracy; F(2x2) keeps float32 far inside the 1e-5 tolerance.
// Backward input is the same convolution of dy with the weight rotated by 180 degrees and
// channel-transposed, at offset pad - 2 (dx[p] = sum_a dy[p + pad - a] w[a]
// = sum_a' dy[p + pad - 2 + a'] w[2 - a']).
// Layout: NCHW in/out, C-contiguous; U[e][o][i], V[e][i][t], M[e][o][t] (t = tile in chunk).
// Weight gradient: dU_e = sum_tiles Z_e V_e^T with Z = A dy A^T (derivation at the function).
// Threading: the tiles (all images) are cut into chunks of whole tile rows (or row segments
// for very wide images), ~1.5 MiB per thread but at least 128 tiles (each GEMM re-packs its
// U_e) where the cap allows; chunk count is a multiple of the thread count
// and each OpenMP thread runs input transform -> 16 single-threaded GEMMs -> output
// transform on its own chunks with its own slice of the conv workspace: no sync beyond
// the one barrier after the shared weight transform. The whole call's workspace (U plus
// the per-thread slices) stays under the conv workspace cap, or the path is declined.
#include "conv_winograd.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blas.h"
#include "common.h"

namespace pydl {

// Private knobs (bound as _cpu._set_conv_winograd): 0 = off, 1 = auto, 2 = whenever the
// geometry fits; per-thread chunk bytes (L2-sized); a count of calls that took the path.
std::atomic<int> g_wino_mode{1};
std::atomic<int64_t> g_wino_chunk_bytes{int64_t(1536) << 10};
std::atomic<int64_t> g_wino_calls{0};

bool winograd_pays(int64_t N, int64_t Cin, int64_t Cout, int64_t Hout, int64_t Wout) {
  const int mode = g_wino_mode.load();
  if (mode == 0) return false;
  if (mode == 2) return true;
  // Few channels: the GEMMs are too thin for the transforms to pay back. Few tiles: the
  // per-call weight transform (16 C K values) and narrow GEMMs dominate (measured: 7x7 images
  // with 512 channels run 2-5x slower than im2col at batch 1-8).
  const int64_t tiles = N * ((Hout + 1) / 2) * ((Wout + 1) / 2);
  return Cin >= 16 && Cout >= 16 && tiles >= 256;
}

namespace {

// U[e][o][i] = (G g G^T)[e] with g = W(o, i, ., .).
template <typename T>
void weight_transform(const T* w, bool flip, int64_t Cin, int64_t Cout, int64_t o, int64_t i, T* U) {
  T g[3][3];
  const T* src = flip ? w + (i * Cout + o) * 9 : w + (o * Cin + i) * 9;
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) g[a][b] = flip ? src[(2 - a) * 3 + (2 - b)] : src[a * 3 + b];
  const T h = T(0.5);
  T tg[4][3];  // G g
  for (int b = 0; b < 3; ++b) {
    tg[0][b] = g[0][b];
    tg[1][b] = h * (g[0][b] + g[1][b] + g[2][b]);
    tg[2][b] = h * (g[0][b] - g[1][b] + g[2][b]);
    tg[3][b] = g[2][b];
  }
  const int64_t stride = Cout * Cin, at = o * Cin + i;
  for (int a = 0; a < 4; ++a) {
    U[(a * 4 + 0) * stride + at] = tg[a][0];
    U[(a * 4 + 1) * stride + at] = h * (tg[a][0] + tg[a][1] + tg[a][2]);
    U[(a * 4 + 2) * stride + at] = h * (tg[a][0] - tg[a][1] + tg[a][2]);
    U[(a * 4 + 3) * stride + at] = tg[a][2];
  }
}

// Stride between the 16 transformed matrices of one chunk. A multiple of 4 KiB would put
// the 16 streams a transform reads or writes in the same L1 sets (measured: 30% slower at
// 112 tiles x 64 channels); round up to 4 KiB and add 5 cache lines instead.
constexpr int64_t kStridePad = 4096 + 320;  // bytes a padded stride may add
template <typename T>
inline int64_t pad_stride(int64_t n) {
  return ((n * (int64_t)sizeof(T) + 4095) / 4096 * 4096 + 320) / (int64_t)sizeof(T);
}

struct Plan {
  int64_t N, Cin, Hin, Win, Cout, Hout, Wout, oh, ow;  // oh/ow: input offset of output (0, 0)
  int64_t TH, TW, rows;                                // tile rows per image, tiles per row, N*TH
  int64_t segs;      // row segments per chunk (> 1 only when a whole row exceeds a chunk)
  int64_t nchunks;   // chunks: groups of whole rows (segs == 1) or single row segments
  int64_t tmax;      // most tiles in one chunk
  int64_t twmax;     // most tiles of one row in one chunk
  // chunk -> tile rows [r0, r1), tiles [c0, c1) of each row
  void chunk(int64_t k, int64_t& r0, int64_t& r1, int64_t& c0, int64_t& c1) const {
    if (segs == 1) {
      r0 = rows * k / nchunks, r1 = rows * (k + 1) / nchunks, c0 = 0, c1 = TW;
    } else {
      r0 = k / segs, r1 = r0 + 1;
      const int64_t s = k % segs;
      c0 = TW * s / segs, c1 = TW * (s + 1) / segs;
    }
  }
};

// V[e][i][t] for the chunk's tiles; buf holds 4 padded input rows.
template <typename T>
void input_transform(const Plan& p, const T* in, int64_t r0, int64_t r1, int64_t c0, int64_t c1, T* V, T* buf) {
  const int64_t tw = c1 - c0, Tc = (r1 - r0) * tw, Wp = 2 * tw + 2, es = pad_stride<T>(p.Cin * Tc);
  const int64_t iw0 = 2 * c0 + p.ow;
  const int64_t qlo = std::min(Wp, std::max<int64_t>(0, -iw0)), qhi = std::max(qlo, std::min(Wp, p.Win - iw0));
  for (int64_t i = 0; i < p.Cin; ++i) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, th = r % p.TH;
      const T* plane = in + (n * p.Cin + i) * p.Hin * p.Win;
      T* s[4] = {buf, buf + Wp, buf + 2 * Wp, buf + 3 * Wp};
      for (int a = 0; a < 4; ++a) {
        const int64_t ih = 2 * th + p.oh + a;
        if (ih < 0 || ih >= p.Hin) {
          std::fill(s[a], s[a] + Wp, T(0));
          continue;
        }
        std::fill(s[a], s[a] + qlo, T(0));
        if (qlo < qhi) std::memcpy(s[a] + qlo, plane + ih * p.Win + iw0 + qlo, (size_t)(qhi - qlo) * sizeof(T));
        std::fill(s[a] + qhi, s[a] + Wp, T(0));
      }
      // Rows: B^T d (in place, all columns at once).
      for (int64_t q = 0; q < Wp; ++q) {
        const T d0 = s[0][q], d1 = s[1][q], d2 = s[2][q], d3 = s[3][q];
        s[0][q] = d0 - d2, s[1][q] = d1 + d2, s[2][q] = d2 - d1, s[3][q] = d1 - d3;
      }
      // Columns: (B^T d) B, one tile every 2 columns.
      T* v = V + i * Tc + (r - r0) * tw;
      for (int a = 0; a < 4; ++a) {
        const T* x = s[a];
        T* v0 = v + (4 * a) * es;
        T* v1 = v0 + es;
        T* v2 = v1 + es;
        T* v3 = v2 + es;
        for (int64_t j = 0; j < tw; ++j) {
          const T x0 = x[2 * j], x1 = x[2 * j + 1], x2 = x[2 * j + 2], x3 = x[2 * j + 3];
          v0[j] = x0 - x2, v1[j] = x1 + x2, v2[j] = x2 - x1, v3[j] = x1 - x3;
        }
      }
    }
  }
}

// out tiles of the chunk from M[e][o][t] (+ bias); buf holds 2 output rows of 2*tw.
template <typename T>
void output_transform(const Plan& p, const T* M, const T* bias, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                      T* out, T* buf) {
  const int64_t tw = c1 - c0, Tc = (r1 - r0) * tw, es = pad_stride<T>(p.Cout * Tc);
  const int64_t ow0 = 2 * c0, wn = std::min(2 * tw, p.Wout - ow0);
  T* y0 = buf;
  T* y1 = buf + 2 * tw;
  for (int64_t o = 0; o < p.Cout; ++o) {
    const T bv = bias ? bias[o] : T(0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, th = r % p.TH;
      const T* m = M + o * Tc + (r - r0) * tw;
#pragma omp simd  // (GCC leaves this loop scalar without it: 6% of the forward)
      for (int64_t j = 0; j < tw; ++j) {
        T q[16];
        for (int e = 0; e < 16; ++e) q[e] = m[e * es + j];
        // A^T m: rows
        T u0[4], u1[4];
        for (int b = 0; b < 4; ++b) u0[b] = q[b] + q[4 + b] + q[8 + b], u1[b] = q[4 + b] - q[8 + b] - q[12 + b];
        // (A^T m) A: columns
        y0[2 * j] = u0[0] + u0[1] + u0[2] + bv, y0[2 * j + 1] = u0[1] - u0[2] - u0[3] + bv;
        y1[2 * j] = u1[0] + u1[1] + u1[2] + bv, y1[2 * j + 1] = u1[1] - u1[2] - u1[3] + bv;
      }
      T* plane = out + (n * p.Cout + o) * p.Hout * p.Wout;
      std::memcpy(plane + (2 * th) * p.Wout + ow0, y0, (size_t)wn * sizeof(T));
      if (2 * th + 1 < p.Hout) std::memcpy(plane + (2 * th + 1) * p.Wout + ow0, y1, (size_t)wn * sizeof(T));
    }
  }
}


// Chunking: tiles per chunk so that `shared` bytes plus, per thread, `fixed` bytes and
// `per_tile` bytes per tile stay under the workspace cap (and each thread's chunk in L2).
// Sets p.segs/nchunks/tmax/twmax and the thread count; false if one tile does not fit.
bool make_plan(Plan& p, int64_t shared, int64_t fixed, int64_t per_tile, int& nt) {
  const int64_t work = p.rows * p.TW * p.Cin * p.Cout;
  nt = work > (int64_t(1) << 16) ? max_threads() : 1;  // fork/join costs more on small problems
  const int64_t cap = conv_workspace_limit();
  // At least 128 tiles per chunk where the cap allows: each GEMM re-packs its U_e (C x K), so
  // narrow chunks with many channels spend their time packing.
  const int64_t want = std::max(g_wino_chunk_bytes.load(), 128 * per_tile);
  int64_t tmax = std::min(want, (cap - shared) / nt - fixed) / per_tile;
  if (tmax < 1 && nt > 1) nt = 1, tmax = (cap - shared - fixed) / per_tile;
  if (tmax < 1) return false;  // cap too small even for one tile: im2col's problem
  tmax = std::min(tmax, p.rows * p.TW);
  if (p.TW <= tmax) {
    const int64_t rpc = tmax / p.TW;
    int64_t nch = (p.rows + rpc - 1) / rpc;
    nch = std::min(p.rows, (nch + nt - 1) / nt * nt);  // a multiple of nt where rows allow
    p.segs = 1, p.nchunks = nch;
    p.tmax = ((p.rows + nch - 1) / nch) * p.TW, p.twmax = p.TW;
  } else {
    p.segs = (p.TW + tmax - 1) / tmax;
    p.nchunks = p.rows * p.segs;
    p.twmax = (p.TW + p.segs - 1) / p.segs, p.tmax = p.twmax;
  }
  nt = (int)std::min<int64_t>(nt, p.nchunks);
  return true;
}

// Z[e][o][t] = (A g A^T)[e] for the 2x2 tiles g of dy (zero past Hout/Wout); buf: 2 rows of 2*tw.
template <typename T>
void grad_output_transform(const Plan& p, const T* dy, int64_t r0, int64_t r1, int64_t c0, int64_t c1, T* Z,
                           T* buf) {
  const int64_t tw = c1 - c0, Tc = (r1 - r0) * tw, es = pad_stride<T>(p.Cout * Tc);
  const int64_t ow0 = 2 * c0, wn = std::min(2 * tw, p.Wout - ow0);
  T* g0 = buf;
  T* g1 = buf + 2 * tw;
  std::fill(g0 + wn, g0 + 2 * tw, T(0));
  std::fill(g1 + wn, g1 + 2 * tw, T(0));
  for (int64_t o = 0; o < p.Cout; ++o) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, th = r % p.TH;
      const T* plane = dy + (n * p.Cout + o) * p.Hout * p.Wout;
      std::memcpy(g0, plane + (2 * th) * p.Wout + ow0, (size_t)wn * sizeof(T));
      if (2 * th + 1 < p.Hout)
        std::memcpy(g1, plane + (2 * th + 1) * p.Wout + ow0, (size_t)wn * sizeof(T));
      else
        std::fill(g1, g1 + wn, T(0));
      T* z = Z + o * Tc + (r - r0) * tw;
#pragma omp simd
      for (int64_t j = 0; j < tw; ++j) {
        // A g: rows (4 x 2), then (A g) A^T: columns (4 x 4).
        const T a0 = g0[2 * j], a1 = g0[2 * j + 1], b0 = g1[2 * j], b1 = g1[2 * j + 1];
        const T h[4][2] = {{a0, a1}, {a0 + b0, a1 + b1}, {a0 - b0, a1 - b1}, {-b0, -b1}};
        for (int a = 0; a < 4; ++a) {
          z[(4 * a + 0) * es + j] = h[a][0];
          z[(4 * a + 1) * es + j] = h[a][0] + h[a][1];
          z[(4 * a + 2) * es + j] = h[a][0] - h[a][1];
          z[(4 * a + 3) * es + j] = -h[a][1];
        }
      }
    }
  }
}

}  // namespace

template <typename T>
bool winograd_conv3x3(int64_t N, int64_t Cin, int64_t Hin, int64_t Win, int64_t Cout, int64_t Hout,
                      int64_t Wout, int64_t off_h, int64_t off_w, const T* in, const T* w, bool flip,
                      const T* bias, T* out) {
  if (N == 0 || Cout == 0 || Hout == 0 || Wout == 0) return true;  // nothing to write
  Plan p{N, Cin, Hin, Win, Cout, Hout, Wout, off_h, off_w, (Hout + 1) / 2, (Wout + 1) / 2, 0, 0, 0, 0, 0};
  p.rows = N * p.TH;
  const int64_t elem = sizeof(T), ubytes = 16 * Cout * Cin * elem;
  int nt;
  // per tile: V + M + (bounded by) the row buffers
  if (!make_plan(p, ubytes, 32 * kStridePad, (16 * (Cin + Cout) + 16) * elem, nt)) return false;
  const int64_t vsz = 16 * pad_stride<T>(Cin * p.tmax), msz = 16 * pad_stride<T>(Cout * p.tmax);
  const int64_t bsz = 4 * (2 * p.twmax + 2);
  const int64_t per_thread = vsz + msz + bsz;
  T* ws = static_cast<T*>(conv_workspace(ubytes + nt * per_thread * elem));
  T* U = ws;
  g_wino_calls.fetch_add(1);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t oi = 0; oi < Cout * Cin; ++oi) weight_transform(w, flip, Cin, Cout, oi / Cin, oi % Cin, U);
    T* V = ws + 16 * Cout * Cin + thread_id() * per_thread;
    T* M = V + vsz;
    T* buf = M + msz;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < p.nchunks; ++k) {
      int64_t r0, r1, c0, c1;
      p.chunk(k, r0, r1, c0, c1);
      const int64_t Tc = (r1 - r0) * (c1 - c0);
      if (Tc == 0) continue;
      input_transform(p, in, r0, r1, c0, c1, V, buf);
      for (int e = 0; e < 16; ++e)
        gemm(false, false, Cout, Tc, Cin, T(1), U + e * Cout * Cin, Cin, V + e * pad_stride<T>(Cin * Tc), Tc,
             T(0), M + e * pad_stride<T>(Cout * Tc), Tc);
      output_transform(p, M, bias, r0, r1, c0, c1, out, buf);
    }
  }
  return true;
}

// Weight gradient (derivation): y = A^T [U .* V] A per tile is linear in U = G g G^T, so
//   dU = sum_tiles (A dy_tile A^T) .* V   and   dw = G^T dU G.
// Per position e the tile sum is a GEMM: dU_e (K x C) += Z_e (K x tiles) @ V_e^T (tiles x C).
// Each thread accumulates its own dU over its chunks; the per-thread sums are added in
// thread order (deterministic for a given thread count).
template <typename T>
bool winograd_conv3x3_weight(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                             int64_t off_h, int64_t off_w, const T* x, const T* dy, T* dw) {
  if (N == 0 || Ho == 0 || Wo == 0) return false;  // the caller zero-fills
  Plan p{N, C, H, W, K, Ho, Wo, off_h, off_w, (Ho + 1) / 2, (Wo + 1) / 2, 0, 0, 0, 0, 0};
  p.rows = N * p.TH;
  const int64_t elem = sizeof(T), usz = 16 * K * C;
  int nt;
  if (!make_plan(p, 0, usz * elem + 32 * kStridePad, (16 * (C + K) + 16) * elem, nt)) return false;
  const int64_t vsz = 16 * pad_stride<T>(C * p.tmax), zsz = 16 * pad_stride<T>(K * p.tmax);
  const int64_t bsz = 4 * (2 * p.twmax + 2);
  const int64_t per_thread = usz + vsz + zsz + bsz;
  T* ws = static_cast<T*>(conv_workspace(nt * per_thread * elem));
  g_wino_calls.fetch_add(1);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* dU = ws + thread_id() * per_thread;
    T* V = dU + usz;
    T* Z = V + vsz;
    T* buf = Z + zsz;
    std::fill(dU, dU + usz, T(0));
#pragma omp for schedule(static)
    for (int64_t k = 0; k < p.nchunks; ++k) {
      int64_t r0, r1, c0, c1;
      p.chunk(k, r0, r1, c0, c1);
      const int64_t Tc = (r1 - r0) * (c1 - c0);
      if (Tc == 0) continue;
      input_transform(p, x, r0, r1, c0, c1, V, buf);
      grad_output_transform(p, dy, r0, r1, c0, c1, Z, buf);
      for (int e = 0; e < 16; ++e)
        gemm(false, true, K, C, Tc, T(1), Z + e * pad_stride<T>(K * Tc), Tc, V + e * pad_stride<T>(C * Tc), Tc,
             T(1), dU + e * K * C, C);
    }
    // implicit barrier: every thread's dU is complete
#pragma omp for schedule(static)
    for (int64_t kc = 0; kc < K * C; ++kc) {
      T u[16];
      for (int e = 0; e < 16; ++e) {
        T acc = 0;
        for (int t = 0; t < nt; ++t) acc += ws[t * per_thread + e * K * C + kc];
        u[e] = acc;
      }
      // dw = G^T u G, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]
      const T h = T(0.5);
      T r[3][4];
      for (int b = 0; b < 4; ++b) {
        r[0][b] = u[b] + h * (u[4 + b] + u[8 + b]);
        r[1][b] = h * (u[4 + b] - u[8 + b]);
        r[2][b] = h * (u[4 + b] + u[8 + b]) + u[12 + b];
      }
      T* d = dw + kc * 9;
      for (int a = 0; a < 3; ++a) {
        d[a * 3 + 0] = r[a][0] + h * (r[a][1] + r[a][2]);
        d[a * 3 + 1] = h * (r[a][1] - r[a][2]);
        d[a * 3 + 2] = h * (r[a][1] + r[a][2]) + r[a][3];
      }
    }
  }
  return true;
}

template bool winograd_conv3x3_weight<float>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                             int64_t, int64_t, const float*, const float*, float*);
template bool winograd_conv3x3_weight<double>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                              int64_t, int64_t, const double*, const double*, double*);

template bool winograd_conv3x3<float>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                      int64_t, const float*, const float*, bool, const float*, float*);
template bool winograd_conv3x3<double>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                       int64_t, const double*, const double*, bool, const double*, double*);

void set_winograd(int mode, int64_t chunk_bytes) {
  if (mode >= 0) g_wino_mode.store(mode);
  if (chunk_bytes > 0) g_wino_chunk_bytes.store(chunk_bytes);
}
int64_t winograd_calls() { return g_wino_calls.load(); }

}  // namespace pydl
