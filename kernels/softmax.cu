// softmax and log_softmax over the last axis of [rows, cols], forward and backward.
//
// Forward is the stable form: m = max(x), s = sum exp(x - m), then
//   softmax:     y = exp(x - m) / s            (a row of -inf gives zeros, as the CPU op)
//   log_softmax: y = (x - m) - log(s)          (subtracting the small log-sum last keeps precision)
// Backward (y is the forward output, dy the upstream gradient):
//   softmax:     dx = y * (dy - sum(dy * y))
//   log_softmax: dx = dy - exp(y) * sum(dy)
//
// Organisation: each row needs one or two row-wide reductions followed by an elementwise
// pass, so the aim is to read each row from global memory once.
// - *_warp kernels (cols <= 1024): one warp per row, 4 rows per 128-thread block. The row
//   lives in registers (each lane holds K <= 32 values, K a compile-time constant picked from
//   cols so the arrays stay in registers), reductions are warp shuffles: one read, one write,
//   no shared memory, no barriers. Lanes load 16-byte packs (4 f32 / 8 bf16 contiguous
//   elements) when cols is a multiple of the pack width, single elements otherwise.
// - *_block kernels (cols > 1024): one block per row.
//   Forward, `cached` = 1: the row is copied into dynamic shared memory (as f32) while the
//   maximum is taken, and the exp/sum and output passes read shared memory: one global read.
//   Forward, `cached` = 0 (rows too long for shared memory): an online pass keeps a running
//   (max, sum) per thread, rescaling the sum whenever the max grows, merged across the block;
//   then a second read writes the output. Two reads instead of the naive three.
//   Backward reads dy and y twice (a dot product, then the output); the second read of a row
//   just touched by the same block mostly hits L2.
// Arithmetic is f32; bf16 is rounded once on store.
//
// Helpers have internal linkage (anonymous namespaces): every kernel file is also compiled
// into one emulator library, where same-named helpers of different files would collide.
#include "common.cuh"

namespace {

template <typename T> struct alignas(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

#define WARP_ROWS 4 // rows per block in the warp kernels (blockDim.x = 32 * WARP_ROWS)

// Loads V contiguous elements at p (aligned when V > 1) as f32.
template <int V, typename T> __device__ __forceinline__ void load_n(const T* p, float* out) {
    if constexpr (V == 1) {
        out[0] = to_float(*p);
    } else {
        static_assert(V == Pack<T>::N, "V is 1 or a whole pack");
        const Pack<T> pk = load_vector<Pack<T>>(p);
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = to_float(pk.v[k]);
    }
}

template <int V, typename T> __device__ __forceinline__ void store_n(T* p, const float* in) {
    if constexpr (V == 1) {
        *p = from_float<T>(in[0]);
    } else {
        Pack<T> pk;
#pragma unroll
        for (int k = 0; k < V; ++k) pk.v[k] = from_float<T>(in[k]);
        store_vector(p, pk);
    }
}

// Lane `lane` owns columns (g * 32 + lane) * V + k for g < K / V, k < V: each load
// instruction of the warp covers 32 * V contiguous elements.
template <int K, int V> __device__ __forceinline__ int warp_col(int g, int lane) { return (g * 32 + lane) * V; }

// ------------------------------------------------------------------ forward, warp per row

template <typename T, bool LOG, int K, int V>
__device__ __forceinline__ void softmax_fwd_warp_row(const T* __restrict__ x, T* __restrict__ y, int cols, int lane) {
    float v[K];
    float m = -INFINITY;
#pragma unroll
    for (int g = 0; g < K / V; ++g) {
        const int c = warp_col<K, V>(g, lane);
        // With V > 1, cols is a multiple of V, so a pack is either wholly in the row or out.
        if (c < cols) {
            load_n<V>(x + c, v + g * V);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) v[g * V + k] = -INFINITY;
        }
#pragma unroll
        for (int k = 0; k < V; ++k) m = fmaxf(m, v[g * V + k]);
    }
    m = warp_max(m);
    // A row of -inf (fully masked): softmax gives zeros; log_softmax gives NaN as on the CPU.
    const bool empty = !LOG && m == -INFINITY;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        const float e = expf(v[i] - m); // out-of-row slots hold -inf: e = 0
        s += e;
        if (!LOG) v[i] = e;
    }
    s = warp_sum(s);
    if (LOG) {
        const float log_s = logf(s);
#pragma unroll
        for (int i = 0; i < K; ++i) v[i] = (v[i] - m) - log_s;
    } else {
        const float inv = empty ? 0.0f : 1.0f / s;
#pragma unroll
        for (int i = 0; i < K; ++i) v[i] = empty ? 0.0f : v[i] * inv;
    }
#pragma unroll
    for (int g = 0; g < K / V; ++g) {
        const int c = warp_col<K, V>(g, lane);
        if (c < cols) store_n<V>(y + c, v + g * V);
    }
}

