// Batch normalisation of x: [N, C, H, W] (NCHW, contiguous) per channel, over M = N·H·W values.
//
//   training: μ, σ² = mean and biased variance of the channel, r = 1/√(σ² + eps),
//             y = γ·(x − μ)·r + β; saves μ and r; running ← (1 − momentum)·running
//             + momentum·batch with the UNBIASED variance σ²·M/(M − 1) (PyTorch's rule)
//   eval:     the same with μ = running mean, σ² = running variance
//   backward: x̂ = (x − μ)·r, dγ = Σ dy·x̂, dβ = Σ dy,
//             dx = γ·r·(dy − Σdy/M − x̂·Σ(dy·x̂)/M)   (training; eval: dx = γ·r·dy)
//
// x, y, dy, dx are f32 or bf16; γ, β, the saved and running statistics, dγ, dβ are f32.
//
// Organisation. A channel's values are N planes of H·W contiguous elements, C·H·W apart. Every
// kernel runs on a grid (C, S): block (c, s) handles the images [s·N/S, (s+1)·N/S) of channel c,
// so a channel is spread over S blocks when N·H·W is large (S = 1 for small inputs: a block per
// channel). Inside a block, threads tile the planes: tw = min(H·W chunks, blockDim) threads along
// a plane and blockDim/tw planes at once, so 7×7 maps do not leave most of a 256-thread block idle
// and there is no per-element division. Chunks are 4 elements (16-byte f32 / 8-byte bf16 loads)
// when H·W % 4 == 0, else 1.
//
//   training forward = batchnorm_stats (each block: count, mean and M2 = Σ(x − mean)² of its slice,
//                      one pass, sums shifted by a sample of the slice so they do not cancel)
//                    + batchnorm_fwd_train (each block pools its channel's S partials exactly —
//                      mean = Σ nᵢmᵢ/M, M2 = Σ M2ᵢ + nᵢ(mᵢ − mean)² — then normalises its slice;
//                      block s = 0 also writes the saved and running statistics)
//   eval forward     = batchnorm_fwd_eval
//   backward         = batchnorm_bwd_reduce (per-block Σdy, Σdy·x̂) + batchnorm_bwd_dx (pools the
//                      S partials, writes dγ/dβ from block s = 0, and dx)
// All sums are fixed-order block reductions: no atomics, bit-reproducible results.
#include "common.cuh"

