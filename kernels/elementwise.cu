// Elementwise kernels: unary maps and their backward, binary arithmetic (same-shape and
// broadcasting), casts between f32 and bf16, fill, and axpby.
//
// Organisation. Every op is a small functor on f32 (`float operator()(float...)`) and one of
// three generic drivers applies it to memory:
// - map_unary / map_binary: contiguous, flat. Grid-stride over 16-byte packs (4 f32 or
//   8 bf16 per load/store: the widest single memory instruction) when every pointer is
//   16-byte aligned, then a scalar tail. These ops are purely memory-bound, so the whole
//   design goal is one coalesced 128-bit access per element group and nothing else;
// - binary_bcast: the general broadcasting path. The Rust launcher collapses the output
//   shape to at most 6 dims and passes, per input, the element stride of each dim (0 where
//   the input is broadcast). Each thread turns its linear output index into the two input
//   offsets (integer div/mod per dim; 32-bit when every offset fits, which is much cheaper
//   than 64-bit division on the GPU). When the innermost dim is contiguous or broadcast in
//   both inputs and everything is a multiple of the pack width (the bias-add case), a thread
//   handles one pack per index decomposition.
// Arithmetic is f32 for both storage types; bf16 results are rounded once, on store.
//
// Helpers have internal linkage (anonymous namespaces): every kernel file is also compiled
// into one emulator library, where same-named helpers of different files would collide.
#include "common.cuh"

// ------------------------------------------------------------------ 16-byte packs

