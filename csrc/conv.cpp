// conv: 2-D convolution (cross-correlation, PyTorch semantics) on the CPU.
//
// Math: y[n,k,oh,ow] = b[k] + sum_{c in group(k), i, j} w[k,c,i,j] * x[n,c,oh*sh-ph+i*dh, ow*sw-pw+j*dw]
// (zero outside the image). ph/pw are the top/left padding; the bottom/right padding is
// implied by the output size taken from y (asymmetric 'same' padding for even kernels).
// Layout: NCHW, C-contiguous; w (K, C/groups, kh, kw).
//
// Algorithms, one table for the three directions (Algo; choose() holds the automatic rule,
// applies() what each can compute, pydl.backends.conv_algorithm forces one):
//  * depthwise_blocked (groups == C == K): 8 (float) / 4 (double) channels of an image interleaved
//    pixel-major, one full vector FMA per tap and output; 3-, 5- and 7-wide kernels at stride 1 or 2
//    run row kernels that load each input pixel once for all the outputs it feeds. The input
//    gradient at stride 1 is the same forward over dy with the flipped kernel.
//  * depthwise (groups == C == K): one (n, c) plane per OpenMP iteration, plain loops; the fallback
//    for planes whose interleaved copies do not fit the workspace cap.
//  * winograd (3x3, stride 1 or 2, not depthwise, GEMMs per group; dilated at stride 1 by
//    space-to-batch): conv_winograd.cpp.
//  * gemm_1x1 (1x1, stride 1, no padding): y[n, g] = W_g @ x[n, g], a GEMM straight on x (the
//    forward of wide 1x1 layers on 7x7-sized planes with a batch takes tiled: one wider GEMM
//    over several images).
//  * per_image (forward; strided input gradient), deep reductions with at least one image per
//    thread: each thread takes whole images, im2col into its own one-image buffer, GEMM
//    straight into y.
//  * grouped_direct (groups of several channels, any stride; all three directions): per (image,
//    group) the planes on the flat grid of phase planes, register blocks of channels x flat
//    outputs (4 x 3 vectors; 8 x 3 AVX-512 vectors for forward and input grad); no im2col, no BLAS.
//  * direct_blocked (every group's channels in blocks of 16 float / 8 double, the last one zero-padded,
//    any stride; all three directions): channels in the vector lanes, register blocks of 2 vectors x
//    6 pixels, for many channels per group on small planes, few-channel stems and dense kernels of
//    5x5 and more (no im2col).
//  * winograd_blocked (3x3, stride 1, no dilation; all three directions): winograd's F(2x2, 3x3) on
//    direct_blocked's lane blocks, the 16 products of a tile block summed in registers (no
//    per-group BLAS call), for grouped layers of 16 or more channels a group (ResNeXt's, RegNet's
//    24) and dense ones of up to 128.
//  * tiled, any geometry: im2col + GEMM over a bounded column buffer: the batch (and, for big
//    images, the output pixels) is cut into tiles whose columns (C*kh*kw rows x tile width) plus one
//    GEMM result fit under the workspace cap (default 64 MiB, and a 4 MiB cache target so
//    the columns are still in cache when the GEMM reads them). One GEMM per tile and group;
//    several small images share one GEMM (columns side by side) and a cheap permute puts
//    the result back into NCHW; one small image's threads share its im2col and split the GEMM's
//    rows (output channels) instead of its few columns.
// Threading: ONE pool (OpenMP). OpenBLAS is switched to one thread and every GEMM is cut
// into per-thread column (forward, grad input) or row (grad weight) blocks, each thread
// running im2col for its own block right before multiplying it: no nested pools, no
// oversubscription, no intra-GEMM synchronization. Small problems stay on one thread.
// Backward (derivation): with col the im2col matrix of x and Y_g = W_g col_g,
//   dW_g = sum_tiles dY_g col_g^T,  dcol_g = W_g^T dY_g,  dx = col2im(dcol) (the adjoint
//   of im2col: each column entry is added back to the pixel it was read from),
//   db[k] = sum_{n,oh,ow} dy[n,k,oh,ow] (float64 accumulation).
// col2im gathers per (n, c) plane, one plane per thread: deterministic, no atomics.
// The workspace is a per-thread buffer kept between calls (no page faults per call);
// it never grows past the cap unless a single column of the matrix is larger.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PYDL_X86 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blas.h"
#include "common.h"
#include "conv_winograd.h"
#include "epilogue.h"
#include "geometry.h"

namespace pydl {
namespace {

std::atomic<int64_t> g_ws_limit{int64_t(64) << 20};
std::atomic<int64_t> g_ws_peak{0};
int64_t g_tile_bytes = int64_t(4) << 20;  // private knob: _cpu._set_conv_tile_bytes

// Per-thread workspace, grown on demand and kept: a fresh 64 MiB allocation per call
// would cost thousands of page faults. `tracked`: recorded by the peak tracker.
struct Workspace {
  bool tracked;
  std::vector<unsigned char> buf;
  void* get(int64_t bytes) {
    if ((int64_t)buf.size() < bytes) {
      std::vector<unsigned char>().swap(buf);
      buf.resize((size_t)bytes);
    }
    int64_t prev = g_ws_peak.load();
    while (tracked && prev < bytes && !g_ws_peak.compare_exchange_weak(prev, bytes)) {
    }
    return buf.data();
  }
};
thread_local Workspace t_ws{true}, t_phases{false};
}  // namespace

void* conv_workspace(int64_t bytes) { return t_ws.get(bytes); }
void* conv_phase_buffer(int64_t bytes) { return t_phases.get(bytes); }
int64_t conv_workspace_limit() { return g_ws_limit.load(); }

namespace {

struct Geo {
  int64_t N, C, H, W, K, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, G;
  int64_t Cg() const { return C / G; }
  int64_t Kg() const { return K / G; }
  int64_t L() const { return Ho * Wo; }
  int64_t HW() const { return H * W; }
  int64_t R() const { return C * kh * kw; }  // rows of the column matrix, all groups
  bool pointwise() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && Ho == H && Wo == W;
  }
  bool depthwise() const { return G == C && K == C; }
};

// Valid output range [lo, hi) along one axis for tap offset off = t*d - p: the outputs o
// with 0 <= o*s + off < in.
inline void valid_range(int64_t off, int64_t s, int64_t in, int64_t out, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = in - off <= 0 ? 0 : (in - off - 1) / s + 1;
  lo = std::min(lo, out);
  hi = std::min(std::max(hi, lo), out);
}

// A tile: images [n0, n0 + nb) with all output pixels, or one image with pixels [l0, l0 + lc).
struct Tile {
  int64_t n0, nb, l0, lc;
  int64_t width() const { return nb * lc; }
};

// Tiles whose columns (rows x width) plus extra_rows x width fit under the limit.
std::vector<Tile> make_tiles(const Geo& g, int64_t rows, int64_t extra_rows, int64_t elem,
                             int64_t& max_width) {
  // The cap bounds memory; the cache target keeps a tile's columns in cache between
  // im2col and the GEMM (a tile larger than the cache would round-trip through DRAM).
  const int64_t limit = std::min(g_ws_limit.load(), g_tile_bytes);
  const int64_t per_col = (rows + extra_rows) * elem;
  int64_t cols = std::max<int64_t>(1, limit / std::max<int64_t>(per_col, 1));
  std::vector<Tile> t;
  const int64_t L = g.L();
  if (cols >= L) {
    int64_t nb = std::max<int64_t>(1, std::min(g.N, cols / L));
    for (int64_t n = 0; n < g.N; n += nb) t.push_back({n, std::min(nb, g.N - n), 0, L});
  } else {
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t l = 0; l < L; l += cols) t.push_back({n, 1, l, std::min(cols, L - l)});
  }
  max_width = 0;
  for (auto& x : t) max_width = std::max(max_width, x.width());
  return t;
}

// Thread partition [lo, hi) of n items, in chunks aligned to `align` items.
inline void split(int64_t n, int64_t align, int64_t& lo, int64_t& hi) {
#ifdef _OPENMP
  const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
  const int64_t nt = 1, tid = 0;
#endif
  const int64_t chunks = (n + align - 1) / align;
  lo = std::min(n, (chunks * tid / nt) * align);
  hi = std::min(n, (chunks * (tid + 1) / nt) * align);
}

// One column-matrix row segment: d[l] = x_image[c, oh*sh + offh, ow*sw + offw] for l = oh*Wo + ow
// in [lbeg, lend) (zero outside the image). d is indexed by l.
template <typename T>
inline void im2col_segment(const Geo& g, const T* xc, int64_t i, int64_t jj, int64_t lbeg, int64_t lend,
                           T* d0) {
  const int64_t offh = i * g.dh - g.ph, offw = jj * g.dw - g.pw;
  int64_t wlo, whi;
  valid_range(offw, g.sw, g.W, g.Wo, wlo, whi);
  if (g.sh == 1 && g.sw == 1 && g.Wo == g.W) {
    // Stride 1 and output width = input width ('same'-like): the row is the input plane
    // shifted by offh*W + offw. One copy, then zero the rows outside the image and the
    // |offw| columns per row that wrapped around from the neighbouring row.
    int64_t hlo, hhi;
    valid_range(offh, 1, g.H, g.Ho, hlo, hhi);
    const int64_t shift = offh * g.W + offw;
    const int64_t qa = std::min(lend, std::max(lbeg, hlo * g.Wo));
    const int64_t qb = std::max(qa, std::min(lend, hhi * g.Wo));
    std::fill(d0 + lbeg, d0 + qa, T(0));
    std::fill(d0 + qb, d0 + lend, T(0));
    const int64_t ca = std::max(qa, -shift), cb = std::min(qb, g.HW() - shift);  // stay inside x
    if (ca < cb) std::memcpy(d0 + ca, xc + ca + shift, (size_t)(cb - ca) * sizeof(T));
    if (qa < qb) {
      for (int64_t oh = qa / g.Wo; oh * g.Wo < qb; ++oh) {
        const int64_t a = std::max(qa, oh * g.Wo) - oh * g.Wo;
        const int64_t b = std::min(qb, (oh + 1) * g.Wo) - oh * g.Wo;
        T* d = d0 + oh * g.Wo;
        for (int64_t ow = a; ow < std::min(wlo, b); ++ow) d[ow] = T(0);
        for (int64_t ow = std::max(whi, a); ow < b; ++ow) d[ow] = T(0);
      }
    }
    return;
  }
  for (int64_t oh = lbeg / g.Wo; oh * g.Wo < lend; ++oh) {
    const int64_t a = std::max(lbeg, oh * g.Wo) - oh * g.Wo;
    const int64_t b = std::min(lend, (oh + 1) * g.Wo) - oh * g.Wo;
    T* d = d0 + oh * g.Wo;
    const int64_t ih = oh * g.sh + offh;
    if (ih < 0 || ih >= g.H) {
      std::fill(d + a, d + b, T(0));
      continue;
    }
    const T* src = xc + ih * g.W + offw;
    const int64_t lo = std::max(a, std::min(wlo, b)), hi = std::max(lo, std::min(whi, b));
    std::fill(d + a, d + lo, T(0));
    if (g.sw == 1) {
      std::memcpy(d + lo, src + lo, (size_t)(hi - lo) * sizeof(T));
    } else if (g.sw == 2) {
      // Constant stride: the compiler turns this into vector loads + shuffles.
      for (int64_t ow = lo; ow < hi; ++ow) d[ow] = src[2 * ow];
    } else {
      for (int64_t ow = lo; ow < hi; ++ow) d[ow] = src[ow * g.sw];
    }
    std::fill(d + hi, d + b, T(0));
  }
}

// Whole-image im2col through a zero-padded copy of each channel plane: the rows of the
// column matrix become plain strided copies with no bounds logic. For strided or small
// outputs the per-segment bounds work of im2col_segment costs more than the copies.
// pad holds padded_plane(g) elements.
inline int64_t padded_rows(const Geo& g) { return (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1; }
inline int64_t padded_cols(const Geo& g) { return (g.Wo - 1) * g.sw + (g.kw - 1) * g.dw + 1; }
inline int64_t padded_plane(const Geo& g) { return padded_rows(g) * padded_cols(g); }
// Worth it unless the plain path is one memcpy per row-shift already (stride 1, same width),
// and only while the padded plane stays small next to the columns it feeds.
inline bool padded_im2col_pays(const Geo& g) {
  return !(g.sh == 1 && g.sw == 1 && g.Wo == g.W) && padded_plane(g) <= g.kh * g.kw * g.L();
}

template <typename T>
void im2col_image_padded(const Geo& g, const T* xn, T* col, T* pad) {
  const int64_t Hp = padded_rows(g), Wp = padded_cols(g), L = g.L();
  // Rows / columns of the padded window that lie inside the image.
  const int64_t r0 = std::min(std::max<int64_t>(g.ph, 0), Hp), r1 = std::max(r0, std::min(Hp, g.ph + g.H));
  const int64_t q0 = std::min(std::max<int64_t>(g.pw, 0), Wp), q1 = std::max(q0, std::min(Wp, g.pw + g.W));
  std::fill(pad, pad + Hp * Wp, T(0));  // the border stays zero for every channel
  // Strided taps (sw > 1) gather; where a stride is a whole number of dilations, a tap row or
  // column shifted by one output repeats an earlier one, which is then copied contiguously.
  // (3x3 stride 2: 4 of the 9 taps gather.)
  const int64_t di = g.sw > 1 && g.sh % g.dh == 0 ? g.sh / g.dh : 0;
  const int64_t dj = g.sw > 1 && g.sw % g.dw == 0 ? g.sw / g.dw : 0;
  for (int64_t c = 0; c < g.C; ++c) {
    const T* xc = xn + c * g.HW();
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(pad + r * Wp + q0, xc + (r - g.ph) * g.W + (q0 - g.pw), (size_t)(q1 - q0) * sizeof(T));
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t jj = 0; jj < g.kw; ++jj) {
        T* d = col + ((c * g.kh + i) * g.kw + jj) * L;
        const T* src = pad + i * g.dh * Wp + jj * g.dw;
        int64_t oh0 = 0;
        if (di && i >= di) {
          // Tap row i at output row oh reads what tap row i - di read at oh + 1.
          std::memcpy(d, d - di * g.kw * L + g.Wo, (size_t)(L - g.Wo) * sizeof(T));
          oh0 = g.Ho - 1;
        } else if (dj && jj >= dj) {
          // Tap column jj at output column ow reads what jj - dj read at ow + 1; the last
          // column of each output row comes from the plane.
          std::memcpy(d, d - dj * L + 1, (size_t)(L - 1) * sizeof(T));
          for (int64_t oh = 0; oh < g.Ho; ++oh) d[oh * g.Wo + g.Wo - 1] = src[oh * g.sh * Wp + (g.Wo - 1) * g.sw];
          continue;
        }
        d += oh0 * g.Wo;
        src += oh0 * g.sh * Wp;
        for (int64_t oh = oh0; oh < g.Ho; ++oh, d += g.Wo, src += g.sh * Wp) {
          if (g.sw == 1)
            std::memcpy(d, src, (size_t)g.Wo * sizeof(T));
          else if (g.sw == 2)
            for (int64_t ow = 0; ow < g.Wo; ++ow) d[ow] = src[2 * ow];
          else
            for (int64_t ow = 0; ow < g.Wo; ++ow) d[ow] = src[ow * g.sw];
        }
      }
  }
}

// The adjoint of im2col_image_padded: one image's columns summed into dx_n through the padded
// plane (no bounds logic in the scatter), then the plane's interior copied out. Called by one
// thread, which owns dx_n.
template <typename T>
void col2im_image_padded(const Geo& g, const T* col, T* dxn, T* pad) {
  const int64_t Hp = padded_rows(g), Wp = padded_cols(g), L = g.L();
  const int64_t r0 = std::min(std::max<int64_t>(g.ph, 0), Hp), r1 = std::max(r0, std::min(Hp, g.ph + g.H));
  const int64_t q0 = std::min(std::max<int64_t>(g.pw, 0), Wp), q1 = std::max(q0, std::min(Wp, g.pw + g.W));
  const bool covers = r0 == g.ph && r1 == g.ph + g.H && q0 == g.pw && q1 == g.pw + g.W;
  for (int64_t c = 0; c < g.C; ++c) {
    std::fill(pad, pad + Hp * Wp, T(0));
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t jj = 0; jj < g.kw; ++jj) {
        const T* s = col + ((c * g.kh + i) * g.kw + jj) * L;
        T* d = pad + i * g.dh * Wp + jj * g.dw;
        for (int64_t oh = 0; oh < g.Ho; ++oh, s += g.Wo, d += g.sh * Wp) {
          if (g.sw == 1)
            for (int64_t ow = 0; ow < g.Wo; ++ow) d[ow] += s[ow];
          else if (g.sw == 2)
            for (int64_t ow = 0; ow < g.Wo; ++ow) d[2 * ow] += s[ow];
          else
            for (int64_t ow = 0; ow < g.Wo; ++ow) d[ow * g.sw] += s[ow];
        }
      }
    T* xc = dxn + c * g.HW();
    // Input pixels the padded window never reaches (bottom/right remainder) get no gradient.
    if (!covers) std::fill(xc, xc + g.HW(), T(0));
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(xc + (r - g.ph) * g.W + (q0 - g.pw), pad + r * Wp + q0, (size_t)(q1 - q0) * sizeof(T));
  }
}

// Called by one thread: col[r, c] for rows [r0, r1) and tile columns [c0, c1), where tile
// column c = j*lc + (l - l0) holds pixel l of image n0 + j, and r = (channel, i, jj).
template <typename T>
void im2col_block(const Geo& g, const T* x, const Tile& t, T* col, int64_t r0, int64_t r1, int64_t c0,
                  int64_t c1) {
  if (c0 >= c1) return;
  const int64_t width = t.width(), kk = g.kh * g.kw;
  for (int64_t j = c0 / t.lc; j * t.lc < c1; ++j) {
    const int64_t lbeg = t.l0 + std::max<int64_t>(c0 - j * t.lc, 0);
    const int64_t lend = t.l0 + std::min(c1 - j * t.lc, t.lc);
    const T* xn = x + (t.n0 + j) * g.C * g.HW();
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r / kk, i = (r / g.kw) % g.kh, jj = r % g.kw;
      im2col_segment(g, xn + c * g.HW(), i, jj, lbeg, lend, col + r * width + j * t.lc - t.l0);
    }
  }
}

// dx[n0+j, c] += the column entries of tile t that were read from it (the adjoint of
// im2col); called inside a parallel region, each (image, channel) plane owned by one thread.
template <typename T>
void col2im(const Geo& g, const T* col, const Tile& t, T* dx) {
  const int64_t width = t.width();
#pragma omp for schedule(static) collapse(2)
  for (int64_t j = 0; j < t.nb; ++j) {
    for (int64_t c = 0; c < g.C; ++c) {
      T* xc = dx + ((t.n0 + j) * g.C + c) * g.HW();
      for (int64_t i = 0; i < g.kh; ++i) {
        for (int64_t jj = 0; jj < g.kw; ++jj) {
          const int64_t r = (c * g.kh + i) * g.kw + jj;
          const T* src = col + r * width + j * t.lc - t.l0;
          const int64_t offh = i * g.dh - g.ph, offw = jj * g.dw - g.pw;
          int64_t wlo, whi;
          valid_range(offw, g.sw, g.W, g.Wo, wlo, whi);
          const int64_t lend = t.l0 + t.lc;
          for (int64_t oh = t.l0 / g.Wo; oh * g.Wo < lend; ++oh) {
            const int64_t ih = oh * g.sh + offh;
            if (ih < 0 || ih >= g.H) continue;
            const int64_t a = std::max(t.l0, oh * g.Wo) - oh * g.Wo;
            const int64_t b = std::min(lend, (oh + 1) * g.Wo) - oh * g.Wo;
            const int64_t lo = std::max(a, std::min(wlo, b)), hi = std::max(lo, std::min(whi, b));
            const T* s = src + oh * g.Wo;
            T* d = xc + ih * g.W + offw;
            if (g.sw == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) d[ow] += s[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) d[ow * g.sw] += s[ow];
            }
          }
        }
      }
    }
  }
}
// Threads only pay off above some work: small problems run on the calling thread (a fork/join
// costs microseconds, far more on a loaded machine).
inline bool parallel_pays(const Geo& g) {
  return g.N * g.K * g.L() * g.Cg() * g.kh * g.kw > (int64_t(1) << 17);
}

// ---------------------------------------------------------------- depthwise (groups == C == K)
// The fallback for huge planes: one (image, channel) plane per call, the inner loop over a
// contiguous output row (compiled for a portable baseline plus an AVX2/FMA clone).

// Valid output ranges of every kernel tap, computed once per call (not per plane).
struct TapRanges {
  std::vector<int64_t> hlo, hhi, wlo, whi;
  explicit TapRanges(const Geo& g) : hlo(g.kh), hhi(g.kh), wlo(g.kw), whi(g.kw) {
    for (int64_t i = 0; i < g.kh; ++i) valid_range(i * g.dh - g.ph, g.sh, g.H, g.Ho, hlo[i], hhi[i]);
    for (int64_t j = 0; j < g.kw; ++j) valid_range(j * g.dw - g.pw, g.sw, g.W, g.Wo, wlo[j], whi[j]);
  }
};

