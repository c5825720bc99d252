//! Pooling: max_pool2d, adaptive (and global) average pooling, and the
//! temporal mean that turns per-frame features into one clip feature.
//!
//! Max pooling's gradient goes only to the element that won each window
//! (its index is saved in forward; the CPU kernel is `backend/cpu/max_pool.rs`); average pooling spreads each output's
//! gradient evenly over its window.
//!
//! On a GPU (`pool/cuda.rs`) max pooling and the global (1×1) average pooling run as
//! kernels that keep the input's layout (channels-last or row-major NCHW).

#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use super::{placement, Placement};
use crate::autograd::record;
use crate::backend::cpu::max_pool::{max_pool_f32, max_pool_plain, PoolGeometry};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{DType, Element, Float, StorageElement, Tensor};
#[allow(unused_imports)]
use num_traits::{Float as _, One, Zero};
use rayon::prelude::*;

fn check_nchw(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    if x.rank() != 4 {
        return Err(Error::shape(op, format!("input must be [N, C, H, W], got {:?}", x.shape())));
    }
    Ok((x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]))
}

/// Max pooling over `kernel` windows every `stride` pixels, input padded by `padding`.
pub fn max_pool2d(
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor> {
    const OP: &str = "max_pool2d";
    let (n, c, h, w) = check_nchw(OP, x)?;
    // With an empty plane every window would be all padding: no maximum to route a gradient to.
    if h == 0 || w == 0 {
        return Err(Error::shape(OP, format!("input planes must be non-empty, got {:?}", x.shape())));
    }
    if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
        return Err(Error::invalid(OP, format!("kernel {kernel:?} and stride {stride:?} must be >= 1")));
    }
    if padding.0 * 2 > kernel.0 || padding.1 * 2 > kernel.1 {
        return Err(Error::invalid(OP, format!("padding {padding:?} must be at most half the kernel {kernel:?}")));
    }
    if kernel.0 > h + 2 * padding.0 || kernel.1 > w + 2 * padding.1 {
        return Err(Error::shape(OP, format!("kernel {kernel:?} larger than the padded input {h}x{w} + {padding:?}")));
    }
    let oh = (h + 2 * padding.0 - kernel.0) / stride.0 + 1;
    let ow = (w + 2 * padding.1 - kernel.1) / stride.1 + 1;
    match placement(OP, &[x])? {
        Placement::Cpu => {}
        #[cfg(feature = "cuda")]
        Placement::Cuda => {
            let (out, saved) = cuda::max_pool2d(x, kernel, stride, padding)?;
            return Ok(record(OP, &[x], out, move |g, _| Ok(vec![Some(cuda::max_pool2d_grad(g, &saved)?)])));
        }
    }
    let planes = n * c;
    let (kh, kw, sh, sw, ph, pw) = (kernel.0, kernel.1, stride.0, stride.1, padding.0, padding.1);
    let geometry = PoolGeometry { planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw };
    let (out, arg) = if x.dtype() == DType::F32 {
        let (y, arg) = max_pool_f32(&x.host_data::<f32>()?, &geometry);
        (Tensor::from_vec(y, &[n, c, oh, ow])?, arg)
    } else {
        float_dispatch!(OP, x.dtype(), T => {
            let (y, arg) = max_pool_plain::<T>(&x.host_data::<T>()?, &geometry);
            (Tensor::from_vec(y, &[n, c, oh, ow])?, arg)
        })
    };
    let in_shape = x.shape().to_vec();
    Ok(record(OP, &[x], out, move |g, _| {
        let gi = float_dispatch!(OP, g.dtype(), T => {
            let gd = g.host_data::<T>()?;
            let mut dx = vec![T::zero(); planes * h * w];
            dx.par_chunks_mut(h * w).enumerate().for_each(|(pl, dp)| {
                for k in 0..oh * ow {
                    dp[arg[pl * oh * ow + k]] += gd[pl * oh * ow + k];
                }
            });
            Tensor::from_vec(dx, &in_shape)?
        });
        Ok(vec![Some(gi)])
    }))
}

