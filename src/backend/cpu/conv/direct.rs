//! Convolution forward without im2col, for layers with few output channels (f32, AVX2 + FMA
//! or AVX-512).
//!
//! im2col copies every input pixel once per kernel tap (K·P values per image) so that a
//! GEMM can multiply them by the weights. With 16 output channels that is one value moved
//! per 16 multiply-adds, and the copy costs as much as the product: the demo's 7×7/2 stem
//! over 3 channels, its 16→16 convolutions of 8×8 maps.
//!
//! Here the product reads the input where it lies. Each channel plane of an image is
//! copied once into a zero-bordered plane (as in `tap_table.rs`: padding then reads zeros,
//! no bounds tests). A block of output pixels × 16 output channels keeps its sums in
//! vector registers — the register block of a GEMM microkernel, fed from the image
//! instead of a packed copy: per kernel tap (c, i, j), one vector of 16 weights (two for
//! AVX2) and, for each pixel, its input value broadcast and multiplied in.
//!
//! A block is `segments` runs of `run` consecutive pixels of an output row, each run
//! reading through one pointer: pixel q of a run reads q·stride past its first pixel.
//! AVX2: 6 runs of 1 pixel (6 pointers, any stride). AVX-512: 1 run of 16, 2 of 8, 4 of 4
//! or 8 of 2, by the output width, with the stride (1 or 2) and run length compile-time
//! constants, so every input read is a pointer plus a constant and the pointers fit in
//! the general registers (16 pointers, one per pixel, did not: the compiler spilled them
//! and the kernel ran at half speed).
//!
//! Every output is its bias (or 0) plus the taps in (c, i, j) order, one fused
//! multiply-add each: the same order on every run and every thread count.

use super::ConvGeometry;
use rayon::prelude::*;

/// Output channels per block: one AVX-512 vector of f32, or two AVX2 vectors.
const CHANNELS: usize = 16;
/// The most runs per block (AVX-512's 8 runs of 2 pixels).
const MAX_SEGMENTS: usize = 8;

/// One block's work: `segments` runs of `run` output pixels × 16 channels.
struct Block<'a> {
    /// Each run's first pixel's corner in the padded image (pixel q of the run reads q·stride
    /// further).
    first: [*const f32; MAX_SEGMENTS],
    /// Each run's first output pixel (within a plane) and how many of its pixels to store
    /// (0 for a repeated run that fills a short last block).
    targets: [(usize, usize); MAX_SEGMENTS],
    /// Where tap t reads, relative to a pixel's corner; the taps' weights ([tap][16]); the
    /// sums' starting values (bias).
    taps: &'a [usize],
    weights: &'a [f32],
    start: &'a [f32],
    /// The block's first output plane, planes `plane` apart, and how many channels are real.
    out: *mut f32,
    plane: usize,
    channels: usize,
}

/// Computes a block: out[l][pixel] = start[l] + Σ_t weights[t][l] · input(pixel, t), stored
/// for the real channels and the live pixels.
type BlockKernel = unsafe fn(&Block);

/// A kernel, the block it computes (`segments` runs of `run` pixels), and the most output
/// channels for which it beats im2col + GEMM.
#[derive(Clone, Copy)]
struct Kernel {
    block: BlockKernel,
    segments: usize,
    run: usize,
    max_channels: usize,
}

/// The kernel for this geometry on this CPU (features detected at run time), if any.
fn kernel(g: &ConvGeometry) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            if let Some(kernel) = avx512_kernel(g.sw, best_run(g.ow, AVX512_RUNS)) {
                return Some(kernel);
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Some(AVX2_KERNEL);
        }
    }
    let _ = g;
    None
}

/// Whether the direct kernel runs this geometry on this CPU, and beats im2col + GEMM there:
/// AVX-512 (strides 1 and 2) up to 64 output channels, AVX2 + FMA up to 32.
pub(super) fn chosen_for(g: &ConvGeometry) -> bool {
    kernel(g).is_some_and(|kernel| g.o <= kernel.max_channels)
}

/// Of the runs a kernel offers (longest first), the first that wastes the fewest lanes on
/// rows `width` pixels wide (a row's last run may be short; its extra lanes are computed
/// and dropped).
fn best_run(width: usize, runs: &[usize]) -> usize {
    *runs.iter().min_by_key(|&&run| width.div_ceil(run) * run - width).expect("a kernel offers runs")
}

/// y = conv(x, w) + bias, as `conv2d_forward` (`x` [N, C, H, W], `w` [O, K] → [N, O, OH, OW]).
/// Panics where this CPU has no kernel for the geometry (see [`chosen_for`]).
pub(super) fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &ConvGeometry) -> Vec<f32> {
    let kernel = kernel(g).expect("the direct convolution needs AVX2 + FMA (or AVX-512 and stride 1 or 2)");
    forward_with(kernel, x, w, bias, g)
}

