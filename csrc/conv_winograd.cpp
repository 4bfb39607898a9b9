// conv, Winograd path: dense 3x3 convolution of stride 1 or 2 by F(2x2, 3x3); dilated ones of
// stride 1 by space-to-batch onto the stride-1 kernel (derivation at winograd_conv3x3_dilated's
// helpers: the phase copies, permuted by OpenMP loops, are the only extra work).
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
// short sums with weights 1 and 1/2).
// F(4x4, 3x3) would cut the GEMM work by another 1.8x but its transforms (weights up to 8,
// 1/24) cost accuracy; F(2x2) keeps float32 far inside the 1e-5 tolerance.
// Backward input is the same convolution of dy with the weight rotated by 180 degrees and
// channel-transposed, at offset pad - 2 (dx[p] = sum_a dy[p + pad - a] w[a]
// = sum_a' dy[p + pad - 2 + a'] w[2 - a']).
// Stride 2: per axis the two outputs y_r = d[2r] g0 + d[2r+1] g1 + d[2r+2] g2 split by tap
// parity into the 2-tap even part, F(2, 2) on (d0, d2, d4) with (g0, g2), and the 1-tap odd
// part d[2r+1] g1.
// On the 5-input patch (tiles step 4 inputs):
//   B^T d = [d0 - d2, d2, d4 - d2, d1, d3], G g = [g0, g0 + g2, g2, g1, g1],
//   y0 = m0 + m1 + m3, y1 = m1 + m2 + m4   (all weights +-1: error at the im2col level).
// 2-D: 25 products per tile against 36 (1.44x fewer multiplies). Positions 3 and 4 share the
// kernel value g1, so they form one GEMM class of two columns per tile: 16 GEMMs again,
// 9 of Tc columns, 6 of 2 Tc and 1 of 4 Tc. The weight gradient takes this path too, and the
// input gradient runs its adjoint (conv3x3_input_grad_s2).
// Layout: NCHW in/out, C-contiguous; U[c][o][i], V[c][i][t], M[c][o][t] (t = tile in chunk,
// a class's sub-columns side by side); class matrices 4 KiB-staggered (see kStridePad).
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
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blas.h"
#include "common.h"

