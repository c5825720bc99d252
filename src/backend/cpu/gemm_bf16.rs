//! f32 GEMM with bf16 operands, for bf16 autocast on the CPU:
//!   dst[m×n] (+)= bf16(lhs[m×k]) · bf16(rhs[k×n]),  products summed in f32.
//! Operands are rounded to bf16 (nearest, ties to even) while they are packed, so tensors
//! stay f32 and only the multiply narrows, as `torch.autocast` does to a matmul.
//!
//! The arithmetic is AVX512-BF16's `vdpbf16ps`: each 32-bit lane holds a pair of bf16
//! values and adds the two products of its pairs to an f32 accumulator, twice the
//! multiply-adds of an f32 FMA per instruction.
//!
//! Blocking, as in Goto/BLIS:
//!   for each KC-deep slice of k:          pack rhs[KC × n] into NR-wide panels      (shared)
//!     for each MC-tall block of rows:      pack lhs[MC × KC] into MR-tall panels     (one per thread)
//!       for each NR panel × MR panel:      kernel: an MR×NR tile += A panel · B panel
//! Packed panels hold u32 words, each a pair of bf16 along k (the low half the even k):
//!   A panel [KC/2][MR]: word (p, i) = (a[i][2p], a[i][2p+1]), one broadcast to all lanes;
//!   B panel [KC/2][NR]: word (p, j) = (b[2p][j], b[2p+1][j]), NR/16 vectors per pair.
//! An odd k is padded with a zero, short panels with zero rows or columns. Every sum runs in
//! the same order (k slices, then pairs, in order) whatever the thread count. Subnormal
//! operands (|x| < 1.2e-38) count as zero, as `vdpbf16ps` treats them.

use super::{SendConstPtr, SendPtr};
use rayon::prelude::*;
use std::cell::Cell;

/// Rows of a kernel tile (one accumulator pair each; 2·MR + 2 of the 32 zmm registers).
const MR: usize = 12;
/// Columns of a kernel tile: two 16-lane vectors.
const NR: usize = 32;
/// Depth of a k slice (even): a B panel (KC×NR bf16, 24 KiB) stays in a 32–48 KiB L1 while
/// the A panels (MR×KC, 9 KiB) stream past it; an MC×KC block of A (72 KiB) sits in L2.
const KC: usize = 384;
/// Rows of lhs one thread packs and multiplies at a time (a multiple of MR).
const MC: usize = 96;

/// Whether this CPU runs the bf16 GEMM (AVX512-F and AVX512-BF16).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16 (nearest, ties to even), as its 16 bits. NaN stays NaN (quiet).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) | 0x40;
    }
    // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; a carry
    // into the exponent is the correct rounding up (to infinity past the largest bf16).
    (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
}

