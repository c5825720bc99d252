//! Batch norm on the CPU in two passes over the activations forward and two backward.
//!
//! The definition in `batchnorm.rs` (`batch_norm_2d_composed`, kept as the readable reference
//! and checked against this file in tests/conv_pool_bn.rs) is a chain of tensor ops: about
//! eight passes over `[N, C, H, W]` forward and twelve backward, each with a fresh buffer.
//! Here, per channel (M = N·H·W values, in f64):
//! - forward, training: μ and σ² (two-pass within each plane while it is in cache, the
//!   planes combined exactly), then `y = γ·(x − μ)·r + β` in one pass
//!   (r = 1/√(σ² + eps)); eval: the running statistics instead;
//! - backward: Σg and Σg·x̂ in one pass (x̂ recomputed from the saved input, not stored),
//!   then `dx = γ·r/M·(M·g − Σg − x̂·Σg·x̂)` (training) or `γ·r·g` (eval) in one pass;
//!   dγ = Σg·x̂ and dβ = Σg come from the first pass.
//!
//! Sums go by blocks of whole images over threads, each block's partial sums added in block
//! order; the elementwise passes go plane by plane (one `[H, W]` plane of one image and
//! channel), which every thread can write on its own.

use super::RunningStats;
use crate::backend::cpu::elementwise::PAR_MIN;
use crate::backend::cpu::simd::vectorized;
use crate::error::Result;
use crate::tensor::{Float, StorageElement, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

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

/// Per channel, Σ over every image of `plane_sum(channel, plane's element range)`
/// (K sums at once), in f64. Work goes by blocks of whole images (≈ PAR_MIN
/// elements, set by the shape alone) so tiny planes (1×1 at ResNet's last stage)
/// are not one task each; the blocks' partial sums are added in block order, so
/// the result does not depend on the number of threads.
fn channel_sums<const K: usize>(
    (n, c, hw): (usize, usize, usize),
    plane_sum: impl Fn(usize, std::ops::Range<usize>) -> [f64; K] + Sync + Send,
) -> Vec<[f64; K]> {
    let per_block = (PAR_MIN / (c * hw).max(1)).max(1);
    let block = |b: usize| -> Vec<[f64; K]> {
        let mut acc = vec![[0.0; K]; c];
        vectorized(|| {
            for i in b * per_block..((b + 1) * per_block).min(n) {
                for (ch, a) in acc.iter_mut().enumerate() {
                    let sums = plane_sum(ch, (i * c + ch) * hw..(i * c + ch + 1) * hw);
                    a.iter_mut().zip(sums).for_each(|(a, s)| *a += s);
                }
            }
        });
        acc
    };
    let blocks = n.div_ceil(per_block);
    let partial: Vec<Vec<[f64; K]>> = if n * c * hw >= PAR_MIN {
        (0..blocks).into_par_iter().map(block).collect()
    } else {
        (0..blocks).map(block).collect()
    };
    let mut total = vec![[0.0; K]; c];
    for p in partial {
        for (t, s) in total.iter_mut().zip(p) {
            t.iter_mut().zip(s).for_each(|(t, s)| *t += s);
        }
    }
    total
}

/// Σ_j f(a[j], b[j]) in f64, as 8 interleaved partial sums added pairwise at the
/// end: a fixed order (the same on every machine and thread count) that the
/// compiler can vectorise, where one running sum could not be.
/// (Inlined into the caller's `vectorized` block.)
#[inline(always)]
fn lane_sum<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let (a_body, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_body, b_tail) = b[..a.len()].split_at(a_body.len());
    for (xa, xb) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += f(xa[l], xb[l]);
        }
    }
    let tail: f64 = a_tail.iter().zip(b_tail).map(|(&x, &y)| f(x, y)).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Each channel's mean and (biased) variance in one pass over memory: per plane, while it