namespace {
// One 128-bit memory access: 4 f32 or 8 bf16.
template <typename T> struct alignas(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Loads V consecutive elements (V a multiple of the pack width; p aligned) as f32.
template <int V, typename T> __device__ __forceinline__ void load_vec(const T* p, float (&out)[V]) {
    constexpr int N = Pack<T>::N;
    static_assert(V % N == 0, "V must be a whole number of packs");
#pragma unroll
    for (int j = 0; j < V / N; ++j) {
        const Pack<T> pk = load_vector<Pack<T>>(p + j * N);
#pragma unroll
        for (int k = 0; k < N; ++k) out[j * N + k] = to_float(pk.v[k]);
    }
}

template <int V, typename T> __device__ __forceinline__ void store_vec(T* p, const float (&in)[V]) {
    constexpr int N = Pack<T>::N;
    static_assert(V % N == 0, "V must be a whole number of packs");
#pragma unroll
    for (int j = 0; j < V / N; ++j) {
        Pack<T> pk;
#pragma unroll
        for (int k = 0; k < N; ++k) pk.v[k] = from_float<T>(in[j * N + k]);
        store_vector(p + j * N, pk);
    }
}

// Elements per vector step for a kernel touching types A and B: enough for one whole pack
// of each (f32 -> bf16 casts move 8 elements: two f32 packs in, one bf16 pack out).
template <typename A, typename B> struct VecWidth {
    static constexpr int V = Pack<A>::N > Pack<B>::N ? Pack<A>::N : Pack<B>::N;
};

// ------------------------------------------------------------------ flat drivers

// y[i] = f(x[i]) for i < n.
template <typename Tin, typename Tout, typename F>
__device__ __forceinline__ void map_unary(const Tin* __restrict__ x, Tout* __restrict__ y, long long n, F f) {
    constexpr int V = VecWidth<Tin, Tout>::V;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long done = 0;
    if (aligned16(x) && aligned16(y)) {
        const long long groups = n / V;
        for (long long g = tid; g < groups; g += stride) {
            float v[V];
            load_vec<V>(x + g * V, v);
#pragma unroll
            for (int k = 0; k < V; ++k) v[k] = f(v[k]);
            store_vec<V>(y + g * V, v);
        }
        done = groups * V;
    }
    for (long long i = done + tid; i < n; i += stride) y[i] = from_float<Tout>(f(to_float(x[i])));
}

// y[i] = f(a[i], b[i]) for i < n.
template <typename T, typename F>
__device__ __forceinline__ void map_binary(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                           long long n, F f) {
    constexpr int V = Pack<T>::N;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long done = 0;
    if (aligned16(a) && aligned16(b) && aligned16(y)) {
        const long long groups = n / V;
        for (long long g = tid; g < groups; g += stride) {
            float va[V], vb[V];
            load_vec<V>(a + g * V, va);
            load_vec<V>(b + g * V, vb);
#pragma unroll
            for (int k = 0; k < V; ++k) va[k] = f(va[k], vb[k]);
            store_vec<V>(y + g * V, va);
        }
        done = groups * V;
    }
    for (long long i = done + tid; i < n; i += stride) y[i] = from_float<T>(f(to_float(a[i]), to_float(b[i])));
}

// ------------------------------------------------------------------ unary forward
// Formulas follow src/ops/activations.rs and src/ops/elementwise.rs (the CPU reference).

#define SQRT_2_OVER_PI 0.7978845608028654f  // sqrt(2/pi)
#define GELU_TANH_C 0.044715f
#define FRAC_1_SQRT_2 0.7071067811865476f   // 1/sqrt(2)
#define FRAC_1_SQRT_2PI 0.3989422804014327f // 1/sqrt(2 pi)

struct ReluF {
    __device__ float operator()(float x) const { return x > 0.0f ? x : 0.0f; }
};
// x * Phi(x), Phi the standard normal CDF (torch.nn.GELU()).
struct GeluErfF {
    __device__ float operator()(float x) const { return x * 0.5f * (1.0f + erff(x * FRAC_1_SQRT_2)); }
};
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (torch.nn.GELU(approximate="tanh")).
struct GeluTanhF {
    __device__ float operator()(float x) const {
        const float u = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
};
// Branches so exp never overflows (as the CPU op).
struct SigmoidF {
    __device__ float operator()(float x) const {
        if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
        const float e = expf(x);
        return e / (1.0f + e);
    }
};
struct TanhF {
    __device__ float operator()(float x) const { return tanhf(x); }
};
struct ExpF {
    __device__ float operator()(float x) const { return expf(x); }
};
struct LogF {
    __device__ float operator()(float x) const { return logf(x); }
};
struct SqrtF {
    __device__ float operator()(float x) const { return sqrtf(x); }
};
struct NegF {
    __device__ float operator()(float x) const { return -x; }
};
struct AbsF {
    __device__ float operator()(float x) const { return fabsf(x); }
};
struct ScaleShiftF {
    float a, b;
    __device__ float operator()(float x) const { return a * x + b; }
};
struct IdentityF {
    __device__ float operator()(float x) const { return x; }
};

}  // namespace

#define UNARY_KERNEL(name, F)                                                                          \
    extern "C" __global__ void name##_f32(const float* __restrict__ x, float* __restrict__ y, long long n) { \
        map_unary(x, y, n, F{});                                                                       \
    }                                                                                                  \
    extern "C" __global__ void name##_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, long long n) {  \
        map_unary(x, y, n, F{});                                                                       \
    }

UNARY_KERNEL(relu_fwd, ReluF)
UNARY_KERNEL(gelu_erf_fwd, GeluErfF)
UNARY_KERNEL(gelu_tanh_fwd, GeluTanhF)
UNARY_KERNEL(sigmoid_fwd, SigmoidF)
UNARY_KERNEL(tanh_fwd, TanhF)
UNARY_KERNEL(exp_fwd, ExpF)
UNARY_KERNEL(log_fwd, LogF)
UNARY_KERNEL(sqrt_fwd, SqrtF)
UNARY_KERNEL(neg_fwd, NegF)
UNARY_KERNEL(abs_fwd, AbsF)