fn forward_with(kernel: Kernel, x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &ConvGeometry) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let blocks = g.o.div_ceil(CHANNELS);
    // Weights as [block][tap][16 channels], channels past O zero (their sums are dropped).
    let mut packed = vec![0.0f32; blocks * k * CHANNELS];
    for (oc, row) in w.chunks_exact(k).enumerate() {
        let (block, lane) = (oc / CHANNELS, oc % CHANNELS);
        for (t, &v) in row.iter().enumerate() {
            packed[(block * k + t) * CHANNELS + lane] = v;
        }
    }
    let mut starts = vec![0.0f32; blocks * CHANNELS];
    if let Some(b) = bias {
        starts[..g.o].copy_from_slice(b);
    }
    let (padded_h, padded_w) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let plane = padded_h * padded_w;
    // Where tap (c, i, j) reads, relative to its output pixel's corner (oy·sh, ox·sw).
    let mut tap_offsets = Vec::with_capacity(k);
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                tap_offsets.push(c * plane + i * padded_w + j);
            }
        }
    }
    // The output's runs, row by row: (corner of the first pixel, first pixel, live pixels).
    let run = kernel.run;
    let mut runs = Vec::with_capacity(g.oh * g.ow.div_ceil(run));
    for oy in 0..g.oh {
        for ox in (0..g.ow).step_by(run) {
            runs.push((oy * g.sh * padded_w + ox * g.sw, oy * g.ow + ox, run.min(g.ow - ox)));
        }
    }
    let mut y = vec![0.0f32; g.n * g.o * p];
    // The border stays zero. A row's last run reads up to (run − 1)·sw values past the
    // row's last pixel: the slack keeps those reads inside the buffer.
    let new_padded = || vec![0.0f32; g.c * plane + run * g.sw];
    y.par_chunks_mut(g.o * p).enumerate().for_each_init(new_padded, |padded, (n, yn)| {
        pad_image_into(&x[n * g.image()..][..g.image()], g, padded);
        let base = padded.as_ptr();
        let out = yn.as_mut_ptr();
        for group in runs.chunks(kernel.segments) {
            // A short last group repeats its last run (computed, not stored).
            let mut first = [base; MAX_SEGMENTS];
            let mut targets = [(0, 0); MAX_SEGMENTS];
            for r in 0..kernel.segments {
                let (corner, pixel, live) = group[r.min(group.len() - 1)];
                // SAFETY: a receptive field's corner, inside the padded buffer.
                first[r] = unsafe { base.add(corner) };
                targets[r] = (pixel, if r < group.len() { live } else { 0 });
            }
            // Every channel block over the same pixels, while their inputs are in cache.
            for block in 0..blocks {
                let work = Block {
                    first,
                    targets,
                    taps: &tap_offsets,
                    weights: &packed[block * k * CHANNELS..][..k * CHANNELS],
                    start: &starts[block * CHANNELS..][..CHANNELS],
                    // SAFETY: the block's first plane, inside this image's output.
                    out: unsafe { out.add(block * CHANNELS * p) },
                    plane: p,
                    channels: CHANNELS.min(g.o - block * CHANNELS),
                };
                // SAFETY: `kernel` chose a function this CPU runs, for this stride; every
                // corner + tap offset + q·sw (q < run) lies inside the padded buffer with its
                // slack (the geometry keeps each receptive field inside the planes); the
                // stores go to the block's real planes of this image's output, at live pixels.
                unsafe { (kernel.block)(&work) };
            }
        }
    });
    y
}

/// Image `image` ([C, H, W]) into the interiors of the zero-bordered planes `padded`
/// ([C, H + 2ph, W + 2pw] and any slack after); the borders are left as they are (zero).
pub(super) fn pad_image_into(image: &[f32], g: &ConvGeometry, padded: &mut [f32]) {
    let padded_w = g.w + 2 * g.pw;
    let plane = (g.h + 2 * g.ph) * padded_w;
    for (c, src) in image.chunks_exact(g.h * g.w).enumerate() {
        for (row, values) in src.chunks_exact(g.w).enumerate() {
            padded[c * plane + (row + g.ph) * padded_w + g.pw..][..g.w].copy_from_slice(values);
        }
    }
}