// Picks K (values per lane) from cols and the pack width where it applies. Uniform per
// launch, so there is no divergence.
template <typename T, bool LOG, int K>
__device__ __forceinline__ void softmax_fwd_warp_k(const T* x, T* y, int cols, int lane, bool vec) {
    constexpr int P = Pack<T>::N;
    if constexpr (K >= P) {
        if (vec) {
            softmax_fwd_warp_row<T, LOG, K, P>(x, y, cols, lane);
            return;
        }
    }
    softmax_fwd_warp_row<T, LOG, K, 1>(x, y, cols, lane);
}

template <typename T, bool LOG>
__device__ __forceinline__ void softmax_fwd_warp(const T* __restrict__ x, T* __restrict__ y, int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * WARP_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return; // whole warps leave together
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    const bool vec = cols % Pack<T>::N == 0 && aligned16(x) && aligned16(y);
    if (cols <= 32) softmax_fwd_warp_k<T, LOG, 1>(xr, yr, cols, lane, vec);
    else if (cols <= 64) softmax_fwd_warp_k<T, LOG, 2>(xr, yr, cols, lane, vec);
    else if (cols <= 128) softmax_fwd_warp_k<T, LOG, 4>(xr, yr, cols, lane, vec);
    else if (cols <= 256) softmax_fwd_warp_k<T, LOG, 8>(xr, yr, cols, lane, vec);
    else if (cols <= 512) softmax_fwd_warp_k<T, LOG, 16>(xr, yr, cols, lane, vec);
    else softmax_fwd_warp_k<T, LOG, 32>(xr, yr, cols, lane, vec);
}

// ------------------------------------------------------------------ forward, block per row

// Merges a partial (max, sum of exp(x - max)) into (m, s). Empty partials have m = -inf.
__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
    const float mm = fmaxf(m, m2);
    if (mm == -INFINITY) return; // both empty (avoids exp(-inf - -inf) = NaN)
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

// Block-wide merge of every thread's (m, s); every thread gets the result.
__device__ __forceinline__ void block_online_merge(float& m, float& s) {
    __shared__ float sm[32], ss[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float m2 = __shfl_xor_sync(FULL_MASK, m, off);
        const float s2 = __shfl_xor_sync(FULL_MASK, s, off);
        online_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    m = lane < warps ? sm[lane] : -INFINITY;
    s = lane < warps ? ss[lane] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float m2 = __shfl_xor_sync(FULL_MASK, m, off);
        const float s2 = __shfl_xor_sync(FULL_MASK, s, off);
        online_merge(m, s, m2, s2);
    }
    __syncthreads(); // sm/ss may be reused
}

// Writes row y from x, m and s (the second pass of both block variants).
template <typename T, bool LOG, int V>
__device__ __forceinline__ void softmax_write(const float* v, T* yr, float m, float s) {
    float o[V];
    if (LOG) {
        const float log_s = logf(s);
#pragma unroll
        for (int k = 0; k < V; ++k) o[k] = (v[k] - m) - log_s;
    } else if (m == -INFINITY) {
#pragma unroll
        for (int k = 0; k < V; ++k) o[k] = 0.0f;
    } else {
        const float inv = 1.0f / s;
#pragma unroll
        for (int k = 0; k < V; ++k) o[k] = expf(v[k] - m) * inv;
    }
    store_n<V>(yr, o);
}