template <typename T>
__attribute__((always_inline)) inline void dw_fwd_plane_impl(const Geo& g, const TapRanges& tr, const T* xc,
                                                             const T* wc, T bias, T* yc) {
  std::fill(yc, yc + g.L(), bias);
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t offh = i * g.dh - g.ph;
    for (int64_t jj = 0; jj < g.kw; ++jj) {
      const T wv = wc[i * g.kw + jj];
      const int64_t offw = jj * g.dw - g.pw, lo = tr.wlo[jj], hi = tr.whi[jj];
      for (int64_t oh = tr.hlo[i]; oh < tr.hhi[i]; ++oh) {
        const T* src = xc + (oh * g.sh + offh) * g.W + offw;
        T* d = yc + oh * g.Wo;
        if (g.sw == 1) {
          for (int64_t ow = lo; ow < hi; ++ow) d[ow] += wv * src[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) d[ow] += wv * src[ow * g.sw];
        }
      }
    }
  }
}

// dx[ih, iw] = sum_{i,j} w[i,j] dy[oh, ow] over oh*sh + offh = ih, ow*sw + offw = iw (scatter
// within the plane this thread owns).
template <typename T>
__attribute__((always_inline)) inline void dw_bwd_input_plane_impl(const Geo& g, const TapRanges& tr,
                                                                   const T* yc, const T* wc, T* xc) {
  std::fill(xc, xc + g.HW(), T(0));
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t offh = i * g.dh - g.ph;
    for (int64_t jj = 0; jj < g.kw; ++jj) {
      const T wv = wc[i * g.kw + jj];
      const int64_t offw = jj * g.dw - g.pw, lo = tr.wlo[jj], hi = tr.whi[jj];
      for (int64_t oh = tr.hlo[i]; oh < tr.hhi[i]; ++oh) {
        T* d = xc + (oh * g.sh + offh) * g.W + offw;
        const T* s = yc + oh * g.Wo;
        if (g.sw == 1) {
          for (int64_t ow = lo; ow < hi; ++ow) d[ow] += wv * s[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) d[ow * g.sw] += wv * s[ow];
        }
      }
    }
  }
}

// acc[i*kw + j] += sum_{oh,ow} dy[oh, ow] x[oh*sh + offh, ow*sw + offw] for one plane.
template <typename T>
__attribute__((always_inline)) inline void dw_bwd_weight_plane_impl(const Geo& g, const TapRanges& tr,
                                                                    const T* yc, const T* xc, T* acc) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t offh = i * g.dh - g.ph;
    for (int64_t jj = 0; jj < g.kw; ++jj) {
      const int64_t offw = jj * g.dw - g.pw, lo = tr.wlo[jj], hi = tr.whi[jj];
      T sum = 0;
      for (int64_t oh = tr.hlo[i]; oh < tr.hhi[i]; ++oh) {
        const T* s = xc + (oh * g.sh + offh) * g.W + offw;
        const T* d = yc + oh * g.Wo;
        if (g.sw == 1) {
#pragma omp simd reduction(+ : sum)
          for (int64_t ow = lo; ow < hi; ++ow) sum += d[ow] * s[ow];
        } else {
#pragma omp simd reduction(+ : sum)
          for (int64_t ow = lo; ow < hi; ++ow) sum += d[ow] * s[ow * g.sw];
        }
      }
      acc[i * g.kw + jj] += sum;
    }
  }
}

// The flat grid (the direct paths of any stride): each input plane is zero-padded and split
// into sh*sw phase planes, phase (a, b) holding the padded pixels (r*sh + a, c*sw + b), all of
// row pitch Wp. Output (oh, ow) sits at q = oh*Wp + ow, and tap (i, j) reads q + tap(i, j) in
// the phase (i*dh % sh, j*dw % sw): every tap is ONE contiguous loop over the flat outputs (the
// Wp - Wo extra columns per row are computed and dropped), no strided loads, no edge cases.
struct Flat {
  int64_t sh, sw, Hp, Wp, nq;  // phases per axis, phase rows and pitch, flat output length
  int64_t plane;               // one channel's phase planes, sh*sw*Hp*Wp
  explicit Flat(const Geo& g)
      : sh(g.sh), sw(g.sw), Hp(g.Ho + g.dh * (g.kh - 1) / g.sh), Wp(g.Wo + g.dw * (g.kw - 1) / g.sw),
        nq((g.Ho - 1) * Wp + g.Wo), plane(sh * sw * Hp * Wp) {}
  int64_t tap(const Geo& g, int64_t i, int64_t j) const {
    const int64_t r = i * g.dh, c = j * g.dw;
    return ((r % sh) * sw + c % sw) * Hp * Wp + r / sh * Wp + c / sw;
  }
  std::vector<int64_t> taps(const Geo& g) const {
    std::vector<int64_t> t((size_t)(g.kh * g.kw));
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) t[i * g.kw + j] = tap(g, i, j);
    return t;
  }
};

// xp (one channel's phase planes) from the plane xc: xp[a, b][r, c] = x[r*sh + a - ph, c*sw + b - pw]
// (zero outside).
// Zeroed: xp is already zero (only the image's rows are copied).
template <typename T, bool Zeroed = false>
__attribute__((always_inline)) inline void flat_pad(const Geo& g, const Flat& f, const T* xc, T* xp) {
  for (int64_t a = 0; a < f.sh; ++a)
    for (int64_t b = 0; b < f.sw; ++b) {
      // Columns c with 0 <= c*sw + b - pw < W: [lo, hi).
      const int64_t off = b - g.pw;
      const int64_t lo = std::min(f.Wp, off >= 0 ? 0 : (-off + f.sw - 1) / f.sw);
      const int64_t hi = std::min(f.Wp, std::max(lo, g.W - off <= 0 ? 0 : (g.W - off - 1) / f.sw + 1));
      T* ph = xp + (a * f.sw + b) * f.Hp * f.Wp;
      for (int64_t r = 0; r < f.Hp; ++r) {
        T* d = ph + r * f.Wp;
        const int64_t ih = r * f.sh + a - g.ph;
        if (ih < 0 || ih >= g.H || hi <= lo) {
          if (!Zeroed) std::fill(d, d + f.Wp, T(0));
          continue;
        }
        const T* s = xc + ih * g.W + off;
        if (!Zeroed) std::fill(d, d + lo, T(0));
        if (f.sw == 1)
          std::memcpy(d + lo, s + lo, (size_t)(hi - lo) * sizeof(T));
        else
          for (int64_t c = lo; c < hi; ++c) d[c] = s[c * f.sw];
        if (!Zeroed) std::fill(d + hi, d + f.Wp, T(0));
      }
    }
}

// The adjoint's last step: dx[ih, iw] = xp[phase][(ih + ph) / sh, (iw + pw) / sw], zero where the
// padded pixel is outside the phase planes (no window reads it).
template <typename T>
__attribute__((always_inline)) inline void flat_unpad(const Geo& g, const Flat& f, const T* xp, T* xc) {
  for (int64_t ih = 0; ih < g.H; ++ih) {
    T* d = xc + ih * g.W;
    const int64_t r = ih + g.ph;
    if (r < 0 || r / f.sh >= f.Hp) {
      std::fill(d, d + g.W, T(0));
      continue;
    }
    const T* row = xp + (r % f.sh) * f.sw * f.Hp * f.Wp + r / f.sh * f.Wp;
    if (f.sw == 1) {
      const int64_t a = std::min(g.W, std::max<int64_t>(0, -g.pw)), e = std::max(a, std::min(g.W, f.Wp - g.pw));
      std::fill(d, d + a, T(0));
      std::memcpy(d + a, row + a + g.pw, (size_t)(e - a) * sizeof(T));
      std::fill(d + e, d + g.W, T(0));
      continue;
    }
    // Column phase b holds the pixels iw = iw0, iw0 + sw, ... at c = (iw0 + pw) / sw, c + 1, ...
    for (int64_t b = 0; b < f.sw; ++b) {
      const int64_t iw0 = ((b - g.pw) % f.sw + f.sw) % f.sw;
      const T* src = row + b * f.Hp * f.Wp;
      int64_t iw = iw0, c = (iw0 + g.pw) / f.sw;
      for (; iw < g.W && c < 0; iw += f.sw, ++c) d[iw] = T(0);
      for (; iw < g.W && c < f.Wp; iw += f.sw, ++c) d[iw] = src[c];
      for (; iw < g.W; iw += f.sw) d[iw] = T(0);
    }
  }
}

// dy of one plane on the Wp-pitch flat grid, zero in the dropped columns.
template <typename T>
__attribute__((always_inline)) inline void flat_grid(const Geo& g, const Flat& f, const T* yc, T* dyg) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    std::memcpy(dyg + oh * f.Wp, yc + oh * g.Wo, (size_t)g.Wo * sizeof(T));
    if (oh + 1 < g.Ho) std::fill(dyg + oh * f.Wp + g.Wo, dyg + (oh + 1) * f.Wp, T(0));
  }
}

// The per-plane depthwise kernels in their AVX2/FMA and baseline variants (common.h).
#define PYDL_DW_T template <typename T>
PYDL_SIMD_DISPATCH(PYDL_DW_T, <T>, void, dw_fwd_plane,
                   (const Geo& g, const TapRanges& tr, const T* xc, const T* wc, T bias, T* yc),
                   (g, tr, xc, wc, bias, yc))
PYDL_SIMD_DISPATCH(PYDL_DW_T, <T>, void, dw_bwd_input_plane,
                   (const Geo& g, const TapRanges& tr, const T* yc, const T* wc, T* xc),
                   (g, tr, yc, wc, xc))
PYDL_SIMD_DISPATCH(PYDL_DW_T, <T>, void, dw_bwd_weight_plane,
                   (const Geo& g, const TapRanges& tr, const T* yc, const T* xc, T* acc),
                   (g, tr, yc, xc, acc))
#undef PYDL_DW_T

template <typename T>
void dw_forward(const Geo& g, const T* x, const T* w, const Epilogue<T>& ep, T* y) {
  const T* b = ep.bias;
  const TapRanges tr(g);
  const int64_t kk = g.kh * g.kw;
#pragma omp parallel for schedule(static) if (parallel_pays(g))
  for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
    const int64_t c = nc % g.C;
    dw_fwd_plane(g, tr, x + nc * g.HW(), w + c * kk, b ? b[c] : T(0), y + nc * g.L());
    if (ep.fused()) ep.run(y + nc * g.L(), y + nc * g.L(), nc * g.L(), nullptr, g.L());
  }
}

// The calling thread's workspace of `elems` T, or null with the failure kept in err (a thread
// of a parallel region must not throw; err.rethrow() raises it after the region).
template <typename T>
T* thread_scratch(int64_t elems, ParallelError& err) {
  try {
    return static_cast<T*>(t_ws.get(elems * (int64_t)sizeof(T)));
  } catch (...) {
    err.capture();
    return nullptr;
  }
}

// body(item, scratch) for items [0, n), split statically over the pool, each thread with
// its own workspace of `elems` T; a thread that cannot get one makes the call raise.
template <typename T, typename F>
void parallel_items(const Geo& g, int64_t n, int64_t elems, F&& body) {
  ParallelError err;
#pragma omp parallel if (parallel_pays(g))
  {
    T* s = thread_scratch<T>(elems, err);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < n; ++it)
      if (s) body(it, s);
  }
  err.rethrow();
}

// The three directions of a convolution (the algorithm table below is per direction).
enum class Dir : int { forward = 0, input_grad = 1, weight_grad = 2 };

// ---------------------------------------------------------------- grouped (grouped_direct)
// Few channels per group (ResNeXt's 4-32): per-group GEMMs are too thin for BLAS and im2col
// moves as many bytes as they compute on. Each (image, group) puts its planes on the flat grid
// (phase planes, so any stride) and the directions become one correlation
//   out[o][q] = sum_{p, t} wt(o, p, t) in[p][q + off[t]],
// a block of OB outputs x QB flat positions held in registers, each load feeding OB FMAs:
//  * forward: in = x's phase planes, off[t] = tap(t), out = y on the flat grid;
//  * input grad, the adjoint of those reads: dxp[c][p] = sum_{k,t} w[k,c,t] dyg[k][p - tap(t)], one
//    phase plane of dx at a time from the taps of that phase: in = dy on the flat grid behind a
//    zero margin M (the largest tap offset within a phase), off[t] = M - (tap(t) within its
//    phase), out = the phase plane (dx is gathered from the phase planes afterwards). A read
//    that crosses a row lands in dy's dropped columns, one past the plane in the zeros after nq.
// The weight gradient dw[k][c][t] = sum_q dyg[k][q] xp[c][q + tap(t)]: per c, blocks of 4 k x
// 3 taps of dot products in vector accumulators, reduced in a fixed order.
// VB: vector bytes, 32 (AVX2 and the baseline) or 64 (AVX-512); NV: vectors per block (2 for small
// planes at 64 bytes, whose flat rows would mostly pad a 3-vector block).
template <typename T, int VB = 32, int NV = 3>
struct GroupedTile {
  static constexpr int OB = 4;                                      // outputs per block
  static constexpr int QB = NV * VB / static_cast<int>(sizeof(T));  // flat positions per block
  static constexpr int TB = 3;                                  // taps per weight-gradient block
  typedef T vec __attribute__((vector_size(VB)));
  typedef T uvec __attribute__((vector_size(VB), aligned(sizeof(T))));  // an unaligned vector load/store
  static constexpr int VL = VB / static_cast<int>(sizeof(T));
  static int64_t round(int64_t n) { return (n + QB - 1) / QB * QB; }
  // By reference: a 32-byte vector passed by value changes the ABI where AVX is off (the base build).
  __attribute__((always_inline)) static inline void load(vec& v, const T* p) { v = *reinterpret_cast<const uvec*>(p); }
  __attribute__((always_inline)) static inline void store(T* p, const vec& v) { *reinterpret_cast<uvec*>(p) = v; }
};

// The correlation above: np input planes of pitch ip, nt taps at off[], weights
// wt[o*wo + p*wp + tw[t]].
struct Corr {
  int64_t np, nt, ip, wo, wp;
  const int64_t *off, *tw;
};

// out[o - o0][q - q0] (row pitch ld) for outputs [o0, o0 + OBN) and flat positions [q0, q0 + QB).
template <typename T, int VB, int NV, int OBN>
__attribute__((always_inline)) inline void corr_block(const Corr& c, const T* in, const T* wt, int64_t o0,
                                                      int64_t q0, T* out, int64_t ld) {
  using G = GroupedTile<T, VB, NV>;
  using V = typename G::vec;
  V acc[OBN][NV];
  for (int o = 0; o < OBN; ++o)
    for (int v = 0; v < NV; ++v) acc[o][v] = V{};
  for (int64_t p = 0; p < c.np; ++p) {
    const T* src = in + p * c.ip + q0;
    const T* wp = wt + o0 * c.wo + p * c.wp;
    for (int64_t t = 0; t < c.nt; ++t) {
      V xv[NV];
      for (int v = 0; v < NV; ++v) G::load(xv[v], src + c.off[t] + v * G::VL);
      for (int o = 0; o < OBN; ++o) {
        const T wv = wp[o * c.wo + c.tw[t]];
        for (int v = 0; v < NV; ++v) acc[o][v] += wv * xv[v];
      }
    }
  }
  for (int o = 0; o < OBN; ++o)
    for (int v = 0; v < NV; ++v) G::store(out + o * ld + v * G::VL, acc[o][v]);
}

// out[o * ld + q] for all no outputs and q < nq, in whole blocks (up to nq rounded up to QB).
template <typename T, int VB, int NV>
__attribute__((always_inline)) inline void corr(const Corr& c, const T* in, const T* wt, int64_t no, int64_t nq,
                                                T* out, int64_t ld) {
  using G = GroupedTile<T, VB, NV>;
  int64_t o0 = 0;
  if constexpr (VB == 64)  // AVX-512's 32 registers hold 8 outputs x 3 vectors
    for (; o0 + 2 * G::OB <= no; o0 += 2 * G::OB)
      for (int64_t q0 = 0; q0 < nq; q0 += G::QB)
        corr_block<T, VB, NV, 2 * G::OB>(c, in, wt, o0, q0, out + o0 * ld + q0, ld);
  for (; o0 + G::OB <= no; o0 += G::OB)
    for (int64_t q0 = 0; q0 < nq; q0 += G::QB) corr_block<T, VB, NV, G::OB>(c, in, wt, o0, q0, out + o0 * ld + q0, ld);
  for (; o0 < no; ++o0)
    for (int64_t q0 = 0; q0 < nq; q0 += G::QB) corr_block<T, VB, NV, 1>(c, in, wt, o0, q0, out + o0 * ld + q0, ld);
}

// pv[k0 + kk][c][t0 + tt] += the lanes of sum_{q < nqv} dyg[k0 + kk][q] xp[q + off[t0 + tt]] for KBN k x
// TBN taps: the partials stay vectors (one horizontal sum per call would cost as much as the
// dot products on small planes) until the item's last image.
template <typename T, int VB, int NV, int KBN, int TBN>
__attribute__((always_inline)) inline void wgrad_block(const T* dyg, int64_t nqv, const T* xp, const int64_t* off,
                                                       int64_t k0, int64_t t0, T* pv, int64_t pv_k) {
  using G = GroupedTile<T, VB, NV>;
  using V = typename G::vec;
  V acc[KBN][TBN];
  for (int k = 0; k < KBN; ++k)
    for (int t = 0; t < TBN; ++t) acc[k][t] = V{};
  const T* xs[TBN];
  const T* ys[KBN];
  for (int t = 0; t < TBN; ++t) xs[t] = xp + off[t0 + t];
  for (int k = 0; k < KBN; ++k) ys[k] = dyg + (k0 + k) * nqv;
  for (int64_t q = 0; q < nqv; q += G::VL) {
    V xv[TBN];
    for (int t = 0; t < TBN; ++t) G::load(xv[t], xs[t] + q);
    for (int k = 0; k < KBN; ++k) {  // one dy vector live at a time: 16 AVX2 registers in all
      V yv;
      G::load(yv, ys[k] + q);
      for (int t = 0; t < TBN; ++t) acc[k][t] += yv * xv[t];
    }
  }
  for (int k = 0; k < KBN; ++k)
    for (int t = 0; t < TBN; ++t) {
      T* p = pv + ((k0 + k) * pv_k + t0 + t) * G::VL;
      V cur;
      G::load(cur, p);
      G::store(p, cur + acc[k][t]);
    }
}

// Everything one grouped call shares: the flat grid, tap offsets, buffer pitches.
template <typename T, int VB, int NV>
struct GroupedCall {
  using G = GroupedTile<T, VB, NV>;
  const Geo& g;
  Dir d;
  Flat f;
  std::vector<int64_t> tap, iota;  // tap offsets; 0, 1, ... (the weight's tap of each)
  // Input grad, per phase plane: its taps' correlation offsets (M - offset in the phase) and indices.
  std::vector<std::vector<int64_t>> phase_off, phase_tap;
  int64_t margin = 0, nqr, nqv, pr, ipd;
  GroupedCall(const Geo& geo, Dir dir) : g(geo), d(dir), f(geo), tap(f.taps(geo)), iota(tap.size()) {
    // Each phase of dx gathers from its own taps only (the others would read zeros); M is the
    // largest tap offset within a phase.
    const int64_t hw = f.Hp * f.Wp;
    for (size_t t = 0; t < tap.size(); ++t) margin = std::max(margin, tap[t] % hw);
    for (size_t t = 0; t < tap.size(); ++t) iota[t] = (int64_t)t;
    phase_off.resize((size_t)(f.sh * f.sw));
    phase_tap.resize((size_t)(f.sh * f.sw));
    for (size_t t = 0; t < tap.size(); ++t) {
      phase_off[tap[t] / hw].push_back(margin - tap[t] % hw);
      phase_tap[tap[t] / hw].push_back((int64_t)t);
    }
    nqr = G::round(f.nq);                          // forward outputs per channel
    nqv = (f.nq + G::VL - 1) / G::VL * G::VL;      // weight grad: dy per channel
    pr = f.plane + G::QB;                          // input grad: dx phase planes + a block of overrun
    ipd = margin + G::round(f.Hp * f.Wp);          // input grad: dy plane with its margin
  }
  // Per-thread scratch, in elements.
  int64_t scratch() const {
    if (d == Dir::input_grad) return g.Kg() * ipd + g.Cg() * pr;
    const int64_t xs = g.Cg() * f.plane + G::QB;  // x's phase planes + the last block's overrun
    if (d == Dir::forward) return xs + g.Kg() * nqr;
    return pv_at() + g.Kg() * g.Cg() * g.kh * g.kw * G::VL;  // + dy on the grid, the vector partials
  }
  int64_t pv_at() const { return g.Cg() * f.plane + G::QB + g.Kg() * nqv; }  // weight grad: partials
};

// wgrad_block over all taps of one input channel c (pvc = pv + c*taps*VL), for KBN output channels from k0.
template <typename T, int VB, int NV, int KBN>
__attribute__((always_inline)) inline void wgrad_taps(const GroupedCall<T, VB, NV>& gc, const T* dyg, const T* xc,
                                                      int64_t k0, T* pvc) {
  using G = GroupedTile<T, VB, NV>;
  const int64_t taps = gc.g.kh * gc.g.kw, ld = gc.g.Cg() * taps;
  int64_t t0 = 0;
  for (; t0 + G::TB <= taps; t0 += G::TB)
    wgrad_block<T, VB, NV, KBN, G::TB>(dyg, gc.nqv, xc, gc.tap.data(), k0, t0, pvc, ld);
  for (; t0 < taps; ++t0) wgrad_block<T, VB, NV, KBN, 1>(dyg, gc.nqv, xc, gc.tap.data(), k0, t0, pvc, ld);
}

