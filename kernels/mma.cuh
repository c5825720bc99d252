// Tensor-core building blocks (sm_80 and newer) shared by the convolution and attention kernels:
// the warp-wide matrix multiply-accumulate `mma.sync.m16n8k16` (bf16 or f16 in, f32 accumulate),
// `ldmatrix` (shared memory -> mma fragments) and `cp.async` (global -> shared without registers).
//
// Every primitive has two implementations: inline PTX for the GPU, and for the CPU emulator
// (SIMCLR_EMU) the same data movement done by exchanging registers across the warp (one
// emulator rendezvous gives every lane all 32 lanes' values), following the fragment layouts
// of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type", "ldmatrix").
// The tensor_core_probe kernels check on the GPU that both agree with a plain matrix product, so
// a kernel that passes its parity test on the emulator uses the fragments as the hardware does.
//
// Fragment layouts (lane = 0..31, g = lane / 4, t = lane % 4; each u32 register holds two 16-bit
// elements, the lower-indexed one in the low half):
//   A (16x16, row-major)  a[0] = A[g][2t..2t+1]    a[1] = A[g+8][2t..2t+1]
//                         a[2] = A[g][2t+8..+9]    a[3] = A[g+8][2t+8..+9]
//   B (16x8, "col": k x n) b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
//   C/D (16x8, f32)        c[0..1] = C[g][2t..2t+1] c[2..3] = C[g+8][2t..2t+1]
#pragma once

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// Packing 16-bit pairs into the u32 registers the fragments are made of
// ---------------------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ unsigned short bits16(T x);
template <> __device__ __forceinline__ unsigned short bits16<bf16>(bf16 x) { return __bfloat16_as_ushort(x); }
template <> __device__ __forceinline__ unsigned short bits16<f16>(f16 x) { return __half_as_ushort(x); }

// Two elements, `lo` at the lower index.
template <typename T> __device__ __forceinline__ uint32_t pack2(T lo, T hi) {
    return (uint32_t)bits16(lo) | ((uint32_t)bits16(hi) << 16);
}
template <typename T> __device__ __forceinline__ uint32_t pack2_float(float lo, float hi) {
    return pack2(from_float<T>(lo), from_float<T>(hi));
}

template <typename T> __device__ __forceinline__ float unpack_lo(uint32_t r);
template <typename T> __device__ __forceinline__ float unpack_hi(uint32_t r);
template <> __device__ __forceinline__ float unpack_lo<bf16>(uint32_t r) { return __uint_as_float(r << 16); }
template <> __device__ __forceinline__ float unpack_hi<bf16>(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }
template <> __device__ __forceinline__ float unpack_lo<f16>(uint32_t r) {
    return __half2float(__ushort_as_half((unsigned short)(r & 0xffffu)));
}
template <> __device__ __forceinline__ float unpack_hi<f16>(uint32_t r) {
    return __half2float(__ushort_as_half((unsigned short)(r >> 16)));
}

