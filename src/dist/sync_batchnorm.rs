//! Synchronised batch norm: statistics over the global batch, not each rank's.
//!
//! Plain batch norm under data parallelism normalises each rank's activations
//! with that rank's own mean and variance (the default, as in PyTorch DDP):
//! cheap, but the statistics depend on how the batch is split. Synchronised
//! batch norm (`--sync_bn`) computes them over every rank's batch, so W ranks
//! with b clips each behave exactly like one rank with W·b.
//!
//! Forward: each rank computes, per channel, its count m_r, mean μ_r and sum of
//! squared deviations M2_r (two passes, in f64); the ranks all-gather these and
//! every rank combines them in rank order (Chan's parallel formula)
//!   M = Σ m_r,  μ = Σ m_r μ_r / M,  M2 = Σ [M2_r + m_r (μ_r − μ)²],  σ² = M2 / M,
//! which avoids the cancellation of the naive Σx² − Mμ² in f32. The running
//! statistics move towards (μ, M2/(M − 1)) identically on every rank.
//!
//! Backward: with ĝ = g·γ, the single-rank formula
//!   dx = r/M · (M·ĝ − Σĝ − x̂·Σ(ĝ·x̂))
//! needs the sums over the *global* batch, so each rank all-reduces its
//! per-channel Σĝ and Σĝ·x̂. dγ = Σ g·x̂ and dβ = Σ g stay per rank; the
//! gradient averaging of the parameters sums them over ranks like any other.

use super::Communicator;
use crate::autograd::{no_grad, record};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::nn::Module;
use crate::ops::batchnorm::{affine, batch_norm_2d, check_inputs, push_affine_grads, RunningStats};
use crate::tensor::{Float, StorageElement, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

const OP: &str = "sync_batch_norm_2d";

/// Per channel of `[N, C, HW]` data: (mean, Σ(x − mean)²), in f64.
fn channel_moments<T: Float + StorageElement>(x: &Tensor, n: usize, c: usize, hw: usize) -> Result<Vec<(f64, f64)>> {
    let d = x.host_data::<T>()?;
    let count = (n * hw) as f64;
    Ok((0..c)
        .into_par_iter()
        .map(|ch| {
            let rows = || (0..n).flat_map(|i| d[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter());
            let mean = rows().map(|v| v.as_f64()).sum::<f64>() / count;
            let m2 = rows().map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>();
            (mean, m2)
        })
        .collect())
}

/// Per channel of `[N, C, HW]` data: (Σa, Σa·b), in f64.
fn channel_sums<T: Float + StorageElement>(
    a: &Tensor,
    b: &Tensor,
    n: usize,
    c: usize,
    hw: usize,
) -> Result<Vec<(f64, f64)>> {
    let (da, db) = (a.host_data::<T>()?, b.host_data::<T>()?);
    Ok((0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sa, mut sab) = (0.0, 0.0);
            for i in 0..n {
                let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                for (x, y) in da[r.clone()].iter().zip(&db[r]) {
                    sa += x.as_f64();
                    sab += x.as_f64() * y.as_f64();
                }
            }
            (sa, sab)
        })
        .collect())
}

/// Global count, mean and M2 per channel from the gathered `[W, 1 + 2C]` rows
/// `[m_r, μ_r…, M2_r…]`, combined in rank order.
fn combine_moments(gathered: &[f64], c: usize) -> (f64, Vec<f64>, Vec<f64>) {
    let (mut count, mut mean, mut m2) = (0.0, vec![0.0; c], vec![0.0; c]);
    for row in gathered.chunks(1 + 2 * c) {
        let m_r = row[0];
        if m_r == 0.0 {
            continue;
        }
        let total = count + m_r;
        for ch in 0..c {
            let delta = row[1 + ch] - mean[ch];
            mean[ch] += delta * m_r / total;
            m2[ch] += row[1 + c + ch] + delta * delta * count * m_r / total;
        }
        count = total;
    }
    (count, mean, m2)
}

