// 2-D convolution as implicit GEMM (no cuDNN): forward (fprop), input gradient (dgrad) and weight
// gradient (wgrad), on tensor cores for bf16/f16 (f32 accumulation) and as a SIMT GEMM for f32.
// The launchers and the full derivation are in src/backend/cuda/kernels/conv.rs.
//
// Layouts: activations NHWC ([n][h][w][c]), weights KRSC ([k][r][s][c]). With c innermost, the
// GEMM reduction index (r, s, c) of fprop/wgrad and (r, s, k) of dgrad run over contiguous memory
// in 8-element (16-byte) pieces whenever the channel count is a multiple of 8, so every operand
// tile is filled by 16-byte cp.async copies, one per (pixel, 8 channels), and a padded pixel is one
// zero-filled copy. (NCHW would make the same pieces stride-H·W gathers.)
//
//   fprop  Y[m][k]   = Σ_{(r,s,c)} X̃[m][(r,s,c)] · W[k][(r,s,c)]      m = (n,p,q), X̃ = im2col(X)
//   dgrad  dX[m][c]  = Σ_{(r,s,k)} dỸ[m][(r,s,k)] · W[k][(r,s,c)]     m = (n,h,w) of one phase
//   wgrad  dW[k][(r,s,c)] = Σ_m dY[m][k] · X̃[m][(r,s,c)]               m = (n,p,q), split over blocks
//
// dgrad uses the stride decomposition: the dX pixels are split into stride² phases
// (h mod stride, w mod stride); within a phase exactly the filter taps r ≡ (h + pad) mod stride
// reach a dY pixel, p = (h + pad − r) / stride, so each phase is a dense implicit GEMM over only
// its valid taps — no work is spent on taps that the stride skips.
//
// Tensor-core tiles: 256 threads (8 warps), block tile BM × BN × 32 (BK), warp tiles of
// (BM / WARPS_M) × (BN / WARPS_N) made of m16n8k16 mma.sync instructions. Shared-memory tiles are
// stored either "K-major" ([rows][BK + 8]: the reduction index contiguous) or "MN-major"
// ([BK][rows + 8]), whichever makes the global reads contiguous; the 8-element row padding puts the
// 8 rows an ldmatrix reads in 8 different 16-byte bank groups (no bank conflicts). ldmatrix
// (non-transposed for K-major, .trans for MN-major) turns them into mma fragments. STAGES-deep
// cp.async pipeline (2 for 128×128, 3 for the smaller tiles), all within 48 KiB of static shared
// memory.
#include "mma.cuh"

// Shapes of one convolution: input n × h × w × c, filter k × r × s × c, output n × p × q × k.
struct ConvGeom {
    int n, h, w, c, k, r, s, stride, pad, p, q;
};

#define CONV_GEOM_PARAMS int n, int h, int w, int c, int k, int r, int s, int stride, int pad, int p, int q
#define CONV_GEOM_ARGS ConvGeom{n, h, w, c, k, r, s, stride, pad, p, q}

constexpr int TC_THREADS = 256;
constexpr int TC_BK = 32;
constexpr int SMEM_PAD = 8;  // 16-bit elements added to every shared-memory row

// ---------------------------------------------------------------------------------------------
// The three GEMMs as scalar element accessors: A(m, kk), B(kk, n) and the output store. The f32
// SIMT kernels read every operand through them, the tensor-core kernels only when the channel
// counts rule out 16-byte copies (the RGB stem, c = 3). Out-of-range elements read as zero.
// ---------------------------------------------------------------------------------------------

// Forward: A = im2col(X) [N·P·Q][R·S·C], B[kk][k] = W[k][kk].
template <typename T> struct FpropProblem {
    const T* x;
    const T* wt;
    ConvGeom g;
    int M, N, Kg;
    __device__ FpropProblem(const T* x_, const T* w_, ConvGeom g_) : x(x_), wt(w_), g(g_) {
        M = g.n * g.p * g.q;
        N = g.k;
        Kg = g.r * g.s * g.c;
    }
    __device__ T a(int m, int kk) const {
        if (m >= M || kk >= Kg) return from_float<T>(0.0f);
        const int img = m / (g.p * g.q), pq = m - img * g.p * g.q, p = pq / g.q, q = pq - p * g.q;
        const int rs = kk / g.c, c = kk - rs * g.c, r = rs / g.s, s = rs - r * g.s;
        const int ih = p * g.stride - g.pad + r, iw = q * g.stride - g.pad + s;
        if ((unsigned)ih >= (unsigned)g.h || (unsigned)iw >= (unsigned)g.w) return from_float<T>(0.0f);
        return x[(((long long)img * g.h + ih) * g.w + iw) * g.c + c];
    }
    __device__ T b(int kk, int n) const {
        if (n >= N || kk >= Kg) return from_float<T>(0.0f);
        return wt[(long long)n * Kg + kk];
    }
};

// The stride phase of a dgrad block: dX pixels (ph + hh·stride, pw + ww·stride), hh < hh_count,
// the valid taps r = r0 + rv·stride (rv < rv_count), and p = p_base + hh − rv for them.
struct DgradPhase {
    int ph, pw, r0, s0, rv_count, sv_count, hh_count, ww_count, p_base, q_base;
    __device__ DgradPhase(const ConvGeom& g, int phase) {
        ph = phase / g.stride;
        pw = phase - ph * g.stride;
        r0 = (ph + g.pad) % g.stride;
        s0 = (pw + g.pad) % g.stride;
        rv_count = r0 < g.r ? (g.r - r0 + g.stride - 1) / g.stride : 0;
        sv_count = s0 < g.s ? (g.s - s0 + g.stride - 1) / g.stride : 0;
        hh_count = ph < g.h ? (g.h - ph + g.stride - 1) / g.stride : 0;
        ww_count = pw < g.w ? (g.w - pw + g.stride - 1) / g.stride : 0;
        p_base = (ph + g.pad - r0) / g.stride;
        q_base = (pw + g.pad - s0) / g.stride;
    }
};

