// Fused scaled-dot-product attention, FlashAttention-2 style: forward and backward.
// The Rust launchers (src/backend/cuda/kernels/attention.rs) document the math and the
// organisation; this file says how each kernel does its part.
//
// Layout: q [BH, L, D], k and v [BH, S, D], o [BH, L, D], all contiguous, bf16 or f16;
// lse [BH, L] f32 (natural log). No mask (ViViT attends to every token). Head dims 32, 64, 128.
//
// Shared-memory tiles keep their rows D + 8 elements apart: the 16 bytes of padding shift
// consecutive rows by 4 banks, so the 8 row addresses of an ldmatrix (and the 16-byte cp.async
// stores) hit 8 distinct 4-bank groups: no conflicts. All tiles are static shared memory of at
// most 48 KiB (the runtime has no opt-in for more).
//
// mma fragments (see mma.cuh): lane = 32 threads, g = lane / 4, t = lane % 4. A warp's 16-row
// C tile gives each lane rows g and g + 8; an n8 tile gives it columns 2t, 2t + 1.
#include "mma.cuh"

#define ATTN_LOG2E 1.4426950408889634f
#define ATTN_LN2 0.6931471805599453f

// Copies rows [row0, row0 + ROWS) of a [len, D] matrix into a padded shared tile with cp.async
// (16 bytes per copy, spread over the block); rows at or past `len` are zero-filled.
template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void attn_load_tile(T* tile, const T* __restrict__ src, int row0, int len) {
    constexpr int CHUNKS_PER_ROW = D / 8, CHUNKS = ROWS * CHUNKS_PER_ROW;
#pragma unroll
    for (int i = 0; i < (CHUNKS + THREADS - 1) / THREADS; ++i) {
        const int c = (int)threadIdx.x + i * THREADS;
        if (CHUNKS % THREADS != 0 && c >= CHUNKS) break;
        const int r = c / CHUNKS_PER_ROW, col = (c % CHUNKS_PER_ROW) * 8;
        const bool valid = row0 + r < len;
        cp_async_16(tile + r * (D + 8) + col, valid ? src + (long long)(row0 + r) * D + col : src, valid);
    }
}

