// cuda_emu.h — a CPU emulation of the subset of CUDA C++ that our kernels (kernels/*.cu) use.
//
// When the crate is built without a GPU toolchain, every kernels/X.cu is compiled by the host C++
// compiler as ordinary C++20 with this header force-included:
//
//     g++ -std=c++20 -x c++ -include kernels/emu/cuda_emu.h kernels/X.cu
//
// and kernels/emu/emu_runtime.cpp runs the kernels: one OS thread per CUDA thread of a block, the
// blocks of a grid one after another. This header supplies what nvcc would: the qualifiers, the
// built-in variables, __syncthreads/warp intrinsics (implemented by the runtime), atomics, the
// CUDA math functions, the vector types and the bf16/fp16 types with CUDA's exact bit layout.
//
// Things deliberately NOT defined here:
//   * __CUDACC__ and __CUDA_ARCH__: code that tests them expects a real device compiler (inline
//     PTX, NV_IF_TARGET, ...). Kernels that need an emulator-specific path test SIMCLR_EMU.
//   * __restrict__: g++ and clang++ already understand it as a keyword.
//
// Speed is not a goal; faithfulness of the execution model and never hanging silently are.
#ifndef SIMCLR_CUDA_EMU_H
#define SIMCLR_CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h is C++ only"
#endif

// All standard headers come first, before any CUDA keyword is turned into a macro: libstdc++
// spells attributes with CUDA's names (e.g. `__attribute__((__noinline__))` in <memory>), and
// those headers are protected by include guards once they have been read here. <memory> is
// included for that reason only: a kernel file that includes it later gets the already-read copy.
#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <math.h>  // puts isnan/isinf/isfinite/... into the global namespace, as CUDA code expects
#include <memory>
#include <stdint.h>
#include <type_traits>
#include <utility>

#define SIMCLR_EMU 1

// ---------------------------------------------------------------------------------------------
// Qualifiers
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// GNU attribute rather than alignas(n): CUDA code writes `__shared__ __align__(16) float s[..]`,
// i.e. `static __align__(16) float`, where a standard attribute is not allowed (the middle of the
// decl-specifiers). The GNU attribute is accepted in every position CUDA allows __align__
// (this is also how CUDA's own host_defines.h defines it for gcc).
#define __align__(n) __attribute__((aligned(n)))
#define __builtin_align__(n) __attribute__((aligned(n)))
// `inline`: a __constant__ table defined in a header that several .cu files include then has one
// definition in the final link (nvcc compiles each .cu into its own module, where it never clashes).
#define __constant__ inline
#define __managed__

// __shared__ is `static`, placed in one linker section per kernel file. A static local (or
// namespace-scope static) exists once per process and is seen by every OS thread, which is exactly
// "one copy per block, shared by the block's threads" because (1) blocks run one after another and
// (2) the launch mutex in emu_runtime.cpp runs one launch at a time. On the GPU such memory starts
// every block as garbage; here the runtime fills the kernel file's whole section with garbage
// before each block (it finds the section through the linker's __start_/__stop_ symbols, see
// SIMCLR_EMU_SHARED_BOUNDS), so a tile read before it is written gives wrong results here too.
// build.rs names each kernel file's section (SIMCLR_EMU_SHARED_SECTION); a file compiled on its
// own (the self-test) uses the default. Only clang honours the section attribute on the static
// locals of templates; GCC silently drops it there (build.rs prefers clang++ for that reason).
#ifndef SIMCLR_EMU_SHARED_SECTION
#define SIMCLR_EMU_SHARED_SECTION "simclr_emu_shared"
#endif
#define __shared__ static __attribute__((section(SIMCLR_EMU_SHARED_SECTION)))

// ---------------------------------------------------------------------------------------------
// Vector types (aggregates with CUDA's alignment, so layouts match device memory) and dim3
// ---------------------------------------------------------------------------------------------
#define SIMCLR_EMU_VEC2(T, name, align)                                                            \
    struct alignas(align) name {                                                                   \
        T x, y;                                                                                    \
    };                                                                                             \
    inline constexpr name make_##name(T x, T y) { return name{x, y}; }
#define SIMCLR_EMU_VEC3(T, name)                                                                   \
    struct name {                                                                                  \
        T x, y, z;                                                                                 \
    };                                                                                             \
    inline constexpr name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define SIMCLR_EMU_VEC4(T, name, align)                                                            \
    struct alignas(align) name {                                                                   \
        T x, y, z, w;                                                                              \
    };                                                                                             \
    inline constexpr name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

SIMCLR_EMU_VEC2(float, float2, 8)
SIMCLR_EMU_VEC3(float, float3)
SIMCLR_EMU_VEC4(float, float4, 16)
SIMCLR_EMU_VEC2(int, int2, 8)
SIMCLR_EMU_VEC3(int, int3)
SIMCLR_EMU_VEC4(int, int4, 16)
SIMCLR_EMU_VEC2(unsigned int, uint2, 8)
SIMCLR_EMU_VEC3(unsigned int, uint3)
SIMCLR_EMU_VEC4(unsigned int, uint4, 16)
SIMCLR_EMU_VEC2(double, double2, 16)
SIMCLR_EMU_VEC2(long long, longlong2, 16)
SIMCLR_EMU_VEC2(unsigned long long, ulonglong2, 16)
SIMCLR_EMU_VEC2(short, short2, 4)
SIMCLR_EMU_VEC2(unsigned short, ushort2, 4)
SIMCLR_EMU_VEC4(signed char, char4, 4)
SIMCLR_EMU_VEC4(unsigned char, uchar4, 4)
#undef SIMCLR_EMU_VEC2
#undef SIMCLR_EMU_VEC3
#undef SIMCLR_EMU_VEC4

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// Built-in variables: per OS thread (= per CUDA thread), written by the runtime before it calls
// the kernel. `inline` so that every kernel object file and the runtime share one variable.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
inline constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// The launch interface shared with emu_runtime.cpp and the build.rs-generated kernel tables
// ---------------------------------------------------------------------------------------------
// A kernel trampoline: unpacks the CUDA-style argument array (args[i] points at the i-th
// argument's value, exactly as cuLaunchKernel takes them) and calls the kernel.
typedef void (*simclr_emu_trampoline)(void** args);
// One kernel as the launcher sees it: its name (for error messages), its trampoline, and the
// static shared memory of its kernel file ([shared_begin, shared_end), poisoned before each block).
struct simclr_emu_kernel {
    const char* name;
    simclr_emu_trampoline fn;
    unsigned char* shared_begin;
    unsigned char* shared_end;
};
extern "C" int simclr_emu_launch(const simclr_emu_kernel* kernel, unsigned gx, unsigned gy, unsigned gz,
                                 unsigned bx, unsigned by, unsigned bz, unsigned dynamic_smem_bytes,
                                 void** args, char* err, unsigned err_len);