template <typename T, bool LOG, int V>
__device__ __forceinline__ void softmax_fwd_block_v(const T* __restrict__ xr, T* __restrict__ yr, int cols,
                                                    bool cached) {
    __shared__ float scratch[32];
    SIMCLR_DYNAMIC_SMEM(float, row);
    const int t = threadIdx.x, step = blockDim.x * V;
    if (cached) {
        // Pass 1: global -> shared, and the max. Each thread later reads back only the
        // elements it wrote itself, so no barrier is needed beyond the reductions'.
        float m = -INFINITY;
        for (int c = t * V; c < cols; c += step) {
            float v[V];
            load_n<V>(xr + c, v);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                row[c + k] = v[k];
                m = fmaxf(m, v[k]);
            }
        }
        m = block_max(m, scratch);
        float s = 0.0f;
        for (int c = t * V; c < cols; c += step) {
#pragma unroll
            for (int k = 0; k < V; ++k) s += expf(row[c + k] - m);
        }
        s = block_sum(s, scratch);
        for (int c = t * V; c < cols; c += step) softmax_write<T, LOG, V>(row + c, yr + c, m, s);
    } else {
        // Online: one read for (max, sum), one read to write.
        float m = -INFINITY, s = 0.0f;
        for (int c = t * V; c < cols; c += step) {
            float v[V];
            load_n<V>(xr + c, v);
            float vm = v[0];
#pragma unroll
            for (int k = 1; k < V; ++k) vm = fmaxf(vm, v[k]);
            if (vm > m) { // rescale the running sum once per pack, not per element
                s *= expf(m - vm); // m = -inf at first: exp(-inf) = 0, and s is 0 anyway
                m = vm;
            }
            if (m != -INFINITY) {
#pragma unroll
                for (int k = 0; k < V; ++k) s += expf(v[k] - m);
            }
        }
        block_online_merge(m, s);
        for (int c = t * V; c < cols; c += step) {
            float v[V];
            load_n<V>(xr + c, v);
            softmax_write<T, LOG, V>(v, yr + c, m, s);
        }
    }
}

template <typename T, bool LOG>
__device__ __forceinline__ void softmax_fwd_block(const T* __restrict__ x, T* __restrict__ y, int cols, int cached) {
    const long long row = blockIdx.x;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    if (cols % Pack<T>::N == 0 && aligned16(x) && aligned16(y)) {
        softmax_fwd_block_v<T, LOG, Pack<T>::N>(xr, yr, cols, cached != 0);
    } else {
        softmax_fwd_block_v<T, LOG, 1>(xr, yr, cols, cached != 0);
    }
}

// ------------------------------------------------------------------ backward

// dx from (dy, y) and the row reduction r (softmax: sum dy*y; log_softmax: sum dy).
template <bool LOG> __device__ __forceinline__ float softmax_grad(float g, float y, float r) {
    return LOG ? g - expf(y) * r : y * (g - r);
}

template <typename T, bool LOG, int K, int V>
__device__ __forceinline__ void softmax_bwd_warp_row(const T* __restrict__ dy, const T* __restrict__ y,
                                                     T* __restrict__ dx, int cols, int lane) {
    float g[K], w[K];
    float r = 0.0f;
#pragma unroll
    for (int gi = 0; gi < K / V; ++gi) {
        const int c = warp_col<K, V>(gi, lane);
        if (c < cols) {
            load_n<V>(dy + c, g + gi * V);
            load_n<V>(y + c, w + gi * V);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) g[gi * V + k] = w[gi * V + k] = 0.0f;
        }
#pragma unroll
        for (int k = 0; k < V; ++k) r += LOG ? g[gi * V + k] : g[gi * V + k] * w[gi * V + k];
    }
    r = warp_sum(r);
#pragma unroll
    for (int gi = 0; gi < K / V; ++gi) {
        const int c = warp_col<K, V>(gi, lane);
        if (c < cols) {
            float o[V];
#pragma unroll
            for (int k = 0; k < V; ++k) o[k] = softmax_grad<LOG>(g[gi * V + k], w[gi * V + k], r);
            store_n<V>(dx + c, o);
        }
    }
}

template <typename T, bool LOG, int K>
__device__ __forceinline__ void softmax_bwd_warp_k(const T* dy, const T* y, T* dx, int cols, int lane, bool vec) {
    constexpr int P = Pack<T>::N;
    if constexpr (K >= P) {
        if (vec) {
            softmax_bwd_warp_row<T, LOG, K, P>(dy, y, dx, cols, lane);
            return;
        }
    }
    softmax_bwd_warp_row<T, LOG, K, 1>(dy, y, dx, cols, lane);
}

template <typename T, bool LOG>
__device__ __forceinline__ void softmax_bwd_warp(const T* __restrict__ dy, const T* __restrict__ y,
                                                 T* __restrict__ dx, int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * WARP_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const long long off = row * cols;
    const bool vec = cols % Pack<T>::N == 0 && aligned16(dy) && aligned16(y) && aligned16(dx);
    if (cols <= 32) softmax_bwd_warp_k<T, LOG, 1>(dy + off, y + off, dx + off, cols, lane, vec);
    else if (cols <= 64) softmax_bwd_warp_k<T, LOG, 2>(dy + off, y + off, dx + off, cols, lane, vec);
    else if (cols <= 128) softmax_bwd_warp_k<T, LOG, 4>(dy + off, y + off, dx + off, cols, lane, vec);
    else if (cols <= 256) softmax_bwd_warp_k<T, LOG, 8>(dy + off, y + off, dx + off, cols, lane, vec);
    else if (cols <= 512) softmax_bwd_warp_k<T, LOG, 16>(dy + off, y + off, dx + off, cols, lane, vec);
    else softmax_bwd_warp_k<T, LOG, 32>(dy + off, y + off, dx + off, cols, lane, vec);
}