// Input gradient of one phase: A[m][(rv,sv,k)] = dY[n][p_base+hh−rv][q_base+ww−sv][k],
// B[(rv,sv,k)][c] = W[k][r0+rv·stride][s0+sv·stride][c].
template <typename T> struct DgradProblem {
    const T* dy;
    const T* wt;
    ConvGeom g;
    DgradPhase ph;
    int M, N, Kg;
    __device__ DgradProblem(const T* dy_, const T* w_, ConvGeom g_, int phase) : dy(dy_), wt(w_), g(g_), ph(g_, phase) {
        M = g.n * ph.hh_count * ph.ww_count;
        N = g.c;
        Kg = ph.rv_count * ph.sv_count * g.k;
    }
    __device__ T a(int m, int kg) const {
        if (m >= M || kg >= Kg) return from_float<T>(0.0f);
        const int hw = ph.hh_count * ph.ww_count, img = m / hw, rest = m - img * hw;
        const int hh = rest / ph.ww_count, ww = rest - hh * ph.ww_count;
        const int rs = kg / g.k, k = kg - rs * g.k, rv = rs / ph.sv_count, sv = rs - rv * ph.sv_count;
        const int p = ph.p_base + hh - rv, q = ph.q_base + ww - sv;
        if ((unsigned)p >= (unsigned)g.p || (unsigned)q >= (unsigned)g.q) return from_float<T>(0.0f);
        return dy[(((long long)img * g.p + p) * g.q + q) * g.k + k];
    }
    __device__ T b(int kg, int c) const {
        if (c >= N || kg >= Kg) return from_float<T>(0.0f);
        const int rs = kg / g.k, k = kg - rs * g.k, rv = rs / ph.sv_count, sv = rs - rv * ph.sv_count;
        const int r = ph.r0 + rv * g.stride, s = ph.s0 + sv * g.stride;
        return wt[(((long long)k * g.r + r) * g.s + s) * g.c + c];
    }
    // Offset of dX[m][0] (m within this phase).
    __device__ long long out_row(int m) const {
        const int hw = ph.hh_count * ph.ww_count, img = m / hw, rest = m - img * hw;
        const int hh = rest / ph.ww_count, ww = rest - hh * ph.ww_count;
        const int h = ph.ph + hh * g.stride, w = ph.pw + ww * g.stride;
        return (((long long)img * g.h + h) * g.w + w) * g.c;
    }
};

// Weight gradient over the pixel range [pix_begin, pix_end): A[k][pix] = dY[pix][k],
// B[pix][(r,s,c)] = im2col(X)[pix][(r,s,c)].
template <typename T> struct WgradProblem {
    const T* x;
    const T* dy;
    ConvGeom g;
    int M, N, pix_begin, pix_end;
    __device__ WgradProblem(const T* x_, const T* dy_, ConvGeom g_, int begin, int end)
        : x(x_), dy(dy_), g(g_), pix_begin(begin), pix_end(end) {
        M = g.k;
        N = g.r * g.s * g.c;
    }
    // kk counts from pix_begin.
    __device__ T a(int k, int kk) const {
        const int pix = pix_begin + kk;
        if (k >= M || pix >= pix_end) return from_float<T>(0.0f);
        return dy[(long long)pix * g.k + k];
    }
    __device__ T b(int kk, int rsc) const {
        const int pix = pix_begin + kk;
        if (rsc >= N || pix >= pix_end) return from_float<T>(0.0f);
        const int img = pix / (g.p * g.q), pq = pix - img * g.p * g.q, p = pq / g.q, q = pq - p * g.q;
        const int rs = rsc / g.c, c = rsc - rs * g.c, r = rs / g.s, s = rs - r * g.s;
        const int ih = p * g.stride - g.pad + r, iw = q * g.stride - g.pad + s;
        if ((unsigned)ih >= (unsigned)g.h || (unsigned)iw >= (unsigned)g.w) return from_float<T>(0.0f);
        return x[(((long long)img * g.h + ih) * g.w + iw) * g.c + c];
    }
};

// The forward epilogue shared by both paths: y = relu?(acc · scale[k] + bias[k]) (absent = 1 / 0).
struct FpropEpilogue {
    const float* scale;
    const float* bias;
    int relu;
    __device__ float apply(float v, int k) const {
        if (scale) v *= scale[k];
        if (bias) v += bias[k];
        return relu ? fmaxf(v, 0.0f) : v;
    }
};

