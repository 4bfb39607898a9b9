// nms: CUDA kernels for greedy non-maximum suppression (plain and per-category) and box IoU.
//
// Math: exactly the CPU rule (csrc/nms.cpp), each operation rounded on its own (__f*_rn
// intrinsics: no FMA contraction), so both devices keep the same indices:
//   inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1)),  area = (x2-x1)*(y2-y1)
//   box b is suppressed by a kept box a when (double)(inter / (area_a + area_b - inter)) > thr.
// Order: decreasing score, ties to the lower index, NaN scores first.
//
// Pipeline, all on the caller's stream, one host sync (the final count, read by the glue):
//  1. desc_keys_kernel: scores -> unsigned keys whose ascending order is the greedy order
//     (NaN -> 0, -0.0 -> +0.0); values = 0..n-1. cub stable radix sort -> order (ties keep
//     the lower index first).
//  2. gather_kernel: boxes, areas and categories in sorted order (ranks).
//  3. Ranks are processed in chunks of kChunk = 512 (8 row blocks of 64). Memory: the mask of
//     one chunk, 512 * ceil(n/64) words (64 bytes per box): linear in n. For each chunk:
//     a. mask_kernel: block (column block cb, row block rb of the chunk, cb >= rb), 64 threads,
//        one row (rank) each: bit k of mask[row][cb] says row suppresses rank cb*64+k (later
//        ranks only). Rows already removed by earlier chunks, and removed columns, are skipped.
//     b. scan_kernel (one block of 512): copies the chunk's in-chunk words (512 x 8) and ranks
//        to shared memory, then per row block: thread 0 resolves its 64 rows with the diagonal
//        word (lowest pending bit = next kept box; its word removes later ones), writes kept
//        indices to out and the kept rows to a list; then one thread per (kept row, later
//        in-chunk word) ORs into the shared removed words (shared atomicOr: order-free).
//     c. propagate_kernel: removed[c] |= OR of the kept rows' words, for every word after the
//        chunk, in parallel over (32-word tile, 64-row slice): 256 threads = 32 words x 8 rows
//        in flight, one global atomicOr per word and slice (bitwise OR: deterministic).
//  box_iou_kernel: a block per (row of boxes1, tile of 256 columns), grid-stride both ways.
#include <cub/cub.cuh>

#include <algorithm>
#include <cstdint>

#include "common.cuh"

namespace pydl {
namespace {

using u64 = unsigned long long;
constexpr int kWord = 64;                  // boxes per mask word
constexpr int kChunk = 512;                // ranks per chunk
constexpr int kChunkBlocks = kChunk / kWord;
constexpr int kScanThreads = 512;          // >= (kChunkBlocks - 1) * kWord: one (row, word) pair each

template <typename T>
struct alignas(4 * sizeof(T)) Box4 {
  T x1, y1, x2, y2;
};

__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// std::max / std::min as the CPU spells them (NaN falls through the same way).
template <typename T>
__device__ __forceinline__ T max_(T a, T b) { return (a < b) ? b : a; }
template <typename T>
__device__ __forceinline__ T min_(T a, T b) { return (b < a) ? b : a; }

template <typename T>
__device__ __forceinline__ Box4<T> load_box(const T* p) { return Box4<T>{p[0], p[1], p[2], p[3]}; }

template <typename T>
__device__ __forceinline__ T area_of(const Box4<T>& b) {
  return mul_rn(sub_rn(b.x2, b.x1), sub_rn(b.y2, b.y1));
}

template <typename T>
__device__ __forceinline__ void inter_union(const Box4<T>& a, T aa, const Box4<T>& b, T ab, T& inter, T& uni) {
  const T w = max_(T(0), sub_rn(min_(a.x2, b.x2), max_(a.x1, b.x1)));
  const T h = max_(T(0), sub_rn(min_(a.y2, b.y2), max_(a.y1, b.y1)));
  inter = mul_rn(w, h);
  uni = sub_rn(add_rn(aa, ab), inter);
}

template <typename T>
__device__ __forceinline__ bool suppresses(const Box4<T>& a, T aa, const Box4<T>& b, T ab, double thr) {
  T inter, uni;
  inter_union(a, aa, b, ab, inter, uni);
  return static_cast<double>(div_rn(inter, uni)) > thr;  // 0/0 = NaN: never
}

// Keys whose ascending (stable) order is: NaN first, then decreasing score.
template <typename T>
struct KeyOf;
template <>
struct KeyOf<float> {
  using type = unsigned int;
  __device__ static type desc(float s) {
    if (s != s) return 0u;
    if (s == 0.0f) s = 0.0f;  // -0.0 ties with +0.0
    const unsigned int u = __float_as_uint(s);
    const unsigned int asc = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ~asc;  // +inf maps to 0x007fffff > 0: after NaN
  }
};
template <>
struct KeyOf<double> {
  using type = u64;
  __device__ static type desc(double s) {
    if (s != s) return 0ull;
    if (s == 0.0) s = 0.0;
    const u64 u = static_cast<u64>(__double_as_longlong(s));
    const u64 asc = (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
    return ~asc;
  }
};

template <typename T>
__global__ void desc_keys_kernel(const T* __restrict__ scores, int64_t n, typename KeyOf<T>::type* keys,
                                 int64_t* vals) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    keys[i] = KeyOf<T>::desc(scores[i]);
    vals[i] = i;
  }
}

template <typename T>
__global__ void gather_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ cls,
                              const int64_t* __restrict__ order, int64_t n, Box4<T>* sboxes, T* sarea,
                              int64_t* scls) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = order[k];
    const Box4<T> b = load_box(boxes + 4 * i);
    sboxes[k] = b;
    sarea[k] = area_of(b);
    scls[k] = cls ? cls[i] : 0;
  }
}