/// AVX2: 6 pixels × 2 vectors of 8 channels = 12 accumulators, + 2 weight vectors + 1
/// broadcast = 15 of the 16 vector registers; 6 runs of one pixel each, so 6 pointers
/// (they fit in the general registers) and any stride.
///
/// Against im2col + GEMM, per layer (forward, 320 images, 2-core Xeon run with AVX2 only,
/// medians of 7, ms): the demo's 7×7/2 stem 4.0 → 2.7, 16→16 on 8×8 0.98 → 0.76, 32→32 on
/// 4×4 0.97 → 0.70; ResNet-18's 64→64 on 16×16 29.5 → 37.5 (lost: the GEMM's packed
/// operands reach 200 GFLOP/s there, this kernel 160).
#[cfg(target_arch = "x86_64")]
const AVX2_KERNEL: Kernel = Kernel { block: block_avx2, segments: 6, run: 1, max_channels: 32 };

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(b: &Block) {
    use std::arch::x86_64::*;
    const PIXELS: usize = AVX2_KERNEL.segments;
    let first = b.first; // in registers, not reloaded per tap
    let (s0, s1) = (_mm256_loadu_ps(b.start.as_ptr()), _mm256_loadu_ps(b.start.as_ptr().add(8)));
    let mut acc = [[s0, s1]; PIXELS];
    let mut w = b.weights.as_ptr();
    for &offset in b.taps {
        let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
        for (a, at) in acc.iter_mut().zip(&first) {
            let v = _mm256_broadcast_ss(&*at.add(offset));
            a[0] = _mm256_fmadd_ps(v, w0, a[0]);
            a[1] = _mm256_fmadd_ps(v, w1, a[1]);
        }
        w = w.add(CHANNELS);
    }
    let mut sums = [[0.0f32; CHANNELS]; PIXELS];
    for (sum, a) in sums.iter_mut().zip(&acc) {
        _mm256_storeu_ps(sum.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(sum.as_mut_ptr().add(8), a[1]);
    }
    for (sum, &(pixel, live)) in sums.iter().zip(&b.targets) {
        if live > 0 {
            for (c, &v) in sum.iter().enumerate().take(b.channels) {
                *b.out.add(c * b.plane + pixel) = v;
            }
        }
    }
}

/// AVX-512: 16 pixels × 1 vector of 16 channels = 16 accumulators + 1 weight vector; each
/// input value is broadcast inside its fused multiply-add (an embedded-broadcast operand).
#[cfg(target_arch = "x86_64")]
const AVX512_PIXELS: usize = 16;
/// Its blocks: 1 run of 16 pixels, 2 of 8, 4 of 4, 8 of 2.
#[cfg(target_arch = "x86_64")]
const AVX512_RUNS: &[usize] = &[16, 8, 4, 2];

#[cfg(target_arch = "x86_64")]
fn avx512_kernel(sw: usize, run: usize) -> Option<Kernel> {
    let block: BlockKernel = match (sw, run) {
        (1, 16) => block_avx512::<1, 16>,
        (1, 8) => block_avx512::<1, 8>,
        (1, 4) => block_avx512::<1, 4>,
        (1, 2) => block_avx512::<1, 2>,
        (2, 16) => block_avx512::<2, 16>,
        (2, 8) => block_avx512::<2, 8>,
        (2, 4) => block_avx512::<2, 4>,
        (2, 2) => block_avx512::<2, 2>,
        _ => return None,
    };
    // Against im2col + GEMM, per layer (forward, 320 images, 2-core Xeon, medians of 7, ms):
    // the demo's 7×7/2 stem 4.0 → 1.9, 16→16 on 8×8 1.0 → 0.53, 32→32 on 4×4 0.98 → 0.51;
    // ResNet-18's stem (3→64) 55 → 47, 64→64 on 16×16 29.7 → 26.8, 128→128 on 8×8 24.5 → 27.7
    // (lost).
    Some(Kernel { block, segments: AVX512_PIXELS / run, run, max_channels: 64 })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512<const STRIDE: usize, const RUN: usize>(b: &Block) {
    use std::arch::x86_64::*;
    let first = b.first; // in registers, not reloaded per tap
    let mut acc = [_mm512_loadu_ps(b.start.as_ptr()); AVX512_PIXELS];
    let mut w = b.weights.as_ptr();
    for &offset in b.taps {
        let wv = _mm512_loadu_ps(w);
        for r in 0..AVX512_PIXELS / RUN {
            let at = first[r].add(offset);
            for q in 0..RUN {
                let a = &mut acc[r * RUN + q];
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*at.add(q * STRIDE)), wv, *a);
            }
        }
        w = w.add(CHANNELS);
    }
    // acc[pixel][channel] → per channel, its 16 pixels; run r holds lanes r·RUN.., stored
    // with a mask of its live lanes (masked-off lanes are not touched).
    let by_channel = transpose_16x16(acc);
    for (c, v) in by_channel.iter().enumerate().take(b.channels) {
        for r in 0..AVX512_PIXELS / RUN {
            let (pixel, live) = b.targets[r];
            let mask = (((1u32 << live) - 1) << (r * RUN)) as __mmask16;
            let at = b.out.add(c * b.plane + pixel).wrapping_sub(r * RUN);
            _mm512_mask_storeu_ps(at, mask, *v);
        }
    }
}

