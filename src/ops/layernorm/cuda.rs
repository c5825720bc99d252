//! Layer norm on the GPU: the fused kernels of kernels/layernorm.cu (forward saves μ and
//! 1/σ per row; backward gives dx, dγ and dβ in one pass over the rows plus a column sum).
//!
//! The kernels keep γ, β, μ, r, dγ and dβ in f32 whatever the activations' type, so bf16
//! parameters are converted on the way in and their gradients on the way out.

use crate::backend::cuda::kernels::layernorm::{layer_norm_backward, layer_norm_forward};
use crate::error::Result;
use crate::kernel_dispatch;
use crate::ops::cuda_support::{cast, gpu_of, row_major, wrap};
use crate::tensor::{DType, Tensor};

const OP: &str = "layer_norm";

/// What the backward reads: x (row-major), γ in f32 (if any), μ and r per row.
pub(super) struct Saved {
    x: Tensor,
    gamma: Option<Tensor>,
    mean: Tensor,
    rstd: Tensor,
}

/// y = γ·(x − μ)·r + β over rows of `n` elements (the trailing `normalized_shape`).
pub(super) fn forward(
    x: &Tensor,
    n: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Saved)> {
    let (gpu, ordinal) = gpu_of(OP, x)?;
    let x = row_major(x)?;
    let rows = x.numel() / n;
    let f32_param = |p: Option<&Tensor>| p.map(|p| cast(OP, &row_major(p)?, DType::F32)).transpose();
    let (gamma, beta) = (f32_param(weight)?, f32_param(bias)?);
    let (mut mean, mut rstd) = (gpu.alloc::<f32>(rows)?, gpu.alloc::<f32>(rows)?);
    let y = kernel_dispatch!(OP, x.dtype(), T => {
        let mut y = gpu.alloc::<T>(x.numel())?;
        let g = gamma.as_ref().map(|g| g.cuda_slice::<f32>(OP)).transpose()?;
        let b = beta.as_ref().map(|b| b.cuda_slice::<f32>(OP)).transpose()?;
        let xs = x.cuda_slice::<T>(OP)?;
        layer_norm_forward(&gpu, &xs, g.as_deref(), b.as_deref(), &mut y, &mut mean, &mut rstd, rows, n, eps as f32)?;
        wrap(y, x.shape(), ordinal)?
    });
    let (mean, rstd) = (wrap(mean, &[rows], ordinal)?, wrap(rstd, &[rows], ordinal)?);
    Ok((y, Saved { x, gamma, mean, rstd }))
}

/// dx, and dγ/dβ (f32, length `n`) when asked for.
pub(super) fn backward(
    g: &Tensor,
    saved: &Saved,
    n: usize,
    want_gamma: bool,
    want_beta: bool,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let (gpu, ordinal) = gpu_of(OP, g)?;
    let g = row_major(g)?;
    let x = &saved.x;
    let rows = x.numel() / n;
    let mut dgamma = if want_gamma { Some(gpu.alloc::<f32>(n)?) } else { None };
    let mut dbeta = if want_beta { Some(gpu.alloc::<f32>(n)?) } else { None };
    let dx = kernel_dispatch!(OP, x.dtype(), T => {
        let mut dx = gpu.alloc::<T>(x.numel())?;
        let gamma = saved.gamma.as_ref().map(|t| t.cuda_slice::<f32>(OP)).transpose()?;
        let (mean, rstd) = (saved.mean.cuda_slice::<f32>(OP)?, saved.rstd.cuda_slice::<f32>(OP)?);
        layer_norm_backward(
            &gpu,
            &*x.cuda_slice::<T>(OP)?,
            &*g.cuda_slice::<T>(OP)?,
            gamma.as_deref(),
            &mean,
            &rstd,
            &mut dx,
            dgamma.as_mut(),
            dbeta.as_mut(),
            rows,
            n,
        )?;
        wrap(dx, x.shape(), ordinal)?
    });
    let param = |b: Option<crate::backend::cuda::DeviceBuffer<f32>>| -> Result<Option<Tensor>> {
        b.map(|b| cast(OP, &wrap(b, &[n], ordinal)?, x.dtype())).transpose()
    };
    Ok((dx, param(dgamma)?, param(dbeta)?))
}