// Strictness switches (all on by default; SIMCLR_EMU_STRICT=0 turns them off, which is the old,
// lenient emulator): garbage-filled static shared memory, shuffled block order, alignment checks.
extern "C" void simclr_emu_set_strict(int strict);
// The seed of the block order (SIMCLR_EMU_BLOCK_SEED, else random per process; 0 = blocks in
// order x, y, z). Printed with every emulator error so that a failing run can be repeated.
extern "C" unsigned long long simclr_emu_block_seed();
extern "C" void simclr_emu_set_block_seed(unsigned long long seed);

// The bounds of a section (the linker defines __start_S/__stop_S for a section S named like a C
// identifier; weak, so a kernel file without __shared__ variables yields null bounds).
#define SIMCLR_EMU_SHARED_BOUNDS(section)                                                          \
    extern "C" __attribute__((weak)) unsigned char __start_##section[];                            \
    extern "C" __attribute__((weak)) unsigned char __stop_##section[];

// simclr_emu_trampoline_for<&kernel>: deduces the kernel's parameter types from its pointer type
// and copies each argument out of args[i] (cuLaunchKernel semantics: kernels get copies).
template <typename Fn>
struct simclr_emu_invoker;
template <typename... A>
struct simclr_emu_invoker<void (*)(A...)> {
    template <auto F, std::size_t... I>
    static void call(void** args, std::index_sequence<I...>) {
        F(*static_cast<std::remove_cvref_t<A>*>(args[I])...);
    }
    static constexpr std::size_t arity = sizeof...(A);
};
template <typename... A>
struct simclr_emu_invoker<void (*)(A...) noexcept> : simclr_emu_invoker<void (*)(A...)> {};

template <auto F>
void simclr_emu_trampoline_for(void** args) {
    using Inv = simclr_emu_invoker<decltype(F)>;
    Inv::template call<F>(args, std::make_index_sequence<Inv::arity>{});
}

// ---------------------------------------------------------------------------------------------
// Hooks implemented by emu_runtime.cpp
// ---------------------------------------------------------------------------------------------
// The current block's dynamic shared memory (what `extern __shared__ T x[]` names on the GPU).
unsigned char* simclr_emu_dynamic_smem();

// Block barrier among the block's threads that have not returned yet. Every caller contributes
// `pred`; each gets back the OR, AND and count of non-zero predicates of all participants.
struct simclr_emu_barrier_result {
    int any, all, count;
};
simclr_emu_barrier_result simclr_emu_block_barrier(int pred);

// Warp rendezvous used by every *_sync intrinsic. The calling lane publishes `mine` (an up to
// 8-byte value as raw bits) and waits until every non-exited lane of `mask` (of those that exist
// in the block) has called an intrinsic of the same kind with the same mask. It then gets a copy of
// everything that was published. `kind` only serves to catch lanes that diverged onto different
// intrinsics.
enum simclr_emu_warp_kind : int {
    SIMCLR_EMU_WARP_SYNC = 0,
    SIMCLR_EMU_WARP_SHFL = 1,
    SIMCLR_EMU_WARP_VOTE = 2,
    SIMCLR_EMU_WARP_REDUCE = 3,
    SIMCLR_EMU_WARP_MATCH = 4,
};
struct simclr_emu_warp_view {
    unsigned lane;          // the caller's lane
    unsigned participants;  // lanes that took part (bit i = lane i)
    std::uint64_t slot[32]; // slot[i]: what lane i published (valid where participants has bit i)
};
void simclr_emu_warp_exchange(int kind, unsigned mask, std::uint64_t mine, simclr_emu_warp_view* out);
// Mask of the calling warp's lanes that exist and have not returned from the kernel.
unsigned simclr_emu_activemask();
// Reports (once per launch) that a shuffle read a lane that did not take part.
void simclr_emu_report_inactive_source(unsigned lane, unsigned src_lane);
// Fatal kernel-side error (e.g. __trap()): prints and aborts.
[[noreturn]] void simclr_emu_fatal(const char* what);
// Aborts with the kernel, thread, address and required alignment when `p` is not a multiple of
// `align` bytes, as the GPU faults with "misaligned address" (cp.async, ldmatrix, vector access).
void simclr_emu_check_aligned(const void* p, unsigned align, const char* what);
long long simclr_emu_clock64();
void simclr_emu_nanosleep(unsigned ns);

// ---------------------------------------------------------------------------------------------
// Block synchronisation, fences
// ---------------------------------------------------------------------------------------------
inline void __syncthreads() { (void)simclr_emu_block_barrier(0); }
inline int __syncthreads_or(int pred) { return simclr_emu_block_barrier(pred).any; }
inline int __syncthreads_and(int pred) { return simclr_emu_block_barrier(pred).all; }
inline int __syncthreads_count(int pred) { return simclr_emu_block_barrier(pred).count; }
// Every barrier/rendezvous goes through a mutex, which already orders memory; fences are kept
// as real fences for code that synchronises through memory (flags, atomics) instead.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap() { simclr_emu_fatal("__trap() called"); }
[[noreturn]] inline void __brkpt() { simclr_emu_fatal("__brkpt() called"); }
inline long long clock64() { return simclr_emu_clock64(); }
inline void __nanosleep(unsigned ns) { simclr_emu_nanosleep(ns); }

// ---------------------------------------------------------------------------------------------
// Bit casts, integer intrinsics
// ---------------------------------------------------------------------------------------------
template <typename To, typename From>
inline To simclr_emu_bit_cast(const From& v) {
    return std::bit_cast<To>(v);
}
// The unsigned integer type of a given size (for moving values around as raw bits).
template <std::size_t N>
using simclr_emu_uint_t = std::conditional_t<N == 1, std::uint8_t, std::conditional_t<N == 2, std::uint16_t,
                          std::conditional_t<N == 4, std::uint32_t, std::uint64_t>>>;
inline unsigned int __float_as_uint(float x) { return simclr_emu_bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return simclr_emu_bit_cast<float>(x); }
inline int __float_as_int(float x) { return simclr_emu_bit_cast<int>(x); }
inline float __int_as_float(int x) { return simclr_emu_bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return simclr_emu_bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return simclr_emu_bit_cast<double>(x); }
inline int __double2hiint(double x) { return int(__double_as_longlong(x) >> 32); }
inline int __double2loint(double x) { return int(__double_as_longlong(x) & 0xffffffff); }
inline double __hiloint2double(int hi, int lo) {
    return __longlong_as_double((long long)(((unsigned long long)(unsigned)hi << 32) | (unsigned)lo));
}

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned)x) << 32) | __brev((unsigned)(x >> 32));
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
inline unsigned int __umul24(unsigned int a, unsigned int b) { return (a & 0xffffff) * (b & 0xffffff); }

