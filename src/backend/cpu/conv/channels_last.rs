//! Convolution's backward passes by im2col over a channels-last copy of each image.
//!
//! In NCHW one receptive field is C·kh scattered runs of kw pixels, so building the
//! unfolded matrix is a gather of single elements (or runs of 3), and col2im the matching
//! scatter. Copied first into a zero-bordered [H + 2ph, W + 2pw, C] image, kernel row i of
//! output pixel (oy, ox) is ONE contiguous run of kw·C values,
//! `padded[((oy·sh + i)·Wp + ox·sw)·C ..][.. kw·C]`, whatever the stride. So the unfold
//! here is one row per output pixel, K values in (i, j, c) order, built from kh block copies:
//!   colsᵀ[p, (i, j, c)] = x[c, oy·sh + i − ph, ox·sw + j − pw]     ([P, K], K = kh·kw·C)
//! and, with the weight reordered to W'[O, (i, j, c)] (a small copy per call):
//!   dcolsᵀ = dYᵀ[n] · W'          ([P, K]; folded back by kh block adds per pixel)
//!   dW'   += dY[n] · colsᵀ[n]     ([O, K]; reordered to [O, C, kh, kw] at the end)
//! Both GEMMs read their operands along rows. The layout changes cost one pass over each
//! image; they are cheaper than the gathers and scatters they replace in backward (see
//! `conv.rs` for the measurements and where this path is taken). The forward pass keeps
//! `conv.rs`'s im2col: there, transposing each image in cost more than it saved.
//! Jobs of G images share one GEMM as in `conv.rs`.

use super::{for_each_job, group_dy, job_threads, sum_over_groups, ConvGeometry};
use crate::backend::cpu::matmul::{gemm_strided, GemmPrecision};
use crate::tensor::Float;

/// The padded channels-last image: its width (pixels) and size (elements).
struct Padded {
    w: usize,
    len: usize,
}

fn padded(g: &ConvGeometry) -> Padded {
    let w = g.w + 2 * g.pw;
    Padded { w, len: (g.h + 2 * g.ph) * w * g.c }
}

/// Image `x` ([C, H, W]) into the interior of `out` ([Hp, Wp, C]); the border is left as is
/// (zero: the buffers start zeroed and only interiors are ever written).
fn to_channels_last<T: Float>(x: &[T], g: &ConvGeometry, pd: &Padded, out: &mut [T]) {
    for (c, plane) in x.chunks_exact(g.h * g.w).enumerate() {
        for (y, row) in plane.chunks_exact(g.w).enumerate() {
            let first = ((y + g.ph) * pd.w + g.pw) * g.c + c;
            out[first..].iter_mut().step_by(g.c).zip(row).for_each(|(d, &v)| *d = v);
        }
    }
}

/// The interior of `padded` ([Hp, Wp, C]) back into `dx` ([C, H, W]).
fn from_channels_last<T: Float>(padded: &[T], g: &ConvGeometry, pd: &Padded, dx: &mut [T]) {
    for (c, plane) in dx.chunks_exact_mut(g.h * g.w).enumerate() {
        for (y, row) in plane.chunks_exact_mut(g.w).enumerate() {
            let first = ((y + g.ph) * pd.w + g.pw) * g.c + c;
            row.iter_mut().zip(padded[first..].iter().step_by(g.c)).for_each(|(d, &v)| *d = v);
        }
    }
}

/// The first element of kernel row 0 of output pixel `p`'s receptive field in the padded image.
fn field_start(g: &ConvGeometry, pd: &Padded, p: usize) -> usize {
    ((p / g.ow) * g.sh * pd.w + (p % g.ow) * g.sw) * g.c
}

/// colsᵀ rows for one image: `cols_t[p, (i, j, c)]`, rows at stride K.
fn unfold<T: Float>(padded: &[T], g: &ConvGeometry, pd: &Padded, cols_t: &mut [T]) {
    let run = g.kw * g.c;
    for (p, row) in cols_t[..g.p() * g.k()].chunks_exact_mut(g.k()).enumerate() {
        let start = field_start(g, pd, p);
        for (i, dst) in row.chunks_exact_mut(run).enumerate() {
            dst.copy_from_slice(&padded[start + i * pd.w * g.c..][..run]);
        }
    }
}

/// The adjoint of [`unfold`]: adds each row's runs back into `padded` (rows in pixel order,
/// so every padded element sums its terms in the same order on every run).
fn fold<T: Float>(cols_t: &[T], g: &ConvGeometry, pd: &Padded, padded: &mut [T]) {
    let run = g.kw * g.c;
    for (p, row) in cols_t[..g.p() * g.k()].chunks_exact(g.k()).enumerate() {
        let start = field_start(g, pd, p);
        for (i, src) in row.chunks_exact(run).enumerate() {
            let dst = &mut padded[start + i * pd.w * g.c..][..run];
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
        }
    }
}

