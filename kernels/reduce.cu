// Reductions with f32 results: over the last axis of [rows, cols] (sum, mean, max), over the
// middle axis of [batch, rows, cols] (column sums: bias gradients, broadcast backward), and
// over a whole buffer (sum, sum of squares: gradient norms).
//
// Organisation.
// - Row reductions (reduce_{sum,mean,max}_rows): `tpr` threads per row, either one warp
//   (short rows: 8 rows per 256-thread block, no shared memory, no barriers) or the whole
//   block (long rows). Each thread strides through the row in 16-byte packs when the row
//   length keeps every row start aligned, scalars otherwise; then warp shuffles, then (block
//   mode) one pass through shared memory.
// - Column sums (reduce_sum_cols) are two-stage and atomic-free, so the result depends only
//   on the shape, never on scheduling: stage 1 gives each block a 32-column tile and a chunk
//   of rows; a warp reads 32 consecutive columns of a row (one coalesced 128-byte line for
//   f32) and the block's 8 warps take interleaved rows, then sum their 8 partials in a fixed
//   order. Stage 2 is the same kernel (f32) over the [chunks, cols] partials with one chunk.
// - Whole-buffer sums (reduce_sum_all, reduce_sumsq_all): stage 1 writes one partial per
//   block (grid-stride, packed loads, block tree), stage 2 is reduce_sum_all_f32 with one
//   block over the partials. The block count is a function of n alone (not of the GPU), so
//   results are reproducible across runs and devices.
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

// ------------------------------------------------------------------ reduction operators

struct SumOp {
    static __device__ __forceinline__ float identity() { return 0.0f; }
    static __device__ __forceinline__ float combine(float a, float b) { return a + b; }
    static __device__ __forceinline__ float warp(float v) { return warp_sum(v); }
    static __device__ __forceinline__ float block(float v, float* s) { return block_sum(v, s); }
    static __device__ __forceinline__ float finish(float v, int) { return v; }
};
struct MeanOp : SumOp {
    static __device__ __forceinline__ float finish(float v, int n) { return v / (float)n; }
};
struct MaxOp {
    static __device__ __forceinline__ float identity() { return -INFINITY; }
    static __device__ __forceinline__ float combine(float a, float b) { return fmaxf(a, b); }
    static __device__ __forceinline__ float warp(float v) { return warp_max(v); }
    static __device__ __forceinline__ float block(float v, float* s) { return block_max(v, s); }
    static __device__ __forceinline__ float finish(float v, int) { return v; }
};

// ------------------------------------------------------------------ rows: [rows, cols] -> [rows]

// tpr (threads per row) is 32 or blockDim.x; blockDim.x is a multiple of tpr.
template <typename T, typename Op>
__device__ __forceinline__ void reduce_rows(const T* __restrict__ x, float* __restrict__ out, int rows, int cols,
                                            int tpr) {
    __shared__ float scratch[32];
    const int rows_per_block = blockDim.x / tpr;
    const int lane = threadIdx.x % tpr;
    const long long row = (long long)blockIdx.x * rows_per_block + threadIdx.x / tpr;
    // Whole warps leave together (tpr >= 32), so the shuffles below always see 32 lanes; in
    // block mode the grid has exactly one block per row and nobody leaves.
    if (row >= rows) return;
    const T* xr = x + row * cols;
    float acc = Op::identity();
    constexpr int V = Pack<T>::N;
    int done = 0;
    if (cols % V == 0 && aligned16(x)) {
        for (int g = lane; g < cols / V; g += tpr) {
            const Pack<T> pk = load_vector<Pack<T>>(xr + (long long)g * V);
#pragma unroll
            for (int k = 0; k < V; ++k) acc = Op::combine(acc, to_float(pk.v[k]));
        }
        done = cols;
    }
    for (int c = done + lane; c < cols; c += tpr) acc = Op::combine(acc, to_float(xr[c]));
    acc = tpr == 32 ? Op::warp(acc) : Op::block(acc, scratch);
    if (lane == 0) out[row] = Op::finish(acc, cols);
}

}  // namespace

