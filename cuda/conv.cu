// conv: CUDA kernels behind pydl.cuda.conv (2-D convolution, NCHW).
//
// Math: y[n,k,oh,ow] = b[k] + sum_{c in group(k), ki, kj} w[k,c,ki,kj] *
//       x[n, g*Cg + c, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw]   (zero outside the image)
// with g = k / Kg, Cg = C / groups, Kg = K / groups. ph/pw are the top/left padding; the
// bottom/right padding is whatever Ho/Wo imply (asymmetric 'same').
//
// Two families of kernels:
// * Data movement for the GEMM path (the GEMMs themselves are cuBLAS calls made by the
//   CuPy glue in pydl/cuda/conv.py, because the build machines have no cuBLAS headers):
//   - im2col: one thread per column element (n, c*kh*kw + ki*kw + kj, oh*Wo + ow), written
//     at n*sn + row*sc + p so that the glue picks the layout: (n, rows, P) for forward,
//     (rows, n*P) for the weight gradient (one GEMM whose reduction runs over images too).
//     With kh = kw = 1 it also transposes dy (N, K, P) -> (K, N*P).
//   - col2im: a GATHER, one thread per input element summing the column entries of every
//     window that covers it: no atomics, deterministic.
//   - fill_bias, bias partial sums, and a fixed-order reduction of partial sums.
// * Direct kernels for grouped convolutions with few channels per group (depthwise is
//   Cg = 1), where GEMMs would be tiny: forward and input-gradient kernels tile 32-wide
//   by TH-tall output (resp. input) patches, one block of 32x8 threads per (tile, n,
//   channel), with the input (resp. dy) patch staged in shared memory, zero-padded so the
//   inner loops have no bounds checks; the weight gradient sums over a fixed split of
//   (n, oh, ow) per block and reduces the splits in a fixed order afterwards.
// Every reduction has a fixed order: two runs are bit-identical. Index math is 64-bit
// (int64_t), or 32-bit where the host proved every index fits (template parameter I).
#include "common.cuh"

#include <algorithm>

namespace pydl {
namespace {

constexpr int kBlock = 256;
constexpr int kTileW = 32;             // direct kernels: tile width = threads in x
constexpr int kTileRowsPerPass = 8;    // threads in y
constexpr int kMaxRows = 4;            // rows per thread: tile height TH <= 32
constexpr size_t kSmemLimit = 48 * 1024;

// Floor division for b > 0 (a may be negative).
__device__ __forceinline__ int64_t floordiv(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// ------------------------------------------------------------------ im2col / col2im

template <typename T, typename I>
__global__ void im2col_kernel(const T* __restrict__ x, T* __restrict__ col, I N, I C, I H, I W,
                              I kh, I kw, I Ho, I Wo, I sh, I sw, I ph, I pw, I dh, I dw, I sn,
                              I sc) {
  const I P = Ho * Wo, kk = kh * kw, rows = C * kk;
  const I total = N * rows * P;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
    const I p = i % P;
    const I r = i / P;
    const I row = r % rows;
    const I n = r / rows;
    const I c = row / kk, q = row % kk;
    const I ki = q / kw, kj = q % kw;
    const I oh = p / Wo, ow = p % Wo;
    const I ih = oh * sh - ph + ki * dh, iw = ow * sw - pw + kj * dw;
    T v = T(0);
    if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = x[((n * C + c) * H + ih) * W + iw];
    col[n * sn + row * sc + p] = v;
  }
}

// dx[n,c,ih,iw] = sum over (ki,kj) with oh = (ih + ph - ki*dh)/sh an integer in [0,Ho) (same
// for w) of dcol[n, (c*kh+ki)*kw+kj, oh*Wo+ow]: the adjoint of im2col, as a gather.
template <typename T, typename I>
__global__ void col2im_kernel(const T* __restrict__ dcol, T* __restrict__ dx, I N, I C, I H, I W,
                              I kh, I kw, I Ho, I Wo, I sh, I sw, I ph, I pw, I dh, I dw) {
  const I P = Ho * Wo, kk = kh * kw;
  const I total = N * C * H * W;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
    const I iw = i % W;
    I r = i / W;
    const I ih = r % H;
    r /= H;  // r = n*C + c
    const T* base = dcol + r * kk * P;  // rows of channel c of image n: (n*C + c)*kk
    T acc = T(0);
    for (I ki = 0; ki < kh; ++ki) {
      const I t = ih + ph - ki * dh;
      if (t < 0 || t % sh != 0) continue;
      const I oh = t / sh;
      if (oh >= Ho) continue;
      for (I kj = 0; kj < kw; ++kj) {
        const I u = iw + pw - kj * dw;
        if (u < 0 || u % sw != 0) continue;
        const I ow = u / sw;
        if (ow >= Wo) continue;
        acc += base[(ki * kw + kj) * P + oh * Wo + ow];
      }
    }
    dx[i] = acc;
  }
}

// ------------------------------------------------------------------ bias and reductions

template <typename T>
__global__ void fill_bias_kernel(T* __restrict__ y, const T* __restrict__ b, int64_t N, int64_t K,
                                 int64_t P) {
  const int64_t total = N * K * P;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] = b[(i / P) % K];
}

// Deterministic block sum of v (blockDim.x == kBlock); the result is valid in thread 0.
template <typename T>
__device__ T block_sum(T v, T* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  T r = red[0];
  __syncthreads();  // red is reused by the next call
  return r;
}

