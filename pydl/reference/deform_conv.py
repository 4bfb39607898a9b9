"""deform_conv: the NumPy twin (naive, float64; the test oracle).

Deformable convolution as ``torchvision.ops.deform_conv2d``, written out plainly and
independent of the pydl kernels: for every kernel tap (i, j) and output pixel (oh, ow)
the sampling point is

    h = oh*sh - ph + i*dh + offset[n, 2*(g*kh*kw + i*kw + j)]
    w = ow*sw - pw + j*dw + offset[n, 2*(g*kh*kw + i*kw + j) + 1]

(g the offset group of the channel). The sample is the bilinear interpolation of the four
neighbours (a neighbour outside the image counts as 0), and 0 when the point is outside
(-1, H) x (-1, W). Times mask[n, g*kh*kw + i*kw + j] when a mask is given; the column
matrix of samples is then multiplied by the weight, group by group, as conv2d does.
"""
import numpy as np

__all__ = ["deform_conv2d", "deform_conv2d_backward"]


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _setup(x, offset, weight, stride, padding, dilation):
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    k, cg, kh, kw = weight.shape
    groups = c // cg
    og = offset.shape[1] // (2 * kh * kw)
    ho = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    return s, p, d, groups, og, kh, kw, ho, wo


def _positions(offset, s, p, d, og, kh, kw, ho, wo):
    """Sampling points hs, ws of shape (N, og, kh*kw, Ho, Wo), float64."""
    n = offset.shape[0]
    off = np.asarray(offset, np.float64).reshape(n, og, kh * kw, 2, ho, wo)
    base_h = np.arange(ho)[:, None] * s[0] - p[0]
    base_w = np.arange(wo)[None, :] * s[1] - p[1]
    hs = np.empty((n, og, kh * kw, ho, wo))
    ws = np.empty((n, og, kh * kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            t = i * kw + j
            hs[:, :, t] = base_h + i * d[0] + off[:, :, t, 0]
            ws[:, :, t] = base_w + j * d[1] + off[:, :, t, 1]
    return hs, ws


def _corners(hs, ws, H, W):
    """The four bilinear neighbours: (row, col, weight, d weight/dh, d weight/dw, valid)."""
    inside = (hs > -1) & (ws > -1) & (hs < H) & (ws < W)
    h0, w0 = np.floor(hs), np.floor(ws)
    lh, lw = hs - h0, ws - w0
    h0, w0 = h0.astype(np.int64), w0.astype(np.int64)
    out = []
    for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
        fh = lh if a else 1 - lh
        fw = lw if b else 1 - lw
        dfh = 1.0 if a else -1.0
        dfw = 1.0 if b else -1.0
        r, q = h0 + a, w0 + b
        valid = inside & (r >= 0) & (r < H) & (q >= 0) & (q < W)
        out.append((np.clip(r, 0, H - 1), np.clip(q, 0, W - 1), fh * fw, dfh * fw, fh * dfw, valid))
    return out


def _columns(x, hs, ws, og):
    """Unmasked samples col (N, C, kh*kw, Ho, Wo) and the corner data per offset group."""
    n, c, H, W = x.shape
    cpg = c // og
    T, ho, wo = hs.shape[2:]
    col = np.zeros((n, c, T, ho, wo))
    nidx = np.arange(n)[:, None, None, None]
    corners = []
    for g in range(og):
        cs = _corners(hs[:, g], ws[:, g], H, W)
        corners.append(cs)
        for ch in range(g * cpg, (g + 1) * cpg):
            plane = np.asarray(x[:, ch], np.float64)
            for r, q, wt, _, _, valid in cs:
                col[:, ch] += np.where(valid, wt * plane[nidx, r, q], 0.0)
    return col, corners


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """float64 deformable convolution (v1, or v2 with mask), as torchvision.ops.deform_conv2d."""
    x = np.asarray(input, np.float64)
    wt = np.asarray(weight, np.float64)
    s, p, d, groups, og, kh, kw, ho, wo = _setup(x, offset, wt, stride, padding, dilation)
    n, c = x.shape[:2]
    k = wt.shape[0]
    hs, ws = _positions(offset, s, p, d, og, kh, kw, ho, wo)
    col, _ = _columns(x, hs, ws, og)
    if mask is not None:
        m = np.asarray(mask, np.float64).reshape(n, og, 1, kh * kw, ho, wo)
        col = (col.reshape(n, og, c // og, kh * kw, ho, wo) * m).reshape(col.shape)
    cg, kg = c // groups, k // groups
    y = np.zeros((n, k, ho, wo))
    for g in range(groups):
        wg = wt[g * kg:(g + 1) * kg].reshape(kg, cg * kh * kw)
        cols = col[:, g * cg:(g + 1) * cg].reshape(n, cg * kh * kw, ho * wo)
        y[:, g * kg:(g + 1) * kg] = np.einsum("kr,nrl->nkl", wg, cols).reshape(n, kg, ho, wo)
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None]
    return y


def deform_conv2d_backward(grad_out, input, offset, weight, mask=None, stride=1, padding=0, dilation=1):
    """float64 gradients (dx, doffset, dweight, dbias, dmask) of deform_conv2d (dmask None without mask).

    With col the masked samples and Y_g = W_g col_g: dW_g = dY_g col_g^T, dcol_g = W_g^T dY_g;
    each sample is sum_corners f_corner(h, w) x[corner], so dx[corner] += m f dcol,
    doffset_h = sum_c m dcol sum_corners (df/dh) x[corner] (same for w), dmask = sum_c dcol sample.
    """
    x = np.asarray(input, np.float64)
    wt = np.asarray(weight, np.float64)
    dy = np.asarray(grad_out, np.float64)
    s, p, d, groups, og, kh, kw, ho, wo = _setup(x, offset, wt, stride, padding, dilation)
    n, c, H, W = x.shape
    k = wt.shape[0]
    T = kh * kw
    cpg, cg, kg = c // og, c // groups, k // groups
    hs, ws = _positions(offset, s, p, d, og, kh, kw, ho, wo)
    col, corners = _columns(x, hs, ws, og)
    m = (np.ones((n, og, T, ho, wo)) if mask is None
         else np.asarray(mask, np.float64).reshape(n, og, T, ho, wo))
    mcol = (col.reshape(n, og, cpg, T, ho, wo) * m[:, :, None]).reshape(col.shape)
    dw = np.zeros(wt.shape)
    dcol = np.zeros(col.shape)
    for g in range(groups):
        wg = wt[g * kg:(g + 1) * kg].reshape(kg, cg * T)
        dyg = dy[:, g * kg:(g + 1) * kg].reshape(n, kg, ho * wo)
        cols = mcol[:, g * cg:(g + 1) * cg].reshape(n, cg * T, ho * wo)
        dw[g * kg:(g + 1) * kg] = np.einsum("nkl,nrl->kr", dyg, cols).reshape(kg, cg, kh, kw)
        dcol[:, g * cg:(g + 1) * cg] = np.einsum("kr,nkl->nrl", wg, dyg).reshape(n, cg, T, ho, wo)
    db = dy.sum(axis=(0, 2, 3))
    dx = np.zeros(x.shape)
    doff = np.zeros((n, og, T, 2, ho, wo))
    dm = np.zeros((n, og, T, ho, wo))
    nidx = np.broadcast_to(np.arange(n)[:, None, None, None], (n, T, ho, wo))
    for g in range(og):
        for ch in range(g * cpg, (g + 1) * cpg):
            plane = x[:, ch]
            gcol = dcol[:, ch]  # (N, T, Ho, Wo)
            dm[:, g] += gcol * col[:, ch]
            for r, q, f, fh, fw, valid in corners[g]:
                v = np.where(valid, plane[nidx, r, q], 0.0)
                doff[:, g, :, 0] += gcol * m[:, g] * fh * v
                doff[:, g, :, 1] += gcol * m[:, g] * fw * v
                contrib = np.where(valid, gcol * m[:, g] * f, 0.0)
                np.add.at(dx, (nidx, ch, r, q), contrib)
    doff = doff.reshape(offset.shape)
    dmask = None if mask is None else dm.reshape(np.shape(mask))
    return dx, doff, dw, db, dmask
