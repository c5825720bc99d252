//! Batch normalisation over [N, C, H, W] (per channel), training and eval.
//!
//! Training normalises with the batch's statistics over (N, H, W):
//!   x̂ = (x − μ_B)·r,  r = 1/√(σ²_B + eps),  y = γ·x̂ + β
//! and, since μ_B and σ²_B depend on every x, the gradient has three terms
//! (M = N·H·W, ĝ = g·γ):
//!   dx = r/M · (M·ĝ − Σĝ − x̂·Σ(ĝ·x̂)),   dγ = Σ g·x̂,   dβ = Σ g.
//! It also moves the running statistics towards the batch's (PyTorch's rule:
//! running ← (1 − momentum)·running + momentum·batch, with the unbiased batch
//! variance). Eval mode normalises with the running statistics, which are
//! constants, so backward is a per-channel affine map.
//!
//! On the CPU the formulas run fused, two passes over the activations forward and two
//! backward (`batchnorm/cpu_fused.rs`); `batch_norm_2d_composed` below is the same op written
//! as tensor ops, the readable definition the fused path is tested against. On a GPU
//! (`batchnorm/cuda.rs`) the same formulas run as kernels, forward and backward each in two
//! launches; running statistics must then be on the GPU as well.

mod cpu_fused;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use super::{placement, Placement};
use crate::autograd::{no_grad, record};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{DType, Tensor};

/// Running mean and variance of one batch-norm layer (buffers, not parameters).
pub struct RunningStats {
    pub mean: Tensor,
    pub var: Tensor,
    pub momentum: f64,
}

impl RunningStats {
    /// Mean 0, variance 1, momentum 0.1 (PyTorch's defaults).
    pub fn new(channels: usize, dtype: DType) -> Result<RunningStats> {
        Ok(RunningStats {
            mean: Tensor::zeros(&[channels], dtype)?,
            var: Tensor::ones(&[channels], dtype)?,
            momentum: 0.1,
        })
    }

    /// running ← (1 − momentum)·running + momentum·batch, for the batch's
    /// per-channel mean and unbiased variance (both [C]).
    pub(crate) fn update(&mut self, batch_mean: &Tensor, batch_unbiased_var: &Tensor) -> Result<()> {
        let mo = self.momentum;
        self.mean = self.mean.mul_scalar(1.0 - mo)?.add(&batch_mean.mul_scalar(mo)?)?;
        self.var = self.var.mul_scalar(1.0 - mo)?.add(&batch_unbiased_var.mul_scalar(mo)?)?;
        Ok(())
    }
}

/// Checks `x: [N, C, H, W]`, the [C] parameters and running statistics (shape
/// and dtype) and eps; returns (N, C, H, W). Shared with the synchronised
/// batch norm of `dist`.
pub(crate) fn check_inputs(
    op: &'static str,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    stats: &RunningStats,
    eps: f64,
) -> Result<(usize, usize, usize, usize)> {
    if x.rank() != 4 {
        return Err(Error::shape(op, format!("input must be [N, C, H, W], got {:?}", x.shape())));
    }
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    for t in [weight, bias].into_iter().flatten().chain([&stats.mean, &stats.var]) {
        if t.shape() != [c] {
            return Err(Error::shape(op, format!("weight, bias and running stats must be [{c}], got {:?}", t.shape())));
        }
        if t.dtype() != x.dtype() {
            return Err(Error::dtype(op, format!("input is {}, parameter is {}", x.dtype(), t.dtype())));
        }
    }
    if !(eps > 0.0) {
        return Err(Error::invalid(op, format!("eps must be > 0, got {eps}")));
    }
    Ok((n, c, h, w))
}

/// [`check_inputs`] and, in training, the batch's own statistics need more than one value per
/// channel (synchronised batch norm counts over every rank instead).
fn check_batch_inputs(
    op: &'static str,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    stats: &RunningStats,
    training: bool,
    eps: f64,
) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = check_inputs(op, x, weight, bias, stats, eps)?;
    if training && n * h * w < 2 {
        return Err(Error::shape(op, format!("training needs more than one value per channel, got {:?}", x.shape())));
    }
    Ok((n, c, h, w))
}

/// What a batch-norm op records as its inputs: x, then γ and β where given (backward returns
/// their gradients in this order). Shared with the synchronised batch norm of `dist`.
pub(crate) fn recorded_inputs<'a>(
    x: &'a Tensor,
    weight: Option<&'a Tensor>,
    bias: Option<&'a Tensor>,
) -> Vec<&'a Tensor> {
    [Some(x), weight, bias].into_iter().flatten().collect()
}

