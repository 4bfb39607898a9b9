// activation: CPU kernels of the elementwise activations (PyTorch's F.relu, relu6, leaky_relu,
// hardtanh, silu, hardswish, sigmoid, tanh), forward and backward.
//
// Math: csrc/activation.h (one struct per activation, shared with the CUDA kernels), with the
// derivations, PyTorch's derivatives at the kinks and its NaN behaviour.
//   forward   y[i]  = f(x[i])
//   backward  dx[i] = dy[i] f'(x[i])   (sigmoid, tanh: from the output, dy[i] g(y[i]))
// relu6 is hardtanh(0, 6), as in PyTorch.
// Layout: C-contiguous arrays of one size, walked as flat vectors. The output may be the input
// (y == x; dx == dy or dx == x): every loop reads index i before writing index i, so exact
// aliasing is safe; partial overlaps are refused (Python never passes them).
// Threads: one contiguous range per OpenMP thread, range ends on 64-byte lines, above a size
// where a parallel region (microseconds) pays: smaller arrays for exp/tanh than for the
// compare-and-select activations. Loops are plain per-element bodies under `omp simd` (the
// aliasing above is no dependence), so the compiler vectorizes all but the exp/tanh calls.
// Algorithms: one per op and direction.
#include <algorithm>
#include <cstdint>

#include "activation.h"
#include "common.h"

namespace pydl {
namespace {

// Elements below which a loop stays on the calling thread.
template <typename Op>
constexpr int64_t min_parallel() {
  return Op::kHeavy ? (int64_t(1) << 14) : (int64_t(1) << 16);
}

// body(begin, end) over [0, n): the whole range on this thread, or one slice per thread.
template <typename F>
void for_ranges(int64_t n, int64_t min_par, F&& body) {
  if (n < min_par || max_threads() == 1) {
    body(int64_t(0), n);
    return;
  }
#pragma omp parallel
  {
    constexpr int64_t kLine = 16;  // elements; a multiple of a 64-byte line for float and double
    const int64_t nt = team_size(), t = thread_id();
    const int64_t per = ((n + nt - 1) / nt + kLine - 1) / kLine * kLine;
    const int64_t b = std::min(n, t * per), e = std::min(n, b + per);
    if (b < e) body(b, e);
  }
}

template <typename T, typename Op>
__attribute__((always_inline)) inline void forward_range_impl(const T* x, T* y, int64_t n, const Op op) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = op.forward(x[i]);
}

template <typename T, typename Op>
__attribute__((always_inline)) inline void backward_range_impl(const T* dy, const T* v, T* dx, int64_t n,
                                                               const Op op) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = op.backward(dy[i], v[i]);
}

// AVX2 + FMA variants: the exp-based activations compute more than they move.
#define PYDL_ACT_T template <typename T, typename Op>
PYDL_SIMD_DISPATCH(PYDL_ACT_T, <T>, void, forward_range, (const T* x, T* y, int64_t n, const Op op), (x, y, n, op))
PYDL_SIMD_DISPATCH(PYDL_ACT_T, <T>, void, backward_range, (const T* dy, const T* v, T* dx, int64_t n, const Op op),
                   (dy, v, dx, n, op))
#undef PYDL_ACT_T

// out may be in exactly, or not overlap it at all.
template <typename T>
void check_alias(const T* in, const T* out, int64_t n, const char* who, const char* what) {
  PYDL_CHECK(in == out || in + n <= out || out + n <= in, who << ": " << what << " partially overlap");
}

template <typename T, typename Op>
void run_forward(const carray<T>& x, carray<T>& y, const Op& op, const char* who) {
  PYDL_CHECK(x.size() == y.size(), who << ": x and y differ in size (" << x.size() << " vs " << y.size() << ")");
  const int64_t n = static_cast<int64_t>(x.size());
  if (n == 0) return;
  const T* xp = in_ptr(x);
  T* yp = out_ptr(y);
  check_alias(xp, yp, n, who, "x and y");
  py::gil_scoped_release nogil;
  for_ranges(n, min_parallel<Op>(), [&](int64_t b, int64_t e) { forward_range(xp + b, yp + b, e - b, op); });
}