// ---------------------------------------------------------------------------------------------
// Shared-memory tiles of the tensor-core kernels
// ---------------------------------------------------------------------------------------------
// A ROWS × BK operand tile. K_MAJOR: [ROWS][BK + 8]; otherwise [BK][ROWS + 8]. Filled in 16-byte
// chunks of 8 elements along the contiguous axis; CHUNKS_PER_THREAD of them per thread.
template <int ROWS, bool K_MAJOR> struct Tile {
    static constexpr int LD = K_MAJOR ? TC_BK + SMEM_PAD : ROWS + SMEM_PAD;
    static constexpr int SIZE = K_MAJOR ? ROWS * LD : TC_BK * LD;
    static constexpr int CHUNKS_PER_LINE = K_MAJOR ? TC_BK / 8 : ROWS / 8;
    static constexpr int CHUNKS_PER_THREAD = ROWS * TC_BK / 8 / TC_THREADS;
    static constexpr int LINES_PER_PASS = TC_THREADS / CHUNKS_PER_LINE;
    static_assert(ROWS * TC_BK / 8 % TC_THREADS == 0, "tile must split evenly over the threads");
    // Thread `tid`'s i-th chunk: line (a row of the stored layout) and chunk within the line.
    __device__ static int line(int tid, int i) { return tid / CHUNKS_PER_LINE + i * LINES_PER_PASS; }
    __device__ static int chunk(int tid) { return tid % CHUNKS_PER_LINE; }
    __device__ static int offset(int line, int chunk) { return line * LD + chunk * 8; }
};

// Scalar fill of an operand tile through a problem's accessor (c or k not a multiple of 8): the
// same chunks as the vector loaders, element by element. IS_A: A(m, kk), else B(kk, n).
template <typename T, class Problem, bool IS_A, int ROWS, bool K_MAJOR> struct ScalarLoader {
    using TileT = Tile<ROWS, K_MAJOR>;
    const Problem* prob;
    int row0, kt;
    __device__ ScalarLoader(const Problem* p, int row_begin) : prob(p), row0(row_begin), kt(0) {}
    __device__ void load(T* tile) {
        const int tid = threadIdx.x;
        for (int i = 0; i < TileT::CHUNKS_PER_THREAD; ++i) {
            const int line = TileT::line(tid, i), ch = TileT::chunk(tid);
            T* dst = tile + TileT::offset(line, ch);
            for (int e = 0; e < 8; ++e) {
                // K-major: the line is the row, the chunk runs along k; MN-major the other way.
                const int rowi = K_MAJOR ? line : ch * 8 + e;
                const int kk = K_MAJOR ? ch * 8 + e : line;
                const int mn = row0 + rowi, kabs = kt * TC_BK + kk;
                dst[e] = IS_A ? prob->a(mn, kabs) : prob->b(kabs, mn);
            }
        }
        ++kt;
    }
};

// ---------------------------------------------------------------------------------------------
// Vector (16-byte cp.async) loaders. Each is called once per k-tile, in order, and keeps the
// decomposition of its moving index incrementally (no divisions in the main loop).
// ---------------------------------------------------------------------------------------------

// fprop A: K-major, rows = output pixels. The row's (image, top-left input pixel) is fixed; the
// chunk's (r, s, c) advances by BK per tile. Needs c % 8 == 0 (a chunk stays within one tap).
template <typename T, int BM> struct FpropALoader {
    using TileT = Tile<BM, true>;
    static constexpr int PER = TileT::CHUNKS_PER_THREAD;
    const T* x;
    ConvGeom g;
    long long img_base[PER];
    int ih0[PER], iw0[PER];
    bool row_ok[PER];
    int r, s, c;
    __device__ FpropALoader(const T* x_, const ConvGeom& g_, int m0) : x(x_), g(g_) {
        const int tid = threadIdx.x, M = g.n * g.p * g.q;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int m = m0 + TileT::line(tid, i);
            row_ok[i] = m < M;
            const int mm = row_ok[i] ? m : 0;
            const int img = mm / (g.p * g.q), pq = mm - img * g.p * g.q, p = pq / g.q, q = pq - p * g.q;
            img_base[i] = (long long)img * g.h * g.w * g.c;
            ih0[i] = p * g.stride - g.pad;
            iw0[i] = q * g.stride - g.pad;
        }
        const int kk = TileT::chunk(tid) * 8, rs = kk / g.c;
        c = kk - rs * g.c;
        r = rs / g.s;
        s = rs - r * g.s;
    }
    __device__ void load(T* tile) {
        const int tid = threadIdx.x;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int ih = ih0[i] + r, iw = iw0[i] + s;
            const bool ok = row_ok[i] && r < g.r && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w;
            const T* src = ok ? x + img_base[i] + ((long long)ih * g.w + iw) * g.c + c : x;
            cp_async_16(tile + TileT::offset(TileT::line(tid, i), TileT::chunk(tid)), src, ok);
        }
        c += TC_BK;
        while (c >= g.c) {
            c -= g.c;
            if (++s == g.s) {
                s = 0;
                ++r;
            }
        }
    }
};

// fprop B: K-major, rows = output channels; W[k][kk] is already row-major k × (r,s,c).
template <typename T, int BN> struct FpropBLoader {
    using TileT = Tile<BN, true>;
    static constexpr int PER = TileT::CHUNKS_PER_THREAD;
    const T* src0[PER];
    bool row_ok[PER];
    int kk, kg;
    __device__ FpropBLoader(const T* wt, const ConvGeom& g, int n0) {
        const int tid = threadIdx.x;
        kg = g.r * g.s * g.c;
        kk = TileT::chunk(tid) * 8;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int n = n0 + TileT::line(tid, i);
            row_ok[i] = n < g.k;
            src0[i] = wt + (long long)(row_ok[i] ? n : 0) * kg;
        }
    }
    __device__ void load(T* tile) {
        const int tid = threadIdx.x;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const bool ok = row_ok[i] && kk < kg;
            cp_async_16(tile + TileT::offset(TileT::line(tid, i), TileT::chunk(tid)), ok ? src0[i] + kk : src0[i], ok);
        }
        kk += TC_BK;
    }
};