/// y = γ·x̂ + β (either optional), per channel of `xhat: [N, C, H, W]`.
pub(crate) fn affine(xhat: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, c: usize) -> Result<Tensor> {
    let mut y = xhat.clone();
    if let Some(wt) = weight {
        y = y.mul(&wt.detach().reshape(&[1, c, 1, 1])?)?;
    }
    if let Some(b) = bias {
        y = y.add(&b.detach().reshape(&[1, c, 1, 1])?)?;
    }
    Ok(y)
}

/// Appends dγ = Σ g·x̂ and dβ = Σ g (over N, H, W) for the affine inputs that
/// exist, `needs[1..]` saying which are wanted.
pub(crate) fn push_affine_grads(
    grads: &mut Vec<Option<Tensor>>,
    g: &Tensor,
    xhat: &Tensor,
    has_weight: bool,
    needs: &[bool],
) -> Result<()> {
    let mut next = 1;
    if has_weight {
        grads.push(if needs[next] { Some(g.mul(xhat)?.sum(&[0, 2, 3], false)?) } else { None });
        next += 1;
    }
    if needs.len() > next {
        grads.push(if needs[next] { Some(g.sum(&[0, 2, 3], false)?) } else { None });
    }
    Ok(())
}

/// Batch norm for `x: [N, C, H, W]` with optional affine `weight` (γ) and `bias` (β), both [C].
pub fn batch_norm_2d(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    stats: &mut RunningStats,
    training: bool,
    eps: f64,
) -> Result<Tensor> {
    const OP: &str = "batch_norm_2d";
    check_batch_inputs(OP, x, weight, bias, stats, training, eps)?;
    let inputs = recorded_inputs(x, weight, bias);
    let mut all = inputs.clone();
    all.extend([&stats.mean, &stats.var]);
    match placement(OP, &all)? {
        Placement::Cpu => {
            let (out, saved) =
                float_dispatch!(OP, x.dtype(), T => cpu_fused::forward::<T>(x, weight, bias, stats, training, eps)?);
            let dtype = x.dtype();
            Ok(record(
                OP,
                &inputs,
                out,
                move |g, needs| float_dispatch!(OP, dtype, T => cpu_fused::backward::<T>(g, &saved, needs)),
            ))
        }
        #[cfg(feature = "cuda")]
        Placement::Cuda => {
            let (out, saved) = cuda::forward(x, weight, bias, stats, training, eps)?;
            Ok(record(OP, &inputs, out, move |g, needs| cuda::backward(g, &saved, needs)))
        }
    }
}

/// [`batch_norm_2d`] on the CPU written as tensor ops: the definition, step by step, that the
/// fused CPU path computes in fewer passes (tests compare the two). Same arguments and checks.
pub fn batch_norm_2d_composed(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    stats: &mut RunningStats,
    training: bool,
    eps: f64,
) -> Result<Tensor> {
    const OP: &str = "batch_norm_2d";
    let (n, c, h, w) = check_batch_inputs(OP, x, weight, bias, stats, training, eps)?;
    let m = n * h * w;
    let inputs = recorded_inputs(x, weight, bias);
    let per_channel = |t: &Tensor| t.reshape(&[1, c, 1, 1]);
    let xd = x.detach();
    let (out, xhat, rstd) = no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
        let (mean, var) = if training {
            let mean = xd.mean(&[0, 2, 3], true)?;
            let var = xd.var(&[0, 2, 3], 0, true)?;
            // Running statistics follow the batch (unbiased variance, as PyTorch).
            let unbiased = var.reshape(&[c])?.mul_scalar(m as f64 / (m - 1) as f64)?;
            stats.update(&mean.reshape(&[c])?, &unbiased)?;
            (mean, var)
        } else {
            (per_channel(&stats.mean)?, per_channel(&stats.var)?)
        };
        let rstd = var.add_scalar(eps)?.pow(-0.5)?;
        let xhat = xd.sub(&mean)?.mul(&rstd)?;
        Ok((affine(&xhat, weight, bias, c)?, xhat, rstd))
    })?;
    let gamma = weight.map(|t| t.detach());
    let has_weight = weight.is_some();
    Ok(record(OP, &inputs, out, move |g, needs| {
        let mut grads = Vec::with_capacity(needs.len());
        let gh = match &gamma {
            Some(gm) => g.mul(&gm.reshape(&[1, c, 1, 1])?)?,
            None => g.clone(),
        };
        grads.push(if !needs[0] {
            None
        } else if training {
            let sum_gh = gh.sum(&[0, 2, 3], true)?;
            let sum_ghx = gh.mul(&xhat)?.sum(&[0, 2, 3], true)?;
            let inner = gh.mul_scalar(m as f64)?.sub(&sum_gh)?.sub(&xhat.mul(&sum_ghx)?)?;
            Some(inner.mul(&rstd)?.mul_scalar(1.0 / m as f64)?)
        } else {
            Some(gh.mul(&rstd)?)
        });
        push_affine_grads(&mut grads, g, &xhat, has_weight, needs)?;
        Ok(grads)
    }))
}
