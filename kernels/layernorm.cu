// Layer normalisation over rows of `cols` elements (PyTorch's F.layer_norm over the trailing axes).
//
//   forward:  μ = mean(x), σ² = mean((x − μ)²) (biased), r = 1/√(σ² + eps),
//             x̂ = (x − μ)·r, y = γ·x̂ + β                       (γ, β optional, f32)
//   backward: ĝ = dy·γ, dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),
//             dγ = Σ_rows dy·x̂, dβ = Σ_rows dy
//
// Storage is f32 or bf16 (x, y, dy, dx); γ, β, the saved μ and r, dγ and dβ are f32.
//
// Organisation. A row is handled by a *group* of threads: one warp when cols ≤ 1024 (no shared
// memory, no barriers: the reductions are warp shuffles), a whole block above that. Thread t of a
// group of g owns the chunks t, t+g, t+2g, ... of VEC consecutive elements (VEC = 4 when
// cols % 4 == 0 and the buffers are aligned: one 16-byte f32 or 8-byte bf16 load per chunk;
// VEC = 1 otherwise), so each load instruction of a warp reads one contiguous segment.
// The first ITERS chunks of every thread are held in registers: x is read from memory once and
// the mean and the variance are two passes over registers (exact two-pass variance, no
// E[x²] − E[x]² cancellation). Warp kernels are instantiated for a few register budgets
// E (elements per lane: 4, 8, 16, 24, 32 ↔ cols ≤ 128, 256, 512, 768, 1024) so a short row does
// not pay the registers of a long one. Block kernels (up to 512 threads) cache 16 elements per
// thread in the forward and 8 in the backward; a row longer than that re-reads the rest from
// memory (L2), so any length works.
//
// Backward is fused: the same pass that produces dx accumulates dγ and dβ for the thread's
// columns over all rows its group handles (grid-stride over rows): in a per-warp [2][cols]
// shared-memory accumulator in warp mode (registers would double the kernel's register count),
// in registers in block mode. At the end each block writes its sums to its own [2][cols] row pair
// of a [blocks][2][cols] partial buffer (a block's warps are added in a fixed order), and
// layernorm_bwd_gamma_beta_f32 adds the partial rows column by column. No atomics anywhere, so
// results are bit-reproducible.
#include "common.cuh"

namespace {



// γ and β of one chunk (1 when γ is absent, 0 when β is).
template <int VEC>
__device__ __forceinline__ void ln_affine(const float* gamma, const float* beta, int e, float* g, float* b) {
    if (gamma) vec_load<VEC>(gamma + e, g);
    else for (int j = 0; j < VEC; ++j) g[j] = 1.0f;
    if (beta) vec_load<VEC>(beta + e, b);
    else for (int j = 0; j < VEC; ++j) b[j] = 0.0f;
}

// ---- group reductions ----------------------------------------------------------------------------

struct LnWarpSum {
    __device__ __forceinline__ float operator()(float v) const { return warp_sum(v); }
};
struct LnBlockSum {
    float* scratch;  // __shared__ float[32]
    __device__ __forceinline__ float operator()(float v) const { return block_sum(v, scratch); }
};

// ---- forward -------------------------------------------------------------------------------------

// One row `x` → `y` by a group of g threads (this one is t); returns μ and r. Every thread of the
// group must call it (the reductions need all of them). OVERFLOW: the row may be longer than the
// register cache (block mode); warp kernels are only launched for rows that fit.
template <typename T, int VEC, int ITERS, bool OVERFLOW, typename Sum>
__device__ __forceinline__ void ln_fwd_row(const T* __restrict__ x, const float* __restrict__ gamma,
                                           const float* __restrict__ beta, T* __restrict__ y, int cols, float eps,
                                           int t, int g, Sum sum, float& mu_out, float& r_out) {
    const int chunks = cols / VEC;
    const float inv_n = 1.0f / (float)cols;
    float v[ITERS][VEC];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < ITERS; ++k) {
        const int c = t + k * g;
        if (c < chunks) {
            vec_load<VEC>(x + c * VEC, v[k]);
#pragma unroll
            for (int j = 0; j < VEC; ++j) s += v[k][j];
        }
    }
    if constexpr (OVERFLOW)
        for (int c = t + ITERS * g; c < chunks; c += g) {
            float w[VEC];
            vec_load<VEC>(x + c * VEC, w);
            for (int j = 0; j < VEC; ++j) s += w[j];
        }
    const float mu = sum(s) * inv_n;

    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < ITERS; ++k) {
        if (t + k * g < chunks) {
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                const float d = v[k][j] - mu;
                q += d * d;
            }
        }
    }
    if constexpr (OVERFLOW)
        for (int c = t + ITERS * g; c < chunks; c += g) {
            float w[VEC];
            vec_load<VEC>(x + c * VEC, w);
            for (int j = 0; j < VEC; ++j) q += (w[j] - mu) * (w[j] - mu);
        }
    const float r = rsqrtf(sum(q) * inv_n + eps);

