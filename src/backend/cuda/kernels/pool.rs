//! Pooling on NHWC activations (kernels/pool.cu): max pooling with its backward, and global
//! average pooling with its backward, in f32 and bf16 (f32 arithmetic inside).
//!
//! - Max pooling: `y[n][oh][ow][c] = max x[n][oh·stride − pad + i][ow·stride − pad + j][c]` over
//!   the kh × kw window, padding never winning (as `simclr::ops::pool::max_pool2d`; ResNet uses
//!   3×3, stride 2, pad 1). The forward saves, per output, the winning input pixel `ih·w + iw`
//!   (i32, the first maximum in window order on ties). The backward is a *gather*: each input
//!   element sums dy over the at most ⌈kh/stride⌉·⌈kw/stride⌉ windows that cover it and chose it —
//!   no atomics, a fixed summation order, and every dx element written.
//! - Global average pooling: `y[n][c] = mean_{h,w} x[n][h][w][c]`; backward
//!   `dx[n][h][w][c] = dy[n][c] / (h·w)`.
//!
//! One thread per output element, channels innermost, so each warp touches 32 consecutive
//! channels of a pixel (coalesced). The forward of the global pool loops over the pixels of its
//! (n, c): at ResNet's last stage these are 4×4 or 7×7, so the loop is short.

use super::{as_i32, check_len, kernel_name, KernelFloat};
use crate::backend::cuda::{DeviceBuffer, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::{Error, Result};

const OP_MAX: &str = "cuda max_pool2d";
const OP_MAX_BWD: &str = "cuda max_pool2d backward";
const OP_AVG: &str = "cuda global_avg_pool2d";
const OP_AVG_BWD: &str = "cuda global_avg_pool2d backward";
const BLOCK: u32 = 256;
/// Grid-stride kernels: enough blocks to fill an H100 several times over, no more.
const MAX_BLOCKS: usize = 132 * 32;

/// Max pooling of an NHWC input `n × h × w × c` with a `kh × kw` window, square stride and
/// padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPoolShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPoolShape {
    /// Output rows ⌊(h + 2·pad − kh)/stride⌋ + 1.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad).saturating_sub(self.kh) / self.stride.max(1) + 1
    }
    /// Output columns ⌊(w + 2·pad − kw)/stride⌋ + 1.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad).saturating_sub(self.kw) / self.stride.max(1) + 1
    }
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn output_len(&self) -> usize {
        self.n * self.oh() * self.ow() * self.c
    }

    /// The same rules as the CPU op: positive sizes, padding at most half the window (so every
    /// window holds a real pixel), a window that fits the padded input.
    fn validate(&self, op: &'static str) -> Result<[i32; 11]> {
        if [self.n, self.h, self.w, self.c].contains(&0) {
            return Err(Error::shape(op, format!("input must be non-empty, got {self:?}")));
        }
        if self.kh == 0 || self.kw == 0 || self.stride == 0 {
            return Err(Error::invalid(op, format!("window and stride must be >= 1, got {self:?}")));
        }
        if 2 * self.pad > self.kh || 2 * self.pad > self.kw {
            return Err(Error::invalid(
                op,
                format!("padding {} exceeds half the {}x{} window", self.pad, self.kh, self.kw),
            ));
        }
        if self.kh > self.h + 2 * self.pad || self.kw > self.w + 2 * self.pad {
            return Err(Error::shape(op, format!("the window is larger than the padded input: {self:?}")));
        }
        as_i32(op, "h·w", self.h * self.w)?;
        let i = |what, v| as_i32(op, what, v);
        Ok([
            i("n", self.n)?,
            i("h", self.h)?,
            i("w", self.w)?,
            i("c", self.c)?,
            i("oh", self.oh())?,
            i("ow", self.ow())?,
            i("kh", self.kh)?,
            i("kw", self.kw)?,
            i("stride", self.stride)?,
            i("pad", self.pad)?,
            0,
        ])
    }
}

