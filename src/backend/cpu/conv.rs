//! 2-D convolution on the CPU by im2col + GEMM.
//!
//! im2col unrolls every receptive field into a column, so the convolution
//! becomes one matrix product `W[O, K] · cols[K, G·P]` (K = C·kh·kw, P = OH·OW)
//! that the tuned GEMM runs near peak. Two schedules, picked by feature-map size:
//! - large maps (P ≥ `MIN_GEMM_COLS`): one image per GEMM, images spread over
//!   threads, each output written in place;
//! - small maps (deep layers: P = 4 at ResNet's last stage on 64×64 frames):
//!   G images side by side in one wide GEMM, since many skinny GEMMs waste the
//!   machine (down to P = 16 per image while the weights are small). G is capped so the cols buffer stays within `COLS_BUDGET`.
//! Backward recomputes cols instead of keeping them.

use super::matmul::gemm_strided;
use crate::tensor::Float;
use rayon::prelude::*;

/// Elements of im2col buffer per group (16 Mi f32 = 64 MiB).
const COLS_BUDGET: usize = 1 << 24;

/// Feature maps with fewer output pixels than this are grouped (measured in
/// benches/cpu_kernels.rs: per-image GEMMs win down to 8×8 maps).
const MIN_GEMM_COLS: usize = 64;

/// Every GEMM packs the weights again, so narrower per-image GEMMs pay off only
/// while the weights are small: the demo's 4×4 maps with 32 channels (weights
/// 32×288) train ×1.25 faster per image, full-width ResNet-18's 4×4 maps with
/// 256 channels (256×2304) do not (benches/train_step, this change's commit).
const MIN_GEMM_COLS_SMALL_WEIGHTS: usize = 16;
const SMALL_WEIGHTS: usize = 1 << 16;

/// Columns to aim for in a grouped GEMM.
const GROUPED_GEMM_COLS: usize = 256;

/// Shapes of one convolution: batch, channels, image, kernel, stride, padding, output.
#[derive(Clone, Copy, Debug)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeometry {
    /// Rows of the cols matrix: one per (input channel, kernel row, kernel column).
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output pixels per image (columns of one image's cols block).
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn image(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Images per GEMM (1 = the per-image schedule).
    fn group(&self) -> usize {
        let small_weights = self.o * self.k() <= SMALL_WEIGHTS;
        if self.p() >= MIN_GEMM_COLS || (self.p() >= MIN_GEMM_COLS_SMALL_WEIGHTS && small_weights) {
            return 1;
        }
        let wanted = GROUPED_GEMM_COLS.div_ceil(self.p().max(1));
        let affordable = COLS_BUDGET / (self.k() * self.p()).max(1);
        wanted.min(affordable).clamp(1, self.n.max(1))
    }
}

// ---- entry points: pick a schedule by feature-map size

/// y = conv(x, w) + bias. `x`: [N, C, H, W], `w`: [O, K], both row-major; returns [N, O, OH, OW].
pub fn conv2d_forward<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &ConvGeometry) -> Vec<T> {
    match g.group() {
        1 => forward_per_image(x, w, bias, g),
        step => forward_grouped(x, w, bias, g, step),
    }
}

/// dX[n] = col2im(Wᵀ · dY[n]).
pub fn conv2d_backward_input<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry) -> Vec<T> {
    match g.group() {
        1 => backward_input_per_image(dy, w, g),
        step => backward_input_grouped(dy, w, g, step),
    }
}

/// dW = Σ_n dY[n] · cols(x[n])ᵀ, as [O, K].
pub fn conv2d_backward_weight<T: Float>(x: &[T], dy: &[T], g: &ConvGeometry) -> Vec<T> {
    match g.group() {
        1 => backward_weight_per_image(x, dy, g),
        step => backward_weight_grouped(x, dy, g, step),
    }
}

// ---- schedule 1: one GEMM per image

