// Fused optimiser steps, "multi-tensor apply": one launch updates every parameter tensor of a
// model. The launchers (src/backend/cuda/kernels/optim.rs) upload a table of per-tensor device
// pointers and sizes; the grid is the concatenation of every tensor's chunks:
//
//   ptrs[t * P + k]   the k-th buffer of tensor t (param, grad, state...), as an address
//   numel[t]          its element count
//   chunk_start[t]    how many chunks come before tensor t (chunk_start[T] = gridDim.x)
//
// Block b finds its tensor by binary search in chunk_start and updates elements
// [(b − chunk_start[t])·chunk, +chunk) of it: float4 loads and stores where every buffer of the
// tensor is 16-byte aligned (chunk is a multiple of 4, so a chunk start keeps the alignment),
// a scalar tail for the last numel % 4 elements.
//
//   adam_step_f32        Adam / AdamW, exactly src/optim/adamw.rs
//   lars_sumsq_f32       LARS pass 1: per-block partial Σw² and Σg'² (g' = g + λw), no atomics
//   lars_step_f32        LARS pass 2: per-tensor norms from the partials, trust ratio, momentum update
//
// Arithmetic is in f32 in the same order as the CPU optimisers, with multiplies and adds kept
// separate (no fused multiply-add contraction), so the GPU step matches the CPU step to rounding.
#include "common.cuh"

// Rounded multiply and add that the compiler may not fuse into an FMA (the CPU rounds each).
__device__ __forceinline__ float fmul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float fadd(float a, float b) { return __fadd_rn(a, b); }