namespace pydl {

// Per-thread chunk bytes (L2-sized); a count of calls that took the path (_cpu._conv_winograd_calls,
// so tests can prove it ran).
constexpr int64_t kChunkBytes = int64_t(1536) << 10;
std::atomic<int64_t> g_wino_calls{0};

bool winograd_pays(int64_t N, int64_t Cin, int64_t Cout, int64_t Hout, int64_t Wout, int64_t stride,
                   bool weight_grad, int64_t dh, int64_t dw) {
  // Dilated: the phase batch it runs (N dh dw images of ceil(Hout / dh) x ceil(Wout / dw)).
  const int64_t TH = ((Hout + dh - 1) / dh + 1) / 2, TW = ((Wout + dw - 1) / dw + 1) / 2;
  const int64_t tiles = N * dh * dw * TH * TW, tiled = dh * dw * 4 * TH * TW;  // outputs an image's tiles cover
  // Few channels: the GEMMs are too thin for the transforms to pay back. Few tiles: the
  // per-call weight transform (16 C K values) and narrow GEMMs dominate (one 7x7 image stays
  // on im2col; the weight gradient, whose 16 GEMMs reduce over the tiles, needs more of them).
  // Tiles that overhang the output much: the 2x2 tiles round every phase up (28 rows at
  // dilation 6: phases of 5 rows tiled as 6).
  if (stride == 1)
    return Cin >= 16 && Cout >= 16 && tiles >= (weight_grad ? 192 : 48) && 10 * Hout * Wout >= 7 * tiled;
  // Stride 2 saves only 25 of 36 multiplies, so the 2x2 tiles must not overhang the output
  // much (7x7 outputs: 64 tiled for 49; 17x17, 324 for 289, still pays), and the forward needs
  // 64 input channels to beat im2col where the weight gradient already does at 16. The input
  // gradient (the forward's adjoint, called with weight_grad false) takes the forward's rule.
  if (100 * Hout * Wout < 88 * tiled || tiles < 192) return false;
  return weight_grad ? Cin >= 16 && Cout >= 16 : Cin >= 64 && Cout >= 64;
}

namespace {

// The 16 GEMM classes c = 4 * alpha + beta (alpha: row position, beta: column position).
// Stride 1: class c is transformed position c, one column per tile. Stride 2: position 3 of
// each axis holds the odd-phase samples d1 and d3, which share the kernel value g1, so
// they are one class of two columns per tile (sub-column 0 feeds output 0, 1 feeds output 1).
template <int S>
constexpr int axis_mult(int a) {
  return (S == 2 && a == 3) ? 2 : 1;
}
template <int S>
constexpr int class_mult(int c) {
  return axis_mult<S>(c / 4) * axis_mult<S>(c % 4);
}

// Stride between the transformed matrices of one chunk. A multiple of 4 KiB would put
// the 16 streams a transform reads or writes in the same L1 sets, which then evict each
// other; round up to 4 KiB and add 5 cache lines instead.
constexpr int64_t kStridePad = 4096 + 320;  // bytes a padded stride may add
template <typename T>
inline int64_t pad_stride(int64_t n) {
  return ((n * (int64_t)sizeof(T) + 4095) / 4096 * 4096 + 320) / (int64_t)sizeof(T);
}

// Offsets of the 16 class matrices (rows x class_mult * Tc, row-major) in a chunk buffer.
template <typename T, int S>
struct Slots {
  int64_t off[17];
  Slots(int64_t rows, int64_t Tc) {
    off[0] = 0;
    for (int c = 0; c < 16; ++c) off[c + 1] = off[c] + pad_stride<T>(rows * class_mult<S>(c) * Tc);
  }
  int64_t size() const { return off[16]; }
  // element (row, sub-column sub, tile t) of class c
  int64_t at(int c, int64_t row, int sub, int64_t Tc, int64_t t) const {
    return off[c] + (row * class_mult<S>(c) + sub) * Tc + t;
  }
  // Stride 2: the 5 x 5 entries of one row, per axis class 0, 1, 2, 3 (sub 0), 3 (sub 1).
  template <typename P>
  void entries(P* base, int64_t row, int64_t Tc, P* (&e)[5][5]) const {
    for (int k = 0; k < 5; ++k)
      for (int l = 0; l < 5; ++l) {
        const int a = k < 3 ? k : 3, ra = k < 3 ? 0 : k - 3, b = l < 3 ? l : 3, rb = l < 3 ? 0 : l - 3;
        e[k][l] = base + at(4 * a + b, row, ra * axis_mult<S>(b) + rb, Tc, 0);
      }
  }
};

// u[c * stride] (the 16 classes) from the 3x3 kernel g = src (rotated 180 degrees with flip):
// stride 1 G g G^T, G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]; stride 2 per axis [g0, g0 + g2, g2, g1].
template <typename T, int S>
void weight_transform(const T* src, bool flip, T* U, int64_t stride) {
  T g[3][3];
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) g[a][b] = flip ? src[(2 - a) * 3 + (2 - b)] : src[a * 3 + b];
  const T h = T(0.5);
  T tg[4][3];  // G g
  for (int b = 0; b < 3; ++b) {
    if (S == 1) {
      tg[0][b] = g[0][b];
      tg[1][b] = h * (g[0][b] + g[1][b] + g[2][b]);
      tg[2][b] = h * (g[0][b] - g[1][b] + g[2][b]);
      tg[3][b] = g[2][b];
    } else {
      tg[0][b] = g[0][b];
      tg[1][b] = g[0][b] + g[2][b];
      tg[2][b] = g[2][b];
      tg[3][b] = g[1][b];
    }
  }
  for (int a = 0; a < 4; ++a) {
    T* u = U + (a * 4) * stride;
    if (S == 1) {
      u[0] = tg[a][0];
      u[stride] = h * (tg[a][0] + tg[a][1] + tg[a][2]);
      u[2 * stride] = h * (tg[a][0] - tg[a][1] + tg[a][2]);
      u[3 * stride] = tg[a][2];
    } else {
      u[0] = tg[a][0];
      u[stride] = tg[a][0] + tg[a][2];
      u[2 * stride] = tg[a][2];
      u[3 * stride] = tg[a][1];
    }
  }
}

struct Plan {
  int64_t N, Cin, Hin, Win, Cout, Hout, Wout, oh, ow;  // oh/ow: input offset of output (0, 0)
  int64_t TH, TW, rows;                                // tile rows per image, tiles per row, N*TH
  int64_t segs;      // row segments per chunk (> 1 only when a whole row exceeds a chunk)
  int64_t nchunks;   // chunks: groups of whole rows (segs == 1) or single row segments
  int64_t tmax;      // most tiles in one chunk
  int64_t twmax;     // most tiles of one row in one chunk
  int64_t split = 1; // the chunk count is a multiple of this (where the rows allow)
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

// Row buffer elements: n input rows of a chunk's tiles, or 2 output rows of all its tiles
// (tw tiles per row, tiles in all).
template <int S>
constexpr int64_t row_buf(int64_t tw, int64_t tiles) {
  if (S == 2) return 5 * (4 * tiles + 1) + 5 * tiles;  // input_transform_s2 (tiles >= its rows)
  return std::max<int64_t>(4 * (2 * tw + 2), 4 * tiles);
}

// The Wp input columns a chunk's patches span from column iw0, of which [qlo, qhi) lie inside
// the image; load() copies one input row (zeros outside the image).
struct Cols {
  int64_t Wp, iw0, qlo, qhi;
  Cols(const Plan& p, int64_t Wp_, int64_t iw0_) : Wp(Wp_), iw0(iw0_) {
    qlo = std::min(Wp, std::max<int64_t>(0, -iw0));
    qhi = std::max(qlo, std::min(Wp, p.Win - iw0));
  }
  template <typename T>
  void load(const Plan& p, const T* plane, int64_t ih, T* d) const {
    if (ih < 0 || ih >= p.Hin) {
      std::fill(d, d + Wp, T(0));
      return;
    }
    std::fill(d, d + qlo, T(0));
    if (qlo < qhi) std::memcpy(d + qlo, plane + ih * p.Win + iw0 + qlo, (size_t)(qhi - qlo) * sizeof(T));
    std::fill(d + qhi, d + Wp, T(0));
  }
};

// Stride 2: V[c][i][t] for the chunk's tiles. The chunk's tile rows are laid end to end
// (4*tw inputs each) in 5 rows of buf, so the column pass is one loop over all its tiles
// (7-tile rows left 7-long scalar loops); the one input a row's last tile reads past its
// 4*tw (x4, overwritten by the next row's segment) is kept in ext and patched in after.
// buf: 5 * (4 * Tc + 1) + 5 * rows elements.
template <typename T>
void input_transform_s2(const Plan& p, const T* in, int64_t r0, int64_t r1, int64_t c0, int64_t c1, T* V, T* buf) {
  const int64_t tw = c1 - c0, nr = r1 - r0, Tc = nr * tw, Wp = 4 * tw + 1, Lb = 4 * Tc + 1;
  const Slots<T, 2> sl(p.Cin, Tc);
  const Cols cols(p, Wp, 4 * c0 + p.ow);
  T* s[5];
  T* ext[5];
  for (int a = 0; a < 5; ++a) s[a] = buf + a * Lb, ext[a] = buf + 5 * Lb + a * nr;
  for (int64_t i = 0; i < p.Cin; ++i) {
    for (int64_t rr = 0; rr < nr; ++rr) {
      const int64_t r = r0 + rr, nn = r / p.TH, th = r % p.TH;
      const T* plane = in + (nn * p.Cin + i) * p.Hin * p.Win;
      for (int a = 0; a < 5; ++a) {
        T* d = s[a] + rr * 4 * tw;
        cols.load(p, plane, 4 * th + p.oh + a, d);
        ext[a][rr] = d[4 * tw];
      }
    }
    // Rows, per axis [d0 - d2, d2, d4 - d2 | d1, d3]: two rows change, in place.
    for (int64_t q = 0; q < Lb; ++q) {
      const T d2 = s[2][q];
      s[0][q] -= d2, s[4][q] -= d2;
    }
    for (int64_t rr = 0; rr < nr; ++rr) ext[0][rr] -= ext[2][rr], ext[4][rr] -= ext[2][rr];
    const int phys[5] = {0, 2, 4, 1, 3};
    T* e5[5][5];
    sl.entries(V, i, Tc, e5);
    for (int k = 0; k < 5; ++k) {
      const T* x = s[phys[k]];
      T* v0 = e5[k][0];
      T* v1 = e5[k][1];
      T* v2 = e5[k][2];
      T* v3 = e5[k][3];
      T* v4 = e5[k][4];
#pragma omp simd
      for (int64_t j = 0; j < Tc; ++j) {
        const T x0 = x[4 * j], x1 = x[4 * j + 1], x2 = x[4 * j + 2], x3 = x[4 * j + 3], x4 = x[4 * j + 4];
        v0[j] = x0 - x2, v1[j] = x2, v2[j] = x4 - x2, v3[j] = x1, v4[j] = x3;
      }
      const T* e = ext[phys[k]];
      for (int64_t rr = 0; rr < nr; ++rr) {
        const int64_t j = rr * tw + tw - 1;
        v2[j] = e[rr] - x[4 * j + 2];
      }
    }
  }
}

// V[c][i][t] for the chunk's tiles; buf holds the patch's input rows (stride 1 here).
template <typename T, int S>
void input_transform(const Plan& p, const T* in, int64_t r0, int64_t r1, int64_t c0, int64_t c1, T* V, T* buf) {
  if constexpr (S == 2) {
    input_transform_s2(p, in, r0, r1, c0, c1, V, buf);
    return;
  }
  // A tile covers 2x2 outputs and reads a 4x4 input patch every 2 inputs.
  const int64_t tw = c1 - c0, Tc = (r1 - r0) * tw, Wp = 2 * tw + 2;
  const Slots<T, S> sl(p.Cin, Tc);
  const Cols cols(p, Wp, 2 * c0 + p.ow);
  T* s[4];
  for (int a = 0; a < 4; ++a) s[a] = buf + a * Wp;
  for (int64_t i = 0; i < p.Cin; ++i) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t nn = r / p.TH, th = r % p.TH, t0 = (r - r0) * tw;
      const T* plane = in + (nn * p.Cin + i) * p.Hin * p.Win;
      for (int a = 0; a < 4; ++a) cols.load(p, plane, 2 * th + p.oh + a, s[a]);
      // Rows: B^T d (in place, all columns at once).
      for (int64_t q = 0; q < Wp; ++q) {
        const T d0 = s[0][q], d1 = s[1][q], d2 = s[2][q], d3 = s[3][q];
        s[0][q] = d0 - d2, s[1][q] = d1 + d2, s[2][q] = d2 - d1, s[3][q] = d1 - d3;
      }
      // Columns: (B^T d) B, one tile every 2 columns.
      for (int a = 0; a < 4; ++a) {
        const T* x = s[a];
        T* v0 = V + sl.at(4 * a, i, 0, Tc, t0);
        T* v1 = V + sl.at(4 * a + 1, i, 0, Tc, t0);
        T* v2 = V + sl.at(4 * a + 2, i, 0, Tc, t0);
        T* v3 = V + sl.at(4 * a + 3, i, 0, Tc, t0);
        for (int64_t j = 0; j < tw; ++j) {
          const T x0 = x[2 * j], x1 = x[2 * j + 1], x2 = x[2 * j + 2], x3 = x[2 * j + 3];
          v0[j] = x0 - x2, v1[j] = x1 + x2, v2[j] = x2 - x1, v3[j] = x1 - x3;
        }
      }
    }
  }
}

