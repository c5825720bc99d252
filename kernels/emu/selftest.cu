// Self-test kernels for the CPU emulator (cuda_emu.h + emu_runtime.cpp), written as ordinary CUDA:
// this file also compiles with nvcc. selftest_main.cpp launches them and checks the results; see
// its top comment for the build command.
// mma.cuh (and through it common.cuh: the CUDA headers and SIMCLR_DYNAMIC_SMEM under nvcc) for
// the planted cp.async and ldmatrix bugs at the end.
#include "../mma.cuh"

// Block sum with a static __shared__ array and __syncthreads, for a block size that is not a
// multiple of 32. Threads leave as soon as they are no longer needed: threads past the end of the
// input at once, the others during the tree reduction. The remaining threads' barriers must not
// wait for them. Also exercises __syncthreads_count/_or/_and: flags[block*3 + 0..2].
extern "C" __global__ void emu_block_sum(const float* __restrict__ in, float* __restrict__ out, int* flags, int n) {
    __shared__ __align__(16) float s[128];
    const int tid = threadIdx.x;
    const int block_start = blockIdx.x * blockDim.x;
    const int i = block_start + tid;
    if (i >= n) return;
    const int active = min((int)blockDim.x, n - block_start);
    s[tid] = in[i];
    const int positive = __syncthreads_count(in[i] > 0.0f);
    const int any_big = __syncthreads_or(in[i] > 1000.0f);
    const int all_small = __syncthreads_and(in[i] < 1000.0f);
    for (int width = active; width > 1;) {
        const int half = (width + 1) / 2;
        if (tid >= half) return;  // not needed any more
        if (tid + half < width) s[tid] += s[tid + half];
        __syncthreads();
        width = half;
    }
    if (tid == 0) {
        out[blockIdx.x] = s[0];
        flags[blockIdx.x * 3 + 0] = positive;
        flags[blockIdx.x * 3 + 1] = any_big;
        flags[blockIdx.x * 3 + 2] = all_small;
    }
}

// Warp-level shuffles. Per thread i (lane = i % 32), with v = in[i]:
//   out[i*8 + 0]: __shfl_xor_sync butterfly sum over the warp (every lane gets it)
//   out[i*8 + 1]: __shfl_down_sync tree sum (meaningful in lane 0)
//   out[i*8 + 2]: inclusive prefix sum with __shfl_up_sync
//   out[i*8 + 3]: __shfl_sync broadcast of lane 5
//   out[i*8 + 4]: __shfl_sync(..., srcLane 3, width 8): lane 3 of the caller's 8-lane segment
//   out[i*8 + 5]: __shfl_xor_sync sum over 16-lane segments (width 16)
//   out[i*8 + 6]: __shfl_down_sync by 4 with width 8 (own value past the segment end)
//   out[i*8 + 7]: double and long long shuffles: lane^1's value, as double + long long
extern "C" __global__ void emu_warp_shuffles(const float* in, double* out) {
    const unsigned full = 0xffffffffu;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = in[i];

    float x = v;
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(full, x, off);
    float d = v;
    for (int off = 16; off > 0; off >>= 1) d += __shfl_down_sync(full, d, off);
    float scan = v;
    const int lane = threadIdx.x % warpSize;
    for (int off = 1; off < 32; off <<= 1) {
        const float other = __shfl_up_sync(full, scan, off);
        if (lane >= off) scan += other;
    }
    const float b5 = __shfl_sync(full, v, 5);
    const float seg3 = __shfl_sync(full, v, 3, 8);
    float x16 = v;
    for (int off = 8; off > 0; off >>= 1) x16 += __shfl_xor_sync(full, x16, off, 16);
    const float down4 = __shfl_down_sync(full, v, 4, 8);
    const double dv = __shfl_xor_sync(full, (double)v, 1);
    const long long lv = __shfl_xor_sync(full, (long long)v * 1000000000LL, 1);

    double* o = out + i * 8;
    o[0] = x;
    o[1] = d;
    o[2] = scan;
    o[3] = b5;
    o[4] = seg3;
    o[5] = x16;
    o[6] = down4;
    o[7] = dv + (double)(lv / 1000000000LL);
}