// One (image n, group gi) of direction gc.d. Forward: y through the epilogue. Input grad: dx.
// Weight grad: adds into the vector partials out (Kg x Cg x taps x VL).
template <typename T, int VB, int NV>
__attribute__((always_inline)) inline void grouped_item_impl(const GroupedCall<T, VB, NV>& gc, int64_t n, int64_t gi,
                                                             const T* a, const T* b, const Epilogue<T>* ep, T* out,
                                                             T* s) {
  using G = GroupedTile<T, VB, NV>;
  const Geo& g = gc.g;
  const Flat& f = gc.f;
  const int64_t Cg = g.Cg(), Kg = g.Kg(), taps = g.kh * g.kw;
  const T* wg = b + gi * Kg * Cg * taps;
  if (gc.d == Dir::forward) {  // a = x, b = w, out = y
    const T* xg = a + (n * g.C + gi * Cg) * g.HW();
    for (int64_t c = 0; c < Cg; ++c) flat_pad(g, f, xg + c * g.HW(), s + c * f.plane);
    std::fill(s + Cg * f.plane, s + Cg * f.plane + G::QB, T(0));
    T* acc = s + Cg * f.plane + G::QB;
    corr<T, VB, NV>(Corr{Cg, taps, f.plane, Cg * taps, taps, gc.tap.data(), gc.iota.data()}, s, wg, Kg, f.nq, acc,
                    gc.nqr);
    for (int64_t k = 0; k < Kg; ++k)
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        const int64_t o = ((n * g.K + gi * Kg + k) * g.Ho + oh) * g.Wo;
        ep->run(out + o, acc + k * gc.nqr + oh * f.Wp, o, ep->bias_at(gi * Kg + k), g.Wo);
      }
  } else if (gc.d == Dir::input_grad) {  // a = dy, b = w, out = dx
    for (int64_t k = 0; k < Kg; ++k) {
      T* p = s + k * gc.ipd;
      std::fill(p, p + gc.margin, T(0));
      flat_grid(g, f, a + (n * g.K + gi * Kg + k) * g.L(), p + gc.margin);
      std::fill(p + gc.margin + f.nq, p + gc.ipd, T(0));
    }
    // Phases in order: a phase's last block may run into the next phase, which is written after it.
    T* dxp = s + Kg * gc.ipd;
    const int64_t hw = f.Hp * f.Wp;
    for (size_t ph = 0; ph < gc.phase_off.size(); ++ph) {
      const auto& po = gc.phase_off[ph];
      if (po.empty()) {
        for (int64_t c = 0; c < Cg; ++c) std::fill(dxp + c * gc.pr + ph * hw, dxp + c * gc.pr + (ph + 1) * hw, T(0));
        continue;
      }
      corr<T, VB, NV>(Corr{Kg, (int64_t)po.size(), gc.ipd, taps, Cg * taps, po.data(), gc.phase_tap[ph].data()}, s,
                      wg, Cg, hw, dxp + ph * hw, gc.pr);
    }
    for (int64_t c = 0; c < Cg; ++c) flat_unpad(g, f, dxp + c * gc.pr, out + (n * g.C + gi * Cg + c) * g.HW());
  } else {  // a = x, b = dy, out = this item's dw partial
    const T* xg = a + (n * g.C + gi * Cg) * g.HW();
    for (int64_t c = 0; c < Cg; ++c) flat_pad(g, f, xg + c * g.HW(), s + c * f.plane);
    std::fill(s + Cg * f.plane, s + Cg * f.plane + G::QB, T(0));
    T* dyg = s + Cg * f.plane + G::QB;
    for (int64_t k = 0; k < Kg; ++k) {
      T* p = dyg + k * gc.nqv;
      flat_grid(g, f, b + (n * g.K + gi * Kg + k) * g.L(), p);
      std::fill(p + f.nq, p + gc.nqv, T(0));
    }
    for (int64_t c = 0; c < Cg; ++c) {
      int64_t k0 = 0;
      for (; k0 + G::OB <= Kg; k0 += G::OB)
        wgrad_taps<T, VB, NV, G::OB>(gc, dyg, s + c * f.plane, k0, out + c * taps * G::VL);
      for (; k0 < Kg; ++k0) wgrad_taps<T, VB, NV, 1>(gc, dyg, s + c * f.plane, k0, out + c * taps * G::VL);
    }
  }
}

#define PYDL_GROUPED_TV template <typename T, int VB, int NV>
#define PYDL_GROUPED_TV_ARGS <T, VB, NV>
PYDL_SIMD_DISPATCH(PYDL_GROUPED_TV, PYDL_GROUPED_TV_ARGS, void, grouped_item,
                   (const GroupedCall<T, VB, NV>& gc, int64_t n, int64_t gi, const T* a, const T* b,
                    const Epilogue<T>* ep, T* out, T* s),
                   (gc, n, gi, a, b, ep, out, s))
#undef PYDL_GROUPED_TV
#undef PYDL_GROUPED_TV_ARGS
// The AVX-512 variant: 64-byte vectors, twice the flat positions per block.
template <typename T, int NV>
PYDL_AVX512 __attribute__((noinline)) void grouped_item_avx512(const GroupedCall<T, 64, NV>& gc, int64_t n, int64_t gi,
                                                               const T* a, const T* b, const Epilogue<T>* ep, T* out,
                                                               T* s) {
  grouped_item_impl<T, 64, NV>(gc, n, gi, a, b, ep, out, s);
}
template <typename T, int VB, int NV>
void grouped_item_v(const GroupedCall<T, VB, NV>& gc, int64_t n, int64_t gi, const T* a, const T* b,
                    const Epilogue<T>* ep, T* out, T* s) {
  if constexpr (VB == 64)
    grouped_item_avx512<T, NV>(gc, n, gi, a, b, ep, out, s);
  else
    grouped_item<T, VB, NV>(gc, n, gi, a, b, ep, out, s);
}

// Direction d over all (image, group) items. The weight gradient splits the batch into
// `chunks` runs per group, each summed in image order into its own partial, and the partials
// are added in chunk order: the same sums for any thread count.
template <typename T, int VB, int NV>
void grouped_run_v(const Geo& g, Dir d, const T* a, const T* b, const Epilogue<T>* ep, T* out) {
  const GroupedCall<T, VB, NV> gc(g, d);
  const auto item = grouped_item_v<T, VB, NV>;
  const int64_t wsize = g.Kg() * g.Cg() * g.kh * g.kw;  // one group's dw
  // About 16 items whatever the thread count: the chunks fix the order of the sums.
  const int64_t chunks = d == Dir::weight_grad ? std::min<int64_t>(g.N, std::max<int64_t>(1, 16 / g.G)) : 1;
  std::vector<T> part(chunks > 1 ? (size_t)(chunks * g.G * wsize) : 0);
  const int64_t items = d == Dir::weight_grad ? g.G * chunks : g.N * g.G;
  parallel_items<T>(g, items, gc.scratch(), [&](int64_t it, T* s) {
    if (d != Dir::weight_grad) return item(gc, it / g.G, it % g.G, a, b, ep, out, s);
    const int64_t gi = it / chunks, ch = it % chunks;
    T* dst = chunks > 1 ? part.data() + it * wsize : out + gi * wsize;
    T* pv = s + gc.pv_at();
    constexpr int VL = GroupedTile<T, VB, NV>::VL;
    std::fill(pv, pv + wsize * VL, T(0));
    for (int64_t n = g.N * ch / chunks; n < g.N * (ch + 1) / chunks; ++n) item(gc, n, gi, a, b, ep, pv, s);
    for (int64_t e = 0; e < wsize; ++e) {
      T sum = 0;
      for (int l = 0; l < VL; ++l) sum += pv[e * VL + l];
      dst[e] = sum;
    }
  });
  if (chunks == 1) return;
#pragma omp parallel for schedule(static) if (parallel_pays(g))
  for (int64_t gi = 0; gi < g.G; ++gi) {
    T* dst = out + gi * wsize;
    std::copy(part.data() + gi * chunks * wsize, part.data() + (gi * chunks + 1) * wsize, dst);
    for (int64_t ch = 1; ch < chunks; ++ch) {
      const T* src = part.data() + (gi * chunks + ch) * wsize;
      for (int64_t e = 0; e < wsize; ++e) dst[e] += src[e];
    }
  }
}

// AVX-512 for the correlations (forward, input grad); the weight gradient's vector partials
// run faster at AVX2's width.
inline bool grouped_wide(Dir d) { return use_avx512() && d != Dir::weight_grad; }

// Vectors per block at 64 bytes: 2 where the flat positions of a plane (a phase plane for the
// input grad) round up to a quarter fewer than with 3.
inline int grouped_nv(const Geo& g, Dir d, int64_t elem) {
  const Flat f(g);
  const int64_t pos = d == Dir::forward ? f.nq : f.Hp * f.Wp, vl = 64 / elem;
  const auto up = [&](int64_t b) { return (pos + b - 1) / b * b; };
  return up(2 * vl) * 4 <= up(3 * vl) * 3 ? 2 : 3;
}

// f(VB, NV) (as std::integral_constant) with the variant grouped_run takes for (g, d).
template <typename T, typename F>
auto with_grouped_variant(const Geo& g, Dir d, F&& f) {
  using std::integral_constant;
  if (grouped_wide(d) && grouped_nv(g, d, sizeof(T)) == 2)
    return f(integral_constant<int, 64>{}, integral_constant<int, 2>{});
  if (grouped_wide(d)) return f(integral_constant<int, 64>{}, integral_constant<int, 3>{});
  return f(integral_constant<int, 32>{}, integral_constant<int, 3>{});
}

template <typename T>
void grouped_run(const Geo& g, Dir d, const T* a, const T* b, const Epilogue<T>* ep, T* out) {
  with_grouped_variant<T>(g, d, [&](auto vb, auto nv) { grouped_run_v<T, vb(), nv()>(g, d, a, b, ep, out); });
}

// One thread's scratch of grouped_run, in elements.
template <typename T>
int64_t grouped_scratch_t(const Geo& g, Dir d) {
  return with_grouped_variant<T>(g, d, [&](auto vb, auto nv) { return GroupedCall<T, vb(), nv()>(g, d).scratch(); });
}
inline int64_t grouped_scratch(const Geo& g, Dir d, int64_t elem) {
  return elem == 4 ? grouped_scratch_t<float>(g, d) : grouped_scratch_t<double>(g, d);
}

template <typename T>
void dw_backward_input(const Geo& g, const T* dy, const T* w, T* dx) {
  const TapRanges tr(g);
  const int64_t kk = g.kh * g.kw;
#pragma omp parallel for schedule(static) if (parallel_pays(g))
  for (int64_t nc = 0; nc < g.N * g.C; ++nc)
    dw_bwd_input_plane(g, tr, dy + nc * g.L(), w + (nc % g.C) * kk, dx + nc * g.HW());
}

