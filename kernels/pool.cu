// Pooling on NHWC activations (launchers and math: src/backend/cuda/kernels/pool.rs):
// max_pool2d forward (saving the winning input pixel) and backward, global average pool forward
// and backward. One thread per output element with the channel innermost, so a warp reads and
// writes 32 consecutive channels of one pixel: coalesced without shared memory. Arithmetic in
// f32 whatever the storage type.
#include "common.cuh"

// y[n][oh][ow][c] = max over the window of x (padding never wins); argmax = ih·w + iw of the first
// maximum in row-major window order (the CPU op's choice on ties).
template <typename T>
__device__ void max_pool_fwd(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax, int n, int h, int w,
                             int c, int oh, int ow, int kh, int kw, int stride, int pad) {
    const long long total = (long long)n * oh * ow * c;
    GRID_STRIDE_LOOP(i, total) {
        const int ch = (int)(i % c);
        long long pix = i / c;
        const int ox = (int)(pix % ow);
        pix /= ow;
        const int oy = (int)(pix % oh);
        const int img = (int)(pix / oh);
        const T* plane = x + (long long)img * h * w * c + ch;
        float best = -INFINITY;
        int best_i = -1;
        for (int dy = 0; dy < kh; ++dy) {
            const int iy = oy * stride - pad + dy;
            if ((unsigned)iy >= (unsigned)h) continue;
            for (int dx = 0; dx < kw; ++dx) {
                const int ix = ox * stride - pad + dx;
                if ((unsigned)ix >= (unsigned)w) continue;
                const float v = to_float(plane[((long long)iy * w + ix) * c]);
                if (best_i < 0 || v > best) {
                    best = v;
                    best_i = iy * w + ix;
                }
            }
        }
        y[i] = from_float<T>(best);
        argmax[i] = best_i;
    }
}

// dx[n][iy][ix][c] = Σ of dy over the outputs whose window contains (iy, ix) and whose saved
// argmax is this pixel: a gather (each input pixel visits the ≤ ⌈k/stride⌉² windows covering it),
// so no atomics and a fixed summation order.
template <typename T>
__device__ void max_pool_bwd(const T* __restrict__ dy, const int* __restrict__ argmax, T* __restrict__ dx, int n, int h,
                             int w, int c, int oh, int ow, int kh, int kw, int stride, int pad) {
    const long long total = (long long)n * h * w * c;
    GRID_STRIDE_LOOP(i, total) {
        const int ch = (int)(i % c);
        long long pix = i / c;
        const int ix = (int)(pix % w);
        pix /= w;
        const int iy = (int)(pix % h);
        const int img = (int)(pix / h);
        const int me = iy * w + ix;
        // Outputs oy with oy·stride − pad ≤ iy ≤ oy·stride − pad + kh − 1.
        const int oy_lo = max(0, (iy + pad - kh + stride) / stride), oy_hi = min(oh - 1, (iy + pad) / stride);
        const int ox_lo = max(0, (ix + pad - kw + stride) / stride), ox_hi = min(ow - 1, (ix + pad) / stride);
        float acc = 0.0f;
        for (int oy = oy_lo; oy <= oy_hi; ++oy)
            for (int ox = ox_lo; ox <= ox_hi; ++ox) {
                const long long o = (((long long)img * oh + oy) * ow + ox) * c + ch;
                if (argmax[o] == me) acc += to_float(dy[o]);
            }
        dx[i] = from_float<T>(acc);
    }
}

// y[n][c] = mean over the h·w pixels of x[n][·][·][c].
template <typename T> __device__ void global_avg_fwd(const T* __restrict__ x, T* __restrict__ y, int n, int hw, int c) {
    const long long total = (long long)n * c;
    GRID_STRIDE_LOOP(i, total) {
        const int ch = (int)(i % c), img = (int)(i / c);
        const T* p = x + (long long)img * hw * c + ch;
        float acc = 0.0f;
        for (int j = 0; j < hw; ++j) acc += to_float(p[(long long)j * c]);
        y[i] = from_float<T>(acc / (float)hw);
    }
}

// dx[n][·][·][c] = dy[n][c] / (h·w).
template <typename T> __device__ void global_avg_bwd(const T* __restrict__ dy, T* __restrict__ dx, int n, int hw, int c) {
    const long long total = (long long)n * hw * c;
    GRID_STRIDE_LOOP(i, total) {
        const int ch = (int)(i % c);
        const int img = (int)(i / ((long long)hw * c));
        dx[i] = from_float<T>(to_float(dy[(long long)img * c + ch]) / (float)hw);
    }
}

#define POOL_KERNELS(T, SUF)                                                                                      \
    extern "C" __global__ void max_pool_fwd_##SUF(const T* x, T* y, int* argmax, int n, int h, int w, int c,       \
                                                  int oh, int ow, int kh, int kw, int stride, int pad) {           \
        max_pool_fwd<T>(x, y, argmax, n, h, w, c, oh, ow, kh, kw, stride, pad);                                  \
    }                                                                                                             \
    extern "C" __global__ void max_pool_bwd_##SUF(const T* dy, const int* argmax, T* dx, int n, int h, int w,      \
                                                  int c, int oh, int ow, int kh, int kw, int stride, int pad) {    \
        max_pool_bwd<T>(dy, argmax, dx, n, h, w, c, oh, ow, kh, kw, stride, pad);                                \
    }                                                                                                             \
    extern "C" __global__ void global_avg_pool_fwd_##SUF(const T* x, T* y, int n, int hw, int c) {                \
        global_avg_fwd<T>(x, y, n, hw, c);                                                                        \
    }                                                                                                             \
    extern "C" __global__ void global_avg_pool_bwd_##SUF(const T* dy, T* dx, int n, int hw, int c) {              \
        global_avg_bwd<T>(dy, dx, n, hw, c);                                                                      \
    }

POOL_KERNELS(float, f32)
POOL_KERNELS(bf16, bf16)