// grid (column blocks from cb0, row blocks of the chunk), 64 threads: one row (rank) each.
template <typename T>
__global__ void mask_kernel(const Box4<T>* __restrict__ sboxes, const T* __restrict__ sarea,
                            const int64_t* __restrict__ scls, const u64* __restrict__ removed, int64_t n,
                            int64_t nwords, int64_t r0, double thr, u64* __restrict__ mask) {
  const int64_t cb0 = r0 / kWord;
  const int64_t rb = cb0 + blockIdx.y;
  const int64_t cb = cb0 + blockIdx.x;
  if (cb < rb || rb * kWord >= n) return;  // lower triangle: earlier ranks never get suppressed
  const u64 rem_rows = removed[rb];
  const int64_t nrows = min(int64_t(kWord), n - rb * kWord);
  const u64 valid_rows = nrows == kWord ? ~0ull : ((1ull << nrows) - 1);
  if ((rem_rows & valid_rows) == valid_rows) return;  // every row already removed: never read

  __shared__ Box4<T> cbox[kWord];
  __shared__ T carea[kWord];
  __shared__ int64_t ccls[kWord];
  const int t = threadIdx.x;
  const int64_t ncols = min(int64_t(kWord), n - cb * kWord);
  if (t < ncols) {
    cbox[t] = sboxes[cb * kWord + t];
    carea[t] = sarea[cb * kWord + t];
    ccls[t] = scls[cb * kWord + t];
  }
  __syncthreads();
  if (t >= nrows || ((rem_rows >> t) & 1ull)) return;  // removed rows are never read by the scan
  const int64_t i = rb * kWord + t;
  const Box4<T> bi = sboxes[i];
  const T ai = sarea[i];
  const int64_t ci = scls[i];
  const u64 rem_cols = removed[cb];
  u64 word = 0;
  for (int k = (cb == rb) ? t + 1 : 0; k < ncols; ++k) {
    if ((rem_cols >> k) & 1ull) continue;  // already gone: its bit changes nothing
    if (ccls[k] == ci && suppresses(bi, ai, cbox[k], carea[k], thr)) word |= 1ull << k;
  }
  mask[(i - r0) * nwords + cb] = word;
}