// dw[c] = sum over images of the plane correlations; one channel per thread (no cross-thread sums).
template <typename T>
void dw_backward_weight(const Geo& g, const T* dy, const T* x, T* dw) {
  const TapRanges tr(g);
  const int64_t kk = g.kh * g.kw;
#pragma omp parallel for schedule(static) if (parallel_pays(g))
  for (int64_t c = 0; c < g.C; ++c) {
    T* acc = dw + c * kk;
    std::fill(acc, acc + kk, T(0));
    for (int64_t n = 0; n < g.N; ++n)
      dw_bwd_weight_plane(g, tr, dy + (n * g.C + c) * g.L(), x + (n * g.C + c) * g.HW(), acc);
  }
}
// ---------------------------------------------------------------- depthwise, channel-blocked
// Per-plane loops spend more on row edges, short rows and strided loads than on arithmetic.
// Instead VL channels (8 floats / 4 doubles) of one image are interleaved into a zero-padded
// pixel-major scratch xb[r][c][lane], and each tap of each output is one full vector FMA whatever
// the stride, dilation or width, with no tails:
//   yb[oh][ow][:] = b[:] + sum_{i,j} w[:][i][j] * xb[oh*sh + i*dh][ow*sw + j*dw][:].
// Input grad: at stride 1 that forward over dy with the flipped kernel (dw_adjoint_geo); strided,
// the adjoint, a scatter of dy into a zero dxb, then de-interleaved into dx. Weight grad: per
// channel block, vector accumulators per tap summed over the images in order (deterministic).
template <typename T>
struct DwBlocked {
  using G = GroupedTile<T>;
  static constexpr int VL = G::VL;
  const Geo& g;
  int64_t Hp, Wp, taps, blocks;
  // Taps relative to an output's top-left pixel; outputs' top-left pixels; for planes narrower than
  // a vector (whose rows cannot be transposed row by row), each input pixel's place in xb or -1.
  std::vector<int64_t> toff, obase, ipos;
  bool flip = false;  // the kernel's taps reversed (the input gradient as a correlation)
  explicit DwBlocked(const Geo& geo, bool lists = true)
      : g(geo), Hp((g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1), Wp((g.Wo - 1) * g.sw + (g.kw - 1) * g.dw + 1),
        taps(g.kh * g.kw), blocks((g.C + VL - 1) / VL) {
    if (!lists) return;
    for (int64_t t = 0; t < taps; ++t) toff.push_back(pos(t / g.kw * g.dh, t % g.kw * g.dw));
    for (int64_t o = 0; o < g.L(); ++o) obase.push_back(pos(o / g.Wo * g.sh, o % g.Wo * g.sw));
    if (narrow())
      for (int64_t p = 0; p < g.HW(); ++p) {
        const int64_t r = p / g.W + g.ph, c = p % g.W + g.pw;
        ipos.push_back(r >= 0 && r < Hp && c >= 0 && c < Wp ? pos(r, c) : -1);
      }
  }
  // Per-thread scratch in elements: xb (dxb), yb (dyb), the weights, the tap accumulators, and one
  // vector for the pixels off the grid (narrow planes).
  int64_t scratch() const { return (Hp * Wp + g.L() + 2 * taps + 1) * VL; }
  T* spare(T* s) const { return s + (Hp * Wp + g.L() + 2 * taps) * VL; }
  bool narrow() const { return g.W < VL && g.HW() >= VL; }
  // at[l]: the place in xb of narrow-plane pixel q + l, or `off` for a pixel off the grid.
  void places(int64_t q, T* xb, T* off, T** at) const {
    for (int l = 0; l < VL; ++l) at[l] = ipos[q + l] < 0 ? off : xb + ipos[q + l];
  }
  int64_t pos(int64_t r, int64_t c) const { return (r * Wp + c) * VL; }
};

// dst[c][l] = src[l][c] for l, c < VL (8 floats / 4 doubles), rows anywhere: one VL x VL transpose
// in vector shuffles, where element copies with a stride would cost a load and a store each.
__attribute__((always_inline)) inline void transpose_rows(const float* const* src, float* const* dst) {
  using V = GroupedTile<float>::vec;
  using G = GroupedTile<float>;
  V r[8], t[8], u[8];
  for (int l = 0; l < 8; ++l) G::load(r[l], src[l]);
  for (int k = 0; k < 8; k += 2) {
    t[k] = __builtin_shufflevector(r[k], r[k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[k + 1] = __builtin_shufflevector(r[k], r[k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int k = 0; k < 8; k += 4)
    for (int h = 0; h < 2; ++h) {
      u[k + 2 * h] = __builtin_shufflevector(t[k + h], t[k + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[k + 2 * h + 1] = __builtin_shufflevector(t[k + h], t[k + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int c = 0; c < 4; ++c) {
    G::store(dst[c], __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11));
    G::store(dst[c + 4], __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15));
  }
}

__attribute__((always_inline)) inline void transpose_rows(const double* const* src, double* const* dst) {
  using V = GroupedTile<double>::vec;
  using G = GroupedTile<double>;
  V r[4];
  for (int l = 0; l < 4; ++l) G::load(r[l], src[l]);
  const V t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 2, 6), t1 = __builtin_shufflevector(r[0], r[1], 1, 5, 3, 7);
  const V t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 2, 6), t3 = __builtin_shufflevector(r[2], r[3], 1, 5, 3, 7);
  G::store(dst[0], __builtin_shufflevector(t0, t2, 0, 1, 4, 5));
  G::store(dst[1], __builtin_shufflevector(t1, t3, 0, 1, 4, 5));
  G::store(dst[2], __builtin_shufflevector(t0, t2, 2, 3, 6, 7));
  G::store(dst[3], __builtin_shufflevector(t1, t3, 2, 3, 6, 7));
}

// dst[c*ldd + l] = src[l*lds + c] for l, c < VL.
template <typename T>
__attribute__((always_inline)) inline void transpose_vl(const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int VL = GroupedTile<T>::VL;
  const T* s[VL];
  T* d[VL];
  for (int l = 0; l < VL; ++l) s[l] = src + l * lds, d[l] = dst + l * ldd;
  transpose_rows(s, d);
}

// f(q) for the first pixels q of VL-pixel blocks covering [0, np) (np >= VL): the last block
// overlaps the one before it rather than leaving a scalar tail.
template <int VL, typename F>
__attribute__((always_inline)) inline void vl_blocks(int64_t np, F&& f) {
  for (int64_t p = 0; p < np; p += VL) f(std::min(p, np - VL));
}

// dst[p][l] = src[l * ld + p] for pixels p < np and lanes l < nc (lanes past nc zero).
template <typename T>
__attribute__((always_inline)) inline void to_lanes(const T* src, int64_t ld, int64_t np, int64_t nc, T* dst) {
  constexpr int VL = GroupedTile<T>::VL;
  if (nc == VL && np >= VL)
    return vl_blocks<VL>(np, [&](int64_t q) __attribute__((always_inline)) {
      transpose_vl(src + q, ld, dst + q * VL, VL);
    });
  if (nc < VL) std::fill(dst, dst + np * VL, T(0));
  for (int64_t l = 0; l < nc; ++l)
    for (int64_t p = 0; p < np; ++p) dst[p * VL + l] = src[l * ld + p];
}

// The inverse: dst[l * ld + p] = src[p][l] for p < np, l < nc.
template <typename T>
__attribute__((always_inline)) inline void from_lanes(const T* src, int64_t np, int64_t nc, T* dst, int64_t ld) {
  constexpr int VL = GroupedTile<T>::VL;
  if (nc == VL && np >= VL)
    return vl_blocks<VL>(np, [&](int64_t q) __attribute__((always_inline)) {
      transpose_vl(src + q * VL, VL, dst + q, ld);
    });
  for (int64_t l = 0; l < nc; ++l)
    for (int64_t p = 0; p < np; ++p) dst[l * ld + p] = src[p * VL + l];
}

// xb[r][c][l] = x plane (c0 + l)[r - ph][c - pw], zero outside the image and for lanes l >= nc.
template <typename T>
__attribute__((always_inline)) inline void dwb_interleave(const DwBlocked<T>& b, const T* xc, int64_t nc, T* xb,
                                                          T* s) {
  const Geo& g = b.g;
  constexpr int VL = DwBlocked<T>::VL;
  const int64_t r0 = std::min(b.Hp, std::max<int64_t>(0, g.ph)), r1 = std::max(r0, std::min(b.Hp, g.H + g.ph));
  const int64_t c0 = std::min(b.Wp, std::max<int64_t>(0, g.pw)), c1 = std::max(c0, std::min(b.Wp, g.W + g.pw));
  // Zero only the border (all of it in one call when some lanes stay empty or the plane is small).
  if (nc < VL || b.narrow()) {
    std::fill(xb, xb + b.Hp * b.Wp * VL, T(0));
  } else {
    std::fill(xb, xb + b.pos(r0, 0), T(0));
    std::fill(xb + b.pos(r1, 0), xb + b.Hp * b.Wp * VL, T(0));
    for (int64_t r = r0; r < r1; ++r) {
      std::fill(xb + b.pos(r, 0), xb + b.pos(r, c0), T(0));
      std::fill(xb + b.pos(r, c1), xb + b.pos(r + 1, 0), T(0));
    }
  }
  if (nc == VL && b.narrow())  // pixels transposed straight to their places (off the grid: a spare)
    return vl_blocks<VL>(g.HW(), [&](int64_t q) __attribute__((always_inline)) {
      const T* src[VL];
      T* dst[VL];
      for (int l = 0; l < VL; ++l) src[l] = xc + l * g.HW() + q;
      b.places(q, xb, b.spare(s), dst);
      transpose_rows(src, dst);
    });
  for (int64_t r = r0; r < r1; ++r) to_lanes(xc + (r - g.ph) * g.W + c0 - g.pw, g.HW(), c1 - c0, nc, xb + b.pos(r, c0));
}

// One tap row under OW outputs of a row (stride SW, dilation 1, a kernel KW wide): each input
// pixel loaded once, then f(j, u, x) for every tap j and output u that reads it (u * SW + j): KW
// FMAs a load at stride 1, where a load per FMA would bound the loop by the load ports.
template <typename T, int KW, int SW, int OW, typename F>
__attribute__((always_inline)) inline void row_taps(const T* xr, F&& f) {
  using G = GroupedTile<T>;
#pragma GCC unroll 32
  for (int c = 0; c < SW * (OW - 1) + KW; ++c) {
    typename G::vec xv;
    G::load(xv, xr + c * G::VL);
#pragma GCC unroll 8
    for (int j = 0; j < KW; ++j)
      if ((c - j) % SW == 0 && c - j >= 0 && (c - j) / SW < OW) f(j, (c - j) / SW, xv);
  }
}

// The forward of OW outputs of row oh.
template <typename T, int KW, int SW, int OW>
__attribute__((always_inline)) inline void dwb_row_block(const DwBlocked<T>& b, const T* xb, const T* wb,
                                                         const typename GroupedTile<T>::vec& bias, int64_t oh,
                                                         int64_t ow, T* yb) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  const Geo& g = b.g;
  V acc[OW];
  for (int u = 0; u < OW; ++u) acc[u] = bias;
  for (int64_t i = 0; i < g.kh; ++i) {
    V wv[KW];
    for (int j = 0; j < KW; ++j) G::load(wv[j], wb + (i * KW + j) * VL);
    row_taps<T, KW, SW, OW>(xb + b.pos(oh * g.sh + i * g.dh, ow * SW),
                            [&](int j, int u, const V& xv) __attribute__((always_inline)) { acc[u] += wv[j] * xv; });
  }
  for (int u = 0; u < OW; ++u) G::store(yb + (oh * g.Wo + ow + u) * VL, acc[u]);
}

// f(ow, std::integral_constant<int, OW>) over a row of Wo outputs: blocks of OWM (at most 8), then
// one block of the rest.
template <int OWM, typename F>
__attribute__((always_inline)) inline void row_blocks(int64_t Wo, F&& f) {
  int64_t ow = 0;
  for (; ow + OWM <= Wo; ow += OWM) f(ow, std::integral_constant<int, OWM>{});
  switch (Wo - ow) {
    case 1: f(ow, std::integral_constant<int, 1>{}); break;
    case 2: f(ow, std::integral_constant<int, 2>{}); break;
    case 3: f(ow, std::integral_constant<int, 3>{}); break;
    case 4: f(ow, std::integral_constant<int, 4>{}); break;
    case 5: f(ow, std::integral_constant<int, 5>{}); break;
    case 6: f(ow, std::integral_constant<int, 6>{}); break;
    case 7: f(ow, std::integral_constant<int, 7>{}); break;
    default: break;
  }
}

// f(std::integral_constant<int, KW>, std::integral_constant<int, SW>) where the row kernels apply:
// 3, 5 or 7 wide kernels at stride 1 or 2 without dilation along the rows; false elsewhere (the
// per-output loops run those).
template <typename F>
__attribute__((always_inline)) inline bool with_row_kernel(const Geo& g, F&& f) {
  using std::integral_constant;
  if (g.dw != 1 || g.sw > 2) return false;
  switch (static_cast<int>(g.kw * 4 + g.sw)) {
    case 3 * 4 + 1: f(integral_constant<int, 3>{}, integral_constant<int, 1>{}); return true;
    case 3 * 4 + 2: f(integral_constant<int, 3>{}, integral_constant<int, 2>{}); return true;
    case 5 * 4 + 1: f(integral_constant<int, 5>{}, integral_constant<int, 1>{}); return true;
    case 5 * 4 + 2: f(integral_constant<int, 5>{}, integral_constant<int, 2>{}); return true;
    case 7 * 4 + 1: f(integral_constant<int, 7>{}, integral_constant<int, 1>{}); return true;
    case 7 * 4 + 2: f(integral_constant<int, 7>{}, integral_constant<int, 2>{}); return true;
    default: return false;
  }
}

// The forward of a block by the row kernels (7-wide kernels in blocks of 7: registers).
template <typename T>
__attribute__((always_inline)) inline bool dwb_rows_any(const DwBlocked<T>& b, const T* xb, const T* wb,
                                                        const typename GroupedTile<T>::vec& bias, T* yb) {
  return with_row_kernel(b.g, [&](auto kw, auto sw) __attribute__((always_inline)) {
    for (int64_t oh = 0; oh < b.g.Ho; ++oh)
      row_blocks<kw() == 7 ? 7 : 8>(b.g.Wo, [&](int64_t ow, auto n) __attribute__((always_inline)) {
        dwb_row_block<T, kw(), sw(), n()>(b, xb, wb, bias, oh, ow, yb);
      });
  });
}

// The weight gradient's tap row i over OW outputs of row oh: acc[j] += dy[u] x[u * SW + j].
template <typename T, int KW, int SW, int OW>
__attribute__((always_inline)) inline void dwb_wrow_block(const DwBlocked<T>& b, const T* xb, const T* yb,
                                                          int64_t i, int64_t oh, int64_t ow,
                                                          typename GroupedTile<T>::vec* acc) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  const Geo& g = b.g;
  V dv[OW];
  for (int u = 0; u < OW; ++u) G::load(dv[u], yb + (oh * g.Wo + ow + u) * G::VL);
  row_taps<T, KW, SW, OW>(xb + b.pos(oh * g.sh + i * g.dh, ow * SW),
                          [&](int j, int u, const V& xv) __attribute__((always_inline)) { acc[j] += dv[u] * xv; });
}

// One image's weight gradient added to accb by the row kernels, a tap row at a time (KW
// accumulators in registers; 7-wide kernels in blocks of 6 outputs).
template <typename T>
__attribute__((always_inline)) inline bool dwb_wrows_any(const DwBlocked<T>& b, const T* xb, const T* yb, T* accb) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  return with_row_kernel(b.g, [&](auto kw, auto sw) __attribute__((always_inline)) {
    for (int64_t i = 0; i < b.g.kh; ++i) {
      V acc[kw()];
      for (int j = 0; j < kw(); ++j) acc[j] = V{};
      for (int64_t oh = 0; oh < b.g.Ho; ++oh)
        row_blocks<kw() == 7 ? 6 : 8>(b.g.Wo, [&](int64_t ow, auto n) __attribute__((always_inline)) {
          dwb_wrow_block<T, kw(), sw(), n()>(b, xb, yb, i, oh, ow, acc);
        });
      for (int j = 0; j < kw(); ++j) {
        V cur;
        G::load(cur, accb + (i * kw() + j) * VL);
        G::store(accb + (i * kw() + j) * VL, cur + acc[j]);
      }
    }
  });
}

// One item: direction d of image n (forward, input grad; weight grad: every image) and channel
// block cb. a, bb: the inputs as in grouped_item_impl (x or dy, w or dy).
template <typename T>
__attribute__((always_inline)) inline void dwb_item_impl(const DwBlocked<T>& b, Dir d, int64_t n, int64_t cb,
                                                         const T* a, const T* bb, const Epilogue<T>* ep, T* out,
                                                         T* s) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  const Geo& g = b.g;
  const int64_t c0 = cb * VL, nc = std::min<int64_t>(VL, g.C - c0), L = g.L(), taps = b.taps;
  T* xb = s;
  T* yb = xb + b.Hp * b.Wp * VL;
  T* wb = yb + L * VL;
  T* accb = wb + taps * VL;
  const T* w = d == Dir::weight_grad ? nullptr : bb;
  if (w) to_lanes(w + c0 * taps, taps, taps, nc, wb);
  if (w && b.flip)
    for (int64_t t = 0; t < taps / 2; ++t)
      std::swap_ranges(wb + t * VL, wb + (t + 1) * VL, wb + (taps - 1 - t) * VL);
  if (d == Dir::forward) {
    dwb_interleave(b, a + (n * g.C + c0) * g.HW(), nc, xb, s);
    V bias = V{};
    if (ep->bias)
      for (int64_t l = 0; l < nc; ++l) bias[l] = ep->bias[c0 + l];
    // Otherwise OW outputs per step (independent FMA chains), flat over the plane: each its own base.
    constexpr int OW = 4;
    const int64_t* base = b.obase.data();
    int64_t o = dwb_rows_any(b, xb, wb, bias, yb) ? L : 0;
    for (; o + OW <= L; o += OW) {
      V acc[OW];
      const T* p[OW];
      for (int u = 0; u < OW; ++u) acc[u] = bias, p[u] = xb + base[o + u];
      for (int64_t t = 0; t < taps; ++t) {
        V wv, xv;
        G::load(wv, wb + t * VL);
        const int64_t off = b.toff[t];
        for (int u = 0; u < OW; ++u) {
          G::load(xv, p[u] + off);
          acc[u] += wv * xv;
        }
      }
      for (int u = 0; u < OW; ++u) G::store(yb + (o + u) * VL, acc[u]);
    }
    for (; o < L; ++o) {
      V acc = bias, wv, xv;
      const T* p = xb + base[o];
      for (int64_t t = 0; t < taps; ++t) {
        G::load(wv, wb + t * VL);
        G::load(xv, p + b.toff[t]);
        acc += wv * xv;
      }
      G::store(yb + o * VL, acc);
    }
    T* y = out + (n * g.C + c0) * L;
    from_lanes(yb, L, nc, y, L);
    if (ep->fused())
      for (int64_t l = 0; l < nc; ++l) ep->run(y + l * L, y + l * L, (n * g.C + c0 + l) * L, nullptr, L);
    return;
  }
  // dy of the block, pixel-major: yb[o][l].
  const T* dy = d == Dir::input_grad ? a : bb;
  const T* dyc = dy + (n * g.C + c0) * L;
  to_lanes(dyc, L, L, nc, yb);
  if (d == Dir::input_grad) {
    std::fill(xb, xb + b.Hp * b.Wp * VL, T(0));
    for (int64_t oh = 0; oh < g.Ho; ++oh)
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        V dv;
        G::load(dv, yb + (oh * g.Wo + ow) * VL);
        T* p = xb + b.pos(oh * g.sh, ow * g.sw);
        for (int64_t t = 0; t < taps; ++t) {
          V wv, cur;
          G::load(wv, wb + t * VL);
          G::load(cur, p + b.toff[t]);
          G::store(p + b.toff[t], cur + wv * dv);
        }
      }
    T* dx = out + (n * g.C + c0) * g.HW();
    const bool cols = g.pw + g.W <= b.Wp;  // every column of dx is on the grid
    if (nc == VL && b.narrow()) {  // pixels off the grid read a zero spare
      T* zero = b.spare(s);
      std::fill(zero, zero + VL, T(0));
      return vl_blocks<VL>(g.HW(), [&](int64_t q) __attribute__((always_inline)) {
        T* src[VL];
        T* dst[VL];
        b.places(q, xb, zero, src);
        for (int l = 0; l < VL; ++l) dst[l] = dx + l * g.HW() + q;
        transpose_rows(src, dst);
      });
    }
    for (int64_t ih = 0; ih < g.H; ++ih) {
      const int64_t r = ih + g.ph;
      if (cols && r < b.Hp) {
        from_lanes(xb + b.pos(r, g.pw), g.W, nc, dx + ih * g.W, g.HW());
        continue;
      }
      for (int64_t l = 0; l < nc; ++l)
        for (int64_t w = 0; w < g.W; ++w) {
          const int64_t c = w + g.pw;
          dx[l * g.HW() + ih * g.W + w] = r < b.Hp && c < b.Wp ? xb[b.pos(r, c) + l] : T(0);
        }
    }
    return;
  }
  // Weight grad of image n into accb[t][l] (vectors): the row kernels, or taps in register chunks of 8.
  dwb_interleave(b, a + (n * g.C + c0) * g.HW(), nc, xb, s);
  if (dwb_wrows_any(b, xb, yb, accb)) return;
  constexpr int TC = 8;
  for (int64_t t0 = 0; t0 < taps; t0 += TC) {
    const int tc = (int)std::min<int64_t>(TC, taps - t0);
    V acc[TC];
    for (int t = 0; t < TC; ++t) acc[t] = V{};
    int64_t offs[TC];
    for (int t = 0; t < tc; ++t) offs[t] = b.toff[t0 + t];
    for (int64_t oh = 0; oh < g.Ho; ++oh)
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        V dv;
        G::load(dv, yb + (oh * g.Wo + ow) * VL);
        const T* p = xb + b.pos(oh * g.sh, ow * g.sw);
        for (int t = 0; t < tc; ++t) {
          V xv;
          G::load(xv, p + offs[t]);
          acc[t] += dv * xv;
        }
      }
    for (int t = 0; t < tc; ++t) {
      V cur;
      G::load(cur, accb + (t0 + t) * VL);
      G::store(accb + (t0 + t) * VL, cur + acc[t]);
    }
  }
}

PYDL_SIMD_DISPATCH(template <typename T>, <T>, void, dwb_item,
                   (const DwBlocked<T>& b, Dir d, int64_t n, int64_t cb, const T* a, const T* bb,
                    const Epilogue<T>* ep, T* out, T* s),
                   (b, d, n, cb, a, bb, ep, out, s))

// At stride 1 the input gradient is a forward correlation of dy with the flipped kernel, padded by
// the kernel's reach minus the padding: the scatter of the adjoint would make each tap a
// read-modify-write of dx. The geometry of that correlation (dy its input, dx its output):
inline bool dw_as_forward(const Geo& g, Dir d) { return d == Dir::input_grad && g.sh == 1 && g.sw == 1; }
inline Geo dw_adjoint_geo(const Geo& g) {
  Geo t = g;
  t.H = g.Ho, t.W = g.Wo, t.Ho = g.H, t.Wo = g.W;
  t.ph = (g.kh - 1) * g.dh - g.ph, t.pw = (g.kw - 1) * g.dw - g.pw;
  return t;
}

// One thread's scratch of the channel-blocked depthwise path for direction d, in bytes.
inline int64_t dw_blocked_bytes(const Geo& g, Dir d, int64_t elem) {
  const Geo t = dw_as_forward(g, d) ? dw_adjoint_geo(g) : g;
  return (elem == 4 ? DwBlocked<float>(t, false).scratch() : DwBlocked<double>(t, false).scratch()) * elem;
}

// Direction d: items (image, channel block); the weight gradient one item per channel block.
template <typename T>
void dw_blocked_run(const Geo& g, Dir d, const T* a, const T* bb, const Epilogue<T>* ep, T* out) {
  if (dw_as_forward(g, d)) {
    const Geo t = dw_adjoint_geo(g);
    DwBlocked<T> b(t);
    b.flip = true;
    const Epilogue<T> none{};
    parallel_items<T>(t, g.N * b.blocks, b.scratch(), [&](int64_t it, T* s) {
      dwb_item<T>(b, Dir::forward, it / b.blocks, it % b.blocks, a, bb, &none, out, s);
    });
    return;
  }
  const DwBlocked<T> b(g);
  const auto item = dwb_item<T>;
  constexpr int VL = GroupedTile<T>::VL;
  const int64_t items = d == Dir::weight_grad ? b.blocks : g.N * b.blocks;
  parallel_items<T>(g, items, b.scratch(), [&](int64_t it, T* s) {
    if (d != Dir::weight_grad) return item(b, d, it / b.blocks, it % b.blocks, a, bb, ep, out, s);
    T* accb = s + (b.Hp * b.Wp + g.L() + b.taps) * VL;
    std::fill(accb, accb + b.taps * VL, T(0));
    for (int64_t n = 0; n < g.N; ++n) item(b, d, n, it, a, bb, ep, out, s);
    const int64_t c0 = it * VL, nc = std::min<int64_t>(VL, g.C - c0);
    from_lanes(accb, b.taps, nc, out + c0 * b.taps, b.taps);
  });
}

// ---------------------------------------------------------------- direct_blocked
// Many channels per group on small planes (ResNeXt's 32-64 on 7x7 and 14x14) and the 3-channel
// stem: channels in vector lanes, register blocks of 2 vectors of channels x 6 pixels, each
// weight vector feeding 6 FMAs and each broadcast input 2. grouped_direct's vectors run along
// the flat rows (49 pixels of a 7x7 plane fill 72 lanes); here no lane is wasted and no im2col
// is built. One correlation for the three directions, over a list of pixels:
//   out[o][p] = sum_{i, u} W[i][u][o] in[i][base[p] + off[u]]      (o in the vector lanes)
//  * forward: in = x's phase planes (flat_pad), base = the output's place on the flat grid,
//    off = tap(t); o = output channels, i = input channels;
//  * input grad, the adjoint (as grouped_direct's): one job per phase of dx, in = dy on the flat
//    grid behind a margin M, base = M + the pixel's place in its phase plane, off = -(the tap's
//    offset within the phase) for that phase's taps; o = input channels, i = output channels.
//    Pixels no tap reads (past the last phase row) point at a zero tail; a phase without taps
//    computes zeros;
//  * weight grad: dw[k][i][t] = sum_p dy[k][p] in[i][base[p] + tap(t)] with the forward's
//    pixels; k in the lanes, 6 (input channel, tap) pairs per register block, dy pixel-major.
// f(k, i) for the register blocks of [lo, hi): k = PX-wide blocks from lo, then one block of what
// is left (k a std::integral_constant, so f can take it as a template argument).
template <int K, typename F>
__attribute__((always_inline)) inline void px_tail(int64_t n, int64_t i, F& f) {
  if constexpr (K > 0) {
    if (n == K) return f(std::integral_constant<int, K>{}, i);
    px_tail<K - 1>(n, i, f);
  }
}
template <int PX, typename F>
__attribute__((always_inline)) inline void px_blocks(int64_t lo, int64_t hi, F&& f) {
  int64_t i = lo;
  for (; i + PX <= hi; i += PX) f(std::integral_constant<int, PX>{}, i);
  px_tail<PX - 1>(hi - i, i, f);
}

template <typename T>
struct Blocked {
  static constexpr int VL = 32 / static_cast<int>(sizeof(T)), OB = 2 * VL, PX = 6;
  static constexpr int64_t kChunk = 384;  // pixels per item at most (its output tile in L1/L2)
  struct Job {
    std::vector<int64_t> off, tw, base, dst;  // taps: offsets, weight taps; pixels: reads, writes (dx)
  };
  const Geo& g;
  Dir d;
  Flat f;
  std::vector<int64_t> tap;
  std::vector<Job> jobs;
  std::vector<int64_t> job_at;  // pixels before each job, and their total
  int64_t taps, margin = 0, ipl = 0, nl, nob, chunk, nch;  // every tap is in exactly one job; nl: lane channels
  // lists = false: the sizes only (applies() asks for them on every call).
  Blocked(const Geo& geo, Dir dir, bool lists = true)
      : g(geo), d(dir), f(geo), tap(f.taps(geo)), taps(geo.kh * geo.kw) {
    const int64_t hw = f.Hp * f.Wp;
    if (d == Dir::input_grad) {
      for (int64_t t = 0; t < taps; ++t) margin = std::max(margin, tap[t] % hw);
      ipl = 2 * margin + hw + 1;  // margin, the flat grid, a zero tail of margin + 1
    }
    nl = d == Dir::input_grad ? g.Cg() : g.Kg();
    nob = (nl + OB - 1) / OB;
    // Enough items for the threads (4 each) without chunks under a few register blocks.
    const int64_t np = d == Dir::input_grad ? g.HW() : g.L(), per = g.N * g.G;
    nch = std::max((np + kChunk - 1) / kChunk, std::min((4 * max_threads() + per - 1) / per, (np + 8 * PX - 1) / (8 * PX)));
    nch = std::max<int64_t>(1, nch);
    chunk = (np + nch - 1) / nch;
    if (!lists) return;
    if (d != Dir::input_grad) {  // one job; its pixels are y's own order (no dst)
      Job j;
      for (int64_t t = 0; t < taps; ++t) j.off.push_back(tap[t]), j.tw.push_back(t);
      for (int64_t p = 0; p < g.L(); ++p) j.base.push_back(p / g.Wo * f.Wp + p % g.Wo);
      jobs.push_back(std::move(j));
    } else {
      jobs.resize((size_t)(f.sh * f.sw));
      for (int64_t t = 0; t < taps; ++t) {
        Job& j = jobs[(size_t)(tap[t] / hw)];
        j.off.push_back(-(tap[t] % hw));
        j.tw.push_back(t);
      }
      for (int64_t ih = 0; ih < g.H; ++ih)
        for (int64_t iw = 0; iw < g.W; ++iw) {
          const int64_t r = ih + g.ph, c = iw + g.pw;
          Job& j = jobs[(size_t)((r % f.sh) * f.sw + c % f.sw)];
          const bool read = r / f.sh < f.Hp && c / f.sw < f.Wp;
          j.base.push_back(read ? margin + r / f.sh * f.Wp + c / f.sw : 2 * margin + hw);
          j.dst.push_back(ih * g.W + iw);
        }
    }
    job_at.push_back(0);
    for (const Job& j : jobs) job_at.push_back(job_at.back() + (int64_t)j.base.size());
  }
  static bool fits(const Geo& g, Dir) { return !g.depthwise(); }
  // Valid lanes of lane block ob (the last one may be part-filled).
  int64_t lanes(int64_t ob) const { return std::min<int64_t>(OB, nl - ob * OB); }
  // Weight-gradient items: per group, the batch in `chunks` runs summed in order (the same sums
  // for any thread count).
  int64_t wchunks() const { return std::min(g.N, std::max<int64_t>(1, 16 / g.G)); }
  // The calling thread's buffer, in elements: the packed weights, or the weight gradient's partials.
  int64_t shared() const {
    if (d == Dir::weight_grad) return wchunks() * g.G * nob * OB * g.Cg() * taps;
    return g.G * nob * (d == Dir::forward ? g.Cg() : g.Kg()) * taps * OB;
  }
  // Per-thread scratch, in elements.
  int64_t scratch() const {
    if (d == Dir::forward) return g.Cg() * f.plane + OB * chunk;
    if (d == Dir::input_grad) return g.Kg() * ipl + OB * chunk;
    return g.Cg() * f.plane + g.L() * OB;
  }
};