// out tiles of the chunk from M[c][o][t] (+ bias, then the rest of the epilogue as rows go out). One loop over all the chunk's tiles per
// output channel (a chunk of 7-tile rows left a 7-long loop, mostly vector remainder), into
// buf (2 output rows of 2*Tc), then copied out row by row.
template <typename T, int S>
void output_transform(const Plan& p, const T* M, const Epilogue<T>& ep, int64_t r0, int64_t r1, int64_t c0,
                      int64_t c1, T* out, T* buf) {
  const T* bias = ep.bias;
  const int64_t tw = c1 - c0, Tc = (r1 - r0) * tw;
  const Slots<T, S> sl(p.Cout, Tc);
  const int64_t ow0 = 2 * c0, wn = std::min(2 * tw, p.Wout - ow0);
  T* y0 = buf;
  T* y1 = buf + 2 * Tc;
  for (int64_t o = 0; o < p.Cout; ++o) {
    const T bv = bias ? bias[o] : T(0);
    if (S == 1) {
      const T* m = M + sl.at(0, o, 0, Tc, 0);
      const int64_t es = sl.off[1];
#pragma omp simd  // GCC leaves this loop scalar without it
      for (int64_t j = 0; j < Tc; ++j) {
        T q[16];
        for (int e = 0; e < 16; ++e) q[e] = m[e * es + j];
        // A^T m: rows
        T u0[4], u1[4];
        for (int b = 0; b < 4; ++b) u0[b] = q[b] + q[4 + b] + q[8 + b], u1[b] = q[4 + b] - q[8 + b] - q[12 + b];
        // (A^T m) A: columns
        y0[2 * j] = u0[0] + u0[1] + u0[2] + bv, y0[2 * j + 1] = u0[1] - u0[2] - u0[3] + bv;
        y1[2 * j] = u1[0] + u1[1] + u1[2] + bv, y1[2 * j + 1] = u1[1] - u1[2] - u1[3] + bv;
      }
    } else {
      // 5 x 5 entries: per axis classes 0, 1, 2, 3 (sub 0), 3 (sub 1); A^T = [1 1 0 1 0; 0 1 1 0 1].
      const T* m[5][5];
      sl.entries(M, o, Tc, m);
#pragma omp simd
      for (int64_t j = 0; j < Tc; ++j) {
        T u0[5], u1[5];  // A^T m: rows
        for (int l = 0; l < 5; ++l) {
          const T q1 = m[1][l][j];
          u0[l] = m[0][l][j] + q1 + m[3][l][j], u1[l] = q1 + m[2][l][j] + m[4][l][j];
        }
        y0[2 * j] = u0[0] + u0[1] + u0[3] + bv, y0[2 * j + 1] = u0[1] + u0[2] + u0[4] + bv;
        y1[2 * j] = u1[0] + u1[1] + u1[3] + bv, y1[2 * j + 1] = u1[1] + u1[2] + u1[4] + bv;
      }
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, th = r % p.TH, t0 = (r - r0) * tw;
      const int64_t plane = (n * p.Cout + o) * p.Hout * p.Wout;
      const int64_t off0 = plane + (2 * th) * p.Wout + ow0, off1 = off0 + p.Wout;
      ep.run(out + off0, y0 + 2 * t0, off0, nullptr, wn);
      if (2 * th + 1 < p.Hout) ep.run(out + off1, y1 + 2 * t0, off1, nullptr, wn);
    }
  }
}