// ldmatrix.x4 addresses. Lane l supplies row (l % 8) of 8x8 tile (l / 8).
// A operand (16 rows x 16 k) of a row-major tile: tiles (rows 0-7, k 0-7), (8-15, 0-7),
// (0-7, 8-15), (8-15, 8-15) are a[0..3].
template <typename T>
__device__ __forceinline__ const T* attn_a_addr(const T* tile, int stride, int row0, int k0) {
    const int lane = lane_id();
    return tile + (row0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * stride + k0 + 8 * (lane >> 4);
}
// B operand for two n8 tiles when the shared tile holds Bᵀ row-major (n rows x k columns),
// non-transposed ldmatrix: r[0..1] = n-tile n0, r[2..3] = n-tile n0 + 8.
template <typename T>
__device__ __forceinline__ const T* attn_bt_addr(const T* tile, int stride, int n0, int k0) {
    const int lane = lane_id();
    return tile + (n0 + (lane & 7) + 8 * (lane >> 4)) * stride + k0 + 8 * ((lane >> 3) & 1);
}
// B operand for two n8 tiles when the shared tile holds B row-major (k rows x n columns),
// ldmatrix.trans: r[0..1] = n-tile n0, r[2..3] = n-tile n0 + 8.
template <typename T>
__device__ __forceinline__ const T* attn_b_addr(const T* tile, int stride, int k0, int n0) {
    const int lane = lane_id();
    return tile + (k0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * stride + n0 + 8 * (lane >> 4);
}
// A operand (16 rows m x 16 k) when the shared tile holds Aᵀ row-major (k rows x m columns),
// ldmatrix.trans: a[0] = (m 0-7, k 0-7) is stored rows k 0-7 / columns m 0-7, a[1] = (m 8-15,
// k 0-7), a[2] = (m 0-7, k 8-15), a[3] = (m 8-15, k 8-15).
template <typename T>
__device__ __forceinline__ const T* attn_at_addr(const T* tile, int stride, int m0, int k0) {
    const int lane = lane_id();
    return tile + (k0 + (lane & 7) + 8 * (lane >> 4)) * stride + m0 + 8 * ((lane >> 3) & 1);
}

// Two n8 accumulator tiles (C layout) as one A fragment (16 x 16, rows g/g+8, k 2t.. and 2t+8..).
template <typename T> __device__ __forceinline__ void attn_c_to_a(uint32_t a[4], const float lo[4], const float hi[4]) {
    a[0] = pack2_float<T>(lo[0], lo[1]);
    a[1] = pack2_float<T>(lo[2], lo[3]);
    a[2] = pack2_float<T>(hi[0], hi[1]);
    a[3] = pack2_float<T>(hi[2], hi[3]);
}

// ---------------------------------------------------------------------------------------------
// Forward. One block = WARPS warps = 16·WARPS query rows (16 per warp) of one (batch, head); it
// walks the keys in tiles of as many keys. Q goes into registers once (staged through the V
// buffer); K and V tiles are single buffers that overlap as in FlashAttention-2: V_j loads while
// S = Q·K_jᵀ and the softmax run, K_{j+1} loads while O += P·V_j runs.
// ---------------------------------------------------------------------------------------------
template <typename T, int D, int WARPS>
__device__ __forceinline__ void attention_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                              T* __restrict__ o, float* __restrict__ lse, int L, int S,
                                              float scale_log2, int q_tiles) {
    constexpr int M = 16 * WARPS, N = M, THREADS = 32 * WARPS, STRIDE = D + 8;  // N = M: Q is staged in the V buffer
    constexpr int KC = D / 16;  // k-steps of Q·Kᵀ, and 16-column groups of O
    __shared__ __align__(16) T s_k[N * STRIDE];
    __shared__ __align__(16) T s_v[N * STRIDE];

    const int bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * M;
    const T* qg = q + (long long)bh * L * D;
    const T* kg = k + (long long)bh * S * D;
    const T* vg = v + (long long)bh * S * D;
    const int warp = threadIdx.x >> 5, lane = lane_id(), g = lane >> 2, t = lane & 3;
    const int warp_row0 = q0 + 16 * warp;
    // Warps whose 16 rows are all past L only help load and take the barriers (warp-uniform).
    const bool warp_active = warp_row0 < L;

    attn_load_tile<T, D, M, THREADS>(s_v, qg, q0, L);
    attn_load_tile<T, D, N, THREADS>(s_k, kg, 0, S);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[KC][4];
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) ldmatrix_x4(qf[kc], attn_a_addr(s_v, STRIDE, 16 * warp, 16 * kc));
    __syncthreads();  // everyone holds Q before V_0 overwrites it

    float acc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    // Running max (in log2 units: scores·scale·log2 e) and this lane's part of the running sum,
    // for rows g and g + 8. The sums stay lane-partial until the end: every rescaling factor is
    // the same for the 4 lanes of a row.
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

    const int kv_tiles = (S + N - 1) / N;
    for (int j = 0; j < kv_tiles; ++j) {
        const int k0 = j * N;
        attn_load_tile<T, D, N, THREADS>(s_v, vg, k0, S);
        cp_async_commit();
        cp_async_wait<1>();  // K_j (issued one step earlier) has landed
        __syncthreads();
        // 16-key chunks of this tile that hold at least one key (block-uniform).
        const int chunks = (S - k0 + 15) / 16 < N / 16 ? (S - k0 + 15) / 16 : N / 16;
        float s[N / 8][4];
        if (warp_active) {
#pragma unroll
            for (int i = 0; i < N / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
            for (int c = 0; c < N / 16; ++c) {
                if (c < chunks) {
#pragma unroll
                    for (int kc = 0; kc < KC; ++kc) {
                        uint32_t b[4];
                        ldmatrix_x4(b, attn_bt_addr(s_k, STRIDE, 16 * c, 16 * kc));
                        mma_16816<T>(s[2 * c], qf[kc], b);
                        mma_16816<T>(s[2 * c + 1], qf[kc], b + 2);
                    }
                }
            }
            // Scale into log2 units; keys past S get −∞ (probability 0).
            float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int i = 0; i < N / 8; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = k0 + 8 * i + 2 * t + (e & 1);
                    s[i][e] = key < S ? s[i][e] * scale_log2 : -INFINITY;
                    tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[i][e]);
                }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                // The 4 lanes of a row are lanes 4g .. 4g+3.
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(FULL_MASK, tile_max[r], 1));
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(FULL_MASK, tile_max[r], 2));
                // Every tile has a valid key, so the new max is finite; exp2(−∞) = 0 on the first.
                const float new_max = fmaxf(row_max[r], tile_max[r]);
                const float rescale = exp2f(row_max[r] - new_max);
                row_max[r] = new_max;
                row_sum[r] *= rescale;