// part[s*K + k] = sum of dy[n,k,p] over the s-th of S equal slices of the flat range (n, p).
template <typename T>
__global__ void bias_partial_kernel(const T* __restrict__ dy, T* __restrict__ part, int64_t N,
                                    int64_t K, int64_t P, int64_t S) {
  __shared__ T red[kBlock];
  const int64_t E = N * P;
  const int64_t s = blockIdx.x;
  const int64_t e0 = E * s / S, e1 = E * (s + 1) / S;
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    T acc = T(0);
    for (int64_t e = e0 + threadIdx.x; e < e1; e += kBlock) {
      const int64_t n = e / P, p = e - n * P;
      acc += dy[(n * K + k) * P + p];
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) part[s * K + k] = acc;
  }
}

// out[i] = (accumulate ? out[i] : 0) + sum_{s < S} part[s*len + i], s in increasing order.
template <typename T>
__global__ void reduce_partials_kernel(const T* __restrict__ part, T* __restrict__ out,
                                       int64_t len, int64_t S, bool accumulate) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < len;
       i += (int64_t)gridDim.x * blockDim.x) {
    T acc = accumulate ? out[i] : T(0);
    for (int64_t s = 0; s < S; ++s) acc += part[s * len + i];
    out[i] = acc;
  }
}

// ------------------------------------------------------------------ direct kernels

struct Geo {
  int64_t N, C, H, W, K, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, groups;
};