// Lane index within the warp, for any block shape (warps are formed from the linear thread id).
__device__ __forceinline__ int lane_id() {
    return (int)((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31);
}

// ---------------------------------------------------------------------------------------------
// mma.sync.m16n8k16: d += A (16x16) * B (16x8), f32 accumulators. All 32 lanes must call it.
// ---------------------------------------------------------------------------------------------
#ifdef SIMCLR_EMU
// Every lane's 64-bit value in one rendezvous of the whole warp (the emulator's exchange hands
// each lane all 32 published slots): three of these per mma instead of 32 shuffles.
__device__ inline void warp_all_gather64(unsigned long long mine, unsigned long long all[32]) {
    simclr_emu_warp_view view;
    simclr_emu_warp_exchange(SIMCLR_EMU_WARP_SHFL, FULL_MASK, mine, &view);
    if (view.participants != FULL_MASK) simclr_emu_fatal("mma/ldmatrix need all 32 lanes of the warp");
    for (int i = 0; i < 32; ++i) all[i] = view.slot[i];
}
__device__ inline unsigned long long join64(uint32_t lo, uint32_t hi) {
    return (unsigned long long)lo | ((unsigned long long)hi << 32);
}

// Each lane takes the A rows (g, g+8) and B columns (2t, 2t+1) its four outputs need from the
// lanes that hold them (layouts at the top of this file), then sums over k in order.
template <typename T> __device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    const int lane = lane_id(), g = lane >> 2, t = lane & 3;
    unsigned long long a01[32], a23[32], b01[32];
    warp_all_gather64(join64(a[0], a[1]), a01);
    warp_all_gather64(join64(a[2], a[3]), a23);
    warp_all_gather64(join64(b[0], b[1]), b01);
    // reg r of lane l: a0/a1 = low/high of a01, a2/a3 = low/high of a23; b0/b1 = low/high of b01.
    auto reg = [](const unsigned long long* pair, int l, int high) { return (uint32_t)(pair[l] >> (32 * high)); };
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
            float acc = 0.0f;
            for (int k = 0; k < 16; ++k) {
                const int holder_a = (g * 4) + ((k & 7) >> 1), holder_b = ((2 * t + j) * 4) + ((k & 7) >> 1);
                // A[g + 8i][k] is register i + 2·(k ≥ 8); B[k][n] is register (k ≥ 8).
                const uint32_t ra = reg(k < 8 ? a01 : a23, holder_a, i);
                const uint32_t rb = reg(b01, holder_b, k >= 8);
                const float av = (k & 1) ? unpack_hi<T>(ra) : unpack_lo<T>(ra);
                const float bv = (k & 1) ? unpack_hi<T>(rb) : unpack_lo<T>(rb);
                acc += av * bv;
            }
            d[2 * i + j] += acc;
        }
}
#else
template <typename T> __device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]);
template <> __device__ __forceinline__ void mma_16816<bf16>(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma_16816<f16>(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// ---------------------------------------------------------------------------------------------
// ldmatrix: loads 8x8 tiles of 16-bit elements from shared memory into fragments. Lane l passes
// the address of one 16-byte row: lanes 0-7 the rows of tile 0, 8-15 of tile 1, 16-23 of tile 2,
// 24-31 of tile 3 (x2 uses lanes 0-15, x1 lanes 0-7; the other lanes' addresses are ignored but
// must still be passed). Register i receives, for tile i, row l/4, columns 2(l%4)..+1; with
// `trans`, the transposed tile: rows 2(l%4)..+1 of column l/4.
// ---------------------------------------------------------------------------------------------
#ifdef SIMCLR_EMU
template <int TILES, bool TRANS> __device__ __forceinline__ void ldmatrix_emulated(uint32_t* r, const void* row) {
    const int lane = lane_id();
    unsigned long long rows[32];  // every lane's row address
    warp_all_gather64((unsigned long long)(uintptr_t)row, rows);
    // The hardware needs every row it reads (lanes 0 .. 8·TILES−1) on a 16-byte boundary.
    if (lane < 8 * TILES) simclr_emu_check_aligned(row, 16, TRANS ? "an ldmatrix.trans row" : "an ldmatrix row");
    for (int i = 0; i < TILES; ++i) {
        unsigned short e[2];
        for (int j = 0; j < 2; ++j) {
            // TRANS: element (row 2(l%4)+j, column l/4); otherwise (row l/4, column 2(l%4)+j).
            const int src_row = TRANS ? 2 * (lane & 3) + j : lane >> 2;
            const int col = TRANS ? lane >> 2 : 2 * (lane & 3) + j;
            e[j] = reinterpret_cast<const unsigned short*>((uintptr_t)rows[8 * i + src_row])[col];
        }
        r[i] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) { ldmatrix_emulated<4, false>(r, row); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
    ldmatrix_emulated<4, true>(r, row);
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) { ldmatrix_emulated<2, false>(r, row); }
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
    ldmatrix_emulated<2, true>(r, row);
}
#else
__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(row)));
}
#endif

// ---------------------------------------------------------------------------------------------
// cp.async: 16-byte global -> shared copies that bypass registers, grouped and waited on in
// stages (double buffering). `valid == false` writes 16 zero bytes instead (out-of-range rows
// and padding), so the consumer never branches on bounds. Both addresses 16-byte aligned.
// ---------------------------------------------------------------------------------------------
#ifdef SIMCLR_EMU
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    simclr_emu_check_aligned(smem, 16, "the shared-memory destination of cp.async (16 bytes)");
    // PTX asks both addresses to be aligned even when src-size is 0 (the zero-fill case).
    simclr_emu_check_aligned(gmem, 16, "the global source of cp.async (16 bytes)");
    if (valid)
        memcpy(smem, gmem, 16);
    else
        memset(smem, 0, 16);
}
__device__ __forceinline__ void cp_async_commit() {}
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {}
#else
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most PENDING committed groups are still in flight.
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
}
#endif
