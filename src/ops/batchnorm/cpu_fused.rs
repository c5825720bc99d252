//! Batch norm on the CPU in two passes over the activations forward and two backward.
//!
//! The definition in `batchnorm.rs` (`batch_norm_2d_composed`, kept as the readable reference
//! and checked against this file in tests/conv_pool_bn.rs) is a chain of tensor ops: about
//! eight passes over `[N, C, H, W]` forward and twelve backward, each with a fresh buffer.
//! Here, per channel (M = N·H·W values, in f64):
//! - forward, training: μ and σ² (two-pass), then `y = γ·(x − μ)·r + β` in one pass
//!   (r = 1/√(σ² + eps)); eval: the running statistics instead;
//! - backward: Σg and Σg·x̂ in one pass (x̂ recomputed from the saved input, not stored),
//!   then `dx = γ·r/M·(M·g − Σg − x̂·Σg·x̂)` (training) or `γ·r·g` (eval) in one pass;
//!   dγ = Σg·x̂ and dβ = Σg come from the first pass.
//!
//! Channels are spread over threads for the sums; the elementwise passes go plane by plane
//! (one `[H, W]` plane of one image and channel), which every thread can write on its own.

use super::RunningStats;
use crate::backend::cpu::elementwise::PAR_MIN;
use crate::error::Result;
use crate::tensor::{Float, StorageElement, Tensor};
use rayon::prelude::*;

/// What backward needs: the input, each channel's mean and r, and the affine weight.
pub(crate) struct Saved {
    x: Tensor,
    mean: Vec<f64>,
    rstd: Vec<f64>,
    gamma: Option<Vec<f64>>,
    has_bias: bool,
    training: bool,
    /// N, C, H·W.
    dims: (usize, usize, usize),
}

/// Σ f(k) over the element indices k of channel `ch`'s planes, in f64.
fn channel_sum((n, c, hw): (usize, usize, usize), ch: usize, f: impl Fn(usize) -> f64) -> f64 {
    (0..n).map(|i| ((i * c + ch) * hw..(i * c + ch + 1) * hw).map(&f).sum::<f64>()).sum()
}

/// Runs `f(plane index, plane)` over the `[H·W]` planes of `out`, in parallel when large.
fn for_each_plane<T: Float>(out: &mut [T], hw: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if hw == 0 {
        return; // empty maps: nothing to write
    }
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(hw).with_min_len(PAR_MIN.div_ceil(hw)).enumerate().for_each(|(p, plane)| f(p, plane));
    } else {
        out.chunks_mut(hw).enumerate().for_each(|(p, plane)| f(p, plane));
    }
}

/// Per channel, in parallel when large.
fn per_channel<R: Send>(c: usize, work: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if work >= PAR_MIN {
        (0..c).into_par_iter().map(f).collect()
    } else {
        (0..c).map(f).collect()
    }
}