// One block: resolves the ranks [r0, r0 + kChunk) in order (see 3b above).
__global__ void __launch_bounds__(kScanThreads) scan_kernel(const u64* __restrict__ mask,
                                                            const u64* __restrict__ removed,
                                                            const int64_t* __restrict__ order, int64_t n,
                                                            int64_t nwords, int64_t r0, int64_t* out,
                                                            int64_t* count, int64_t* kept_rows,
                                                            int64_t* kept_count) {
  __shared__ u64 sm[kChunk][kChunkBlocks];  // the chunk's own words: rows x in-chunk column blocks
  __shared__ u64 srem[kChunkBlocks];        // removed bits of the chunk's ranks
  __shared__ int64_t sorder[kChunk];
  __shared__ u64 kept_bits;
  const int t = threadIdx.x;
  const int64_t cb0 = r0 / kWord;
  const int nb = static_cast<int>(min(int64_t(kChunkBlocks), nwords - cb0));  // each holds >= 1 rank < n
  if (t < kChunkBlocks) srem[t] = t < nb ? removed[cb0 + t] : ~0ull;
  __syncthreads();
  // Exactly the words mask_kernel wrote: pending rows (removed[] has not changed since), w >= b.
  for (int e = t; e < kChunk * kChunkBlocks; e += blockDim.x) {
    const int row = e / kChunkBlocks, w = e % kChunkBlocks, b = row / kWord;
    u64 v = 0;
    if (b < nb && w >= b && w < nb && r0 + row < n && !((srem[b] >> (row % kWord)) & 1ull))
      v = mask[row * nwords + cb0 + w];
    sm[row][w] = v;
  }
  for (int row = t; row < kChunk; row += blockDim.x) sorder[row] = (r0 + row < n) ? order[r0 + row] : -1;
  __syncthreads();
  int64_t cnt = 0, kc = 0;  // thread 0's
  if (t == 0) cnt = *count;
  for (int b = 0; b < nb; ++b) {
    if (t == 0) {
      const int64_t nrows = min(int64_t(kWord), n - (cb0 + b) * kWord);
      const u64 valid = nrows == kWord ? ~0ull : ((1ull << nrows) - 1);
      u64 cur = srem[b] | ~valid;
      u64 kept = 0;
      while (cur != ~0ull) {
        const int k = __ffsll(static_cast<long long>(~cur)) - 1;  // lowest pending rank: kept
        kept |= 1ull << k;
        cur |= sm[b * kWord + k][b] | (1ull << k);  // the diagonal word holds later ranks only
        out[cnt++] = sorder[b * kWord + k];
        kept_rows[kc++] = b * kWord + k;
      }
      kept_bits = kept;
    }
    __syncthreads();
    const u64 kept = kept_bits;
    for (int p = t; p < (nb - b - 1) * kWord; p += blockDim.x) {
      const int w = b + 1 + p / kWord, k = p % kWord;
      if ((kept >> k) & 1ull) {
        const u64 v = sm[b * kWord + k][w];
        if (v) atomicOr(&srem[w], v);
      }
    }
    __syncthreads();  // srem and kept_bits settled before the next row block
  }
  if (t == 0) {
    *count = cnt;
    *kept_count = kc;
  }
}

// grid (32-word tiles from c_begin, 64-row slices of the kept list), 256 threads = 8 x 32.
__global__ void __launch_bounds__(256) propagate_kernel(const u64* __restrict__ mask, u64* removed,
                                                        const int64_t* __restrict__ kept_rows,
                                                        const int64_t* __restrict__ kept_count,
                                                        int64_t nwords, int64_t c_begin) {
  __shared__ u64 part[8][32];
  const int64_t kc = *kept_count;
  const int64_t k0 = int64_t(blockIdx.y) * kWord;
  if (k0 >= kc) return;  // uniform
  const int lane = threadIdx.x / 32, x = threadIdx.x % 32;
  const int64_t c = c_begin + int64_t(blockIdx.x) * 32 + x;
  u64 acc = 0;
  if (c < nwords) {
    const int64_t k1 = min(kc, k0 + kWord);
#pragma unroll 4
    for (int64_t k = k0 + lane; k < k1; k += 8) acc |= mask[kept_rows[k] * nwords + c];
  }
  part[lane][x] = acc;
  __syncthreads();
  if (lane == 0 && c < nwords) {
    u64 v = 0;
#pragma unroll
    for (int l = 0; l < 8; ++l) v |= part[l][x];
    if (v) atomicOr(&removed[c], v);
  }
}

