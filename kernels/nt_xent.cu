// Fused NT-Xent (the SimCLR loss) around one cuBLAS GEMM; the launchers and the full design are
// in src/backend/cuda/kernels/nt_xent.rs. z is [2N, D] (row-major), S = ẑẑᵀ is [2N, 2N] f32.
//
//   nt_xent_normalize_{f32,bf16}           ẑ = z / max(‖z‖, 1e-12) and the clamped norms; one warp per row
//   nt_xent_rows_f32                       per row: masked log-sum-exp, ℓ_i, and (optionally) S ← D in place
//   nt_xent_mean_f32                       deterministic mean of the ℓ_i (one block, fixed summation order)
//   nt_xent_normalize_backward_{f32,bf16}  dz = (g − ẑ⟨g, ẑ⟩)/‖z‖; one warp per row
#include "common.cuh"

#define NT_XENT_NORM_EPS 1e-12f

// ---------------------------------------------------------------- 16-byte packs
// Rows are read and written 16 bytes per lane (float4 = 4 f32, or 8 bf16) when the row length
// and the base addresses allow it; otherwise one element per lane. bf16 is unpacked with bit
// shifts (a bf16 is the high half of an f32), which is exact and needs no conversion intrinsics.

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename T> struct Pack {
    static constexpr int N = 16 / sizeof(T);
};

__device__ __forceinline__ void load_pack(const float* p, float* v) {
    const float4 q = load_vector<float4>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}

__device__ __forceinline__ void load_pack(const bf16* p, float* v) {
    const uint4 q = load_vector<uint4>(p);
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        v[2 * k] = __uint_as_float(w[k] << 16);            // element 2k: the low half (little-endian)
        v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);  // element 2k+1: the high half
    }
}

__device__ __forceinline__ void store_pack(float* p, const float* v) {
    store_vector(p, make_float4(v[0], v[1], v[2], v[3]));
}

// f32 -> bf16 bits, round to nearest even, NaN -> 0x7fff: what __float2bfloat16 gives.
__device__ __forceinline__ unsigned bf16_bits(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

__device__ __forceinline__ void store_pack(bf16* p, const float* v) {
    uint4 q;
    q.x = bf16_bits(v[0]) | (bf16_bits(v[1]) << 16);
    q.y = bf16_bits(v[2]) | (bf16_bits(v[3]) << 16);
    q.z = bf16_bits(v[4]) | (bf16_bits(v[5]) << 16);
    q.w = bf16_bits(v[6]) | (bf16_bits(v[7]) << 16);
    store_vector(p, q);
}

// ---------------------------------------------------------------- normalisation (one warp per row)
// D is the projection width (128 in SimCLR): a warp covers a 128-wide f32 row in one float4
// step, so a block per row would leave most threads idle. Warps past the last row leave
// together, before any shuffle.

template <typename T>
__device__ __forceinline__ void normalize_rows(const T* __restrict__ z, float* __restrict__ zhat,
                                               float* __restrict__ norms, int rows, int dim) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* zr = z + (long long)row * dim;
    float* out = zhat + (long long)row * dim;
    constexpr int V = Pack<T>::N;
    const bool vec = dim % V == 0 && aligned16(z) && aligned16(zhat);

    float ss = 0.0f;
    if (vec) {
        for (int c = lane * V; c < dim; c += 32 * V) {
            float v[V];
            load_pack(zr + c, v);
#pragma unroll
            for (int k = 0; k < V; ++k) ss += v[k] * v[k];
        }
    } else {
        for (int c = lane; c < dim; c += 32) {
            const float x = to_float(zr[c]);
            ss += x * x;
        }
    }
    // Clamp like F.normalize: a zero row becomes zero rather than NaN.
    const float n = fmaxf(sqrtf(warp_sum(ss)), NT_XENT_NORM_EPS);
    if (lane == 0) norms[row] = n;
    // Second read of the row: it was just loaded by this warp and is still in L1.
    if (vec) {
        for (int c = lane * V; c < dim; c += 32 * V) {
            float v[V];
            load_pack(zr + c, v);
#pragma unroll
            for (int k = 0; k < V; ++k) v[k] = v[k] / n;
#pragma unroll
            for (int k = 0; k < V; k += 4) store_pack(out + c + k, v + k);
        }
    } else {
        for (int c = lane; c < dim; c += 32) out[c] = to_float(zr[c]) / n;
    }
}

