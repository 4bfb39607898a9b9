// deform_conv: deformable convolution (torchvision.ops.deform_conv2d semantics) on the CPU.
//
// Math: for channel c (offset group g = c / (C/og)), tap t = (i, j) and output pixel
// l = (oh, ow) the sampling point is
//   h = oh*sh - ph + i*dh + off[n, 2*(g*T + t), l],  w = ow*sw - pw + j*dw + off[n, 2*(g*T + t) + 1, l]
// col[n, (c, t), l] = m[n, g*T + t, l] * bilinear(x[n, c], h, w), with the four neighbours
// weighted (1-lh)(1-lw), (1-lh)lw, lh(1-lw), lh lw (lh = h - floor h), a neighbour outside the
// image read as 0, and the whole sample 0 outside (-1, H) x (-1, W). Then, as conv2d,
//   y[n, group k] = W_g (Kg x Cg*T) @ col[n, g rows] + b.
// Layout: NCHW, C-contiguous; offset (N, 2*og*T, Ho, Wo) with (dh, dw) pairs per tap;
// mask (N, og*T, Ho, Wo) or none; w (K, C/groups, kh, kw).
//
// Backward (derivation): with Y_g = W_g col_g,
//   dW_g = sum_n dY_g col_g^T,  dcol_g = W_g^T dY_g,  db[k] = sum dy[n, k, :] (float64);
//   col = m * sum_q f_q(h, w) x[q] over the corners q, so
//   dx[q]       += m f_q dcol                     (the adjoint of the sampling: col2im),
//   doffset_h    = sum_{c in g} m dcol sum_q (d f_q / dh) x[c, q]   (same for w),
//   dmask        = sum_{c in g} dcol sum_q f_q x[c, q]              (the unmasked sample);
//   all three are 0 where the point is outside (-1, H) x (-1, W).
//
// Threading: images are processed in chunks whose column buffer (C*T rows x Ho*Wo per image)
// stays under the conv workspace cap. Within a chunk one OpenMP region runs: sampling with a
// loop over (image, channel) rows; GEMMs over (image, group, column block) items with
// OpenBLAS single-threaded; col2im over (image, channel) planes, each owned by one thread;
// the doffset/dmask gathers over (image, offset group, tap) rows; dW over (group, row block)
// items, each looping the images in order. No atomics and a fixed order everywhere: reruns
// are bit-identical.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blas.h"
#include "common.h"

namespace pydl {
int64_t conv_workspace_limit();  // csrc/conv.cpp: the user's cap on column buffers

namespace {

struct DGeo {
  int64_t N, C, H, W, K, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, G, OG;
  int64_t T() const { return kh * kw; }
  int64_t L() const { return Ho * Wo; }
  int64_t R() const { return C * kh * kw; }
  int64_t Cg() const { return C / G; }
  int64_t Kg() const { return K / G; }
  int64_t Rg() const { return Cg() * kh * kw; }
  int64_t cpg() const { return C / OG; }  // channels per offset group
};

inline void thread_range(int64_t n, int64_t& lo, int64_t& hi) {
#ifdef _OPENMP
  const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
  const int64_t nt = 1, tid = 0;
#endif
  lo = n * tid / nt;
  hi = n * (tid + 1) / nt;
}

// The sampling point of (tap, pixel) and its four neighbours. in == false: outside
// (-1, H) x (-1, W), everything zero. Otherwise the corner indices (into the plane) and
// validity, and the fractional parts.
template <typename T>
struct Sample {
  bool in;
  int64_t h0, w0;
  T lh, lw;
  bool v00, v01, v10, v11;
  void at(T h, T w, int64_t H, int64_t W) {
    in = h > T(-1) && w > T(-1) && h < T(H) && w < T(W);
    if (!in) return;
    const T fh = std::floor(h), fw = std::floor(w);
    h0 = (int64_t)fh, w0 = (int64_t)fw;
    lh = h - fh, lw = w - fw;
    const bool r0 = h0 >= 0, r1 = h0 + 1 <= H - 1, c0 = w0 >= 0, c1 = w0 + 1 <= W - 1;
    v00 = r0 && c0, v01 = r0 && c1, v10 = r1 && c0, v11 = r1 && c1;
  }
  // Corner values, 0 where outside the image.
  void load(const T* p, int64_t W, T& a, T& b, T& c, T& d) const {
    const int64_t o = h0 * W + w0;
    a = v00 ? p[o] : T(0), b = v01 ? p[o + 1] : T(0), c = v10 ? p[o + W] : T(0), d = v11 ? p[o + W + 1] : T(0);
  }
  T value(const T* p, int64_t W) const {
    T a, b, c, d;
    load(p, W, a, b, c, d);
    const T hh = 1 - lh, hw = 1 - lw;
    return hh * hw * a + hh * lw * b + lh * hw * c + lh * lw * d;
  }
};

// Calls f(l, h, w) for every output pixel l of tap t with its sampling point (h, w); rows and
// columns as loops, so no divisions per point.
template <typename T, typename F>
inline void for_points(const DGeo& g, const T* offn, int64_t og, int64_t t, F&& f) {
  const int64_t i = t / g.kw, j = t % g.kw, L = g.L();
  const T* oh_ = offn + (2 * (og * g.T() + t)) * L;
  const T* ow_ = oh_ + L;
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const T hb = T(oh * g.sh - g.ph + i * g.dh);
    const int64_t l0 = oh * g.Wo;
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      const int64_t l = l0 + ow;
      f(l, hb + oh_[l], T(ow * g.sw - g.pw + j * g.dw) + ow_[l]);
    }
  }
}