// Bytes of the phase copies the dilated wrapper holds during its inner call (0 otherwise):
// the call's whole workspace, phases included, stays under the cap.
thread_local int64_t t_phase_bytes = 0;

// Chunking: tiles per chunk so that `shared` bytes plus, per thread, `fixed` bytes and
// `per_tile` bytes per tile stay under the workspace cap (and each thread's chunk in L2).
// Sets p.segs/nchunks/tmax/twmax and the thread count; false if one tile does not fit.
bool make_plan(Plan& p, int64_t shared, int64_t fixed, int64_t per_tile, int& nt, int64_t G = 1) {
  const int64_t work = p.rows * p.TW * p.Cin * p.Cout / G;
  nt = work > (int64_t(1) << 16) ? max_threads() : 1;  // fork/join costs more on small problems
  const int64_t cap = conv_workspace_limit() - t_phase_bytes;  // the dilated wrapper's phases count too
  // At least 128 tiles per chunk where the cap allows: each GEMM re-packs its U_e (C x K), so
  // narrow chunks with many channels spend their time packing.
  const int64_t want = std::max(kChunkBytes, 128 * per_tile);
  // The tiles are cut as for max(nt, 2) threads, so that 1 and 2 threads cut them alike:
  // OpenBLAS's sums depend on a GEMM's column count, and 1 vs 2 threads must give the same
  // bits (the forward and input gradient; not where the cap fits one thread's slice only).
  p.split = std::max(nt, 2);
  int64_t tmax = std::min(want, (cap - shared) / p.split - fixed) / per_tile;
  if (tmax < 1) nt = 1, p.split = 1, tmax = (cap - shared - fixed) / per_tile;
  if (tmax < 1) return false;  // cap too small even for one tile: im2col's problem
  tmax = std::min(tmax, p.rows * p.TW);
  if (p.TW <= tmax) {
    const int64_t rpc = tmax / p.TW;
    int64_t nch = (p.rows + rpc - 1) / rpc;
    nch = std::min(p.rows, (nch + p.split - 1) / p.split * p.split);  // a multiple of split where rows allow
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

// Per tile: the transformed values of one input channel (16 at stride 1, 25 at stride 2).
template <int S>
constexpr int64_t tile_values() {
  return S == 1 ? 16 : 25;
}

// Z[c][o][t] = (A g A^T) for the 2x2 tiles g of dy (zero past Hout/Wout): the chunk's dy rows
// gathered into buf (2 rows of 2*Tc), then one loop over all its tiles (as output_transform).
template <typename T, int S>
void grad_output_transform(const Plan& p, const T* dy, int64_t r0, int64_t r1, int64_t c0, int64_t c1, T* Z,
                           T* buf) {
  const int64_t tw = c1 - c0, Tc = (r1 - r0) * tw;
  const Slots<T, S> sl(p.Cout, Tc);
  const int64_t ow0 = 2 * c0, wn = std::min(2 * tw, p.Wout - ow0);
  T* g0 = buf;
  T* g1 = buf + 2 * Tc;
  for (int64_t o = 0; o < p.Cout; ++o) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, th = r % p.TH, t0 = (r - r0) * tw;
      const T* plane = dy + (n * p.Cout + o) * p.Hout * p.Wout;
      T* a = g0 + 2 * t0;
      T* b = g1 + 2 * t0;
      std::memcpy(a, plane + (2 * th) * p.Wout + ow0, (size_t)wn * sizeof(T));
      std::fill(a + wn, a + 2 * tw, T(0));
      if (2 * th + 1 < p.Hout)
        std::memcpy(b, plane + (2 * th + 1) * p.Wout + ow0, (size_t)wn * sizeof(T));
      else
        std::fill(b, b + wn, T(0));
      std::fill(b + wn, b + 2 * tw, T(0));
    }
    if (S == 1) {
      T* z = Z + sl.at(0, o, 0, Tc, 0);
      const int64_t es = sl.off[1];
#pragma omp simd
      for (int64_t j = 0; j < Tc; ++j) {
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
    } else {
      // Per axis A = [g0, g0 + g1, g1 | g0, g1].
      T* z[5][5];
      sl.entries(Z, o, Tc, z);
#pragma omp simd
      for (int64_t j = 0; j < Tc; ++j) {
        const T a0 = g0[2 * j], a1 = g0[2 * j + 1], b0 = g1[2 * j], b1 = g1[2 * j + 1];
        const T h[5][2] = {{a0, a1}, {a0 + b0, a1 + b1}, {b0, b1}, {a0, a1}, {b0, b1}};
        for (int k = 0; k < 5; ++k) {
          z[k][0][j] = h[k][0];
          z[k][1][j] = h[k][0] + h[k][1];
          z[k][2][j] = h[k][1];
          z[k][3][j] = h[k][0];
          z[k][4][j] = h[k][1];
        }
      }
    }
  }
}

// Groups (G): U_c is Cout x Cin / G (each output channel against its group's inputs) and the 16
// GEMMs run per group on the group's rows of V and M.
template <typename T, int S>
bool conv3x3(int64_t N, int64_t Cin, int64_t Hin, int64_t Win, int64_t Cout, int64_t Hout, int64_t Wout,
             int64_t off_h, int64_t off_w, const T* in, const T* w, bool flip, const Epilogue<T>& ep, T* out,
             int64_t G) {
  const int64_t Cig = Cin / G, Cog = Cout / G;
  Plan p{N, Cin, Hin, Win, Cout, Hout, Wout, off_h, off_w, (Hout + 1) / 2, (Wout + 1) / 2, 0, 0, 0, 0, 0};
  p.rows = N * p.TH;
  // U's classes 4 KiB-staggered too: with a stride that is a multiple of 4 KiB (128 x 256
  // channels: 128 KiB) the weight transform's 16 store streams would share L1 sets.
  const int64_t elem = sizeof(T), us = pad_stride<T>(Cout * Cig), ubytes = 16 * us * elem;
  int nt;
  // per tile: V + M + (bounded by) the row buffers
  constexpr int64_t E = tile_values<S>(), rb = row_buf<S>(1, 1);
  if (!make_plan(p, ubytes, 32 * kStridePad, (E * (Cin + Cout) + rb) * elem, nt, G)) return false;
  const int64_t vsz = Slots<T, S>(Cin, p.tmax).size(), msz = Slots<T, S>(Cout, p.tmax).size();
  const int64_t bsz = row_buf<S>(p.twmax, p.tmax);
  const int64_t per_thread = vsz + msz + bsz;
  T* ws = static_cast<T*>(conv_workspace(ubytes + nt * per_thread * elem));
  T* U = ws;
  g_wino_calls.fetch_add(1);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t oi = 0; oi < Cout * Cig; ++oi) {
      // W(o, i) = w[o, i] (Cout x Cig x 3 x 3), or with flip w[i, o] (Cin x Cog x 3 x 3), i in o's group
      const int64_t o = oi / Cig, i = oi % Cig, gi = o / Cog;
      weight_transform<T, S>(w + (flip ? (gi * Cig + i) * Cog + o % Cog : oi) * 9, flip, U + oi, us);
    }
    T* V = ws + 16 * us + thread_id() * per_thread;
    T* M = V + vsz;
    T* buf = M + msz;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < p.nchunks; ++k) {
      int64_t r0, r1, c0, c1;
      p.chunk(k, r0, r1, c0, c1);
      const int64_t Tc = (r1 - r0) * (c1 - c0);
      if (Tc == 0) continue;
      input_transform<T, S>(p, in, r0, r1, c0, c1, V, buf);
      const Slots<T, S> sv(Cin, Tc), sm(Cout, Tc);
      for (int c = 0; c < 16; ++c) {
        const int64_t cols = class_mult<S>(c) * Tc;
        for (int64_t gi = 0; gi < G; ++gi)
          gemm(false, false, Cog, cols, Cig, T(1), U + c * us + gi * Cog * Cig, Cig, V + sv.off[c] + gi * Cig * cols,
               cols, T(0), M + sm.off[c] + gi * Cog * cols, cols);
      }
      output_transform<T, S>(p, M, ep, r0, r1, c0, c1, out, buf);
    }
  }
  return true;
}