// Votes in full and partial warps (launched with 40 threads: warp 1 has 8 lanes).
//   out[i*4 + 0]: __ballot_sync(full, lane % 3 == 0)
//   out[i*4 + 1]: __any_sync(full, lane == 7) | __all_sync(full, 1) << 1 | __all_sync(full, lane < 4) << 2
//   out[i*4 + 2]: __activemask()
//   out[i*4 + 3]: after lanes >= 4 returned: __ballot_sync(full, 1) of the remaining lanes
extern "C" __global__ void emu_warp_votes(unsigned* out) {
    const unsigned full = 0xffffffffu;
    const int i = threadIdx.x;
    const int lane = i % 32;
    const unsigned ballot = __ballot_sync(full, lane % 3 == 0);
    const unsigned flags = (unsigned)__any_sync(full, lane == 7) | (unsigned)__all_sync(full, 1) << 1 |
                           (unsigned)__all_sync(full, lane < 4) << 2;
    const unsigned active = __activemask();
    __syncwarp();
    out[i * 4 + 0] = ballot;
    out[i * 4 + 1] = flags;
    out[i * 4 + 2] = active;
    out[i * 4 + 3] = 0;
    if (lane >= 4) return;
    // Exited lanes no longer take part: CUDA requires only the non-exited lanes of the mask.
    out[i * 4 + 3] = __ballot_sync(full, 1);
}

// Dynamic shared memory: check the 16-byte alignment and the 0xCD fill, then reverse the
// block's values through it. out[i] = in[block_start + blockDim.x - 1 - tid]; ok[i] = checks.
extern "C" __global__ void emu_dynamic_smem(const int* in, int* out, int* ok) {
    SIMCLR_DYNAMIC_SMEM(int, buf);
    const int tid = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + tid;
    const bool aligned = (reinterpret_cast<unsigned long long>(buf) % 16) == 0;
    // Refilled with garbage for every block (one of the runtime's three byte patterns), never zeroed.
    const bool garbage = buf[tid] == (int)0xFFFFFFFFu || buf[tid] == 0x7F7F7F7F || buf[tid] == (int)0xCDCDCDCDu;
    __syncthreads();
    buf[tid] = in[i];
    __syncthreads();
    out[i] = buf[blockDim.x - 1 - tid];
    ok[i] = (aligned ? 1 : 0) | (garbage ? 2 : 0);
}

// Atomics from many blocks: a float sum, an int sum, an int max, a 64-bit sum and a sum built with atomicCAS.
extern "C" __global__ void emu_atomics(float* fsum, int* isum, int* imax, unsigned long long* usum, unsigned* cas_sum) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(fsum, 1.0f);
    atomicAdd(isum, i);
    atomicMax(imax, (i * 7919) % 1000);
    atomicAdd(usum, 1ull << 33);
    unsigned old = atomicAdd(cas_sum, 0u), assumed;  // an atomic read: a plain one would race
    do {  // the classic CAS loop
        assumed = old;
        old = atomicCAS(cas_sum, assumed, assumed + 3u);
    } while (old != assumed);
}

// bf16 / fp16 conversions: for each input float, bits[i*4 + 0..3] = bf16 bits, half bits,
// bf16 round trip (float bits), half round trip (float bits).
extern "C" __global__ void emu_half_conversions(const float* in, unsigned* bits, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __nv_bfloat16 b = __float2bfloat16(in[i]);
    const __half h = __float2half_rn(in[i]);
    bits[i * 4 + 0] = __bfloat16_as_ushort(b);
    bits[i * 4 + 1] = __half_as_ushort(h);
    bits[i * 4 + 2] = __float_as_uint(__bfloat162float(b));
    bits[i * 4 + 3] = __float_as_uint(__half2float(h));
}

// 16-bit arithmetic and the conversions CUDA code leans on: out[0..7].
extern "C" __global__ void emu_half_arith(const __nv_bfloat16* a, const __half* h, float* out) {
    const __nv_bfloat16 one = 1.0f;  // converting constructor, as in cuda_bf16.hpp
    const __nv_bfloat16 s = a[0] + a[1] * one;
    out[0] = float(s);
    out[1] = __bfloat162float(__hfma(a[0], a[1], a[2]));
    out[2] = __half2float(h[0] * h[1]);
    out[3] = float(__hmax(a[0], a[2]));
    const __nv_bfloat162 p = __floats2bfloat162_rn(1.5f, -2.25f);
    const float2 f2 = __bfloat1622float2(p + p);
    out[4] = f2.x;
    out[5] = f2.y;
    out[6] = __shfl_sync(0xffffffffu, h[0], 0) == h[0] ? 1.0f : 0.0f;
    out[7] = (float)(int)a[2];  // toward zero
}

// 3-D thread and block indices: each thread writes its coordinates into its place of a dense
// (gz*bz, gy*by, gx*bx) array, encoded as gz gy gx tz ty tx digits.
extern "C" __global__ void emu_grid3d(unsigned* out) {
    const unsigned x = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned y = blockIdx.y * blockDim.y + threadIdx.y;
    const unsigned z = blockIdx.z * blockDim.z + threadIdx.z;
    const unsigned w = gridDim.x * blockDim.x, h = gridDim.y * blockDim.y;
    out[(z * h + y) * w + x] = blockIdx.z * 100000 + blockIdx.y * 10000 + blockIdx.x * 1000 + threadIdx.z * 100 +
                               threadIdx.y * 10 + threadIdx.x;
}

