// A one-warp check of the tensor-core primitives in mma.cuh, run by the parity tests on both the
// GPU and the emulator: if the emulator's fragment layouts differ from the hardware's, this is
// where it shows, not as a wrong convolution or attention output.
//
// Input: A (16x16) and B (16x16, k x n), row-major. Output (float, 3 x 256 + 8):
//   out[0..256)    A·B with the fragments gathered straight from global memory by the documented
//                  layout formulas (no ldmatrix), two n-tiles of 8;
//   out[256..512)  A·B via cp.async into shared memory, ldmatrix.x4 for A, ldmatrix.x4.trans for
//                  both n-tiles of B;
//   out[512..768)  A·B via ldmatrix.x4 for A and ldmatrix.x2 (no trans) on Bᵀ staged n x k;
//   out[768..776)  a 32-byte shared chunk filled with 0xff, then overwritten by two cp.async with
//                  valid = false: must read back as zeros.
// Launch: one block of 32 threads.
#include "mma.cuh"

__device__ void store_tile(float* out, int n0, const float d[4]) {
    const int lane = lane_id(), g = lane >> 2, t = lane & 3;
    out[g * 16 + n0 + 2 * t] = d[0];
    out[g * 16 + n0 + 2 * t + 1] = d[1];
    out[(g + 8) * 16 + n0 + 2 * t] = d[2];
    out[(g + 8) * 16 + n0 + 2 * t + 1] = d[3];
}

template <typename T>
__device__ void tensor_core_probe(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ out) {
    __shared__ __align__(16) T as[16 * 16];
    __shared__ __align__(16) T bs[16 * 16];   // k x n
    __shared__ __align__(16) T bts[16 * 16];  // n x k
    __shared__ __align__(16) unsigned char poison[32];
    const int lane = lane_id(), g = lane >> 2, t = lane & 3;

    // 1. Fragments by formula.
    uint32_t fa[4];
    fa[0] = pack2(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]);
    fa[1] = pack2(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]);
    fa[2] = pack2(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]);
    fa[3] = pack2(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9]);
    for (int n0 = 0; n0 < 16; n0 += 8) {
        uint32_t fb[2];
        fb[0] = pack2(b[(2 * t) * 16 + n0 + g], b[(2 * t + 1) * 16 + n0 + g]);
        fb[1] = pack2(b[(2 * t + 8) * 16 + n0 + g], b[(2 * t + 9) * 16 + n0 + g]);
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_16816<T>(d, fa, fb);
        store_tile(out, n0, d);
    }

    // 2. cp.async staging (16 bytes = 8 elements per copy; 32 copies per matrix, one per lane).
    cp_async_16(as + lane * 8, a + lane * 8, true);
    cp_async_16(bs + lane * 8, b + lane * 8, true);
    cp_async_commit();
    for (int i = lane; i < 256; i += 32) bts[(i % 16) * 16 + i / 16] = b[i];  // bts[n][k] = b[k][n]
    poison[lane] = 0xff;
    cp_async_wait<0>();
    __syncthreads();
    if (lane < 2) cp_async_16(poison + lane * 16, a, false);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // ldmatrix.x4 for A: tile i = lane / 8 covers rows 8(i & 1).., columns 8(i >> 1)..
    const int tile = lane >> 3, r = lane & 7;
    uint32_t la[4];
    ldmatrix_x4(la, as + (r + 8 * (tile & 1)) * 16 + 8 * (tile >> 1));

    // 3. B through ldmatrix.x4.trans: tiles (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
    uint32_t lb[4];
    ldmatrix_x4_trans(lb, bs + (r + 8 * (tile & 1)) * 16 + 8 * (tile >> 1));
    for (int nt = 0; nt < 2; ++nt) {
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        uint32_t fb[2] = {lb[2 * nt], lb[2 * nt + 1]};
        mma_16816<T>(d, la, fb);
        store_tile(out + 256, 8 * nt, d);
    }

    // 4. B through ldmatrix.x2 on Bᵀ (n x k): tile 0 = k 0-7, tile 1 = k 8-15, for rows n0..n0+7.
    for (int nt = 0; nt < 2; ++nt) {
        uint32_t fb[2];
        ldmatrix_x2(fb, bts + (8 * nt + r) * 16 + 8 * (tile & 1));
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_16816<T>(d, la, fb);
        store_tile(out + 512, 8 * nt, d);
    }

    if (lane < 8) {
        float v;
        memcpy(&v, poison + lane * 4, 4);
        out[768 + lane] = v;
    }
}

extern "C" __global__ void tensor_core_probe_bf16(const bf16* a, const bf16* b, float* out) {
    tensor_core_probe<bf16>(a, b, out);
}
extern "C" __global__ void tensor_core_probe_f16(const f16* a, const f16* b, float* out) {
    tensor_core_probe<f16>(a, b, out);
}