// Weight gradient (derivation): y = A^T [U .* V] A per tile is linear in U = G g G^T, so
//   dU = sum_tiles (A dy_tile A^T) .* V   and   dw = G^T dU G.
// Per class c the tile sum is a GEMM: dU_c (K x C) += Z_c (K x cols) @ V_c^T (cols x C); at
// stride 2 the two sub-columns of a shared kernel value sum in the same GEMM.
// Accumulators of fixed chunk ranges (see p.split), added in order: deterministic, and the
// same bits for 1 and 2 threads.
template <typename T, int S>
bool conv3x3_weight(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int64_t off_h,
                    int64_t off_w, const T* x, const T* dy, T* dw, int64_t G) {
  Plan p{N, C, H, W, K, Ho, Wo, off_h, off_w, (Ho + 1) / 2, (Wo + 1) / 2, 0, 0, 0, 0, 0};
  p.rows = N * p.TH;
  const int64_t Cg = C / G, Kg = K / G;  // dU_c is K x Cg, per group
  const int64_t elem = sizeof(T), us = pad_stride<T>(K * Cg), usz = 16 * us;  // staggered as in conv3x3
  int nt;
  constexpr int64_t E = tile_values<S>(), rb = row_buf<S>(1, 1);
  if (!make_plan(p, 0, usz * elem + 32 * kStridePad, (E * (C + K) + rb) * elem, nt, G)) return false;
  const int64_t vsz = Slots<T, S>(C, p.tmax).size(), zsz = Slots<T, S>(K, p.tmax).size();
  const int64_t bsz = row_buf<S>(p.twmax, p.tmax);
  // p.split accumulators, each the sum of a fixed range of chunks, added in order at the end:
  // the same sums for 1 and 2 threads (a thread per accumulator, or one thread for all).
  const int64_t split = p.split, per_thread = vsz + zsz + bsz;
  T* ws = static_cast<T*>(conv_workspace((split * usz + nt * per_thread) * elem));
  g_wino_calls.fetch_add(1);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* V = ws + split * usz + thread_id() * per_thread;
    T* Z = V + vsz;
    T* buf = Z + zsz;
    for (int64_t a = thread_id(); a < split; a += team_size()) {
      T* dU = ws + a * usz;
      std::fill(dU, dU + usz, T(0));
      for (int64_t k = p.nchunks * a / split; k < p.nchunks * (a + 1) / split; ++k) {
        int64_t r0, r1, c0, c1;
        p.chunk(k, r0, r1, c0, c1);
        const int64_t Tc = (r1 - r0) * (c1 - c0);
        if (Tc == 0) continue;
        input_transform<T, S>(p, x, r0, r1, c0, c1, V, buf);
        grad_output_transform<T, S>(p, dy, r0, r1, c0, c1, Z, buf);
        const Slots<T, S> sv(C, Tc), sz(K, Tc);
        for (int c = 0; c < 16; ++c) {
          const int64_t cols = class_mult<S>(c) * Tc;
          for (int64_t gi = 0; gi < G; ++gi)
            gemm(false, true, Kg, Cg, cols, T(1), Z + sz.off[c] + gi * Kg * cols, cols, V + sv.off[c] + gi * Cg * cols,
                 cols, T(1), dU + c * us + gi * Kg * Cg, Cg);
        }
      }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t kc = 0; kc < K * Cg; ++kc) {
      T u[16];
      for (int e = 0; e < 16; ++e) {
        T acc = 0;
        for (int64_t a = 0; a < split; ++a) acc += ws[a * usz + e * us + kc];
        u[e] = acc;
      }
      T r[3][4];
      T* d = dw + kc * 9;
      if (S == 1) {
        // dw = G^T u G, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]
        const T h = T(0.5);
        for (int b = 0; b < 4; ++b) {
          r[0][b] = u[b] + h * (u[4 + b] + u[8 + b]);
          r[1][b] = h * (u[4 + b] - u[8 + b]);
          r[2][b] = h * (u[4 + b] + u[8 + b]) + u[12 + b];
        }
        for (int a = 0; a < 3; ++a) {
          d[a * 3 + 0] = r[a][0] + h * (r[a][1] + r[a][2]);
          d[a * 3 + 1] = h * (r[a][1] - r[a][2]);
          d[a * 3 + 2] = h * (r[a][1] + r[a][2]) + r[a][3];
        }
      } else {
        // per axis G^T = [1 1 0 0; 0 0 0 1; 0 1 1 0]
        for (int b = 0; b < 4; ++b) {
          r[0][b] = u[b] + u[4 + b];
          r[1][b] = u[12 + b];
          r[2][b] = u[4 + b] + u[8 + b];
        }
        for (int a = 0; a < 3; ++a) {
          d[a * 3 + 0] = r[a][0] + r[a][1];
          d[a * 3 + 1] = r[a][3];
          d[a * 3 + 2] = r[a][1] + r[a][2];
        }
      }
    }
  }
  return true;
}