/// Spread images over threads (single-threaded GEMMs) when there are enough of
/// them; otherwise give each image's GEMM every thread.
fn image_threads(n: usize) -> (bool, usize) {
    if n >= threads() {
        (true, 1)
    } else {
        (false, threads())
    }
}

fn forward_per_image<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &ConvGeometry) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let mut y = vec![T::zero(); g.n * o * p];
    let (parallel, gemm_threads) = image_threads(g.n);
    // One cols buffer per rayon job, reused image after image (im2col writes all of it).
    let one_image = |cols: &mut Vec<T>, (n, yn): (usize, &mut [T])| {
        im2col(&x[n * g.image()..][..g.image()], g, cols, p);
        // SAFETY: yn is [O, P], w is [O, K], cols is [K, P]; row-major, in bounds.
        unsafe {
            gemm_strided(
                o,
                p,
                k,
                yn.as_mut_ptr(),
                p as isize,
                1,
                w.as_ptr(),
                k as isize,
                1,
                cols.as_ptr(),
                p as isize,
                1,
                false,
                gemm_threads,
            );
        }
        if let Some(b) = bias {
            yn.chunks_mut(p).zip(b).for_each(|(plane, &bv)| plane.iter_mut().for_each(|v| *v += bv));
        }
    };
    let new_cols = || vec![T::zero(); k * p];
    if parallel {
        y.par_chunks_mut(o * p).enumerate().for_each_init(new_cols, one_image);
    } else {
        let mut cols = new_cols();
        y.chunks_mut(o * p).enumerate().for_each(|image| one_image(&mut cols, image));
    }
    y
}

fn backward_input_per_image<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let mut dx = vec![T::zero(); g.n * g.image()];
    let (parallel, gemm_threads) = image_threads(g.n);
    // One dcols buffer per rayon job, reused (the GEMM overwrites it).
    let one_image = |dcols: &mut Vec<T>, (n, dxn): (usize, &mut [T])| {
        unsafe {
            gemm_strided(
                k,
                p,
                o,
                dcols.as_mut_ptr(),
                p as isize,
                1,
                w.as_ptr(),
                1,
                k as isize,
                dy[n * o * p..].as_ptr(),
                p as isize,
                1,
                false,
                gemm_threads,
            );
        }
        col2im(dcols, p, g, dxn);
    };
    let new_dcols = || vec![T::zero(); k * p];
    if parallel {
        dx.par_chunks_mut(g.image()).enumerate().for_each_init(new_dcols, one_image);
    } else {
        let mut dcols = new_dcols();
        dx.chunks_mut(g.image()).enumerate().for_each(|image| one_image(&mut dcols, image));
    }
    dx
}

fn backward_weight_per_image<T: Float>(x: &[T], dy: &[T], g: &ConvGeometry) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let accumulate = |acc: &mut Vec<T>, cols: &mut Vec<T>, n: usize, gemm_threads: usize| {
        im2col(&x[n * g.image()..][..g.image()], g, cols, p);
        unsafe {
            gemm_strided(
                o,
                k,
                p,
                acc.as_mut_ptr(),
                k as isize,
                1,
                dy[n * o * p..].as_ptr(),
                p as isize,
                1,
                cols.as_ptr(),
                1,
                p as isize,
                true,
                gemm_threads,
            );
        }
    };
    let (parallel, gemm_threads) = image_threads(g.n);
    if parallel {
        // A fixed split of the images into one contiguous chunk per thread, each
        // summed in order, then the chunks added in order: the floating-point
        // sum is the same on every run (work stealing must not change results).
        let chunk = g.n.div_ceil(threads());
        let partial: Vec<Vec<T>> = (0..g.n.div_ceil(chunk))
            .into_par_iter()
            .map(|c| {
                let (mut acc, mut cols) = (vec![T::zero(); o * k], vec![T::zero(); k * p]);
                (c * chunk..((c + 1) * chunk).min(g.n)).for_each(|n| accumulate(&mut acc, &mut cols, n, 1));
                acc
            })
            .collect();
        let mut total = vec![T::zero(); o * k];
        for part in &partial {
            total.iter_mut().zip(part).for_each(|(t, v)| *t += *v);
        }
        total
    } else {
        let (mut acc, mut cols) = (vec![T::zero(); o * k], vec![T::zero(); k * p]);
        (0..g.n).for_each(|n| accumulate(&mut acc, &mut cols, n, gemm_threads));
        acc
    }
}