// dgrad A: K-major, rows = dX pixels of the phase; the chunk's (rv, sv, k) advances by BK.
template <typename T, int BM> struct DgradALoader {
    using TileT = Tile<BM, true>;
    static constexpr int PER = TileT::CHUNKS_PER_THREAD;
    const T* dy;
    ConvGeom g;
    int rv_count, sv_count;
    long long img_base[PER];
    int p_top[PER], q_left[PER];  // p = p_top − rv, q = q_left − sv
    bool row_ok[PER];
    int rv, sv, k;
    __device__ DgradALoader(const T* dy_, const ConvGeom& g_, const DgradPhase& ph, int m0) : dy(dy_), g(g_) {
        const int tid = threadIdx.x, hw = ph.hh_count * ph.ww_count, M = g.n * hw;
        rv_count = ph.rv_count;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int m = m0 + TileT::line(tid, i);
            row_ok[i] = m < M;
            const int mm = row_ok[i] ? m : 0;
            const int img = mm / hw, rest = mm - img * hw, hh = rest / ph.ww_count, ww = rest - hh * ph.ww_count;
            img_base[i] = (long long)img * g.p * g.q * g.k;
            p_top[i] = ph.p_base + hh;
            q_left[i] = ph.q_base + ww;
        }
        // The kernel returns before building a loader for a phase without taps (sv_count = 0).
        const int kg = TileT::chunk(tid) * 8, rs = kg / g.k;
        k = kg - rs * g.k;
        rv = rs / ph.sv_count;
        sv = rs - rv * ph.sv_count;
        sv_count = ph.sv_count;
    }
    __device__ void load(T* tile) {
        const int tid = threadIdx.x;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int p = p_top[i] - rv, q = q_left[i] - sv;
            const bool ok = row_ok[i] && rv < rv_count && (unsigned)p < (unsigned)g.p && (unsigned)q < (unsigned)g.q;
            const T* src = ok ? dy + img_base[i] + ((long long)p * g.q + q) * g.k + k : dy;
            cp_async_16(tile + TileT::offset(TileT::line(tid, i), TileT::chunk(tid)), src, ok);
        }
        k += TC_BK;
        while (k >= g.k) {
            k -= g.k;
            if (++sv == sv_count) {
                sv = 0;
                ++rv;
            }
        }
    }
};

// dgrad B: MN-major ([kg][c]), lines = (rv, sv, k) taps, chunks along c.
template <typename T, int BN> struct DgradBLoader {
    using TileT = Tile<BN, false>;
    static constexpr int PER = TileT::CHUNKS_PER_THREAD;
    const T* wt;
    ConvGeom g;
    int r0, s0, rv_count, sv_count, c;
    int rv[PER], sv[PER], k[PER];
    __device__ DgradBLoader(const T* w_, const ConvGeom& g_, const DgradPhase& ph, int n0) : wt(w_), g(g_) {
        const int tid = threadIdx.x;
        r0 = ph.r0;
        s0 = ph.s0;
        rv_count = ph.rv_count;
        sv_count = ph.sv_count;
        c = n0 + TileT::chunk(tid) * 8;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int kg = TileT::line(tid, i), rs = kg / g.k;
            k[i] = kg - rs * g.k;
            rv[i] = rs / sv_count;
            sv[i] = rs - rv[i] * sv_count;
        }
    }
    __device__ void load(T* tile) {
        const int tid = threadIdx.x;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const bool ok = rv[i] < rv_count && c < g.c;
            const int r = r0 + rv[i] * g.stride, s = s0 + sv[i] * g.stride;
            const T* src = ok ? wt + (((long long)k[i] * g.r + r) * g.s + s) * g.c + c : wt;
            cp_async_16(tile + TileT::offset(TileT::line(tid, i), TileT::chunk(tid)), src, ok);
            k[i] += TC_BK;
            while (k[i] >= g.k) {
                k[i] -= g.k;
                if (++sv[i] == sv_count) {
                    sv[i] = 0;
                    ++rv[i];
                }
            }
        }
    }
};

// wgrad A: MN-major ([pix][k]) straight from dY rows; lines = pixels, chunks along k.
template <typename T, int BM> struct WgradALoader {
    using TileT = Tile<BM, false>;
    static constexpr int PER = TileT::CHUNKS_PER_THREAD;
    const T* dy;
    int kdim, kout, pix, pix_end;
    __device__ WgradALoader(const T* dy_, const ConvGeom& g, int m0, int pix_begin, int end) : dy(dy_) {
        kdim = g.k;
        kout = m0 + TileT::chunk(threadIdx.x) * 8;
        pix = pix_begin + TileT::line(threadIdx.x, 0);
        pix_end = end;
    }
    __device__ void load(T* tile) {
        const int tid = threadIdx.x;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int px = pix + i * TileT::LINES_PER_PASS;
            const bool ok = px < pix_end && kout < kdim;
            const T* src = ok ? dy + (long long)px * kdim + kout : dy;
            cp_async_16(tile + TileT::offset(TileT::line(tid, i), TileT::chunk(tid)), src, ok);
        }
        pix += TC_BK;
    }
};