// Stride 2, input gradient: the adjoint of conv3x3<T, 2>. Per tile dV_c = U_c^T Z_c (U stored
// transposed, C x K: OpenBLAS packs a transposed operand slowly) with
// Z = A dy A^T, and the 5x5 patch gradient B dV B^T is added into dx; per axis the adjoint
// of B^T is dd = [t0, t3, t1 - t0 - t2, t4, t2] (t: entries 0, 1, 2, 3 sub 0, 3 sub 1).
// Patches of neighbouring tiles share a row or column, so chunks run in two phases (even,
// then odd chunks; chunks are whole tile rows, so chunk k and k + 2 never share a row) into
// a dx zeroed first. Images whose tile rows need several chunks are declined (col2im).
// Accuracy: the patch's middle row and column sum three products that largely cancel, so the
// float32 error is a small multiple of im2col's (still inside the 1e-5 tolerance).
template <typename T>
void input_grad_transform_s2(const Plan& p, const T* dV, int64_t r0, int64_t r1, T* dx, T* buf) {
  const int64_t tw = p.TW, Tc = (r1 - r0) * tw, Wp = 4 * tw + 1;
  const Slots<T, 2> sl(p.Cin, Tc);
  const Cols cols(p, Wp, p.ow);
  const int64_t qlo = cols.qlo, qhi = cols.qhi;
  T* X[5];
  for (int k = 0; k < 5; ++k) X[k] = buf + k * Wp;
  for (int64_t i = 0; i < p.Cin; ++i) {
    const T* e[5][5];
    sl.entries(dV, i, Tc, e);
    for (int64_t rr = 0; rr < r1 - r0; ++rr) {
      const int64_t r = r0 + rr, n = r / p.TH, th = r % p.TH, t0 = rr * tw;
      // Columns, per row entry k: x[4j] = v0[j] + v2[j-1], x[4j+1] = v3, x[4j+2] = v1 - v0 - v2,
      // x[4j+3] = v4, and x[4 tw] = v2[tw-1].
      for (int k = 0; k < 5; ++k) {
        const T* v0 = e[k][0] + t0;
        const T* v1 = e[k][1] + t0;
        const T* v2 = e[k][2] + t0;
        const T* v3 = e[k][3] + t0;
        const T* v4 = e[k][4] + t0;
        T* x = X[k];
        x[0] = v0[0];
        for (int64_t j = 1; j < tw; ++j) x[4 * j] = v0[j] + v2[j - 1];
        for (int64_t j = 0; j < tw; ++j)
          x[4 * j + 1] = v3[j], x[4 * j + 2] = v1[j] - v0[j] - v2[j], x[4 * j + 3] = v4[j];
        x[4 * tw] = v2[tw - 1];
      }
      // Rows: physical rows [X0, X3, X1 - X0 - X2, X4, X2], added where they fall inside dx.
      T* plane = dx + (n * p.Cin + i) * p.Hin * p.Win;
      for (int a = 0; a < 5; ++a) {
        const int64_t ih = 4 * th + p.oh + a;
        if (ih < 0 || ih >= p.Hin || qlo >= qhi) continue;
        T* d = plane + ih * p.Win + cols.iw0;
        if (a == 2) {
          for (int64_t q = qlo; q < qhi; ++q) d[q] += X[1][q] - X[0][q] - X[2][q];
        } else {
          const T* s = X[a == 0 ? 0 : a == 1 ? 3 : a == 3 ? 4 : 2];
          for (int64_t q = qlo; q < qhi; ++q) d[q] += s[q];
        }
      }
    }
  }
}

template <typename T>
bool conv3x3_input_grad_s2(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                           int64_t off_h, int64_t off_w, const T* dy, const T* w, T* dx, int64_t G) {
  // Plan roles: Cin = C (dx channels), Cout = K (dy channels).
  Plan p{N, C, H, W, K, Ho, Wo, off_h, off_w, (Ho + 1) / 2, (Wo + 1) / 2, 0, 0, 0, 0, 0};
  p.rows = N * p.TH;
  const int64_t Cg = C / G, Kg = K / G;  // U_c is C x Kg, per group
  const int64_t elem = sizeof(T), us = pad_stride<T>(C * Kg), ubytes = 16 * us * elem;
  int nt;
  constexpr int64_t E = tile_values<2>(), rb = row_buf<2>(1, 1);
  if (!make_plan(p, ubytes, 32 * kStridePad, (E * (C + K) + rb) * elem, nt, G) || p.segs != 1) return false;
  // Every phase gets a chunk per thread where the rows allow (cut alike for 1 and 2 threads).
  p.nchunks = std::min(p.rows, (p.nchunks + 2 * p.split - 1) / (2 * p.split) * (2 * p.split));
  p.tmax = ((p.rows + p.nchunks - 1) / p.nchunks) * p.TW;
  const int64_t vsz = Slots<T, 2>(C, p.tmax).size(), zsz = Slots<T, 2>(K, p.tmax).size();
  const int64_t bsz = row_buf<2>(p.twmax, p.tmax);
  const int64_t per_thread = vsz + zsz + bsz;
  T* ws = static_cast<T*>(conv_workspace(ubytes + nt * per_thread * elem));
  T* U = ws;
  g_wino_calls.fetch_add(1);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    // Blocks of 32 output channels: the 32 weight rows read stay in L1, the stores are runs of 32.
#pragma omp for schedule(static) nowait
    for (int64_t bi = 0; bi < (Kg + 31) / 32 * C; ++bi) {
      const int64_t o0 = bi / C * 32, i = bi % C, gi = i / Cg;  // U_c[i][o]: w[o, i] of i's group
      for (int64_t o = o0; o < std::min(Kg, o0 + 32); ++o)
        weight_transform<T, 2>(w + ((gi * Kg + o) * Cg + i % Cg) * 9, false, U + i * Kg + o, us);
    }
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < N * C; ++pl) std::fill(dx + pl * H * W, dx + (pl + 1) * H * W, T(0));
    T* dV = ws + 16 * us + thread_id() * per_thread;
    T* Z = dV + vsz;
    T* buf = Z + zsz;
    for (int phase = 0; phase < 2; ++phase) {
#pragma omp for schedule(static)
      for (int64_t k = phase; k < p.nchunks; k += 2) {
        int64_t r0, r1, c0, c1;
        p.chunk(k, r0, r1, c0, c1);
        const int64_t Tc = (r1 - r0) * p.TW;
        if (Tc == 0) continue;
        grad_output_transform<T, 2>(p, dy, r0, r1, c0, c1, Z, buf);
        const Slots<T, 2> sv(C, Tc), sz(K, Tc);
        for (int c = 0; c < 16; ++c) {
          const int64_t cols = class_mult<2>(c) * Tc;
          for (int64_t gi = 0; gi < G; ++gi)
            gemm(false, false, Cg, cols, Kg, T(1), U + c * us + gi * Cg * Kg, Kg, Z + sz.off[c] + gi * Kg * cols, cols,
                 T(0), dV + sv.off[c] + gi * Cg * cols, cols);
        }
        input_grad_transform_s2(p, dV, r0, r1, dx, buf);
      }
    }
  }
  return true;
}


