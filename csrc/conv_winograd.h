// Winograd F(2x2, 3x3) for 3x3 convolutions of stride 1 or 2, and dilated ones of stride 1 by
// space-to-batch (see conv_winograd.cpp). `groups`: the weights are per group (w K x C/groups x 3 x 3)
// and the GEMMs run per group.
#pragma once
#include <cstdint>

#include "epilogue.h"

namespace pydl {

// The conv workspace (conv.cpp): a per-thread buffer of at least `bytes`, recorded by the
// workspace peak tracker, and the current cap on one call's workspace.
void* conv_workspace(int64_t bytes);
// A second per-thread buffer, for the dilated path's phase copies around the Winograd call (not
// recorded by the peak tracker; the caller counts it against the cap).
void* conv_phase_buffer(int64_t bytes);
int64_t conv_workspace_limit();

// out[n, o, p, q] = ep(bias[o] + sum_{i, 3x3 taps} in[n, i, s*p + off_h + a, s*q + off_w + b] * W(o, i, a, b))
// with in = 0 outside [0, Hin) x [0, Win) and s = stride (1 or 2). Forward: W(o, i, a, b) = w[o, i, a, b]
// (w is K x C x 3 x 3), off = -pad. Backward input of a stride-1 convolution (flip = true, stride 1 only):
// W(o, i, a, b) = w[i, o, 2 - a, 2 - b], off = pad - 2.
// Returns false (and writes nothing) when this path does not pay or the workspace cap is too
// small for it; the caller then takes the im2col path.
template <typename T>
bool winograd_conv3x3(int64_t N, int64_t Cin, int64_t Hin, int64_t Win, int64_t Cout, int64_t Hout,
                      int64_t Wout, int64_t stride, int64_t off_h, int64_t off_w, const T* in, const T* w,
                      bool flip, const Epilogue<T>& ep, T* out, int64_t groups = 1);

// dw[k, c] (K x C x 3 x 3) = gradient of the forward call above (off = -pad) w.r.t. w, from
// x (N, C, H, W) and dy (N, K, Ho, Wo). False: declined (nothing written).
template <typename T>
bool winograd_conv3x3_weight(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                             int64_t stride, int64_t off_h, int64_t off_w, const T* x, const T* dy, T* dw,
                             int64_t groups = 1);

// dx (N x C x H x W) = gradient of the stride-2 forward call above (off = -pad, w is K x C x 3 x 3)
// w.r.t. its input, from dy (N, K, Ho, Wo). False: declined (nothing written; the caller takes col2im).
template <typename T>
bool winograd_conv3x3_input_grad(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                                 int64_t off_h, int64_t off_w, const T* dy, const T* w, T* dx, int64_t groups = 1);

// Stride-1 dense 3x3 convolutions of dilation (dh, dw) whose padding (ph, pw) is a multiple of
// it, by space-to-batch: the dh * dw phases of every image (x[n, c, rh + dh a, rw + dw b]) are one
// batch for the undilated calls above (see conv_winograd.cpp). Forward (ep in y's layout), input
// gradient and weight gradient, with the same arguments as conv2d (Ho, Wo: y's size). False:
// declined (the phase copies plus the Winograd workspace exceed the cap; nothing written).
template <typename T>
bool winograd_conv3x3_dilated(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                              int64_t dh, int64_t dw, int64_t ph, int64_t pw, const T* x, const T* w,
                              const Epilogue<T>& ep, T* y, int64_t groups = 1);
template <typename T>
bool winograd_conv3x3_dilated_input_grad(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho,
                                         int64_t Wo, int64_t dh, int64_t dw, int64_t ph, int64_t pw, const T* dy,
                                         const T* w, T* dx, int64_t groups = 1);
template <typename T>
bool winograd_conv3x3_dilated_weight(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                                     int64_t dh, int64_t dw, int64_t ph, int64_t pw, const T* x, const T* dy,
                                     T* dwt, int64_t groups = 1);

// Whether the Winograd path is worth taking for this batch, channel counts, output size, stride
// and dilation (> 1: judged on the phase batch the dilated wrapper runs), for the convolution
// (weight_grad false) or its weight gradient.
bool winograd_pays(int64_t N, int64_t Cin, int64_t Cout, int64_t Hout, int64_t Wout, int64_t stride,
                   bool weight_grad, int64_t dh = 1, int64_t dw = 1);

// How many calls took the Winograd path (tests prove a forced or automatic choice ran).
int64_t winograd_calls();

}  // namespace pydl