/// `x` rounded to bf16 and widened back to f32: the value the GEMM multiplies.
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// `dst[m×n] (+)= bf16(lhs) · bf16(rhs)`, each operand given by pointer and (row stride,
/// column stride) in elements; `dst` is overwritten, or added to when `accumulate` is set.
/// Runs on up to `threads` rayon threads.
///
/// # Safety
/// The pointers must cover the addressed elements; `dst` must not alias the inputs; the CPU
/// must have AVX512-BF16 ([`supported`]).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_rs, dst_cs): (*mut f32, isize, isize),
    (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
    (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize),
    accumulate: bool,
    threads: usize,
) {
    // A cached feature test: a clear panic rather than an illegal instruction.
    assert!(supported(), "gemm_bf16 needs AVX512-BF16, which this CPU lacks");
    if m == 0 || n == 0 {
        return;
    }
    let (dst, lhs, rhs) = (SendPtr(dst), SendConstPtr(lhs), SendConstPtr(rhs));
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.0.offset(i as isize * dst_rs + j as isize * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    let (panels_n, most_pairs) = (n.div_ceil(NR), KC.min(k).div_ceil(2));
    let mut b_packed = PACKED_B.take();
    b_packed.resize(b_packed.len().max(panels_n * most_pairs * NR), 0);
    for (slice, k0) in (0..k).step_by(KC).enumerate() {
        let kc = KC.min(k - k0);
        let pairs = kc.div_ceil(2);
        let rhs_slice = SendConstPtr(rhs.0.offset(k0 as isize * rhs_rs));
        let pack_b = |(panel, words): (usize, &mut [u32])| {
            let src = rhs_slice; // the whole Send wrapper, not its raw pointer field
            pack_panel(words, src.0, (rhs_rs, rhs_cs), kc, panel * NR, n, NR);
        };
        let b_words = &mut b_packed[..panels_n * pairs * NR];
        if threads > 1 {
            b_words.par_chunks_mut(pairs * NR).enumerate().for_each(pack_b);
        } else {
            b_words.chunks_mut(pairs * NR).enumerate().for_each(pack_b);
        }
        let b_words: &[u32] = b_words;
        let overwrite = slice == 0 && !accumulate;
        let lhs_slice = SendConstPtr(lhs.0.offset(k0 as isize * lhs_cs));
        let block = |i0: usize| {
            let (lhs_slice, dst) = (lhs_slice, dst);
            let mc = MC.min(m - i0);
            let mut a_packed = PACKED_A.take();
            a_packed.resize(a_packed.len().max(MC / MR * (KC / 2) * MR), 0);
            let a_words = &mut a_packed[..mc.div_ceil(MR) * pairs * MR];
            for (panel, words) in a_words.chunks_mut(pairs * MR).enumerate() {
                let rows = lhs_slice.0.offset(i0 as isize * lhs_rs);
                // A panel: rows of lhs are the "columns" of the packed layout, k runs along lhs_cs.
                pack_panel(words, rows, (lhs_cs, lhs_rs), kc, panel * MR, mc, MR);
            }
            for (pj, b_panel) in b_words.chunks(pairs * NR).enumerate() {
                for (pi, a_panel) in a_words.chunks(pairs * MR).enumerate() {
                    let (r0, c0) = (i0 + pi * MR, pj * NR);
                    let out = Tile {
                        at: dst.0.offset(r0 as isize * dst_rs + c0 as isize * dst_cs),
                        row_stride: dst_rs,
                        col_stride: dst_cs,
                        rows: MR.min(m - r0),
                        cols: NR.min(n - c0),
                        overwrite,
                    };
                    kernel(pairs, a_panel, b_panel, &out);
                }
            }
            PACKED_A.set(a_packed);
        };
        if threads > 1 && m > MC {
            (0..m).step_by(MC).collect::<Vec<_>>().into_par_iter().for_each(block);
        } else {
            (0..m).step_by(MC).for_each(block);
        }
    }
    PACKED_B.set(b_packed);
}

thread_local! {
    // Packed panels, kept from call to call (new zeroed buffers cost a memset and page faults
    // per GEMM). A call takes its buffer out, so a nested call on the same thread (a rayon
    // worker stealing another GEMM while it waits) makes its own. Packing writes every word a
    // kernel reads, so what a reused buffer held before does not matter.
    static PACKED_A: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static PACKED_B: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// Where a kernel's MR×NR result goes: `rows` × `cols` of it (fewer at the matrix's edges) at
/// `at` with the given strides, written over or added to what is there.
struct Tile {
    at: *mut f32,
    row_stride: isize,
    col_stride: isize,
    rows: usize,
    cols: usize,
    overwrite: bool,
}

/// Packs one panel: `width` lines (columns of rhs, or rows of lhs) starting at line `first`
/// of `lines`, each `kc` deep, from `src` where line j, depth d is at `j·line_stride +
/// d·depth_stride` → `words[p·width + j]` = bf16 pair (depth 2p, 2p+1) of line j. Lines
/// past `lines` and the depth past `kc` are zeros.
///
/// # Safety
/// `src` must cover lines 0..lines at depths 0..kc at the given strides.
unsafe fn pack_panel(
    words: &mut [u32],
    src: *const f32,
    (depth_stride, line_stride): (isize, isize),
    kc: usize,
    first: usize,
    lines: usize,
    width: usize,
) {
    let live = width.min(lines - first);
    let src = src.offset(first as isize * line_stride);
    #[cfg(target_arch = "x86_64")]
    if depth_stride == 1 {
        pack_depth_contiguous(words, src, line_stride, kc, live, width);
        return;
    } else if line_stride == 1 {
        pack_lines_contiguous(words, src, depth_stride, kc, live, width);
        return;
    }
    pack_any(words, src, (depth_stride, line_stride), kc, live, width)
}

/// [`pack_panel`] one element at a time, at any strides (`src` at the panel's first line).
unsafe fn pack_any(
    words: &mut [u32],
    src: *const f32,
    (depth_stride, line_stride): (isize, isize),
    kc: usize,
    live: usize,
    width: usize,
) {
    for p in 0..kc.div_ceil(2) {
        let row = &mut words[p * width..][..width];
        let (d0, d1) = (2 * p, 2 * p + 1);
        for (j, word) in row.iter_mut().enumerate().take(live) {
            let line = src.offset(j as isize * line_stride);
            let lo = bf16_bits(*line.offset(d0 as isize * depth_stride));
            let hi = if d1 < kc { bf16_bits(*line.offset(d1 as isize * depth_stride)) } else { 0 };
            *word = lo | (hi << 16);
        }
        row[live..].fill(0);
    }
}

/// [`pack_panel`] where each line's depth is contiguous (a row-major lhs, a transposed
/// weight): 32 floats of a line become 16 words with one conversion (`vcvtne2ps2bf16`),
/// then go to their rows of the panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_depth_contiguous(
    words: &mut [u32],
    src: *const f32,
    line_stride: isize,
    kc: usize,
    live: usize,
    width: usize,
) {
    use std::arch::x86_64::*;
    let (pairs, body) = (kc.div_ceil(2), kc / 32 * 32);
    let mut chunk = [0u32; 16];
    for j in 0..live {
        let line = src.offset(j as isize * line_stride);
        for d in (0..body).step_by(32) {
            let bf: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
                _mm512_loadu_ps(line.add(d + 16)),
                _mm512_loadu_ps(line.add(d)),
            ));
            _mm512_storeu_si512(chunk.as_mut_ptr() as *mut _, bf);
            for (q, &w) in chunk.iter().enumerate() {
                words[(d / 2 + q) * width + j] = w;
            }
        }
        for p in body / 2..pairs {
            let lo = bf16_bits(*line.add(2 * p));
            let hi = if 2 * p + 1 < kc { bf16_bits(*line.add(2 * p + 1)) } else { 0 };
            words[p * width + j] = lo | (hi << 16);
        }
    }
    for p in 0..pairs {
        words[p * width + live..][..width - live].fill(0);
    }
}