/// PyTorch's adaptive bins: output i covers [floor(i·in/out), ceil((i+1)·in/out)).
fn bins(input: usize, output: usize) -> Vec<(usize, usize)> {
    (0..output).map(|i| (i * input / output, ((i + 1) * input).div_ceil(output))).collect()
}

fn adaptive_avg<T: Float + StorageElement>(
    x: &[T],
    planes: usize,
    (h, w): (usize, usize),
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
) -> Vec<T> {
    let (oh, ow) = (rows.len(), cols.len());
    let mut y = vec![T::zero(); planes * oh * ow];
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(pl, yp)| {
        let xp = &x[pl * h * w..(pl + 1) * h * w];
        for (oy, &(y0, y1)) in rows.iter().enumerate() {
            for (ox, &(x0, x1)) in cols.iter().enumerate() {
                let mut s = 0.0;
                for iy in y0..y1 {
                    s += xp[iy * w + x0..iy * w + x1].iter().map(|v| v.as_f64()).sum::<f64>();
                }
                yp[oy * ow + ox] = T::of_f64(s / ((y1 - y0) * (x1 - x0)) as f64);
            }
        }
    });
    y
}

/// Average pooling to a fixed output size, whatever the input size.
pub fn adaptive_avg_pool2d(x: &Tensor, out_hw: (usize, usize)) -> Result<Tensor> {
    const OP: &str = "adaptive_avg_pool2d";
    let (n, c, h, w) = check_nchw(OP, x)?;
    let (oh, ow) = out_hw;
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Err(Error::shape(OP, format!("cannot pool {h}x{w} to {oh}x{ow}")));
    }
    match placement(OP, &[x])? {
        Placement::Cpu => {}
        #[cfg(feature = "cuda")]
        Placement::Cuda => {
            if out_hw != (1, 1) {
                return Err(Error::Device {
                    op: OP,
                    msg: format!(
                        "on CUDA only the global 1x1 output is implemented, got {oh}x{ow}; run it on the CPU \
                         (to_device(Device::Cpu))"
                    ),
                });
            }
            let (out, saved) = cuda::global_avg_pool2d(x)?;
            return Ok(record(OP, &[x], out, move |g, _| Ok(vec![Some(cuda::global_avg_pool2d_grad(g, &saved)?)])));
        }
    }
    let (rows, cols) = (bins(h, oh), bins(w, ow));
    let planes = n * c;
    let out = float_dispatch!(OP, x.dtype(), T => {
        let xd = x.host_data::<T>()?;
        Tensor::from_vec(adaptive_avg::<T>(&xd, planes, (h, w), &rows, &cols), &[n, c, oh, ow])?
    });
    let in_shape = x.shape().to_vec();
    Ok(record(OP, &[x], out, move |g, _| {
        let gi = float_dispatch!(OP, g.dtype(), T => {
            let gd = g.host_data::<T>()?;
            let mut dx = vec![T::zero(); planes * h * w];
            dx.par_chunks_mut(h * w).enumerate().for_each(|(pl, dp)| {
                for (oy, &(y0, y1)) in rows.iter().enumerate() {
                    for (ox, &(x0, x1)) in cols.iter().enumerate() {
                        let share = gd[(pl * oh + oy) * ow + ox] / T::of_f64(((y1 - y0) * (x1 - x0)) as f64);
                        for iy in y0..y1 {
                            dp[iy * w + x0..iy * w + x1].iter_mut().for_each(|v| *v += share);
                        }
                    }
                }
            });
            Tensor::from_vec(dx, &in_shape)?
        });
        Ok(vec![Some(gi)])
    }))
}

/// Mean over all pixels: [N, C, H, W] → [N, C] (composite).
pub fn global_avg_pool2d(x: &Tensor) -> Result<Tensor> {
    let (n, c, _, _) = check_nchw("global_avg_pool2d", x)?;
    adaptive_avg_pool2d(x, (1, 1))?.reshape(&[n, c])
}

/// Mean over the frame axis: per-frame features [B, T, ...] → clip features [B, ...] (composite).
pub fn temporal_mean(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 || x.shape()[1] == 0 {
        return Err(Error::shape(
            "temporal_mean",
            format!("input must be [B, T, ...] with T >= 1, got {:?}", x.shape()),
        ));
    }
    x.mean(&[1], false)
}