// y = a x + b.
extern "C" __global__ void scale_shift_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float a,
                                           float b) {
    map_unary(x, y, n, ScaleShiftF{a, b});
}
extern "C" __global__ void scale_shift_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, long long n, float a,
                                            float b) {
    map_unary(x, y, n, ScaleShiftF{a, b});
}

// ------------------------------------------------------------------ unary backward
// dx = dy * f'(.), each from what the CPU op saves: the output y where f' is cheaper from it
// (relu, sigmoid, tanh, exp, sqrt), the input x otherwise (gelu_erf, gelu_tanh, log).

namespace {
// saved = y: the gradient passes where the output is positive.
struct ReluBwdF {
    __device__ float operator()(float g, float y) const { return y > 0.0f ? g : 0.0f; }
};
// saved = x: Phi(x) + x phi(x).
struct GeluErfBwdF {
    __device__ float operator()(float g, float x) const {
        const float cdf = 0.5f * (1.0f + erff(x * FRAC_1_SQRT_2));
        const float pdf = FRAC_1_SQRT_2PI * expf(-0.5f * x * x);
        return g * (cdf + x * pdf);
    }
};
// saved = x.
struct GeluTanhBwdF {
    __device__ float operator()(float g, float x) const {
        const float u = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x);
        const float t = tanhf(u);
        const float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_TANH_C * x * x);
        return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
    }
};
// saved = y = sigmoid(x): y (1 - y).
struct SigmoidBwdF {
    __device__ float operator()(float g, float s) const { return g * s * (1.0f - s); }
};
// saved = y = tanh(x): 1 - y^2.
struct TanhBwdF {
    __device__ float operator()(float g, float t) const { return g * (1.0f - t * t); }
};
// saved = y = exp(x).
struct ExpBwdF {
    __device__ float operator()(float g, float y) const { return g * y; }
};
// saved = x: dx = dy / x.
struct LogBwdF {
    __device__ float operator()(float g, float x) const { return g / x; }
};
// saved = y = sqrt(x): dx = dy / (2 y), written (dy / y) * 0.5 as the CPU op.
struct SqrtBwdF {
    __device__ float operator()(float g, float y) const { return (g / y) * 0.5f; }
};

}  // namespace

#define BINARY_KERNEL(name, F)                                                                              \
    extern "C" __global__ void name##_f32(const float* __restrict__ a, const float* __restrict__ b,          \
                                          float* __restrict__ y, long long n) {                            \
        map_binary(a, b, y, n, F{});                                                                        \
    }                                                                                                       \
    extern "C" __global__ void name##_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b,          \
                                           bf16* __restrict__ y, long long n) {                            \
        map_binary(a, b, y, n, F{});                                                                        \
    }

// (dy, saved, dx, n)
BINARY_KERNEL(relu_bwd, ReluBwdF)
BINARY_KERNEL(gelu_erf_bwd, GeluErfBwdF)
BINARY_KERNEL(gelu_tanh_bwd, GeluTanhBwdF)
BINARY_KERNEL(sigmoid_bwd, SigmoidBwdF)
BINARY_KERNEL(tanh_bwd, TanhBwdF)
BINARY_KERNEL(exp_bwd, ExpBwdF)
BINARY_KERNEL(log_bwd, LogBwdF)
BINARY_KERNEL(sqrt_bwd, SqrtBwdF)

// ------------------------------------------------------------------ binary arithmetic