// Forward. Block (32, 8) computes a TH x 32 tile of y[n, k] (TH = 8, 16 or 32); thread
// (tx, ty) the rows ty, ty+8, ... For each input channel of the group, the block stages the
// input patch the tile reads, in_th x in_tw = ((TH-1)*sh + (kh-1)*dh + 1) x (31*sw +
// (kw-1)*dw + 1), zero-padded, in shared memory (SMEM = false: read global memory with
// bounds checks, for kernels whose patch does not fit). Each weight is loaded once per
// channel and applied to all the thread's rows (registers).
template <typename T, bool SMEM>
__global__ void __launch_bounds__(kBlock) direct_forward_kernel(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
    Geo g, int TH, int in_th, int in_tw, int64_t tiles_w) {
  extern __shared__ unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTileW + tx;
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, kk = g.kh * g.kw;
  const int64_t oh0 = (blockIdx.x / tiles_w) * TH, ow0 = (blockIdx.x % tiles_w) * kTileW;
  const int64_t ih0 = oh0 * g.sh - g.ph, iw0 = ow0 * g.sw - g.pw;
  const int64_t ow = ow0 + tx;
  const int kh = (int)g.kh, kw = (int)g.kw, sh = (int)g.sh, sw = (int)g.sw, dh = (int)g.dh,
            dw = (int)g.dw;
  for (int64_t nk = blockIdx.y; nk < g.N * g.K; nk += gridDim.y) {
    const int64_t n = nk / g.K, k = nk % g.K, grp = k / Kg;
    const T* wk = w + k * Cg * kk;
    T acc[kMaxRows];
#pragma unroll
    for (int j = 0; j < kMaxRows; ++j) acc[j] = b ? b[k] : T(0);
    for (int64_t cg = 0; cg < Cg; ++cg) {
      const T* plane = x + ((n * g.C + grp * Cg + cg) * g.H) * g.W;
      const T* wc = wk + cg * kk;
      if (SMEM) {
        __syncthreads();  // the previous channel's tile is no longer read
        for (int i = tid; i < in_th * in_tw; i += kBlock) {
          const int r = i / in_tw, q = i - r * in_tw;
          const int64_t ih = ih0 + r, iw = iw0 + q;
          tile[i] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? plane[ih * g.W + iw] : T(0);
        }
        __syncthreads();
      }
      for (int ki = 0; ki < kh; ++ki) {
        for (int kj = 0; kj < kw; ++kj) {
          const T wv = wc[ki * kw + kj];
#pragma unroll
          for (int j = 0; j < kMaxRows; ++j) {
            const int ohl = ty + j * kTileRowsPerPass;
            if (ohl < TH) {
              if (SMEM) {
                acc[j] += wv * tile[(ohl * sh + ki * dh) * in_tw + tx * sw + kj * dw];
              } else {
                const int64_t ih = ih0 + (int64_t)ohl * sh + (int64_t)ki * dh;
                const int64_t iw = iw0 + (int64_t)tx * sw + (int64_t)kj * dw;
                if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) acc[j] += wv * plane[ih * g.W + iw];
              }
            }
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxRows; ++j) {
      const int ohl = ty + j * kTileRowsPerPass;
      const int64_t oh = oh0 + ohl;
      if (ohl < TH && oh < g.Ho && ow < g.Wo) y[((n * g.K + k) * g.Ho + oh) * g.Wo + ow] = acc[j];
    }
  }
}

// Input gradient (derivation): y depends on x[n,c,ih,iw] through every (k in group(c), ki,
// kj) with ih = oh*sh - ph + ki*dh, so dx[n,c,ih,iw] = sum_{k,ki,kj} w[k,c%Cg,ki,kj] *
// dy[n,k,oh,ow] over oh = (ih + ph - ki*dh)/sh when that is an integer in [0,Ho) (same in
// w). Block (32, 8) gathers a TH x 32 tile of dx[n, c]; for each k of the group it stages
// the dy patch from row oh_lo = floor((ih0 + ph - (kh-1)*dh)/sh) (at most dy_th rows, dy_tw
// columns), zero outside [0,Ho) x [0,Wo), so only the divisibility test remains in the loop.
// Tile-relative offsets: tr = (ih + ph - ki*dh) - oh_lo*sh >= 0, and oh - oh_lo = tr / sh.
template <typename T, bool SMEM>
__global__ void __launch_bounds__(kBlock) direct_backward_input_kernel(
    const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx, Geo g, int TH, int dy_th,
    int dy_tw, int64_t tiles_w) {
  extern __shared__ unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTileW + tx;
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, kk = g.kh * g.kw;
  const int64_t ih0 = (blockIdx.x / tiles_w) * TH, iw0 = (blockIdx.x % tiles_w) * kTileW;
  const int64_t oh_lo = floordiv(ih0 + g.ph - (g.kh - 1) * g.dh, g.sh);
  const int64_t ow_lo = floordiv(iw0 + g.pw - (g.kw - 1) * g.dw, g.sw);
  // rbase - ki*dh >= rbase - (kh-1)*dh >= 0 by the choice of oh_lo; the same for cbase.
  const int64_t rbase = ih0 + g.ph - oh_lo * g.sh, cbase = iw0 + g.pw - ow_lo * g.sw;
  const int64_t iw = iw0 + tx;
  const int kh = (int)g.kh, kw = (int)g.kw;
  for (int64_t nc = blockIdx.y; nc < g.N * g.C; nc += gridDim.y) {
    const int64_t n = nc / g.C, c = nc % g.C, grp = c / Cg, cg = c % Cg;
    T acc[kMaxRows];
#pragma unroll
    for (int j = 0; j < kMaxRows; ++j) acc[j] = T(0);
    for (int64_t m = 0; m < Kg; ++m) {
      const int64_t k = grp * Kg + m;
      const T* plane = dy + (n * g.K + k) * g.Ho * g.Wo;
      const T* wc = w + (k * Cg + cg) * kk;
      if (SMEM) {
        __syncthreads();
        for (int i = tid; i < dy_th * dy_tw; i += kBlock) {
          const int r = i / dy_tw, q = i - r * dy_tw;
          const int64_t oh = oh_lo + r, ow = ow_lo + q;
          tile[i] = (oh >= 0 && oh < g.Ho && ow >= 0 && ow < g.Wo) ? plane[oh * g.Wo + ow] : T(0);
        }
        __syncthreads();
      }
      for (int kj = 0; kj < kw; ++kj) {
        const int64_t ur = cbase + tx - kj * g.dw;  // >= 0
        if (ur % g.sw != 0) continue;
        const int64_t owr = ur / g.sw;  // ow - ow_lo
        for (int ki = 0; ki < kh; ++ki) {
          const T wv = wc[ki * kw + kj];
#pragma unroll
          for (int j = 0; j < kMaxRows; ++j) {
            const int ihl = ty + j * kTileRowsPerPass;
            if (ihl < TH) {
              const int64_t tr = rbase + ihl - ki * g.dh;  // >= 0
              if (tr % g.sh == 0) {
                const int64_t ohr = tr / g.sh;  // oh - oh_lo
                if (SMEM) {
                  acc[j] += wv * tile[ohr * dy_tw + owr];
                } else {
                  const int64_t oh = oh_lo + ohr, ow = ow_lo + owr;
                  if (oh >= 0 && oh < g.Ho && ow >= 0 && ow < g.Wo) acc[j] += wv * plane[oh * g.Wo + ow];
                }
              }
            }
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxRows; ++j) {
      const int ihl = ty + j * kTileRowsPerPass;
      const int64_t ih = ih0 + ihl;
      if (ihl < TH && ih < g.H && iw < g.W) dx[((n * g.C + c) * g.H + ih) * g.W + iw] = acc[j];
    }
  }
}

// Weight gradient (derivation): dw[k,cg,ki,kj] = sum_{n,oh,ow} dy[n,k,oh,ow] *
// x[n, grp*Cg + cg, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw]. Block (s, k) sums the s-th of
// S fixed slices of the flat (n, oh, ow) range for WC weights at a time (registers; WC = 9
// covers a 3x3 depthwise kernel in one pass), reduces over its threads in a fixed tree, and
// writes part[s, k, :]; reduce_partials then adds the S slices in order. No atomics:
// bit-identical reruns.
template <typename T, typename I, int WC>
__global__ void __launch_bounds__(kBlock, WC <= 9 ? 2 : 1) direct_backward_weight_kernel(
    const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ part, Geo g, int64_t S) {
  __shared__ T red[kBlock];
  const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, kk = g.kh * g.kw, CKg = Cg * kk;
  const int64_t P = g.Ho * g.Wo, E = g.N * P, HW = g.H * g.W;
  const int64_t s = blockIdx.x;
  const int64_t e0 = E * s / S, e1 = E * (s + 1) / S;
  for (int64_t k = blockIdx.y; k < g.K; k += gridDim.y) {
    const int64_t grp = k / Kg;
    for (int64_t w0 = 0; w0 < CKg; w0 += WC) {
      int64_t cbase[WC];  // offset of the weight's input plane within an image
      int hoff[WC], woff[WC];  // ki*dh - ph, kj*dw - pw (< 2^31 by make_geo's checks)
#pragma unroll
      for (int j = 0; j < WC; ++j) {
        const int64_t wi = min(w0 + j, CKg - 1);
        const int64_t cg = wi / kk, q = wi % kk;
        cbase[j] = (grp * Cg + cg) * HW;
        hoff[j] = static_cast<int>((q / g.kw) * g.dh - g.ph);
        woff[j] = static_cast<int>((q % g.kw) * g.dw - g.pw);
      }
      T acc[WC];
#pragma unroll
      for (int j = 0; j < WC; ++j) acc[j] = T(0);
      // I = int where E fits: the per-element decode is the hot integer work.
      const I Pi = static_cast<I>(P), Wi = static_cast<I>(g.Wo);
      for (I e = static_cast<I>(e0) + static_cast<I>(threadIdx.x); e < static_cast<I>(e1); e += kBlock) {
        const I n = e / Pi, p = e - n * Pi;
        const I oh = p / Wi, ow = p - oh * Wi;
        const T v = dy[((int64_t)n * g.K + k) * P + p];
        const T* xn = x + (int64_t)n * g.C * HW;
        const int64_t ohs = (int64_t)oh * g.sh, ows = (int64_t)ow * g.sw;
#pragma unroll
        for (int j = 0; j < WC; ++j) {
          const int64_t ih = ohs + hoff[j], iw = ows + woff[j];
          if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) acc[j] += v * xn[cbase[j] + ih * g.W + iw];
        }
      }
#pragma unroll
      for (int j = 0; j < WC; ++j) {
        const T r = block_sum(acc[j], red);
        if (threadIdx.x == 0 && w0 + j < CKg) part[(s * g.K + k) * CKg + w0 + j] = r;
      }
    }
  }
}

// ------------------------------------------------------------------ Winograd F(2x2, 3x3)
// For 3x3, stride 1, dilation 1, groups 1 (float32): out[n,o] = sum_i g[o,i] (*) in[n,i]
// (correlation, top/left padding pt/pl, any output size) computed per 2x2 output tile as
// A^T [ sum_i (G g G^T) .* (B^T d B) ] A, with d the 4x4 input patch at (2ti - pt, 2tj - pl):
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The sum over i is 16 GEMMs (one per transform position xi), batched in one cuBLAS call:
// M[xi] (O x Tn) = U[xi] (O x I) @ V[xi] (I x Tn), Tn = N * tiles. 2.25x fewer multiplies
// than the direct sum. Layouts: U (16, O, I), V (16, I, Tn), M (16, O, Tn), tile index t =
// (n*th + ti)*tw + tj. The input gradient of a stride-1 3x3 conv is the same correlation of
// dy with g'[c,k,a,b] = w[k,c,2-a,2-b] and padding 2 - p (flip = true).

// U[xi, o, i] = (G g G^T)[xi] with g = w[o, i] (flip: g[a][b] = w[i, o, 2-a, 2-b]).
template <typename T>
__global__ void wino_weight_kernel(const T* __restrict__ w, T* __restrict__ U, int64_t O,
                                   int64_t I, bool flip) {
  const int64_t total = O * I;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = idx / I, i = idx % I;
    T g[3][3];
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b)
        g[a][b] = flip ? w[(i * O + o) * 9 + (2 - a) * 3 + (2 - b)] : w[(o * I + i) * 9 + a * 3 + b];
    T t[4][3];  // G g
    for (int b = 0; b < 3; ++b) {
      t[0][b] = g[0][b];
      t[1][b] = T(0.5) * (g[0][b] + g[1][b] + g[2][b]);
      t[2][b] = T(0.5) * (g[0][b] - g[1][b] + g[2][b]);
      t[3][b] = g[2][b];
    }
    for (int a = 0; a < 4; ++a) {  // (G g) G^T
      const T u[4] = {t[a][0], T(0.5) * (t[a][0] + t[a][1] + t[a][2]),
                      T(0.5) * (t[a][0] - t[a][1] + t[a][2]), t[a][2]};
      for (int b = 0; b < 4; ++b) U[((a * 4 + b) * O + o) * I + i] = u[b];
    }
  }
}

// V = (B^T d B) for every (i, t), one thread each, t fastest (coalesced stores). Layout
// (S, 16, I, L): the tile range [0, S*L) is cut into S slices of L tiles (S = 1, L = Tn for
// the forward), so that the weight gradient's GEMM can be batched over (slice, xi); tiles
// t >= Tn of the last slice are written as zeros.
template <typename T>
__global__ void wino_input_kernel(const T* __restrict__ x, T* __restrict__ V, int64_t N,
                                  int64_t I, int64_t H, int64_t W, int64_t th, int64_t tw,
                                  int64_t pt, int64_t pl, int64_t S, int64_t L) {
  const int64_t Tn = N * th * tw, Tp = S * L, total = I * Tp;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = idx % Tp, i = idx / Tp;
    T d[4][4];
    if (t < Tn) {
      const int64_t n = t / (th * tw), r = t % (th * tw);
      const int64_t h0 = 2 * (r / tw) - pt, w0 = 2 * (r % tw) - pl;
      const T* plane = x + (n * I + i) * H * W;
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          const int64_t h = h0 + a, ww = w0 + b;
          d[a][b] = (h >= 0 && h < H && ww >= 0 && ww < W) ? plane[h * W + ww] : T(0);
        }
    } else {
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) d[a][b] = T(0);
    }
    T e[4][4];  // B^T d
    for (int b = 0; b < 4; ++b) {
      e[0][b] = d[0][b] - d[2][b];
      e[1][b] = d[1][b] + d[2][b];
      e[2][b] = d[2][b] - d[1][b];
      e[3][b] = d[1][b] - d[3][b];
    }
    const int64_t stride = I * L;  // between consecutive xi
    T* v = V + ((t / L) * 16 * I + i) * L + t % L;
    for (int a = 0; a < 4; ++a) {  // (B^T d) B
      v[(a * 4 + 0) * stride] = e[a][0] - e[a][2];
      v[(a * 4 + 1) * stride] = e[a][1] + e[a][2];
      v[(a * 4 + 2) * stride] = e[a][2] - e[a][1];
      v[(a * 4 + 3) * stride] = e[a][1] - e[a][3];
    }
  }
}