// col rows (c, t) of one image: col[(c*T + t)*L + l] = m * sample.
template <typename T>
void im2col_plane(const DGeo& g, const T* xn, const T* offn, const T* mn, int64_t c, T* col) {
  const int64_t og = c / g.cpg(), L = g.L();
  const T* xc = xn + c * g.H * g.W;
  Sample<T> s;
  for (int64_t t = 0; t < g.T(); ++t) {
    T* d = col + (c * g.T() + t) * L;
    const T* mr = mn ? mn + (og * g.T() + t) * L : nullptr;
    for_points(g, offn, og, t, [&](int64_t l, T h, T w) {
      s.at(h, w, g.H, g.W);
      T v = s.in ? s.value(xc, g.W) : T(0);
      d[l] = mr ? v * mr[l] : v;
    });
  }
}

// dx[n, c] = the adjoint of im2col_plane applied to dcol rows (c, t): this thread owns the plane.
template <typename T>
void col2im_plane(const DGeo& g, const T* dcol, const T* offn, const T* mn, int64_t c, T* dxc) {
  const int64_t og = c / g.cpg(), L = g.L(), W = g.W;
  std::fill(dxc, dxc + g.H * W, T(0));
  Sample<T> s;
  for (int64_t t = 0; t < g.T(); ++t) {
    const T* src = dcol + (c * g.T() + t) * L;
    const T* mr = mn ? mn + (og * g.T() + t) * L : nullptr;
    for_points(g, offn, og, t, [&](int64_t l, T h, T w) {
      s.at(h, w, g.H, W);
      if (!s.in) return;
      const T v = mr ? src[l] * mr[l] : src[l];
      const T hh = 1 - s.lh, hw = 1 - s.lw;
      T* p = dxc + s.h0 * W + s.w0;
      if (s.v00) p[0] += hh * hw * v;
      if (s.v01) p[1] += hh * s.lw * v;
      if (s.v10) p[W] += s.lh * hw * v;
      if (s.v11) p[W + 1] += s.lh * s.lw * v;
    });
  }
}

