//! Max pooling forward on the CPU: each output the maximum of its window, and the
//! index (within the plane) of the pixel that won, for the backward pass.
//!
//! The definition, [`max_pool_plain`]: padding counts as −∞ (never wins); ties and NaN:
//! the first real pixel of the window in row-major order is the starting maximum, and a
//! later one replaces it only when strictly greater.
//!
//! [`max_pool_f32`] computes exactly that, but tap by tap (with AVX2; f64 and older CPUs
//! take the plain loop): each plane is copied into a −∞-bordered plane, every output
//! starts from its window's first real pixel, then for each kernel tap (i, j) one
//! branch-free compare-and-select over 8 outputs at once keeps the larger value and its
//! tap. The plain loop's compare-and-branch per pixel mispredicts on real activations,
//! which are in no order (ResNet-18's 3×3/2 pool ran ~2 ns per compare).
//! Padding never wins a strict comparison and re-reading the starting pixel does not
//! replace it, so both give the same values and the same winners (tested).

use super::elementwise::PAR_MIN;
use crate::tensor::Float;
use rayon::prelude::*;
use std::ops::Range;

/// Outputs computed side by side (one AVX2 vector of f32).
const LANES: usize = 8;

/// Sizes of one pooling: planes (N·C), input and output size, kernel, stride, padding.
#[derive(Clone, Copy, Debug)]
pub struct PoolGeometry {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
}

/// The input pixels `[lo, hi)` along one axis that output position `o`'s window covers
/// (a window hanging over the padding is cut to the real pixels).
fn window(o: usize, stride: usize, pad: usize, kernel: usize, size: usize) -> Range<usize> {
    let start = (o * stride) as isize - pad as isize;
    start.max(0) as usize..(start + kernel as isize).min(size as isize) as usize
}

/// The definition, one window at a time. Returns (maxima, winners' indices within their plane).
pub fn max_pool_plain<T: Float>(x: &[T], g: &PoolGeometry) -> (Vec<T>, Vec<usize>) {
    let (p, plane) = (g.oh * g.ow, g.h * g.w);
    let mut y = vec![T::zero(); g.planes * p];
    let mut arg = vec![0usize; g.planes * p];
    // Padding ≤ kernel/2 (checked by the op) leaves each window a real pixel.
    let rows: Vec<_> = (0..g.oh).map(|oy| window(oy, g.sh, g.ph, g.kh, g.h)).collect();
    let cols: Vec<_> = (0..g.ow).map(|ox| window(ox, g.sw, g.pw, g.kw, g.w)).collect();
    y.par_chunks_mut(p).zip(arg.par_chunks_mut(p)).enumerate().for_each(|(pl, (yp, ap))| {
        let xp = &x[pl * plane..][..plane];
        for (oy, ry) in rows.iter().enumerate() {
            for (ox, rx) in cols.iter().enumerate() {
                let mut best_i = ry.start * g.w + rx.start;
                let mut best = xp[best_i];
                for iy in ry.clone() {
                    for ix in rx.clone() {
                        if xp[iy * g.w + ix] > best {
                            best = xp[iy * g.w + ix];
                            best_i = iy * g.w + ix;
                        }
                    }
                }
                yp[oy * g.ow + ox] = best;
                ap[oy * g.ow + ox] = best_i;
            }
        }
    });
    (y, arg)
}

/// [`max_pool_plain`] for f32: tap by tap with AVX2 where the CPU has it, else the plain loop.
pub fn max_pool_f32(x: &[f32], g: &PoolGeometry) -> (Vec<f32>, Vec<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return tap_by_tap(x, g);
        }
    }
    max_pool_plain(x, g)
}