#pragma unroll
    for (int k = 0; k < ITERS; ++k) {
        const int c = t + k * g;
        if (c < chunks) {
            float gm[VEC], bt[VEC], o[VEC];
            ln_affine<VEC>(gamma, beta, c * VEC, gm, bt);
#pragma unroll
            for (int j = 0; j < VEC; ++j) o[j] = (v[k][j] - mu) * r * gm[j] + bt[j];
            vec_store<VEC>(y + c * VEC, o);
        }
    }
    if constexpr (OVERFLOW)
        for (int c = t + ITERS * g; c < chunks; c += g) {
            float w[VEC], gm[VEC], bt[VEC];
            vec_load<VEC>(x + c * VEC, w);
            ln_affine<VEC>(gamma, beta, c * VEC, gm, bt);
            for (int j = 0; j < VEC; ++j) w[j] = (w[j] - mu) * r * gm[j] + bt[j];
            vec_store<VEC>(y + c * VEC, w);
        }
    mu_out = mu;
    r_out = r;
}

// Warp per row: blockDim.x / 32 rows per block. E = register budget in elements per lane.
template <typename T, int VEC, int E>
__device__ __forceinline__ void ln_fwd_warp(const T* __restrict__ x, const float* __restrict__ gamma,
                                            const float* __restrict__ beta, T* __restrict__ y, float* __restrict__ mean,
                                            float* __restrict__ rstd, int rows, int cols, float eps) {
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;  // the whole warp leaves together
    const int lane = threadIdx.x & 31;
    const long long off = row * cols;
    float mu, r;
    ln_fwd_row<T, VEC, E / VEC, false>(x + off, gamma, beta, y + off, cols, eps, lane, 32, LnWarpSum{}, mu, r);
    if (lane == 0) mean[row] = mu, rstd[row] = r;
}

constexpr int LN_BLOCK_E = 16;  // elements per thread cached in registers by the block forward

// Block per row (blockIdx.x = row).
template <typename T, int VEC>
__device__ __forceinline__ void ln_fwd_block(const T* __restrict__ x, const float* __restrict__ gamma,
                                             const float* __restrict__ beta, T* __restrict__ y,
                                             float* __restrict__ mean, float* __restrict__ rstd, int cols,
                                             float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const long long off = row * cols;
    float mu, r;
    ln_fwd_row<T, VEC, LN_BLOCK_E / VEC, true>(x + off, gamma, beta, y + off, cols, eps, threadIdx.x, blockDim.x,
                                         LnBlockSum{scratch}, mu, r);
    if (threadIdx.x == 0) mean[row] = mu, rstd[row] = r;
}

// ---- backward ------------------------------------------------------------------------------------