template <typename T, typename Op>
void run_backward(const carray<T>& dy, const carray<T>& v, carray<T>& dx, const Op& op, const char* who) {
  PYDL_CHECK(dy.size() == v.size() && dy.size() == dx.size(), who << ": dy, x and dx differ in size");
  const int64_t n = static_cast<int64_t>(dy.size());
  if (n == 0) return;
  const T* gp = in_ptr(dy);
  const T* vp = in_ptr(v);
  T* dp = out_ptr(dx);
  check_alias(gp, dp, n, who, "dy and dx");
  check_alias(vp, dp, n, who, "x and dx");
  py::gil_scoped_release nogil;
  for_ranges(n, min_parallel<Op>(),
             [&](int64_t b, int64_t e) { backward_range(gp + b, vp + b, dp + b, e - b, op); });
}

template <typename T>
void bind_typed(py::module_& m) {
  // noconvert: an array of the wrong dtype or layout is refused instead of silently copied (a
  // copied output would be written and dropped).
  using A = carray<T>;
  auto x = py::arg("x").noconvert(), y = py::arg("y").noconvert();
  auto dy = py::arg("dy").noconvert(), dx = py::arg("dx").noconvert();
  auto yo = py::arg("y").noconvert();  // sigmoid/tanh backward read the output

  m.def("relu_forward", [](A a, A b) { run_forward(a, b, act::Relu<T>{}, "relu_forward"); }, x, y,
        "y <- max(x, 0)");
  m.def("relu_backward", [](A g, A a, A d) { run_backward(g, a, d, act::Relu<T>{}, "relu_backward"); },
        dy, x, dx, "dx <- dy where x > 0, else 0");
  m.def("hardtanh_forward",
        [](A a, A b, double lo, double hi) {
          run_forward(a, b, act::Hardtanh<T>{T(lo), T(hi)}, "hardtanh_forward");
        },
        x, y, py::arg("min_val"), py::arg("max_val"), "y <- min(max(x, min_val), max_val)");
  m.def("hardtanh_backward",
        [](A g, A a, A d, double lo, double hi) {
          run_backward(g, a, d, act::Hardtanh<T>{T(lo), T(hi)}, "hardtanh_backward");
        },
        dy, x, dx, py::arg("min_val"), py::arg("max_val"), "dx <- dy where min_val < x < max_val, else 0");
  m.def("leaky_relu_forward",
        [](A a, A b, double s) { run_forward(a, b, act::LeakyRelu<T>{T(s)}, "leaky_relu_forward"); }, x, y,
        py::arg("negative_slope"), "y <- x where x > 0, else negative_slope x");
  m.def("leaky_relu_backward",
        [](A g, A a, A d, double s) {
          run_backward(g, a, d, act::LeakyRelu<T>{T(s)}, "leaky_relu_backward");
        },
        dy, x, dx, py::arg("negative_slope"), "dx <- dy where x > 0, else negative_slope dy");
  m.def("silu_forward", [](A a, A b) { run_forward(a, b, act::Silu<T>{}, "silu_forward"); }, x, y,
        "y <- x / (1 + exp(-x))");
  m.def("silu_backward", [](A g, A a, A d) { run_backward(g, a, d, act::Silu<T>{}, "silu_backward"); },
        dy, x, dx, "dx <- dy s (1 + x (1 - s)), s = sigmoid(x)");
  m.def("hardswish_forward", [](A a, A b) { run_forward(a, b, act::Hardswish<T>{}, "hardswish_forward"); },
        x, y, "y <- x min(max(x + 3, 0), 6) / 6");
  m.def("hardswish_backward",
        [](A g, A a, A d) { run_backward(g, a, d, act::Hardswish<T>{}, "hardswish_backward"); }, dy,
        x, dx, "dx <- 0 (x < -3), dy (x/3 + 1/2) (-3 <= x <= 3), dy (x > 3)");
  m.def("sigmoid_forward", [](A a, A b) { run_forward(a, b, act::Sigmoid<T>{}, "sigmoid_forward"); }, x, y,
        "y <- 1 / (1 + exp(-x))");
  m.def("sigmoid_backward",
        [](A g, A b, A d) { run_backward(g, b, d, act::Sigmoid<T>{}, "sigmoid_backward"); }, dy, yo,
        dx, "dx <- dy y (1 - y), from the output y");
  m.def("tanh_forward", [](A a, A b) { run_forward(a, b, act::Tanh<T>{}, "tanh_forward"); }, x, y,
        "y <- tanh(x)");
  m.def("tanh_backward", [](A g, A b, A d) { run_backward(g, b, d, act::Tanh<T>{}, "tanh_backward"); },
        dy, yo, dx, "dx <- dy (1 - y^2), from the output y");
}

}  // namespace

void bind_activation(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace pydl