template <typename T, bool LOG, int V>
__device__ __forceinline__ void softmax_bwd_block_v(const T* __restrict__ dy, const T* __restrict__ y,
                                                    T* __restrict__ dx, int cols) {
    __shared__ float scratch[32];
    const int t = threadIdx.x, step = blockDim.x * V;
    float r = 0.0f;
    for (int c = t * V; c < cols; c += step) {
        float g[V], w[V];
        load_n<V>(dy + c, g);
        if (!LOG) load_n<V>(y + c, w);
#pragma unroll
        for (int k = 0; k < V; ++k) r += LOG ? g[k] : g[k] * w[k];
    }
    r = block_sum(r, scratch);
    for (int c = t * V; c < cols; c += step) {
        float g[V], w[V], o[V];
        load_n<V>(dy + c, g);
        load_n<V>(y + c, w);
#pragma unroll
        for (int k = 0; k < V; ++k) o[k] = softmax_grad<LOG>(g[k], w[k], r);
        store_n<V>(dx + c, o);
    }
}

template <typename T, bool LOG>
__device__ __forceinline__ void softmax_bwd_block(const T* __restrict__ dy, const T* __restrict__ y,
                                                  T* __restrict__ dx, int cols) {
    const long long off = (long long)blockIdx.x * cols;
    if (cols % Pack<T>::N == 0 && aligned16(dy) && aligned16(y) && aligned16(dx)) {
        softmax_bwd_block_v<T, LOG, Pack<T>::N>(dy + off, y + off, dx + off, cols);
    } else {
        softmax_bwd_block_v<T, LOG, 1>(dy + off, y + off, dx + off, cols);
    }
}

} // namespace

// ------------------------------------------------------------------ exported kernels

#define SOFTMAX_KERNELS(T, SUF)                                                                                   \
    extern "C" __global__ void softmax_fwd_warp_##SUF(const T* __restrict__ x, T* __restrict__ y, int rows,       \
                                                      int cols) {                                                 \
        softmax_fwd_warp<T, false>(x, y, rows, cols);                                                             \
    }                                                                                                             \
    extern "C" __global__ void log_softmax_fwd_warp_##SUF(const T* __restrict__ x, T* __restrict__ y, int rows,   \
                                                          int cols) {                                             \
        softmax_fwd_warp<T, true>(x, y, rows, cols);                                                              \
    }                                                                                                             \
    extern "C" __global__ void softmax_fwd_block_##SUF(const T* __restrict__ x, T* __restrict__ y, int cols,      \
                                                       int cached) {                                              \
        softmax_fwd_block<T, false>(x, y, cols, cached);                                                          \
    }                                                                                                             \
    extern "C" __global__ void log_softmax_fwd_block_##SUF(const T* __restrict__ x, T* __restrict__ y, int cols,  \
                                                           int cached) {                                          \
        softmax_fwd_block<T, true>(x, y, cols, cached);                                                           \
    }                                                                                                             \
    extern "C" __global__ void softmax_bwd_warp_##SUF(const T* __restrict__ dy, const T* __restrict__ y,          \
                                                      T* __restrict__ dx, int rows, int cols) {                   \
        softmax_bwd_warp<T, false>(dy, y, dx, rows, cols);                                                        \
    }                                                                                                             \
    extern "C" __global__ void log_softmax_bwd_warp_##SUF(const T* __restrict__ dy, const T* __restrict__ y,      \
                                                          T* __restrict__ dx, int rows, int cols) {               \
        softmax_bwd_warp<T, true>(dy, y, dx, rows, cols);                                                         \
    }                                                                                                             \
    extern "C" __global__ void softmax_bwd_block_##SUF(const T* __restrict__ dy, const T* __restrict__ y,         \
                                                       T* __restrict__ dx, int cols) {                            \
        softmax_bwd_block<T, false>(dy, y, dx, cols);                                                             \
    }                                                                                                             \
    extern "C" __global__ void log_softmax_bwd_block_##SUF(const T* __restrict__ dy, const T* __restrict__ y,     \
                                                           T* __restrict__ dx, int cols) {                        \
        softmax_bwd_block<T, true>(dy, y, dx, cols);                                                              \
    }

SOFTMAX_KERNELS(float, f32)
SOFTMAX_KERNELS(bf16, bf16)