// dx for the rows row0, row0 + step, ... (< rows), each by a group of g threads (this one is t).
// dγ and dβ of the thread's columns accumulate into acc[e] and acc[cols + e]: per-warp shared
// memory in warp mode, the block's own partial rows (global) in block mode. Either way every
// column has a single owner thread, so the read-modify-writes do not race. In BLOCK mode the
// cached chunks' sums stay in registers and are stored to acc at the end, and a row may be longer
// than the register cache (the rest is re-read from memory).
template <typename T, int VEC, int ITERS, bool BLOCK, typename Sum>
__device__ __forceinline__ void ln_bwd_rows(const T* __restrict__ x, const T* __restrict__ dy,
                                            const float* __restrict__ gamma, const float* __restrict__ mean,
                                            const float* __restrict__ rstd, T* __restrict__ dx, long long row0,
                                            long long step, int rows, int cols, int t, int g, Sum sum, float* acc) {
    const int chunks = cols / VEC;
    const float inv_n = 1.0f / (float)cols;
    float dg[BLOCK ? ITERS : 1][VEC], db[BLOCK ? ITERS : 1][VEC];
    if constexpr (BLOCK) {
#pragma unroll
        for (int k = 0; k < ITERS; ++k)
#pragma unroll
            for (int j = 0; j < VEC; ++j) dg[k][j] = 0.0f, db[k][j] = 0.0f;
    }
    for (long long row = row0; row < rows; row += step) {
        const long long off = row * cols;
        const float mu = mean[row], r = rstd[row];
        float xh[ITERS][VEC], gh[ITERS][VEC];  // x̂ and ĝ = dy·γ of the cached chunks
        float s_g = 0.0f, s_gx = 0.0f;
#pragma unroll
        for (int k = 0; k < ITERS; ++k) {
            const int c = t + k * g;
            if (c < chunks) {
                float d[VEC], gm[VEC];
                vec_load<VEC>(x + off + c * VEC, xh[k]);
                vec_load<VEC>(dy + off + c * VEC, d);
                if (gamma) vec_load<VEC>(gamma + c * VEC, gm);
                else for (int j = 0; j < VEC; ++j) gm[j] = 1.0f;
#pragma unroll
                for (int j = 0; j < VEC; ++j) {
                    xh[k][j] = (xh[k][j] - mu) * r;
                    gh[k][j] = d[j] * gm[j];
                    s_g += gh[k][j];
                    s_gx += gh[k][j] * xh[k][j];
                }
                if constexpr (BLOCK) {
#pragma unroll
                    for (int j = 0; j < VEC; ++j) dg[k][j] += d[j] * xh[k][j], db[k][j] += d[j];
                } else if (acc) {
                    float ag[VEC], ab[VEC];
                    vec_load<VEC>(acc + c * VEC, ag);
                    vec_load<VEC>(acc + cols + c * VEC, ab);
#pragma unroll
                    for (int j = 0; j < VEC; ++j) ag[j] += d[j] * xh[k][j], ab[j] += d[j];
                    vec_store<VEC>(acc + c * VEC, ag);
                    vec_store<VEC>(acc + cols + c * VEC, ab);
                }
            }
        }
        if constexpr (BLOCK)
        for (int c = t + ITERS * g; c < chunks; c += g) {
            float xv[VEC], d[VEC], gm[VEC];
            vec_load<VEC>(x + off + c * VEC, xv);
            vec_load<VEC>(dy + off + c * VEC, d);
            if (gamma) vec_load<VEC>(gamma + c * VEC, gm);
            else for (int j = 0; j < VEC; ++j) gm[j] = 1.0f;
            for (int j = 0; j < VEC; ++j) {
                const float h = (xv[j] - mu) * r;
                s_g += d[j] * gm[j];
                s_gx += d[j] * gm[j] * h;
                if (acc) acc[c * VEC + j] += d[j] * h, acc[cols + c * VEC + j] += d[j];
            }
        }
        const float m_g = sum(s_g) * inv_n, m_gx = sum(s_gx) * inv_n;
#pragma unroll
        for (int k = 0; k < ITERS; ++k) {
            const int c = t + k * g;
            if (c < chunks) {
                float o[VEC];
#pragma unroll
                for (int j = 0; j < VEC; ++j) o[j] = r * (gh[k][j] - m_g - xh[k][j] * m_gx);
                vec_store<VEC>(dx + off + c * VEC, o);
            }
        }
        if constexpr (BLOCK)
        for (int c = t + ITERS * g; c < chunks; c += g) {
            float xv[VEC], d[VEC], gm[VEC];
            vec_load<VEC>(x + off + c * VEC, xv);
            vec_load<VEC>(dy + off + c * VEC, d);
            if (gamma) vec_load<VEC>(gamma + c * VEC, gm);
            else for (int j = 0; j < VEC; ++j) gm[j] = 1.0f;
            for (int j = 0; j < VEC; ++j) xv[j] = r * (d[j] * gm[j] - m_g - (xv[j] - mu) * r * m_gx);
            vec_store<VEC>(dx + off + c * VEC, xv);
        }
    }
    if constexpr (BLOCK) {
        if (acc) {
#pragma unroll
            for (int k = 0; k < ITERS; ++k) {
                const int c = t + k * g;
                if (c < chunks) {
                    vec_store<VEC>(acc + c * VEC, dg[k]);
                    vec_store<VEC>(acc + cols + c * VEC, db[k]);
                }
            }
        }
    }
}