// ---------------------------------------------------------------------------------------------
// min / max: CUDA's global overload set (math_functions.h), so that mixed-type calls resolve, or
// are ambiguous, exactly as under nvcc. Plain overloads in the global namespace; std::min/max are
// untouched. The float versions are fminf/fmaxf, as on the device (NaN loses to a number).
// ---------------------------------------------------------------------------------------------
#define SIMCLR_EMU_MINMAX(R, A, B)                                                                 \
    inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; }                                   \
    inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
SIMCLR_EMU_MINMAX(int, int, int)
SIMCLR_EMU_MINMAX(unsigned int, unsigned int, unsigned int)
SIMCLR_EMU_MINMAX(unsigned int, int, unsigned int)
SIMCLR_EMU_MINMAX(unsigned int, unsigned int, int)
SIMCLR_EMU_MINMAX(long, long, long)
SIMCLR_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
SIMCLR_EMU_MINMAX(unsigned long, long, unsigned long)
SIMCLR_EMU_MINMAX(unsigned long, unsigned long, long)
SIMCLR_EMU_MINMAX(long long, long long, long long)
SIMCLR_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
SIMCLR_EMU_MINMAX(unsigned long long, long long, unsigned long long)
SIMCLR_EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef SIMCLR_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }
inline unsigned int umin(unsigned int a, unsigned int b) { return min(a, b); }
inline unsigned int umax(unsigned int a, unsigned int b) { return max(a, b); }
inline long long llmin(long long a, long long b) { return min(a, b); }
inline long long llmax(long long a, long long b) { return max(a, b); }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return min(a, b); }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return max(a, b); }

// ---------------------------------------------------------------------------------------------
// Float math. The C library supplies expf, logf, sqrtf, tanhf, erff, powf, fmaf, rintf, fmaxf,
// isfinite, ... Here are the CUDA-only functions and intrinsics. The "fast" intrinsics are the
// accurate functions: the GPU versions differ by a few ulp, which tests must tolerate anyway.
// ---------------------------------------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float rhypotf(float x, float y) { return 1.0f / hypotf(x, y); }
inline float fdividef(float a, float b) { return a / b; }
inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }
inline float sinpif(float x) { return (float)sin(M_PI * (double)x); }
inline float cospif(float x) { return (float)cos(M_PI * (double)x); }
inline void sincospif(float x, float* s, float* c) { *s = sinpif(x); *c = cospif(x); }

inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
// Clamp to [0, 1]; NaN becomes 0 (PTX .sat semantics).
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

// glibc's <math.h> already declares functions named __expf, __logf, __powf, __sinf, ... (its
// internal aliases), so these intrinsics cannot be redeclared as functions: they are function-like
// macros onto emulator functions instead.
inline float simclr_emu_fast_expf(float x) { return expf(x); }
inline float simclr_emu_fast_exp10f(float x) { return powf(10.0f, x); }
inline float simclr_emu_fast_logf(float x) { return logf(x); }
inline float simclr_emu_fast_log2f(float x) { return log2f(x); }
inline float simclr_emu_fast_log10f(float x) { return log10f(x); }
inline float simclr_emu_fast_powf(float x, float y) { return powf(x, y); }
inline float simclr_emu_fast_sinf(float x) { return sinf(x); }
inline float simclr_emu_fast_cosf(float x) { return cosf(x); }
inline float simclr_emu_fast_tanf(float x) { return tanf(x); }
inline void simclr_emu_fast_sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
#define __expf(x) simclr_emu_fast_expf(x)
#define __exp10f(x) simclr_emu_fast_exp10f(x)
#define __logf(x) simclr_emu_fast_logf(x)
#define __log2f(x) simclr_emu_fast_log2f(x)
#define __log10f(x) simclr_emu_fast_log10f(x)
#define __powf(x, y) simclr_emu_fast_powf(x, y)
#define __sinf(x) simclr_emu_fast_sinf(x)
#define __cosf(x) simclr_emu_fast_cosf(x)
#define __tanf(x) simclr_emu_fast_tanf(x)
#define __sincosf(x, s, c) simclr_emu_fast_sincosf(x, s, c)