// wgrad B: MN-major ([pix][(r,s,c)]) gathered from X; the chunk's tap (r, s, c) is fixed, each
// line's pixel (image, p, q) advances by BK per tile.
template <typename T, int BN> struct WgradBLoader {
    using TileT = Tile<BN, false>;
    static constexpr int PER = TileT::CHUNKS_PER_THREAD;
    const T* x;
    ConvGeom g;
    int r, s, c;
    bool col_ok;
    int pix_end;
    int pix[PER], img[PER], p[PER], q[PER];
    __device__ WgradBLoader(const T* x_, const ConvGeom& g_, int n0, int pix_begin, int end) : x(x_), g(g_) {
        const int tid = threadIdx.x, rsc = n0 + TileT::chunk(tid) * 8;
        col_ok = rsc < g.r * g.s * g.c;
        const int rs = rsc / g.c;
        c = rsc - rs * g.c;
        r = rs / g.s;
        s = rs - r * g.s;
        pix_end = end;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            pix[i] = pix_begin + TileT::line(tid, i);
            const int pq = g.p * g.q;
            img[i] = pix[i] / pq;
            const int rest = pix[i] - img[i] * pq;
            p[i] = rest / g.q;
            q[i] = rest - p[i] * g.q;
        }
    }
    __device__ void load(T* tile) {
        const int tid = threadIdx.x;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int ih = p[i] * g.stride - g.pad + r, iw = q[i] * g.stride - g.pad + s;
            const bool ok =
                col_ok && pix[i] < pix_end && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w;
            const T* src = ok ? x + (((long long)img[i] * g.h + ih) * g.w + iw) * g.c + c : x;
            cp_async_16(tile + TileT::offset(TileT::line(tid, i), TileT::chunk(tid)), src, ok);
            pix[i] += TC_BK;
            q[i] += TC_BK;
            if (q[i] >= g.q) {
                const int carry = q[i] / g.q;
                q[i] -= carry * g.q;
                p[i] += carry;
                if (p[i] >= g.p) {
                    const int carry2 = p[i] / g.p;
                    p[i] -= carry2 * g.p;
                    img[i] += carry2;
                }
            }
        }
    }
};

// ---------------------------------------------------------------------------------------------
// The tensor-core main loop: STAGES-deep cp.async pipeline over k_tiles tiles of BK, mma.sync
// into per-warp accumulators acc[MT][NT][4] (fragment layout C of mma.cuh).
// ---------------------------------------------------------------------------------------------
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool A_KMAJOR, bool B_KMAJOR>
struct TcGemm {
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    static constexpr int MT = WM / 16, NT = WN / 8;
    using ATile = Tile<BM, A_KMAJOR>;
    using BTile = Tile<BN, B_KMAJOR>;
    static_assert(WARPS_M * WARPS_N * 32 == TC_THREADS, "8 warps");
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be whole 16x16 fragments");
    static_assert(STAGES * (ATile::SIZE + BTile::SIZE) * 2 <= 48 * 1024, "static shared memory is limited to 48 KiB");

    template <class LA, class LB>
    __device__ static void run(LA& la, LB& lb, int k_tiles, T* as, T* bs, float (&acc)[MT][NT][4]) {
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        const int wm = warp / WARPS_N, wn = warp % WARPS_N;
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

        for (int st = 0; st < STAGES - 1; ++st) {
            if (st < k_tiles) {
                la.load(as + st * ATile::SIZE);
                lb.load(bs + st * BTile::SIZE);
            }
            cp_async_commit();
        }
        for (int kt = 0; kt < k_tiles; ++kt) {
            cp_async_wait<STAGES - 2>();
            // Tile kt has landed for every thread, and every warp is done with the stage that
            // the next load overwrites (it computed on it in the previous iteration).
            __syncthreads();
            const int next = kt + STAGES - 1;
            if (next < k_tiles) {
                la.load(as + (next % STAGES) * ATile::SIZE);
                lb.load(bs + (next % STAGES) * BTile::SIZE);
            }
            cp_async_commit();

            const T* a = as + (kt % STAGES) * ATile::SIZE;
            const T* b = bs + (kt % STAGES) * BTile::SIZE;
#pragma unroll
            for (int ks = 0; ks < TC_BK; ks += 16) {
                uint32_t af[MT][4], bfr[NT][2];
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    const int m0 = wm * WM + i * 16;
                    if (A_KMAJOR)  // tiles (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
                        ldmatrix_x4(af[i], a + (m0 + (lane & 15)) * ATile::LD + ks + (lane >> 4) * 8);
                    else  // the same tiles, stored transposed (k rows)
                        ldmatrix_x4_trans(af[i],
                                          a + (ks + (lane & 7) + ((lane >> 4) & 1) * 8) * ATile::LD + m0 +
                                              ((lane >> 3) & 1) * 8);
                }
#pragma unroll
                for (int j = 0; j < NT / 2; ++j) {
                    const int n0 = wn * WN + j * 16;
                    uint32_t rr[4];  // (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
                    if (B_KMAJOR)
                        ldmatrix_x4(rr, b + (n0 + (lane & 7) + (lane >> 4) * 8) * BTile::LD + ks + ((lane >> 3) & 1) * 8);
                    else
                        ldmatrix_x4_trans(rr, b + (ks + (lane & 7) + ((lane >> 3) & 1) * 8) * BTile::LD + n0 +
                                                  (lane >> 4) * 8);
                    bfr[2 * j][0] = rr[0];
                    bfr[2 * j][1] = rr[1];
                    bfr[2 * j + 1][0] = rr[2];
                    bfr[2 * j + 1][1] = rr[3];
                }
#pragma unroll
                for (int i = 0; i < MT; ++i)
#pragma unroll
                    for (int j = 0; j < NT; ++j) mma_16816<T>(acc[i][j], af[i], bfr[j]);
            }
        }
        cp_async_wait<0>();
    }

    // Calls f(row, col, v0, v1) for each accumulator pair: columns col and col + 1 of row `row`
    // (block-relative coordinates).
    template <class F> __device__ static void for_each_pair(const float (&acc)[MT][NT][4], F f) {
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        const int wm = warp / WARPS_N, wn = warp % WARPS_N, g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int row = wm * WM + i * 16 + g, col = wn * WN + j * 8 + 2 * t;
                f(row, col, acc[i][j][0], acc[i][j][1]);
                f(row + 8, col, acc[i][j][2], acc[i][j][3]);
            }
    }
};

