//! Convolution weight gradient without im2col (f32, AVX-512), the companion of `direct.rs`.
//!
//!   dW[o, c, i, j] = Σ_n Σ_(oy, ox) dY[n, o, oy, ox] · x[n, c, oy·sh + i − ph, ox·sw + j − pw]
//!
//! The im2col path unfolds every image into a [P, K] matrix and multiplies dY by it; with
//! few output channels the GEMM is skinny (16 rows of dW) and the unfold costs as much as
//! the product (the demo's 7×7/2 stem: 12.7 ms per step for 1.2 GFLOP).
//!
//! Here, per image: dY is transposed to channels-last ([P, 16 channels] per block of 16
//! output channels) and each channel plane of x is copied into a zero-bordered plane (as
//! in `direct.rs`). A block of taps keeps its sums in vector registers, one vector of 16
//! output channels per tap; for every output pixel, its dY vector is loaded once and each
//! tap's input value broadcast into a fused multiply-add. The taps of a block are 4 kernel
//! rows (c, i) of 7 taps each: tap (c, i, j) of pixel (oy, ox) reads
//! `row(c, i)[oy·sh·Wp + ox·sw + j]`, one pointer per kernel row plus the pixel's offset
//! (shared by all rows) plus the constant j — so the pointers fit in the general registers.
//! Only 7-wide kernels (the ResNet stem) take this path: see `chosen_for`.
//!
//! Sums: per image, each tap over the pixels in row-major order; images added to a
//! per-thread total in order, the totals in a fixed split (`conv.rs`'s `sum_over_groups`):
//! the same bits on every run.

use super::direct::pad_image_into;
use super::{sum_over_groups, ConvGeometry};

/// Output channels per block: one AVX-512 vector of f32.
const CHANNELS: usize = 16;
/// Kernel rows per block and taps per kernel row: 4 rows of 7 taps = 28 sums, + the dY
/// vector = 29 of the 32 vector registers.
const ROWS: usize = 4;
const KW: usize = 7;

/// Sums one image's contribution to one block of taps: for kernel rows r < `live_rows`
/// and taps j < KW, `total[r·KW + j][l] += Σ_pixels dy[pixel][l] · rows[r][offset(pixel) + j]`.
type WeightBlock = unsafe fn(&WeightArgs, &mut [f32]);

struct WeightArgs {
    /// Each kernel row's first value in the padded image (c·plane + i·Wp); unused rows repeat
    /// the last live one.
    rows: [*const f32; ROWS],
    live_rows: usize,
    /// dY of this image and output-channel block, channels-last: [P][16].
    dy: *const f32,
    oh: usize,
    ow: usize,
    /// Offsets between consecutive output rows (sh·Wp) and columns (sw) in the padded plane.
    row_step: usize,
    column_step: usize,
}

/// The kernel for this geometry on this CPU, and the kernel rows it takes per block.
fn kernel(g: &ConvGeometry) -> Option<(WeightBlock, usize)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (g.kw == KW).then_some((weight_block_avx512 as WeightBlock, ROWS));
        }
    }
    let _ = g;
    None
}

/// Whether this kernel computes the geometry's weight gradient on this CPU, and beats the
/// channels-last im2col path there: AVX-512, 7-wide kernels (the ResNet stem), at most 64
/// output channels. Measured per layer (2-core Xeon, medians of 5, ms): the demo's stem
/// (3→16 over 1024 images of 32×32) 12.5 → 7.5, ResNet-18's (3→64 over 320 of 64×64)
/// 98 → 94. 3×3 kernels lost (the demo's 16→16 on 8×8 2.4 → 2.7, ResNet-18's 64→64 on
/// 16×16 97 → 130): their 27-sum block was kept in memory, not registers, by the compiler,
/// and on small maps the per-image transposes cost more than the unfold they replace.
pub(super) fn chosen_for(g: &ConvGeometry) -> bool {
    g.o <= 64 && kernel(g).is_some()
}

