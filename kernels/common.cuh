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
