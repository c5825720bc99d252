//! 2-D convolution on the CPU by im2col + GEMM.
//!
//! im2col unrolls every receptive field of one image into a column, so the
//! convolution becomes one matrix product `W[O, C·kh·kw] · cols[C·kh·kw, OH·OW]`
//! that the tuned GEMM does at near-peak speed. The cost is the cols buffer
//! (kh·kw times the input); it is built per image and thrown away, and
//! recomputed in backward rather than kept alive between passes.

use super::matmul::gemm_strided;
use super::SendConstPtr;
use crate::tensor::Float;
use rayon::prelude::*;

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
    /// Columns of the cols matrix: one per output pixel.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
}

/// cols[(c·kh + i)·kw + j, oy·OW + ox] = x[c, oy·sh + i − ph, ox·sw + j − pw] (0 outside).
fn im2col<T: Float>(x: &[T], g: &ConvGeometry, cols: &mut [T]) {
    let p = g.p();
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut cols[((c * g.kh + i) * g.kw + j) * p..][..p];
                for oy in 0..g.oh {
                    let iy = (oy * g.sh + i) as isize - g.ph as isize;
                    let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &x[(c * g.h + iy as usize) * g.w..][..g.w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * g.sw + j) as isize - g.pw as isize;
                        *d = if ix < 0 || ix >= g.w as isize { T::zero() } else { src[ix as usize] };
                    }
                }
            }
        }
    }
}

/// The adjoint of im2col: adds every column entry back to the input pixel it came from.
fn col2im<T: Float>(cols: &[T], g: &ConvGeometry, dx: &mut [T]) {
    let p = g.p();
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &cols[((c * g.kh + i) * g.kw + j) * p..][..p];
                for oy in 0..g.oh {
                    let iy = (oy * g.sh + i) as isize - g.ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut dx[(c * g.h + iy as usize) * g.w..][..g.w];
                    for (ox, &v) in row[oy * g.ow..(oy + 1) * g.ow].iter().enumerate() {
                        let ix = (ox * g.sw + j) as isize - g.pw as isize;
                        if ix >= 0 && ix < g.w as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Whether to spread images over threads (single-threaded GEMMs) or to give
/// each image's GEMM all threads.
fn per_image_parallel(n: usize) -> bool {
    n >= rayon::current_num_threads()
}

/// y[n] = W · im2col(x[n]) (+ bias). `x`: [N, C, H, W], `w`: [O, C·kh·kw], row-major.
pub fn conv2d_forward<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &ConvGeometry) -> Vec<T> {
    let (k, p) = (g.k(), g.p());
    let mut y = vec![T::zero(); g.n * g.o * p];
    let par = per_image_parallel(g.n);
    let threads = if par { 1 } else { rayon::current_num_threads() };
    let one_image = |(n, yn): (usize, &mut [T])| {
        let mut cols = vec![T::zero(); k * p];
        im2col(&x[n * g.c * g.h * g.w..][..g.c * g.h * g.w], g, &mut cols);
        // SAFETY: yn is [O, P], w is [O, K], cols is [K, P]; all row-major and in bounds.
        unsafe {
            gemm_strided(g.o, p, k, yn.as_mut_ptr(), p as isize, 1, w.as_ptr(), k as isize, 1, cols.as_ptr(), p as isize, 1, false, threads);
        }
        if let Some(b) = bias {
            for (o, plane) in yn.chunks_mut(p).enumerate() {
                plane.iter_mut().for_each(|v| *v += b[o]);
            }
        }
    };
    if par {
        y.par_chunks_mut(g.o * p).enumerate().for_each(one_image);
    } else {
        y.chunks_mut(g.o * p).enumerate().for_each(one_image);
    }
    y
}

/// dX[n] = col2im(Wᵀ · dY[n]).
pub fn conv2d_backward_input<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry) -> Vec<T> {
    let (k, p) = (g.k(), g.p());
    let image = g.c * g.h * g.w;
    let mut dx = vec![T::zero(); g.n * image];
    let par = per_image_parallel(g.n);
    let threads = if par { 1 } else { rayon::current_num_threads() };
    let one_image = |(n, dxn): (usize, &mut [T])| {
        let mut dcols = vec![T::zero(); k * p];
        // Wᵀ as a strided view of W: row stride 1, column stride K.
        unsafe {
            gemm_strided(k, p, g.o, dcols.as_mut_ptr(), p as isize, 1, w.as_ptr(), 1, k as isize, dy[n * g.o * p..].as_ptr(), p as isize, 1, false, threads);
        }
        col2im(&dcols, g, dxn);
    };
    if par {
        dx.par_chunks_mut(image).enumerate().for_each(one_image);
    } else {
        dx.chunks_mut(image).enumerate().for_each(one_image);
    }
    dx
}

/// dW = Σ_n dY[n] · im2col(x[n])ᵀ, as [O, C·kh·kw].
pub fn conv2d_backward_weight<T: Float>(x: &[T], dy: &[T], g: &ConvGeometry) -> Vec<T> {
    let (k, p) = (g.k(), g.p());
    let image = g.c * g.h * g.w;
    let (xp, dyp) = (SendConstPtr(x.as_ptr()), SendConstPtr(dy.as_ptr()));
    let accumulate_image = |acc: &mut Vec<T>, n: usize, threads: usize| {
        let (xp, dyp) = (xp, dyp);
        let mut cols = vec![T::zero(); k * p];
        // SAFETY: image n of x and of dy lie within the slices the pointers came from.
        let xn = unsafe { std::slice::from_raw_parts(xp.0.add(n * image), image) };
        im2col(xn, g, &mut cols);
        // colsᵀ as a strided view: row stride 1, column stride P.
        unsafe {
            gemm_strided(g.o, k, p, acc.as_mut_ptr(), k as isize, 1, dyp.0.add(n * g.o * p), p as isize, 1, cols.as_ptr(), 1, p as isize, true, threads);
        }
    };
    if per_image_parallel(g.n) {
        // One accumulator per rayon work item, summed at the end.
        (0..g.n)
            .into_par_iter()
            .fold(|| vec![T::zero(); g.o * k], |mut acc, n| {
                accumulate_image(&mut acc, n, 1);
                acc
            })
            .reduce(|| vec![T::zero(); g.o * k], |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += *y);
                a
            })
    } else {
        let mut acc = vec![T::zero(); g.o * k];
        let threads = rayon::current_num_threads();
        for n in 0..g.n {
            accumulate_image(&mut acc, n, threads);
        }
        acc
    }
}