// out[q][o] (pixel-major) for PXN pixels from base: the correlation above over ni input planes of
// pitch ip and nt taps, weights wp[(i * nt + u) * OB + o].
template <typename T, int PXN>
__attribute__((always_inline)) inline void blk_corr(const T* in, int64_t ip, int64_t ni, const int64_t* off,
                                                    int64_t nt, const T* wp, const int64_t* base, T* out) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  V acc[2][PXN];
  for (int j = 0; j < PXN; ++j) acc[0][j] = acc[1][j] = V{};
  const T* xp[PXN];
  for (int j = 0; j < PXN; ++j) xp[j] = in + base[j];
  for (int64_t i = 0; i < ni; ++i)
    for (int64_t u = 0; u < nt; ++u, wp += 2 * VL) {
      const int64_t o = i * ip + off[u];
      V w0, w1;
      G::load(w0, wp);
      G::load(w1, wp + VL);
      for (int j = 0; j < PXN; ++j) {
        const T s = xp[j][o];
        acc[0][j] += w0 * s;
        acc[1][j] += w1 * s;
      }
    }
  for (int j = 0; j < PXN; ++j)
    for (int v = 0; v < 2; ++v) G::store(out + j * 2 * VL + v * VL, acc[v][j]);
}

// pv[j][o] += sum_{p < np} dyb[p][o] xs[j][base[p]] for JN (input channel, tap) pairs.
template <typename T, int JN>
__attribute__((always_inline)) inline void blk_wgrad(const T* dyb, const int64_t* base, int64_t np,
                                                     const T* const* xs, T* pv) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  V acc[2][JN];
  for (int j = 0; j < JN; ++j) acc[0][j] = acc[1][j] = V{};
  const T* x[JN];
  for (int j = 0; j < JN; ++j) x[j] = xs[j];
  for (int64_t p = 0; p < np; ++p) {
    V d0, d1;
    G::load(d0, dyb + p * 2 * VL);
    G::load(d1, dyb + p * 2 * VL + VL);
    const int64_t b = base[p];
    for (int j = 0; j < JN; ++j) {
      const T s = x[j][b];
      acc[0][j] += d0 * s;
      acc[1][j] += d1 * s;
    }
  }
  for (int j = 0; j < JN; ++j)
    for (int v = 0; v < 2; ++v) {
      V cur;
      G::load(cur, pv + j * 2 * VL + v * VL);
      G::store(pv + j * 2 * VL + v * VL, cur + acc[v][j]);
    }
}

// The input planes of (image n, group gi) into s: x's phase planes (forward, weight grad) or dy
// on the flat grid behind its margin (input grad).
template <typename T>
__attribute__((always_inline)) inline void blk_planes(const Blocked<T>& b, int64_t n, int64_t gi, const T* a, T* s) {
  const Geo& g = b.g;
  const Flat& f = b.f;
  if (b.d != Dir::input_grad) {
    const T* xg = a + (n * g.C + gi * g.Cg()) * g.HW();
    std::fill(s, s + g.Cg() * f.plane, T(0));
    for (int64_t c = 0; c < g.Cg(); ++c) flat_pad<T, true>(g, f, xg + c * g.HW(), s + c * f.plane);
    return;
  }
  std::fill(s, s + g.Kg() * b.ipl, T(0));
  for (int64_t k = 0; k < g.Kg(); ++k) {
    const T* dyc = a + (n * g.K + gi * g.Kg() + k) * g.L();
    T* p = s + k * b.ipl + b.margin;
    for (int64_t oh = 0; oh < g.Ho; ++oh) std::memcpy(p + oh * f.Wp, dyc + oh * g.Wo, (size_t)g.Wo * sizeof(T));
  }
}

// y[n][o0 + l][p] = tmp[p - p0][l] for the first nl of the OB lanes l and pixels [p0, p1) of y's
// planes, then the epilogue on those rows.
template <typename T>
__attribute__((always_inline)) inline void blk_store(const Geo& g, const T* tmp, int64_t n, int64_t o0, int64_t p0,
                                                     int64_t p1, const Epilogue<T>* ep, T* out,
                                                     int64_t nl = 2 * GroupedTile<T>::VL) {
  constexpr int VL = GroupedTile<T>::VL, OB = 2 * VL;
  T* y = out + (n * g.K + o0) * g.L();
  const int64_t nv = nl / VL;  // whole lane vectors, transposed VL pixels at a time
  int64_t q = p0;
  if (nv > 0)
    for (; q + VL <= p1; q += VL)
      for (int64_t v = 0; v < nv; ++v) transpose_vl(tmp + (q - p0) * OB + v * VL, OB, y + v * VL * g.L() + q, g.L());
  for (int64_t l = 0; l < nl; ++l) {
    for (int64_t r = l < nv * VL ? q : p0; r < p1; ++r) y[l * g.L() + r] = tmp[(r - p0) * OB + l];
    const int64_t at = (n * g.K + o0 + l) * g.L() + p0;
    if (ep->bias || ep->fused()) ep->run(out + at, out + at, at, ep->bias_at(o0 + l), p1 - p0);
  }
}

// One item of the forward or input grad: image n, group gi, pixels [p0, p1) of the jobs, every
// lane block; `ready`: s already holds this (n, gi)'s input planes.
template <typename T>
__attribute__((always_inline)) inline void blk_item_impl(const Blocked<T>& b, int64_t n, int64_t gi, int64_t p0,
                                                         int64_t p1, const T* a, const T* wpk,
                                                         const Epilogue<T>* ep, T* out, T* s, bool ready) {
  constexpr int OB = Blocked<T>::OB, PX = Blocked<T>::PX;
  const Geo& g = b.g;
  const bool fwd = b.d == Dir::forward;
  const int64_t ni = fwd ? g.Cg() : g.Kg(), ip = fwd ? b.f.plane : b.ipl;
  if (!ready) blk_planes(b, n, gi, a, s);
  T* tmp = s + ni * ip;  // the item's outputs of one lane block, pixel-major
  for (int64_t ob = 0; ob < b.nob; ++ob) {
    const T* wj = wpk + (gi * b.nob + ob) * ni * b.taps * OB;  // [job][i][u][OB]
    for (size_t jb = 0; jb < b.jobs.size(); ++jb) {
      const auto& j = b.jobs[jb];
      const int64_t nt = (int64_t)j.off.size(), lo = std::max(p0, b.job_at[jb]), hi = std::min(p1, b.job_at[jb + 1]);
      const int64_t* base = j.base.data() - b.job_at[jb];
      const int64_t* off = j.off.data();
      px_blocks<PX>(lo, hi, [&](auto k, int64_t q) __attribute__((always_inline)) {
        blk_corr<T, decltype(k)::value>(s, ip, ni, off, nt, wj, base + q, tmp + (q - p0) * OB);
      });
      wj += ni * nt * OB;
    }
    const int64_t o0 = gi * (fwd ? g.Kg() : g.Cg()) + ob * OB;
    if (fwd) {  // one job, its pixels in y's own order
      blk_store(g, tmp, n, o0, p0, p1, ep, out, b.lanes(ob));
      continue;
    }
    for (size_t jb = 0; jb < b.jobs.size(); ++jb) {
      const int64_t lo = std::max(p0, b.job_at[jb]), hi = std::min(p1, b.job_at[jb + 1]);
      const int64_t* dst = b.jobs[jb].dst.data() - b.job_at[jb];
      for (int64_t l = 0; l < b.lanes(ob); ++l) {
        T* dx = out + (n * g.C + o0 + l) * g.HW();
        const T* src = tmp - p0 * OB + l;
        for (int64_t q = lo; q < hi; ++q) dx[dst[q]] = src[q * OB];
      }
    }
  }
}

// One image of a weight-gradient item (group gi, lane blocks [ob0, ob1)): adds into the partials pv
// ([ob][Cg * taps][OB], from ob0).
template <typename T>
__attribute__((always_inline)) inline void blk_wgrad_image_impl(const Blocked<T>& b, int64_t n, int64_t gi,
                                                                int64_t ob0, int64_t ob1, const T* x, const T* dy,
                                                                T* pv, T* s) {
  constexpr int OB = Blocked<T>::OB, PX = Blocked<T>::PX;
  const Geo& g = b.g;
  const Flat& f = b.f;
  const int64_t Cg = g.Cg(), L = g.L(), taps = g.kh * g.kw, E = Cg * taps;
  blk_planes(b, n, gi, x, s);
  T* dyb = s + Cg * f.plane;
  const int64_t* base = b.jobs[0].base.data();
  const T* xs[PX];
  constexpr int VL = GroupedTile<T>::VL;
  for (int64_t ob = ob0; ob < ob1; ++ob, pv += E * OB) {
    const T* dyc = dy + (n * g.K + gi * g.Kg() + ob * OB) * L;
    const int64_t nl = b.lanes(ob), nv = nl / VL;  // lanes past nl (the group's last block) zero
    int64_t p0 = 0;
    if (nv > 0)
      for (; p0 + VL <= L; p0 += VL)
        for (int64_t v = 0; v < nv; ++v) transpose_vl(dyc + v * VL * L + p0, L, dyb + p0 * OB + v * VL, OB);
    for (int64_t l = 0; l < OB; ++l)
      for (int64_t p = l < nv * VL ? p0 : 0; p < L; ++p) dyb[p * OB + l] = l < nl ? dyc[l * L + p] : T(0);
    int64_t e = 0;
    for (; e + PX <= E; e += PX) {
      for (int j = 0; j < PX; ++j) xs[j] = s + (e + j) / taps * f.plane + b.tap[(e + j) % taps];
      blk_wgrad<T, PX>(dyb, base, L, xs, pv + e * OB);
    }
    for (; e < E; ++e) {
      xs[0] = s + e / taps * f.plane + b.tap[e % taps];
      blk_wgrad<T, 1>(dyb, base, L, xs, pv + e * OB);
    }
  }
}

// dst[e][l] = src[l * lds + e] for e < n, l < OB: a lane block of rows, transposed; lanes from nl
// (past the group's channels) zero.
template <typename T>
__attribute__((always_inline)) inline void blk_lanes(const T* src, int64_t lds, int64_t n, T* dst,
                                                     int64_t nl = Blocked<T>::OB) {
  constexpr int OB = Blocked<T>::OB, VL = OB / 2;
  if (nl < OB) {
    for (int64_t e = 0; e < n; ++e)
      for (int l = 0; l < OB; ++l) dst[e * OB + l] = l < nl ? src[l * lds + e] : T(0);
    return;
  }
  int64_t e = 0;
  for (; e + VL <= n; e += VL)
    for (int v = 0; v < 2; ++v) transpose_vl(src + v * VL * lds + e, lds, dst + e * OB + v * VL, OB);
  for (; e < n; ++e)
    for (int l = 0; l < OB; ++l) dst[e * OB + l] = src[l * lds + e];
}

// The packed weights of (group gi, lane block ob) from w (K, Cg, kh, kw): forward and weight grad
// [c][t][OB] (output channels in the lanes), input grad per job [k][u][OB] (input channels).
template <typename T>
__attribute__((always_inline)) inline void blk_pack_impl(const Blocked<T>& b, int64_t gi, int64_t ob, const T* w,
                                                         T* dst) {
  constexpr int OB = Blocked<T>::OB;
  const Geo& g = b.g;
  const int64_t Cg = g.Cg(), Kg = g.Kg(), taps = g.kh * g.kw;
  const int64_t nl = b.lanes(ob);
  if (b.d != Dir::input_grad) return blk_lanes(w + (gi * Kg + ob * OB) * Cg * taps, Cg * taps, Cg * taps, dst, nl);
  for (const auto& j : b.jobs) {
    const int64_t nt = (int64_t)j.tw.size();
    for (int64_t k = 0; k < Kg; ++k, dst += nt * OB) {
      const T* src = w + ((gi * Kg + k) * Cg + ob * OB) * taps;
      if (nt == taps) {  // every tap in order (stride 1)
        blk_lanes(src, taps, taps, dst, nl);
        continue;
      }
      for (int64_t u = 0; u < nt; ++u)
        for (int l = 0; l < OB; ++l) dst[u * OB + l] = l < nl ? src[l * taps + j.tw[u]] : T(0);
    }
  }
}

PYDL_SIMD_DISPATCH(template <typename T>, <T>, void, blk_pack,
                   (const Blocked<T>& b, int64_t gi, int64_t ob, const T* w, T* dst), (b, gi, ob, w, dst))
PYDL_SIMD_DISPATCH(template <typename T>, <T>, void, blk_item,
                   (const Blocked<T>& b, int64_t n, int64_t gi, int64_t p0, int64_t p1, const T* a, const T* wpk,
                    const Epilogue<T>* ep, T* out, T* s, bool ready),
                   (b, n, gi, p0, p1, a, wpk, ep, out, s, ready))
PYDL_SIMD_DISPATCH(template <typename T>, <T>, void, blk_wgrad_image,
                   (const Blocked<T>& b, int64_t n, int64_t gi, int64_t ob0, int64_t ob1, const T* x, const T* dy,
                    T* pv, T* s),
                   (b, n, gi, ob0, ob1, x, dy, pv, s))

// The packed weights of one call, in a buffer of the calling thread kept between calls.
thread_local Workspace t_pack{false};

// Direction d: forward (a = x, w, out = y), input grad (a = dy, w, out = dx), weight grad (a = x,
// bb = dy, out = dw).
template <typename T>
void blocked_run(const Geo& g, Dir d, const T* a, const T* bb, const Epilogue<T>* ep, T* out) {
  const Blocked<T> b(g, d);
  constexpr int OB = Blocked<T>::OB;
  const int64_t Cg = g.Cg(), Kg = g.Kg(), taps = g.kh * g.kw;
  ParallelError err;
  if (d == Dir::weight_grad) {
    const int64_t chunks = b.wchunks(), psize = b.nob * OB * Cg * taps;  // one group's partial dw, [ob][c][t][OB]
    // Few groups and images (a stem): the lane blocks are split over the items too.
    const int64_t split = g.G * chunks < 4 * max_threads() ? b.nob : 1;
    T* part = static_cast<T*>(t_pack.get(b.shared() * (int64_t)sizeof(T)));
#pragma omp parallel if (parallel_pays(g))
    {
      T* s = thread_scratch<T>(b.scratch(), err);
#pragma omp for schedule(static)
      for (int64_t it = 0; it < g.G * split * chunks; ++it) {
        if (!s) continue;
        const int64_t ch = it % chunks, sp = it / chunks % split, gi = it / chunks / split;
        const int64_t ob0 = b.nob * sp / split, ob1 = b.nob * (sp + 1) / split;
        T* pv = part + (gi * chunks + ch) * psize + ob0 * Cg * taps * OB;
        std::fill(pv, pv + (ob1 - ob0) * Cg * taps * OB, T(0));
        for (int64_t n = g.N * ch / chunks; n < g.N * (ch + 1) / chunks; ++n)
          blk_wgrad_image<T>(b, n, gi, ob0, ob1, a, bb, pv, s);
      }
#pragma omp for schedule(static)
      for (int64_t k = 0; k < g.K; ++k) {  // dw[k][c][t], the chunks added in order
        const int64_t gi = k / Kg, ob = k % Kg / OB, l = k % Kg % OB;
        T* dst = out + k * Cg * taps;
        for (int64_t ch = 0; ch < chunks; ++ch) {
          const T* pv = part + (gi * chunks + ch) * psize + ob * Cg * taps * OB + l;
          for (int64_t e = 0; e < Cg * taps; ++e) dst[e] = ch ? dst[e] + pv[e * OB] : pv[e * OB];
        }
      }
    }
    err.rethrow();
    return;
  }
  // Pack the weights: lanes = output channels (forward) or input channels (input grad).
  const bool fwd = d == Dir::forward;
  const int64_t ni = fwd ? Cg : Kg;
  T* wpk = static_cast<T*>(t_pack.get(b.shared() * (int64_t)sizeof(T)));
  const int64_t items = g.N * g.G * b.nch;
#pragma omp parallel if (parallel_pays(g))
  {
#pragma omp for schedule(static)
    for (int64_t gob = 0; gob < g.G * b.nob; ++gob)
      blk_pack<T>(b, gob / b.nob, gob % b.nob, bb, wpk + gob * ni * b.taps * OB);
    T* s = thread_scratch<T>(b.scratch(), err);
    int64_t held = -1;  // the (image, group) whose input planes s holds
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      if (!s) continue;
      const int64_t ch = it % b.nch, ng = it / b.nch;
      const int64_t p0 = ch * b.chunk, p1 = std::min(b.job_at.back(), p0 + b.chunk);
      blk_item<T>(b, ng / g.G, ng % g.G, p0, p1, a, wpk, ep, out, s, held == ng);
      held = ng;
    }
  }
  err.rethrow();
}

// Bytes of one blocked_run call: every thread's scratch and the shared buffer (0: the algorithm does
// not apply).
template <typename T>
int64_t blocked_bytes_t(const Geo& g, Dir d) {
  if (!Blocked<T>::fits(g, d)) return 0;
  const Blocked<T> b(g, d, false);
  return (b.scratch() * max_threads() + b.shared()) * (int64_t)sizeof(T);
}
inline int64_t blocked_bytes(const Geo& g, Dir d, int64_t elem) {
  return elem == 4 ? blocked_bytes_t<float>(g, d) : blocked_bytes_t<double>(g, d);
}

// ---------------------------------------------------------------- winograd_blocked
// Winograd F(2x2, 3x3) (conv_winograd.cpp has the math) on direct_blocked's register blocks: per
// tile block, the 16 transformed products are sums over the group's input channels into 16 (float)
// / 8 (double) output channels in the vector lanes, so there is no thin per-group BLAS call (which
// winograd makes for 16-64 channels per group) and the output transform runs on whole vectors
// while the block is in L1. Stride 1, no dilation. The input gradient is this forward over dy
// with the kernel rotated 180 degrees and its channels swapped (at padding 2 - pad, as winograd's);
// the weight gradient sums V (x's transform) times Z (dy's) over every tile, then dw = G^T dU G.
template <typename T>
struct WinoBlocked {
  static constexpr int VL = GroupedTile<T>::VL, OB = 2 * VL, PX = 6;
  Geo g;                            // the forward it runs: the call's, or the input grad's adjoint
  bool adj;                         // input grad: w[k][c] read rotated, as the adjoint's [c][k]
  int64_t TH, TW, Wq, ni, np, nob;  // tiles per column and row; padded row; input channels (np: to VL)
  int64_t Kp;                       // the lane channels (Kg) rounded up to whole lane blocks
  int64_t rows, nch;                // tile rows (of the batch, image after image) per item; items per group
  bool wg;                          // the weight grad (V and Z = A dY A^T summed over every tile)
  int64_t splits = 1;               // weight grad: runs of the batch's tile rows per group, summed in order
  static Geo adjoint(const Geo& g) {
    Geo t = g;
    t.H = g.Ho, t.W = g.Wo, t.Ho = g.H, t.Wo = g.W, t.C = g.K, t.K = g.C, t.ph = 2 - g.ph, t.pw = 2 - g.pw;
    return t;
  }
  WinoBlocked(const Geo& geo, Dir d)
      : g(d == Dir::input_grad ? adjoint(geo) : geo), adj(d == Dir::input_grad), wg(d == Dir::weight_grad) {
    TH = (g.Ho + 1) / 2, TW = (g.Wo + 1) / 2, Wq = 2 * TW + 2;
    ni = g.Cg(), np = (ni + VL - 1) / VL * VL, nob = (g.Kg() + OB - 1) / OB, Kp = nob * OB;
    // An item's transformed input (16 ni values per tile) within about 128 KiB (L2; each lane
    // block's 16 products then read it from there), and enough items for the threads.
    const int64_t all = g.N * TH, cap = std::max<int64_t>(1, (int64_t(128) << 10) / (16 * np * TW * (int64_t)sizeof(T)));
    rows = std::max<int64_t>(1, std::min(cap, all * g.G / (4 * max_threads())));
    nch = (all + rows - 1) / rows;
    if (d == Dir::weight_grad) {  // chunks of V and Z within about 192 KiB; runs independent of the threads
      rows = std::max<int64_t>(1, (int64_t(192) << 10) / (16 * TW * (np + Kp) * (int64_t)sizeof(T)));
      splits = std::min(all, std::max<int64_t>(1, 16 / g.G));
    }
  }
  static bool fits(const Geo& g, Dir d) {
    if (g.kh != 3 || g.kw != 3 || g.sh != 1 || g.sw != 1 || g.dh != 1 || g.dw != 1 || g.depthwise()) return false;
    return d != Dir::input_grad || (g.ph <= 2 && g.pw <= 2);
  }
  // Valid lanes of lane block ob (the last one may be part-filled).
  int64_t lanes(int64_t ob) const { return std::min<int64_t>(OB, g.Kg() - ob * OB); }
  // Forward, input grad: U[gi][ob][e][c][OB]; weight grad: the runs' partial dU[gi][run][e][c][Kg].
  int64_t shared() const { return g.G * 16 * np * (wg ? splits : 1) * Kp; }
  // Per thread: the input rows of an item's tiles channel-blocked, its V[e][t][c], its products
  // M[e][t][OB] of one lane block, its outputs pixel-major (before the items: the transposed
  // kernels of one lane block); the weight grad: dy's rows of a chunk's tiles, its Z[e][t][Kg].
  int64_t scratch() const {
    const int64_t in = np * (2 * rows + 2) * Wq + 16 * rows * TW * np;  // the input rows and V
    if (wg) return in + Kp * 2 * rows * 2 * TW + 16 * rows * TW * Kp;  // dy's rows and Z
    return std::max(9 * ni * OB, in + 16 * rows * TW * OB + 2 * rows * g.Wo * OB);
  }
};