namespace {
struct AddF {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct SubF {
    __device__ float operator()(float a, float b) const { return a - b; }
};
struct MulF {
    __device__ float operator()(float a, float b) const { return a * b; }
};
struct DivF {
    __device__ float operator()(float a, float b) const { return a / b; }
};
// y = a: with a strided (and b a dummy), the bcast kernel below is a strided copy, which
// makes a view row-major (`Tensor::contiguous` on the GPU). Exact for f32 and bf16.
struct FirstF {
    __device__ float operator()(float a, float) const { return a; }
};

}  // namespace

// Same shape, contiguous: (a, b, y, n).
BINARY_KERNEL(binary_add, AddF)
BINARY_KERNEL(binary_sub, SubF)
BINARY_KERNEL(binary_mul, MulF)
BINARY_KERNEL(binary_div, DivF)
BINARY_KERNEL(binary_first, FirstF)

namespace {
// Broadcasting. The output is contiguous with shape d[6 - ndim .. 6) (right-aligned; the
// launcher has merged dims that need no separate index and dropped size-1 dims); input k
// reads element sum_i coord_i * s_k[i].
#define BCAST_DIMS 6
struct Bcast {
    long long dim[BCAST_DIMS];
    long long sa[BCAST_DIMS];
    long long sb[BCAST_DIMS];
    int ndim;
};

// Offsets of output element i in a and b. I is the index type: 32-bit unsigned when every
// index and offset fits (the launcher checks), because 64-bit div/mod is a long software
// sequence on the GPU.
template <typename I>
__device__ __forceinline__ void bcast_offsets(I i, const Bcast& p, I& oa, I& ob) {
    oa = 0;
    ob = 0;
#pragma unroll
    for (int d = BCAST_DIMS - 1; d >= 0; --d) {
        if (d < BCAST_DIMS - p.ndim) break;
        const I n = (I)p.dim[d];
        const I c = i % n;
        i /= n;
        oa += c * (I)p.sa[d];
        ob += c * (I)p.sb[d];
    }
}

// V consecutive elements along the innermost dim of one input: a pack load where the input
// is contiguous there (stride 1), one load repeated where it is broadcast (stride 0).
template <int V, typename T>
__device__ __forceinline__ void load_inner(const T* p, long long inner_stride, float (&v)[V]) {
    if (inner_stride == 1) {
        load_vec<V>(p, v);
    } else {
        const float s = to_float(*p);
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = s;
    }
}

template <typename I, typename T, typename F>
__device__ __forceinline__ void bcast_body(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                           long long n, const Bcast& p, bool vec, F f) {
    const I tid = (I)blockIdx.x * blockDim.x + threadIdx.x;
    const I stride = (I)gridDim.x * blockDim.x;
    if (vec) {
        // The launcher guarantees: innermost strides in {0, 1}, innermost dim, every outer
        // stride and n multiples of V, 16-byte aligned bases; so every pack is aligned.
        constexpr int V = Pack<T>::N;
        const long long sa_in = p.sa[BCAST_DIMS - 1], sb_in = p.sb[BCAST_DIMS - 1];
        const I groups = (I)(n / V);
        for (I g = tid; g < groups; g += stride) {
            I oa, ob;
            bcast_offsets<I>(g * V, p, oa, ob);
            float va[V], vb[V];
            load_inner<V>(a + oa, sa_in, va);
            load_inner<V>(b + ob, sb_in, vb);
#pragma unroll
            for (int k = 0; k < V; ++k) va[k] = f(va[k], vb[k]);
            store_vec<V>(y + (long long)g * V, va);
        }
    } else {
        for (I i = tid; i < (I)n; i += stride) {
            I oa, ob;
            bcast_offsets<I>(i, p, oa, ob);
            y[i] = from_float<T>(f(to_float(a[oa]), to_float(b[ob])));
        }
    }
}

template <typename T, typename F>
__device__ __forceinline__ void binary_bcast(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                             long long n, const Bcast& p, int flags, F f) {
    // flags bit 0: 32-bit indexing is safe; bit 1: the packed inner path applies.
    const bool vec = (flags & 2) != 0;
    if (flags & 1) {
        bcast_body<unsigned int>(a, b, y, n, p, vec, f);
    } else {
        bcast_body<unsigned long long>(a, b, y, n, p, vec, f);
    }
}

}  // namespace

// Kernel parameters are 8-byte scalars (the launch path passes each argument in its own
// slot), so the shape and strides arrive one by one and are gathered into a Bcast here.
#define BCAST_PARAMS                                                                                   \
    long long n, int ndim, int flags, long long d0, long long d1, long long d2, long long d3, long long d4, \
        long long d5, long long a0, long long a1, long long a2, long long a3, long long a4, long long a5,   \
        long long b0, long long b1, long long b2, long long b3, long long b4, long long b5
#define BCAST_STRUCT \
    Bcast { {d0, d1, d2, d3, d4, d5}, {a0, a1, a2, a3, a4, a5}, {b0, b1, b2, b3, b4, b5}, ndim }

#define BCAST_KERNEL(name, F)                                                                                   \
    extern "C" __global__ void name##_f32(const float* __restrict__ a, const float* __restrict__ b,              \
                                          float* __restrict__ y, BCAST_PARAMS) {                               \
        binary_bcast(a, b, y, n, BCAST_STRUCT, flags, F{});                                                     \
    }                                                                                                           \
    extern "C" __global__ void name##_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b,              \
                                           bf16* __restrict__ y, BCAST_PARAMS) {                               \
        binary_bcast(a, b, y, n, BCAST_STRUCT, flags, F{});                                                     \
    }