// Weight gradient (derivation): y_t = A^T [U .* V_t] A with U = G g G^T is bilinear, so
// dL/dU = sum_t (A dy_t A^T) .* V_t and dL/dg = G^T (dL/dU) G. Per (o, t) this kernel writes
// Z = A dy_t A^T (dy_t: the 2x2 output tile, zero outside the output), layout (S, 16, O, L)
// as V; then Ssum[xi] (O x I) = sum_t Z[xi] V[xi]^T is one GEMM batched over (slice, xi),
// the slices are reduced in order, and wino_weight_grad_kernel applies G^T . G.
template <typename T>
__global__ void wino_dy_kernel(const T* __restrict__ dy, T* __restrict__ Z, int64_t N, int64_t O,
                               int64_t Ho, int64_t Wo, int64_t th, int64_t tw, int64_t S,
                               int64_t L) {
  const int64_t Tn = N * th * tw, Tp = S * L, total = O * Tp;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = idx % Tp, o = idx / Tp;
    T d[2][2] = {{T(0), T(0)}, {T(0), T(0)}};
    if (t < Tn) {
      const int64_t n = t / (th * tw), r = t % (th * tw);
      const int64_t oh = 2 * (r / tw), ow = 2 * (r % tw);
      const T* plane = dy + (n * O + o) * Ho * Wo;
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b)
          if (oh + a < Ho && ow + b < Wo) d[a][b] = plane[(oh + a) * Wo + ow + b];
    }
    T q[4][2];  // A d, A = [1 0; 1 1; 1 -1; 0 -1]
    for (int b = 0; b < 2; ++b) {
      q[0][b] = d[0][b];
      q[1][b] = d[0][b] + d[1][b];
      q[2][b] = d[0][b] - d[1][b];
      q[3][b] = -d[1][b];
    }
    const int64_t stride = O * L;
    T* z = Z + ((t / L) * 16 * O + o) * L + t % L;
    for (int a = 0; a < 4; ++a) {  // (A d) A^T
      z[(a * 4 + 0) * stride] = q[a][0];
      z[(a * 4 + 1) * stride] = q[a][0] + q[a][1];
      z[(a * 4 + 2) * stride] = q[a][0] - q[a][1];
      z[(a * 4 + 3) * stride] = -q[a][1];
    }
  }
}