// out[j][o] = sum_i u[i][o] v[j * ld + i] for PXN tiles j (o in the lanes).
template <typename T, int PXN>
__attribute__((always_inline)) inline void wb_dot(const T* v, int64_t ld, int64_t ni, const T* u, T* out) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  V acc[2][PXN];
  for (int j = 0; j < PXN; ++j) acc[0][j] = acc[1][j] = V{};
  for (int64_t i = 0; i < ni; ++i, u += 2 * VL) {
    V w0, w1;
    G::load(w0, u);
    G::load(w1, u + VL);
    for (int j = 0; j < PXN; ++j) {
      const T s = v[j * ld + i];
      acc[0][j] += w0 * s;
      acc[1][j] += w1 * s;
    }
  }
  for (int j = 0; j < PXN; ++j)
    for (int v2 = 0; v2 < 2; ++v2) G::store(out + j * 2 * VL + v2 * VL, acc[v2][j]);
}

// U = G k G^T of every (input channel, lane) of (group gi, lane block ob) into dst [e][c][OB], on
// lane vectors: the kernels are first transposed into tmp [c][tap][OB] (direct_blocked's layout).
template <typename T>
__attribute__((always_inline)) inline void wb_pack_impl(const WinoBlocked<T>& b, int64_t gi, int64_t ob, const T* w,
                                                        T* dst, T* tmp) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL, OB = 2 * VL;
  const Geo& g = b.g;
  const int64_t ni = b.ni;
  const int64_t nl = b.lanes(ob);
  if (!b.adj) {  // w (K, Cg, 3, 3): the lanes are output channels
    blk_lanes(w + (gi * g.Kg() + ob * OB) * ni * 9, ni * 9, ni * 9, tmp, nl);
  } else {  // the call's w (Kg = ni here, Cg = the lanes): rotated below
    for (int64_t k = 0; k < ni; ++k)
      blk_lanes(w + ((gi * ni + k) * g.Kg() + ob * OB) * 9, 9, 9, tmp + k * 9 * OB, nl);
  }
  const V half = V{} + T(0.5);
  for (int64_t c = 0; c < ni; ++c)
    for (int v = 0; v < 2; ++v) {
      V k[9];
      for (int t = 0; t < 9; ++t) G::load(k[t], tmp + (c * 9 + (b.adj ? 8 - t : t)) * OB + v * VL);
      V gk[4][3];
      for (int j = 0; j < 3; ++j) {
        gk[0][j] = k[j], gk[3][j] = k[6 + j];
        gk[1][j] = half * (k[j] + k[3 + j] + k[6 + j]), gk[2][j] = half * (k[j] - k[3 + j] + k[6 + j]);
      }
      for (int a = 0; a < 4; ++a) {
        const V u[4] = {gk[a][0], half * (gk[a][0] + gk[a][1] + gk[a][2]), half * (gk[a][0] - gk[a][1] + gk[a][2]),
                        gk[a][2]};
        for (int e = 0; e < 4; ++e) G::store(dst + ((4 * a + e) * b.np + c) * OB + v * VL, u[e]);
      }
    }
  for (int e = 0; e < 16; ++e) std::fill(dst + (e * b.np + ni) * OB, dst + (e + 1) * b.np * OB, T(0));
}

// dst[q][c][l] (R rows of Wp pixels of VL lanes) = plane (l)[h0 + q][c - pw] for lanes l < nc, zero
// outside the H x W plane (row pitch W, planes ld apart) and for the other lanes.
template <typename T>
__attribute__((always_inline)) inline void pad_to_lanes(const T* plane, int64_t ld, int64_t H, int64_t W, int64_t h0,
                                                        int64_t pw, int64_t R, int64_t Wp, int64_t nc, T* dst) {
  constexpr int VL = GroupedTile<T>::VL;
  std::fill(dst, dst + R * Wp * VL, T(0));
  const int64_t w1 = std::min(W, Wp - pw);
  for (int64_t q = std::max<int64_t>(0, -h0); q < R && h0 + q < H && w1 > 0; ++q)
    to_lanes(plane + (h0 + q) * W, ld, w1, nc, dst + (q * Wp + pw) * VL);
}

// f(n, r, re) for each run [r, re) of tile rows [r0, r1) of the batch that lies in one image n
// (TH tile rows an image).
template <typename F>
__attribute__((always_inline)) inline void image_runs(int64_t TH, int64_t r0, int64_t r1, F&& f) {
  for (int64_t r = r0; r < r1;) {
    const int64_t n = r / TH, re = std::min(r1, (n + 1) * TH);
    f(n, r, re);
    r = re;
  }
}

// V = B^T d B of tile rows [r0, r1) (tile row r: image r / TH, row r % TH) of group gi's input
// channels into Vt [e][t][np], VL channels a vector, from the tile rows' input rows of one image at
// a time, transposed channel-blocked and zero-padded into xb.
template <typename T>
__attribute__((always_inline)) inline void wb_input(const WinoBlocked<T>& b, int64_t gi, int64_t r0, int64_t r1,
                                                    const T* a, T* xb, T* Vt) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  const Geo& g = b.g;
  const int64_t ni = b.ni, np = b.np, TH = b.TH, TW = b.TW, Wq = b.Wq, Tc = (r1 - r0) * TW;
  image_runs(TH, r0, r1, [&](int64_t n, int64_t r, int64_t re) __attribute__((always_inline)) {
    const int64_t th0 = r % TH, R = 2 * (re - r) + 2;
    for (int64_t cb = 0; cb < np / VL; ++cb) {
      pad_to_lanes(a + (n * g.C + gi * ni + cb * VL) * g.HW(), g.HW(), g.H, g.W, 2 * th0 - g.ph, g.pw, R, Wq,
                   std::min<int64_t>(VL, ni - cb * VL), xb + cb * R * Wq * VL);
      for (int64_t t = (r - r0) * TW; t < (re - r0) * TW; ++t) {
        const T* p = xb + ((cb * R + 2 * (t / TW - (r - r0))) * Wq + 2 * (t % TW)) * VL;
        V d[4][4];
        for (int ra = 0; ra < 4; ++ra)
          for (int q = 0; q < 4; ++q) G::load(d[ra][q], p + (ra * Wq + q) * VL);
        for (int q = 0; q < 4; ++q) {  // B^T along the rows
          const V d0 = d[0][q], d1 = d[1][q], d2 = d[2][q], d3 = d[3][q];
          d[0][q] = d0 - d2, d[1][q] = d1 + d2, d[2][q] = d2 - d1, d[3][q] = d1 - d3;
        }
        T* v = Vt + t * np + cb * VL;
        for (int ra = 0; ra < 4; ++ra) {  // then B along the columns
          const V x0 = d[ra][0], x1 = d[ra][1], x2 = d[ra][2], x3 = d[ra][3];
          G::store(v + (4 * ra) * Tc * np, x0 - x2);
          G::store(v + (4 * ra + 1) * Tc * np, x1 + x2);
          G::store(v + (4 * ra + 2) * Tc * np, x2 - x1);
          G::store(v + (4 * ra + 3) * Tc * np, x1 - x3);
        }
      }
    }
  });
}

// One item of the forward: group gi, tile rows [r0, r1) of the batch.
template <typename T>
__attribute__((always_inline)) inline void wb_item_impl(const WinoBlocked<T>& b, int64_t gi, int64_t r0, int64_t r1,
                                                        const T* a, const T* U, const Epilogue<T>* ep, T* out,
                                                        T* s) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL, OB = 2 * VL, PX = WinoBlocked<T>::PX;
  const Geo& g = b.g;
  const int64_t ni = b.ni, np = b.np, TH = b.TH, TW = b.TW, Wq = b.Wq, Tc = (r1 - r0) * TW;
  T* xb = s;                                    // [channel block][row][Wq][VL]
  T* Vt = xb + np * (2 * (r1 - r0) + 2) * Wq;  // V[e][t][np]
  T* M = Vt + 16 * Tc * np;                    // M[e][t][OB]
  T* tmp = M + 16 * Tc * OB;                   // outputs [tile row][2 rows][Wo][OB]
  wb_input(b, gi, r0, r1, a, xb, Vt);
  for (int64_t ob = 0; ob < b.nob; ++ob) {
    // The 16 products, each over all the item's tiles with its weights U[e] (ni OB values) in L1.
    const T* Ub = U + (gi * b.nob + ob) * 16 * np * OB;
    for (int e = 0; e < 16; ++e) {
      const T* u = Ub + e * np * OB;
      px_blocks<PX>(0, Tc, [&](auto k, int64_t t0) __attribute__((always_inline)) {
        wb_dot<T, decltype(k)::value>(Vt + (e * Tc + t0) * np, np, np, u, M + (e * Tc + t0) * OB);
      });
    }
    // Y = A^T M A per tile, on the lane vectors; outputs past the plane's edge are dropped.
    for (int64_t tt = 0; tt < Tc; ++tt) {
      const int64_t lr = tt / TW, oh = 2 * ((r0 + lr) % TH), ow = 2 * (tt % TW);
      T* yt = tmp + (2 * lr * g.Wo + ow) * OB;
      for (int v2 = 0; v2 < 2; ++v2) {
        V m[16];
        for (int e = 0; e < 16; ++e) G::load(m[e], M + (e * Tc + tt) * OB + v2 * VL);
        V c0[4], c1[4];
        for (int q = 0; q < 4; ++q) c0[q] = m[q] + m[4 + q] + m[8 + q], c1[q] = m[4 + q] - m[8 + q] - m[12 + q];
        const V y[2][2] = {{c0[0] + c0[1] + c0[2], c0[1] - c0[2] - c0[3]},
                           {c1[0] + c1[1] + c1[2], c1[1] - c1[2] - c1[3]}};
        for (int ya = 0; ya < 2 && oh + ya < g.Ho; ++ya)
          for (int yb = 0; yb < 2 && ow + yb < g.Wo; ++yb) G::store(yt + (ya * g.Wo + yb) * OB + v2 * VL, y[ya][yb]);
      }
    }
    // Per image: its tile rows' outputs are one pixel range of y's planes.
    image_runs(TH, r0, r1, [&](int64_t n, int64_t r, int64_t re) __attribute__((always_inline)) {
      const int64_t p0 = 2 * (r % TH) * g.Wo, p1 = std::min(g.Ho, 2 * ((re - 1) % TH) + 2) * g.Wo;
      blk_store(g, tmp + 2 * (r - r0) * g.Wo * OB, n, gi * g.Kg() + ob * OB, p0, p1, ep, out, b.lanes(ob));
    });
  }
}

// Z = A dY A^T of tile rows [r0, r1) of group gi's output channels of dy into Z [e][t][Kp] (the
// channels in the lanes, zero past Kg), from dy's rows transposed channel-blocked into dyb; A^T = [1 1 1 0;
// 0 1 -1 -1] (dL/dM for Y = A^T M A).
template <typename T>
__attribute__((always_inline)) inline void wb_grad_output(const WinoBlocked<T>& b, int64_t gi, int64_t r0, int64_t r1,
                                                          const T* dy, T* dyb, T* Z) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  const Geo& g = b.g;
  const int64_t Kg = g.Kg(), Kp = b.Kp, TH = b.TH, TW = b.TW, W2 = 2 * TW, Tc = (r1 - r0) * TW;
  image_runs(TH, r0, r1, [&](int64_t n, int64_t r, int64_t re) __attribute__((always_inline)) {
    const int64_t th0 = r % TH, R = 2 * (re - r);
    for (int64_t kb = 0; kb < Kp / VL; ++kb) {
      const int64_t nc = std::max<int64_t>(0, std::min<int64_t>(VL, Kg - kb * VL));
      pad_to_lanes(dy + (n * g.K + gi * Kg + std::min(kb * VL, Kg)) * g.L(), g.L(), g.Ho, g.Wo, 2 * th0, 0, R, W2, nc,
                   dyb + kb * R * W2 * VL);
      for (int64_t t = (r - r0) * TW; t < (re - r0) * TW; ++t) {
        const T* p = dyb + ((kb * R + 2 * (t / TW - (r - r0))) * W2 + 2 * (t % TW)) * VL;
        V d[2][2], h[4][2];
        for (int ra = 0; ra < 2; ++ra)
          for (int q = 0; q < 2; ++q) G::load(d[ra][q], p + (ra * W2 + q) * VL);
        for (int q = 0; q < 2; ++q)
          h[0][q] = d[0][q], h[1][q] = d[0][q] + d[1][q], h[2][q] = d[0][q] - d[1][q], h[3][q] = -d[1][q];
        T* z = Z + t * Kp + kb * VL;
        for (int a = 0; a < 4; ++a) {
          G::store(z + (4 * a) * Tc * Kp, h[a][0]);
          G::store(z + (4 * a + 1) * Tc * Kp, h[a][0] + h[a][1]);
          G::store(z + (4 * a + 2) * Tc * Kp, h[a][0] - h[a][1]);
          G::store(z + (4 * a + 3) * Tc * Kp, -h[a][1]);
        }
      }
    }
  });
}

// P[j][o] += sum_{t < nt} v[t * ldv + j] z[t * ldz + o] for JN input channels j and 2 vectors of
// output channels o (P's rows ldp apart).
template <typename T, int JN>
__attribute__((always_inline)) inline void wb_outer(const T* v, int64_t ldv, const T* z, int64_t ldz, int64_t nt,
                                                    T* P, int64_t ldp) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL;
  V acc[2][JN];
  for (int j = 0; j < JN; ++j) acc[0][j] = acc[1][j] = V{};
  for (int64_t t = 0; t < nt; ++t, v += ldv, z += ldz) {
    V z0, z1;
    G::load(z0, z);
    G::load(z1, z + VL);
    for (int j = 0; j < JN; ++j) {
      const T s = v[j];
      acc[0][j] += z0 * s;
      acc[1][j] += z1 * s;
    }
  }
  for (int j = 0; j < JN; ++j)
    for (int v2 = 0; v2 < 2; ++v2) {
      V cur;
      G::load(cur, P + j * ldp + v2 * VL);
      G::store(P + j * ldp + v2 * VL, cur + acc[v2][j]);
    }
}

// One weight-grad item: group gi, tile rows [r0, r1) of the batch (one run), summed into the
// run's partial dU P [e][np][Kp], chunk after chunk.
template <typename T>
__attribute__((always_inline)) inline void wb_wgrad_impl(const WinoBlocked<T>& b, int64_t gi, int64_t r0, int64_t r1,
                                                         const T* x, const T* dy, T* P, T* s) {
  constexpr int OB = WinoBlocked<T>::OB, PX = WinoBlocked<T>::PX;
  const int64_t np = b.np, Kp = b.Kp;
  T* xb = s;
  T* Vt = xb + np * (2 * b.rows + 2) * b.Wq;
  T* dyb = Vt + 16 * b.rows * b.TW * np;
  T* Z = dyb + Kp * 2 * b.rows * 2 * b.TW;
  std::fill(P, P + 16 * np * Kp, T(0));
  for (int64_t c0 = r0; c0 < r1; c0 += b.rows) {
    const int64_t c1 = std::min(r1, c0 + b.rows), Tc = (c1 - c0) * b.TW;
    wb_input(b, gi, c0, c1, x, xb, Vt);
    wb_grad_output(b, gi, c0, c1, dy, dyb, Z);
    for (int e = 0; e < 16; ++e)
      for (int64_t ob = 0; ob < b.nob; ++ob) {
        const T* v = Vt + e * Tc * np;
        const T* z = Z + e * Tc * Kp + ob * OB;
        T* p = P + e * np * Kp + ob * OB;
        px_blocks<PX>(0, np, [&](auto k, int64_t j) __attribute__((always_inline)) {
          wb_outer<T, decltype(k)::value>(v + j, np, z, Kp, Tc, p + j * Kp, Kp);
        });
      }
  }
}

// dw of (group gi, lane block ob) = G^T dU G from the runs' partials, summed in run order.
template <typename T>
__attribute__((always_inline)) inline void wb_wgrad_out_impl(const WinoBlocked<T>& b, int64_t gi, int64_t ob,
                                                             const T* part, T* dw) {
  using G = GroupedTile<T>;
  using V = typename G::vec;
  constexpr int VL = G::VL, OB = 2 * VL;
  const Geo& g = b.g;
  const int64_t np = b.np, Kg = g.Kg(), Kp = b.Kp, Cg = g.Cg(), psz = 16 * np * Kp, nl = b.lanes(ob);
  const V half = V{} + T(0.5);
  alignas(32) T out[9][OB];
  for (int64_t c = 0; c < Cg; ++c) {
    for (int v = 0; v < 2; ++v) {
      V u[16];
      for (int e = 0; e < 16; ++e) {
        const T* p = part + gi * b.splits * psz + (e * np + c) * Kp + ob * OB + v * VL;
        G::load(u[e], p);
        for (int64_t r = 1; r < b.splits; ++r) {
          V q;
          G::load(q, p + r * psz);
          u[e] += q;
        }
      }
      V hv[3][4];  // G^T dU: rows a of U into the kernel's rows i
      for (int q = 0; q < 4; ++q) {
        const V s12 = half * (u[4 + q] + u[8 + q]);
        hv[0][q] = u[q] + s12, hv[1][q] = half * (u[4 + q] - u[8 + q]), hv[2][q] = s12 + u[12 + q];
      }
      for (int i = 0; i < 3; ++i) {  // then G along the columns
        const V s12 = half * (hv[i][1] + hv[i][2]);
        G::store(out[3 * i] + v * VL, hv[i][0] + s12);
        G::store(out[3 * i + 1] + v * VL, half * (hv[i][1] - hv[i][2]));
        G::store(out[3 * i + 2] + v * VL, s12 + hv[i][3]);
      }
    }
    for (int64_t l = 0; l < nl; ++l)
      for (int t = 0; t < 9; ++t) dw[((gi * Kg + ob * OB + l) * Cg + c) * 9 + t] = out[t][l];
  }
}

PYDL_SIMD_DISPATCH(template <typename T>, <T>, void, wb_pack,
                   (const WinoBlocked<T>& b, int64_t gi, int64_t ob, const T* w, T* dst, T* tmp),
                   (b, gi, ob, w, dst, tmp))
PYDL_SIMD_DISPATCH(template <typename T>, <T>, void, wb_item,
                   (const WinoBlocked<T>& b, int64_t gi, int64_t r0, int64_t r1, const T* a, const T* U,
                    const Epilogue<T>* ep, T* out, T* s),
                   (b, gi, r0, r1, a, U, ep, out, s))

PYDL_SIMD_DISPATCH(template <typename T>, <T>, void, wb_wgrad,
                   (const WinoBlocked<T>& b, int64_t gi, int64_t r0, int64_t r1, const T* x, const T* dy, T* P,
                    T* s),
                   (b, gi, r0, r1, x, dy, P, s))
PYDL_SIMD_DISPATCH(template <typename T>, <T>, void, wb_wgrad_out,
                   (const WinoBlocked<T>& b, int64_t gi, int64_t ob, const T* part, T* dw), (b, gi, ob, part, dw))

// Forward (a = x, w, out = y), input grad (a = dy, w, out = dx, no epilogue) or weight grad
// (a = x, w = dy, out = dw).
template <typename T>
void wino_blocked_run(const Geo& geo, Dir d, const T* a, const T* w, const Epilogue<T>* ep, T* out) {
  const WinoBlocked<T> b(geo, d);
  const Geo& g = b.g;
  constexpr int OB = WinoBlocked<T>::OB;
  if (b.wg) {
    T* part = static_cast<T*>(t_pack.get(b.shared() * (int64_t)sizeof(T)));
    const int64_t all = g.N * b.TH, psz = 16 * b.np * b.Kp;
    ParallelError err;
#pragma omp parallel if (parallel_pays(g))
    {
      T* s = thread_scratch<T>(b.scratch(), err);
#pragma omp for schedule(static)
      for (int64_t it = 0; it < g.G * b.splits; ++it) {
        const int64_t gi = it / b.splits, r = it % b.splits;
        if (s) wb_wgrad<T>(b, gi, all * r / b.splits, all * (r + 1) / b.splits, a, w, part + it * psz, s);
      }
#pragma omp for schedule(static)
      for (int64_t gob = 0; gob < g.G * b.nob; ++gob) wb_wgrad_out<T>(b, gob / b.nob, gob % b.nob, part, out);
    }
    err.rethrow();
    return;
  }
  const Epilogue<T> none{};
  if (!ep) ep = &none;
  T* U = static_cast<T*>(t_pack.get(b.shared() * (int64_t)sizeof(T)));
  ParallelError err;
  const int64_t items = g.G * b.nch;
#pragma omp parallel if (parallel_pays(g))
  {
    T* s = thread_scratch<T>(b.scratch(), err);
#pragma omp for schedule(static)
    for (int64_t gob = 0; gob < g.G * b.nob; ++gob)
      if (s) wb_pack<T>(b, gob / b.nob, gob % b.nob, w, U + gob * 16 * b.np * OB, s);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {  // a thread's items: one group's consecutive tile rows
      if (!s) continue;
      const int64_t ch = it % b.nch, gi = it / b.nch;
      const int64_t r0 = ch * b.rows, r1 = std::min(g.N * b.TH, r0 + b.rows);
      wb_item<T>(b, gi, r0, r1, a, U, ep, out, s);
    }
  }
  err.rethrow();
}