// ---------------------------------------------------------------- dilation by space-to-batch
// Stride 1, dilation (dh, dw), padding (qh dh, qw dw) (DeepLab's atrous trick). Output row
// o = r + dh a reads input rows o - qh dh + dh i = r + dh (a - qh + i), i = 0, 1, 2: phase r of y
// (rows r + dh a) is the undilated convolution, offset -qh, of phase r of x; the same per
// column. Input gradient: dx_r[b] = sum_i dy_r[b + qh - i] w[i], the flipped stride-1 call at
// offset qh - 2 on the phases of dy. Weight gradient: the sum over all outputs is the sum over
// the phases' undilated weight gradients. Every phase is cut to ceil(H / dh) x ceil(W / dw),
// zero past the image (those zeros are the convolution's padding; dy's are positions with no
// output), so the results are exact; the phases of all images are one batch of N dh dw.


// Counts the phase copies against the cap (make_plan) for the inner Winograd call.
struct PhaseReserve {
  explicit PhaseReserve(int64_t bytes) { t_phase_bytes = bytes; }
  ~PhaseReserve() { t_phase_bytes = 0; }
};

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Below this many elements a permute stays on one thread (fork/join costs more).
constexpr int64_t kPermuteParallel = int64_t(1) << 15;

// xp[(n dh + rh) dw + rw, c, a, b] = x[n, c, rh + dh a, rw + dw b] (zero past H x W), phases of
// Hq x Wq. One item per (n, c, row of the dh Hq rows the phases cover): x is read in order.
template <typename T>
void to_phases(const T* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t dh, int64_t dw, int64_t Hq,
               int64_t Wq, T* xp) {
  const int64_t Hr = dh * Hq, items = N * C * Hr;
#pragma omp parallel for schedule(static) if (items * Wq * dw >= kPermuteParallel)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t h = it % Hr, c = it / Hr % C, n = it / (Hr * C), rh = h % dh, a = h / dh;
    for (int64_t rw = 0; rw < dw; ++rw) {
      T* dst = xp + ((((n * dh + rh) * dw + rw) * C + c) * Hq + a) * Wq;
      const int64_t m = h < H && rw < W ? (W - rw + dw - 1) / dw : 0;  // samples inside the image
      if (m > 0) {
        const T* src = x + ((n * C + c) * H + h) * W + rw;
        for (int64_t b = 0; b < m; ++b) dst[b] = src[dw * b];
      }
      std::fill(dst + m, dst + Wq, T(0));
    }
  }
}

// The inverse for the valid positions: y[n, k, o, q] = yp[(n dh + o % dh) dw + q % dw, k, o / dh,
// q / dw], then ep (without its bias) on each output row while it is in cache, its residual
// indexed in y's layout.
template <typename T>
void from_phases(const T* yp, int64_t N, int64_t K, int64_t Ho, int64_t Wo, int64_t dh, int64_t dw, int64_t Hq,
                 int64_t Wq, const Epilogue<T>& ep, T* y) {
  const int64_t rows = N * K * Ho;
  const bool fused = ep.fused();
#pragma omp parallel for schedule(static) if (rows * Wo >= kPermuteParallel)
  for (int64_t it = 0; it < rows; ++it) {
    const int64_t o = it % Ho, k = it / Ho % K, n = it / (Ho * K), rh = o % dh, a = o / dh;
    T* dst = y + it * Wo;
    for (int64_t rw = 0; rw < std::min(dw, Wo); ++rw) {
      const T* src = yp + ((((n * dh + rh) * dw + rw) * K + k) * Hq + a) * Wq;
      const int64_t m = (Wo - rw + dw - 1) / dw;
      for (int64_t b = 0; b < m; ++b) dst[rw + dw * b] = src[b];
    }
    if (fused) ep.run(dst, dst, it * Wo, nullptr, Wo);
  }
}

// One call's phase batch: B = N dh dw images of Hq x Wq (x or dx, C channels) and Hoq x Woq (y or
// dy, K channels), their copies xp and yp in conv_phase_buffer (each rounded up to 64 elements, so yp
// starts on a cache line).
template <typename T>
struct Phases {
  int64_t B, Hq, Wq, Hoq, Woq, bytes = 0;
  T* xp = nullptr;
  T* yp = nullptr;
  // False: the padding is not a multiple of the dilation, or the copies alone exceed the cap.
  bool init(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int64_t dh, int64_t dw,
            int64_t ph, int64_t pw) {
    if (dh < 1 || dw < 1 || ph % dh || pw % dw) return false;
    B = N * dh * dw, Hq = cdiv(H, dh), Wq = cdiv(W, dw), Hoq = cdiv(Ho, dh), Woq = cdiv(Wo, dw);
    const int64_t xs = cdiv(B * C * Hq * Wq, 64) * 64, ys = cdiv(B * K * Hoq * Woq, 64) * 64;
    bytes = (xs + ys) * (int64_t)sizeof(T);
    if (bytes >= conv_workspace_limit()) return false;
    xp = static_cast<T*>(conv_phase_buffer(bytes));
    yp = xp + xs;
    return true;
  }
};

}  // namespace