/// The mask of a vector's first `count` of 16 lanes (all of them from 16 up).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first_lanes(count: usize) -> std::arch::x86_64::__mmask16 {
    if count >= 16 {
        0xFFFF
    } else {
        (1u16 << count) - 1
    }
}

/// [`pack_panel`] where the lines are contiguous (a row-major rhs, a transposed lhs): 16
/// lines at depth 2p and 2p+1 become 16 words with one conversion and one interleave
/// (`vpermw`); masked loads and stores cover a short panel and its zero lines.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_lines_contiguous(
    words: &mut [u32],
    src: *const f32,
    depth_stride: isize,
    kc: usize,
    live: usize,
    width: usize,
) {
    use std::arch::x86_64::*;
    // Word j = (even depth's line j, odd depth's line j): bf16 j of the low half, then of the high.
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    for p in 0..kc.div_ceil(2) {
        let (even, odd) = (src.offset(2 * p as isize * depth_stride), src.offset((2 * p + 1) as isize * depth_stride));
        for j in (0..width).step_by(16) {
            let read = first_lanes(live.saturating_sub(j));
            let lo = _mm512_maskz_loadu_ps(read, even.add(j));
            let hi = if 2 * p + 1 < kc { _mm512_maskz_loadu_ps(read, odd.add(j)) } else { _mm512_setzero_ps() };
            let bf: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let packed = _mm512_permutexvar_epi16(interleave, bf);
            _mm512_mask_storeu_epi32(words.as_mut_ptr().add(p * width + j) as *mut _, first_lanes(width - j), packed);
        }
    }
}

/// `out` (+)= A panel · B panel over `pairs` pairs of k.
#[inline(always)]
fn kernel(pairs: usize, a: &[u32], b: &[u32], out: &Tile) {
    assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: callers run only where `supported()` (checked by the op that chose bf16);
    // the panels hold `pairs` rows of MR and NR words (asserted above); `out` addresses
    // its rows × cols inside the destination (gemm_bf16's contract).
    unsafe {
        kernel_avx512(pairs, a.as_ptr(), b.as_ptr(), out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("gemm_bf16 runs only where supported() (x86-64 with AVX512-BF16)")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_avx512(pairs: usize, a: *const u32, b: *const u32, out: &Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
        let a_row = a.add(p * MR);
        for (i, acc) in acc.iter_mut().enumerate() {
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_row.add(i) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], ai, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], ai, b1);
        }
    }
    if out.col_stride == 1 {
        // Rows in place, masked to the tile's columns.
        let (m0, m1) = (first_lanes(out.cols), first_lanes(out.cols.saturating_sub(16)));
        for (i, acc) in acc.iter().enumerate().take(out.rows) {
            let row = out.at.offset(i as isize * out.row_stride);
            let (mut c0, mut c1) = (acc[0], acc[1]);
            if !out.overwrite {
                c0 = _mm512_add_ps(c0, _mm512_maskz_loadu_ps(m0, row));
                c1 = _mm512_add_ps(c1, _mm512_maskz_loadu_ps(m1, row.wrapping_add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, c0);
            _mm512_mask_storeu_ps(row.wrapping_add(16), m1, c1);
        }
    } else {
        // Strided columns (a transposed destination): one element at a time.
        let mut tile = [0f32; MR * NR];
        for (i, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), acc[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + 16), acc[1]);
        }
        for i in 0..out.rows {
            for j in 0..out.cols {
                let o = out.at.offset(i as isize * out.row_stride + j as isize * out.col_stride);
                let t = tile[i * NR + j];
                *o = if out.overwrite { t } else { *o + t };
            }
        }
    }
}