#pragma unroll
                for (int i = 0; i < D / 8; ++i) {
                    acc[i][2 * r] *= rescale;
                    acc[i][2 * r + 1] *= rescale;
                }
            }
#pragma unroll
            for (int i = 0; i < N / 8; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[i][e] = exp2f(s[i][e] - row_max[e >> 1]);
                    row_sum[e >> 1] += s[i][e];
                }
        }
        cp_async_wait<0>();  // V_j has landed
        __syncthreads();     // ... for everyone, and nobody reads K_j any more
        if (j + 1 < kv_tiles) attn_load_tile<T, D, N, THREADS>(s_k, kg, k0 + N, S);
        cp_async_commit();
        if (warp_active) {
#pragma unroll
            for (int c = 0; c < N / 16; ++c) {
                if (c < chunks) {
                    uint32_t a[4];
                    attn_c_to_a<T>(a, s[2 * c], s[2 * c + 1]);
#pragma unroll
                    for (int dc = 0; dc < KC; ++dc) {
                        uint32_t b[4];
                        ldmatrix_x4_trans(b, attn_b_addr(s_v, STRIDE, 16 * c, 16 * dc));
                        mma_16816<T>(acc[2 * dc], a, b);
                        mma_16816<T>(acc[2 * dc + 1], a, b + 2);
                    }
                }
            }
        }
        __syncthreads();  // nobody reads V_j any more: V_{j+1} may overwrite it
    }

    if (warp_active) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            row_sum[r] += __shfl_xor_sync(FULL_MASK, row_sum[r], 1);
            row_sum[r] += __shfl_xor_sync(FULL_MASK, row_sum[r], 2);
            const int row = warp_row0 + g + 8 * r;
            if (row < L) {
                const float inv = 1.0f / row_sum[r];
                T* orow = o + ((long long)bh * L + row) * D;
#pragma unroll
                for (int i = 0; i < D / 8; ++i)
                    *reinterpret_cast<uint32_t*>(orow + 8 * i + 2 * t) =
                        pack2_float<T>(acc[i][2 * r] * inv, acc[i][2 * r + 1] * inv);
                if (t == 0) lse[(long long)bh * L + row] = (row_max[r] + log2f(row_sum[r])) * ATTN_LN2;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward, step 1: delta_i = Σ_d dO[i,d]·O[i,d] (f32), one warp per row; the same pass zeroes
// the f32 dQ accumulator row the main kernel adds into (when there is one: not null).
// ---------------------------------------------------------------------------------------------
#define ATTN_PRE_WARPS 8

template <typename T>
__device__ __forceinline__ void attention_bwd_preprocess(const T* __restrict__ o, const T* __restrict__ dout,
                                                         float* __restrict__ delta, float* __restrict__ dq_accum,
                                                         long long rows, int D) {
    const long long row = (long long)blockIdx.x * ATTN_PRE_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // warp-uniform
    float sum = 0.0f;
    for (int c = lane; c < D; c += 32) {
        sum += to_float(o[row * D + c]) * to_float(dout[row * D + c]);
        if (dq_accum) dq_accum[row * D + c] = 0.0f;
    }
    sum = warp_sum(sum);
    if (lane == 0) delta[row] = sum;
}

// ---------------------------------------------------------------------------------------------
// Backward, step 2. One block = WARPS warps = N = 16·WARPS keys of one (batch, head), each warp
// owning 16 keys; the block walks the queries in tiles of M with Q, dO, LSE and delta double
// buffered (tile i + 1 loads during tile i). Per query tile, each warp (rows = its keys):
//   Sᵀ = K·Qᵀ, Pᵀ = exp2(Sᵀ·scale·log2 e − LSE·log2 e), dV += Pᵀ·dO,
//   dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ⊙ (dPᵀ − delta), dK += dSᵀ·Q   (dK·scale at the end),
// then writes dSᵀ to shared memory; after a barrier the whole block forms dQ = scale·dS·K for
// the tile (warps split its 16-column groups) and adds it into the f32 accumulator with atomics
// (other key blocks of the same head add theirs). In deterministic mode (`dq_partials`) the
// accumulator has a slice per block instead ([BH][key block][L][D], all zeroed by the launcher):
// each element then receives exactly one addition onto zero, so it is exact whatever the order,
// and attention_dq_convert sums the slices in key-block order. (The same atomic store serves
// both modes: a separate plain-store path costs the 5-warp kernels registers they spill.) When
// one block holds all the keys of a head
// (kv_tiles == 1: ViViT's 65 tokens), it is the only contributor: the launcher passes `dq` and a
// null accumulator, and dQ is stored directly, saving the accumulator's zeroing, atomics and
// conversion (four times the bytes of dQ itself).
// ---------------------------------------------------------------------------------------------
template <typename T, int D, int WARPS, int M>
__device__ __forceinline__ void attention_bwd(const T* __restrict__ q, const T* __restrict__ k,
                                              const T* __restrict__ v, const T* __restrict__ dout,
                                              const float* __restrict__ lse, const float* __restrict__ delta,
                                              float* __restrict__ dq_accum, T* __restrict__ dq, T* __restrict__ dk,
                                              T* __restrict__ dv, int L, int S, float scale, float scale_log2,
                                              int kv_tiles, int dq_partials) {
    constexpr int N = 16 * WARPS, THREADS = 32 * WARPS, STRIDE = D + 8, DS_STRIDE = M + 8;
    constexpr int KC = D / 16;  // 16-wide steps over the head dimension
    constexpr int QC = M / 16;  // 16-query chunks of a tile
    static_assert(M <= THREADS, "one thread per query row stages LSE and delta");
    __shared__ __align__(16) T s_k[N * STRIDE];
    __shared__ __align__(16) T s_v[N * STRIDE];
    __shared__ __align__(16) T s_q[2][M * STRIDE];
    __shared__ __align__(16) T s_do[2][M * STRIDE];
    __shared__ __align__(16) T s_ds[N * DS_STRIDE];  // dSᵀ: keys x queries
    __shared__ float s_lse[2][M];                    // LSE·log2 e; +∞ past L (P = 0 there)
    __shared__ float s_delta[2][M];

    const int bh = blockIdx.x / kv_tiles, k0 = (blockIdx.x % kv_tiles) * N;
    const T* qg = q + (long long)bh * L * D;
    const T* dog = dout + (long long)bh * L * D;
    const T* kg = k + (long long)bh * S * D;
    const T* vg = v + (long long)bh * S * D;
    const float* lse_g = lse + (long long)bh * L;
    const float* delta_g = delta + (long long)bh * L;
    const bool dq_direct = kv_tiles == 1;  // then dq_accum is null and dq is written
    // Deterministic mode: slice blockIdx.x = bh·kv_tiles + key block.
    float* dq_g = dq_direct ? nullptr : dq_accum + (long long)(dq_partials ? blockIdx.x : bh) * L * D;
    T* dq_direct_g = dq_direct ? dq + (long long)bh * L * D : nullptr;
    const int tid = threadIdx.x, warp = tid >> 5, lane = lane_id(), g = lane >> 2, t = lane & 3;
    const int warp_key0 = k0 + 16 * warp;
    const bool warp_active = warp_key0 < S;  // warp-uniform
    const bool key_valid[2] = {warp_key0 + g < S, warp_key0 + g + 8 < S};
    // 16-key chunks of the block holding at least one key (block-uniform).
    const int key_chunks = (S - k0 + 15) / 16 < WARPS ? (S - k0 + 15) / 16 : WARPS;

    attn_load_tile<T, D, N, THREADS>(s_k, kg, k0, S);
    attn_load_tile<T, D, N, THREADS>(s_v, vg, k0, S);
    attn_load_tile<T, D, M, THREADS>(s_q[0], qg, 0, L);
    attn_load_tile<T, D, M, THREADS>(s_do[0], dog, 0, L);
    cp_async_commit();
    if (tid < M) {
        s_lse[0][tid] = tid < L ? lse_g[tid] * ATTN_LOG2E : INFINITY;
        s_delta[0][tid] = tid < L ? delta_g[tid] : 0.0f;
    }

    float dv_acc[D / 8][4], dk_acc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) dv_acc[i][e] = dk_acc[i][e] = 0.0f;

    const int q_tiles = (L + M - 1) / M;
    for (int it = 0; it < q_tiles; ++it) {
        const int stage = it & 1, q0 = it * M;
        const bool has_next = it + 1 < q_tiles;
        // Prefetch tile it + 1: Q and dO by cp.async, LSE and delta into registers (stored to
        // shared memory at the end of this step, so their latency hides behind the work).
        if (has_next) {
            attn_load_tile<T, D, M, THREADS>(s_q[stage ^ 1], qg, q0 + M, L);
            attn_load_tile<T, D, M, THREADS>(s_do[stage ^ 1], dog, q0 + M, L);
        }
        cp_async_commit();
        float next_lse = INFINITY, next_delta = 0.0f;
        if (has_next && tid < M && q0 + M + tid < L) {
            next_lse = lse_g[q0 + M + tid] * ATTN_LOG2E;
            next_delta = delta_g[q0 + M + tid];
        }
        cp_async_wait<1>();  // tile it has landed
        __syncthreads();
        const T* sq = s_q[stage];
        const T* sdo = s_do[stage];
        const float* slse = s_lse[stage];
        const float* sdelta = s_delta[stage];
        // 16-query chunks holding at least one query (block-uniform).
        const int q_chunks = (L - q0 + 15) / 16 < QC ? (L - q0 + 15) / 16 : QC;

        if (warp_active) {
            // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ: 16 keys x M queries each.
            float p[M / 8][4], dp[M / 8][4];
#pragma unroll
            for (int i = 0; i < M / 8; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) p[i][e] = dp[i][e] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                uint32_t ka[4], va[4];
                ldmatrix_x4(ka, attn_a_addr(s_k, STRIDE, 16 * warp, 16 * kc));
                ldmatrix_x4(va, attn_a_addr(s_v, STRIDE, 16 * warp, 16 * kc));
#pragma unroll
                for (int c = 0; c < QC; ++c) {
                    if (c < q_chunks) {
                        uint32_t b[4];
                        ldmatrix_x4(b, attn_bt_addr(sq, STRIDE, 16 * c, 16 * kc));
                        mma_16816<T>(p[2 * c], ka, b);
                        mma_16816<T>(p[2 * c + 1], ka, b + 2);
                        ldmatrix_x4(b, attn_bt_addr(sdo, STRIDE, 16 * c, 16 * kc));
                        mma_16816<T>(dp[2 * c], va, b);
                        mma_16816<T>(dp[2 * c + 1], va, b + 2);
                    }
                }
            }
            // Pᵀ from the saved LSE (0 for keys past S and, through LSE = +∞, queries past L);
            // dSᵀ = Pᵀ ⊙ (dPᵀ − delta), kept in dp.
#pragma unroll
            for (int i = 0; i < M / 8; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = 8 * i + 2 * t + (e & 1);
                    p[i][e] = key_valid[e >> 1] ? exp2f(p[i][e] * scale_log2 - slse[col]) : 0.0f;
                    dp[i][e] = p[i][e] * (dp[i][e] - sdelta[col]);
                }
            // dV += Pᵀ·dO and dK += dSᵀ·Q (contraction over the tile's queries).
#pragma unroll
            for (int c = 0; c < QC; ++c) {
                if (c < q_chunks) {
                    uint32_t pa[4], dsa[4];
                    attn_c_to_a<T>(pa, p[2 * c], p[2 * c + 1]);
                    attn_c_to_a<T>(dsa, dp[2 * c], dp[2 * c + 1]);
#pragma unroll
                    for (int dc = 0; dc < KC; ++dc) {
                        uint32_t b[4];
                        ldmatrix_x4_trans(b, attn_b_addr(sdo, STRIDE, 16 * c, 16 * dc));
                        mma_16816<T>(dv_acc[2 * dc], pa, b);
                        mma_16816<T>(dv_acc[2 * dc + 1], pa, b + 2);
                        ldmatrix_x4_trans(b, attn_b_addr(sq, STRIDE, 16 * c, 16 * dc));
                        mma_16816<T>(dk_acc[2 * dc], dsa, b);
                        mma_16816<T>(dk_acc[2 * dc + 1], dsa, b + 2);
                    }
                }
            }
            // dSᵀ to shared memory, rounded to T as the dQ product's A operand.
#pragma unroll
            for (int i = 0; i < M / 8; ++i)
#pragma unroll
                for (int r = 0; r < 2; ++r)
                    *reinterpret_cast<uint32_t*>(s_ds + (16 * warp + g + 8 * r) * DS_STRIDE + 8 * i + 2 * t) =
                        pack2_float<T>(dp[i][2 * r], dp[i][2 * r + 1]);
        }
        __syncthreads();  // dSᵀ complete

        // dQ(tile) = scale·dS·K: rows = the tile's queries, contraction over the block's keys.
        // Warp w takes the 16-column groups w, w + WARPS, ...; A = dS via ldmatrix.trans of dSᵀ.
#pragma unroll
        for (int c = 0; c < QC; ++c) {
            if (c < q_chunks) {
                uint32_t dsa[WARPS][4];
#pragma unroll
                for (int kc = 0; kc < WARPS; ++kc)
                    if (kc < key_chunks) ldmatrix_x4_trans(dsa[kc], attn_at_addr(s_ds, DS_STRIDE, 16 * c, 16 * kc));
#pragma unroll
                for (int dc0 = 0; dc0 < KC; dc0 += WARPS) {
                    const int dc = dc0 + warp;
                    if (dc < KC) {
                        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
                        for (int kc = 0; kc < WARPS; ++kc) {
                            if (kc < key_chunks) {
                                uint32_t b[4];
                                ldmatrix_x4_trans(b, attn_b_addr(s_k, STRIDE, 16 * kc, 16 * dc));
                                mma_16816<T>(acc[0], dsa[kc], b);
                                mma_16816<T>(acc[1], dsa[kc], b + 2);
                            }
                        }
#pragma unroll
                        for (int r = 0; r < 2; ++r) {
                            const int row = q0 + 16 * c + g + 8 * r;
                            if (row < L) {
                                const long long at = (long long)row * D + 16 * dc + 2 * t;
#pragma unroll
                                for (int n = 0; n < 2; ++n) {
                                    if (dq_direct) {
                                        *reinterpret_cast<uint32_t*>(dq_direct_g + at + 8 * n) =
                                            pack2_float<T>(acc[n][2 * r] * scale, acc[n][2 * r + 1] * scale);
                                    } else {
                                        atomicAdd(dq_g + at + 8 * n, acc[n][2 * r] * scale);
                                        atomicAdd(dq_g + at + 8 * n + 1, acc[n][2 * r + 1] * scale);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if (has_next && tid < M) {
            s_lse[stage ^ 1][tid] = next_lse;
            s_delta[stage ^ 1][tid] = next_delta;
        }
        // The barrier at the top of the next step orders these writes, and the next dSᵀ, after
        // every read of this step.
    }

    if (warp_active) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (key_valid[r]) {
                const long long row = (long long)bh * S + warp_key0 + g + 8 * r;
#pragma unroll
                for (int i = 0; i < D / 8; ++i) {
                    *reinterpret_cast<uint32_t*>(dv + row * D + 8 * i + 2 * t) =
                        pack2_float<T>(dv_acc[i][2 * r], dv_acc[i][2 * r + 1]);
                    *reinterpret_cast<uint32_t*>(dk + row * D + 8 * i + 2 * t) =
                        pack2_float<T>(dk_acc[i][2 * r] * scale, dk_acc[i][2 * r + 1] * scale);
                }
            }
        }
    }
}

// Backward, step 3: dQ = T(dq_accum), one head of `head_elems` = L·D elements after another;
// with `parts` > 1 (deterministic mode) each head's slices are summed in key-block order:
// dQ[h][j] = Σ_p dq_accum[(h·parts + p)·head_elems + j].
template <typename T>
__device__ __forceinline__ void attention_dq_convert(const float* __restrict__ dq_accum, T* __restrict__ dq,
                                                     long long n, long long head_elems, int parts) {
    GRID_STRIDE_LOOP(i, n) {
        const long long h = i / head_elems, j = i - h * head_elems;
        const float* slices = dq_accum + h * parts * head_elems + j;
        float sum = slices[0];
        for (int p = 1; p < parts; ++p) sum += slices[p * head_elems];
        dq[i] = from_float<T>(sum);
    }
}

// ---------------------------------------------------------------------------------------------
// Exported kernels, `attention_{fwd,bwd}_d<D>_w<WARPS>_<type>`. Tiles of 4 or 5 warps (64 or 80
// rows): the launcher takes whichever pads the sequence less (80 for ViViT's 65 and 197 tokens).
// Backward queries per step (M) are chosen so the double-buffered tiles fit in 48 KiB; the
// launcher mirrors this table (static shared memory per block):
//   D = 32:  WARPS 4/5, M 64  (40 / 44.75 KiB)    D = 64: WARPS 4/5, M 32 (41.5 / 47.25 KiB)
//   D = 128: WARPS 2,   M 16  (35.75 KiB)
// Forward: 2·16·WARPS·(D + 8) elements, at most 42.5 KiB (D = 128, 5 warps).
// ---------------------------------------------------------------------------------------------
#define ATTN_FWD_KERNEL(D, WARPS, T, SUF)                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * WARPS)                                                    \
        attention_fwd_d##D##_w##WARPS##_##SUF(const T* q, const T* k, const T* v, T* o, float* lse, int L,     \
                                              int S, float scale_log2, int q_tiles) {                          \
        attention_fwd<T, D, WARPS>(q, k, v, o, lse, L, S, scale_log2, q_tiles);                                  \
    }
#define ATTN_BWD_KERNEL(D, WARPS, M, T, SUF)                                                                    \
    extern "C" __global__ void __launch_bounds__(32 * WARPS)                                                    \
        attention_bwd_d##D##_w##WARPS##_##SUF(const T* q, const T* k, const T* v, const T* dout, const float* lse,        \
                                   const float* delta, float* dq_accum, T* dq, T* dk, T* dv, int L, int S,      \
                                   float scale, float scale_log2, int kv_tiles, int dq_partials) {               \
        attention_bwd<T, D, WARPS, M>(q, k, v, dout, lse, delta, dq_accum, dq, dk, dv, L, S, scale, scale_log2, \
                                      kv_tiles, dq_partials);                                                    \
    }
#define ATTN_KERNELS(T, SUF)                                                                                    \
    ATTN_FWD_KERNEL(32, 4, T, SUF)                                                                              \
    ATTN_FWD_KERNEL(32, 5, T, SUF)                                                                              \
    ATTN_FWD_KERNEL(64, 4, T, SUF)                                                                              \
    ATTN_FWD_KERNEL(64, 5, T, SUF)                                                                              \
    ATTN_FWD_KERNEL(128, 4, T, SUF)                                                                             \
    ATTN_FWD_KERNEL(128, 5, T, SUF)                                                                             \
    ATTN_BWD_KERNEL(32, 4, 64, T, SUF)                                                                          \
    ATTN_BWD_KERNEL(32, 5, 64, T, SUF)                                                                          \
    ATTN_BWD_KERNEL(64, 4, 32, T, SUF)                                                                          \
    ATTN_BWD_KERNEL(64, 5, 32, T, SUF)                                                                          \
    ATTN_BWD_KERNEL(128, 2, 16, T, SUF)                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_PRE_WARPS)                                           \
        attention_bwd_preprocess_##SUF(const T* o, const T* dout, float* delta, float* dq_accum, long long rows, \
                                       int D) {                                                                  \
        attention_bwd_preprocess<T>(o, dout, delta, dq_accum, rows, D);                                          \
    }                                                                                                            \
    extern "C" __global__ void attention_dq_convert_##SUF(const float* dq_accum, T* dq, long long n,             \
                                                          long long head_elems, int parts) {                     \
        attention_dq_convert<T>(dq_accum, dq, n, head_elems, parts);                                             \
    }

ATTN_KERNELS(bf16, bf16)
ATTN_KERNELS(f16, f16)