// doffset rows (og, t) and dmask row (og, t) of one image: gathers over the group's channels,
// channels outer so each channel's dcol row and plane stream once.
template <typename T>
void coord_row(const DGeo& g, const T* xn, const T* dcol, const T* offn, const T* mn, int64_t og, int64_t t,
               T* doffn, T* dmn) {
  const int64_t L = g.L(), W = g.W;
  T* gh = doffn ? doffn + (2 * (og * g.T() + t)) * L : nullptr;
  T* gw = gh ? gh + L : nullptr;
  T* gm = dmn ? dmn + (og * g.T() + t) * L : nullptr;
  if (gh) std::fill(gh, gh + 2 * L, T(0));
  if (gm) std::fill(gm, gm + L, T(0));
  const T* mr = mn ? mn + (og * g.T() + t) * L : nullptr;
  Sample<T> s;
  for (int64_t c = og * g.cpg(); c < (og + 1) * g.cpg(); ++c) {
    const T* xc = xn + c * g.H * W;
    const T* src = dcol + (c * g.T() + t) * L;
    for_points(g, offn, og, t, [&](int64_t l, T h, T w) {
      s.at(h, w, g.H, W);
      if (!s.in) return;
      T a, b, cc, d;
      s.load(xc, W, a, b, cc, d);
      const T gv = src[l];
      if (gh) {
        const T mg = mr ? gv * mr[l] : gv;
        // d/dh of (1-lh)(1-lw)a + (1-lh)lw b + lh(1-lw)c + lh lw d, and d/dw likewise.
        gh[l] += mg * ((1 - s.lw) * (cc - a) + s.lw * (d - b));
        gw[l] += mg * ((1 - s.lh) * (b - a) + s.lh * (d - cc));
      }
      if (gm) {
        const T hh = 1 - s.lh, hw = 1 - s.lw;
        gm[l] += gv * (hh * hw * a + hh * s.lw * b + s.lh * hw * cc + s.lh * s.lw * d);
      }
    });
  }
}

// Images per chunk: the (nb x R x L) column buffer under the workspace cap, >= 1.
inline int64_t chunk_images(const DGeo& g, int64_t elem) {
  const int64_t per = std::max<int64_t>(1, g.R() * g.L() * elem);
  return std::max<int64_t>(1, std::min(g.N, conv_workspace_limit() / per));
}

thread_local std::vector<unsigned char> t_buf;
template <typename T>
T* buffer(int64_t elems) {
  if ((int64_t)t_buf.size() < elems * (int64_t)sizeof(T)) {
    std::vector<unsigned char>().swap(t_buf);
    t_buf.resize((size_t)(elems * (int64_t)sizeof(T)));
  }
  return reinterpret_cast<T*>(t_buf.data());
}

inline bool parallel_pays(const DGeo& g) { return g.N * g.R() * g.L() * std::max<int64_t>(g.Kg(), 8) > (1 << 16); }

// GEMM work items: (image, group, column block); column blocks only when there are too few
// (image, group) pairs to feed every thread.
inline int64_t col_blocks(int64_t items, int64_t L) {
  const int64_t nt = max_threads();
  if (items >= nt) return 1;
  return std::max<int64_t>(1, std::min((nt + items - 1) / items, L / 32));
}

template <typename T>
void forward(const DGeo& g, const T* x, const T* off, const T* m, const T* w, const T* b, T* y) {
  if (g.N == 0) return;
  const int64_t L = g.L(), R = g.R(), T_ = g.T(), Kg = g.Kg(), Rg = g.Rg();
  const int64_t nb = chunk_images(g, sizeof(T));
  T* col = buffer<T>(nb * R * L);
  for (int64_t n0 = 0; n0 < g.N; n0 += nb) {
    const int64_t cnt = std::min(nb, g.N - n0);
    const int64_t parts = col_blocks(cnt * g.G, L);
#pragma omp parallel if (parallel_pays(g))
    {
#pragma omp for schedule(static) collapse(2)
      for (int64_t j = 0; j < cnt; ++j)
        for (int64_t c = 0; c < g.C; ++c) {
          const int64_t n = n0 + j;
          im2col_plane(g, x + n * g.C * g.H * g.W, off + n * 2 * g.OG * T_ * L,
                       m ? m + n * g.OG * T_ * L : nullptr, c, col + j * R * L);
        }
#pragma omp for schedule(static)
      for (int64_t it = 0; it < cnt * g.G * parts; ++it) {
        const int64_t j = it / (g.G * parts), gi = (it / parts) % g.G, p = it % parts;
        const int64_t lo = L * p / parts, hi = L * (p + 1) / parts;
        T* yd = y + ((n0 + j) * g.K + gi * Kg) * L;
        if (hi > lo)
          gemm(false, false, Kg, hi - lo, Rg, T(1), w + gi * Kg * Rg, Rg, col + (j * R + gi * Rg) * L + lo, L,
               T(0), yd + lo, L);
        if (b)
          for (int64_t k = 0; k < Kg; ++k) {
            const T bv = b[gi * Kg + k];
            for (int64_t l = lo; l < hi; ++l) yd[k * L + l] += bv;
          }
      }
    }
  }
}