// Float -> integer conversions as the cvt instruction does them: NaN gives 0, out-of-range values
// saturate (a plain C++ cast would be undefined behaviour there).
template <typename I>
inline I simclr_emu_float_to_int(double v) {
    if (v != v) return 0;
    if (v <= (double)std::numeric_limits<I>::min()) return std::numeric_limits<I>::min();
    if (v >= (double)std::numeric_limits<I>::max()) return std::numeric_limits<I>::max();
    return (I)v;
}
inline int __float2int_rn(float x) { return simclr_emu_float_to_int<int>(rint(x)); }
inline int __float2int_rz(float x) { return simclr_emu_float_to_int<int>(trunc(x)); }
inline int __float2int_rd(float x) { return simclr_emu_float_to_int<int>(floor(x)); }
inline int __float2int_ru(float x) { return simclr_emu_float_to_int<int>(ceil(x)); }
inline unsigned int __float2uint_rn(float x) { return simclr_emu_float_to_int<unsigned int>(rint(x)); }
inline unsigned int __float2uint_rz(float x) { return simclr_emu_float_to_int<unsigned int>(trunc(x)); }
inline long long __float2ll_rn(float x) { return simclr_emu_float_to_int<long long>(rint(x)); }
inline long long __float2ll_rz(float x) { return simclr_emu_float_to_int<long long>(trunc(x)); }
inline int __double2int_rn(double x) { return simclr_emu_float_to_int<int>(rint(x)); }
inline int __double2int_rz(double x) { return simclr_emu_float_to_int<int>(trunc(x)); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned int x) { return (float)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
inline float __double2float_rn(double x) { return (float)x; }

#ifndef CUDART_INF_F
#define CUDART_INF_F __builtin_huge_valf()
#define CUDART_NAN_F __builtin_nanf("")
#define CUDART_INF __builtin_huge_val()
#define CUDART_NAN __builtin_nan("")
#define CUDART_PI_F 3.141592654f
#define CUDART_PI 3.1415926535897931e+0
#define CUDART_MAX_NORMAL_F 3.40282347e+38f
#define CUDART_MIN_DENORM_F 1.40129846e-45f
#define CUDART_SQRT_HALF_F 0.707106781f
#endif

// ---------------------------------------------------------------------------------------------
// Memory access hints: plain loads/stores on the CPU.
// ---------------------------------------------------------------------------------------------
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldca(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldlu(const T* p) { return *p; }
template <typename T> inline T __ldcv(const T* p) { return *p; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stwb(T* p, T v) { *p = v; }
template <typename T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------------------------
// bf16 / fp16. Same layout as cuda_bf16.h / cuda_fp16.h (2 bytes, 2-byte aligned, IEEE bits in
// the protected member __x), the same constructors and conversion operators (so that expressions
// resolve, or are ambiguous, as under nvcc: e.g. `h + 1.0f` is ambiguous there and here), and
// arithmetic operators that round their exact result once, like the hardware instructions.
// Conversions from float are round-to-nearest-even with CUDA's bit results (NaN -> 0x7fff).
// ---------------------------------------------------------------------------------------------
inline unsigned short simclr_emu_float_to_bf16_bits(float f) {
    std::uint32_t x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // any NaN -> canonical NaN (cvt.rn.bf16.f32)
    std::uint32_t r = x >> 16, rem = x << 16;             // rem: the dropped bits, left-aligned
    if (rem > 0x80000000u || (rem == 0x80000000u && (r & 1u))) ++r;  // nearest, ties to even; may carry into inf
    return (unsigned short)r;
}
inline float simclr_emu_bf16_bits_to_float(unsigned short h) { return __uint_as_float((std::uint32_t)h << 16); }

// IEEE binary16, written out (not _Float16) so that it is the same on every compiler/target.
inline unsigned short simclr_emu_float_to_half_bits(float f) {
    std::uint32_t x = __float_as_uint(f);
    std::uint32_t u = x & 0x7fffffffu, sign = (x >> 16) & 0x8000u, r, rem;
    if (u >= 0x7f800000u) return u == 0x7f800000u ? (unsigned short)(sign | 0x7c00u) : 0x7fff;  // inf; NaN -> 0x7fff
    if (u > 0x477fefffu) {  // >= 65520: rounds to infinity (the increment below carries 0x7bff -> 0x7c00)
        r = sign | 0x7bffu;
        rem = 0x80000000u;
    } else if (u >= 0x38800000u) {  // normal half: rebias the exponent (127 -> 15), drop 13 bits
        rem = u << 19;
        r = sign | ((u - 0x38000000u) >> 13);
    } else if (u < 0x33000001u) {  // <= 2^-25: rounds to (signed) zero
        rem = u;
        r = sign;
    } else {  // subnormal half: shift the explicit mantissa into place
        std::uint32_t shift = 0x7eu - (u >> 23);
        std::uint32_t mant = (u & 0x7fffffu) | 0x800000u;
        rem = mant << (32u - shift);
        r = sign | (mant >> shift);
    }
    if (rem > 0x80000000u || (rem == 0x80000000u && (r & 1u))) ++r;
    return (unsigned short)r;
}
inline float simclr_emu_half_bits_to_float(unsigned short h) {
    std::uint32_t sign = (std::uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return mant ? __uint_as_float(0x7fffffffu) : __uint_as_float(sign | 0x7f800000u);  // NaN as CUDA
    if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// double -> 16-bit: round to float with round-to-odd first; as float keeps at least 2 more bits
// than fp16 (11) or bf16 (8), the second rounding is then correct (cuda_bf16.hpp does the same).
inline float simclr_emu_double_to_float_odd(double x) {
    float f = (float)x;
    if (f != f || (double)f == x) return f;
    std::uint32_t u = __float_as_uint(f);
    if (std::fabs((double)f) > std::fabs(x)) --u;  // truncate toward zero ...
    return __uint_as_float(u | 1u);                // ... and make it odd (sticky bit)
}

struct __nv_bfloat16_raw {
    unsigned short x;
};
struct __half_raw {
    unsigned short x;
};
struct alignas(4) __nv_bfloat162_raw {
    unsigned short x, y;
};
struct alignas(4) __half2_raw {
    unsigned short x, y;
};


// Exactly rounded helpers for the 16-bit arithmetic below. A double result is first made
// "round-to-odd" (truncate toward zero, then set the last bit if anything was lost); rounding
// that to the 16-bit format (via float, again odd) gives the correctly rounded result, with no
// double-rounding error however far apart the operands' exponents are.
inline double simclr_emu_make_odd(double r, double err) {  // r = RN(exact), err = exact - r
    if (err == 0.0 || !std::isfinite(r)) return r;
    std::uint64_t u = simclr_emu_bit_cast<std::uint64_t>(r);
    if ((err > 0.0) != (r > 0.0)) --u;  // |exact| < |r|: step toward zero
    return simclr_emu_bit_cast<double>(u | 1u);
}
inline double simclr_emu_add_odd(double a, double b) {  // TwoSum gives the exact error
    double s = a + b, bb = s - a;
    return simclr_emu_make_odd(s, (a - (s - bb)) + (b - bb));
}
inline double simclr_emu_div_odd(double a, double b) {
    double q = a / b;
    if (!std::isfinite(q) || q == 0.0) return q;
    const double rem = std::fma(-q, b, a);  // exact: a - q*b; (exact - q) has the sign of rem / b
    return simclr_emu_make_odd(q, b > 0.0 ? rem : -rem);
}

struct __half;
struct __nv_bfloat16;

// The two 16-bit types have identical interfaces (as in CUDA); one macro generates both so they
// cannot drift apart. TO_BITS/FROM_BITS are the float conversions above.
#define SIMCLR_EMU_HALF_TYPE(H, RAW, OTHER, TO_BITS, FROM_BITS)                                        \
    struct alignas(2) H {                                                                              \
      protected:                                                                                       \
        unsigned short __x; /* protected as in CUDA: use __*_as_ushort() for the bits */               \
                                                                                                       \
      public:                                                                                          \
        H() = default; /* trivial, so H works in __shared__ arrays and is trivially copyable */        \
        constexpr H(const RAW& r) : __x(r.x) {}                                                        \
        constexpr operator RAW() const { return RAW{__x}; }                                            \
        explicit H(const OTHER& o);                                                                    \
        H(float f) : __x(TO_BITS(f)) {}                                                                \
        H(double d) : __x(TO_BITS(simclr_emu_double_to_float_odd(d))) {}                               \
        /* Integers round to nearest even like cvt.rn (via double: exact for 32-bit values, and an */  \
        /* innocuous first rounding for 64-bit ones). */                                               \
        H(short v) : H((double)v) {}                                                                   \
        H(unsigned short v) : H((double)v) {}                                                          \
        H(int v) : H((double)v) {}                                                                     \
        H(unsigned int v) : H((double)v) {}                                                            \
        H(long v) : H((double)v) {}                                                                    \
        H(unsigned long v) : H((double)v) {}                                                           \
        H(long long v) : H((double)v) {}                                                               \
        H(unsigned long long v) : H((double)v) {}                                                      \
        operator float() const { return FROM_BITS(__x); }                                              \
        /* To integers: toward zero, saturating, NaN -> 0 (CUDA's __*2int_rz family). */               \
        operator signed char() const { return simclr_emu_float_to_int<signed char>(truncf(float(*this))); } \
        operator unsigned char() const { return simclr_emu_float_to_int<unsigned char>(truncf(float(*this))); } \
        operator char() const { return simclr_emu_float_to_int<char>(truncf(float(*this))); }          \
        operator short() const { return simclr_emu_float_to_int<short>(truncf(float(*this))); }        \
        operator unsigned short() const { return simclr_emu_float_to_int<unsigned short>(truncf(float(*this))); } \
        operator int() const { return simclr_emu_float_to_int<int>(truncf(float(*this))); }            \
        operator unsigned int() const { return simclr_emu_float_to_int<unsigned int>(truncf(float(*this))); } \
        operator long() const { return simclr_emu_float_to_int<long>(truncf(float(*this))); }          \
        operator unsigned long() const { return simclr_emu_float_to_int<unsigned long>(truncf(float(*this))); } \
        operator long long() const { return simclr_emu_float_to_int<long long>(truncf(float(*this))); } \
        operator unsigned long long() const {                                                          \
            return simclr_emu_float_to_int<unsigned long long>(truncf(float(*this)));                  \
        }                                                                                              \
        constexpr operator bool() const { return (__x & 0x7fffu) != 0; }                               \
    };                                                                                                 \
    static_assert(sizeof(H) == 2 && alignof(H) == 2 && std::is_trivially_copyable_v<H>);               \
    /* Arithmetic: exact (or round-to-odd) in double, then one rounding, like the hardware. */         \
    inline H operator+(const H& a, const H& b) { return H(simclr_emu_add_odd(float(a), float(b))); }   \
    inline H operator-(const H& a, const H& b) { return H(simclr_emu_add_odd(float(a), -(double)float(b))); } \
    inline H operator*(const H& a, const H& b) { return H((double)float(a) * (double)float(b)); }      \
    inline H operator/(const H& a, const H& b) { return H(simclr_emu_div_odd(float(a), float(b))); }   \
    inline H& operator+=(H& a, const H& b) { return a = a + b; }                                       \
    inline H& operator-=(H& a, const H& b) { return a = a - b; }                                       \
    inline H& operator*=(H& a, const H& b) { return a = a * b; }                                       \
    inline H& operator/=(H& a, const H& b) { return a = a / b; }                                       \
    inline H operator+(const H& a) { return a; }                                                       \
    inline H operator-(const H& a) { return H(RAW{(unsigned short)(RAW(a).x ^ 0x8000u)}); }           \
    inline H& operator++(H& a) { return a = a + H(1.0f); }                                             \
    inline H& operator--(H& a) { return a = a - H(1.0f); }                                             \
    inline H operator++(H& a, int) { H old = a; ++a; return old; }                                     \
    inline H operator--(H& a, int) { H old = a; --a; return old; }                                     \
    inline bool operator==(const H& a, const H& b) { return float(a) == float(b); }                    \
    inline bool operator!=(const H& a, const H& b) { return float(a) != float(b); }                    \
    inline bool operator<(const H& a, const H& b) { return float(a) < float(b); }                      \
    inline bool operator>(const H& a, const H& b) { return float(a) > float(b); }                      \
    inline bool operator<=(const H& a, const H& b) { return float(a) <= float(b); }                    \
    inline bool operator>=(const H& a, const H& b) { return float(a) >= float(b); }

SIMCLR_EMU_HALF_TYPE(__half, __half_raw, __nv_bfloat16, simclr_emu_float_to_half_bits, simclr_emu_half_bits_to_float)
SIMCLR_EMU_HALF_TYPE(__nv_bfloat16, __nv_bfloat16_raw, __half, simclr_emu_float_to_bf16_bits,
                     simclr_emu_bf16_bits_to_float)
#undef SIMCLR_EMU_HALF_TYPE
inline __half::__half(const __nv_bfloat16& o) : __half(float(o)) {}
inline __nv_bfloat16::__nv_bfloat16(const __half& o) : __nv_bfloat16(float(o)) {}
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

// Pairs (two values in one 32-bit word, .x in the low 16 bits): __half2 / __nv_bfloat162.
#define SIMCLR_EMU_HALF2_TYPE(H2, H, RAW, RAW2)                                                        \
    struct alignas(4) H2 {                                                                             \
        H x, y;                                                                                        \
        H2() = default;                                                                                \
        constexpr H2(const H& a, const H& b) : x(a), y(b) {}                                           \
        constexpr H2(const RAW2& r) : x(RAW{r.x}), y(RAW{r.y}) {}                                      \
        constexpr operator RAW2() const { return RAW2{RAW(x).x, RAW(y).x}; }                           \
    };                                                                                                 \
    static_assert(sizeof(H2) == 4 && alignof(H2) == 4 && std::is_trivially_copyable_v<H2>);            \
    inline H2 operator+(const H2& a, const H2& b) { return H2(a.x + b.x, a.y + b.y); }                 \
    inline H2 operator-(const H2& a, const H2& b) { return H2(a.x - b.x, a.y - b.y); }                 \
    inline H2 operator*(const H2& a, const H2& b) { return H2(a.x * b.x, a.y * b.y); }                 \
    inline H2 operator/(const H2& a, const H2& b) { return H2(a.x / b.x, a.y / b.y); }                 \
    inline H2& operator+=(H2& a, const H2& b) { return a = a + b; }                                    \
    inline H2& operator-=(H2& a, const H2& b) { return a = a - b; }                                    \
    inline H2& operator*=(H2& a, const H2& b) { return a = a * b; }                                    \
    inline H2& operator/=(H2& a, const H2& b) { return a = a / b; }                                    \
    inline H2 operator-(const H2& a) { return H2(-a.x, -a.y); }                                        \
    inline bool operator==(const H2& a, const H2& b) { return a.x == b.x && a.y == b.y; }              \
    inline bool operator!=(const H2& a, const H2& b) { return a.x != b.x && a.y != b.y; }
SIMCLR_EMU_HALF2_TYPE(__half2, __half, __half_raw, __half2_raw)
SIMCLR_EMU_HALF2_TYPE(__nv_bfloat162, __nv_bfloat16, __nv_bfloat16_raw, __nv_bfloat162_raw)
#undef SIMCLR_EMU_HALF2_TYPE
typedef __half2 half2;
typedef __nv_bfloat162 nv_bfloat162;

// Conversions and bit access.
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return __nv_bfloat16_raw(h).x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return (short)__nv_bfloat16_raw(h).x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16_raw{x}; }
inline __nv_bfloat16 __short_as_bfloat16(short x) { return __nv_bfloat16_raw{(unsigned short)x}; }
inline unsigned short __half_as_ushort(__half h) { return __half_raw(h).x; }
inline short __half_as_short(__half h) { return (short)__half_raw(h).x; }
inline __half __ushort_as_half(unsigned short x) { return __half_raw{x}; }
inline __half __short_as_half(short x) { return __half_raw{(unsigned short)x}; }

inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rz(float f) {  // truncation; NaN -> canonical NaN
    return f != f ? __ushort_as_bfloat16(0x7fff) : __ushort_as_bfloat16((unsigned short)(__float_as_uint(f) >> 16));
}
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline __nv_bfloat16 __int2bfloat16_rn(int v) { return __nv_bfloat16(v); }
inline int __bfloat162int_rz(__nv_bfloat16 h) { return int(h); }
inline float __half2float(__half h) { return float(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline __half __int2half_rn(int v) { return __half(v); }
inline int __half2int_rz(__half h) { return int(h); }

inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return {__nv_bfloat16(f.x), __nv_bfloat16(f.y)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return {__nv_bfloat16(f), __nv_bfloat16(f)}; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return {a, a}; }
inline __nv_bfloat162 make_bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {float(h.x), float(h.y)}; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline float __low2float(__nv_bfloat162 h) { return float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return float(h.y); }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return {__half(f.x), __half(f.y)}; }
inline __half2 __float2half2_rn(float f) { return {__half(f), __half(f)}; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __half2 __half2half2(__half a) { return {a, a}; }
inline __half2 make_half2(__half a, __half b) { return {a, b}; }
inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }

// Arithmetic intrinsics, overloaded for both 16-bit types like CUDA's. The math functions go
// through float: the GPU versions are approximations too.
#define SIMCLR_EMU_HALF_INTRINSICS(H, H2)                                                              \
    inline H __hadd(H a, H b) { return a + b; }                                                        \
    inline H __hsub(H a, H b) { return a - b; }                                                        \
    inline H __hmul(H a, H b) { return a * b; }                                                        \
    inline H __hdiv(H a, H b) { return a / b; }                                                        \
    inline H __hfma(H a, H b, H c) {                                                                   \
        return H(simclr_emu_add_odd((double)float(a) * (double)float(b), float(c)));                   \
    }                                                                                                  \
    inline H __hneg(H a) { return -a; }                                                                \
    inline H __habs(H a) { return H(fabsf(float(a))); }                                                \
    inline H __hmax(H a, H b) { return H(fmaxf(float(a), float(b))); }                                 \
    inline H __hmin(H a, H b) { return H(fminf(float(a), float(b))); }                                 \
    inline bool __heq(H a, H b) { return a == b; }                                                     \
    inline bool __hne(H a, H b) { return a != b; }                                                     \
    inline bool __hlt(H a, H b) { return a < b; }                                                      \
    inline bool __hle(H a, H b) { return a <= b; }                                                     \
    inline bool __hgt(H a, H b) { return a > b; }                                                      \
    inline bool __hge(H a, H b) { return a >= b; }                                                     \
    inline bool __hisnan(H a) { return float(a) != float(a); }                                         \
    inline int __hisinf(H a) { float f = float(a); return f == INFINITY ? 1 : (f == -INFINITY ? -1 : 0); } \
    inline H hsqrt(H a) { return H(sqrtf(float(a))); }                                                 \
    inline H hrsqrt(H a) { return H(1.0f / sqrtf(float(a))); }                                         \
    inline H hrcp(H a) { return H(1.0f / float(a)); }                                                  \
    inline H hexp(H a) { return H(expf(float(a))); }                                                   \
    inline H hlog(H a) { return H(logf(float(a))); }                                                   \
    inline H2 __hadd2(H2 a, H2 b) { return a + b; }                                                    \
    inline H2 __hsub2(H2 a, H2 b) { return a - b; }                                                    \
    inline H2 __hmul2(H2 a, H2 b) { return a * b; }                                                    \
    inline H2 __h2div(H2 a, H2 b) { return a / b; }                                                    \
    inline H2 __hfma2(H2 a, H2 b, H2 c) { return H2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }   \
    inline H2 __hneg2(H2 a) { return -a; }                                                             \
    inline H2 __habs2(H2 a) { return H2(__habs(a.x), __habs(a.y)); }                                   \
    inline H2 __hmax2(H2 a, H2 b) { return H2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }                   \
    inline H2 __hmin2(H2 a, H2 b) { return H2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }
SIMCLR_EMU_HALF_INTRINSICS(__half, __half2)
SIMCLR_EMU_HALF_INTRINSICS(__nv_bfloat16, __nv_bfloat162)
#undef SIMCLR_EMU_HALF_INTRINSICS

// ---------------------------------------------------------------------------------------------
// Atomics (on global or shared memory alike: both are ordinary memory here). Relaxed ordering,
// as CUDA's atomics; __threadfence() is the fence. Floating-point and 16-bit atomics are CAS
// loops on the object itself (GCC's generic __atomic builtins compare and swap its bytes).
// ---------------------------------------------------------------------------------------------
template <typename T, typename Op>
inline T simclr_emu_atomic_update(T* address, Op op) {
    static_assert(std::is_trivially_copyable_v<T> && (sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8));
    T old_value;
    __atomic_load(address, &old_value, __ATOMIC_RELAXED);
    for (;;) {
        T new_value = static_cast<T>(op(old_value));
        // On failure old_value is refreshed with the current contents.
        if (__atomic_compare_exchange(address, &old_value, &new_value, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return old_value;
    }
}

inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned int atomicAdd(unsigned int* a, unsigned int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* a, float v) { return simclr_emu_atomic_update(a, [v](float o) { return o + v; }); }
inline double atomicAdd(double* a, double v) { return simclr_emu_atomic_update(a, [v](double o) { return o + v; }); }
inline __half atomicAdd(__half* a, __half v) { return simclr_emu_atomic_update(a, [v](__half o) { return o + v; }); }
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
    return simclr_emu_atomic_update(a, [v](__nv_bfloat16 o) { return o + v; });
}
inline __half2 atomicAdd(__half2* a, __half2 v) { return simclr_emu_atomic_update(a, [v](__half2 o) { return o + v; }); }
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* a, __nv_bfloat162 v) {
    return simclr_emu_atomic_update(a, [v](__nv_bfloat162 o) { return o + v; });
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned int atomicSub(unsigned int* a, unsigned int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }

#define SIMCLR_EMU_ATOMIC_MINMAX(T)                                                                    \
    inline T atomicMax(T* a, T v) { return simclr_emu_atomic_update(a, [v](T o) { return o > v ? o : v; }); } \
    inline T atomicMin(T* a, T v) { return simclr_emu_atomic_update(a, [v](T o) { return o < v ? o : v; }); }
SIMCLR_EMU_ATOMIC_MINMAX(int)
SIMCLR_EMU_ATOMIC_MINMAX(unsigned int)
SIMCLR_EMU_ATOMIC_MINMAX(long long)
SIMCLR_EMU_ATOMIC_MINMAX(unsigned long long)
#undef SIMCLR_EMU_ATOMIC_MINMAX

#define SIMCLR_EMU_ATOMIC_BITS(T)                                                                      \
    inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }              \
    inline T atomicCAS(T* a, T compare, T v) {                                                         \
        __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);        \
        return compare; /* the old value, whether or not it was swapped */                             \
    }
SIMCLR_EMU_ATOMIC_BITS(int)
SIMCLR_EMU_ATOMIC_BITS(unsigned int)
SIMCLR_EMU_ATOMIC_BITS(unsigned long long)
SIMCLR_EMU_ATOMIC_BITS(unsigned short)
#undef SIMCLR_EMU_ATOMIC_BITS
inline float atomicExch(float* a, float v) { return simclr_emu_atomic_update(a, [v](float) { return v; }); }

#define SIMCLR_EMU_ATOMIC_LOGIC(T)                                                                     \
    inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }               \
    inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }                 \
    inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }
SIMCLR_EMU_ATOMIC_LOGIC(int)
SIMCLR_EMU_ATOMIC_LOGIC(unsigned int)
SIMCLR_EMU_ATOMIC_LOGIC(unsigned long long)
#undef SIMCLR_EMU_ATOMIC_LOGIC
inline unsigned int atomicInc(unsigned int* a, unsigned int v) {
    return simclr_emu_atomic_update(a, [v](unsigned int o) { return o >= v ? 0u : o + 1u; });
}
inline unsigned int atomicDec(unsigned int* a, unsigned int v) {
    return simclr_emu_atomic_update(a, [v](unsigned int o) { return (o == 0u || o > v) ? v : o - 1u; });
}

// ---------------------------------------------------------------------------------------------
// Warp intrinsics. Each is one rendezvous of the lanes in `mask` (see simclr_emu_warp_exchange);
// the result is then computed from what every lane published, with the PTX rules.
// ---------------------------------------------------------------------------------------------
template <typename T>
concept simclr_emu_shfl_type =
    std::is_same_v<T, int> || std::is_same_v<T, unsigned int> || std::is_same_v<T, long> ||
    std::is_same_v<T, unsigned long> || std::is_same_v<T, long long> || std::is_same_v<T, unsigned long long> ||
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, __half> ||
    std::is_same_v<T, __half2> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __nv_bfloat162>;

template <typename T>
inline std::uint64_t simclr_emu_to_slot(const T& v) {  // zero-extended raw bits
    return simclr_emu_bit_cast<simclr_emu_uint_t<sizeof(T)>>(v);
}
template <typename T>
inline T simclr_emu_from_slot(std::uint64_t bits) {
    return simclr_emu_bit_cast<T>(static_cast<simclr_emu_uint_t<sizeof(T)>>(bits));
}

enum simclr_emu_shfl_mode { SIMCLR_EMU_SHFL_IDX, SIMCLR_EMU_SHFL_UP, SIMCLR_EMU_SHFL_DOWN, SIMCLR_EMU_SHFL_BFLY };

template <simclr_emu_shfl_type T>
inline T simclr_emu_shfl(simclr_emu_shfl_mode mode, unsigned mask, T var, int b, int width) {
    simclr_emu_warp_view view;
    simclr_emu_warp_exchange(SIMCLR_EMU_WARP_SHFL, mask, simclr_emu_to_slot(var), &view);
    // Source lane selection exactly as PTX shfl.sync specifies it, with the `c` operand that
    // CUDA's headers pass: segmask = 32 - width selects the width-sized segment of the lane,
    // cval = 0 (up) or 31 (others) clamps to the segment's first or last lane.
    const unsigned c = ((32u - (unsigned)width) << 8) | (mode == SIMCLR_EMU_SHFL_UP ? 0u : 0x1fu);
    const int lane = (int)view.lane, segmask = (int)((c >> 8) & 0x1f), cval = (int)(c & 0x1f), bval = b & 0x1f;
    const int max_lane = (lane & segmask) | (cval & ~segmask), min_lane = lane & segmask;
    int j = lane;
    bool in_range = false;
    switch (mode) {
    case SIMCLR_EMU_SHFL_UP: j = lane - bval; in_range = j >= max_lane; break;
    case SIMCLR_EMU_SHFL_DOWN: j = lane + bval; in_range = j <= max_lane; break;
    case SIMCLR_EMU_SHFL_BFLY: j = lane ^ bval; in_range = j <= max_lane; break;
    case SIMCLR_EMU_SHFL_IDX: j = min_lane | (bval & ~segmask); in_range = j <= max_lane; break;
    }
    if (!in_range || j == lane) return var;  // out of the segment: the caller's own value
    if (!((view.participants >> j) & 1u)) {
        // Undefined on the GPU (the source lane exited, is outside the block, or is not in mask):
        // say so once, and return all-one bits (NaN for floating types) so results show it.
        simclr_emu_report_inactive_source((unsigned)lane, (unsigned)j);
        return simclr_emu_from_slot<T>(~0ull);
    }
    return simclr_emu_from_slot<T>(view.slot[j]);
}

// Non-template overloads for CUDA's type list (as in sm_30_intrinsics.h and cuda_fp16/bf16.hpp),
// so that e.g. a `short` argument promotes to int exactly as under nvcc.
#define SIMCLR_EMU_SHFL_OVERLOADS(T)                                                                   \
    inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {                    \
        return simclr_emu_shfl(SIMCLR_EMU_SHFL_IDX, mask, var, srcLane, width);                        \
    }                                                                                                  \
    inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {          \
        return simclr_emu_shfl(SIMCLR_EMU_SHFL_UP, mask, var, (int)delta, width);                      \
    }                                                                                                  \
    inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {        \
        return simclr_emu_shfl(SIMCLR_EMU_SHFL_DOWN, mask, var, (int)delta, width);                    \
    }                                                                                                  \
    inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {               \
        return simclr_emu_shfl(SIMCLR_EMU_SHFL_BFLY, mask, var, laneMask, width);                      \
    }
SIMCLR_EMU_SHFL_OVERLOADS(int)
SIMCLR_EMU_SHFL_OVERLOADS(unsigned int)
SIMCLR_EMU_SHFL_OVERLOADS(long)
SIMCLR_EMU_SHFL_OVERLOADS(unsigned long)
SIMCLR_EMU_SHFL_OVERLOADS(long long)
SIMCLR_EMU_SHFL_OVERLOADS(unsigned long long)
SIMCLR_EMU_SHFL_OVERLOADS(float)
SIMCLR_EMU_SHFL_OVERLOADS(double)
SIMCLR_EMU_SHFL_OVERLOADS(__half)
SIMCLR_EMU_SHFL_OVERLOADS(__half2)
SIMCLR_EMU_SHFL_OVERLOADS(__nv_bfloat16)
SIMCLR_EMU_SHFL_OVERLOADS(__nv_bfloat162)
#undef SIMCLR_EMU_SHFL_OVERLOADS

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    simclr_emu_warp_view view;
    simclr_emu_warp_exchange(SIMCLR_EMU_WARP_SYNC, mask, 0, &view);
}
inline unsigned __activemask() { return simclr_emu_activemask(); }