template <typename T>
int64_t wino_blocked_bytes_t(const Geo& g, Dir d) {
  if (!WinoBlocked<T>::fits(g, d)) return 0;
  const WinoBlocked<T> b(g, d);
  return (b.scratch() * max_threads() + b.shared()) * (int64_t)sizeof(T);
}
inline int64_t wino_blocked_bytes(const Geo& g, Dir d, int64_t elem) {
  return elem == 4 ? wino_blocked_bytes_t<float>(g, d) : wino_blocked_bytes_t<double>(g, d);
}

// ---------------------------------------------------------------- GEMM paths
// Threading: OpenBLAS runs single-threaded (blas_single_thread) and every GEMM is split by
// OpenMP into independent column (or row) blocks, each thread packing its own im2col
// block right before multiplying it. One thread pool, no nested parallelism, no
// oversubscription, and no intra-GEMM synchronization; results do not depend on timing.

// Tile columns [c0, c1) of the GEMM result tmp (K x width) -> y[n0 + j, k, l0 + l] (+ epilogue).
template <typename T>
void unpack_cols(const Geo& g, const T* tmp, const Tile& t, const Epilogue<T>& ep, T* y, int64_t c0, int64_t c1) {
  const int64_t width = t.width();
  for (int64_t j = c0 / t.lc; j * t.lc < c1; ++j) {
    const int64_t a = std::max<int64_t>(c0 - j * t.lc, 0), e = std::min(c1 - j * t.lc, t.lc);
    for (int64_t k = 0; k < g.K; ++k) {
      const T* s = tmp + k * width + j * t.lc;
      const int64_t off = ((t.n0 + j) * g.K + k) * g.L() + t.l0 + a;
      ep.run(y + off, s + a, off, ep.bias_at(k), e - a);
    }
  }
}

// tmp[k, c] = dy[n0 + j, k, l0 + l] for tile columns [c0, c1).
template <typename T>
void pack_cols(const Geo& g, const T* dy, const Tile& t, T* tmp, int64_t c0, int64_t c1) {
  const int64_t width = t.width();
  for (int64_t j = c0 / t.lc; j * t.lc < c1; ++j) {
    const int64_t a = std::max<int64_t>(c0 - j * t.lc, 0), e = std::min(c1 - j * t.lc, t.lc);
    for (int64_t k = 0; k < g.K; ++k)
      std::memcpy(tmp + k * width + j * t.lc + a, dy + ((t.n0 + j) * g.K + k) * g.L() + t.l0 + a,
                  (size_t)(e - a) * sizeof(T));
  }
}

// Work items of the 1x1 path: (image, group, column block), enough blocks to feed every thread.
inline int64_t col_parts(int64_t items, int64_t L) {
#ifdef _OPENMP
  const int64_t nt = omp_get_max_threads();
#else
  const int64_t nt = 1;
#endif
  if (items >= 2 * nt) return 1;
  return std::max<int64_t>(1, std::min((2 * nt + items - 1) / items, L / 64));
}

// The 1x1 path's work items, forward and input grad: (image, group, column block, row block).
// Small planes (a batch-1 7x7 layer) have too few columns to share, so the GEMM's rows (output
// channels forward, input channels for the input grad) are cut too, at multiples of 8.
struct PointwiseItems {
  int64_t parts, rparts, items;
  PointwiseItems(const Geo& g, int64_t rows) : parts(col_parts(g.N * g.G, g.L())) {
    const int64_t cells = g.N * g.G * parts, want = 2 * max_threads();
    rparts = cells >= want ? 1 : std::max<int64_t>(1, std::min((want + cells - 1) / cells, rows / 32));
    items = cells * rparts;
  }
  // Item it: image n, group gi, columns [c0, c1), rows [r0, r1) (empty when r0 >= r1).
  void at(const Geo& g, int64_t rows, int64_t it, int64_t& n, int64_t& gi, int64_t& c0, int64_t& c1, int64_t& r0,
          int64_t& r1) const {
    const int64_t cell = it / rparts, rp = it % rparts, p = cell % parts;
    n = cell / (g.G * parts), gi = (cell / parts) % g.G;
    c0 = g.L() * p / parts, c1 = g.L() * (p + 1) / parts;
    r0 = rows * rp / rparts / 8 * 8, r1 = rp + 1 == rparts ? rows : rows * (rp + 1) / rparts / 8 * 8;
  }
};

// Dense 3x3 convolutions of stride 1 or 2 may take the Winograd path (conv_winograd.cpp), and
// dilated ones of stride 1 whose padding is a multiple of the dilation (space-to-batch):
// the stride, or 0 when it does not apply.
inline int64_t winograd_fits(const Geo& g) {
  const bool dense = g.kh == 3 && g.kw == 3 && g.sh == g.sw && !g.depthwise();
  const bool plain = (g.sh == 1 || g.sh == 2) && g.dh == 1 && g.dw == 1;
  const bool dilated = g.sh == 1 && g.dh >= 1 && g.dw >= 1 && g.ph % g.dh == 0 && g.pw % g.dw == 0;
  return dense && (plain || dilated) ? g.sh : 0;
}

// Image-parallel forward: each thread takes whole images, im2col into its own buffer (one
// image, kept in cache) and GEMMs straight into y. No shared column tiles, no barriers and no
// result permute; the GEMMs stay efficient because the reduction (C*kh*kw) is deep. Used
// when there are at least as many images as threads and one image's columns per thread fit
// the cache target and the workspace cap. Each image is one thread's work (parallel_items), so
// the result does not depend on the thread count. One image per GEMM: batching several did not
// pay.
inline bool per_image_pays(const Geo& g, int64_t elem) {
#ifdef _OPENMP
  const int64_t nt = parallel_pays(g) ? omp_get_max_threads() : 1;
#else
  const int64_t nt = 1;
#endif
  const int64_t bytes = (g.R() * g.L() + (padded_im2col_pays(g) ? padded_plane(g) : 0)) * elem;
  return g.N >= nt && g.Cg() * g.kh * g.kw >= 16 && g.L() >= 64 &&
         bytes * nt <= std::min(g_ws_limit.load(), g_tile_bytes);
}

template <typename T>
void forward_per_image(const Geo& g, const T* x, const T* w, const Epilogue<T>& ep, T* y) {
  const int64_t Kg = g.Kg(), L = g.L(), Rg = g.Cg() * g.kh * g.kw;
  const bool padded = padded_im2col_pays(g);
  parallel_items<T>(g, g.N, g.R() * L + (padded ? padded_plane(g) : 0), [&](int64_t n, T* col) {
    if (padded) {
      im2col_image_padded(g, x + n * g.C * g.HW(), col, col + g.R() * L);
    } else {
      const Tile t{n, 1, 0, L};
      im2col_block(g, x, t, col, 0, g.R(), 0, L);
    }
    for (int64_t gi = 0; gi < g.G; ++gi)
      gemm(false, false, Kg, L, Rg, T(1), w + gi * Kg * Rg, Rg, col + gi * Rg * L, L, T(0),
           y + (n * g.K + gi * Kg) * L, L);
    for (int64_t k = 0; k < g.K; ++k)
      ep.run(y + (n * g.K + k) * L, y + (n * g.K + k) * L, (n * g.K + k) * L, ep.bias_at(k), L);
  });
}

// ---------------------------------------------------------------- the algorithm table
// One table for the three directions (forward, grad input, grad weight); choose() holds the
// automatic rule, applies() what each algorithm can compute, and a forced algorithm
// (pydl.backends.conv_algorithm) replaces the rule or raises when it does not apply.
enum class Algo : int {
  automatic = 0, depthwise = 1, winograd = 2, gemm_1x1 = 3, per_image = 4, tiled = 5, grouped = 6,
  depthwise_blocked = 7, blocked = 8, winograd_blocked = 9
};
constexpr const char* kAlgoNames[] = {"auto", "depthwise", "winograd", "gemm_1x1", "im2col_per_image",
                                      "im2col_tiled", "grouped_direct", "depthwise_blocked", "direct_blocked",
                                      "winograd_blocked"};
constexpr const char* kDirNames[] = {"forward", "input_grad", "weight_grad"};
std::atomic<int> g_forced[3] = {{0}, {0}, {0}};

// Whether algorithm a computes direction d of geometry g (whatever its speed).
bool applies(Dir d, Algo a, const Geo& g, int64_t elem) {
  switch (a) {
    case Algo::depthwise:
      return g.depthwise();
    case Algo::depthwise_blocked:
      return g.depthwise() && dw_blocked_bytes(g, d, elem) * max_threads() <= g_ws_limit.load();
    case Algo::winograd:  // dense 3x3, stride 1 or 2 (stride-2 input grad: the adjoint), or dilated at stride 1
      return winograd_fits(g) != 0;
    case Algo::gemm_1x1:
      return g.pointwise();
    case Algo::per_image: {  // one image's columns per thread under the workspace cap
      if (d == Dir::weight_grad || (d == Dir::input_grad && !padded_im2col_pays(g))) return false;
      const int64_t pad = (d == Dir::input_grad || padded_im2col_pays(g)) ? padded_plane(g) : 0;
      return (g.R() * g.L() + pad) * elem * max_threads() <= g_ws_limit.load();
    }
    case Algo::tiled:
      return true;
    case Algo::grouped: {  // groups of several channels
      if (g.G == 1 || g.depthwise()) return false;
      return grouped_scratch(g, d, elem) * elem * max_threads() <= g_ws_limit.load();
    }
    case Algo::blocked: {  // channel blocks of 2 vectors (16 float / 8 double) in every group, the last padded
      const int64_t bytes = blocked_bytes(g, d, elem);
      return bytes > 0 && bytes <= g_ws_limit.load();
    }
    case Algo::winograd_blocked: {  // 3x3, stride 1, no dilation; lane blocks as direct_blocked's
      const int64_t bytes = wino_blocked_bytes(g, d, elem);
      return bytes > 0 && bytes <= g_ws_limit.load();
    }
    default:
      return false;
  }
}

// The lane algorithms (direct_blocked, winograd_blocked) pay where a group's lane channels (output
// channels; input channels for the input grad) fill one float lane block of 16 and 3/4 of the last:
// on emptier lanes (8 channels a group) grouped_direct's flat rows win.
inline bool lanes_fill(int64_t lanes) {
  constexpr int64_t ob = 16;
  return lanes >= ob && 4 * lanes >= 3 * ((lanes + ob - 1) / ob * ob);
}

// Grouped convolutions with at most this many input channels per group run grouped_direct; the
// weight gradient's GEMM (reduction over the pixels, Cg*kh*kw columns) wins from 64 channels.
constexpr int64_t kGroupedMaxChannels[3] = {64, 64, 32};

// direct_blocked where its channel lanes beat flat rows and GEMMs: the weight gradient of grouped
// layers, their forward and input gradient on small planes (7x7, 14x14), few-channel stems with
// large kernels (a 7x7 over RGB; a 3x3 one is too short a reduction), and dense kernels of 5x5 and
// more, whose im2col columns are taps times the input's bytes while the direct loops reread the
// input planes from cache (while they fit in 1 MiB).
inline bool blocked_pays(Dir d, const Geo& g, int64_t elem) {
  if (!lanes_fill(d == Dir::input_grad ? g.Cg() : g.Kg())) return false;
  if (g.G == 1) {
    const int64_t planes = g.C * (g.H + 2 * g.ph) * (g.W + 2 * g.pw) * elem;
    return (d != Dir::input_grad && g.C < 8 && g.R() >= 64) || (g.kh * g.kw >= 25 && planes <= (int64_t(1) << 20));
  }
  if (d == Dir::weight_grad) return true;
  // The strided input gradient's phases split the taps: each phase's reduction (Kg x its taps)
  // must stay long enough to pay for scattering its pixels back into dx.
  if (d == Dir::input_grad && g.Kg() * g.kh * g.kw < 128 * g.sh * g.sw) return false;
  return (d == Dir::forward ? g.L() : g.HW()) <= 256;
}

// Winograd runs a grouped layer as per-group GEMMs: they pay from 32 channels a side on planes
// larger than direct_blocked takes (the weight gradient, a reduction over the tiles, from 64 x 32).
inline bool winograd_groups_pay(Dir d, const Geo& g) {
  if (g.G == 1) return true;
  if (d == Dir::weight_grad) return g.Cg() * g.Kg() >= 2048;
  return g.Cg() >= 32 && g.Kg() >= 32 && (d == Dir::forward ? g.L() : g.HW()) > 256;
}

// winograd_blocked on grouped 3x3 layers (16+ lanes a group) and on dense ones of up to 128
// channels (wider ones are wide GEMMs for winograd; on AVX-512 hosts, not measured, OpenBLAS's
// wider GEMMs keep them all), where the batch has at least as many tiles as a group has input
// channels: the kernels' transform, 16/9 of their size, is made once per call.
// The weight gradient on grouped layers whose runs' partial sums stay small (dense ones need many
// runs of large partials for the threads).
inline bool wino_blocked_pays(Dir d, const Geo& g) {
  const bool dx = d == Dir::input_grad;
  const int64_t ni = dx ? g.Kg() : g.Cg(), ho = dx ? g.H : g.Ho, wo = dx ? g.W : g.Wo;
  if (!lanes_fill(dx ? g.Cg() : g.Kg())) return false;
  if (g.N * ((ho + 1) / 2) * ((wo + 1) / 2) < ni) return false;
  if (d == Dir::weight_grad) return g.G > 1 && std::max<int64_t>(1, 16 / g.G) * g.Cg() * g.Kg() <= 16384;
  return g.G > 1 || (!use_avx512() && std::max(g.Cg(), g.Kg()) <= 128);
}

// The automatic rule. Winograd may still decline at run time (its chunks do not fit the
// workspace cap); the caller then takes the im2col algorithm this rule gives without it.
Algo choose(Dir d, const Geo& g, int64_t elem, bool winograd_ok = true) {
  if (g.depthwise())  // per plane only where the interleaved planes do not fit the workspace cap
    return applies(d, Algo::depthwise_blocked, g, elem) ? Algo::depthwise_blocked : Algo::depthwise;
  if (wino_blocked_pays(d, g) && applies(d, Algo::winograd_blocked, g, elem))
    return Algo::winograd_blocked;
  if (winograd_ok && winograd_fits(g) && winograd_groups_pay(d, g)) {
    const bool pays = d == Dir::input_grad && winograd_fits(g) == 1
                          ? winograd_pays(g.N, g.Kg(), g.Cg(), g.H, g.W, 1, false, g.dh, g.dw)
                          : winograd_pays(g.N, g.Cg(), g.Kg(), g.Ho, g.Wo, g.sh, d == Dir::weight_grad, g.dh, g.dw);
    if (pays) return Algo::winograd;
  }
  // A wide 1x1 forward on small planes (7x7) makes per-image GEMMs too thin for BLAS: the tiled
  // algorithm puts several images' columns side by side in one GEMM.
  if (g.pointwise())
    return d == Dir::forward && g.L() < 64 && g.N >= 4 && g.Kg() >= 256 ? Algo::tiled : Algo::gemm_1x1;
  if (blocked_pays(d, g, elem) && applies(d, Algo::blocked, g, elem)) return Algo::blocked;
  if (g.Cg() <= kGroupedMaxChannels[static_cast<int>(d)] && applies(d, Algo::grouped, g, elem))
    return Algo::grouped;
  if (d == Dir::forward && per_image_pays(g, elem)) return Algo::per_image;
  if (d == Dir::input_grad && padded_im2col_pays(g) && per_image_pays(g, elem)) return Algo::per_image;
  return Algo::tiled;
}

// The forced algorithm of direction d, checked against g, or the automatic choice.
Algo pick(Dir d, const Geo& g, int64_t elem) {
  const Algo f = static_cast<Algo>(g_forced[static_cast<int>(d)].load());
  if (f == Algo::automatic) return choose(d, g, elem);
  PYDL_CHECK(applies(d, f, g, elem), "conv: algorithm '" << kAlgoNames[static_cast<int>(f)]
                                         << "' does not apply to this " << kDirNames[static_cast<int>(d)]
                                         << " (kernel " << g.kh << "x" << g.kw << ", stride " << g.sh << "x"
                                         << g.sw << ", padding " << g.ph << "x" << g.pw << ", dilation " << g.dh
                                         << "x" << g.dw << ", groups " << g.G
                                         << "); see pydl.backends.conv_algorithms()");
  return f;
}

// A forced Winograd that declined (its smallest chunk is over the workspace cap) is an error.
void winograd_declined(Dir d) {
  PYDL_CHECK(static_cast<Algo>(g_forced[static_cast<int>(d)].load()) != Algo::winograd,
             "conv: algorithm 'winograd' does not fit the workspace cap for this call "
             "(raise it with pydl.functional.set_conv_workspace_limit)");
}

template <typename T>
void forward(const Geo& g, const T* x, const T* w, const Epilogue<T>& ep, T* y) {
  if (g.N == 0) return;
  Algo a = pick(Dir::forward, g, sizeof(T));
  if (a == Algo::depthwise) return dw_forward(g, x, w, ep, y);
  if (a == Algo::depthwise_blocked) return dw_blocked_run(g, Dir::forward, x, w, &ep, y);
  if (a == Algo::winograd) {
    if (g.dh * g.dw > 1 ? winograd_conv3x3_dilated(g.N, g.C, g.H, g.W, g.K, g.Ho, g.Wo, g.dh, g.dw, g.ph, g.pw, x, w,
                                                   ep, y, g.G)
                        : winograd_conv3x3(g.N, g.C, g.H, g.W, g.K, g.Ho, g.Wo, g.sh, -g.ph, -g.pw, x, w, false, ep, y,
                                           g.G))
      return;
    winograd_declined(Dir::forward);
    a = choose(Dir::forward, g, sizeof(T), false);
  }
  const int64_t Kg = g.Kg(), Cg = g.Cg(), L = g.L(), Rg = Cg * g.kh * g.kw;
  if (a == Algo::gemm_1x1) {
    const PointwiseItems pi(g, Kg);
#pragma omp parallel for schedule(dynamic, 1) if (parallel_pays(g))
    for (int64_t it = 0; it < pi.items; ++it) {
      int64_t n, gi, c0, c1, k0, k1;
      pi.at(g, Kg, it, n, gi, c0, c1, k0, k1);
      if (k0 >= k1) continue;
      T* yp = y + (n * g.K + gi * Kg + k0) * L;
      gemm(false, false, k1 - k0, c1 - c0, Cg, T(1), w + (gi * Kg + k0) * Cg, Cg, x + (n * g.C + gi * Cg) * L + c0,
           L, T(0), yp + c0, L);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t off = (n * g.K + gi * Kg + k) * L + c0;
        ep.run(y + off, y + off, off, ep.bias_at(gi * Kg + k), c1 - c0);
      }
    }
    return;
  }
  if (a == Algo::per_image) return forward_per_image(g, x, w, ep, y);
  if (a == Algo::grouped) return grouped_run(g, Dir::forward, x, w, &ep, y);
  if (a == Algo::blocked) return blocked_run<T>(g, Dir::forward, x, w, &ep, y);
  if (a == Algo::winograd_blocked) return wino_blocked_run<T>(g, Dir::forward, x, w, &ep, y);
  int64_t maxw;
  auto tiles = make_tiles(g, g.R(), g.K, sizeof(T), maxw);
  const bool any_batched = std::any_of(tiles.begin(), tiles.end(), [](const Tile& t) { return t.nb > 1; });
  T* col = static_cast<T*>(t_ws.get((g.R() + (any_batched ? g.K : 0)) * maxw * (int64_t)sizeof(T)));
  T* tmp = col + g.R() * maxw;
#pragma omp parallel if (parallel_pays(g))
  for (const Tile& t : tiles) {
    // Each thread: im2col of its own columns, then its slice of every group's GEMM.
    const int64_t width = t.width();
    if (t.nb == 1 && width < 128 * team_size() && Kg >= 32 * team_size()) {
      // Too few columns per thread (one small image) for a wide GEMM slice: the threads share
      // the im2col by rows, then each multiplies its rows of the weight by all the columns.
      int64_t r0, r1, k0, k1;
      split(g.R(), 1, r0, r1);
      im2col_block(g, x, t, col, r0, r1, 0, width);
#pragma omp barrier
      split(Kg, 8, k0, k1);
      for (int64_t gi = 0; gi < g.G && k0 < k1; ++gi) {
        const int64_t off = (t.n0 * g.K + gi * Kg + k0) * L + t.l0;
        gemm(false, false, k1 - k0, width, Rg, T(1), w + (gi * Kg + k0) * Rg, Rg, col + gi * Rg * width, width,
             T(0), y + off, L);
        for (int64_t k = k0; k < k1; ++k)
          ep.run(y + off + (k - k0) * L, y + off + (k - k0) * L, off + (k - k0) * L, ep.bias_at(gi * Kg + k), width);
      }
#pragma omp barrier
      continue;
    }
    // One slice per thread, not L2-sized panels: OpenBLAS prefers wide GEMMs.
    int64_t c0, c1;
    split(width, 16, c0, c1);
    if (c0 < c1) {
      im2col_block(g, x, t, col, 0, g.R(), c0, c1);
      for (int64_t gi = 0; gi < g.G; ++gi) {
        const T* A = w + gi * Kg * Rg;
        const T* B = col + gi * Rg * width + c0;
        if (t.nb == 1)
          gemm(false, false, Kg, c1 - c0, Rg, T(1), A, Rg, B, width, T(0),
               y + (t.n0 * g.K + gi * Kg) * L + t.l0 + c0, L);
        else
          gemm(false, false, Kg, c1 - c0, Rg, T(1), A, Rg, B, width, T(0), tmp + gi * Kg * width + c0, width);
      }
      if (t.nb > 1) {
        unpack_cols(g, tmp, t, ep, y, c0, c1);
      } else {
        for (int64_t k = 0; k < g.K; ++k) {
          const int64_t off = (t.n0 * g.K + k) * L + t.l0 + c0;
          ep.run(y + off, y + off, off, ep.bias_at(k), c1 - c0);
        }
      }
    }
#pragma omp barrier
  }
}