extern "C" __global__ void nt_xent_normalize_f32(const float* z, float* zhat, float* norms, int rows, int dim) {
    normalize_rows(z, zhat, norms, rows, dim);
}
extern "C" __global__ void nt_xent_normalize_bf16(const bf16* z, float* zhat, float* norms, int rows, int dim) {
    normalize_rows(z, zhat, norms, rows, dim);
}

// ---------------------------------------------------------------- the softmax pass (one block per row)
// Row i of S (2N cosine similarities) is read once with an online (running max, rescaled sum)
// log-sum-exp per thread, then the block combines the threads' pairs. The diagonal is skipped:
// s_ii = 1/τ is not a candidate. When a gradient is wanted the row is read again (it is in
// L1/L2: 2N floats) and overwritten with D_ij = (P_ij − [j = p(i)])·grad_scale, D_ii = 0.
// Rows have even length, so 8-byte float2 loads always work; float4 when 2N is a multiple of 4.

struct OnlineLse {
    float m = -INFINITY;  // running max
    float s = 0.0f;       // Σ exp(x − m)
    __device__ __forceinline__ void add(float x) {
        if (x > m) {
            s = s * expf(m - x) + 1.0f;  // exp(−inf) = 0 on the first element
            m = x;
        } else {
            s += expf(x - m);
        }
    }
};

template <int V> struct FloatVec;
template <> struct FloatVec<2> {
    __device__ __forceinline__ static void load(const float* p, float* v) {
        const float2 q = load_vector<float2>(p);
        v[0] = q.x, v[1] = q.y;
    }
    __device__ __forceinline__ static void store(float* p, const float* v) {
        store_vector(p, make_float2(v[0], v[1]));
    }
};
template <> struct FloatVec<4> {
    __device__ __forceinline__ static void load(const float* p, float* v) { load_pack(p, v); }
    __device__ __forceinline__ static void store(float* p, const float* v) { store_pack(p, v); }
};

template <int V>
__device__ __forceinline__ void softmax_row(float* __restrict__ s, float* __restrict__ row_loss, int two_n,
                                            float inv_tau, float grad_scale, int want_grad) {
    __shared__ float scratch[32];
    const int i = blockIdx.x;
    const int pos = i < two_n / 2 ? i + two_n / 2 : i - two_n / 2;  // p(i) = (i + N) mod 2N
    float* row = s + (long long)i * two_n;
    // Read before any thread overwrites the row (the block reductions below are barriers).
    const float positive = row[pos] * inv_tau;

    OnlineLse acc;
    for (int c = threadIdx.x * V; c < two_n; c += blockDim.x * V) {
        float v[V];
        FloatVec<V>::load(row + c, v);
#pragma unroll
        for (int k = 0; k < V; ++k)
            if (c + k != i) acc.add(v[k] * inv_tau);
    }
    // Combine: rescale every thread's sum to the block max. Threads without columns have
    // m = −inf and s = 0; at least one column (j ≠ i) exists since 2N ≥ 2. Short rows run
    // one warp per row, which needs no barrier.
    const bool one_warp = blockDim.x == 32;
    const float m = one_warp ? warp_max(acc.m) : block_max(acc.m, scratch);
    const float mine = acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - m);
    const float total = one_warp ? warp_sum(mine) : block_sum(mine, scratch);
    const float lse = m + logf(total);
    if (threadIdx.x == 0) row_loss[i] = lse - positive;
    if (!want_grad) return;

    const float inv_total = 1.0f / total;
    for (int c = threadIdx.x * V; c < two_n; c += blockDim.x * V) {
        float v[V];
        FloatVec<V>::load(row + c, v);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const int j = c + k;
            const float p = j == i ? 0.0f : expf(v[k] * inv_tau - m) * inv_total;
            v[k] = (p - (j == pos ? 1.0f : 0.0f)) * grad_scale;
        }
        FloatVec<V>::store(row + c, v);
    }
}