/// Rows of a 16×16 f32 matrix → its columns (four rounds of in-lane and cross-lane shuffles).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_16x16(rows: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // Pairs of rows interleaved: t[2i] = (r2i, r2i+1) elements 0 1 | 4 5 | 8 9 | 12 13, t[2i+1] the rest.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (rows[i & !1], rows[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // Quads of rows: u[4q + j] holds element j, j + 4, j + 8, j + 12 of rows 4q..4q + 4.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (q, j) = (i / 4, i % 4);
        let (a, b) = (t[4 * q + j / 2], t[4 * q + 2 + j / 2]);
        if j % 2 == 0 {
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b)
        } else {
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b)
        }
    });
    // Halves: v[8h + m] holds elements m and m + 8 of rows 8h..8h + 4, then of rows
    // 8h + 4..8h + 8, as its four 128-bit lanes.
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (h, j) = (i / 8, i % 8);
        let (a, b) = (u[8 * h + j % 4], u[8 * h + 4 + j % 4]);
        if j < 4 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    // Column c: lanes 0 and 2 (c < 8) or 1 and 3 (c ≥ 8) of the two halves' vectors for c % 8.
    std::array::from_fn(|c| {
        let (a, b) = (v[c % 8], v[8 + c % 8]);
        if c < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::{forward_im2col, ConvGeometry, Unfold};
    use super::*;
    use crate::backend::cpu::matmul::GemmPrecision;

    /// Square images and kernels, the same stride and padding on both axes.
    fn geometry(n: usize, c: usize, hw: usize, o: usize, k: usize, s: usize, pad: usize) -> ConvGeometry {
        ConvGeometry::new(n, c, (hw, hw), o, (k, k), (s, s), (pad, pad))
    }

    /// Every kernel this CPU runs (each stride and block shape) computes the im2col
    /// schedule's convolution: f32 sums in another order, so equal to rounding.
    #[test]
    fn direct_matches_im2col() {
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        if !avx2 && !avx512 {
            eprintln!("skipped: this CPU has neither AVX2 + FMA nor AVX-512");
            return;
        }
        let cases = [
            geometry(3, 3, 32, 16, 7, 2, 3), // the demo's stem
            geometry(2, 16, 8, 16, 3, 1, 1), // its layer 1
            geometry(2, 16, 8, 32, 3, 2, 1), // downsampling to 4×4
            geometry(2, 5, 7, 20, 3, 1, 0),  // 5×5 maps (no run divides them), 20 channels (a part block)
            geometry(1, 4, 3, 8, 1, 2, 0),   // 1×1 kernel, stride 2, 2×2 output
            geometry(2, 2, 5, 3, 5, 1, 2),   // 3 channels, a kernel as wide as the image
            geometry(1, 3, 19, 16, 3, 1, 1), // 19-pixel rows: a full run of 16 and a short one
            geometry(1, 2, 1, 16, 3, 1, 1),  // a 1×1 map
        ];
        for g in cases {
            let x: Vec<f32> = (0..g.n * g.image()).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let w: Vec<f32> = (0..g.o * g.k()).map(|i| ((i * 53 % 89) as f32 - 44.0) / 31.0).collect();
            let bias: Vec<f32> = (0..g.o).map(|i| i as f32 * 0.25 - 1.0).collect();
            let mut kernels: Vec<(&str, usize, Kernel)> = Vec::new();
            if avx2 {
                kernels.push(("avx2", 1, AVX2_KERNEL));
            }
            if avx512 {
                kernels.extend(AVX512_RUNS.iter().map(|&run| ("avx512", run, avx512_kernel(g.sw, run).unwrap())));
            }
            for start in [None, Some(&bias[..])] {
                let want = forward_im2col(&x, &w, start, &g, 1, &Unfold::Rows, GemmPrecision::Exact);
                for &(isa, run, kernel) in &kernels {
                    let got = forward_with(kernel, &x, &w, start, &g);
                    assert_eq!(got.len(), want.len(), "{g:?}");
                    // Either order's rounding: K terms of size ≤ 3 · 1.5.
                    let tol = 4.5 * g.k() as f32 * f32::EPSILON * 4.0 + 1e-6;
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        let bias = start.is_some();
                        assert!((a - b).abs() <= tol, "{g:?} {isa} run {run}, bias {bias}: output {i}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn runs_waste_the_fewest_lanes() {
        assert_eq!(best_run(16, &[16, 8, 4, 2]), 16);
        assert_eq!(best_run(8, &[16, 8, 4, 2]), 8);
        assert_eq!(best_run(7, &[16, 8, 4, 2]), 8);
        assert_eq!(best_run(3, &[16, 8, 4, 2]), 4);
        assert_eq!(best_run(32, &[16, 8, 4, 2]), 16);
        assert_eq!(best_run(1, &[16, 8, 4, 2]), 2);
    }
}
