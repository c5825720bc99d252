//! Convolution of tiny feature maps (ResNet's last stages: 4×4, 2×2, 1×1 outputs) as
//! one GEMM per (output pixel, kernel tap), with the whole batch as the GEMM's wide side.
//!
//! For output pixel (oy, ox) and tap (i, j) the input pixel (oy·sh + i − ph, ox·sw + j − pw)
//! is the same in every image, so over the batch that tap's contribution is
//!   Y[:, :, oy, ox] += W[:, :, i, j] · X[:, :, iy, ix]        ([O × C] · [C × N])
//! — a GEMM on strided views of the tensors as they are: no im2col, no transposes.
//! Taps that land in the padding are skipped, so a 3×3 convolution of a 1×1 map costs
//! one GEMM of a 1×1 convolution, not nine taps of which eight multiply zeros.
//! Backward runs the same pairs: dX[:, :, iy, ix] += W_tapᵀ · dY_pix and
//! dW_tap += dY_pix · X_pixᵀ. The pairs run one after another (each GEMM threaded),
//! so accumulation into shared pixels needs no locks and sums in a fixed order.

use super::{threads, ConvGeometry};
use crate::backend::cpu::matmul::{gemm_strided, GemmPrecision};
use crate::tensor::Float;

/// The live (output pixel, input pixel, tap) triples: every tap whose input pixel is
/// real, as offsets within one output plane, one input plane and one kernel.
fn live_pairs(g: &ConvGeometry) -> Vec<(usize, usize, usize)> {
    let mut pairs = Vec::new();
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for i in 0..g.kh {
                let iy = (oy * g.sh + i) as isize - g.ph as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                for j in 0..g.kw {
                    let ix = (ox * g.sw + j) as isize - g.pw as isize;
                    if ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    pairs.push((oy * g.ow + ox, iy as usize * g.w + ix as usize, i * g.kw + j));
                }
            }
        }
    }
    pairs
}

/// Strides of the three tensors, named for what they step over.
struct Strides {
    /// Weight [O, C, kh, kw]: per output channel (K), per input channel (taps).
    w_o: isize,
    w_c: isize,
    /// Input [N, C, H, W]: per image, per channel.
    x_n: isize,
    x_c: isize,
    /// Output [N, O, OH, OW]: per image, per channel.
    y_n: isize,
    y_o: isize,
}

fn strides(g: &ConvGeometry) -> Strides {
    let (hw, p) = (g.h * g.w, g.p());
    Strides {
        w_o: g.k() as isize,
        w_c: (g.kh * g.kw) as isize,
        x_n: (g.c * hw) as isize,
        x_c: hw as isize,
        y_n: (g.o * p) as isize,
        y_o: p as isize,
    }
}

/// y = conv(x, w) + bias, as in `conv2d_forward`.
pub(super) fn forward<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &ConvGeometry) -> Vec<T> {
    let (p, s) = (g.p(), strides(g));
    let mut y = vec![T::zero(); g.n * g.o * p];
    if let Some(b) = bias {
        y.chunks_mut(p).enumerate().for_each(|(plane, out)| out.fill(b[plane % g.o]));
    }
    for (pix, src, tap) in live_pairs(g) {
        // SAFETY: every offset stays inside its tensor: pix < P, src < H·W, tap < kh·kw, and
        // the strides walk [N, O, P], [N, C, H·W] and [O, C, taps] within their lengths.
        unsafe {
            gemm_strided(
                g.o,
                g.n,
                g.c,
                y.as_mut_ptr().add(pix),
                s.y_o,
                s.y_n,
                w.as_ptr().add(tap),
                s.w_o,
                s.w_c,
                x.as_ptr().add(src),
                s.x_c,
                s.x_n,
                true,
                threads(),
                GemmPrecision::Exact,
            );
        }
    }
    y
}

/// dX, as in `conv2d_backward_input`.
pub(super) fn backward_input<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry) -> Vec<T> {
    let s = strides(g);
    let mut dx = vec![T::zero(); g.n * g.image()];
    for (pix, src, tap) in live_pairs(g) {
        // SAFETY: as in `forward`; dX[:, :, src] is [C × N] with strides (x_c, x_n).
        unsafe {
            gemm_strided(
                g.c,
                g.n,
                g.o,
                dx.as_mut_ptr().add(src),
                s.x_c,
                s.x_n,
                w.as_ptr().add(tap),
                s.w_c,
                s.w_o,
                dy.as_ptr().add(pix),
                s.y_o,
                s.y_n,
                true,
                threads(),
                GemmPrecision::Exact,
            );
        }
    }
    dx
}

/// dW as [O, K], as in `conv2d_backward_weight`.
pub(super) fn backward_weight<T: Float>(x: &[T], dy: &[T], g: &ConvGeometry) -> Vec<T> {
    let s = strides(g);
    let mut dw = vec![T::zero(); g.o * g.k()];
    for (pix, src, tap) in live_pairs(g) {
        // SAFETY: as in `forward`; dW[:, :, tap] is [O × C] with strides (w_o, w_c).
        unsafe {
            gemm_strided(
                g.o,
                g.c,
                g.n,
                dw.as_mut_ptr().add(tap),
                s.w_o,
                s.w_c,
                dy.as_ptr().add(pix),
                s.y_o,
                s.y_n,
                x.as_ptr().add(src),
                s.x_n,
                s.x_c,
                true,
                threads(),
                GemmPrecision::Exact,
            );
        }
    }
    dw
}