// Stores two adjacent outputs (col, col + 1) of a row that has `cols` columns: one 4-byte store
// when both exist and the pair is aligned, else element by element.
template <typename T> __device__ __forceinline__ void store_pair(T* row, int col, int cols, float v0, float v1) {
    if (col + 1 < cols && (cols & 1) == 0) {
        *reinterpret_cast<uint32_t*>(row + col) = pack2_float<T>(v0, v1);
    } else {
        if (col < cols) row[col] = from_float<T>(v0);
        if (col + 1 < cols) row[col + 1] = from_float<T>(v1);
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernels. VEC: 16-byte cp.async loaders (c and k multiples of 8); otherwise the
// scalar accessors fill the same tiles.
// ---------------------------------------------------------------------------------------------
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool VEC>
__device__ void conv_fprop_tc(const T* __restrict__ x, const T* __restrict__ wt, FpropEpilogue ep, T* __restrict__ y,
                              ConvGeom g) {
    using Gemm = TcGemm<T, BM, BN, WARPS_M, WARPS_N, STAGES, true, true>;
    __shared__ __align__(16) T as[STAGES * Gemm::ATile::SIZE];
    __shared__ __align__(16) T bs[STAGES * Gemm::BTile::SIZE];
    const FpropProblem<T> prob(x, wt, g);
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    if (m0 >= prob.M) return;
    const int k_tiles = (prob.Kg + TC_BK - 1) / TC_BK;
    float acc[Gemm::MT][Gemm::NT][4];
    if constexpr (VEC) {
        FpropALoader<T, BM> la(x, g, m0);
        FpropBLoader<T, BN> lb(wt, g, n0);
        Gemm::run(la, lb, k_tiles, as, bs, acc);
    } else {
        ScalarLoader<T, FpropProblem<T>, true, BM, true> la(&prob, m0);
        ScalarLoader<T, FpropProblem<T>, false, BN, true> lb(&prob, n0);
        Gemm::run(la, lb, k_tiles, as, bs, acc);
    }
    Gemm::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
        const int m = m0 + row, kc = n0 + col;
        if (m >= prob.M || kc >= g.k) return;
        const float o0 = ep.apply(v0, kc), o1 = kc + 1 < g.k ? ep.apply(v1, kc + 1) : 0.0f;
        store_pair(y + (long long)m * g.k, kc, g.k, o0, o1);
    });
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool VEC>
__device__ void conv_dgrad_tc(const T* __restrict__ dy, const T* __restrict__ wt, T* __restrict__ dx, ConvGeom g) {
    using Gemm = TcGemm<T, BM, BN, WARPS_M, WARPS_N, STAGES, true, false>;
    __shared__ __align__(16) T as[STAGES * Gemm::ATile::SIZE];
    __shared__ __align__(16) T bs[STAGES * Gemm::BTile::SIZE];
    const DgradProblem<T> prob(dy, wt, g, blockIdx.z);
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    if (m0 >= prob.M) return;  // phases have different pixel counts; the grid covers the largest
    const int k_tiles = (prob.Kg + TC_BK - 1) / TC_BK;
    float acc[Gemm::MT][Gemm::NT][4];
    if (prob.Kg == 0) {  // no filter tap reaches this phase (1x1 filter, stride 2): dX = 0
#pragma unroll
        for (int i = 0; i < Gemm::MT; ++i)
#pragma unroll
            for (int j = 0; j < Gemm::NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    } else if constexpr (VEC) {
        DgradALoader<T, BM> la(dy, g, prob.ph, m0);
        DgradBLoader<T, BN> lb(wt, g, prob.ph, n0);
        Gemm::run(la, lb, k_tiles, as, bs, acc);
    } else {
        ScalarLoader<T, DgradProblem<T>, true, BM, true> la(&prob, m0);
        ScalarLoader<T, DgradProblem<T>, false, BN, false> lb(&prob, n0);
        Gemm::run(la, lb, k_tiles, as, bs, acc);
    }
    Gemm::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
        const int m = m0 + row, c = n0 + col;
        if (m >= prob.M || c >= g.c) return;
        store_pair(dx + prob.out_row(m), c, g.c, v0, v1);
    });
}