// ---- schedule 2: groups of images in one wide GEMM

/// cols for images `first..first + count`, side by side: [K, count·P].
fn group_cols<T: Float>(x: &[T], g: &ConvGeometry, first: usize, count: usize) -> Vec<T> {
    let (k, p, ld) = (g.k(), g.p(), count * g.p());
    let mut cols = vec![T::zero(); k * ld];
    // Each image owns a column block; build them in parallel through a raw pointer.
    let ptr = super::SendPtr(cols.as_mut_ptr());
    (0..count).into_par_iter().for_each(|b| {
        let ptr = ptr;
        // SAFETY: image b writes only columns b·P..(b+1)·P of each row, disjoint across b;
        // the slice handed to im2col starts at its block and im2col stays within ld-strided rows.
        let block = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(b * p), k * ld - b * p) };
        im2col(&x[(first + b) * g.image()..][..g.image()], g, block, ld);
    });
    cols
}

/// dY for a group laid out as the GEMMs want it: [O, count·P].
fn group_dy<T: Float>(dy: &[T], g: &ConvGeometry, first: usize, count: usize) -> Vec<T> {
    let (o, p) = (g.o, g.p());
    let mut out = vec![T::zero(); o * count * p];
    out.par_chunks_mut(count * p).enumerate().for_each(|(oc, row)| {
        for b in 0..count {
            row[b * p..(b + 1) * p].copy_from_slice(&dy[((first + b) * o + oc) * p..][..p]);
        }
    });
    out
}

fn forward_grouped<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &ConvGeometry, step: usize) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let mut y = vec![T::zero(); g.n * o * p];
    for first in (0..g.n).step_by(step) {
        let count = step.min(g.n - first);
        let cols = group_cols(x, g, first, count);
        let mut yg = vec![T::zero(); o * count * p]; // [O, count·P]
                                                     // SAFETY: yg is [O, count·P], w is [O, K], cols is [K, count·P]; row-major, in bounds.
        unsafe {
            gemm_strided(
                o,
                count * p,
                k,
                yg.as_mut_ptr(),
                (count * p) as isize,
                1,
                w.as_ptr(),
                k as isize,
                1,
                cols.as_ptr(),
                (count * p) as isize,
                1,
                false,
                threads(),
            );
        }
        // [O, count, P] → [count, O, P], adding the bias on the way.
        y[first * o * p..(first + count) * o * p].par_chunks_mut(o * p).enumerate().for_each(|(b, yn)| {
            for oc in 0..o {
                let add = bias.map_or(T::zero(), |bs| bs[oc]);
                let src = &yg[(oc * count + b) * p..][..p];
                yn[oc * p..(oc + 1) * p].iter_mut().zip(src).for_each(|(d, &s)| *d = s + add);
            }
        });
    }
    y
}

fn backward_input_grouped<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry, step: usize) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let mut dx = vec![T::zero(); g.n * g.image()];
    for first in (0..g.n).step_by(step) {
        let count = step.min(g.n - first);
        let dyg = group_dy(dy, g, first, count);
        let ld = count * p;
        let mut dcols = vec![T::zero(); k * ld];
        // Wᵀ as a strided view of W: row stride 1, column stride K.
        unsafe {
            gemm_strided(
                k,
                ld,
                o,
                dcols.as_mut_ptr(),
                ld as isize,
                1,
                w.as_ptr(),
                1,
                k as isize,
                dyg.as_ptr(),
                ld as isize,
                1,
                false,
                threads(),
            );
        }
        dx[first * g.image()..(first + count) * g.image()].par_chunks_mut(g.image()).enumerate().for_each(
            |(b, dxn)| {
                col2im(&dcols[b * p..], ld, g, dxn);
            },
        );
    }
    dx
}