/// [`max_pool_plain`]'s result, tap by tap over a −∞-bordered copy of each plane.
#[cfg(target_arch = "x86_64")]
fn tap_by_tap(x: &[f32], g: &PoolGeometry) -> (Vec<f32>, Vec<usize>) {
    let (p, plane) = (g.oh * g.ow, g.h * g.w);
    // The bordered plane, stored as `sw` column phases: phase q holds its columns q, q + sw,
    // q + 2·sw, … side by side, so tap (i, j) of outputs ox = 0, 1, … reads consecutive
    // elements of phase j % sw, starting at column j / sw of row oy·sh + i.
    let (padded_h, padded_w) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let phase_w = padded_w.div_ceil(g.sw);
    let phase_len = padded_h * phase_w;
    // Per phase q: its first column holding an image pixel, and that pixel's image column.
    let phase_columns: Vec<(usize, usize)> = (0..g.sw)
        .map(|q| {
            let first = g.pw.saturating_sub(q).div_ceil(g.sw);
            (first, first * g.sw + q - g.pw)
        })
        .collect();
    // Each output's first real pixel, as a tap of its window (the window cut to the image).
    let first_tap = |o: usize, stride: usize, pad: usize| pad.saturating_sub(o * stride);
    let first_row: Vec<usize> = (0..g.oh).map(|oy| first_tap(oy, g.sh, g.ph) * g.kw).collect();
    let first_col: Vec<usize> = (0..g.ow).map(|ox| first_tap(ox, g.sw, g.pw)).collect();
    // Where tap t = i·kw + j starts reading in the phases (for output (0, 0)), and its
    // pixel's offset from the window's corner in the unpadded plane.
    let taps = g.kh * g.kw;
    let tap_start: Vec<usize> =
        (0..taps).map(|t| (t % g.kw % g.sw) * phase_len + (t / g.kw) * phase_w + t % g.kw / g.sw).collect();
    let tap_pixel: Vec<isize> = (0..taps).map(|t| ((t / g.kw) * g.w + t % g.kw) as isize).collect();
    let mut y = vec![0.0f32; g.planes * p];
    let mut arg = vec![0usize; g.planes * p];
    let planes_per_task = (PAR_MIN / p.max(1)).max(1);
    // LANES of slack: the last group of lanes may read past the final row.
    let scratch = || vec![f32::NEG_INFINITY; g.sw * phase_len + LANES];
    y.par_chunks_mut(p).zip(arg.par_chunks_mut(p)).enumerate().with_min_len(planes_per_task).for_each_init(
        scratch,
        |phases, (pl, (yp, ap))| {
            for (row, src) in x[pl * plane..][..plane].chunks_exact(g.w).enumerate() {
                for (q, &(first, start)) in phase_columns.iter().enumerate() {
                    let dst = &mut phases[q * phase_len + (row + g.ph) * phase_w + first..];
                    // (A stride wider than the image leaves some phases without a pixel: skip, not slice.)
                    dst.iter_mut().zip(src.iter().skip(start).step_by(g.sw)).for_each(|(d, &v)| *d = v);
                }
            }
            for oy in 0..g.oh {
                let row = oy * g.sh * phase_w;
                let corner = (oy * g.sh) as isize - g.ph as isize;
                for first_ox in (0..g.ow).step_by(LANES) {
                    // Lanes past ow compute garbage that is never stored.
                    let lanes = LANES.min(g.ow - first_ox);
                    let mut best = [f32::NEG_INFINITY; LANES];
                    let mut best_tap = [0u32; LANES];
                    for l in 0..lanes {
                        best_tap[l] = (first_row[oy] + first_col[first_ox + l]) as u32;
                        best[l] = phases[tap_start[best_tap[l] as usize] + row + first_ox + l];
                    }
                    let lines = tap_start.iter().map(|&start| &phases[start + row + first_ox..][..LANES]);
                    // SAFETY: the CPU has AVX2 (checked by the caller); each line holds LANES values.
                    unsafe { keep_winners_avx2(lines, &mut best, &mut best_tap) };
                    // Back to the unpadded plane: a winner is never in the padding.
                    for l in 0..lanes {
                        let ox = first_ox + l;
                        let at = corner * g.w as isize + (ox * g.sw) as isize - g.pw as isize
                            + tap_pixel[best_tap[l] as usize];
                        yp[oy * g.ow + ox] = best[l];
                        ap[oy * g.ow + ox] = at as usize;
                    }
                }
            }
        },
    );
    (y, arg)
}

/// For each tap t in order, with `lines` yielding that tap's LANES pixels: lanes where the
/// pixel is strictly greater than `best` (an ordered compare: NaN never wins) take it, and t.
/// Selects, not branches: which pixel wins is data, not a pattern a predictor could learn.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn keep_winners_avx2<'a>(
    lines: impl Iterator<Item = &'a [f32]>,
    best: &mut [f32; LANES],
    best_tap: &mut [u32; LANES],
) {
    use std::arch::x86_64::*;
    let mut b = _mm256_loadu_ps(best.as_ptr());
    let mut bt = _mm256_castsi256_ps(_mm256_loadu_si256(best_tap.as_ptr() as *const __m256i));
    for (t, line) in lines.enumerate() {
        assert!(line.len() >= LANES);
        let v = _mm256_loadu_ps(line.as_ptr());
        let wins = _mm256_cmp_ps::<_CMP_GT_OQ>(v, b);
        b = _mm256_blendv_ps(b, v, wins);
        bt = _mm256_blendv_ps(bt, _mm256_castsi256_ps(_mm256_set1_epi32(t as i32)), wins);
    }
    _mm256_storeu_ps(best.as_mut_ptr(), b);
    _mm256_storeu_si256(best_tap.as_mut_ptr() as *mut __m256i, _mm256_castps_si256(bt));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same maxima, same winners, over ties, NaN, ±∞ and windows cut by the padding.
    #[test]
    fn tap_by_tap_matches_the_definition() {
        let geometry = |planes, (h, w), (kh, kw), (sh, sw), (ph, pw)| {
            let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
            PoolGeometry { planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw }
        };
        let cases = [
            geometry(6, (16, 16), (3, 3), (2, 2), (1, 1)), // ResNet's stem pool
            geometry(3, (7, 9), (3, 3), (2, 2), (1, 1)),   // odd sizes: the last window cut
            geometry(3, (5, 6), (2, 3), (1, 2), (1, 1)),
            geometry(2, (4, 4), (2, 2), (2, 2), (0, 0)),
            geometry(2, (1, 1), (3, 3), (1, 1), (1, 1)), // every window mostly padding
            geometry(2, (2, 1), (1, 1), (3, 3), (0, 0)), // stride wider than the image
        ];
        let mut rng = crate::rng::Rng::new(5);
        for g in &cases {
            let n = g.planes * g.h * g.w;
            // Few distinct values (many ties), some NaN and infinities.
            let x: Vec<f32> = (0..n)
                .map(|_| match (rng.uniform() * 20.0) as u32 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::INFINITY,
                    k => (k % 5) as f32 - 2.0,
                })
                .collect();
            let (want, want_arg) = max_pool_plain(&x, g);
            let (got, got_arg) = max_pool_f32(&x, g);
            assert_eq!(got_arg, want_arg, "{g:?}");
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{g:?}");
            // Negative values only: padding must not win where every real pixel is below zero.
            let neg: Vec<f32> = (0..n).map(|_| -1.0 - rng.uniform() as f32).collect();
            assert_eq!(max_pool_f32(&neg, g), max_pool_plain(&neg, g), "{g:?}");
        }
    }
}