template <typename T>
bool winograd_conv3x3(int64_t N, int64_t Cin, int64_t Hin, int64_t Win, int64_t Cout, int64_t Hout,
                      int64_t Wout, int64_t stride, int64_t off_h, int64_t off_w, const T* in, const T* w,
                      bool flip, const Epilogue<T>& ep, T* out, int64_t groups) {
  if (N == 0 || Cout == 0 || Hout == 0 || Wout == 0) return true;  // nothing to write
  if (stride == 1)
    return conv3x3<T, 1>(N, Cin, Hin, Win, Cout, Hout, Wout, off_h, off_w, in, w, flip, ep, out, groups);
  if (stride == 2 && !flip)
    return conv3x3<T, 2>(N, Cin, Hin, Win, Cout, Hout, Wout, off_h, off_w, in, w, flip, ep, out, groups);
  return false;
}

template <typename T>
bool winograd_conv3x3_input_grad(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                                 int64_t off_h, int64_t off_w, const T* dy, const T* w, T* dx, int64_t groups) {
  if (N == 0 || C == 0 || H == 0 || W == 0) return true;  // nothing to write
  if (K == 0 || Ho == 0 || Wo == 0) return false;       // an all-zero dx: col2im handles it
  return conv3x3_input_grad_s2<T>(N, C, H, W, K, Ho, Wo, off_h, off_w, dy, w, dx, groups);
}

template <typename T>
bool winograd_conv3x3_weight(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                             int64_t stride, int64_t off_h, int64_t off_w, const T* x, const T* dy, T* dw,
                             int64_t groups) {
  if (N == 0 || Ho == 0 || Wo == 0) return false;  // the caller zero-fills
  if (stride == 1) return conv3x3_weight<T, 1>(N, C, H, W, K, Ho, Wo, off_h, off_w, x, dy, dw, groups);
  if (stride == 2) return conv3x3_weight<T, 2>(N, C, H, W, K, Ho, Wo, off_h, off_w, x, dy, dw, groups);
  return false;
}

#define PYDL_WINO(T)                                                                                              \
  template bool winograd_conv3x3_weight<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,  \
                                           int64_t, int64_t, const T*, const T*, T*, int64_t);                     \
  template bool winograd_conv3x3_input_grad<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,       \
                                               int64_t, int64_t, const T*, const T*, T*, int64_t);                 \
  template bool winograd_conv3x3<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                    int64_t, const T*, const T*, bool, const Epilogue<T>&, T*, int64_t);
PYDL_WINO(float)
PYDL_WINO(double)
#undef PYDL_WINO

template <typename T>
bool winograd_conv3x3_dilated(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                              int64_t dh, int64_t dw, int64_t ph, int64_t pw, const T* x, const T* w,
                              const Epilogue<T>& ep, T* y, int64_t groups) {
  if (N == 0 || K == 0 || Ho == 0 || Wo == 0) return true;  // nothing to write
  Phases<T> P;
  if (!P.init(N, C, H, W, K, Ho, Wo, dh, dw, ph, pw)) return false;
  to_phases(x, N, C, H, W, dh, dw, P.Hq, P.Wq, P.xp);
  // The bias goes in with the output transform; the residual and activation need y's layout.
  Epilogue<T> bias_only, rest = ep;
  bias_only.bias = ep.bias, rest.bias = nullptr;
  {
    PhaseReserve reserve(P.bytes);
    if (!conv3x3<T, 1>(P.B, C, P.Hq, P.Wq, K, P.Hoq, P.Woq, -ph / dh, -pw / dw, P.xp, w, false, bias_only, P.yp,
                       groups))
      return false;
  }
  from_phases(P.yp, N, K, Ho, Wo, dh, dw, P.Hoq, P.Woq, rest, y);
  return true;
}

template <typename T>
bool winograd_conv3x3_dilated_input_grad(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho,
                                         int64_t Wo, int64_t dh, int64_t dw, int64_t ph, int64_t pw, const T* dy,
                                         const T* w, T* dx, int64_t groups) {
  if (N == 0 || C == 0 || H == 0 || W == 0) return true;  // nothing to write
  Phases<T> P;  // xp: dx's phases, yp: dy's
  if (!P.init(N, C, H, W, K, Ho, Wo, dh, dw, ph, pw)) return false;
  if (K == 0 || Ho == 0 || Wo == 0) {  // no output reads x
    std::fill(dx, dx + N * C * H * W, T(0));
    return true;
  }
  to_phases(dy, N, K, Ho, Wo, dh, dw, P.Hoq, P.Woq, P.yp);
  {
    PhaseReserve reserve(P.bytes);
    if (!conv3x3<T, 1>(P.B, K, P.Hoq, P.Woq, C, P.Hq, P.Wq, ph / dh - 2, pw / dw - 2, P.yp, w, true, Epilogue<T>{},
                       P.xp, groups))
      return false;
  }
  from_phases(P.xp, N, C, H, W, dh, dw, P.Hq, P.Wq, Epilogue<T>{}, dx);
  return true;
}

template <typename T>
bool winograd_conv3x3_dilated_weight(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                                     int64_t dh, int64_t dw, int64_t ph, int64_t pw, const T* x, const T* dy,
                                     T* dwt, int64_t groups) {
  if (N == 0 || Ho == 0 || Wo == 0) return false;  // the caller zero-fills
  Phases<T> P;
  if (!P.init(N, C, H, W, K, Ho, Wo, dh, dw, ph, pw)) return false;
  to_phases(x, N, C, H, W, dh, dw, P.Hq, P.Wq, P.xp);
  to_phases(dy, N, K, Ho, Wo, dh, dw, P.Hoq, P.Woq, P.yp);
  PhaseReserve reserve(P.bytes);
  return conv3x3_weight<T, 1>(P.B, C, P.Hq, P.Wq, K, P.Hoq, P.Woq, -ph / dh, -pw / dw, P.xp, P.yp, dwt, groups);
}

#define PYDL_WINO_DILATED(T)                                                                                       \
  template bool winograd_conv3x3_dilated<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                            int64_t, int64_t, int64_t, const T*, const T*, const Epilogue<T>&, T*,  \
                                            int64_t);                                                             \
  template bool winograd_conv3x3_dilated_input_grad<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,        \
                                                       int64_t, int64_t, int64_t, int64_t, int64_t, const T*,      \
                                                       const T*, T*, int64_t);                                    \
  template bool winograd_conv3x3_dilated_weight<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,   \
                                                   int64_t, int64_t, int64_t, int64_t, const T*, const T*, T*, int64_t);
PYDL_WINO_DILATED(float)
PYDL_WINO_DILATED(double)
#undef PYDL_WINO_DILATED

int64_t winograd_calls() { return g_wino_calls.load(); }

}  // namespace pydl