// Warp per row, LN_BWD_WARPS warps per block, grid-stride over rows. `part` is null (no dγ/dβ
// wanted) or [gridDim.x][2][cols]: per block a row of dγ partials, then one of dβ partials. Dynamic shared memory:
// [warps][2][cols] floats, one dγ/dβ accumulator pair per warp (shared memory rather than
// registers: it halves the registers, and its bandwidth is far above what these updates need);
// at the end the warps' sums are added in warp order into the block's partial rows.
template <typename T, int VEC, int E>
__device__ __forceinline__ void ln_bwd_warp(const T* __restrict__ x, const T* __restrict__ dy,
                                            const float* __restrict__ gamma, const float* __restrict__ mean,
                                            const float* __restrict__ rstd, T* __restrict__ dx,
                                            float* __restrict__ part, int rows, int cols) {
    SIMCLR_DYNAMIC_SMEM(float, red);
    constexpr int ITERS = E / VEC;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int chunks = cols / VEC;
    float* acc = part ? red + (long long)warp * 2 * cols : nullptr;
    if (acc) {  // each lane zeroes exactly the elements it will accumulate into
#pragma unroll
        for (int k = 0; k < ITERS; ++k) {
            const int c = lane + k * 32;
            if (c < chunks)
                for (int j = 0; j < VEC; ++j) acc[c * VEC + j] = 0.0f, acc[cols + c * VEC + j] = 0.0f;
        }
    }
    ln_bwd_rows<T, VEC, ITERS, false>(x, dy, gamma, mean, rstd, dx, (long long)blockIdx.x * warps + warp,
                                      (long long)gridDim.x * warps, rows, cols, lane, 32, LnWarpSum{}, acc);
    if (!part) return;  // uniform over the grid
    __syncthreads();
    float* pg = part + (long long)blockIdx.x * 2 * cols;
    float* pb = pg + cols;
    for (int e = threadIdx.x; e < cols; e += blockDim.x) {
        float g = 0.0f, b = 0.0f;
        for (int w = 0; w < warps; ++w) g += red[(long long)w * 2 * cols + e], b += red[(long long)w * 2 * cols + cols + e];
        pg[e] = g, pb[e] = b;
    }
}

constexpr int LN_BWD_WARPS = 4;    // warps per block of the warp-per-row backward
constexpr int LN_BLOCK_E_BWD = 8;  // elements per thread cached in registers by the block backward

// Block per row, grid-stride over rows; `part` as in the warp version. Each column has one owner
// thread, which keeps the sums of its cached columns in registers and writes them to its block's
// partial rows at the end; columns beyond the register cache accumulate in the partial rows
// themselves (zeroed first by their owner).
template <typename T, int VEC>
__device__ __forceinline__ void ln_bwd_block(const T* __restrict__ x, const T* __restrict__ dy,
                                             const float* __restrict__ gamma, const float* __restrict__ mean,
                                             const float* __restrict__ rstd, T* __restrict__ dx,
                                             float* __restrict__ part, int rows, int cols) {
    __shared__ float scratch[32];
    constexpr int ITERS = LN_BLOCK_E_BWD / VEC;
    const int t = threadIdx.x, g = blockDim.x, chunks = cols / VEC;
    float* acc = part ? part + (long long)blockIdx.x * 2 * cols : nullptr;
    if (acc)
        for (int c = t + ITERS * g; c < chunks; c += g)
            for (int j = 0; j < VEC; ++j) acc[c * VEC + j] = 0.0f, acc[cols + c * VEC + j] = 0.0f;
    ln_bwd_rows<T, VEC, ITERS, true>(x, dy, gamma, mean, rstd, dx, blockIdx.x, gridDim.x, rows, cols, t, g,
                                     LnBlockSum{scratch}, acc);
}

}  // namespace

// ---- exported kernels ----------------------------------------------------------------------------
// One kernel per (direction, layout, register budget E, chunk width VEC, dtype), so that each has
// exactly the registers its configuration needs:
//   layernorm_fwd_warp{E}_vec{VEC}_{f32,bf16}   256 threads = 8 rows per block
//   layernorm_bwd_warp{E}_vec{VEC}_{f32,bf16}   LN_BWD_WARPS warps per block, grid-stride
//   layernorm_fwd_block_vec{VEC}_{f32,bf16}     a block (≤ 512 threads) per row
//   layernorm_bwd_block_vec{VEC}_{f32,bf16}     a block (≤ 512 threads) per row, grid-stride
// The launch bounds let the compiler use up to 255 / 128 registers per thread respectively.