__device__ __forceinline__ bool optim_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// The tensor that block b belongs to: the largest t with chunk_start[t] <= b (empty tensors own
// no chunk, so ties resolve to the later, non-empty one). Every thread searches: the table is
// a few hundred entries, read through L1.
__device__ __forceinline__ int find_tensor(const long long* __restrict__ chunk_start, int n_tensors, long long b) {
    int lo = 0, hi = n_tensors - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (chunk_start[mid] <= b) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// This block's tensor and element range [begin, begin + len).
struct Chunk {
    int t;
    long long begin, len;
};

__device__ __forceinline__ Chunk my_chunk(const long long* numel, const long long* chunk_start, int n_tensors,
                                          long long chunk) {
    Chunk c;
    c.t = find_tensor(chunk_start, n_tensors, blockIdx.x);
    c.begin = ((long long)blockIdx.x - chunk_start[c.t]) * chunk;
    const long long left = numel[c.t] - c.begin;
    c.len = left < chunk ? left : chunk;
    return c;
}

template <typename T> __device__ __forceinline__ T* table_ptr(const long long* ptrs, int i) {
    return reinterpret_cast<T*>(static_cast<uintptr_t>(ptrs[i]));
}

// Calls f(k) for every element offset k of the chunk, four at a time (f4) where aligned.
// f4(k) handles elements k..k+3; f1(k) one element.
template <typename F4, typename F1>
__device__ __forceinline__ void for_chunk(long long len, bool vec, F4 f4, F1 f1) {
    long long done = 0;
    if (vec) {
        const long long n4 = len >> 2;
        for (long long q = threadIdx.x; q < n4; q += blockDim.x) f4(q << 2);
        done = n4 << 2;
    }
    for (long long k = done + threadIdx.x; k < len; k += blockDim.x) f1(k);
}

// ---------------------------------------------------------------- Adam / AdamW

struct AdamHyper {
    float lr, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_bias1, inv_bias2, eps;
    float l2;     // Adam: g += l2·w first (0: off)
    float decay;  // AdamW: w ← w·decay before the step (1 − lr·λ; 1: off)
};

// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², w ← w·decay − lr·(m/c₁)/(√(v/c₂) + ε)
__device__ __forceinline__ void adam_one(float& w, float g, float& m, float& v, const AdamHyper& h) {
    if (h.l2 != 0.0f) g = fadd(g, fmul(w, h.l2));
    m = fadd(fmul(m, h.beta1), fmul(g, h.one_minus_beta1));
    v = fadd(fmul(v, h.beta2), fmul(fmul(g, g), h.one_minus_beta2));
    const float update = fmul(m, h.inv_bias1) / fadd(sqrtf(fmul(v, h.inv_bias2)), h.eps);
    w = fadd(fmul(w, h.decay), -fmul(update, h.lr));
}

// ptrs: 4 per tensor (param, grad, m, v).
extern "C" __global__ void adam_step_f32(const long long* ptrs, const long long* numel, const long long* chunk_start,
                                         int n_tensors, long long chunk, float lr, float beta1, float one_minus_beta1,
                                         float beta2, float one_minus_beta2, float inv_bias1, float inv_bias2,
                                         float eps, float l2, float decay) {
    const AdamHyper h{lr, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_bias1, inv_bias2, eps, l2, decay};
    const Chunk c = my_chunk(numel, chunk_start, n_tensors, chunk);
    const long long* p = ptrs + 4 * c.t;
    float* w = table_ptr<float>(p, 0) + c.begin;
    const float* g = table_ptr<const float>(p, 1) + c.begin;
    float* m = table_ptr<float>(p, 2) + c.begin;
    float* v = table_ptr<float>(p, 3) + c.begin;
    const bool vec = optim_aligned16(w) && optim_aligned16(g) && optim_aligned16(m) && optim_aligned16(v);
    for_chunk(
        c.len, vec,
        [&](long long k) {
            float4 w4 = load_vector<float4>(w + k);
            const float4 g4 = load_vector<float4>(g + k);
            float4 m4 = load_vector<float4>(m + k);
            float4 v4 = load_vector<float4>(v + k);
            adam_one(w4.x, g4.x, m4.x, v4.x, h);
            adam_one(w4.y, g4.y, m4.y, v4.y, h);
            adam_one(w4.z, g4.z, m4.z, v4.z, h);
            adam_one(w4.w, g4.w, m4.w, v4.w, h);
            store_vector(w + k, w4);
            store_vector(m + k, m4);
            store_vector(v + k, v4);
        },
        [&](long long k) { adam_one(w[k], g[k], m[k], v[k], h); });
}

// ---------------------------------------------------------------- LARS
// ptrs: 3 per tensor (param, grad, momentum); adapt[t] != 0 for weight matrices / conv kernels
// (trust ratio and weight decay), 0 for biases and normalisation parameters (plain momentum SGD).

__device__ __forceinline__ float decayed_grad(float g, float w, float weight_decay, bool adapt) {
    return adapt && weight_decay != 0.0f ? fadd(g, fmul(w, weight_decay)) : g;
}

// Pass 1: partials[2b] = Σ w², partials[2b + 1] = Σ g'² over block b's chunk (0 when not adapted).
extern "C" __global__ void lars_sumsq_f32(const long long* ptrs, const long long* numel, const long long* chunk_start,
                                          const long long* adapt, int n_tensors, long long chunk, float weight_decay,
                                          float* partials) {
    __shared__ float scratch[64];
    const Chunk c = my_chunk(numel, chunk_start, n_tensors, chunk);
    if (!adapt[c.t]) {  // uniform over the block: no reduction to join
        if (threadIdx.x == 0) partials[2 * blockIdx.x] = partials[2 * blockIdx.x + 1] = 0.0f;
        return;
    }
    const long long* p = ptrs + 3 * c.t;
    const float* w = table_ptr<const float>(p, 0) + c.begin;
    const float* g = table_ptr<const float>(p, 1) + c.begin;
    const bool vec = optim_aligned16(w) && optim_aligned16(g);
    float ww = 0.0f, gg = 0.0f;
    auto one = [&](float wi, float gi) {
        const float gd = decayed_grad(gi, wi, weight_decay, true);
        ww = fadd(ww, fmul(wi, wi));
        gg = fadd(gg, fmul(gd, gd));
    };
    for_chunk(
        c.len, vec,
        [&](long long k) {
            const float4 w4 = load_vector<float4>(w + k);
            const float4 g4 = load_vector<float4>(g + k);
            one(w4.x, g4.x), one(w4.y, g4.y), one(w4.z, g4.z), one(w4.w, g4.w);
        },
        [&](long long k) { one(w[k], g[k]); });
    // Both sums in one pass through shared memory: warp sums, then warp 0 adds the warps'.
    ww = warp_sum(ww);
    gg = warp_sum(gg);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) scratch[warp] = ww, scratch[32 + warp] = gg;
    __syncthreads();
    if (warp == 0) {
        const bool live = lane < (int)(blockDim.x >> 5);
        ww = warp_sum(live ? scratch[lane] : 0.0f);
        gg = warp_sum(live ? scratch[32 + lane] : 0.0f);
        if (lane == 0) partials[2 * blockIdx.x] = ww, partials[2 * blockIdx.x + 1] = gg;
    }
}

