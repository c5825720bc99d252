//! Reductions over axes: sum, mean, max, var.
//!
//! Backward broadcasts the output gradient back over the reduced axes:
//! every input element contributed to its output with weight 1 (sum),
//! 1/n (mean), 2(x − mean)/(n − correction) (var), or, for max, only the
//! elements equal to the maximum (split evenly between ties).

use super::{placement, Placement};
use crate::autograd::record;
use crate::backend::cpu::reduce::{reduce, Reduction};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::layout::resolve_axis;
use crate::tensor::Tensor;

/// Validated axes (sorted, unique), the kept-dims shape and the output shape.
fn plan(op: &'static str, x: &Tensor, axes: &[isize], keepdim: bool) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let mut ax: Vec<usize> = axes.iter().map(|&a| resolve_axis(op, a, x.rank())).collect::<Result<_>>()?;
    ax.sort_unstable();
    if ax.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::invalid(op, format!("axis repeated in {axes:?}")));
    }
    let keep: Vec<usize> = (0..x.rank()).map(|a| if ax.contains(&a) { 1 } else { x.shape()[a] }).collect();
    let out: Vec<usize> =
        if keepdim { keep.clone() } else { (0..x.rank()).filter(|a| !ax.contains(a)).map(|a| x.shape()[a]).collect() };
    Ok((ax, keep, out))
}

/// Σ over the sorted `axes`, shaped `keep` (those axes kept with size 1) on a GPU; on the
/// CPU the reduce kernel's own shape, which the callers reshape.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn sum_over(op: &'static str, x: &Tensor, axes: &[usize], keep: &[usize]) -> Result<Tensor> {
    match placement(op, &[x])? {
        Placement::Cpu => Ok(float_dispatch!(op, x.dtype(), T => reduce::<T>(x, axes, Reduction::Sum)?)),
        // Summing over axes is summing the axes a broadcast from `keep` would have expanded.
        #[cfg(feature = "cuda")]
        Placement::Cuda => {
            let _ = axes;
            super::elementwise::cuda::sum_to_shape(x, keep)
        }
    }
}

fn count(x: &Tensor, axes: &[usize]) -> usize {
    axes.iter().map(|&a| x.shape()[a]).product()
}

/// A gradient shaped like the (possibly squeezed) output, broadcast back to `in_shape`.
fn expand_back(g: &Tensor, keep: &[usize], in_shape: &[usize]) -> Result<Tensor> {
    g.reshape(keep)?.broadcast_to(in_shape)
}

impl Tensor {
    /// Sum over `axes` (negative axes count from the end).
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let (ax, keep, out_shape) = plan("sum", self, axes, keepdim)?;
        let out = sum_over("sum", self, &ax, &keep)?.reshape(&out_shape)?;
        let in_shape = self.shape().to_vec();
        Ok(record("sum", &[self], out, move |g, _| Ok(vec![Some(expand_back(g, &keep, &in_shape)?)])))
    }

    /// Sum of every element, as a scalar (rank-0) tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let (ax, keep, out_shape) = plan("mean", self, axes, keepdim)?;
        let n = count(self, &ax);
        let out = sum_over("mean", self, &ax, &keep)?.mul_scalar(1.0 / n as f64)?.reshape(&out_shape)?;
        let in_shape = self.shape().to_vec();
        Ok(record("mean", &[self], out, move |g, _| {
            Ok(vec![Some(expand_back(&g.mul_scalar(1.0 / n as f64)?, &keep, &in_shape)?)])
        }))
    }

    /// Mean of every element, as a scalar tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        self.mean(&axes, false)
    }

    /// Maximum over `axes`. The gradient goes to the maximal elements (split evenly on ties).
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let (ax, keep, out_shape) = plan("max", self, axes, keepdim)?;
        if count(self, &ax) == 0 {
            return Err(Error::shape("max", format!("cannot take the max over an empty axis of {:?}", self.shape())));
        }
        #[cfg(feature = "cuda")]
        if placement("max", &[self])? == Placement::Cuda {
            return Err(super::not_on_cuda("max"));
        }
        let kept = float_dispatch!("max", self.dtype(), T => reduce::<T>(self, &ax, Reduction::Max)?);
        let out = kept.reshape(&out_shape)?;
        let x = self.detach();
        Ok(record("max", &[self], out, move |g, _| {
            let hits = x.eq_mask(&kept)?;
            let ties = float_dispatch!("max", hits.dtype(), T => reduce::<T>(&hits, &ax, Reduction::Sum)?);
            let share = g.reshape(&keep)?.div(&ties)?;
            Ok(vec![Some(hits.mul(&share)?)])
        }))
    }

    /// Variance over `axes` with `correction` (1 = unbiased, 0 = population).
    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        let (ax, keep, out_shape) = plan("var", self, axes, keepdim)?;
        let n = count(self, &ax);
        if n <= correction {
            return Err(Error::shape("var", format!("{n} elements is too few for correction {correction}")));
        }
        let (centered, out) = crate::autograd::no_grad(|| -> Result<(Tensor, Tensor)> {
            let m = self.mean(axes, true)?;
            let c = self.sub(&m)?;
            let v = c.mul(&c)?.sum(axes, true)?.mul_scalar(1.0 / (n - correction) as f64)?;
            Ok((c, v.reshape(&out_shape)?))
        })?;
        let scale = 2.0 / (n - correction) as f64;
        Ok(record("var", &[self], out, move |g, _| {
            Ok(vec![Some(centered.mul(&g.reshape(&keep)?)?.mul_scalar(scale)?)])
        }))
    }
}