// Votes count the lanes that took part: non-exited lanes of mask (CUDA: "all non-exited threads
// named in mask must execute the same intrinsic").
inline unsigned simclr_emu_vote(unsigned mask, int pred, unsigned* participants) {
    simclr_emu_warp_view view;
    simclr_emu_warp_exchange(SIMCLR_EMU_WARP_VOTE, mask, pred != 0, &view);
    unsigned ballot = 0;
    for (int i = 0; i < 32; ++i)
        if (((view.participants >> i) & 1u) && view.slot[i]) ballot |= 1u << i;
    *participants = view.participants;
    return ballot;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    unsigned p;
    return simclr_emu_vote(mask, pred, &p);
}
inline int __any_sync(unsigned mask, int pred) {
    unsigned p;
    return simclr_emu_vote(mask, pred, &p) != 0;
}
inline int __all_sync(unsigned mask, int pred) {
    unsigned p;
    return simclr_emu_vote(mask, pred, &p) == p;
}
inline int __uni_sync(unsigned mask, int pred) {
    unsigned p, b = simclr_emu_vote(mask, pred, &p);
    return b == 0 || b == p;
}

// sm_80 warp reductions and sm_70 match.
template <typename T, typename Op>
inline T simclr_emu_warp_reduce(unsigned mask, T value, Op op) {
    simclr_emu_warp_view view;
    simclr_emu_warp_exchange(SIMCLR_EMU_WARP_REDUCE, mask, simclr_emu_to_slot(value), &view);
    bool first = true;
    T acc{};
    for (int i = 0; i < 32; ++i) {
        if (!((view.participants >> i) & 1u)) continue;
        T v = simclr_emu_from_slot<T>(view.slot[i]);
        acc = first ? v : op(acc, v);
        first = false;
    }
    return acc;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
    return simclr_emu_warp_reduce(mask, v, [](unsigned a, unsigned b) { return a + b; });
}
inline int __reduce_add_sync(unsigned mask, int v) {
    return simclr_emu_warp_reduce(mask, v, [](int a, int b) { return (int)((unsigned)a + (unsigned)b); });
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
    return simclr_emu_warp_reduce(mask, v, [](unsigned a, unsigned b) { return a < b ? a : b; });
}
inline int __reduce_min_sync(unsigned mask, int v) {
    return simclr_emu_warp_reduce(mask, v, [](int a, int b) { return a < b ? a : b; });
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
    return simclr_emu_warp_reduce(mask, v, [](unsigned a, unsigned b) { return a > b ? a : b; });
}
inline int __reduce_max_sync(unsigned mask, int v) {
    return simclr_emu_warp_reduce(mask, v, [](int a, int b) { return a > b ? a : b; });
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) {
    return simclr_emu_warp_reduce(mask, v, [](unsigned a, unsigned b) { return a & b; });
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) {
    return simclr_emu_warp_reduce(mask, v, [](unsigned a, unsigned b) { return a | b; });
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) {
    return simclr_emu_warp_reduce(mask, v, [](unsigned a, unsigned b) { return a ^ b; });
}