BCAST_KERNEL(binary_add_bcast, AddF)
BCAST_KERNEL(binary_sub_bcast, SubF)
BCAST_KERNEL(binary_mul_bcast, MulF)
BCAST_KERNEL(binary_div_bcast, DivF)
BCAST_KERNEL(binary_first_bcast, FirstF)

// ------------------------------------------------------------------ casts, fill, axpby

extern "C" __global__ void cast_f32_to_bf16(const float* __restrict__ x, bf16* __restrict__ y, long long n) {
    map_unary(x, y, n, IdentityF{});
}
extern "C" __global__ void cast_bf16_to_f32(const bf16* __restrict__ x, float* __restrict__ y, long long n) {
    map_unary(x, y, n, IdentityF{});
}

namespace {
// y[i] = value.
template <typename T> __device__ __forceinline__ void fill_body(T* __restrict__ y, long long n, float value) {
    constexpr int V = Pack<T>::N;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long done = 0;
    if (aligned16(y)) {
        float v[V];
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = value;
        const long long groups = n / V;
        for (long long g = tid; g < groups; g += stride) store_vec<V>(y + g * V, v);
        done = groups * V;
    }
    const T t = from_float<T>(value);
    for (long long i = done + tid; i < n; i += stride) y[i] = t;
}
}  // namespace

extern "C" __global__ void fill_f32(float* __restrict__ y, long long n, float value) { fill_body(y, n, value); }
extern "C" __global__ void fill_bf16(bf16* __restrict__ y, long long n, float value) { fill_body(y, n, value); }

namespace {
// y = a x + b y (in place on y: gradient accumulation). y is read and written at the same
// index by the same thread, so it is not __restrict__-qualified against itself; x is.
// b == 0 does not read y (as BLAS beta = 0), so y may start uninitialised.
template <typename T>
__device__ __forceinline__ void axpby_body(const T* __restrict__ x, T* y, long long n, float a, float b) {
    constexpr int V = Pack<T>::N;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long done = 0;
    if (aligned16(x) && aligned16(y)) {
        const long long groups = n / V;
        for (long long g = tid; g < groups; g += stride) {
            float vx[V], vy[V];
            load_vec<V>(x + g * V, vx);
            if (b != 0.0f) {
                load_vec<V>(y + g * V, vy);
#pragma unroll
                for (int k = 0; k < V; ++k) vy[k] = a * vx[k] + b * vy[k];
            } else {
#pragma unroll
                for (int k = 0; k < V; ++k) vy[k] = a * vx[k];
            }
            store_vec<V>(y + g * V, vy);
        }
        done = groups * V;
    }
    for (long long i = done + tid; i < n; i += stride) {
        const float ax = a * to_float(x[i]);
        y[i] = from_float<T>(b != 0.0f ? ax + b * to_float(y[i]) : ax);
    }
}
}  // namespace