// dw[o, i] = G^T Ssum[:, o, i] G (4x4 -> 3x3), Ssum layout (16, O, I).
template <typename T>
__global__ void wino_weight_grad_kernel(const T* __restrict__ Ssum, T* __restrict__ dw, int64_t O,
                                        int64_t I) {
  const int64_t total = O * I;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    T m[4][4];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) m[a][b] = Ssum[(a * 4 + b) * total + idx];
    T r[3][4];  // G^T m, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]
    for (int b = 0; b < 4; ++b) {
      r[0][b] = m[0][b] + T(0.5) * (m[1][b] + m[2][b]);
      r[1][b] = T(0.5) * (m[1][b] - m[2][b]);
      r[2][b] = T(0.5) * (m[1][b] + m[2][b]) + m[3][b];
    }
    T* out = dw + idx * 9;  // dw (O, I, 3, 3): idx = o*I + i
    for (int a = 0; a < 3; ++a) {  // (G^T m) G
      out[a * 3 + 0] = r[a][0] + T(0.5) * (r[a][1] + r[a][2]);
      out[a * 3 + 1] = T(0.5) * (r[a][1] - r[a][2]);
      out[a * 3 + 2] = T(0.5) * (r[a][1] + r[a][2]) + r[a][3];
    }
  }
}

// out[n, o, 2ti + r, 2tj + s] = b[o] + (A^T M A)[r][s]; one thread per (o, t).
template <typename T>
__global__ void wino_output_kernel(const T* __restrict__ M, const T* __restrict__ bias,
                                   T* __restrict__ y, int64_t N, int64_t O, int64_t Ho,
                                   int64_t Wo, int64_t th, int64_t tw) {
  const int64_t Tn = N * th * tw, total = O * Tn;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = idx % Tn, o = idx / Tn;
    const int64_t n = t / (th * tw), r = t % (th * tw);
    const int64_t oh = 2 * (r / tw), ow = 2 * (r % tw);
    const int64_t stride = O * Tn;
    const T* mp = M + o * Tn + t;
    T m[4][4];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) m[a][b] = mp[(a * 4 + b) * stride];
    T s[2][4];  // A^T m
    for (int b = 0; b < 4; ++b) {
      s[0][b] = m[0][b] + m[1][b] + m[2][b];
      s[1][b] = m[1][b] - m[2][b] - m[3][b];
    }
    const T b0 = bias ? bias[o] : T(0);
    T* out = y + (n * O + o) * Ho * Wo;
    for (int a = 0; a < 2; ++a) {  // (A^T m) A
      const T v0 = s[a][0] + s[a][1] + s[a][2], v1 = s[a][1] - s[a][2] - s[a][3];
      if (oh + a < Ho) {
        out[(oh + a) * Wo + ow] = b0 + v0;
        if (ow + 1 < Wo) out[(oh + a) * Wo + ow + 1] = b0 + v1;
      }
    }
  }
}

// ------------------------------------------------------------------ host side

bool fits32(int64_t v) { return v < (int64_t(1) << 31) - 1; }

unsigned int grid_y(int64_t n) { return static_cast<unsigned int>(std::min<int64_t>(n, 65535)); }

// Tile height for the direct kernels: 32 rows, else 16, else 8, else 0 (patch too big: no smem).
template <typename T, typename Rows>
int pick_tile_rows(Rows rows_for, int64_t cols) {
  for (int th : {32, 16, 8}) {
    const int64_t bytes = rows_for(th) * cols * static_cast<int64_t>(sizeof(T));
    if (bytes <= static_cast<int64_t>(kSmemLimit)) return th;
  }
  return 0;
}