// Image-parallel grad input, the mirror of forward_per_image: each thread GEMMs one image's
// columns into its own buffer and sums them into that image's dx through a padded plane; no
// shared tiles, barriers or zero pass. Taken where the padded im2col is (strided convolutions).
template <typename T>
void backward_input_per_image(const Geo& g, const T* dy, const T* w, T* dx) {
  const int64_t Kg = g.Kg(), L = g.L(), Rg = g.Cg() * g.kh * g.kw;
  parallel_items<T>(g, g.N, g.R() * L + padded_plane(g), [&](int64_t n, T* col) {
    for (int64_t gi = 0; gi < g.G; ++gi)
      gemm(true, false, Rg, L, Kg, T(1), w + gi * Kg * Rg, Rg, dy + (n * g.K + gi * Kg) * L, L, T(0),
           col + gi * Rg * L, L);
    col2im_image_padded(g, col, dx + n * g.C * g.HW(), col + g.R() * L);
  });
}

template <typename T>
void backward_input(const Geo& g, const T* dy, const T* w, T* dx) {
  if (g.N == 0) return;
  Algo a = pick(Dir::input_grad, g, sizeof(T));
  if (a == Algo::depthwise) return dw_backward_input(g, dy, w, dx);
  if (a == Algo::depthwise_blocked) return dw_blocked_run<T>(g, Dir::input_grad, dy, w, nullptr, dx);
  if (a == Algo::winograd) {
    // Stride 1: dx = conv(dy, w rotated 180 degrees, channels swapped) at offset pad - 2.
    // Stride 2: the adjoint of the stride-2 Winograd forward. Dilated: the same per phase.
    const bool done =
        g.dh * g.dw > 1 ? winograd_conv3x3_dilated_input_grad(g.N, g.C, g.H, g.W, g.K, g.Ho, g.Wo, g.dh, g.dw, g.ph,
                                                              g.pw, dy, w, dx, g.G)
        : winograd_fits(g) == 1 ? winograd_conv3x3(g.N, g.K, g.Ho, g.Wo, g.C, g.H, g.W, 1, g.ph - 2, g.pw - 2, dy, w,
                                                   true, Epilogue<T>{}, dx, g.G)
                                : winograd_conv3x3_input_grad(g.N, g.C, g.H, g.W, g.K, g.Ho, g.Wo, -g.ph, -g.pw, dy,
                                                              w, dx, g.G);
    if (done) return;
    winograd_declined(Dir::input_grad);
    a = choose(Dir::input_grad, g, sizeof(T), false);
  }
  const int64_t Kg = g.Kg(), Cg = g.Cg(), L = g.L(), Rg = Cg * g.kh * g.kw;
  if (a == Algo::gemm_1x1) {
    const PointwiseItems pi(g, Cg);
#pragma omp parallel for schedule(dynamic, 1) if (parallel_pays(g))
    for (int64_t it = 0; it < pi.items; ++it) {
      int64_t n, gi, c0, c1, r0, r1;
      pi.at(g, Cg, it, n, gi, c0, c1, r0, r1);
      if (r0 >= r1) continue;
      gemm(true, false, r1 - r0, c1 - c0, Kg, T(1), w + gi * Kg * Cg + r0, Cg, dy + (n * g.K + gi * Kg) * L + c0, L,
           T(0), dx + (n * g.C + gi * Cg + r0) * L + c0, L);
    }
    return;
  }
  if (a == Algo::per_image) return backward_input_per_image(g, dy, w, dx);
  if (a == Algo::grouped) return grouped_run<T>(g, Dir::input_grad, dy, w, nullptr, dx);
  if (a == Algo::blocked) return blocked_run<T>(g, Dir::input_grad, dy, w, nullptr, dx);
  if (a == Algo::winograd_blocked) return wino_blocked_run<T>(g, Dir::input_grad, dy, w, nullptr, dx);
  int64_t maxw;
  auto tiles = make_tiles(g, g.R(), g.K, sizeof(T), maxw);
  const bool any_batched = std::any_of(tiles.begin(), tiles.end(), [](const Tile& t) { return t.nb > 1; });
  T* col = static_cast<T*>(t_ws.get((g.R() + (any_batched ? g.K : 0)) * maxw * (int64_t)sizeof(T)));
  T* tmp = col + g.R() * maxw;
  const int64_t planes = g.N * g.C, hw = g.HW();
#pragma omp parallel if (parallel_pays(g))
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) std::fill(dx + p * hw, dx + (p + 1) * hw, T(0));
    for (const Tile& t : tiles) {
      // dcol = W^T dY by column blocks, then col2im by (image, channel) planes.
      const int64_t width = t.width();
      int64_t c0, c1;
      split(width, 16, c0, c1);
      if (c0 < c1) {
        if (t.nb > 1) pack_cols(g, dy, t, tmp, c0, c1);
        for (int64_t gi = 0; gi < g.G; ++gi) {
          const T* A = w + gi * Kg * Rg;
          if (t.nb == 1)
            gemm(true, false, Rg, c1 - c0, Kg, T(1), A, Rg, dy + (t.n0 * g.K + gi * Kg) * L + t.l0 + c0, L,
                 T(0), col + gi * Rg * width + c0, width);
          else
            gemm(true, false, Rg, c1 - c0, Kg, T(1), A, Rg, tmp + gi * Kg * width + c0, width, T(0),
                 col + gi * Rg * width + c0, width);
        }
      }
#pragma omp barrier
      col2im(g, col, t, dx);  // ends with the implicit barrier of omp for
    }
  }
}

template <typename T>
void backward_weight(const Geo& g, const T* dy, const T* x, T* dw) {
  const int64_t Kg = g.Kg(), Cg = g.Cg(), L = g.L(), Rg = Cg * g.kh * g.kw;
  if (g.N == 0 || L == 0) {
    std::fill(dw, dw + g.K * Rg, T(0));
    return;
  }
  Algo a = pick(Dir::weight_grad, g, sizeof(T));
  if (a == Algo::depthwise) return dw_backward_weight(g, dy, x, dw);
  if (a == Algo::depthwise_blocked) return dw_blocked_run<T>(g, Dir::weight_grad, x, dy, nullptr, dw);
  if (a == Algo::grouped) return grouped_run<T>(g, Dir::weight_grad, x, dy, nullptr, dw);
  if (a == Algo::blocked) return blocked_run<T>(g, Dir::weight_grad, x, dy, nullptr, dw);
  if (a == Algo::winograd_blocked) return wino_blocked_run<T>(g, Dir::weight_grad, x, dy, nullptr, dw);
  if (a == Algo::winograd) {
    if (g.dh * g.dw > 1 ? winograd_conv3x3_dilated_weight(g.N, g.C, g.H, g.W, g.K, g.Ho, g.Wo, g.dh, g.dw, g.ph, g.pw,
                                                          x, dy, dw, g.G)
                        : winograd_conv3x3_weight(g.N, g.C, g.H, g.W, g.K, g.Ho, g.Wo, g.sh, -g.ph, -g.pw, x, dy, dw,
                                                  g.G))
      return;
    winograd_declined(Dir::weight_grad);
    a = choose(Dir::weight_grad, g, sizeof(T), false);
  }
  if (a == Algo::gemm_1x1) {
    // dW_g[:, c0:c1] = sum_n dY[n, g] X[n, g, c0:c1]^T: thread blocks over (group, channels),
    // one block per thread when the groups are fewer than the threads (wider GEMMs).
#ifdef _OPENMP
    const int64_t nt = omp_get_max_threads();
#else
    const int64_t nt = 1;
#endif
    const int64_t parts = g.G >= nt ? 1 : std::max<int64_t>(1, std::min((nt + g.G - 1) / g.G, Cg / 16));
    const int64_t items = g.G * parts;
#pragma omp parallel for schedule(static) if (parallel_pays(g))
    for (int64_t it = 0; it < items; ++it) {
      const int64_t gi = it / parts, p = it % parts;
      const int64_t c0 = Cg * p / parts, c1 = Cg * (p + 1) / parts;
      for (int64_t n = 0; n < g.N; ++n)
        gemm(false, true, Kg, c1 - c0, L, T(1), dy + (n * g.K + gi * Kg) * L, L,
             x + (n * g.C + gi * Cg + c0) * L, L, n ? T(1) : T(0), dw + gi * Kg * Cg + c0, Cg);
    }
    return;
  }
  int64_t maxw;
  auto tiles = make_tiles(g, g.R(), g.K, sizeof(T), maxw);
  const bool any_batched = std::any_of(tiles.begin(), tiles.end(), [](const Tile& t) { return t.nb > 1; });
  T* col = static_cast<T*>(t_ws.get((g.R() + (any_batched ? g.K : 0)) * maxw * (int64_t)sizeof(T)));
  T* tmp = col + g.R() * maxw;
#pragma omp parallel if (parallel_pays(g))
  {
    // The reduction runs over columns, so threads own rows of col (= columns of dW):
    // dW[:, r0:r1] += dY col[r0:r1]^T, no cross-thread sums.
    int64_t r0, r1;
    split(g.R(), 8, r0, r1);
    bool first = true;
    for (const Tile& t : tiles) {
      const int64_t width = t.width();
      if (t.nb > 1) {
        int64_t c0, c1;
        split(width, 16, c0, c1);
        pack_cols(g, dy, t, tmp, c0, c1);
      }
#pragma omp barrier
      // im2col of this thread's rows, then accumulate into its columns of dW.
      {
        const int64_t c0 = 0, c1 = width;
        im2col_block(g, x, t, col, r0, r1, c0, c1);
        for (int64_t gi = 0; gi < g.G; ++gi) {
          const int64_t a = std::max(r0, gi * Rg), e = std::min(r1, (gi + 1) * Rg);
          if (a >= e) continue;
          const T* A = t.nb == 1 ? dy + (t.n0 * g.K + gi * Kg) * L + t.l0 : tmp + gi * Kg * width;
          gemm(false, true, Kg, e - a, c1 - c0, T(1), A + c0, t.nb == 1 ? L : width, col + a * width + c0, width,
               first ? T(0) : T(1), dw + gi * Kg * Rg + (a - gi * Rg), Rg);
        }
        first = false;
      }
#pragma omp barrier
    }
  }
}
template <typename T>
void backward_bias(int64_t N, int64_t K, int64_t L, const T* dy, T* db) {
#pragma omp parallel for schedule(static) if (N * K * L > (1 << 15))
  for (int64_t k = 0; k < K; ++k) {
    // 16 independent lane sums per plane (vectorizes without reassociating, so the result does
    // not depend on the compiler or thread count), then float64 across lanes and images.
    constexpr int V = 16;
    double acc = 0;
    for (int64_t n = 0; n < N; ++n) {
      const T* s = dy + (n * K + k) * L;
      T part[V] = {};
      int64_t l = 0;
      for (; l + V <= L; l += V)
        for (int j = 0; j < V; ++j) part[j] += s[l + j];
      for (int j = 0; l < L; ++l, ++j) part[j] += s[l];
      for (int j = 0; j < V; ++j) acc += (double)part[j];
    }
    db[k] = (T)acc;
  }
}

// ---------------------------------------------------------------- bindings

Geo make_geo(const py::array& x, const py::array& w, const py::array& y, int64_t sh, int64_t sw,
             int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t G) {
  PYDL_CHECK(x.ndim() == 4 && w.ndim() == 4 && y.ndim() == 4, "conv: expected 4-D x, w and y");
  PYDL_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0 && G >= 1,
             "conv: bad stride/padding/dilation/groups");
  Geo g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), y.shape(2), y.shape(3),
        w.shape(2), w.shape(3), sh, sw, ph, pw, dh, dw, G};
  PYDL_CHECK(g.C % G == 0 && g.K % G == 0 && w.shape(1) * G == g.C, "conv: channels vs groups mismatch");
  PYDL_CHECK(y.shape(0) == g.N && y.shape(1) == g.K, "conv: y has the wrong batch or channel count");
  PYDL_CHECK(g.kh >= 1 && g.kw >= 1, "conv: empty kernel");
  // Backstops for what Python rejects first: G loops run G times even with C = 0, and an
  // empty image plane would divide by zero when columns are tiled.
  PYDL_CHECK(G <= std::max<int64_t>(std::max(g.C, g.K), 1), "conv: more groups than channels");
  PYDL_CHECK(g.H >= 1 && g.W >= 1 && g.Ho >= 1 && g.Wo >= 1, "conv: empty image plane");
  return g;
}

template <typename T>
void check_dtype(const py::array& a, const char* name) {
  PYDL_CHECK(has_dtype<T>(a) && (a.flags() & py::array::c_style),
             "conv: " << name << " must be C-contiguous with the dtype of the other arrays");
}

template <typename T>
void fwd_t(py::array x, py::array w, py::object b, py::array y, int64_t sh, int64_t sw, int64_t ph,
           int64_t pw, int64_t dh, int64_t dw, int64_t G, int act, double slope, py::object residual) {
  Geo g = make_geo(x, w, y, sh, sw, ph, pw, dh, dw, G);
  check_dtype<T>(x, "x"), check_dtype<T>(w, "w"), check_dtype<T>(y, "y");
  Epilogue<T> ep;
  if (!b.is_none()) {
    py::array ba = b.cast<py::array>();
    check_dtype<T>(ba, "b");
    PYDL_CHECK(ba.ndim() == 1 && ba.shape(0) == g.K, "conv: b must have shape (K,)");
    ep.bias = static_cast<const T*>(ba.data());
  }
  if (!residual.is_none()) {
    py::array ra = residual.cast<py::array>();
    check_dtype<T>(ra, "residual");
    PYDL_CHECK(ra.ndim() == 4 && ra.size() == y.size() && ra.shape(1) == g.K && ra.shape(2) == g.Ho &&
                   ra.shape(3) == g.Wo,
               "conv: residual must have y's shape");
    ep.residual = static_cast<const T*>(ra.data());
  }
  PYDL_CHECK(act >= 0 && act <= static_cast<int>(Act::hardswish), "conv: unknown activation " << act);
  ep.act = static_cast<Act>(act);
  ep.slope = static_cast<T>(slope);
  PYDL_CHECK(y.writeable(), "conv: y is read-only");
  const T* xp = static_cast<const T*>(x.data());
  const T* wp = static_cast<const T*>(w.data());
  T* yp = static_cast<T*>(y.mutable_data());
  blas_single_thread();
  py::gil_scoped_release nogil;
  forward<T>(g, xp, wp, ep, yp);
}

template <typename T>
void bwd_input_t(py::array dy, py::array w, py::array dx, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                 int64_t dh, int64_t dw, int64_t G) {
  Geo g = make_geo(dx, w, dy, sh, sw, ph, pw, dh, dw, G);
  check_dtype<T>(dy, "dy"), check_dtype<T>(w, "w"), check_dtype<T>(dx, "dx");
  PYDL_CHECK(dx.writeable(), "conv: dx is read-only");
  const T* dyp = static_cast<const T*>(dy.data());
  const T* wp = static_cast<const T*>(w.data());
  T* dxp = static_cast<T*>(dx.mutable_data());
  blas_single_thread();
  py::gil_scoped_release nogil;
  backward_input<T>(g, dyp, wp, dxp);
}

template <typename T>
void bwd_weight_t(py::array dy, py::array x, py::array dwt, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                  int64_t dh, int64_t dw, int64_t G) {
  Geo g = make_geo(x, dwt, dy, sh, sw, ph, pw, dh, dw, G);
  check_dtype<T>(dy, "dy"), check_dtype<T>(x, "x"), check_dtype<T>(dwt, "dw");
  PYDL_CHECK(dwt.writeable(), "conv: dw is read-only");
  const T* dyp = static_cast<const T*>(dy.data());
  const T* xp = static_cast<const T*>(x.data());
  T* dwp = static_cast<T*>(dwt.mutable_data());
  blas_single_thread();
  py::gil_scoped_release nogil;
  backward_weight<T>(g, dyp, xp, dwp);
}

template <typename T>
void bwd_bias_t(py::array dy, py::array db) {
  PYDL_CHECK(dy.ndim() == 4 && db.ndim() == 1 && db.shape(0) == dy.shape(1), "conv: db must have shape (K,)");
  check_dtype<T>(dy, "dy"), check_dtype<T>(db, "db");
  PYDL_CHECK(db.writeable(), "conv: db is read-only");
  const int64_t N = dy.shape(0), K = dy.shape(1), L = dy.shape(2) * dy.shape(3);
  const T* dyp = static_cast<const T*>(dy.data());
  T* dbp = static_cast<T*>(db.mutable_data());
  blas_single_thread();
  py::gil_scoped_release nogil;
  backward_bias<T>(N, K, L, dyp, dbp);
}

}  // namespace

void bind_conv(py::module_& m) {
  using namespace py::literals;
  m.def(
      "conv2d_forward",
      [](py::array x, py::array w, py::object b, py::array y, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
         int64_t dh, int64_t dw, int64_t G, int act, double slope, py::object residual) {
        dispatch_float(x, "conv", "x", [&](auto t) {
          fwd_t<decltype(t)>(x, w, b, y, sh, sw, ph, pw, dh, dw, G, act, slope, residual);
        });
      },
      "x"_a, "w"_a, "b"_a.none(true), "y"_a, "stride_h"_a, "stride_w"_a, "pad_h"_a, "pad_w"_a, "dil_h"_a,
      "dil_w"_a, "groups"_a, "activation"_a = 0, "negative_slope"_a = 0.01, "residual"_a = py::none(),
      "y = act(conv2d(x, w) + b + residual); y preallocated (N, K, Ho, Wo), pad = top/left; activation: "
      "0 none, 1 relu, 2 relu6, 3 leaky_relu, 4 silu, 5 hardswish");
  m.def(
      "conv2d_backward_input",
      [](py::array dy, py::array w, py::array dx, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
         int64_t dw, int64_t G) {
        dispatch_float(dy, "conv", "dy", [&](auto t) { bwd_input_t<decltype(t)>(dy, w, dx, sh, sw, ph, pw, dh, dw, G); });
      },
      "dy"_a, "w"_a, "dx"_a, "stride_h"_a, "stride_w"_a, "pad_h"_a, "pad_w"_a, "dil_h"_a, "dil_w"_a,
      "groups"_a, "dx (N, C, H, W) = gradient of conv2d w.r.t. x");
  m.def(
      "conv2d_backward_weight",
      [](py::array dy, py::array x, py::array dwt, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
         int64_t dw, int64_t G) {
        dispatch_float(dy, "conv", "dy", [&](auto t) { bwd_weight_t<decltype(t)>(dy, x, dwt, sh, sw, ph, pw, dh, dw, G); });
      },
      "dy"_a, "x"_a, "dw"_a, "stride_h"_a, "stride_w"_a, "pad_h"_a, "pad_w"_a, "dil_h"_a, "dil_w"_a,
      "groups"_a, "dw (K, C/groups, kh, kw) = gradient of conv2d w.r.t. w");
  m.def(
      "conv2d_backward_bias",
      [](py::array dy, py::array db) {
        dispatch_float(dy, "conv", "dy", [&](auto t) { bwd_bias_t<decltype(t)>(dy, db); });
      },
      "dy"_a, "db"_a, "db (K,) = sum of dy over N, Ho, Wo");
  m.def(
      "set_conv_workspace_limit",
      [](int64_t bytes) {
        PYDL_CHECK(bytes >= 1, "set_conv_workspace_limit: expected bytes >= 1, got " << bytes);
        g_ws_limit.store(bytes);
      },
      "bytes"_a, "Cap on the im2col/col2im column buffer of one conv call (default 64 MiB).");
  m.def(
      "_set_conv_algorithm",
      [](int dir, int algo) {
        PYDL_CHECK(dir >= 0 && dir < 3, "direction: expected 0, 1 or 2, got " << dir);
        PYDL_CHECK(algo >= 0 && algo <= static_cast<int>(Algo::winograd_blocked), "algorithm: unknown code " << algo);
        return g_forced[dir].exchange(algo);
      },
      "direction"_a, "algorithm"_a,
      "Force a conv algorithm for one direction (0 forward, 1 input_grad, 2 weight_grad); 0 = automatic. "
      "Returns the previous code.");
  m.def("_conv_algorithm_choice",
        [](int dir, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t kh, int64_t kw, int64_t sh,
           int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t G, int64_t Ho, int64_t Wo,
           bool f64) {
          PYDL_CHECK(dir >= 0 && dir < 3, "direction: expected 0, 1 or 2, got " << dir);
          const Geo g{N, C, H, W, K, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, G};
          return static_cast<int>(pick(static_cast<Dir>(dir), g, f64 ? 8 : 4));
        });
  m.def("_set_conv_tile_bytes", [](int64_t b) { g_tile_bytes = std::max<int64_t>(b, 1); });
  m.def("_conv_winograd_calls", &winograd_calls);
  m.def("get_conv_workspace_limit", []() { return g_ws_limit.load(); });
  m.def(
      "conv_workspace_peak_bytes",
      [](bool reset) {
        int64_t p = g_ws_peak.load();
        if (reset) g_ws_peak.store(0);
        return p;
      },
      "reset"_a = false, "Largest workspace a conv call asked for (since the last reset).");
}

}  // namespace pydl
