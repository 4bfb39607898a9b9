// activation: CUDA kernels of the elementwise activations (PyTorch's F.relu, relu6, leaky_relu,
// hardtanh, silu, hardswish, sigmoid, tanh), forward and backward.
//
// Math: csrc/activation.h (the same structs as the CPU kernels, compiled __host__ __device__),
// with the derivations, PyTorch's derivatives at the kinks and its NaN behaviour.
//   forward   y[i]  = f(x[i])
//   backward  dx[i] = dy[i] f'(x[i])   (sigmoid, tanh: from the output, dy[i] g(y[i]))
// relu6 is hardtanh(0, 6), as in PyTorch.
// Layout: C-contiguous arrays of one size, walked as flat vectors; the output may be the input
// (each thread reads element i before writing it).
// Threads: one per element, grid-stride loops; consecutive threads take consecutive elements
// (coalesced). Algorithms: one per op and direction.
#include <cstdint>
#include <string>

#include "activation.h"
#include "common.cuh"

namespace pydl {
namespace {

constexpr int kBlock = 256;

template <typename T, typename Op>
__global__ void __launch_bounds__(kBlock) forward_kernel(const T* x, T* y, int64_t n, Op op) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = op.forward(x[i]);
}

template <typename T, typename Op>
__global__ void __launch_bounds__(kBlock) backward_kernel(const T* dy, const T* v, T* dx, int64_t n, Op op) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dx[i] = op.backward(dy[i], v[i]);
}

template <typename T, typename Op>
void run_forward(dptr x, dptr y, int64_t n, const Op& op, dptr stream) {
  PYDL_CHECK(n >= 0, "activation forward: n must be >= 0");
  if (n == 0) return;
  forward_kernel<T, Op><<<grid_for(n, kBlock), kBlock, 0, as_stream(stream)>>>(as_ptr<const T>(x), as_ptr<T>(y),
                                                                                 n, op);
  PYDL_LAUNCH_CHECK();
}

template <typename T, typename Op>
void run_backward(dptr dy, dptr v, dptr dx, int64_t n, const Op& op, dptr stream) {
  PYDL_CHECK(n >= 0, "activation backward: n must be >= 0");
  if (n == 0) return;
  backward_kernel<T, Op><<<grid_for(n, kBlock), kBlock, 0, as_stream(stream)>>>(
      as_ptr<const T>(dy), as_ptr<const T>(v), as_ptr<T>(dx), n, op);
  PYDL_LAUNCH_CHECK();
}

template <typename T>
void bind_typed(py::module_& m, const char* suffix) {
  const std::string s(suffix);
  auto name = [&](const char* op) { return std::string(op) + "_" + s; };
  m.def(name("relu_forward").c_str(),
        [](dptr x, dptr y, int64_t n, dptr st) { run_forward<T>(x, y, n, act::Relu<T>{}, st); },
        "(x, y, n, stream)");
  m.def(name("relu_backward").c_str(),
        [](dptr dy, dptr x, dptr dx, int64_t n, dptr st) { run_backward<T>(dy, x, dx, n, act::Relu<T>{}, st); },
        "(dy, x, dx, n, stream)");
  m.def(name("hardtanh_forward").c_str(),
        [](dptr x, dptr y, int64_t n, double lo, double hi, dptr st) {
          run_forward<T>(x, y, n, act::Hardtanh<T>{T(lo), T(hi)}, st);
        },
        "(x, y, n, min_val, max_val, stream)");
  m.def(name("hardtanh_backward").c_str(),
        [](dptr dy, dptr x, dptr dx, int64_t n, double lo, double hi, dptr st) {
          run_backward<T>(dy, x, dx, n, act::Hardtanh<T>{T(lo), T(hi)}, st);
        },
        "(dy, x, dx, n, min_val, max_val, stream)");
  m.def(name("leaky_relu_forward").c_str(),
        [](dptr x, dptr y, int64_t n, double s, dptr st) { run_forward<T>(x, y, n, act::LeakyRelu<T>{T(s)}, st); },
        "(x, y, n, negative_slope, stream)");
  m.def(name("leaky_relu_backward").c_str(),
        [](dptr dy, dptr x, dptr dx, int64_t n, double s, dptr st) {
          run_backward<T>(dy, x, dx, n, act::LeakyRelu<T>{T(s)}, st);
        },
        "(dy, x, dx, n, negative_slope, stream)");
  m.def(name("silu_forward").c_str(),
        [](dptr x, dptr y, int64_t n, dptr st) { run_forward<T>(x, y, n, act::Silu<T>{}, st); },
        "(x, y, n, stream)");
  m.def(name("silu_backward").c_str(),
        [](dptr dy, dptr x, dptr dx, int64_t n, dptr st) { run_backward<T>(dy, x, dx, n, act::Silu<T>{}, st); },
        "(dy, x, dx, n, stream)");
  m.def(name("hardswish_forward").c_str(),
        [](dptr x, dptr y, int64_t n, dptr st) { run_forward<T>(x, y, n, act::Hardswish<T>{}, st); },
        "(x, y, n, stream)");
  m.def(name("hardswish_backward").c_str(),
        [](dptr dy, dptr x, dptr dx, int64_t n, dptr st) {
          run_backward<T>(dy, x, dx, n, act::Hardswish<T>{}, st);
        },
        "(dy, x, dx, n, stream)");
  m.def(name("sigmoid_forward").c_str(),
        [](dptr x, dptr y, int64_t n, dptr st) { run_forward<T>(x, y, n, act::Sigmoid<T>{}, st); },
        "(x, y, n, stream)");
  m.def(name("sigmoid_backward").c_str(),
        [](dptr dy, dptr y, dptr dx, int64_t n, dptr st) { run_backward<T>(dy, y, dx, n, act::Sigmoid<T>{}, st); },
        "(dy, y, dx, n, stream); from the output y");
  m.def(name("tanh_forward").c_str(),
        [](dptr x, dptr y, int64_t n, dptr st) { run_forward<T>(x, y, n, act::Tanh<T>{}, st); },
        "(x, y, n, stream)");
  m.def(name("tanh_backward").c_str(),
        [](dptr dy, dptr y, dptr dx, int64_t n, dptr st) { run_backward<T>(dy, y, dx, n, act::Tanh<T>{}, st); },
        "(dy, y, dx, n, stream); from the output y");
}

}  // namespace

void bind_activation_cuda(py::module_& m) {
  bind_typed<float>(m, "f32");
  bind_typed<double>(m, "f64");
}

}  // namespace pydl