/// Each row of `w` ([O, rows·cols]) holds a [rows, cols] matrix; returns them transposed.
/// W [O, (C, kh·kw)] → W' [O, (kh·kw, C)] with (C, taps), and back with (taps, C).
fn transpose_rows<T: Float>(w: &[T], (rows, cols): (usize, usize)) -> Vec<T> {
    let mut out = vec![T::zero(); w.len()];
    for (src, dst) in w.chunks_exact(rows * cols).zip(out.chunks_exact_mut(rows * cols)) {
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    }
    out
}

/// Per-worker buffers: the padded image, colsᵀ of a job, and dY of a job (either layout).
fn buffers<T: Float>(g: &ConvGeometry, step: usize) -> impl Fn() -> (Vec<T>, Vec<T>, Vec<T>) + Sync + Send {
    let (len, k, p, o) = (padded(g).len, g.k(), g.p(), g.o);
    move || (vec![T::zero(); len], vec![T::zero(); step * p * k], vec![T::zero(); step * p * o])
}

/// dX = fold(dYᵀ · W'), as `conv2d_backward_input`.
pub(super) fn backward_input<T: Float>(
    dy: &[T],
    w: &[T],
    g: &ConvGeometry,
    step: usize,
    precision: GemmPrecision,
) -> Vec<T> {
    let (k, p, o, pd) = (g.k(), g.p(), g.o, padded(g));
    let wt = transpose_rows(w, (g.c, g.kh * g.kw));
    let mut dx = vec![T::zero(); g.n * g.image()];
    let (parallel, gemm_threads) = job_threads(g.n.div_ceil(step));
    for_each_job(&mut dx, step * g.image(), parallel, buffers(g, step), |(image, dcols_t, dyt), (j, dxg)| {
        let count = dxg.len() / g.image();
        // dYᵀ [count·P, O]: each image's [O, P] transposed.
        for b in 0..count {
            let dy_image = &dy[(j * step + b) * o * p..][..o * p];
            for (oc, plane) in dy_image.chunks_exact(p).enumerate() {
                dyt[b * p * o + oc..].iter_mut().step_by(o).zip(plane).for_each(|(d, &v)| *d = v);
            }
        }
        // SAFETY: dcols_t holds count·P·K, dyt count·P·O, wt O·K elements; in bounds.
        unsafe {
            gemm_strided(
                count * p,
                k,
                o,
                dcols_t.as_mut_ptr(),
                k as isize,
                1,
                dyt.as_ptr(),
                o as isize,
                1,
                wt.as_ptr(),
                k as isize,
                1,
                false,
                gemm_threads,
                precision,
            );
        }
        for (b, dxn) in dxg.chunks_exact_mut(g.image()).enumerate() {
            image.fill(T::zero());
            fold(&dcols_t[b * p * k..], g, &pd, image);
            from_channels_last(image, g, &pd, dxn);
        }
    });
    dx
}

/// dW = Σ_n dY[n] · colsᵀ[n], as `conv2d_backward_weight`.
pub(super) fn backward_weight<T: Float>(
    x: &[T],
    dy: &[T],
    g: &ConvGeometry,
    step: usize,
    precision: GemmPrecision,
) -> Vec<T> {
    let (k, p, o, pd) = (g.k(), g.p(), g.o, padded(g));
    let groups = g.n.div_ceil(step);
    // dW' += dY_group [O, count·P] · colsᵀ [count·P, K] for group j.
    let accumulate = |acc: &mut [T], (image, cols_t, dyg): &mut (Vec<T>, Vec<T>, Vec<T>), j: usize, gemm_threads| {
        let (first, count) = (j * step, step.min(g.n - j * step));
        for b in 0..count {
            to_channels_last(&x[(first + b) * g.image()..][..g.image()], g, &pd, image);
            unfold(image, g, &pd, &mut cols_t[b * p * k..]);
        }
        let dy_group = if count == 1 {
            &dy[first * o * p..][..o * p]
        } else {
            group_dy(dy, g, first, count, dyg);
            &dyg[..o * count * p]
        };
        // SAFETY: acc is [O, K], dy_group [O, count·P], cols_t [count·P, K]; in bounds.
        unsafe {
            gemm_strided(
                o,
                k,
                count * p,
                acc.as_mut_ptr(),
                k as isize,
                1,
                dy_group.as_ptr(),
                (count * p) as isize,
                1,
                cols_t.as_ptr(),
                k as isize,
                1,
                true,
                gemm_threads,
                precision,
            );
        }
    };
    let dw_channels_last = sum_over_groups(groups, o * k, buffers(g, step), accumulate);
    transpose_rows(&dw_channels_last, (g.kh * g.kw, g.c))
}