extern "C" __global__ void axpby_f32(const float* __restrict__ x, float* y, long long n, float a, float b) {
    axpby_body(x, y, n, a, b);
}
extern "C" __global__ void axpby_bf16(const bf16* __restrict__ x, bf16* y, long long n, float a, float b) {
    axpby_body(x, y, n, a, b);
}

// ------------------------------------------------------------------ clamp_min
// y = max(x, lo) and its gradient dx = dy where x > lo (0 where x was clamped): the norm floor
// of l2_normalize (F.normalize's max(‖x‖, eps)). fmaxf maps NaN to lo, as the CPU's f64::max.

namespace {
struct ClampMinF {
    float lo;
    __device__ float operator()(float x) const { return fmaxf(x, lo); }
};
// saved = x (the clamped value works too: it is > lo exactly where x is).
struct ClampMinBwdF {
    float lo;
    __device__ float operator()(float g, float x) const { return x > lo ? g : 0.0f; }
};
}  // namespace

extern "C" __global__ void clamp_min_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float lo) {
    map_unary(x, y, n, ClampMinF{lo});
}
extern "C" __global__ void clamp_min_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, long long n, float lo) {
    map_unary(x, y, n, ClampMinF{lo});
}
extern "C" __global__ void clamp_min_bwd_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                             float* __restrict__ dx, long long n, float lo) {
    map_binary(dy, x, dx, n, ClampMinBwdF{lo});
}
extern "C" __global__ void clamp_min_bwd_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ x,
                                              bf16* __restrict__ dx, long long n, float lo) {
    map_binary(dy, x, dx, n, ClampMinBwdF{lo});
}

// ------------------------------------------------------------------ moving elements between views
// Kernels that only move elements copy bits, so one instantiation per element size serves every
// dtype: b1 (u8), b2 (bf16, f16), b4 (f32), b8 (f64, i64). Gradient kernels that add are f32/bf16.
//
// view_copy: y[Σ c·ys] = x[Σ c·xs] over a shape of at most 6 dims (collapsed by the launcher):
// a strided view written into a strided view of another buffer. Tensor::cat writes each input
// into its slab of the output this way, and narrow's backward writes the gradient into its window
// of a zeroed input-shaped buffer. Indexing is 32-bit when every index fits (flags bit 0).

namespace {
#define VIEW_DIMS 6
struct ViewCopy {
    long long dim[VIEW_DIMS];
    long long xs[VIEW_DIMS];
    long long ys[VIEW_DIMS];
    int ndim;
};

template <typename I, typename E>
__device__ __forceinline__ void view_copy_body(const E* __restrict__ x, E* __restrict__ y, long long n,
                                               const ViewCopy& p) {
    const I tid = (I)blockIdx.x * blockDim.x + threadIdx.x;
    const I stride = (I)gridDim.x * blockDim.x;
    for (I i = tid; i < (I)n; i += stride) {
        I rem = i, ox = 0, oy = 0;
#pragma unroll
        for (int d = VIEW_DIMS - 1; d >= 0; --d) {
            if (d < VIEW_DIMS - p.ndim) break;
            const I len = (I)p.dim[d];
            const I c = rem % len;
            rem /= len;
            ox += c * (I)p.xs[d];
            oy += c * (I)p.ys[d];
        }
        y[oy] = x[ox];
    }
}
}  // namespace

#define VIEW_PARAMS                                                                                    \
    long long n, int ndim, int flags, long long d0, long long d1, long long d2, long long d3, long long d4, \
        long long d5, long long x0, long long x1, long long x2, long long x3, long long x4, long long x5,   \
        long long y0, long long y1, long long y2, long long y3, long long y4, long long y5
#define VIEW_STRUCT \
    ViewCopy { {d0, d1, d2, d3, d4, d5}, {x0, x1, x2, x3, x4, x5}, {y0, y1, y2, y3, y4, y5}, ndim }