// grid (column tiles, rows), both grid-stride: a block's threads share one boxes1 row.
template <typename T>
__global__ void box_iou_kernel(const T* __restrict__ b1, int64_t n, const T* __restrict__ b2, int64_t m,
                               T* __restrict__ out) {
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const Box4<T> a = load_box(b1 + 4 * i);
    const T aa = area_of(a);
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < m; j += int64_t(gridDim.x) * blockDim.x) {
      const Box4<T> b = load_box(b2 + 4 * j);
      T inter, uni;
      inter_union(a, aa, b, area_of(b), inter, uni);
      out[i * m + j] = (uni == T(0)) ? T(0) : div_rn(inter, uni);
    }
  }
}

// ------------------------------------------------------------------ workspace layout

int64_t align_up(int64_t v) { return (v + 255) / 256 * 256; }

template <typename T>
struct Layout {
  using K = typename KeyOf<T>::type;
  int64_t keys_in, keys_out, vals_in, order, sboxes, sarea, scls, removed, mask, kept, cub, total;
  size_t cub_bytes = 0;
  explicit Layout(int64_t n) {
    const int64_t nwords = (n + kWord - 1) / kWord;
    PYDL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, static_cast<const K*>(nullptr),
                                                    static_cast<K*>(nullptr), static_cast<const int64_t*>(nullptr),
                                                    static_cast<int64_t*>(nullptr), static_cast<int>(n)));
    int64_t off = 0;
    auto take = [&off](int64_t bytes) {
      const int64_t at = off;
      off += align_up(bytes);
      return at;
    };
    keys_in = take(n * sizeof(K));
    keys_out = take(n * sizeof(K));
    vals_in = take(n * 8);
    order = take(n * 8);
    sboxes = take(n * sizeof(Box4<T>));
    sarea = take(n * sizeof(T));
    scls = take(n * 8);
    removed = take(nwords * 8);
    mask = take(int64_t(kChunk) * nwords * 8);
    kept = take((kChunk + 1) * 8);  // kept rows of a chunk, then their count
    cub = take(static_cast<int64_t>(cub_bytes));
    total = off;
  }
};

template <typename T>
void nms_forward(dptr boxes, dptr scores, dptr idxs, int64_t n, double thr, dptr out, dptr count, dptr ws,
                 int64_t ws_bytes, dptr stream) {
  using K = typename KeyOf<T>::type;
  const Layout<T> L(n);
  PYDL_CHECK(ws_bytes >= L.total, "nms: workspace of " << ws_bytes << " bytes, need " << L.total);
  cudaStream_t s = as_stream(stream);
  char* w = as_ptr<char>(ws);
  K* keys_in = reinterpret_cast<K*>(w + L.keys_in);
  K* keys_out = reinterpret_cast<K*>(w + L.keys_out);
  int64_t* vals_in = reinterpret_cast<int64_t*>(w + L.vals_in);
  int64_t* order = reinterpret_cast<int64_t*>(w + L.order);
  Box4<T>* sboxes = reinterpret_cast<Box4<T>*>(w + L.sboxes);
  T* sarea = reinterpret_cast<T*>(w + L.sarea);
  int64_t* scls = reinterpret_cast<int64_t*>(w + L.scls);
  u64* removed = reinterpret_cast<u64*>(w + L.removed);
  u64* mask = reinterpret_cast<u64*>(w + L.mask);
  const int64_t nwords = (n + kWord - 1) / kWord;

  desc_keys_kernel<T><<<grid_for(n, 256), 256, 0, s>>>(as_ptr<const T>(scores), n, keys_in, vals_in);
  PYDL_LAUNCH_CHECK();
  size_t cub_bytes = L.cub_bytes;
  PYDL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(w + L.cub, cub_bytes, keys_in, keys_out, vals_in, order,
                                                  static_cast<int>(n), 0, int(sizeof(K) * 8), s));
  gather_kernel<T><<<grid_for(n, 256), 256, 0, s>>>(as_ptr<const T>(boxes), as_ptr<const int64_t>(idxs), order, n,
                                                    sboxes, sarea, scls);
  PYDL_LAUNCH_CHECK();
  PYDL_CUDA_CHECK(cudaMemsetAsync(removed, 0, nwords * 8, s));
  PYDL_CUDA_CHECK(cudaMemsetAsync(as_ptr<int64_t>(count), 0, 8, s));

  int64_t* kept_rows = reinterpret_cast<int64_t*>(w + L.kept);
  int64_t* kept_count = kept_rows + kChunk;
  for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
    const int64_t cb0 = r0 / kWord;
    const int64_t row_blocks = std::min<int64_t>(kChunkBlocks, nwords - cb0);
    dim3 grid(static_cast<unsigned>(nwords - cb0), static_cast<unsigned>(row_blocks));
    mask_kernel<T><<<grid, kWord, 0, s>>>(sboxes, sarea, scls, removed, n, nwords, r0, thr, mask);
    PYDL_LAUNCH_CHECK();
    scan_kernel<<<1, kScanThreads, 0, s>>>(mask, removed, order, n, nwords, r0, as_ptr<int64_t>(out),
                                           as_ptr<int64_t>(count), kept_rows, kept_count);
    PYDL_LAUNCH_CHECK();
    const int64_t c_begin = cb0 + row_blocks;
    if (c_begin < nwords) {
      dim3 pgrid(static_cast<unsigned>((nwords - c_begin + 31) / 32), static_cast<unsigned>(kChunkBlocks));
      propagate_kernel<<<pgrid, 256, 0, s>>>(mask, removed, kept_rows, kept_count, nwords, c_begin);
      PYDL_LAUNCH_CHECK();
    }
  }
}