/// is in cache, s = Σ(x − K) and the plane's own M2 = Σ(x − μ_p)² (two-pass), then
/// M2 = Σ M2_p + Σ s_p²/n_p − S²/M (the spread of the plane means about the batch mean).
/// K, the channel's first value, keeps that last difference free of cancellation when
/// the mean is far from zero.
fn moments<T: Float>(xd: &[T], dims: (usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
    let (n, c, hw) = dims;
    let m = (n * hw) as f64;
    let shift: Vec<f64> = (0..c).map(|ch| if n * hw > 0 { xd[ch * hw].as_f64() } else { 0.0 }).collect();
    let per_channel = channel_sums(dims, |ch, r| {
        let xs = &xd[r];
        if xs.is_empty() {
            return [0.0; 3];
        }
        let (k, n_p) = (shift[ch], xs.len() as f64);
        let s = lane_sum(xs, xs, |v, _| v.as_f64() - k);
        let mean_p = k + s / n_p;
        let m2 = lane_sum(xs, xs, |v, _| (v.as_f64() - mean_p).powi(2));
        [s, m2, s * s / n_p]
    });
    per_channel.iter().zip(&shift).map(|(&[s, m2, between], &k)| (k + s / m, (m2 + between - s * s / m) / m)).unzip()
}

/// A tensor of `len` elements written plane by plane: `f(plane index, plane)` over its
/// `[H·W]` planes, in parallel when large, `f` inlined into a `vectorized` loop over the
/// block's planes. `f` must write every element of its plane (nothing is zeroed first:
/// a zeroing pass costs as much memory traffic as the write itself).
fn planes_written_by<T: Float>(
    len: usize,
    hw: usize,
    f: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    if hw > 0 {
        let spare = &mut out.spare_capacity_mut()[..len];
        // Blocks of ≈ PAR_MIN elements per task, however small the planes.
        let per_block = PAR_MIN.div_ceil(hw);
        let block = |(b, out): (usize, &mut [MaybeUninit<T>])| {
            vectorized(|| out.chunks_mut(hw).enumerate().for_each(|(p, plane)| f(b * per_block + p, plane)));
        };
        if len >= PAR_MIN {
            spare.par_chunks_mut(per_block * hw).enumerate().for_each(block);
        } else {
            block((0, spare));
        }
    }
    // SAFETY: `f` wrote every element of every plane; with hw = 0 there are no elements (len = 0).
    unsafe { out.set_len(len) };
    out
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
        let (mean, var) = moments(&xd, dims);
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
    let y = planes_written_by(xd.len(), hw, |p, plane| {
        let (ch, src) = (p % c, &xd[p * hw..(p + 1) * hw]);
        let (a, b) = (scale[ch], shift[ch]);
        plane.iter_mut().zip(src).for_each(|(o, &v)| _ = o.write(T::of_f64(v.as_f64() * a + b)));
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
    // Per channel: Σg, Σg·x̂ (x̂ = (x − μ)·r).
    let sums = channel_sums(*dims, |ch, k| {
        let (mu, r) = (mean[ch], rstd[ch]);
        let sum_g = lane_sum(&gd[k.clone()], &gd[k.clone()], |g, _| g.as_f64());
        let sum_gx = lane_sum(&gd[k.clone()], &xd[k], |g, x| g.as_f64() * ((x.as_f64() - mu) * r));
        [sum_g, sum_gx]
    });
    let gamma_of = |ch: usize| gamma.as_ref().map_or(1.0, |w| w[ch]);
    let mut grads = Vec::with_capacity(needs.len());
    grads.push(if needs[0] {
        let dx = planes_written_by(xd.len(), hw, |p, plane| {
            let ch = p % c;
            let base = p * hw;
            let [sum_g, sum_gx] = sums[ch];
            let (mu, r) = (mean[ch], rstd[ch]);
            let k = gamma_of(ch) * r;
            let (gs, xs) = (&gd[base..base + hw], &xd[base..base + hw]);
            if *training {
                // dx = γ·r/M·(M·g − Σg − x̂·Σg·x̂)
                plane.iter_mut().zip(gs.iter().zip(xs)).for_each(|(o, (&g, &x))| {
                    let v = m * g.as_f64() - sum_g - ((x.as_f64() - mu) * r) * sum_gx;
                    o.write(T::of_f64(k / m * v));
                });
            } else {
                plane.iter_mut().zip(gs).for_each(|(o, &g)| _ = o.write(T::of_f64(k * g.as_f64())));
            }
        });
        Some(Tensor::from_vec(dx, x.shape())?)
    } else {
        None
    });
    let per_channel_grad = |pick: fn([f64; 2]) -> f64| -> Result<Tensor> {
        Tensor::from_f64s(&sums.iter().map(|&s| pick(s)).collect::<Vec<f64>>(), &[c], x.dtype())
    };
    let mut next = 1;
    if gamma.is_some() {
        grads.push(if needs[next] { Some(per_channel_grad(|[_, sum_gx]| sum_gx)?) } else { None });
        next += 1;
    }
    if *has_bias {
        grads.push(if needs[next] { Some(per_channel_grad(|[sum_g, _]| sum_g)?) } else { None });
    }
    Ok(grads)
}