#define VIEW_COPY_KERNEL(suffix, E)                                                                    \
    extern "C" __global__ void view_copy_##suffix(const E* __restrict__ x, E* __restrict__ y, VIEW_PARAMS) { \
        const ViewCopy p = VIEW_STRUCT;                                                                \
        if (flags & 1) {                                                                               \
            view_copy_body<unsigned int>(x, y, n, p);                                                  \
        } else {                                                                                       \
            view_copy_body<unsigned long long>(x, y, n, p);                                            \
        }                                                                                              \
    }

VIEW_COPY_KERNEL(b1, unsigned char)
VIEW_COPY_KERNEL(b2, unsigned short)
VIEW_COPY_KERNEL(b4, unsigned int)
VIEW_COPY_KERNEL(b8, unsigned long long)

// index_select along one axis of a row-major x seen as [outer, size, inner]:
// y[o, j, e] = x[o, idx[j], e] for j < k (idx in range: the launcher's caller checks).
namespace {
template <typename E>
__device__ __forceinline__ void index_select_body(const E* __restrict__ x, const long long* __restrict__ idx,
                                                  E* __restrict__ y, long long outer, long long size, long long k,
                                                  long long inner) {
    const long long n = outer * k * inner;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < n; i += stride) {
        const long long e = i % inner, r = i / inner;
        const long long j = r % k, o = r / k;
        y[i] = x[(o * size + idx[j]) * inner + e];
    }
}

// The gradient of index_select: dx[o, s, e] = Σ_{t ∈ [offsets[s], offsets[s+1])} g[o, rows[t], e],
// rows[] listing, for each source index s in increasing order, the output positions j that
// selected it (the inverse of idx, built on the host where the indices live). One thread per
// element of dx, summing in a fixed order: deterministic, no atomics, and every element written.
template <typename T>
__device__ __forceinline__ void index_add_body(const T* __restrict__ g, const long long* __restrict__ offsets,
                                               const long long* __restrict__ rows, T* __restrict__ dx,
                                               long long outer, long long size, long long k, long long inner) {
    const long long n = outer * size * inner;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < n; i += stride) {
        const long long e = i % inner, r = i / inner;
        const long long s = r % size, o = r / size;
        float acc = 0.0f;
        for (long long t = offsets[s]; t < offsets[s + 1]; ++t) acc += to_float(g[(o * k + rows[t]) * inner + e]);
        dx[i] = from_float<T>(acc);
    }
}
}  // namespace

#define INDEX_SELECT_KERNEL(suffix, E)                                                                    \
    extern "C" __global__ void index_select_##suffix(const E* __restrict__ x, const long long* __restrict__ idx, \
                                                     E* __restrict__ y, long long outer, long long size,       \
                                                     long long k, long long inner) {                          \
        index_select_body(x, idx, y, outer, size, k, inner);                                              \
    }

INDEX_SELECT_KERNEL(b1, unsigned char)
INDEX_SELECT_KERNEL(b2, unsigned short)
INDEX_SELECT_KERNEL(b4, unsigned int)
INDEX_SELECT_KERNEL(b8, unsigned long long)

extern "C" __global__ void index_add_f32(const float* __restrict__ g, const long long* __restrict__ offsets,
                                         const long long* __restrict__ rows, float* __restrict__ dx, long long outer,
                                         long long size, long long k, long long inner) {
    index_add_body(g, offsets, rows, dx, outer, size, k, inner);
}
extern "C" __global__ void index_add_bf16(const bf16* __restrict__ g, const long long* __restrict__ offsets,
                                          const long long* __restrict__ rows, bf16* __restrict__ dx, long long outer,
                                          long long size, long long k, long long inner) {
    index_add_body(g, offsets, rows, dx, outer, size, k, inner);
}

