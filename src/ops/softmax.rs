//! softmax and log_softmax along one axis, numerically stable.
//!
//! Both subtract the row maximum before exponentiating, so inputs of ±1000
//! give exact results instead of inf/NaN.
//! Backward: for y = softmax(x), dx = y ⊙ (g − Σ g·y);
//! for y = log_softmax(x), dx = g − softmax(x) · Σ g.
//! On a GPU both run in the row kernels of kernels/softmax.cu (`softmax/cuda.rs`); an axis
//! other than the last is moved last first, as here.

#[cfg(feature = "cuda")]
mod cuda;

use super::{placement, Placement};
use crate::autograd::record;
use crate::error::Result;
use crate::float_dispatch;
use crate::tensor::layout::resolve_axis;
use crate::tensor::{Float, StorageElement, Tensor};
#[allow(unused_imports)]
use num_traits::{Float as _, One, Zero};
use rayon::prelude::*;

/// Applies `f` to every row of the last axis of a contiguous copy of `x`.
pub(crate) fn map_rows<T: Float + StorageElement>(
    x: &Tensor,
    f: impl Fn(&[T], &mut [T]) + Sync + Send,
) -> Result<Tensor> {
    let data = x.host_data::<T>()?;
    let n = *x.shape().last().unwrap_or(&1);
    let mut out = vec![T::default(); data.len()];
    if n > 0 {
        out.par_chunks_mut(n).zip(data.par_chunks(n)).with_min_len(16).for_each(|(o, row)| f(row, o));
    }
    Tensor::from_vec(out, x.shape())
}

/// Applies `f(a_row, b_row, out_row)` to matching rows of two same-shaped tensors.
pub(crate) fn map_rows2<T: Float + StorageElement>(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(&[T], &[T], &mut [T]) + Sync + Send,
) -> Result<Tensor> {
    let (da, db) = (a.host_data::<T>()?, b.host_data::<T>()?);
    let n = *a.shape().last().unwrap_or(&1);
    let mut out = vec![T::default(); da.len()];
    if n > 0 {
        out.par_chunks_mut(n)
            .zip(da.par_chunks(n).zip(db.par_chunks(n)))
            .with_min_len(16)
            .for_each(|(o, (ra, rb))| f(ra, rb, o));
    }
    Tensor::from_vec(out, a.shape())
}

fn softmax_row<T: Float>(row: &[T], out: &mut [T]) {
    let m = row.iter().copied().fold(T::neg_infinity(), T::max);
    if m == T::neg_infinity() {
        // Every entry masked out (attention): attend to nothing rather than produce NaN.
        out.iter_mut().for_each(|o| *o = T::zero());
        return;
    }
    let mut sum = T::zero();
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v - m).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o = *o / sum;
    }
}

fn log_softmax_row<T: Float>(row: &[T], out: &mut [T]) {
    let m = row.iter().copied().fold(T::neg_infinity(), T::max);
    // (v − m) − log Σ exp(v − m): subtracting the small log-sum last keeps
    // precision that v − (m + log Σ) would round away for large m.
    let log_sum = row.iter().map(|&v| (v - m).exp()).fold(T::zero(), |a, b| a + b).ln();
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v - m) - log_sum;
    }
}

/// Moves `axis` last (a view), runs `body` on rows, and moves it back.
fn along_axis(x: &Tensor, axis: usize, body: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let last = x.rank() - 1;
    if axis == last {
        return body(x);
    }
    let moved = x.transpose(axis, last)?;
    body(&moved)?.transpose(axis, last)
}

impl Tensor {
    /// exp(x − max) / Σ exp(x − max) along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        let ax = resolve_axis("softmax", axis, self.rank())?;
        let x = self.detach();
        let out = crate::autograd::no_grad(|| {
            along_axis(&x, ax, |t| match placement("softmax", &[t])? {
                Placement::Cpu => float_dispatch!("softmax", t.dtype(), T => map_rows::<T>(t, softmax_row::<T>)),
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::forward("softmax", cuda::Kind::Softmax, t),
            })
        })?;
        let y = out.clone();
        Ok(record("softmax", &[self], out, move |g, _| {
            let gi = along_axis(g, ax, |gm| {
                let ym = if ax == y.rank() - 1 { y.clone() } else { y.transpose(ax, y.rank() - 1)? };
                match placement("softmax", &[gm, &ym])? {
                    Placement::Cpu => float_dispatch!("softmax", gm.dtype(), T => map_rows2::<T>(gm, &ym, |g, y, o| {
                        let dot = g.iter().zip(y).fold(T::zero(), |a, (&g, &y)| a + g * y);
                        for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
                            *o = y * (g - dot);
                        }
                    })),
                    #[cfg(feature = "cuda")]
                    Placement::Cuda => cuda::backward("softmax", cuda::Kind::Softmax, gm, &ym),
                }
            })?;
            Ok(vec![Some(gi)])
        }))
    }

    /// x − logsumexp(x) along `axis`.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        let ax = resolve_axis("log_softmax", axis, self.rank())?;
        let x = self.detach();
        let out = crate::autograd::no_grad(|| {
            along_axis(&x, ax, |t| match placement("log_softmax", &[t])? {
                Placement::Cpu => {
                    float_dispatch!("log_softmax", t.dtype(), T => map_rows::<T>(t, log_softmax_row::<T>))
                }
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::forward("log_softmax", cuda::Kind::LogSoftmax, t),
            })
        })?;
        let y = out.clone();
        Ok(record("log_softmax", &[self], out, move |g, _| {
            let gi = along_axis(g, ax, |gm| {
                let ym = if ax == y.rank() - 1 { y.clone() } else { y.transpose(ax, y.rank() - 1)? };
                match placement("log_softmax", &[gm, &ym])? {
                    Placement::Cpu => {
                        float_dispatch!("log_softmax", gm.dtype(), T => map_rows2::<T>(gm, &ym, |g, y, o| {
                            let total = g.iter().fold(T::zero(), |a, &b| a + b);
                            for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
                                *o = g - y.exp() * total;
                            }
                        }))
                    }
                    #[cfg(feature = "cuda")]
                    Placement::Cuda => cuda::backward("log_softmax", cuda::Kind::LogSoftmax, gm, &ym),
                }
            })?;
            Ok(vec![Some(gi)])
        }))
    }
}