/// dW as [O, K] (K = C·kh·kw), as `conv2d_backward_weight`. Panics where this CPU has no
/// kernel for the geometry (see [`chosen_for`]).
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (block_kernel, rows_per_block) = kernel(g).expect("the direct weight gradient needs AVX-512 and kw 3, 5 or 7");
    let (k, p) = (g.k(), g.p());
    let blocks = g.o.div_ceil(CHANNELS);
    let (padded_h, padded_w) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let plane = padded_h * padded_w;
    let kernel_rows = g.c * g.kh;
    // Per worker: the padded image and dY channels-last ([block][P][16]).
    let new = || (vec![0.0f32; g.c * plane], vec![0.0f32; blocks * p * CHANNELS]);
    // The running total is [block][K][16]: tap k's 16 output channels side by side.
    let accumulate = |total: &mut [f32], (padded, dy_t): &mut (Vec<f32>, Vec<f32>), n: usize, _threads| {
        pad_image_into(&x[n * g.image()..][..g.image()], g, padded);
        // Pixel by pixel, so the writes run along dy_t and the reads stay within a few cache
        // lines of each of the 16 planes (plane by plane, every write missed the cache at
        // ResNet-18's 32×32 maps). Channels past O stay zero.
        let dy_n = &dy[n * g.o * p..][..g.o * p];
        for (block, dst) in dy_t.chunks_exact_mut(p * CHANNELS).enumerate() {
            let channels = CHANNELS.min(g.o - block * CHANNELS);
            for (pixel, d) in dst.chunks_exact_mut(CHANNELS).enumerate() {
                for (lane, v) in d.iter_mut().enumerate().take(channels) {
                    *v = dy_n[(block * CHANNELS + lane) * p + pixel];
                }
            }
        }
        let base = padded.as_ptr();
        for block in 0..blocks {
            for first_row in (0..kernel_rows).step_by(rows_per_block) {
                let live_rows = rows_per_block.min(kernel_rows - first_row);
                let mut rows = [base; ROWS];
                for (r, at) in rows.iter_mut().enumerate().take(rows_per_block) {
                    let row = first_row + r.min(live_rows - 1);
                    let (c, i) = (row / g.kh, row % g.kh);
                    // SAFETY: the first value of kernel row (c, i) of pixel (0, 0), in the buffer.
                    *at = unsafe { base.add(c * plane + i * padded_w) };
                }
                let args = WeightArgs {
                    rows,
                    live_rows,
                    dy: dy_t[block * p * CHANNELS..].as_ptr(),
                    oh: g.oh,
                    ow: g.ow,
                    row_step: g.sh * padded_w,
                    column_step: g.sw,
                };
                let out = &mut total[(block * k + first_row * g.kw) * CHANNELS..][..live_rows * g.kw * CHANNELS];
                // SAFETY: `kernel` chose a function this CPU runs, for this kernel width; every
                // read is a receptive field's value inside the padded image; dY holds P
                // vectors of 16; `out` has room for the live rows' taps.
                unsafe { block_kernel(&args, out) };
            }
        }
    };
    let total = sum_over_groups(g.n, blocks * k * CHANNELS, new, accumulate);
    // [block][K][16] → [O][K]
    let mut dw = vec![0.0f32; g.o * k];
    for (o, row) in dw.chunks_exact_mut(k).enumerate() {
        let (block, lane) = (o / CHANNELS, o % CHANNELS);
        for (t, d) in row.iter_mut().enumerate() {
            *d = total[(block * k + t) * CHANNELS + lane];
        }
    }
    dw
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weight_block_avx512(a: &WeightArgs, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let rows = a.rows; // in registers, not reloaded per pixel
    let mut acc = [[_mm512_setzero_ps(); KW]; ROWS];
    let mut dy = a.dy;
    for oy in 0..a.oh {
        let mut offset = oy * a.row_step;
        for _ in 0..a.ow {
            let d = _mm512_loadu_ps(dy);
            for (sums, row) in acc.iter_mut().zip(&rows) {
                let at = row.add(offset);
                for (j, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_fmadd_ps(_mm512_set1_ps(*at.add(j)), d, *sum);
                }
            }
            dy = dy.add(CHANNELS);
            offset += a.column_step;
        }
    }
    for (sums, out_row) in acc.iter().zip(out.chunks_exact_mut(KW * CHANNELS)).take(a.live_rows) {
        for (sum, o) in sums.iter().zip(out_row.chunks_exact_mut(CHANNELS)) {
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(o.as_ptr()), *sum));
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::{channels_last, ConvGeometry};
    use super::*;
    use crate::backend::cpu::matmul::GemmPrecision;

    /// The direct weight gradient is the channels-last im2col path's, to f32 rounding.
    #[test]
    fn direct_weight_gradient_matches_im2col() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let geometry = |n, c, hw, o, k, s, pad| ConvGeometry::new(n, c, (hw, hw), o, (k, k), (s, s), (pad, pad));
        let cases = [
            geometry(3, 3, 32, 16, 7, 2, 3), // the demo's stem: 21 kernel rows, blocks of 4
            geometry(2, 3, 20, 64, 7, 2, 3), // ResNet-18's, smaller
            geometry(2, 5, 9, 20, 7, 1, 2),  // stride 1, 20 channels (a part block), 35 rows
            geometry(2, 1, 7, 3, 7, 1, 0),   // one output pixel, 7 rows (a part block)
        ];
        for g in cases {
            let x: Vec<f32> = (0..g.n * g.image()).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let dy: Vec<f32> = (0..g.n * g.o * g.p()).map(|i| ((i * 53 % 89) as f32 - 44.0) / 31.0).collect();
            let want = channels_last::backward_weight(&x, &dy, &g, 1, GemmPrecision::Exact);
            let got = backward_weight(&x, &dy, &g);
            assert_eq!(got.len(), want.len());
            // Either order's rounding: N·P terms of size ≤ 3 · 1.5.
            let tol = 4.5 * (g.n * g.p()) as f32 * f32::EPSILON * 4.0 + 1e-5;
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= tol, "{g:?}: dW element {i}: {a} vs {b}");
            }
        }
    }
}