// torch.gather along `axis` (a slot of the right-aligned 6-dim shapes): for every element c of
// the row-major output (shape `out`, like idx), y[c] = x[Σ_d (d == axis ? idx[c] : c_d)·xs_d]
// (x read through its strides; indices in range: the caller checks).
// gather_backward: one thread per element c of the row-major dx (shape `in`):
// dx[c] = Σ_j [idx[c | axis = j] == c_axis] · g[c | axis = j] over j < out[axis], and 0 where c
// lies outside the index's extent on another axis. Summed in j order, as the CPU op: no atomics.
namespace {
struct GatherDims {
    long long out[VIEW_DIMS];  // shape of idx and y (size 1 in unused leading slots)
    long long in[VIEW_DIMS];   // shape of x / dx
    long long xs[VIEW_DIMS];   // strides of x (forward only)
    int axis;
};

template <typename E>
__device__ __forceinline__ void gather_body(const E* __restrict__ x, const long long* __restrict__ idx,
                                            E* __restrict__ y, long long n, const GatherDims& p) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < n; i += stride) {
        long long rem = i, off = 0;
        for (int d = VIEW_DIMS - 1; d >= 0; --d) {
            const long long c = rem % p.out[d];
            rem /= p.out[d];
            off += (d == p.axis ? idx[i] : c) * p.xs[d];
        }
        y[i] = x[off];
    }
}

template <typename T>
__device__ __forceinline__ void gather_backward_body(const T* __restrict__ g, const long long* __restrict__ idx,
                                                     T* __restrict__ dx, long long n, const GatherDims& p) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < n; i += stride) {
        long long rem = i, base = 0, step = 1, axis_step = 0, target = 0;
        bool inside = true;
        for (int d = VIEW_DIMS - 1; d >= 0; --d) {
            const long long c = rem % p.in[d];
            rem /= p.in[d];
            if (d == p.axis) {
                target = c;
                axis_step = step;
            } else {
                inside = inside && c < p.out[d];
                base += c * step;
            }
            step *= p.out[d];
        }
        float acc = 0.0f;
        if (inside) {
            for (long long j = 0; j < p.out[p.axis]; ++j) {
                const long long o = base + j * axis_step;
                if (idx[o] == target) acc += to_float(g[o]);
            }
        }
        dx[i] = from_float<T>(acc);
    }
}
}  // namespace

#define GATHER_PARAMS                                                                                   \
    long long n, int axis, long long o0, long long o1, long long o2, long long o3, long long o4, long long o5, \
        long long i0, long long i1, long long i2, long long i3, long long i4, long long i5, long long s0,     \
        long long s1, long long s2, long long s3, long long s4, long long s5
#define GATHER_STRUCT \
    GatherDims { {o0, o1, o2, o3, o4, o5}, {i0, i1, i2, i3, i4, i5}, {s0, s1, s2, s3, s4, s5}, axis }

#define GATHER_KERNEL(suffix, E)                                                                        \
    extern "C" __global__ void gather_##suffix(const E* __restrict__ x, const long long* __restrict__ idx,  \
                                               E* __restrict__ y, GATHER_PARAMS) {                        \
        gather_body(x, idx, y, n, GATHER_STRUCT);                                                       \
    }

GATHER_KERNEL(b1, unsigned char)
GATHER_KERNEL(b2, unsigned short)
GATHER_KERNEL(b4, unsigned int)
GATHER_KERNEL(b8, unsigned long long)

extern "C" __global__ void gather_backward_f32(const float* __restrict__ g, const long long* __restrict__ idx,
                                               float* __restrict__ dx, GATHER_PARAMS) {
    gather_backward_body(g, idx, dx, n, GATHER_STRUCT);
}
extern "C" __global__ void gather_backward_bf16(const bf16* __restrict__ g, const long long* __restrict__ idx,
                                                bf16* __restrict__ dx, GATHER_PARAMS) {
    gather_backward_body(g, idx, dx, n, GATHER_STRUCT);
}