// Two independent half-warp shuffle groups at the same time (disjoint masks).
extern "C" __global__ void emu_half_warps(int* out) {
    const int lane = threadIdx.x % 32;
    const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    int v = lane;
    for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(mask, v, off);
    out[threadIdx.x] = v;
}

// The canonical block reduction: warp sums with __shfl_down_sync, one value per warp through
// __shared__, then the first warp reduces those. Launched with 1024 threads, from several host
// threads at once (the launches must not share the __shared__ array at the same time).
extern "C" __global__ void emu_block_reduce(const float* in, float* out) {
    __shared__ float warp_sums[32];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    float v = in[blockIdx.x * blockDim.x + tid];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0f;
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

// Broken kernels: each must make the emulator abort with a message (the self-test runs them in a
// child process). A divergent shuffle/__syncthreads pair deadlocks; mixed intrinsics diverge.
extern "C" __global__ void emu_bad_divergent_barrier(float* out) {
    float v = threadIdx.x;
    if (threadIdx.x == 0)
        v = __shfl_xor_sync(0xffffffffu, v, 1);  // lanes 1..31 never come
    else
        __syncthreads();  // and thread 0 never comes here
    out[threadIdx.x] = v;
}
extern "C" __global__ void emu_bad_mixed_intrinsics(unsigned* out) {
    if (threadIdx.x % 2)
        out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
    else
        out[threadIdx.x] = __shfl_sync(0xffffffffu, 1u, 0);
}
// Reads a lane that returned: undefined on the GPU; the emulator warns and returns NaN.
extern "C" __global__ void emu_shfl_from_exited_lane(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 8);
}

// ---------------------------------------------------------------------------------------------
// Planted bugs: kernels that the GPU would get wrong or fault on, and that the lenient emulator
// (SIMCLR_EMU_STRICT=0, the emulator as it was) runs to a plausible result. The strict one must
// show each of them (selftest_main.cpp runs both).
// ---------------------------------------------------------------------------------------------

// Reads a static shared tile of which only the first half was written: on the GPU the second
// half is garbage; an emulator whose static shared memory starts at zero returns 0 there.
extern "C" __global__ void emu_planted_uninit_static_smem(float* out) {
    __shared__ float tile[64];
    if (threadIdx.x < 32) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = tile[threadIdx.x];
}
// The same bug inside a template, where GCC would drop the section attribute (clang keeps it).
template <int N> __device__ void planted_uninit_tile(float* out) {
    __shared__ float tile[N];
    if (threadIdx.x < N / 2) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[blockIdx.x * N + threadIdx.x] = tile[threadIdx.x];
}
extern "C" __global__ void emu_planted_uninit_template_smem(float* out) { planted_uninit_tile<64>(out); }

// Block b reads what block b − 1 wrote in the same launch: in-order blocks give 1, 2, 3, ...; the
// GPU runs blocks in no promised order.
extern "C" __global__ void emu_planted_block_chain(int* out) {
    if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x == 0 ? 1 : out[blockIdx.x - 1] + 1;
}

// Float atomics from many blocks: the sum's rounding depends on the order the blocks add in.
extern "C" __global__ void emu_planted_atomic_sum(const float* in, float* sum) {
    if (threadIdx.x == 0) atomicAdd(sum, in[blockIdx.x]);
}

// A float4 load from an address 4 bytes past a 16-byte boundary: fine on x86, a fault on the GPU.
extern "C" __global__ void emu_planted_misaligned_float4(const float* in, float* out) {
    const float4 v = load_vector<float4>(in + 1);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// A 4-byte store of two bf16 at an odd element: the compiler's alignment check sees it.
extern "C" __global__ void emu_planted_misaligned_pair_store(bf16* out) {
    *reinterpret_cast<uint32_t*>(out + 2 * threadIdx.x + 1) = 0x3f803f80u;
}

// cp.async from a global address 8 bytes past a 16-byte boundary (the GPU faults).
extern "C" __global__ void emu_planted_misaligned_cp_async(const float* in, float* out) {
    __shared__ __align__(16) float tile[4];
    if (threadIdx.x == 0) cp_async_16(tile, in + 2, true);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x % 4];
}

// ldmatrix whose rows start 8 bytes into a 16-byte boundary (row stride 16 elements + 4): the
// hardware needs every row address 16-byte aligned.
extern "C" __global__ void emu_planted_misaligned_ldmatrix(const unsigned short* in, unsigned* out) {
    __shared__ __align__(16) unsigned short tile[8 * 24];
    for (int i = threadIdx.x; i < 8 * 24; i += 32) tile[i] = in[i];
    __syncthreads();
    uint32_t r[2];
    ldmatrix_x2(r, tile + 4 + 24 * (threadIdx.x % 8));
    out[threadIdx.x] = r[0] ^ r[1];
}