template <typename T>
void backward(const DGeo& g, const T* dy, const T* x, const T* off, const T* m, const T* w, T* dx, T* doff,
              T* dm, T* dwt, T* db) {
  const int64_t L = g.L(), R = g.R(), T_ = g.T(), Kg = g.Kg(), Rg = g.Rg();
  if (db) {
#pragma omp parallel for schedule(static) if (g.N * g.K * L > (1 << 15))
    for (int64_t k = 0; k < g.K; ++k) {
      double s = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const T* d = dy + (n * g.K + k) * L;
        for (int64_t l = 0; l < L; ++l) s += d[l];
      }
      db[k] = T(s);
    }
  }
  if (dwt) std::fill(dwt, dwt + g.K * Rg, T(0));
  if (g.N == 0) return;
  if (!dx && !doff && !dm && !dwt) return;
  const int64_t nb = chunk_images(g, sizeof(T));
  T* col = buffer<T>(nb * R * L);
  // dW row blocks: enough (group, block) items for every thread.
  const int64_t rblocks = std::max<int64_t>(1, std::min<int64_t>(Kg, (max_threads() + g.G - 1) / g.G));
  const bool need_dcol = dx || doff || dm;
  for (int64_t n0 = 0; n0 < g.N; n0 += nb) {
    const int64_t cnt = std::min(nb, g.N - n0);
    const int64_t parts = col_blocks(cnt * g.G, L);
#pragma omp parallel if (parallel_pays(g))
    {
      if (need_dcol) {
        // dcol[j, g rows] = W_g^T dy[n, g]
#pragma omp for schedule(static)
        for (int64_t it = 0; it < cnt * g.G * parts; ++it) {
          const int64_t j = it / (g.G * parts), gi = (it / parts) % g.G, p = it % parts;
          const int64_t lo = L * p / parts, hi = L * (p + 1) / parts;
          if (hi > lo)
            gemm(true, false, Rg, hi - lo, Kg, T(1), w + gi * Kg * Rg, Rg, dy + ((n0 + j) * g.K + gi * Kg) * L + lo,
                 L, T(0), col + (j * R + gi * Rg) * L + lo, L);
        }
        if (dx) {
#pragma omp for schedule(static) collapse(2)
          for (int64_t j = 0; j < cnt; ++j)
            for (int64_t c = 0; c < g.C; ++c) {
              const int64_t n = n0 + j;
              col2im_plane(g, col + j * R * L, off + n * 2 * g.OG * T_ * L, m ? m + n * g.OG * T_ * L : nullptr, c,
                           dx + (n * g.C + c) * g.H * g.W);
            }
        }
        if (doff || dm) {
#pragma omp for schedule(static) collapse(3)
          for (int64_t j = 0; j < cnt; ++j)
            for (int64_t og = 0; og < g.OG; ++og)
              for (int64_t t = 0; t < T_; ++t) {
                const int64_t n = n0 + j;
                coord_row(g, x + n * g.C * g.H * g.W, col + j * R * L, off + n * 2 * g.OG * T_ * L,
                          m ? m + n * g.OG * T_ * L : nullptr, og, t, doff ? doff + n * 2 * g.OG * T_ * L : nullptr,
                          dm ? dm + n * g.OG * T_ * L : nullptr);
              }
        }
      }
      if (dwt) {
        // The columns again (over dcol, which is consumed), then dW_g += dy[n, g] col[n, g]^T,
        // images in order within each (group, row block) item.
#pragma omp for schedule(static) collapse(2)
        for (int64_t j = 0; j < cnt; ++j)
          for (int64_t c = 0; c < g.C; ++c) {
            const int64_t n = n0 + j;
            im2col_plane(g, x + n * g.C * g.H * g.W, off + n * 2 * g.OG * T_ * L,
                         m ? m + n * g.OG * T_ * L : nullptr, c, col + j * R * L);
          }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < g.G * rblocks; ++it) {
          const int64_t gi = it / rblocks, rb = it % rblocks;
          const int64_t k0 = Kg * rb / rblocks, k1 = Kg * (rb + 1) / rblocks;
          if (k1 == k0) continue;
          for (int64_t j = 0; j < cnt; ++j)
            gemm(false, true, k1 - k0, Rg, L, T(1), dy + ((n0 + j) * g.K + gi * Kg + k0) * L, L,
                 col + (j * R + gi * Rg) * L, L, T(1), dwt + (gi * Kg + k0) * Rg, Rg);
        }
      }
    }
  }
}

