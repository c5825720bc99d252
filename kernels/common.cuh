// Shared helpers for every kernel file: element conversion, warp and block reductions.
//
// Conventions (the Rust launchers in src/backend/cuda/kernels/ rely on them):
// - kernels are `extern "C" __global__` so their names survive into the PTX unmangled, one
//   exported kernel per (operation, element type): `layernorm_fwd_f32`, `layernorm_fwd_bf16`;
// - arithmetic is in f32 whatever the storage type (bf16 in, f32 accumulate);
// - element counts are `long long` (activations of a 256-clip batch exceed 2^31 elements),
//   row lengths and row counts `int`;
// - block reductions assume blockDim.x is a multiple of 32 and at most 1024.
//
// The same files compile for the CPU emulator (kernels/emu/cuda_emu.h defines SIMCLR_EMU and
// stands in for the CUDA headers).
#pragma once

#ifndef SIMCLR_EMU
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
// Dynamic shared memory, declared once per kernel: SIMCLR_DYNAMIC_SMEM(float, tile);
#define SIMCLR_DYNAMIC_SMEM(type, name)                                  \
    extern __shared__ __align__(16) unsigned char simclr_dyn_smem_[];   \
    type* name = reinterpret_cast<type*>(simclr_dyn_smem_)
#endif

typedef __nv_bfloat16 bf16;
typedef __half f16;

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(f16 x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ f16 from_float<f16>(float x) { return __float2half(x); }

// One 8- or 16-byte access of a CUDA vector type (float2/float4/uint2/uint4) at `p`. Every such
// access goes through these two: the GPU faults on a misaligned one, and the emulator checks the
// alignment here and names the kernel (x86 would otherwise accept it, or crash without a word).
template <typename V> __device__ __forceinline__ V load_vector(const void* p) {
#ifdef SIMCLR_EMU
    simclr_emu_check_aligned(p, alignof(V), "a vector load");
#endif
    return *reinterpret_cast<const V*>(p);
}
template <typename V> __device__ __forceinline__ void store_vector(void* p, const V& v) {
#ifdef SIMCLR_EMU
    simclr_emu_check_aligned(p, alignof(V), "a vector store");
#endif
    *reinterpret_cast<V*>(p) = v;
}

// Vector loads and stores: VEC (1 or 4) elements of T <-> VEC floats, as one float4 (f32) or
// uint2 (bf16) access when VEC = 4. bf16 → f32 is exact: the bf16 bits are the high half of the
// f32 (element 0 in the low bytes).
__device__ __forceinline__ void vec_load4(const float* p, float* v) {
    const float4 q = load_vector<float4>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void vec_load4(const bf16* p, float* v) {
    const uint2 q = load_vector<uint2>(p);
    v[0] = __uint_as_float(q.x << 16), v[1] = __uint_as_float(q.x & 0xffff0000u);
    v[2] = __uint_as_float(q.y << 16), v[3] = __uint_as_float(q.y & 0xffff0000u);
}
__device__ __forceinline__ void vec_store4(float* p, const float* v) {
    store_vector(p, make_float4(v[0], v[1], v[2], v[3]));
}
__device__ __forceinline__ void vec_store4(bf16* p, const float* v) {
    const auto bits = [](float f) -> unsigned { return __bfloat16_as_ushort(__float2bfloat16(f)); };
    uint2 q;
    q.x = bits(v[0]) | (bits(v[1]) << 16);
    q.y = bits(v[2]) | (bits(v[3]) << 16);
    store_vector(p, q);
}
template <int VEC, typename T>
__device__ __forceinline__ void vec_load(const T* p, float* v) {
    if constexpr (VEC == 4) vec_load4(p, v);
    else v[0] = to_float(p[0]);
}
template <int VEC, typename T>
__device__ __forceinline__ void vec_store(T* p, const float* v) {
    if constexpr (VEC == 4) vec_store4(p, v);
    else p[0] = from_float<T>(v[0]);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` is a __shared__ float[32]
// the caller owns; it may be reused after the call returns (the trailing barrier protects it).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = lane < warps ? scratch[lane] : -INFINITY;
    m = warp_max(m);
    __syncthreads();
    return m;
}

// Grid-stride loop over n elements.
#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)