namespace {


// ---- the (channel, image range) slice of a block and its thread tiling ---------------------------

// First image of split s of S over N images (the same formula everywhere, so that the pooling
// step recomputes each partial's count exactly).
__device__ __forceinline__ long long bn_split_begin(int s, int splits, int n) { return (long long)s * n / splits; }

struct BnSlice {
    long long n0, n1;  // images [n0, n1) of channel blockIdx.x
    int tw, ip;        // threads along a plane, planes at once
    int tx, ty;        // this thread: chunk offset in a plane, plane offset
};

template <int VEC>
__device__ __forceinline__ BnSlice bn_slice(int n, int hw) {
    BnSlice s;
    s.n0 = bn_split_begin(blockIdx.y, gridDim.y, n);
    s.n1 = bn_split_begin(blockIdx.y + 1, gridDim.y, n);
    const int chunks = hw / VEC, threads = blockDim.x;
    s.tw = chunks < threads ? chunks : threads;
    s.ip = threads / s.tw;
    s.tx = threadIdx.x % s.tw;
    s.ty = threadIdx.x / s.tw;
    return s;
}

// Calls f(e) for the first element e of every chunk of this thread in the block's slice.
template <int VEC, typename F>
__device__ __forceinline__ void bn_visit(const BnSlice& s, int c_count, int hw, F f) {
    if (s.ty >= s.ip) return;  // left-over threads when tw does not divide blockDim
    const int chunks = hw / VEC;
    const long long c = blockIdx.x;
    for (long long n = s.n0 + s.ty; n < s.n1; n += s.ip) {
        const long long base = (n * c_count + c) * hw;
#pragma unroll 4
        for (int i = s.tx; i < chunks; i += s.tw) f(base + (long long)i * VEC);
    }
}

// r from the second statistic: either r itself or a variance.
__device__ __forceinline__ float bn_rstd(const float* stat2, int is_var, float eps, int c) {
    return is_var ? rsqrtf(stat2[c] + eps) : stat2[c];
}

// ---- training statistics -------------------------------------------------------------------------

// partial[(c·S + s)·2 + {0, 1}] = mean and M2 of block (c, s)'s slice.
template <typename T, int VEC>
__device__ __forceinline__ void bn_stats_impl(const T* __restrict__ x, int n, int c_count, int hw,
                                              float* __restrict__ partial) {
    __shared__ float scratch[32];
    const BnSlice s = bn_slice<VEC>(n, hw);
    const int c = blockIdx.x;
    // Shift by one value of the slice: Σ(x − k) and Σ(x − k)² stay small when k is near the mean,
    // so M2 = Σ(x − k)² − (Σ(x − k))²/n does not cancel the way Σx² − (Σx)²/n would.
    const float k = s.n1 > s.n0 ? to_float(x[(s.n0 * c_count + c) * hw]) : 0.0f;
    float s1 = 0.0f, s2 = 0.0f;
    bn_visit<VEC>(s, c_count, hw, [&](long long e) {
        float v[VEC];
        vec_load<VEC>(x + e, v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const float d = v[j] - k;
            s1 += d;
            s2 += d * d;
        }
    });
    s1 = block_sum(s1, scratch);
    s2 = block_sum(s2, scratch);
    if (threadIdx.x == 0) {
        const float cnt = (float)((s.n1 - s.n0) * hw);
        float* out = partial + ((long long)c * gridDim.y + blockIdx.y) * 2;
        out[0] = cnt > 0.0f ? k + s1 / cnt : 0.0f;
        out[1] = cnt > 0.0f ? fmaxf(s2 - s1 * s1 / cnt, 0.0f) : 0.0f;
    }
}

// Channel blockIdx.x's mean and M2 pooled from its S = gridDim.y partials (by warp 0, in a fixed
// order), returned to every thread of the block.
__device__ __forceinline__ void bn_pool_stats(const float* __restrict__ partial, int n, int hw, float* shared2,
                                              float& mean, float& m2) {
    const int splits = gridDim.y;
    const float* p = partial + (long long)blockIdx.x * splits * 2;
    if (threadIdx.x < 32) {
        const float total = (float)n * (float)hw;
        float a = 0.0f;
        for (int i = threadIdx.x; i < splits; i += 32) {
            const float cnt = (float)((bn_split_begin(i + 1, splits, n) - bn_split_begin(i, splits, n)) * hw);
            a += cnt * p[2 * i];
        }
        const float mu = warp_sum(a) / total;
        float b = 0.0f;
        for (int i = threadIdx.x; i < splits; i += 32) {
            const float cnt = (float)((bn_split_begin(i + 1, splits, n) - bn_split_begin(i, splits, n)) * hw);
            const float d = p[2 * i] - mu;
            b += p[2 * i + 1] + cnt * d * d;
        }
        b = warp_sum(b);
        if (threadIdx.x == 0) shared2[0] = mu, shared2[1] = b;
    }
    __syncthreads();
    mean = shared2[0];
    m2 = shared2[1];
}

// ---- forward -------------------------------------------------------------------------------------

// y = (x − μ)·(γ·r) + β over the block's slice.
template <typename T, int VEC>
__device__ __forceinline__ void bn_normalise(const BnSlice& s, const T* __restrict__ x, T* __restrict__ y,
                                             int c_count, int hw, float mean, float scale, float shift) {
    bn_visit<VEC>(s, c_count, hw, [&](long long e) {
        float v[VEC];
        vec_load<VEC>(x + e, v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = (v[j] - mean) * scale + shift;
        vec_store<VEC>(y + e, v);
    });
}

template <typename T, int VEC>
__device__ __forceinline__ void bn_fwd_train_impl(const T* __restrict__ x, const float* __restrict__ gamma,
                                                  const float* __restrict__ beta, const float* __restrict__ partial,
                                                  int n, int c_count, int hw, float eps, float momentum,
                                                  T* __restrict__ y, float* __restrict__ save_mean,
                                                  float* __restrict__ save_rstd, float* __restrict__ run_mean,
                                                  float* __restrict__ run_var) {
    __shared__ float pooled[2];
    const int c = blockIdx.x;
    float mean, m2;
    bn_pool_stats(partial, n, hw, pooled, mean, m2);
    const double total = (double)n * hw;
    const float r = rsqrtf(m2 / (float)total + eps);
    if (blockIdx.y == 0 && threadIdx.x == 0) {
        save_mean[c] = mean;
        save_rstd[c] = r;
        if (run_mean) {
            const float unbiased = m2 / (float)(total - 1.0);
            run_mean[c] = (1.0f - momentum) * run_mean[c] + momentum * mean;
            run_var[c] = (1.0f - momentum) * run_var[c] + momentum * unbiased;
        }
    }
    const float scale = gamma ? gamma[c] * r : r;
    bn_normalise<T, VEC>(bn_slice<VEC>(n, hw), x, y, c_count, hw, mean, scale, beta ? beta[c] : 0.0f);
}

template <typename T, int VEC>
__device__ __forceinline__ void bn_fwd_eval_impl(const T* __restrict__ x, const float* __restrict__ gamma,
                                                 const float* __restrict__ beta, const float* __restrict__ run_mean,
                                                 const float* __restrict__ run_var, int n, int c_count, int hw,
                                                 float eps, T* __restrict__ y) {
    const int c = blockIdx.x;
    const float r = rsqrtf(run_var[c] + eps);
    const float scale = gamma ? gamma[c] * r : r;
    bn_normalise<T, VEC>(bn_slice<VEC>(n, hw), x, y, c_count, hw, run_mean[c], scale, beta ? beta[c] : 0.0f);
}

// ---- backward ------------------------------------------------------------------------------------

// partial[(c·S + s)·2 + {0, 1}] = Σdy and Σdy·x̂ over block (c, s)'s slice.
template <typename T, int VEC>
__device__ __forceinline__ void bn_bwd_reduce_impl(const T* __restrict__ x, const T* __restrict__ dy,
                                                   const float* __restrict__ mean, const float* __restrict__ stat2,
                                                   int is_var, float eps, int n, int c_count, int hw,
                                                   float* __restrict__ partial) {
    __shared__ float scratch[32];
    const int c = blockIdx.x;
    const float mu = mean[c], r = bn_rstd(stat2, is_var, eps, c);
    float sg = 0.0f, sgx = 0.0f;
    bn_visit<VEC>(bn_slice<VEC>(n, hw), c_count, hw, [&](long long e) {
        float xv[VEC], g[VEC];
        vec_load<VEC>(x + e, xv);
        vec_load<VEC>(dy + e, g);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            sg += g[j];
            sgx += g[j] * (xv[j] - mu) * r;
        }
    });
    sg = block_sum(sg, scratch);
    sgx = block_sum(sgx, scratch);
    if (threadIdx.x == 0) {
        float* out = partial + ((long long)c * gridDim.y + blockIdx.y) * 2;
        out[0] = sg;
        out[1] = sgx;
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void bn_bwd_dx_impl(const T* __restrict__ x, const T* __restrict__ dy,
                                               const float* __restrict__ gamma, const float* __restrict__ mean,
                                               const float* __restrict__ stat2, int is_var, float eps,
                                               const float* __restrict__ partial, int n, int c_count, int hw,
                                               int training, T* __restrict__ dx, float* __restrict__ dgamma,
                                               float* __restrict__ dbeta) {
    __shared__ float sums[2];
    const int c = blockIdx.x, splits = gridDim.y;
    if (threadIdx.x < 32) {  // pool the S partials, fixed order
        const float* p = partial + (long long)c * splits * 2;
        float a = 0.0f, b = 0.0f;
        for (int i = threadIdx.x; i < splits; i += 32) a += p[2 * i], b += p[2 * i + 1];
        a = warp_sum(a);
        b = warp_sum(b);
        if (threadIdx.x == 0) sums[0] = a, sums[1] = b;
    }
    __syncthreads();
    const float sum_g = sums[0], sum_gx = sums[1];
    if (blockIdx.y == 0 && threadIdx.x == 0) {
        if (dgamma) dgamma[c] = sum_gx;
        if (dbeta) dbeta[c] = sum_g;
    }
    const float mu = mean[c], r = bn_rstd(stat2, is_var, eps, c);
    const float a = (gamma ? gamma[c] : 1.0f) * r;
    const double total = (double)n * hw;
    const float k1 = training ? (float)(sum_g / total) : 0.0f;
    const float k2 = training ? (float)(sum_gx / total) : 0.0f;
    bn_visit<VEC>(bn_slice<VEC>(n, hw), c_count, hw, [&](long long e) {
        float xv[VEC], g[VEC];
        vec_load<VEC>(x + e, xv);
        vec_load<VEC>(dy + e, g);
#pragma unroll
        for (int j = 0; j < VEC; ++j) xv[j] = a * (g[j] - k1 - (xv[j] - mu) * r * k2);
        vec_store<VEC>(dx + e, xv);
    });
}

}  // namespace

// ---- exported kernels: grid (C, S), 1-D blocks (a multiple of 32 threads) -----------------------
// `vec` (0/1) selects 4-element chunks; the launcher sets it only when H·W % 4 == 0 and the
// buffers are aligned for it.

#define BN_KERNELS(T, SUF)                                                                                       \
    extern "C" __global__ void batchnorm_stats_##SUF(const T* x, int n, int c_count, int hw, int vec,             \
                                                     float* partial) {                                          \
        if (vec) bn_stats_impl<T, 4>(x, n, c_count, hw, partial);                                                \
        else bn_stats_impl<T, 1>(x, n, c_count, hw, partial);                                                    \
    }                                                                                                            \
    extern "C" __global__ void batchnorm_fwd_train_##SUF(                                                        \
        const T* x, const float* gamma, const float* beta, const float* partial, int n, int c_count, int hw,     \
        int vec, float eps, float momentum, T* y, float* save_mean, float* save_rstd, float* run_mean,           \
        float* run_var) {                                                                                        \
        if (vec)                                                                                                 \
            bn_fwd_train_impl<T, 4>(x, gamma, beta, partial, n, c_count, hw, eps, momentum, y, save_mean,        \
                                    save_rstd, run_mean, run_var);                                               \
        else                                                                                                     \
            bn_fwd_train_impl<T, 1>(x, gamma, beta, partial, n, c_count, hw, eps, momentum, y, save_mean,        \
                                    save_rstd, run_mean, run_var);                                               \
    }                                                                                                            \
    extern "C" __global__ void batchnorm_fwd_eval_##SUF(const T* x, const float* gamma, const float* beta,       \
                                                        const float* run_mean, const float* run_var, int n,      \
                                                        int c_count, int hw, int vec, float eps, T* y) {         \
        if (vec) bn_fwd_eval_impl<T, 4>(x, gamma, beta, run_mean, run_var, n, c_count, hw, eps, y);              \
        else bn_fwd_eval_impl<T, 1>(x, gamma, beta, run_mean, run_var, n, c_count, hw, eps, y);                  \
    }                                                                                                            \
    extern "C" __global__ void batchnorm_bwd_reduce_##SUF(const T* x, const T* dy, const float* mean,            \
                                                          const float* stat2, int is_var, float eps, int n,      \
                                                          int c_count, int hw, int vec, float* partial) {        \
        if (vec) bn_bwd_reduce_impl<T, 4>(x, dy, mean, stat2, is_var, eps, n, c_count, hw, partial);             \
        else bn_bwd_reduce_impl<T, 1>(x, dy, mean, stat2, is_var, eps, n, c_count, hw, partial);                 \
    }                                                                                                            \
    extern "C" __global__ void batchnorm_bwd_dx_##SUF(                                                           \
        const T* x, const T* dy, const float* gamma, const float* mean, const float* stat2, int is_var,          \
        float eps, const float* partial, int n, int c_count, int hw, int vec, int training, T* dx,               \
        float* dgamma, float* dbeta) {                                                                           \
        if (vec)                                                                                                 \
            bn_bwd_dx_impl<T, 4>(x, dy, gamma, mean, stat2, is_var, eps, partial, n, c_count, hw, training, dx,  \
                                 dgamma, dbeta);                                                                 \
        else                                                                                                     \
            bn_bwd_dx_impl<T, 1>(x, dy, gamma, mean, stat2, is_var, eps, partial, n, c_count, hw, training, dx,  \
                                 dgamma, dbeta);                                                                 \
    }

BN_KERNELS(float, f32)
BN_KERNELS(bf16, bf16)