// Block (x, y, z) computes the (BM × BN) tile of dW over pixel tiles [z·tiles_per_split, ...)
// and either adds it into dW (zeroed by the launcher) with f32 atomics, or — `store_partials`:
// one split, or the deterministic mode — stores it into slice z of dw ([splits][K][R·S·C]; the
// launcher then sums the slices in order with conv_wgrad_sum_splits_f32).
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool VEC>
__device__ void conv_wgrad_tc(const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ dw, ConvGeom g,
                              int tiles_per_split, int store_partials) {
    using Gemm = TcGemm<T, BM, BN, WARPS_M, WARPS_N, STAGES, false, false>;
    __shared__ __align__(16) T as[STAGES * Gemm::ATile::SIZE];
    __shared__ __align__(16) T bs[STAGES * Gemm::BTile::SIZE];
    const int npq = g.n * g.p * g.q;
    const long long begin_ll = (long long)blockIdx.z * tiles_per_split * TC_BK;
    if (begin_ll >= npq) return;
    const int pix_begin = (int)begin_ll;
    const int pix_end = (int)min((long long)npq, begin_ll + (long long)tiles_per_split * TC_BK);
    const WgradProblem<T> prob(x, dy, g, pix_begin, pix_end);
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int k_tiles = (pix_end - pix_begin + TC_BK - 1) / TC_BK;
    float acc[Gemm::MT][Gemm::NT][4];
    if constexpr (VEC) {
        WgradALoader<T, BM> la(dy, g, m0, pix_begin, pix_end);
        WgradBLoader<T, BN> lb(x, g, n0, pix_begin, pix_end);
        Gemm::run(la, lb, k_tiles, as, bs, acc);
    } else {
        ScalarLoader<T, WgradProblem<T>, true, BM, false> la(&prob, m0);
        ScalarLoader<T, WgradProblem<T>, false, BN, false> lb(&prob, n0);
        Gemm::run(la, lb, k_tiles, as, bs, acc);
    }
    Gemm::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
        const int k = m0 + row, rsc = n0 + col;
        if (k >= prob.M || rsc >= prob.N) return;
        float* out = dw + (long long)k * prob.N + rsc;
        if (store_partials) {
            out += (long long)blockIdx.z * prob.M * prob.N;
            out[0] = v0;
            if (rsc + 1 < prob.N) out[1] = v1;
        } else {
            atomicAdd(out, v0);
            if (rsc + 1 < prob.N) atomicAdd(out + 1, v1);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// f32 SIMT implicit GEMM: 64 × 64 block tile, BK = 16, 256 threads with 4 × 4 outputs each, the
// operands gathered element by element through the problem accessors into shared memory.
// ---------------------------------------------------------------------------------------------
constexpr int SIMT_BM = 64, SIMT_BN = 64, SIMT_BK = 16, SIMT_THREADS = 256;

// acc[i][j] = Σ_kk A(m0 + 4·ty + i, kk) · B(kk, n0 + 4·tx + j) over kk in [0, kg).
template <class Problem>
__device__ void simt_gemm(const Problem& prob, int m0, int n0, int kg, float (&acc)[4][4]) {
    __shared__ float as[SIMT_BK][SIMT_BM + 4];  // [k][m]: a thread's 4 rows are one float4
    __shared__ float bs[SIMT_BK][SIMT_BN + 4];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < kg; k0 += SIMT_BK) {
        for (int e = tid; e < SIMT_BK * SIMT_BM; e += SIMT_THREADS) {
            // kk fastest for A (contiguous in fprop/dgrad gathers), n fastest for B.
            const int kk = e % SIMT_BK, m = e / SIMT_BK;
            as[kk][m] = to_float(prob.a(m0 + m, k0 + kk));
            const int n = e % SIMT_BN, kb = e / SIMT_BN;
            bs[kb][n] = to_float(prob.b(k0 + kb, n0 + n));
        }
        __syncthreads();
        for (int kk = 0; kk < SIMT_BK; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = as[kk][4 * ty + i];
            for (int j = 0; j < 4; ++j) b[j] = bs[kk][4 * tx + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
}

__device__ void conv_fprop_simt(const float* x, const float* wt, FpropEpilogue ep, float* y, ConvGeom g) {
    const FpropProblem<float> prob(x, wt, g);
    const int m0 = blockIdx.x * SIMT_BM, n0 = blockIdx.y * SIMT_BN;
    if (m0 >= prob.M) return;
    float acc[4][4];
    simt_gemm(prob, m0, n0, prob.Kg, acc);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            const int m = m0 + 4 * ty + i, k = n0 + 4 * tx + j;
            if (m < prob.M && k < g.k) y[(long long)m * g.k + k] = ep.apply(acc[i][j], k);
        }
}

__device__ void conv_dgrad_simt(const float* dy, const float* wt, float* dx, ConvGeom g) {
    const DgradProblem<float> prob(dy, wt, g, blockIdx.z);
    const int m0 = blockIdx.x * SIMT_BM, n0 = blockIdx.y * SIMT_BN;
    if (m0 >= prob.M) return;
    float acc[4][4];
    simt_gemm(prob, m0, n0, prob.Kg, acc);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            const int m = m0 + 4 * ty + i, c = n0 + 4 * tx + j;
            if (m < prob.M && c < g.c) dx[prob.out_row(m) + c] = acc[i][j];
        }
}

__device__ void conv_wgrad_simt(const float* x, const float* dy, float* dw, ConvGeom g, int tiles_per_split,
                                int store_partials) {
    const int npq = g.n * g.p * g.q;
    const long long begin_ll = (long long)blockIdx.z * tiles_per_split * SIMT_BK;
    if (begin_ll >= npq) return;
    const int pix_begin = (int)begin_ll;
    const int pix_end = (int)min((long long)npq, begin_ll + (long long)tiles_per_split * SIMT_BK);
    const WgradProblem<float> prob(x, dy, g, pix_begin, pix_end);
    const int m0 = blockIdx.x * SIMT_BM, n0 = blockIdx.y * SIMT_BN;
    float acc[4][4];
    simt_gemm(prob, m0, n0, pix_end - pix_begin, acc);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            const int k = m0 + 4 * ty + i, rsc = n0 + 4 * tx + j;
            if (k >= prob.M || rsc >= prob.N) continue;
            const long long at = (long long)k * prob.N + rsc;
            if (store_partials) dw[(long long)blockIdx.z * prob.M * prob.N + at] = acc[i][j];
            else atomicAdd(dw + at, acc[i][j]);
        }
}

// ---------------------------------------------------------------------------------------------
// Exported kernels. Tensor-core names: conv_{fprop,dgrad,wgrad}_{BMxBN|scalar}_{bf16,f16};
// f32: conv_{fprop,dgrad,wgrad}_f32. Grids: fprop (M tiles, K tiles); dgrad (largest phase's
// M tiles, C tiles, stride²); wgrad (K tiles, R·S·C tiles, splits).
// ---------------------------------------------------------------------------------------------
#define CONV_TC_KERNELS(T, SUF)                                                                                  \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) conv_fprop_128x128_##SUF(                           \
        const T* x, const T* wt, const float* scale, const float* bias, T* y, CONV_GEOM_PARAMS, int relu) {      \
        conv_fprop_tc<T, 128, 128, 2, 4, 2, true>(x, wt, FpropEpilogue{scale, bias, relu}, y, CONV_GEOM_ARGS);   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) conv_fprop_128x64_##SUF(                            \
        const T* x, const T* wt, const float* scale, const float* bias, T* y, CONV_GEOM_PARAMS, int relu) {      \
        conv_fprop_tc<T, 128, 64, 4, 2, 3, true>(x, wt, FpropEpilogue{scale, bias, relu}, y, CONV_GEOM_ARGS);    \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) conv_fprop_scalar_##SUF(                            \
        const T* x, const T* wt, const float* scale, const float* bias, T* y, CONV_GEOM_PARAMS, int relu) {      \
        conv_fprop_tc<T, 128, 64, 4, 2, 2, false>(x, wt, FpropEpilogue{scale, bias, relu}, y, CONV_GEOM_ARGS);   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                     \
        conv_dgrad_128x128_##SUF(const T* dy, const T* wt, T* dx, CONV_GEOM_PARAMS) {                            \
        conv_dgrad_tc<T, 128, 128, 2, 4, 2, true>(dy, wt, dx, CONV_GEOM_ARGS);                                   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                     \
        conv_dgrad_128x64_##SUF(const T* dy, const T* wt, T* dx, CONV_GEOM_PARAMS) {                             \
        conv_dgrad_tc<T, 128, 64, 4, 2, 3, true>(dy, wt, dx, CONV_GEOM_ARGS);                                    \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                     \
        conv_dgrad_scalar_##SUF(const T* dy, const T* wt, T* dx, CONV_GEOM_PARAMS) {                             \
        conv_dgrad_tc<T, 128, 64, 4, 2, 2, false>(dy, wt, dx, CONV_GEOM_ARGS);                                   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                     \
        conv_wgrad_128x128_##SUF(const T* x, const T* dy, float* dw, CONV_GEOM_PARAMS, int tiles_per_split,      \
        int store_partials) {                                                                                     \
        conv_wgrad_tc<T, 128, 128, 2, 4, 2, true>(x, dy, dw, CONV_GEOM_ARGS, tiles_per_split, store_partials);   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                     \
        conv_wgrad_64x128_##SUF(const T* x, const T* dy, float* dw, CONV_GEOM_PARAMS, int tiles_per_split,       \
        int store_partials) {                                                                                     \
        conv_wgrad_tc<T, 64, 128, 2, 4, 3, true>(x, dy, dw, CONV_GEOM_ARGS, tiles_per_split, store_partials);    \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                     \
        conv_wgrad_scalar_##SUF(const T* x, const T* dy, float* dw, CONV_GEOM_PARAMS, int tiles_per_split,       \
        int store_partials) {                                                                                     \
        conv_wgrad_tc<T, 64, 128, 2, 4, 2, false>(x, dy, dw, CONV_GEOM_ARGS, tiles_per_split, store_partials);   \
    }