template <typename T>
const T* arr_in(const py::array& a, const char* name) {
  PYDL_CHECK(has_dtype<T>(a) && (a.flags() & py::array::c_style),
             "deform_conv2d: " << name << " must be a C-contiguous array of the input's dtype");
  return static_cast<const T*>(a.data());
}

template <typename T>
const T* opt_in(const py::object& o, const char* name) {
  if (o.is_none()) return nullptr;
  return arr_in<T>(o.cast<py::array>(), name);
}

template <typename T>
T* opt_out(const py::object& o, const char* name, int64_t size) {
  if (o.is_none()) return nullptr;
  py::array a = o.cast<py::array>();
  arr_in<T>(a, name);
  PYDL_CHECK(a.writeable(), "deform_conv2d: " << name << " is read-only");
  PYDL_CHECK(numel(a) == size, "deform_conv2d: " << name << " has " << numel(a) << " elements, expected " << size);
  return static_cast<T*>(a.mutable_data());
}

DGeo make_geo(const py::array& x, const py::array& off, const py::array& w, int64_t Ho, int64_t Wo, int64_t sh,
              int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t G, int64_t OG) {
  PYDL_CHECK(x.ndim() == 4 && w.ndim() == 4 && off.ndim() == 4, "deform_conv2d: x, offset, w must be 4-D");
  DGeo g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(2), w.shape(3), Ho, Wo,
         sh, sw, ph, pw, dh, dw, G, OG};
  PYDL_CHECK(G >= 1 && OG >= 1 && g.C % G == 0 && g.K % G == 0 && g.C % OG == 0 && w.shape(1) * G == g.C,
             "deform_conv2d: bad groups / offset_groups");
  PYDL_CHECK(off.shape(0) == g.N && off.shape(1) == 2 * OG * g.T() && off.shape(2) == Ho && off.shape(3) == Wo,
             "deform_conv2d: offset shape mismatch");
  PYDL_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0 && Ho >= 1 && Wo >= 1,
             "deform_conv2d: bad stride/padding/dilation");
  return g;
}

template <typename T>
void fwd_t(py::array x, py::array off, py::object m, py::array w, py::object b, py::array y, int64_t sh,
           int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t G, int64_t OG) {
  PYDL_CHECK(y.ndim() == 4, "deform_conv2d: y must be 4-D");
  DGeo g = make_geo(x, off, w, y.shape(2), y.shape(3), sh, sw, ph, pw, dh, dw, G, OG);
  PYDL_CHECK(y.shape(0) == g.N && y.shape(1) == g.K, "deform_conv2d: y shape mismatch");
  const T *xp = arr_in<T>(x, "x"), *op = arr_in<T>(off, "offset"), *wp = arr_in<T>(w, "w");
  const T *mp = opt_in<T>(m, "mask"), *bp = opt_in<T>(b, "b");
  if (mp) PYDL_CHECK(numel(m.cast<py::array>()) == g.N * OG * g.T() * g.L(), "deform_conv2d: mask size");
  if (bp) PYDL_CHECK(numel(b.cast<py::array>()) == g.K, "deform_conv2d: b size");
  T* yp = opt_out<T>(y, "y", g.N * g.K * g.L());
  blas_single_thread();
  py::gil_scoped_release nogil;
  forward<T>(g, xp, op, mp, wp, bp, yp);
}