#define LN_WARP_KERNELS(E, V, T, SUF)                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
        layernorm_fwd_warp##E##_vec##V##_##SUF(const T* x, const float* gamma, const float* beta, T* y,        \
                                               float* mean, float* rstd, int rows, int cols, float eps) {       \
        ln_fwd_warp<T, V, E>(x, gamma, beta, y, mean, rstd, rows, cols, eps);                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(LN_BWD_WARPS * 32)                                             \
        layernorm_bwd_warp##E##_vec##V##_##SUF(const T* x, const T* dy, const float* gamma, const float* mean, \
                                               const float* rstd, T* dx, float* part, int rows, int cols) {     \
        ln_bwd_warp<T, V, E>(x, dy, gamma, mean, rstd, dx, part, rows, cols);                                   \
    }
#define LN_BLOCK_KERNELS(V, T, SUF)                                                                             \
    extern "C" __global__ void __launch_bounds__(512)                                                           \
        layernorm_fwd_block_vec##V##_##SUF(const T* x, const float* gamma, const float* beta, T* y,            \
                                           float* mean, float* rstd, int cols, float eps) {                     \
        ln_fwd_block<T, V>(x, gamma, beta, y, mean, rstd, cols, eps);                                           \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(512)                                                           \
        layernorm_bwd_block_vec##V##_##SUF(const T* x, const T* dy, const float* gamma, const float* mean,     \
                                           const float* rstd, T* dx, float* part, int rows, int cols) {         \
        ln_bwd_block<T, V>(x, dy, gamma, mean, rstd, dx, part, rows, cols);                                     \
    }
#define LN_ALL_TIERS(V, T, SUF)                                                                                 \
    LN_WARP_KERNELS(4, V, T, SUF)                                                                               \
    LN_WARP_KERNELS(8, V, T, SUF)                                                                               \
    LN_WARP_KERNELS(16, V, T, SUF)                                                                              \
    LN_WARP_KERNELS(24, V, T, SUF)                                                                              \
    LN_WARP_KERNELS(32, V, T, SUF)                                                                              \
    LN_BLOCK_KERNELS(V, T, SUF)

LN_ALL_TIERS(1, float, f32)
LN_ALL_TIERS(4, float, f32)
LN_ALL_TIERS(1, bf16, bf16)
LN_ALL_TIERS(4, bf16, bf16)

// dγ[c] = Σ_p part[p][0][c], dβ[c] = Σ_p part[p][1][c] (either output may be null).
// Block (32, Y ≤ LN_RED_Y): threadIdx.x picks the column of a 32-column tile (coalesced reads
// of the partial rows), threadIdx.y strides over the partial rows; the Y sums are then added in
// a fixed order. Blocks loop over tiles, so a small partial buffer needs few blocks.
#define LN_RED_Y 16
extern "C" __global__ void layernorm_bwd_gamma_beta_f32(const float* __restrict__ part, int parts, int cols,
                                                        float* __restrict__ dgamma, float* __restrict__ dbeta) {
    __shared__ float sg[LN_RED_Y][33], sb[LN_RED_Y][33];  // 33: no bank conflicts on the transposed read
    const int tx = threadIdx.x, ty = threadIdx.y, ny = blockDim.y;
    for (int tile = blockIdx.x; tile * 32 < cols; tile += gridDim.x) {
        const int c = tile * 32 + tx;
        float g = 0.0f, b = 0.0f;
        if (c < cols) {
            for (int p = ty; p < parts; p += ny) {
                g += part[(2 * (long long)p) * cols + c];
                b += part[(2 * (long long)p + 1) * cols + c];
            }
        }
        sg[ty][tx] = g, sb[ty][tx] = b;
        __syncthreads();
        if (ty == 0 && c < cols) {
            for (int y = 1; y < ny; ++y) g += sg[y][tx], b += sb[y][tx];
            if (dgamma) dgamma[c] = g;
            if (dbeta) dbeta[c] = b;
        }
        __syncthreads();  // before the next tile overwrites sg/sb
    }
}
