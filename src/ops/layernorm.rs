//! Layer normalisation over the trailing axes (PyTorch's `F.layer_norm`).
//!
//! Per row (the flattened trailing `normalized_shape`): x̂ = (x − μ)·r with
//! r = 1/√(σ² + eps) (biased variance), y = γ·x̂ + β. Forward saves only μ and
//! r per row; backward recomputes x̂ from x and, with ĝ = g·γ, computes in one
//! fused pass over the rows:
//!   dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),  dγ = Σ_rows g·x̂,  dβ = Σ_rows g.
//! Row statistics and the two row sums of backward go in 8 interleaved f64 partial sums,
//! each loop compiled wide (`simd::vectorized`).
//! On a GPU the same math runs in the fused kernels of kernels/layernorm.cu (`layernorm/cuda.rs`).

#[cfg(feature = "cuda")]
mod cuda;

use super::{placement, Placement};
use crate::autograd::record;
use crate::backend::cpu::elementwise::PAR_MIN;
use crate::backend::cpu::simd::vectorized;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{Float, Tensor};
use rayon::prelude::*;

const OP: &str = "layer_norm";

/// Σ f(v) over `values` in 8 interleaved f64 partial sums (lane l takes the elements
/// j ≡ l mod 8, in order; a single running sum is a chain of dependent adds, 4 cycles each:
/// that chain was most of this op's time), the lanes added pairwise, the tail last: a fixed
/// order, so the same sum whichever instruction set runs it. Loops over slices, not
/// indices, so that the compiler sees the lengths and vectorises them.
#[inline(always)]
fn lane_sum<V: Copy>(values: &[V], f: impl Fn(V) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let blocks = values.chunks_exact(LANES);
    let tail: f64 = blocks.remainder().iter().map(|&v| f(v)).sum();
    for block in blocks {
        acc.iter_mut().zip(block).for_each(|(a, &v)| *a += f(v));
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// y, and per row μ and r = 1/√(σ² + eps). `x` holds whole rows of length `n > 0`.
fn forward<T: Float>(x: &[T], n: usize, gamma: Option<&[T]>, beta: Option<&[T]>, eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / n;
    let mut y = vec![T::zero(); x.len()];
    let mut mean = vec![T::zero(); rows];
    let mut rstd = vec![T::zero(); rows];
    let rows_per_task = (PAR_MIN / n).max(1);
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .with_min_len(rows_per_task)
        .for_each(|((yr, row), (mu, rs))| {
            vectorized(|| {
                // Statistics in f64: cheap here, and keeps long f32 rows (768+) accurate.
                // Two sweeps (mean, then squared deviations) avoid E[x²] − E[x]² cancellation.
                let m = lane_sum(row, |v| v.as_f64()) / n as f64;
                let var = lane_sum(row, |v| (v.as_f64() - m).powi(2)) / n as f64;
                let r = 1.0 / (var + eps).sqrt();
                (*mu, *rs) = (T::of_f64(m), T::of_f64(r));
                let normalized = |v: T| T::of_f64((v.as_f64() - m) * r);
                // The affine choice outside the loops, so each loop is one plain pass.
                let items = yr.iter_mut().zip(row);
                match (gamma, beta) {
                    (Some(g), Some(b)) => {
                        items.zip(g.iter().zip(b)).for_each(|((o, &v), (&g, &b))| *o = normalized(v) * g + b)
                    }
                    (Some(g), None) => items.zip(g).for_each(|((o, &v), &g)| *o = normalized(v) * g),
                    (None, Some(b)) => items.zip(b).for_each(|((o, &v), &b)| *o = normalized(v) + b),
                    (None, None) => items.for_each(|(o, &v)| *o = normalized(v)),
                }
            })
        });
    (y, mean, rstd)
}

/// dx, dγ and dβ in one pass: blocks of rows in parallel, each block summing its own
/// dγ/dβ partials (in f64), the blocks' partials then added in block order (a split
/// fixed by the shape: the same sums on every run, whatever the threads do).
fn backward<T: Float>(
    x: &[T],
    g: &[T],
    n: usize,
    gamma: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = vec![T::zero(); x.len()];
    let ones = gamma.is_none().then(|| vec![T::one(); n]);
    let gamma = gamma.unwrap_or_else(|| ones.as_deref().expect("made when gamma is None"));
    let block_rows = (PAR_MIN / n).max(1);
    let block = |(b, dx_block): (usize, &mut [T])| {
        let (mut dgam, mut dbet) = (vec![0.0f64; n], vec![0.0f64; n]);
        // One row's x̂, ĝ = g·γ and ĝ·x̂, in f64 (reused row after row).
        let (mut xhat, mut ghat, mut ghat_xhat) = (vec![0.0f64; n], vec![0.0f64; n], vec![0.0f64; n]);
        for (i, dxr) in dx_block.chunks_exact_mut(n).enumerate() {
            let row = b * block_rows + i;
            let (xr, gr) = (&x[row * n..][..n], &g[row * n..][..n]);
            let (mu, r) = (mean[row].as_f64(), rstd[row].as_f64());
            vectorized(|| {
                xhat.iter_mut().zip(xr).for_each(|(h, &v)| *h = (v.as_f64() - mu) * r);
                ghat.iter_mut().zip(gr.iter().zip(gamma)).for_each(|(h, (&g, &w))| *h = g.as_f64() * w.as_f64());
                ghat_xhat.iter_mut().zip(ghat.iter().zip(&xhat)).for_each(|(p, (&g, &x))| *p = g * x);
                let mean_gh = lane_sum(&ghat, |v| v) / n as f64;
                let mean_ghx = lane_sum(&ghat_xhat, |v| v) / n as f64;
                for ((dg, db), (&g, &x)) in dgam.iter_mut().zip(dbet.iter_mut()).zip(gr.iter().zip(&xhat)) {
                    *dg += g.as_f64() * x;
                    *db += g.as_f64();
                }
                for (d, (&gh, &x)) in dxr.iter_mut().zip(ghat.iter().zip(&xhat)) {
                    *d = T::of_f64(r * (gh - mean_gh - x * mean_ghx));
                }
            });
        }
        (dgam, dbet)
    };
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dx.par_chunks_mut(block_rows * n).enumerate().map(block).collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f64; n], vec![0.0f64; n]);
    for (pg, pb) in &partials {
        dgamma.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    let cast = |v: Vec<f64>| v.into_iter().map(T::of_f64).collect::<Vec<T>>();
    (dx, cast(dgamma), cast(dbeta))
}

/// Normalises `x` over its trailing `normalized_shape` axes, then scales by
/// `weight` (γ) and shifts by `bias` (β), both of shape `normalized_shape`.
pub fn layer_norm(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let k = normalized_shape.len();
    if k == 0 || k > x.rank() || &x.shape()[x.rank() - k..] != normalized_shape {
        return Err(Error::shape(
            OP,
            format!("normalized_shape {normalized_shape:?} is not the trailing shape of {:?}", x.shape()),
        ));
    }
    let n: usize = normalized_shape.iter().product();
    if n == 0 {
        return Err(Error::shape(OP, format!("normalized_shape {normalized_shape:?} has no elements to normalise")));
    }
    for (what, p) in [("weight", weight), ("bias", bias)] {
        let Some(p) = p else { continue };
        if p.shape() != normalized_shape {
            return Err(Error::shape(OP, format!("{what} is {:?}, should be {normalized_shape:?}", p.shape())));
        }
        if p.dtype() != x.dtype() {
            return Err(Error::dtype(OP, format!("{what} is {}, input is {}", p.dtype(), x.dtype())));
        }
    }
    if !(eps > 0.0) {
        return Err(Error::invalid(OP, format!("eps must be > 0, got {eps}")));
    }
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    match placement(OP, &inputs)? {
        Placement::Cpu => {}
        #[cfg(feature = "cuda")]
        Placement::Cuda => {
            let (out, saved) = cuda::forward(x, n, weight, bias, eps)?;
            let (has_weight, has_bias, norm_shape) = (weight.is_some(), bias.is_some(), normalized_shape.to_vec());
            return Ok(record(OP, &inputs, out, move |g, needs| {
                let want_gamma = has_weight && needs[1];
                let want_beta = has_bias && needs[1 + has_weight as usize];
                let (dx, dgamma, dbeta) = cuda::backward(g, &saved, n, want_gamma, want_beta)?;
                let shaped = |t: Option<Tensor>| t.map(|t| t.reshape(&norm_shape)).transpose();
                // One gradient per recorded input, in order: x, then weight and bias if given.
                let mut grads = vec![Some(dx)];
                if has_weight {
                    grads.push(shaped(dgamma)?);
                }
                if has_bias {
                    grads.push(shaped(dbeta)?);
                }
                Ok(grads)
            }));
        }
    }
    let (out, mean, rstd) = float_dispatch!(OP, x.dtype(), T => {
        let xd = x.host_data::<T>()?;
        let wd = weight.map(|w| w.host_data::<T>()).transpose()?;
        let bd = bias.map(|b| b.host_data::<T>()).transpose()?;
        let (y, mean, rstd) = forward::<T>(&xd, n, wd.as_deref(), bd.as_deref(), eps);
        let rows = mean.len();
        (Tensor::from_vec(y, x.shape())?, Tensor::from_vec(mean, &[rows])?, Tensor::from_vec(rstd, &[rows])?)
    });

    let (xs, gamma) = (x.detach(), weight.map(|w| w.detach()));
    let (x_shape, norm_shape) = (x.shape().to_vec(), normalized_shape.to_vec());
    let has_bias = bias.is_some();
    Ok(record(OP, &inputs, out, move |g, _| {
        let (dx, dgamma, dbeta) = float_dispatch!(OP, g.dtype(), T => {
            let (xd, gd) = (xs.host_data::<T>()?, g.host_data::<T>()?);
            let wd = gamma.as_ref().map(|w| w.host_data::<T>()).transpose()?;
            let (md, rd) = (mean.host_data::<T>()?, rstd.host_data::<T>()?);
            let (dx, dg, db) = backward::<T>(&xd, &gd, n, wd.as_deref(), &md, &rd);
            (Tensor::from_vec(dx, &x_shape)?, Tensor::from_vec(dg, &norm_shape)?, Tensor::from_vec(db, &norm_shape)?)
        });
        // One gradient per recorded input, in order: x, then weight and bias if given.
        let mut grads = vec![Some(dx)];
        if gamma.is_some() {
            grads.push(Some(dgamma));
        }
        if has_bias {
            grads.push(Some(dbeta));
        }
        Ok(grads)
    }))
}