template <typename T>
void bwd_t(py::array dy, py::array x, py::array off, py::object m, py::array w, py::object dx, py::object doff,
           py::object dm, py::object dwt, py::object db, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
           int64_t dw, int64_t G, int64_t OG) {
  PYDL_CHECK(dy.ndim() == 4, "deform_conv2d: dy must be 4-D");
  DGeo g = make_geo(x, off, w, dy.shape(2), dy.shape(3), sh, sw, ph, pw, dh, dw, G, OG);
  PYDL_CHECK(dy.shape(0) == g.N && dy.shape(1) == g.K, "deform_conv2d: dy shape mismatch");
  const T *dyp = arr_in<T>(dy, "dy"), *xp = arr_in<T>(x, "x"), *op = arr_in<T>(off, "offset");
  const T *wp = arr_in<T>(w, "w"), *mp = opt_in<T>(m, "mask");
  const int64_t ms = g.N * OG * g.T() * g.L();
  if (mp) PYDL_CHECK(numel(m.cast<py::array>()) == ms, "deform_conv2d: mask size");
  PYDL_CHECK(mp || dm.is_none(), "deform_conv2d: dmask needs a mask");
  T* dxp = opt_out<T>(dx, "dx", g.N * g.C * g.H * g.W);
  T* dop = opt_out<T>(doff, "doffset", 2 * ms);
  T* dmp = opt_out<T>(dm, "dmask", ms);
  T* dwp = opt_out<T>(dwt, "dw", g.K * g.Rg());
  T* dbp = opt_out<T>(db, "db", g.K);
  blas_single_thread();
  py::gil_scoped_release nogil;
  backward<T>(g, dyp, xp, op, mp, wp, dxp, dop, dmp, dwp, dbp);
}

}  // namespace

void bind_deform_conv(py::module_& m) {
  using namespace py::literals;
  m.def(
      "deform_conv2d_forward",
      [](py::array x, py::array off, py::object mask, py::array w, py::object b, py::array y, int64_t sh,
         int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t G, int64_t OG) {
        dispatch_float(x, "deform_conv2d", "x", [&](auto t) {
          fwd_t<decltype(t)>(x, off, mask, w, b, y, sh, sw, ph, pw, dh, dw, G, OG);
        });
      },
      "x"_a, "offset"_a, "mask"_a.none(true), "w"_a, "b"_a.none(true), "y"_a, "stride_h"_a, "stride_w"_a,
      "pad_h"_a, "pad_w"_a, "dil_h"_a, "dil_w"_a, "groups"_a, "offset_groups"_a,
      "y (N, K, Ho, Wo) = deform_conv2d(x, offset, w, b, mask); y preallocated");
  m.def(
      "deform_conv2d_backward",
      [](py::array dy, py::array x, py::array off, py::object mask, py::array w, py::object dx, py::object doff,
         py::object dmask, py::object dwt, py::object db, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
         int64_t dh, int64_t dw, int64_t G, int64_t OG) {
        dispatch_float(x, "deform_conv2d", "x", [&](auto t) {
          bwd_t<decltype(t)>(dy, x, off, mask, w, dx, doff, dmask, dwt, db, sh, sw, ph, pw, dh, dw, G, OG);
        });
      },
      "dy"_a, "x"_a, "offset"_a, "mask"_a.none(true), "w"_a, "dx"_a.none(true), "doffset"_a.none(true),
      "dmask"_a.none(true), "dw"_a.none(true), "db"_a.none(true), "stride_h"_a, "stride_w"_a, "pad_h"_a,
      "pad_w"_a, "dil_h"_a, "dil_w"_a, "groups"_a, "offset_groups"_a,
      "Gradients of deform_conv2d into the preallocated dx, doffset, dmask, dw, db (each optional)");
}

}  // namespace pydl