CONV_TC_KERNELS(bf16, bf16)
CONV_TC_KERNELS(f16, f16)

extern "C" __global__ void __launch_bounds__(SIMT_THREADS) conv_fprop_f32(const float* x, const float* wt,
                                                                          const float* scale, const float* bias,
                                                                          float* y, CONV_GEOM_PARAMS, int relu) {
    conv_fprop_simt(x, wt, FpropEpilogue{scale, bias, relu}, y, CONV_GEOM_ARGS);
}
extern "C" __global__ void __launch_bounds__(SIMT_THREADS)
    conv_dgrad_f32(const float* dy, const float* wt, float* dx, CONV_GEOM_PARAMS) {
    conv_dgrad_simt(dy, wt, dx, CONV_GEOM_ARGS);
}
extern "C" __global__ void __launch_bounds__(SIMT_THREADS)
    conv_wgrad_f32(const float* x, const float* dy, float* dw, CONV_GEOM_PARAMS, int tiles_per_split, int store_partials) {
    conv_wgrad_simt(x, dy, dw, CONV_GEOM_ARGS, tiles_per_split, store_partials);
}

// Deterministic split-K: dw[i] = Σ_z partials[z·n + i], the splits added in order z = 0, 1, ...
extern "C" __global__ void conv_wgrad_sum_splits_f32(const float* partials, float* dw, long long n, int splits) {
    GRID_STRIDE_LOOP(i, n) {
        float sum = partials[i];
        for (int z = 1; z < splits; ++z) sum += partials[z * n + i];
        dw[i] = sum;
    }
}