template <typename T>
void box_iou_forward(dptr b1, int64_t n, dptr b2, int64_t m, dptr out, dptr stream) {
  const int64_t tiles = std::min<int64_t>((m + 255) / 256, 1024);
  const int64_t rows = std::min<int64_t>(n, 65535);
  dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(rows));
  box_iou_kernel<T><<<grid, 256, 0, as_stream(stream)>>>(as_ptr<const T>(b1), n, as_ptr<const T>(b2), m,
                                                         as_ptr<T>(out));
  PYDL_LAUNCH_CHECK();
}

void check_itemsize(int itemsize) {
  PYDL_CHECK(itemsize == 4 || itemsize == 8, "nms: itemsize must be 4 (float32) or 8 (float64), got " << itemsize);
}

}  // namespace

void bind_nms_cuda(py::module_& m) {
  m.def(
      "nms_workspace_bytes",
      [](int64_t n, int itemsize) -> int64_t {
        check_itemsize(itemsize);
        PYDL_CHECK(n > 0 && n < (int64_t(1) << 31), "nms: n must be in [1, 2^31), got " << n);
        return itemsize == 4 ? Layout<float>(n).total : Layout<double>(n).total;
      },
      py::arg("n"), py::arg("itemsize"));
  m.def(
      "nms_forward",
      [](dptr boxes, dptr scores, dptr idxs, int64_t n, double thr, int itemsize, dptr out, dptr count, dptr ws,
         int64_t ws_bytes, dptr stream) {
        check_itemsize(itemsize);
        PYDL_CHECK(n > 0 && n < (int64_t(1) << 31), "nms: n must be in [1, 2^31), got " << n);
        if (itemsize == 4)
          nms_forward<float>(boxes, scores, idxs, n, thr, out, count, ws, ws_bytes, stream);
        else
          nms_forward<double>(boxes, scores, idxs, n, thr, out, count, ws, ws_bytes, stream);
      },
      py::arg("boxes"), py::arg("scores"), py::arg("idxs"), py::arg("n"), py::arg("iou_threshold"),
      py::arg("itemsize"), py::arg("out"), py::arg("count"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("stream"),
      "Greedy NMS on device pointers (idxs 0: no categories); kept indices to out, their number to count.");
  m.def(
      "box_iou_forward",
      [](dptr b1, int64_t n, dptr b2, int64_t m2, int itemsize, dptr out, dptr stream) {
        check_itemsize(itemsize);
        if (n <= 0 || m2 <= 0) return;
        if (itemsize == 4)
          box_iou_forward<float>(b1, n, b2, m2, out, stream);
        else
          box_iou_forward<double>(b1, n, b2, m2, out, stream);
      },
      py::arg("boxes1"), py::arg("n"), py::arg("boxes2"), py::arg("m"), py::arg("itemsize"), py::arg("out"),
      py::arg("stream"));
}

}  // namespace pydl
