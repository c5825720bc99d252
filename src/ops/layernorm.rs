//! Layer normalisation over the trailing axes (PyTorch's `F.layer_norm`).
//!
//! Per row (the flattened trailing `normalized_shape`): x̂ = (x − μ)·r with
//! r = 1/√(σ² + eps), y = γ·x̂ + β. Forward saves μ and r per row (one pass);
//! backward, with ĝ = g·γ:
//!   dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),  dγ = Σ_rows g·x̂,  dβ = Σ_rows g.

use crate::autograd::record;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{Float, StorageElement, Tensor};
use rayon::prelude::*;

struct Forward<T> {
    y: Vec<T>,
    xhat: Vec<T>,
    rstd: Vec<T>,
}

fn forward<T: Float + StorageElement>(
    x: &[T],
    n: usize,
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    eps: f64,
) -> Forward<T> {
    let rows = if n == 0 { 0 } else { x.len() / n };
    let mut y = vec![T::default(); x.len()];
    let mut xhat = vec![T::default(); x.len()];
    let mut rstd = vec![T::default(); rows];
    y.par_chunks_mut(n.max(1)).zip(xhat.par_chunks_mut(n.max(1))).zip(rstd.par_iter_mut()).enumerate().for_each(
        |(r, ((yr, hr), rs))| {
            let row = &x[r * n..(r + 1) * n];
            // Accumulate in f64: cheap here, and keeps f32 rows of 768+ accurate.
            let mean = row.iter().map(|v| v.as_f64()).sum::<f64>() / n as f64;
            let var = row.iter().map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (var + eps).sqrt();
            *rs = T::of_f64(inv);
            for j in 0..n {
                let h = T::of_f64((row[j].as_f64() - mean) * inv);
                hr[j] = h;
                let scaled = match gamma {
                    Some(g) => h * g[j],
                    None => h,
                };
                yr[j] = match beta {
                    Some(b) => scaled + b[j],
                    None => scaled,
                };
            }
        },
    );
    Forward { y, xhat, rstd }
}

pub fn layer_norm(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let k = normalized_shape.len();
    if k == 0 || k > x.rank() || &x.shape()[x.rank() - k..] != normalized_shape {
        return Err(Error::shape(
            OP,
            format!("normalized_shape {normalized_shape:?} is not the trailing shape of {:?}", x.shape()),
        ));
    }
    for p in [weight, bias].into_iter().flatten() {
        if p.shape() != normalized_shape {
            return Err(Error::shape(OP, format!("weight/bias {:?} should be {normalized_shape:?}", p.shape())));
        }
        if p.dtype() != x.dtype() {
            return Err(Error::dtype(OP, format!("weight/bias are {}, input is {}", p.dtype(), x.dtype())));
        }
    }
    if !(eps > 0.0) {
        return Err(Error::invalid(OP, format!("eps must be > 0, got {eps}")));
    }
    let n: usize = normalized_shape.iter().product();
    let (out, xhat, rstd) = float_dispatch!(OP, x.dtype(), T => {
        let xd = x.host_data::<T>()?;
        let gd = weight.map(|w| w.host_data::<T>()).transpose()?;
        let bd = bias.map(|b| b.host_data::<T>()).transpose()?;
        let f = forward::<T>(&xd, n, gd.as_deref(), bd.as_deref(), eps);
        let rows = f.rstd.len();
        (Tensor::from_vec(f.y, x.shape())?, Tensor::from_vec(f.xhat, &[rows, n])?, Tensor::from_vec(f.rstd, &[rows, 1])?)
    });
    let gamma = weight.map(|w| w.detach());
    let x_shape = x.shape().to_vec();
    let norm_shape = normalized_shape.to_vec();
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    let has_weight = weight.is_some();
    Ok(record(OP, &inputs, out, move |g, needs| {
        let rows = rstd.shape()[0];
        let g2 = g.reshape(&[rows, n])?;
        let mut grads = Vec::new();
        if needs[0] {
            let gh = match &gamma {
                Some(w) => g2.mul(&w.reshape(&[1, n])?)?,
                None => g2.clone(),
            };
            let mean_gh = gh.mean(&[1], true)?;
            let mean_ghx = gh.mul(&xhat)?.mean(&[1], true)?;
            let dx = gh.sub(&mean_gh)?.sub(&xhat.mul(&mean_ghx)?)?.mul(&rstd)?;
            grads.push(Some(dx.reshape(&x_shape)?));
        } else {
            grads.push(None);
        }
        let mut next = 1;
        if has_weight {
            grads.push(if needs[next] { Some(g2.mul(&xhat)?.sum(&[0], false)?.reshape(&norm_shape)?) } else { None });
            next += 1;
        }
        if needs.len() > next {
            grads.push(if needs[next] { Some(g2.sum(&[0], false)?.reshape(&norm_shape)?) } else { None });
        }
        Ok(grads)
    }))
}
