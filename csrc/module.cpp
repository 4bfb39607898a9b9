// pydl._cpu: the CPU kernels. Each op file binds its own functions (bind_<op>).
#ifdef _OPENMP
#include <omp.h>
#endif

#include <pthread.h>

#include <atomic>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "blas.h"
#include "common.h"
#include "geometry.h"

namespace pydl {
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_batch_norm(py::module_& m);
void bind_cross_entropy(py::module_& m);
void bind_nms(py::module_& m);
void bind_roi_pool(py::module_& m);
void bind_roi_align(py::module_& m);
void bind_deform_conv(py::module_& m);
void bind_interpolate(py::module_& m);
void bind_local_response_norm(py::module_& m);
void bind_soft_nms(py::module_& m);
void bind_activation(py::module_& m);
void bind_linear(py::module_& m);

namespace {
std::atomic<bool> g_forked_child{false};

// NumPy's OpenBLAS (a pthreads build) spins its own threads for ~0.1 s after each parallel call;
// on few cores pydl's next calls then ran 1.2-3x slower. Its caller-managed threading hook
// (openblas_set_threads_callback_function) runs its jobs on pydl's OpenMP pool instead: one
// pool for both libraries, idle after a short spin.
using BlasJob = void (*)(int thread, void* job, int data);
using BlasThreads = void (*)(int sync, BlasJob run, int jobs, size_t job_size, void* job_data, int data);
using BlasSetThreads = void (*)(BlasThreads);
std::atomic<BlasSetThreads> g_numpy_blas_hook{nullptr};
std::mutex g_numpy_blas_lock;
std::atomic<int64_t> g_numpy_blas_calls{0};  // for the tests

void run_numpy_blas_jobs(int, BlasJob run, int jobs, size_t job_size, void* job_data, int data) {
  const auto job = [=](int i) { run(i, static_cast<char*>(job_data) + (size_t)i * job_size, data); };
  // One call's team at a time: a job's thread number picks OpenBLAS's per-thread buffers.
  std::lock_guard<std::mutex> lock(g_numpy_blas_lock);
  g_numpy_blas_calls.fetch_add(1);
  // The jobs of a GEMM wait on each other, so all of them run at once: jobs [first, jobs) on
  // threads of their own (where the pool cannot give a team of that size) beside job 0.
  const auto job0_and_own_threads = [&](int first) {
    std::vector<std::thread> extra;
    for (int i = first; i < jobs; ++i) extra.emplace_back(job, i);
    job(0);
    for (auto& t : extra) t.join();
  };
#ifndef _OPENMP
  job0_and_own_threads(1);
#else
  if (jobs <= 1 || omp_in_parallel()) return job0_and_own_threads(1);
#pragma omp parallel num_threads(jobs)
  {
    const int t = omp_get_thread_num();
    if (t == 0)
      job0_and_own_threads(omp_get_num_threads());
    else
      job(t);
  }
#endif
}

// A child made by fork() has only the forking thread: GNU OpenMP's pool threads are gone, and its
// next parallel region would wait for them forever. The child runs pydl's kernels on one thread
// (omp_set_num_threads only sets this thread's ICV; nothing of the old pool is touched).
void after_fork_in_child() {
  g_forked_child.store(true);
  // NumPy's OpenBLAS takes its own threads back (it restarts them after a fork).
  if (const BlasSetThreads hook = g_numpy_blas_hook.load()) hook(nullptr);
#ifdef _OPENMP
  omp_set_num_threads(1);
#endif
}
}  // namespace
}  // namespace pydl

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "pydl CPU kernels (C++, OpenMP, OpenBLAS)";
  // Module-local translator: tried before the process-wide list, which other extensions
  // (PyTorch) share and which crashed on our exceptions there.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const py::builtin_exception& e) {
      e.set_error();
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "pydl: out of memory");
    } catch (const std::exception& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
  // Exposed so tests can hold the C++ geometry against pydl/_geometry.py.
  // Stride 0 would divide by zero (SIGFPE): the one input these helpers cannot take.
  m.def("conv_out_size", [](int64_t i, int64_t k, int64_t s, int64_t p, int64_t d) {
    PYDL_CHECK(s > 0, "stride must be positive");
    return pydl::conv_out_size(i, k, s, p, d);
  });
  m.def("conv_transpose_out_size", &pydl::conv_transpose_out_size);
  m.def("pool_out_size", [](int64_t i, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
    PYDL_CHECK(s > 0, "stride must be positive");
    return pydl::pool_out_size(i, k, s, p, d, ceil_mode);
  });
  m.def("max_threads", &pydl::max_threads);
  pthread_atfork(nullptr, nullptr, &pydl::after_fork_in_child);
  m.def("_in_forked_child", [] { return pydl::g_forked_child.load(); },
        "Whether this process was forked after pydl was imported (its kernels then run on one thread).");
  // OpenMP's thread count is per calling thread (an ICV): pydl._backend calls this once in each
  // Python thread after pydl.set_num_threads changed the count. A forked child keeps one thread.
  m.def("_set_num_threads", [](int n) {
    PYDL_CHECK(n >= 1, "num_threads: expected an int >= 1, got " << n);
#ifdef _OPENMP
    omp_set_num_threads(pydl::g_forked_child.load() ? 1 : n);
#endif
  });
  // addr: NumPy's openblas_set_threads_callback_function (pydl._backend finds it).
  m.def("_share_pool_with_numpy_blas", [](uintptr_t addr) {
    const auto hook = reinterpret_cast<pydl::BlasSetThreads>(addr);
    hook(&pydl::run_numpy_blas_jobs);
    pydl::g_numpy_blas_hook.store(hook);
  });
  m.def("_numpy_blas_calls", [] { return pydl::g_numpy_blas_calls.load(); },
        "How many parallel calls of NumPy's OpenBLAS ran on pydl's pool (tests).");
  // Test-only: throws from C++ (with the GIL released, as kernels do) so tests can check that
  // each exception type reaches Python through the translator above and the process lives on.
  m.def("_test_raise", [](const std::string& kind) {
    py::gil_scoped_release nogil;
    if (kind == "bad_alloc") throw std::bad_alloc();
    if (kind == "runtime_error") throw std::runtime_error("pydl: test runtime_error");
    if (kind == "invalid_argument") throw std::invalid_argument("pydl: test invalid_argument");
    if (kind == "length_error") throw std::length_error("pydl: test length_error");
    if (kind == "vector") {  // a real failed allocation: more than the address space holds
      std::vector<double> v;
      v.reserve(size_t(1) << 59);  // 4 EiB: under max_size(), so operator new itself fails
    }
  });
  // Test-only: the largest int handed to BLAS (default INT32_MAX); lowering it runs pydl::gemm's
  // chunking for sizes past 32 bits on small matrices. Returns the previous value.
  m.def("_set_blas_int_max", [](int64_t v) {
    PYDL_CHECK(v >= 1 && v <= INT32_MAX, "_set_blas_int_max: expected 1 <= v <= 2**31 - 1");
    return pydl::blas_int_max().exchange(v);
  });
  // The SIMD variants the kernels may use (common.h): 0 = baseline only, 1 = up to AVX2/FMA,
  // 2 = up to AVX-512 (the CPU's own level caps it); tests lower it to run the baseline variants on every host.
  // Returns the previous cap.
  m.def("_set_simd_level", [](int v) {
    PYDL_CHECK(v >= 0, "_set_simd_level: expected an int >= 0, got " << v);
    return pydl::simd_level_cap().exchange(v);
  });
  m.def("_simd_level", &pydl::simd_level, "The SIMD level the kernels run at (0 baseline, 1 AVX2/FMA, 2 AVX-512).");
  pydl::bind_conv(m);
  pydl::bind_pool(m);
  pydl::bind_batch_norm(m);
  pydl::bind_cross_entropy(m);
  pydl::bind_nms(m);
  pydl::bind_roi_pool(m);
  pydl::bind_roi_align(m);
  pydl::bind_deform_conv(m);
  pydl::bind_interpolate(m);
  pydl::bind_local_response_norm(m);
  pydl::bind_soft_nms(m);
  pydl::bind_activation(m);
  pydl::bind_linear(m);
}
