//! softmax and log_softmax over the last axis on the GPU (kernels/softmax.cu). Other axes are
//! moved last by the op (a transposed view, made row-major here) and moved back.

use crate::backend::cuda::kernels::softmax as k;
use crate::error::Result;
use crate::kernel_dispatch;
use crate::ops::cuda_support::{gpu_of, row_major, wrap};
use crate::tensor::Tensor;

/// Which of the two functions.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Softmax,
    LogSoftmax,
}

/// The forward over the rows of the last axis of `x`.
pub(super) fn forward(op: &'static str, kind: Kind, x: &Tensor) -> Result<Tensor> {
    let (gpu, ordinal) = gpu_of(op, x)?;
    let x = row_major(x)?;
    let cols = x.shape().last().copied().unwrap_or(1);
    let rows = x.numel().checked_div(cols).unwrap_or(0);
    kernel_dispatch!(op, x.dtype(), T => {
        let mut y = gpu.alloc::<T>(x.numel())?;
        let xs = x.cuda_slice::<T>(op)?;
        match kind {
            Kind::Softmax => k::softmax_forward(&gpu, &xs, rows, cols, &mut y)?,
            Kind::LogSoftmax => k::log_softmax_forward(&gpu, &xs, rows, cols, &mut y)?,
        }
        wrap(y, x.shape(), ordinal)
    })
}

/// dx from the upstream `g` and the forward's output `y` (both with the softmax axis last).
pub(super) fn backward(op: &'static str, kind: Kind, g: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (gpu, ordinal) = gpu_of(op, g)?;
    let (g, y) = (row_major(g)?, row_major(y)?);
    let cols = g.shape().last().copied().unwrap_or(1);
    let rows = g.numel().checked_div(cols).unwrap_or(0);
    kernel_dispatch!(op, g.dtype(), T => {
        let mut dx = gpu.alloc::<T>(g.numel())?;
        let (gs, ys) = (g.cuda_slice::<T>(op)?, y.cuda_slice::<T>(op)?);
        match kind {
            Kind::Softmax => k::softmax_backward(&gpu, &gs, &ys, rows, cols, &mut dx)?,
            Kind::LogSoftmax => k::log_softmax_backward(&gpu, &gs, &ys, rows, cols, &mut dx)?,
        }
        wrap(dx, g.shape(), ordinal)
    })
}