/// y = batch_norm(x) for `x: [N, C, H, W]`; updates `stats` in training. Returns y and what
/// backward needs.
pub(crate) fn forward<T: Float + StorageElement>(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    stats: &mut RunningStats,
    training: bool,
    eps: f64,
) -> Result<(Tensor, Saved)> {
    let shape = x.shape().to_vec();
    let dims = (shape[0], shape[1], shape[2] * shape[3]);
    let (n, c, hw) = dims;
    let m = (n * hw) as f64;
    let xd = x.host_data::<T>()?;
    let (mean, var) = if training {
        let moments = per_channel(c, xd.len(), |ch| {
            let mean = channel_sum(dims, ch, |k| xd[k].as_f64()) / m;
            let var = channel_sum(dims, ch, |k| (xd[k].as_f64() - mean).powi(2)) / m;
            (mean, var)
        });
        let (mean, var): (Vec<f64>, Vec<f64>) = moments.into_iter().unzip();
        // Running statistics follow the batch (unbiased variance, as PyTorch).
        let unbiased: Vec<f64> = var.iter().map(|v| v * m / (m - 1.0)).collect();
        let dtype = x.dtype();
        stats.update(&Tensor::from_f64s(&mean, &[c], dtype)?, &Tensor::from_f64s(&unbiased, &[c], dtype)?)?;
        (mean, var)
    } else {
        (stats.mean.to_f64_vec(), stats.var.to_f64_vec())
    };
    let rstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let gamma = weight.map(|w| w.to_f64_vec());
    let beta = bias.map(|b| b.to_f64_vec());
    // y = γ·(x − μ)·r + β, folded per channel into y = scale·x + shift (in f64).
    let scale: Vec<f64> = (0..c).map(|ch| gamma.as_ref().map_or(1.0, |g| g[ch]) * rstd[ch]).collect();
    let shift: Vec<f64> = (0..c).map(|ch| beta.as_ref().map_or(0.0, |b| b[ch]) - mean[ch] * scale[ch]).collect();
    let mut y = vec![T::zero(); xd.len()];
    for_each_plane(&mut y, hw, |p, plane| {
        let (ch, src) = (p % c, &xd[p * hw..(p + 1) * hw]);
        let (a, b) = (scale[ch], shift[ch]);
        plane.iter_mut().zip(src).for_each(|(o, &v)| *o = T::of_f64(v.as_f64() * a + b));
    });
    let saved = Saved { x: x.detach(), mean, rstd, gamma, has_bias: bias.is_some(), training, dims };
    Ok((Tensor::from_vec(y, &shape)?, saved))
}

/// Gradients for (x, weight if any, bias if any) from the output gradient `g`; `needs` says
/// which are wanted, in that order.
pub(crate) fn backward<T: Float + StorageElement>(
    g: &Tensor,
    saved: &Saved,
    needs: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    let Saved { x, mean, rstd, gamma, has_bias, training, dims } = saved;
    let (n, c, hw) = *dims;
    let m = (n * hw) as f64;
    let (xd, gd) = (x.host_data::<T>()?, g.host_data::<T>()?);
    let xhat = |k: usize, ch: usize| (xd[k].as_f64() - mean[ch]) * rstd[ch];
    // Per channel: Σg, Σg·x̂.
    let sums = per_channel(c, xd.len(), |ch| {
        let sum_g = channel_sum(*dims, ch, |k| gd[k].as_f64());
        let sum_gx = channel_sum(*dims, ch, |k| gd[k].as_f64() * xhat(k, ch));
        (sum_g, sum_gx)
    });
    let gamma_of = |ch: usize| gamma.as_ref().map_or(1.0, |w| w[ch]);
    let mut grads = Vec::with_capacity(needs.len());
    grads.push(if needs[0] {
        let mut dx = vec![T::zero(); xd.len()];
        for_each_plane(&mut dx, hw, |p, plane| {
            let ch = p % c;
            let base = p * hw;
            let (sum_g, sum_gx) = sums[ch];
            let k = gamma_of(ch) * rstd[ch];
            if *training {
                // dx = γ·r/M·(M·g − Σg − x̂·Σg·x̂)
                plane.iter_mut().enumerate().for_each(|(j, o)| {
                    let v = m * gd[base + j].as_f64() - sum_g - xhat(base + j, ch) * sum_gx;
                    *o = T::of_f64(k / m * v);
                });
            } else {
                plane.iter_mut().enumerate().for_each(|(j, o)| *o = T::of_f64(k * gd[base + j].as_f64()));
            }
        });
        Some(Tensor::from_vec(dx, x.shape())?)
    } else {
        None
    });
    let per_channel_grad = |pick: fn((f64, f64)) -> f64| -> Result<Tensor> {
        Tensor::from_f64s(&sums.iter().map(|&s| pick(s)).collect::<Vec<f64>>(), &[c], x.dtype())
    };
    let mut next = 1;
    if gamma.is_some() {
        grads.push(if needs[next] { Some(per_channel_grad(|(_, sum_gx)| sum_gx)?) } else { None });
        next += 1;
    }
    if *has_bias {
        grads.push(if needs[next] { Some(per_channel_grad(|(sum_g, _)| sum_g)?) } else { None });
    }
    Ok(grads)
}