template <typename T>
void im2col(dptr x, dptr col, int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw,
            int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
            int64_t dw, int64_t sn, int64_t sc, dptr stream) {
  const int64_t total = N * C * kh * kw * Ho * Wo;
  if (total == 0) return;
  const unsigned grid = grid_for(total, kBlock);
  // 32-bit indices when every index (and the grid-stride overshoot) fits.
  if (fits32(total + int64_t(grid) * kBlock) && fits32(N * C * H * W) &&
      fits32((N - 1) * sn + (C * kh * kw - 1) * sc + Ho * Wo) && fits32(H + 2 * ph + (kh + 1) * dh) &&
      fits32(W + 2 * pw + (kw + 1) * dw) && fits32(Ho * sh) && fits32(Wo * sw)) {
    im2col_kernel<T, int><<<grid, kBlock, 0, as_stream(stream)>>>(
        as_ptr<const T>(x), as_ptr<T>(col), (int)N, (int)C, (int)H, (int)W, (int)kh, (int)kw,
        (int)Ho, (int)Wo, (int)sh, (int)sw, (int)ph, (int)pw, (int)dh, (int)dw, (int)sn, (int)sc);
  } else {
    im2col_kernel<T, int64_t><<<grid, kBlock, 0, as_stream(stream)>>>(
        as_ptr<const T>(x), as_ptr<T>(col), N, C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, sn,
        sc);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void col2im(dptr dcol, dptr dx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh,
            int64_t kw, int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw, dptr stream) {
  const int64_t total = N * C * H * W;
  if (total == 0) return;
  const unsigned grid = grid_for(total, kBlock);
  if (fits32(total + int64_t(grid) * kBlock) && fits32(N * C * kh * kw * Ho * Wo) &&
      fits32(H + 2 * ph + (kh + 1) * dh) && fits32(W + 2 * pw + (kw + 1) * dw)) {
    col2im_kernel<T, int><<<grid, kBlock, 0, as_stream(stream)>>>(
        as_ptr<const T>(dcol), as_ptr<T>(dx), (int)N, (int)C, (int)H, (int)W, (int)kh, (int)kw,
        (int)Ho, (int)Wo, (int)sh, (int)sw, (int)ph, (int)pw, (int)dh, (int)dw);
  } else {
    col2im_kernel<T, int64_t><<<grid, kBlock, 0, as_stream(stream)>>>(
        as_ptr<const T>(dcol), as_ptr<T>(dx), N, C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void fill_bias(dptr y, dptr b, int64_t N, int64_t K, int64_t P, dptr stream) {
  const int64_t total = N * K * P;
  if (total == 0) return;
  fill_bias_kernel<T><<<grid_for(total, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<T>(y), as_ptr<const T>(b), N, K, P);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void reduce_partials(dptr part, dptr out, int64_t len, int64_t S, bool accumulate, dptr stream) {
  if (len == 0) return;
  reduce_partials_kernel<T><<<grid_for(len, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(part), as_ptr<T>(out), len, S, accumulate);
  PYDL_LAUNCH_CHECK();
}

// db = sum of dy over (n, p): S partial sums per channel into part (S*K), then reduced.
template <typename T>
void bias_backward(dptr dy, dptr db, dptr part, int64_t N, int64_t K, int64_t P, int64_t S,
                   dptr stream) {
  if (K == 0) return;
  PYDL_CHECK(S >= 1, "conv2d_bias_backward: expected S >= 1, got " << S);
  dim3 grid(static_cast<unsigned>(S), grid_y(K));
  bias_partial_kernel<T><<<grid, kBlock, 0, as_stream(stream)>>>(as_ptr<const T>(dy),
                                                                  as_ptr<T>(part), N, K, P, S);
  PYDL_LAUNCH_CHECK();
  reduce_partials<T>(part, db, K, S, false, stream);
}

Geo make_geo(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t kh, int64_t kw,
             int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
             int64_t dw, int64_t groups) {
  PYDL_CHECK(groups >= 1 && C % groups == 0 && K % groups == 0,
             "conv2d: groups must divide C and K, got C=" << C << " K=" << K << " groups=" << groups);
  PYDL_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1, "conv2d: stride and dilation must be >= 1");
  const int64_t big = int64_t(1) << 30;  // the direct kernels keep these in int
  PYDL_CHECK(kh < big && kw < big && sh < big && sw < big && dh < big && dw < big && ph < big &&
                 pw < big && (kh - 1) * dh < big && (kw - 1) * dw < big,
             "conv2d: kernel size, stride, padding and dilation must be < 2^30");
  return Geo{N, C, H, W, K, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, groups};
}

template <typename T>
void direct_forward(dptr x, dptr w, dptr b, dptr y, const Geo& g, dptr stream) {
  if (g.N * g.K * g.Ho * g.Wo == 0) return;
  const int64_t in_tw = (kTileW - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  auto rows = [&](int th) { return (th - 1) * g.sh + (g.kh - 1) * g.dh + 1; };
  const int th = pick_tile_rows<T>(rows, in_tw);
  const int TH = th ? th : 32;
  const int64_t tiles_w = (g.Wo + kTileW - 1) / kTileW, tiles_h = (g.Ho + TH - 1) / TH;
  PYDL_CHECK(tiles_w * tiles_h < (int64_t(1) << 31), "conv2d: output too large for the direct kernel");
  dim3 grid(static_cast<unsigned>(tiles_w * tiles_h), grid_y(g.N * g.K));
  dim3 block(kTileW, kTileRowsPerPass);
  const T* bp = b ? as_ptr<const T>(b) : nullptr;
  if (th) {
    const int in_th = static_cast<int>(rows(th));
    const size_t smem = size_t(in_th) * in_tw * sizeof(T);
    direct_forward_kernel<T, true><<<grid, block, smem, as_stream(stream)>>>(
        as_ptr<const T>(x), as_ptr<const T>(w), bp, as_ptr<T>(y), g, TH, in_th, (int)in_tw, tiles_w);
  } else {
    direct_forward_kernel<T, false><<<grid, block, 0, as_stream(stream)>>>(
        as_ptr<const T>(x), as_ptr<const T>(w), bp, as_ptr<T>(y), g, TH, 0, 0, tiles_w);
  }
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void direct_backward_input(dptr dy, dptr w, dptr dx, const Geo& g, dptr stream) {
  if (g.N * g.C * g.H * g.W == 0) return;
  // dy rows touched by a TH-row input tile: floor(D/sh) + 2 with D = TH-1 + (kh-1)*dh.
  const int64_t dy_tw = ((kTileW - 1) + (g.kw - 1) * g.dw) / g.sw + 2;
  auto rows = [&](int th) { return ((th - 1) + (g.kh - 1) * g.dh) / g.sh + 2; };
  const int th = pick_tile_rows<T>(rows, dy_tw);
  const int TH = th ? th : 32;
  const int64_t tiles_w = (g.W + kTileW - 1) / kTileW, tiles_h = (g.H + TH - 1) / TH;
  PYDL_CHECK(tiles_w * tiles_h < (int64_t(1) << 31), "conv2d: input too large for the direct kernel");
  dim3 grid(static_cast<unsigned>(tiles_w * tiles_h), grid_y(g.N * g.C));
  dim3 block(kTileW, kTileRowsPerPass);
  if (th) {
    const int dy_th = static_cast<int>(rows(th));
    const size_t smem = size_t(dy_th) * dy_tw * sizeof(T);
    direct_backward_input_kernel<T, true><<<grid, block, smem, as_stream(stream)>>>(
        as_ptr<const T>(dy), as_ptr<const T>(w), as_ptr<T>(dx), g, TH, dy_th, (int)dy_tw, tiles_w);
  } else {
    direct_backward_input_kernel<T, false><<<grid, block, 0, as_stream(stream)>>>(
        as_ptr<const T>(dy), as_ptr<const T>(w), as_ptr<T>(dx), g, TH, 0, 0, tiles_w);
  }
  PYDL_LAUNCH_CHECK();
}

// part: workspace of S * K * (C/groups*kh*kw) elements.
template <typename T>
void direct_backward_weight(dptr dy, dptr x, dptr dw, dptr part, const Geo& g, int64_t S,
                            dptr stream) {
  const int64_t CKg = (g.C / g.groups) * g.kh * g.kw;
  if (g.K * CKg == 0) return;
  PYDL_CHECK(S >= 1, "conv2d_backward_weight: expected S >= 1, got " << S);
  dim3 grid(static_cast<unsigned>(S), grid_y(g.K));
  // Weights per pass: 9 fits a 3x3 kernel (depthwise) exactly, 16 otherwise.
  const bool small = CKg <= 9, i32 = fits32(g.N * g.Ho * g.Wo + kBlock);
  const T* dyp = as_ptr<const T>(dy);
  const T* xp = as_ptr<const T>(x);
  T* pp = as_ptr<T>(part);
  cudaStream_t st = as_stream(stream);
  if (small && i32) direct_backward_weight_kernel<T, int, 9><<<grid, kBlock, 0, st>>>(dyp, xp, pp, g, S);
  else if (small) direct_backward_weight_kernel<T, int64_t, 9><<<grid, kBlock, 0, st>>>(dyp, xp, pp, g, S);
  else if (i32) direct_backward_weight_kernel<T, int, 16><<<grid, kBlock, 0, st>>>(dyp, xp, pp, g, S);
  else direct_backward_weight_kernel<T, int64_t, 16><<<grid, kBlock, 0, st>>>(dyp, xp, pp, g, S);
  PYDL_LAUNCH_CHECK();
  reduce_partials<T>(part, dw, g.K * CKg, S, false, stream);
}

template <typename T>
void wino_weight(dptr w, dptr U, int64_t O, int64_t I, bool flip, dptr stream) {
  if (O * I == 0) return;
  wino_weight_kernel<T><<<grid_for(O * I, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(w), as_ptr<T>(U), O, I, flip);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void wino_input(dptr x, dptr V, int64_t N, int64_t I, int64_t H, int64_t W, int64_t th,
                int64_t tw, int64_t pt, int64_t pl, int64_t S, int64_t L, dptr stream) {
  PYDL_CHECK(S >= 1 && S * L >= N * th * tw, "conv2d_wino_input: S*L must cover the tiles");
  const int64_t total = I * S * L;
  if (total == 0) return;
  wino_input_kernel<T><<<grid_for(total, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(x), as_ptr<T>(V), N, I, H, W, th, tw, pt, pl, S, L);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void wino_dy(dptr dy, dptr Z, int64_t N, int64_t O, int64_t Ho, int64_t Wo, int64_t th,
             int64_t tw, int64_t S, int64_t L, dptr stream) {
  PYDL_CHECK(S >= 1 && S * L >= N * th * tw, "conv2d_wino_dy: S*L must cover the tiles");
  const int64_t total = O * S * L;
  if (total == 0) return;
  wino_dy_kernel<T><<<grid_for(total, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(dy), as_ptr<T>(Z), N, O, Ho, Wo, th, tw, S, L);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void wino_weight_grad(dptr Ssum, dptr dw, int64_t O, int64_t I, dptr stream) {
  if (O * I == 0) return;
  wino_weight_grad_kernel<T><<<grid_for(O * I, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(Ssum), as_ptr<T>(dw), O, I);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void wino_output(dptr M, dptr b, dptr y, int64_t N, int64_t O, int64_t Ho, int64_t Wo,
                 int64_t th, int64_t tw, dptr stream) {
  const int64_t total = O * N * th * tw;
  if (total == 0) return;
  PYDL_CHECK(th == (Ho + 1) / 2 && tw == (Wo + 1) / 2, "conv2d_wino_output: tiles do not match the output");
  wino_output_kernel<T><<<grid_for(total, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(M), b ? as_ptr<const T>(b) : nullptr, as_ptr<T>(y), N, O, Ho, Wo, th, tw);
  PYDL_LAUNCH_CHECK();
}

}  // namespace

// Bindings: raw device pointers, explicit sizes, a dtype flag (f64) and CuPy's stream.
// The glue (pydl/cuda/conv.py) validates nothing the functional layer already did.
void bind_conv_cuda(py::module_& m) {
  m.def("conv2d_im2col",
        [](dptr x, dptr col, int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw,
           int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
           int64_t dw, int64_t sn, int64_t sc, bool f64, dptr stream) {
          py::gil_scoped_release nogil;
          if (f64)
            im2col<double>(x, col, N, C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, sn, sc, stream);
          else
            im2col<float>(x, col, N, C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, sn, sc, stream);
        });
  m.def("conv2d_col2im",
        [](dptr dcol, dptr dx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw,
           int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
           int64_t dw, bool f64, dptr stream) {
          py::gil_scoped_release nogil;
          if (f64)
            col2im<double>(dcol, dx, N, C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, stream);
          else
            col2im<float>(dcol, dx, N, C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, stream);
        });
  m.def("conv2d_fill_bias", [](dptr y, dptr b, int64_t N, int64_t K, int64_t P, bool f64, dptr stream) {
    py::gil_scoped_release nogil;
    if (f64) fill_bias<double>(y, b, N, K, P, stream);
    else fill_bias<float>(y, b, N, K, P, stream);
  });
  m.def("conv2d_bias_backward", [](dptr dy, dptr db, dptr part, int64_t N, int64_t K, int64_t P,
                                   int64_t S, bool f64, dptr stream) {
    py::gil_scoped_release nogil;
    if (f64) bias_backward<double>(dy, db, part, N, K, P, S, stream);
    else bias_backward<float>(dy, db, part, N, K, P, S, stream);
  });
  m.def("conv2d_direct_forward",
        [](dptr x, dptr w, dptr b, dptr y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
           int64_t kh, int64_t kw, int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph,
           int64_t pw, int64_t dh, int64_t dw, int64_t groups, bool f64, dptr stream) {
          const Geo g = make_geo(N, C, H, W, K, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, groups);
          py::gil_scoped_release nogil;
          if (f64) direct_forward<double>(x, w, b, y, g, stream);
          else direct_forward<float>(x, w, b, y, g, stream);
        });
  m.def("conv2d_direct_backward_input",
        [](dptr dy, dptr w, dptr dx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
           int64_t kh, int64_t kw, int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, int64_t ph,
           int64_t pw, int64_t dh, int64_t dw, int64_t groups, bool f64, dptr stream) {
          const Geo g = make_geo(N, C, H, W, K, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, groups);
          py::gil_scoped_release nogil;
          if (f64) direct_backward_input<double>(dy, w, dx, g, stream);
          else direct_backward_input<float>(dy, w, dx, g, stream);
        });
  m.def("conv2d_direct_backward_weight",
        [](dptr dy, dptr x, dptr dw_, dptr part, int64_t N, int64_t C, int64_t H, int64_t W,
           int64_t K, int64_t kh, int64_t kw, int64_t Ho, int64_t Wo, int64_t sh, int64_t sw,
           int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t S, bool f64,
           dptr stream) {
          const Geo g = make_geo(N, C, H, W, K, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, groups);
          py::gil_scoped_release nogil;
          if (f64) direct_backward_weight<double>(dy, x, dw_, part, g, S, stream);
          else direct_backward_weight<float>(dy, x, dw_, part, g, S, stream);
        });
  m.def("conv2d_wino_weight", [](dptr w, dptr U, int64_t O, int64_t I, bool flip, bool f64, dptr stream) {
    py::gil_scoped_release nogil;
    if (f64) wino_weight<double>(w, U, O, I, flip, stream);
    else wino_weight<float>(w, U, O, I, flip, stream);
  });
  m.def("conv2d_wino_input", [](dptr x, dptr V, int64_t N, int64_t I, int64_t H, int64_t W, int64_t th,
                                int64_t tw, int64_t pt, int64_t pl, int64_t S, int64_t L, bool f64,
                                dptr stream) {
    py::gil_scoped_release nogil;
    if (f64) wino_input<double>(x, V, N, I, H, W, th, tw, pt, pl, S, L, stream);
    else wino_input<float>(x, V, N, I, H, W, th, tw, pt, pl, S, L, stream);
  });
  m.def("conv2d_wino_dy", [](dptr dy, dptr Z, int64_t N, int64_t O, int64_t Ho, int64_t Wo, int64_t th,
                             int64_t tw, int64_t S, int64_t L, bool f64, dptr stream) {
    py::gil_scoped_release nogil;
    if (f64) wino_dy<double>(dy, Z, N, O, Ho, Wo, th, tw, S, L, stream);
    else wino_dy<float>(dy, Z, N, O, Ho, Wo, th, tw, S, L, stream);
  });
  m.def("conv2d_wino_weight_grad", [](dptr Ssum, dptr dw, int64_t O, int64_t I, bool f64, dptr stream) {
    py::gil_scoped_release nogil;
    if (f64) wino_weight_grad<double>(Ssum, dw, O, I, stream);
    else wino_weight_grad<float>(Ssum, dw, O, I, stream);
  });
  m.def("conv2d_reduce_partials", [](dptr part, dptr out, int64_t len, int64_t S, bool accumulate, bool f64,
                                     dptr stream) {
    py::gil_scoped_release nogil;
    if (f64) reduce_partials<double>(part, out, len, S, accumulate, stream);
    else reduce_partials<float>(part, out, len, S, accumulate, stream);
  });
  m.def("conv2d_wino_output", [](dptr M, dptr b, dptr y, int64_t N, int64_t O, int64_t Ho, int64_t Wo,
                                 int64_t th, int64_t tw, bool f64, dptr stream) {
    py::gil_scoped_release nogil;
    if (f64) wino_output<double>(M, b, y, N, O, Ho, Wo, th, tw, stream);
    else wino_output<float>(M, b, y, N, O, Ho, Wo, th, tw, stream);
  });
}

}  // namespace pydl