#define ROWS_KERNEL(name, Op)                                                                                     \
    extern "C" __global__ void name##_f32(const float* __restrict__ x, float* __restrict__ out, int rows, int cols, \
                                          int tpr) {                                                            \
        reduce_rows<float, Op>(x, out, rows, cols, tpr);                                                          \
    }                                                                                                             \
    extern "C" __global__ void name##_bf16(const bf16* __restrict__ x, float* __restrict__ out, int rows, int cols, \
                                           int tpr) {                                                           \
        reduce_rows<bf16, Op>(x, out, rows, cols, tpr);                                                           \
    }

ROWS_KERNEL(reduce_sum_rows, SumOp)
ROWS_KERNEL(reduce_mean_rows, MeanOp)
ROWS_KERNEL(reduce_max_rows, MaxOp)

// ------------------------------------------------------------------ columns: [batch, rows, cols] -> [batch, cols]

namespace {
#define COLS_TILE 32 // columns per block: one warp-wide line per row
#define COLS_WARPS 8 // blockDim = (32, 8)

// x is [batch, rows, cols]; block (tile + b * tiles, chunk) sums rows
// [chunk * rows_per_chunk, ...) of its 32 columns into out[b, chunk, col] ([batch, chunks, cols]).
template <typename T>
__device__ __forceinline__ void sum_cols(const T* __restrict__ x, float* __restrict__ out, int rows, int cols,
                                         int rows_per_chunk) {
    __shared__ float partial[COLS_WARPS][COLS_TILE];
    const int tiles = (cols + COLS_TILE - 1) / COLS_TILE;
    const int b = blockIdx.x / tiles, tile = blockIdx.x % tiles;
    const int chunk = blockIdx.y, chunks = gridDim.y;
    const int col = tile * COLS_TILE + threadIdx.x;
    const int r0 = chunk * rows_per_chunk;
    const int r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.0f;
    if (col < cols) {
        const T* xb = x + (long long)b * rows * cols + col;
        for (int r = r0 + threadIdx.y; r < r1; r += COLS_WARPS) acc += to_float(xb[(long long)r * cols]);
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        // Fixed order over the 8 row phases: deterministic.
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < COLS_WARPS; ++w) s += partial[w][threadIdx.x];
        out[((long long)b * chunks + chunk) * cols + col] = s;
    }
}

}  // namespace

extern "C" __global__ void reduce_sum_cols_f32(const float* __restrict__ x, float* __restrict__ out, int rows,
                                               int cols, int rows_per_chunk) {
    sum_cols(x, out, rows, cols, rows_per_chunk);
}
extern "C" __global__ void reduce_sum_cols_bf16(const bf16* __restrict__ x, float* __restrict__ out, int rows,
                                                int cols, int rows_per_chunk) {
    sum_cols(x, out, rows, cols, rows_per_chunk);
}

// ------------------------------------------------------------------ whole buffer -> one value per block

namespace {
struct Plain {
    static __device__ __forceinline__ float f(float v) { return v; }
};
struct Square {
    static __device__ __forceinline__ float f(float v) { return v * v; }
};

// out[blockIdx.x] = sum of F(x[i]) over the elements this block's threads visit.
template <typename T, typename F>
__device__ __forceinline__ void sum_all(const T* __restrict__ x, long long n, float* __restrict__ out) {
    __shared__ float scratch[32];
    constexpr int V = Pack<T>::N;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    float acc = 0.0f;
    long long done = 0;
    if (aligned16(x)) {
        const long long groups = n / V;
        for (long long g = tid; g < groups; g += stride) {
            const Pack<T> pk = load_vector<Pack<T>>(x + g * V);
#pragma unroll
            for (int k = 0; k < V; ++k) acc += F::f(to_float(pk.v[k]));
        }
        done = groups * V;
    }
    for (long long i = done + tid; i < n; i += stride) acc += F::f(to_float(x[i]));
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

}  // namespace

extern "C" __global__ void reduce_sum_all_f32(const float* __restrict__ x, long long n, float* __restrict__ out) {
    sum_all<float, Plain>(x, n, out);
}
extern "C" __global__ void reduce_sum_all_bf16(const bf16* __restrict__ x, long long n, float* __restrict__ out) {
    sum_all<bf16, Plain>(x, n, out);
}
extern "C" __global__ void reduce_sumsq_all_f32(const float* __restrict__ x, long long n, float* __restrict__ out) {
    sum_all<float, Square>(x, n, out);
}
extern "C" __global__ void reduce_sumsq_all_bf16(const bf16* __restrict__ x, long long n, float* __restrict__ out) {
    sum_all<bf16, Square>(x, n, out);
}
