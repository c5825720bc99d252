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
//!
//! On a GPU the same formulas run as f32 tensor ops on the device
//! ([`on_device`]): the per-rank moments, the gathered rows and the combined
//! statistics never leave it, so the collectives get device tensors (NCCL
//! takes them as they are; the thread and TCP communicators stage them
//! through host memory).

use super::Communicator;
use crate::autograd::{no_grad, record};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::nn::Module;
use crate::ops::batchnorm::{affine, batch_norm_2d, check_inputs, push_affine_grads, recorded_inputs, RunningStats};
use crate::tensor::{DType, Float, StorageElement, Tensor};
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
    if x.device() != Device::Cpu {
        return on_device::sync_batch_norm_2d(x, weight, bias, stats, eps, comm, (n, c, hw));
    }
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
    let inputs = recorded_inputs(x, weight, bias);
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

/// The GPU path: the same statistics and gradients as f32 tensor ops on the device.
mod on_device {
    use super::*;

    /// As the host path, with three differences: moments are two-pass f32 sums on the device
    /// (as PyTorch's SyncBatchNorm computes them in f32) instead of f64 on the host; the
    /// ranks' rows are combined all at once, μ = Σ m_r μ_r / M and
    /// M2 = Σ M2_r + Σ m_r (μ_r − μ)², rather than rank by rank (the same values, no
    /// sequential update to write as tensor ops); and the global count M stays a device tensor,
    /// so no statistic is read back to the host. A bf16 input is normalised in f32 and cast back.
    pub(super) fn sync_batch_norm_2d(
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        stats: &mut RunningStats,
        eps: f64,
        comm: &Arc<dyn Communicator>,
        (n, c, hw): (usize, usize, usize),
    ) -> Result<Tensor> {
        // M ≥ 2 over two or more ranks, each with at least one value; a lone rank needs two.
        if comm.world_size() == 1 && n * hw < 2 {
            return Err(Error::shape(OP, format!("training needs more than one value per channel, got {n}×{hw}")));
        }
        let dtype = x.dtype();
        let per_channel = move |t: &Tensor| t.reshape(&[1, c, 1, 1]);
        let xd = x.detach().to_dtype(DType::F32)?;
        let (out, xhat, std, total) = no_grad(|| -> Result<(Tensor, Tensor, Tensor, Tensor)> {
            let mean_r = xd.mean(&[0, 2, 3], true)?;
            let centred = xd.sub(&mean_r)?;
            let m2_r = centred.mul(&centred)?.sum(&[0, 2, 3], false)?;
            let count = Tensor::from_f64s(&[(n * hw) as f64], &[1], DType::F32)?.to_device(x.device())?;
            let row = Tensor::cat(&[&count, &mean_r.reshape(&[c])?, &m2_r], 0)?.reshape(&[1, 1 + 2 * c])?;
            let rows = comm.all_gather(&row)?; // [W, 1 + 2C]: m_r, μ_r…, M2_r…
            let column = |start: usize, len: usize| rows.narrow(1, start, len)?.contiguous();
            let (m, mu, m2) = (column(0, 1)?, column(1, c)?, column(1 + c, c)?);
            let total = m.sum(&[0], true)?; // [1, 1]
            let mean = m.mul(&mu)?.sum(&[0], true)?.div(&total)?; // [1, C]
            let spread = mu.sub(&mean)?;
            let m2 = m2.sum(&[0], true)?.add(&spread.mul(&spread)?.mul(&m)?.sum(&[0], true)?)?;
            let unbiased = m2.div(&total.sub_scalar(1.0)?)?;
            let as_stat = |t: &Tensor| t.reshape(&[c])?.to_dtype(dtype);
            stats.update(&as_stat(&mean)?, &as_stat(&unbiased)?)?;
            let std = per_channel(&m2.div(&total)?.add_scalar(eps)?.sqrt()?)?;
            let xhat = xd.sub(&per_channel(&mean)?)?.div(&std)?;
            let out = affine(&xhat.to_dtype(dtype)?, weight, bias, c)?;
            Ok((out, xhat, std, total.reshape(&[1, 1, 1, 1])?))
        })?;
        let gamma = weight.map(|t| t.detach().to_dtype(DType::F32)).transpose()?;
        let has_weight = weight.is_some();
        let comm = comm.clone();
        let inputs = recorded_inputs(x, weight, bias);
        Ok(record(OP, &inputs, out, move |g, needs| {
            let mut grads = Vec::with_capacity(needs.len());
            let g32 = g.to_dtype(DType::F32)?;
            let gh = match &gamma {
                Some(gm) => g32.mul(&per_channel(gm)?)?,
                None => g32.clone(),
            };
            grads.push(if needs[0] {
                let sums = [gh.sum(&[0, 2, 3], false)?, gh.mul(&xhat)?.sum(&[0, 2, 3], false)?];
                let global = comm.all_reduce_sum(&Tensor::cat(&[&sums[0], &sums[1]], 0)?)?;
                let sum_gh = per_channel(&global.narrow(0, 0, c)?.contiguous()?)?;
                let sum_ghx = per_channel(&global.narrow(0, c, c)?.contiguous()?)?;
                let inner = gh.mul(&total)?.sub(&sum_gh)?.sub(&xhat.mul(&sum_ghx)?)?;
                Some(inner.div(&std)?.div(&total)?.to_dtype(dtype)?)
            } else {
                None
            });
            // dγ and dβ, summed in f32, in the parameters' dtype.
            let mut affine_grads = Vec::new();
            push_affine_grads(&mut affine_grads, &g32, &xhat, has_weight, needs)?;
            for grad in affine_grads {
                grads.push(grad.map(|t| t.to_dtype(dtype)).transpose()?);
            }
            Ok(grads)
        }))
    }
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
