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

use crate::autograd::{no_grad, record};
use crate::error::{Error, Result};
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
    if x.rank() != 4 {
        return Err(Error::shape(OP, format!("input must be [N, C, H, W], got {:?}", x.shape())));
    }
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    for t in [weight, bias].into_iter().flatten().chain([&stats.mean, &stats.var]) {
        if t.shape() != [c] {
            return Err(Error::shape(OP, format!("weight, bias and running stats must be [{c}], got {:?}", t.shape())));
        }
        if t.dtype() != x.dtype() {
            return Err(Error::dtype(OP, format!("input is {}, parameter is {}", x.dtype(), t.dtype())));
        }
    }
    if !(eps > 0.0) {
        return Err(Error::invalid(OP, format!("eps must be > 0, got {eps}")));
    }
    let m = n * h * w;
    if training && m < 2 {
        return Err(Error::shape(OP, format!("training needs more than one value per channel, got {:?}", x.shape())));
    }
    let per_channel = |t: &Tensor| t.reshape(&[1, c, 1, 1]);
    let xd = x.detach();
    let (out, xhat, rstd) = no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
        let (mean, var) = if training {
            let mean = xd.mean(&[0, 2, 3], true)?;
            let var = xd.var(&[0, 2, 3], 0, true)?;
            // Running statistics follow the batch (unbiased variance, as PyTorch).
            let mo = stats.momentum;
            let unbiased = var.reshape(&[c])?.mul_scalar(m as f64 / (m - 1) as f64)?;
            stats.mean = stats.mean.mul_scalar(1.0 - mo)?.add(&mean.reshape(&[c])?.mul_scalar(mo)?)?;
            stats.var = stats.var.mul_scalar(1.0 - mo)?.add(&unbiased.mul_scalar(mo)?)?;
            (mean, var)
        } else {
            (per_channel(&stats.mean)?, per_channel(&stats.var)?)
        };
        let rstd = var.add_scalar(eps)?.pow(-0.5)?;
        let xhat = xd.sub(&mean)?.mul(&rstd)?;
        let mut y = xhat.clone();
        if let Some(wt) = weight {
            y = y.mul(&per_channel(&wt.detach())?)?;
        }
        if let Some(b) = bias {
            y = y.add(&per_channel(&b.detach())?)?;
        }
        Ok((y, xhat, rstd))
    })?;
    let gamma = weight.map(|t| t.detach());
    let has_weight = weight.is_some();
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
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
        let mut next = 1;
        if has_weight {
            grads.push(if needs[next] { Some(g.mul(&xhat)?.sum(&[0, 2, 3], false)?) } else { None });
            next += 1;
        }
        if needs.len() > next {
            grads.push(if needs[next] { Some(g.sum(&[0, 2, 3], false)?) } else { None });
        }
        Ok(grads)
    }))
}