fn backward_weight_grouped<T: Float>(x: &[T], dy: &[T], g: &ConvGeometry, step: usize) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let mut dw = vec![T::zero(); o * k];
    for first in (0..g.n).step_by(step) {
        let count = step.min(g.n - first);
        let cols = group_cols(x, g, first, count);
        let dyg = group_dy(dy, g, first, count);
        let ld = count * p;
        // colsᵀ as a strided view: row stride 1, column stride ld. Accumulates over groups.
        unsafe {
            gemm_strided(
                o,
                k,
                ld,
                dw.as_mut_ptr(),
                k as isize,
                1,
                dyg.as_ptr(),
                ld as isize,
                1,
                cols.as_ptr(),
                1,
                ld as isize,
                true,
                threads(),
            );
        }
    }
    dw
}

// ---- im2col and its adjoint

/// The output columns `ox` whose input column `ox·sw + j − pw` lies inside `0..w`, for kernel
/// column `j`: the others read padding. Computed once per kernel column, so the inner loops
/// below copy without a bounds test per element.
fn valid_columns(g: &ConvGeometry, j: usize) -> std::ops::Range<usize> {
    // ox·sw + j − pw ≥ 0  ⇔  ox ≥ ⌈(pw − j) / sw⌉;   ox·sw + j − pw < w  ⇔  ox < ⌈(w + pw − j) / sw⌉.
    let lo = g.pw.saturating_sub(j).div_ceil(g.sw).min(g.ow);
    let hi = (g.w + g.pw).saturating_sub(j).div_ceil(g.sw).clamp(lo, g.ow);
    lo..hi
}