/// Batch norm of `x: [N, C, H, W]` with statistics over every rank's batch
/// (op `sync_batch_norm_2d`). Same arguments as
/// [`batch_norm_2d`](crate::ops::batchnorm::batch_norm_2d); in eval mode it
/// *is* `batch_norm_2d` (running statistics, no communication). Every rank
/// must call it, in the same order, with the same C, and run backward through it.
pub fn sync_batch_norm_2d(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    stats: &mut RunningStats,
    training: bool,
    eps: f64,
    comm: &Arc<dyn Communicator>,
) -> Result<Tensor> {
    if !training {
        return batch_norm_2d(x, weight, bias, stats, false, eps);
    }
    let (n, c, h, w) = check_inputs(OP, x, weight, bias, stats, eps)?;
    if n * h * w == 0 {
        return Err(Error::shape(OP, format!("every rank needs at least one value per channel, got {:?}", x.shape())));
    }
    let hw = h * w;
    let dtype = x.dtype();
    let moments = float_dispatch!(OP, dtype, T => channel_moments::<T>(x, n, c, hw)?);
    let mut packed = vec![(n * hw) as f64];
    packed.extend(moments.iter().map(|m| m.0));
    packed.extend(moments.iter().map(|m| m.1));
    let gathered = comm.all_gather(&Tensor::from_vec(packed, &[1, 1 + 2 * c])?)?.to_vec::<f64>()?;
    let (total, mean, m2) = combine_moments(&gathered, c);
    if total < 2.0 {
        return Err(Error::shape(
            OP,
            format!("training needs more than one value per channel over all ranks, got {total}"),
        ));
    }
    let per_channel = move |v: &[f64]| Tensor::from_f64s(v, &[1, c, 1, 1], dtype);
    let var: Vec<f64> = m2.iter().map(|s| s / total).collect();
    let unbiased: Vec<f64> = m2.iter().map(|s| s / (total - 1.0)).collect();
    let xd = x.detach();
    let (out, xhat, rstd) = no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
        stats.update(&Tensor::from_f64s(&mean, &[c], dtype)?, &Tensor::from_f64s(&unbiased, &[c], dtype)?)?;
        let rstd_v: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let rstd = per_channel(&rstd_v)?;
        let xhat = xd.sub(&per_channel(&mean)?)?.mul(&rstd)?;
        Ok((affine(&xhat, weight, bias, c)?, xhat, rstd))
    })?;
    let gamma = weight.map(|t| t.detach());
    let has_weight = weight.is_some();
    let comm = comm.clone();
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    Ok(record(OP, &inputs, out, move |g, needs| {
        let mut grads = Vec::with_capacity(needs.len());
        let gh = match &gamma {
            Some(gm) => g.mul(&gm.reshape(&[1, c, 1, 1])?)?,
            None => g.clone(),
        };
        grads.push(if needs[0] {
            let local = float_dispatch!(OP, dtype, T => channel_sums::<T>(&gh, &xhat, n, c, hw)?);
            let mut packed: Vec<f64> = local.iter().map(|s| s.0).collect();
            packed.extend(local.iter().map(|s| s.1));
            let global = comm.all_reduce_sum(&Tensor::from_vec(packed, &[2 * c])?)?.to_vec::<f64>()?;
            let sum_gh = per_channel(&global[..c])?;
            let sum_ghx = per_channel(&global[c..])?;
            let inner = gh.mul_scalar(total)?.sub(&sum_gh)?.sub(&xhat.mul(&sum_ghx)?)?;
            Some(inner.mul(&rstd)?.mul_scalar(1.0 / total)?)
        } else {
            None
        });
        push_affine_grads(&mut grads, g, &xhat, has_weight, needs)?;
        Ok(grads)
    }))
}

/// Switches every `BatchNorm2d` inside `model` to synchronised statistics over
/// `comm` (`Some`), or back to per-rank statistics (`None`, the default).
/// Returns how many layers it switched.
pub fn convert_sync_batch_norm(model: &mut dyn Module, comm: Option<Arc<dyn Communicator>>) -> usize {
    let mut switched = 0;
    model.for_each_batch_norm(&mut |bn| {
        bn.set_sync(comm.clone());
        switched += 1;
    });
    switched
}