// Pass 2: every block of tensor t sums t's partials in the same fixed order (so all of them get
// the same bits; blockDim ≥ 32), forms r = η‖w‖/‖g'‖ (1 if either norm is 0) in f64 like the CPU, then
// u ← μu + (lr·r)·g', w ← w − u. Not adapted: r = 1 and g' = g.
extern "C" __global__ void lars_step_f32(const long long* ptrs, const long long* numel, const long long* chunk_start,
                                         const long long* adapt, int n_tensors, long long chunk,
                                         const float* partials, double lr, float momentum, float weight_decay,
                                         double eta) {
    __shared__ float shared_scale;
    const Chunk c = my_chunk(numel, chunk_start, n_tensors, chunk);
    const bool adapted = adapt[c.t] != 0;
    float scale = (float)lr;
    if (adapted) {  // uniform over the block
        // A tensor has at most a few hundred chunks: one warp sums the partials and the
        // block waits at a single barrier for the scale.
        if (threadIdx.x < 32) {
            float ww = 0.0f, gg = 0.0f;
            for (long long q = chunk_start[c.t] + threadIdx.x; q < chunk_start[c.t + 1]; q += 32) {
                ww += partials[2 * q];
                gg += partials[2 * q + 1];
            }
            ww = warp_sum(ww);
            gg = warp_sum(gg);
            const double wn = sqrt((double)ww), gn = sqrt((double)gg);
            const double trust = wn > 0.0 && gn > 0.0 ? eta * wn / gn : 1.0;
            if (threadIdx.x == 0) shared_scale = (float)(lr * trust);
        }
        __syncthreads();
        scale = shared_scale;
    }
    const long long* p = ptrs + 3 * c.t;
    float* w = table_ptr<float>(p, 0) + c.begin;
    const float* g = table_ptr<const float>(p, 1) + c.begin;
    float* u = table_ptr<float>(p, 2) + c.begin;
    const bool vec = optim_aligned16(w) && optim_aligned16(g) && optim_aligned16(u);
    auto one = [&](float& wi, float gi, float& ui) {
        const float gd = decayed_grad(gi, wi, weight_decay, adapted);
        ui = fadd(fmul(ui, momentum), fmul(gd, scale));
        wi = fadd(wi, -ui);
    };
    for_chunk(
        c.len, vec,
        [&](long long k) {
            float4 w4 = load_vector<float4>(w + k);
            const float4 g4 = load_vector<float4>(g + k);
            float4 u4 = load_vector<float4>(u + k);
            one(w4.x, g4.x, u4.x), one(w4.y, g4.y, u4.y), one(w4.z, g4.z, u4.z), one(w4.w, g4.w, u4.w);
            store_vector(w + k, w4);
            store_vector(u + k, u4);
        },
        [&](long long k) { one(w[k], g[k], u[k]); });
}