template <typename T>
inline unsigned simclr_emu_match(unsigned mask, T value, int* all_pred) {
    simclr_emu_warp_view view;
    const std::uint64_t mine = simclr_emu_to_slot(value);
    simclr_emu_warp_exchange(SIMCLR_EMU_WARP_MATCH, mask, mine, &view);
    unsigned same = 0;
    for (int i = 0; i < 32; ++i)
        if (((view.participants >> i) & 1u) && view.slot[i] == mine) same |= 1u << i;
    if (!all_pred) return same;  // __match_any_sync
    *all_pred = same == view.participants;
    return *all_pred ? same : 0u;
}
#define SIMCLR_EMU_MATCH_OVERLOADS(T)                                                                  \
    inline unsigned __match_any_sync(unsigned mask, T value) { return simclr_emu_match(mask, value, nullptr); } \
    inline unsigned __match_all_sync(unsigned mask, T value, int* pred) { return simclr_emu_match(mask, value, pred); }
SIMCLR_EMU_MATCH_OVERLOADS(int)
SIMCLR_EMU_MATCH_OVERLOADS(unsigned int)
SIMCLR_EMU_MATCH_OVERLOADS(long)
SIMCLR_EMU_MATCH_OVERLOADS(unsigned long)
SIMCLR_EMU_MATCH_OVERLOADS(long long)
SIMCLR_EMU_MATCH_OVERLOADS(unsigned long long)
SIMCLR_EMU_MATCH_OVERLOADS(float)
SIMCLR_EMU_MATCH_OVERLOADS(double)
#undef SIMCLR_EMU_MATCH_OVERLOADS

// ---------------------------------------------------------------------------------------------
// Dynamic shared memory. nvcc code declares `extern __shared__ unsigned char x[]`; that has no
// CPU equivalent, so kernels use this macro (kernels/common.cuh defines the nvcc version only
// when SIMCLR_EMU is not defined). The runtime gives each block a fresh, 16-byte aligned buffer
// of the launch's dynamic size, filled with garbage (as static shared memory) so that reading it uninitialised shows.
// ---------------------------------------------------------------------------------------------
#define SIMCLR_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(simclr_emu_dynamic_smem())

#endif  // SIMCLR_CUDA_EMU_H
