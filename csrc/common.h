// Shared by every CPU kernel file: error checks that raise (never abort) and
// helpers that turn NumPy arrays into raw pointers.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <algorithm>
#include <atomic>
#include <cstring>
#include <cstdint>
#include <exception>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

// Throws std::invalid_argument (ValueError in Python) with file:line and the condition.
#define PYDL_CHECK(cond, msg)                                                              \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::ostringstream pydl_os_;                                                         \
      pydl_os_ << msg << " [" << __FILE__ << ":" << __LINE__ << ": " #cond "]";             \
      throw std::invalid_argument(pydl_os_.str());                                         \
    }                                                                                      \
  } while (0)

namespace pydl {

// OpenMP's thread count and id, 1 and 0 in a build without OpenMP.
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Threads of the current parallel region (1 outside one, or when its `if` was false).
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// C-contiguous array of T; pybind11 rejects other dtypes instead of converting.
template <typename T>
using carray = py::array_t<T, py::array::c_style>;

template <typename T>
inline const T* in_ptr(const carray<T>& a) { return a.data(); }

template <typename T>
inline T* out_ptr(carray<T>& a) {
  PYDL_CHECK(a.writeable(), "output array is read-only");
  return a.mutable_data();
}

// Optional array (None -> nullptr).
template <typename T>
inline const T* opt_ptr(const py::object& o) {
  if (o.is_none()) return nullptr;
  return o.cast<carray<T>>().data();
}

inline int64_t numel(const py::array& a) { return static_cast<int64_t>(a.size()); }

// dtypes compare by value (NumPy's EquivTypes, as pybind11's array_t check): an array that went
// through pickle carries a dtype equal to, not the same object as, np.dtype(np.float64).
inline bool same_dtype(const py::array& a, const py::array& b) {
  return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), b.dtype().ptr());
}

template <typename T>
inline bool has_dtype(const py::array& a) {
  return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<T>().ptr());
}

// The float dispatch of every binding that takes untyped arrays: calls f(T{}) with T float or
// double, the native-order dtype of `a`; anything else raises naming `name` (and `who`).
template <typename F>
decltype(auto) dispatch_float(const py::array& a, const char* who, const char* name, F&& f) {
  if (has_dtype<float>(a)) return f(float{});
  PYDL_CHECK(has_dtype<double>(a), who << ": " << name << " must be float32 or float64 in native byte order, got "
                                       << std::string(py::str(py::object(a.dtype()))));
  return f(double{});
}

// An exception must not leave an OpenMP region (std::terminate would kill the interpreter):
// code inside the region catches into this (the first one is kept), the region runs to its
// end, and the caller rethrows after it, so e.g. std::bad_alloc still becomes MemoryError.
class ParallelError {
 public:
  void capture() noexcept {
    bool expected = false;
    if (set_.compare_exchange_strong(expected, true)) err_ = std::current_exception();
  }
  void rethrow() const {
    if (err_) std::rethrow_exception(err_);
  }

 private:
  std::atomic<bool> set_{false};
  std::exception_ptr err_;
};

// Copies `bytes` from src (cache-resident scratch) to dst with non-temporal stores: for a large
// output written once, a plain store first reads every destination line from memory
// (read-for-ownership), a third of the traffic of a scatter-into-zeros kernel. Ends with a
// store fence, so the data is visible once the function returns (fence=false leaves it to the
// caller: one stream_fence() after many small copies). Only worth it for outputs well past the
// last-level cache: the lines go to memory, not to the cache.
inline void stream_copy(void* dst, const void* src, size_t bytes, bool fence = true) {
#if defined(__SSE2__)
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  size_t head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
  if (head > bytes) head = bytes;
  std::memcpy(d, s, head);
  d += head, s += head, bytes -= head;
  for (; bytes >= 64; bytes -= 64, d += 64, s += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 48), e);
  }
  std::memcpy(d, s, bytes);
  if (fence) _mm_sfence();
#else
  std::memcpy(dst, src, bytes);
#endif
}

// Streams 16 bytes from s to d (d 16-byte aligned) and zeroes them in s.
inline void stream_move16(char* d, char* s) {
#if defined(__SSE2__)
  _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(s), _mm_setzero_si128());
#else
  std::memcpy(d, s, 16);
  std::memset(s, 0, 16);
#endif
}

// The last-level cache a core shares, in bytes: Linux sysfs (sysconf reports the whole
// package's L3 on multi-CCX AMD parts, 256 MiB where a core sees 16 MiB), else 32 MiB.
inline int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t best = 0;
    for (int i = 0; i < 8; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
      std::ifstream level(dir + "level"), size(dir + "size");
      int lv = 0;
      int64_t v = 0;
      std::string unit;
      if (!(level >> lv) || !(size >> v)) continue;
      size >> unit;
      v <<= unit == "K" ? 10 : unit == "M" ? 20 : 0;
      if (lv >= 2 && v > best) best = v;
    }
    return best > 0 ? best : int64_t(32) << 20;
  }();
  return bytes;
}

// Orders the non-temporal stores of stream_copy(..., fence=false) calls before later stores.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// SIMD variants, the one dispatch mechanism of the C++ kernels: a hot kernel is compiled with
// PYDL_AVX2 (PYDL_AVX2_INL for the helpers it inlines) and for the baseline (and with PYDL_AVX512
// where that wins), and picks one at run time with use_avx2() / use_avx512(). They test the CPU's
// features, not its model (target_clones' "arch=haswell" sends AMD parts with AVX2 to the
// baseline), capped by _cpu._set_simd_level so that tests run the lower variants on every host.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PYDL_AVX2 __attribute__((target("avx2,fma")))
#define PYDL_AVX2_INL __attribute__((target("avx2,fma"), always_inline)) inline
#define PYDL_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define PYDL_AVX2
#define PYDL_AVX2_INL inline
#define PYDL_AVX512
#endif

// NAME PARAMS runs NAME_impl TARGS ARGS (an always_inline function) in the variant use_avx2()
// picks: NAME_avx2 (PYDL_AVX2) or NAME_base. PRE: a template head for templated kernels (with
// TARGS its arguments, e.g. <T>), or both empty.
#define PYDL_SIMD_DISPATCH(PRE, TARGS, RET, NAME, PARAMS, ARGS)                                        \
  PRE PYDL_AVX2 __attribute__((noinline)) RET NAME##_avx2 PARAMS { return NAME##_impl TARGS ARGS; } \
  PRE __attribute__((noinline)) RET NAME##_base PARAMS { return NAME##_impl TARGS ARGS; }           \
  PRE RET NAME PARAMS { return use_avx2() ? NAME##_avx2 TARGS ARGS : NAME##_base TARGS ARGS; }

// This CPU's level: 0 baseline, 1 AVX2 + FMA, 2 also AVX-512F.
inline int cpu_simd_level() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  static const int level = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return 0;
    return __builtin_cpu_supports("avx512f") ? 2 : 1;
  }();
  return level;
#else
  return 0;
#endif
}

// The level the kernels use: the CPU's, or lower where _cpu._set_simd_level asked.
inline std::atomic<int>& simd_level_cap() {
  static std::atomic<int> cap{1 << 30};
  return cap;
}
inline int simd_level() { return std::min(cpu_simd_level(), simd_level_cap().load(std::memory_order_relaxed)); }
inline bool use_avx2() { return simd_level() >= 1; }
// AVX-512 variants exist only where they measurably beat AVX2 (conv's grouped_direct).
inline bool use_avx512() { return simd_level() >= 2; }

}  // namespace pydl