extern "C" __global__ void nt_xent_rows_f32(float* s, float* row_loss, int two_n, float inv_tau, float grad_scale,
                                            int want_grad) {
    // Uniform per launch: every block takes the same branch.
    if (two_n % 4 == 0 && aligned16(s))
        softmax_row<4>(s, row_loss, two_n, inv_tau, grad_scale, want_grad);
    else
        softmax_row<2>(s, row_loss, two_n, inv_tau, grad_scale, want_grad);
}

// ---------------------------------------------------------------- the mean (one block)
// Deterministic: each thread sums a fixed stride of rows in order, then a fixed-shape tree.
// No atomics, so the loss is bit-identical from run to run.
extern "C" __global__ void nt_xent_mean_f32(const float* row_loss, float* out, int rows, float scale) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) acc += row_loss[r];
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = total * scale;
}

// ---------------------------------------------------------------- back through the normalisation
// dz_i = (g_i − ẑ_i⟨g_i, ẑ_i⟩)/n_i with n_i the clamped norm. Where the norm was clamped
// (n_i = eps), ẑ = z/eps is linear in z and dz_i = g_i/eps, as in the CPU op.

template <typename T>
__device__ __forceinline__ void normalize_backward_rows(const float* __restrict__ g, const float* __restrict__ zhat,
                                                        const float* __restrict__ norms, T* __restrict__ dz, int rows,
                                                        int dim) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const long long base = (long long)row * dim;
    const float* gr = g + base;
    const float* zr = zhat + base;
    T* out = dz + base;
    constexpr int V = Pack<T>::N;
    const bool vec = dim % V == 0 && aligned16(g) && aligned16(zhat) && aligned16(dz);

    float dot = 0.0f;
    if (vec) {
        for (int c = lane * V; c < dim; c += 32 * V) {
            float a[V], b[V];
#pragma unroll
            for (int k = 0; k < V; k += 4) load_pack(gr + c + k, a + k), load_pack(zr + c + k, b + k);
#pragma unroll
            for (int k = 0; k < V; ++k) dot += a[k] * b[k];
        }
    } else {
        for (int c = lane; c < dim; c += 32) dot += gr[c] * zr[c];
    }
    dot = warp_sum(dot);
    const float n = norms[row];
    const float radial = n > NT_XENT_NORM_EPS ? dot : 0.0f;
    if (vec) {
        for (int c = lane * V; c < dim; c += 32 * V) {
            float a[V], b[V];
#pragma unroll
            for (int k = 0; k < V; k += 4) load_pack(gr + c + k, a + k), load_pack(zr + c + k, b + k);
#pragma unroll
            for (int k = 0; k < V; ++k) a[k] = (a[k] - b[k] * radial) / n;
            store_pack(out + c, a);
        }
    } else {
        for (int c = lane; c < dim; c += 32) out[c] = from_float<T>((gr[c] - zr[c] * radial) / n);
    }
}

extern "C" __global__ void nt_xent_normalize_backward_f32(const float* g, const float* zhat, const float* norms,
                                                          float* dz, int rows, int dim) {
    normalize_backward_rows(g, zhat, norms, dz, rows, dim);
}
extern "C" __global__ void nt_xent_normalize_backward_bf16(const float* g, const float* zhat, const float* norms,
                                                           bf16* dz, int rows, int dim) {
    normalize_backward_rows(g, zhat, norms, dz, rows, dim);
}