/// Writes image `x`'s columns into `cols` (row stride `ld`, this image's block starting at column 0):
/// cols[(c·kh + i)·kw + j, oy·OW + ox] = x[c, oy·sh + i − ph, ox·sw + j − pw] (0 outside).
fn im2col<T: Float>(x: &[T], g: &ConvGeometry, cols: &mut [T], ld: usize) {
    if g.sh == 1 && g.sw == 1 && g.ow == g.w {
        return im2col_shifted(x, g, cols, ld);
    }
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let valid = valid_columns(g, j);
                // Input column of the first valid output column (ix = ox·sw + j − pw).
                let first_ix = (valid.start * g.sw + j).saturating_sub(g.pw);
                let row = (c * g.kh + i) * g.kw + j;
                for oy in 0..g.oh {
                    let iy = (oy * g.sh + i) as isize - g.ph as isize;
                    let dst = &mut cols[row * ld + oy * g.ow..][..g.ow];
                    if iy < 0 || iy >= g.h as isize || valid.is_empty() {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &x[(c * g.h + iy as usize) * g.w..][..g.w];
                    dst[..valid.start].fill(T::zero());
                    dst[valid.end..].fill(T::zero());
                    let inside = &mut dst[valid.clone()];
                    if g.sw == 1 {
                        inside.copy_from_slice(&src[first_ix..][..inside.len()]);
                    } else {
                        inside.iter_mut().zip(src[first_ix..].iter().step_by(g.sw)).for_each(|(d, &v)| *d = v);
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride 1 with outputs as wide as the input (ResNet's 3×3 convolutions with
/// padding 1, except the strided ones): output pixel k of a cols row reads input pixel
/// k + (i − ph)·w + (j − pw) of its channel, so the row is the plane shifted by that much: one
/// block copy over the rows that stay inside the image, then zeros where a shifted row ran
/// over the left or right edge (those entries read padding, not the neighbouring row).
fn im2col_shifted<T: Float>(x: &[T], g: &ConvGeometry, cols: &mut [T], ld: usize) {
    let (w, plane, p) = (g.w, g.h * g.w, g.p());
    for c in 0..g.c {
        let src = &x[c * plane..][..plane];
        for i in 0..g.kh {
            // Output rows whose input row oy + i − ph lies inside the image.
            let (row_lo, row_hi) = (g.ph.saturating_sub(i).min(g.oh), (g.h + g.ph).saturating_sub(i).min(g.oh));
            let row_hi = row_hi.max(row_lo);
            for j in 0..g.kw {
                let dst = &mut cols[((c * g.kh + i) * g.kw + j) * ld..][..p];
                let shift = (i * w + j) as isize - (g.ph * w + g.pw) as isize;
                let (lo, hi) = (row_lo * w, row_hi * w);
                dst[..lo].fill(T::zero());
                dst[hi..].fill(T::zero());
                // Entries whose source falls before or after the plane are edge columns: zeroed below.
                let from = (lo as isize + shift).max(0) as usize;
                let to = ((hi as isize + shift).min(plane as isize)).max(from as isize) as usize;
                if to > from {
                    let start = (from as isize - shift) as usize;
                    dst[start..start + (to - from)].copy_from_slice(&src[from..to]);
                }
                let valid = valid_columns(g, j);
                for oy in row_lo..row_hi {
                    dst[oy * w..oy * w + valid.start].fill(T::zero());
                    dst[oy * w + valid.end..(oy + 1) * w].fill(T::zero());
                }
            }
        }
    }
}

/// The adjoint of im2col: adds every column entry back to the input pixel it came from.
/// (Same loop order as before the fast path: every dx element sums its terms in the same order.)
fn col2im<T: Float>(cols: &[T], ld: usize, g: &ConvGeometry, dx: &mut [T]) {
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let valid = valid_columns(g, j);
                if valid.is_empty() {
                    continue;
                }
                let first_ix = (valid.start * g.sw + j).saturating_sub(g.pw);
                let row = (c * g.kh + i) * g.kw + j;
                for oy in 0..g.oh {
                    let iy = (oy * g.sh + i) as isize - g.ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut dx[(c * g.h + iy as usize) * g.w..][..g.w];
                    let src = &cols[row * ld + oy * g.ow..][valid.clone()];
                    dst[first_ix..].iter_mut().step_by(g.sw).zip(src).for_each(|(d, &v)| *d += v);
                }
            }
        }
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups are an implementation detail: one image per GEMM, two, or all
    /// at once must give the same numbers.
    #[test]
    fn grouping_does_not_change_results() {
        let g = ConvGeometry { n: 5, c: 2, h: 6, w: 5, o: 3, kh: 3, kw: 2, sh: 2, sw: 1, ph: 1, pw: 1, oh: 3, ow: 6 };
        let mut rng = crate::rng::Rng::new(3);
        let mut rand = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
        let (x, w, dy) = (rand(g.n * g.image()), rand(g.o * g.k()), rand(g.n * g.o * g.p()));
        let bias = rand(g.o);
        let reference = (
            forward_grouped(&x, &w, Some(&bias), &g, 5),
            backward_input_grouped(&dy, &w, &g, 5),
            backward_weight_grouped(&x, &dy, &g, 5),
        );
        let candidates = [
            (
                "per image",
                (
                    forward_per_image(&x, &w, Some(&bias), &g),
                    backward_input_per_image(&dy, &w, &g),
                    backward_weight_per_image(&x, &dy, &g),
                ),
            ),
            (
                "groups of 1",
                (
                    forward_grouped(&x, &w, Some(&bias), &g, 1),
                    backward_input_grouped(&dy, &w, &g, 1),
                    backward_weight_grouped(&x, &dy, &g, 1),
                ),
            ),
            (
                "groups of 2",
                (
                    forward_grouped(&x, &w, Some(&bias), &g, 2),
                    backward_input_grouped(&dy, &w, &g, 2),
                    backward_weight_grouped(&x, &dy, &g, 2),
                ),
            ),
        ];
        for (name, got) in &candidates {
            for (a, b) in [(&got.0, &reference.0), (&got.1, &reference.1), (&got.2, &reference.2)] {
                assert!(a.iter().zip(b.iter()).all(|(p, q)| (p - q).abs() < 1e-12), "{name}");
            }
        }
    }
}