fn grid_for(elements: usize) -> LaunchConfig {
    let blocks = elements.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS);
    LaunchConfig { grid: (blocks as u32, 1, 1), block: (BLOCK, 1, 1), shared_bytes: 0 }
}

/// Max pooling forward: writes `y` (`n × oh × ow × c`) and the winning input pixel of each
/// output into `argmax` (same length; `ih·w + iw` within the image).
pub fn max_pool2d_forward<T: KernelFloat>(
    gpu: &Gpu,
    shape: &MaxPoolShape,
    x: &DeviceBuffer<T>,
    y: &mut DeviceBuffer<T>,
    argmax: &mut DeviceBuffer<i32>,
) -> Result<()> {
    let g = shape.validate(OP_MAX)?;
    check_len(OP_MAX, "x", x, shape.input_len())?;
    check_len(OP_MAX, "y", y, shape.output_len())?;
    check_len(OP_MAX, "argmax", argmax, shape.output_len())?;
    let args = cuda_args![x, &mut *y, &mut *argmax, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9]];
    gpu.launch(&kernel_name::<T>("max_pool_fwd"), grid_for(shape.output_len()), &args)
}

/// Max pooling backward: `dx` (`n × h × w × c`, every element written) from `dy` and the
/// forward's `argmax`.
pub fn max_pool2d_backward<T: KernelFloat>(
    gpu: &Gpu,
    shape: &MaxPoolShape,
    dy: &DeviceBuffer<T>,
    argmax: &DeviceBuffer<i32>,
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    let g = shape.validate(OP_MAX_BWD)?;
    check_len(OP_MAX_BWD, "dy", dy, shape.output_len())?;
    check_len(OP_MAX_BWD, "argmax", argmax, shape.output_len())?;
    check_len(OP_MAX_BWD, "dx", dx, shape.input_len())?;
    let args = cuda_args![dy, argmax, &mut *dx, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9]];
    gpu.launch(&kernel_name::<T>("max_pool_bwd"), grid_for(shape.input_len()), &args)
}

fn avg_dims(op: &'static str, n: usize, hw: usize, c: usize) -> Result<(i32, i32, i32)> {
    if n == 0 || hw == 0 || c == 0 {
        return Err(Error::shape(op, format!("input must be non-empty, got n={n}, h·w={hw}, c={c}")));
    }
    Ok((as_i32(op, "n", n)?, as_i32(op, "h·w", hw)?, as_i32(op, "c", c)?))
}

/// Global average pooling: `y[n][c]` = mean over the `hw` pixels of NHWC `x` (`n × hw × c`).
pub fn global_avg_pool2d_forward<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    y: &mut DeviceBuffer<T>,
    n: usize,
    hw: usize,
    c: usize,
) -> Result<()> {
    let (ni, hwi, ci) = avg_dims(OP_AVG, n, hw, c)?;
    check_len(OP_AVG, "x", x, n * hw * c)?;
    check_len(OP_AVG, "y", y, n * c)?;
    gpu.launch(&kernel_name::<T>("global_avg_pool_fwd"), grid_for(n * c), &cuda_args![x, &mut *y, ni, hwi, ci])
}

/// Global average pooling backward: `dx[n][·][c] = dy[n][c] / hw`.
pub fn global_avg_pool2d_backward<T: KernelFloat>(
    gpu: &Gpu,
    dy: &DeviceBuffer<T>,
    dx: &mut DeviceBuffer<T>,
    n: usize,
    hw: usize,
    c: usize,
) -> Result<()> {
    let (ni, hwi, ci) = avg_dims(OP_AVG_BWD, n, hw, c)?;
    check_len(OP_AVG_BWD, "dy", dy, n * c)?;
    check_len(OP_AVG_BWD, "dx", dx, n * hw * c)?;
    gpu.launch(&kernel_name::<T>("global_avg_pool_bwd"), grid_for(n * hw * c), &cuda_args![dy, &mut *dx, ni, hwi, ci])
}
