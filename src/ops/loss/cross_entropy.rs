//! Mean cross-entropy of logits against integer class targets.
//!
//! loss = mean_i [logsumexp(x_i) − x_i[t_i]]; its gradient per row is
//! (softmax(x_i) − onehot(t_i)) / N. On a GPU the same is composed from device kernels
//! (`cross_entropy/cuda.rs`).

#[cfg(feature = "cuda")]
mod cuda;

use super::super::{placement, Placement};
use crate::autograd::record;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{DType, Element, Tensor};
#[allow(unused_imports)]
use num_traits::{Float as _, One, Zero};

/// `logits: [N, C]`, `targets: i64 [N]` with values in 0..C.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    if logits.rank() != 2 {
        return Err(Error::shape(OP, format!("logits must be [N, C], got {:?}", logits.shape())));
    }
    let (n, c) = (logits.shape()[0], logits.shape()[1]);
    if targets.dtype() != DType::I64 {
        return Err(Error::dtype(OP, format!("targets must be i64 class indices, got {}", targets.dtype())));
    }
    if targets.shape() != [n] {
        return Err(Error::shape(
            OP,
            format!("targets must be [{n}] (one per row of logits), got {:?}", targets.shape()),
        ));
    }
    if n == 0 {
        return Err(Error::shape(OP, "empty batch"));
    }
    match placement(OP, &[logits, targets])? {
        Placement::Cpu => {}
        #[cfg(feature = "cuda")]
        Placement::Cuda => {
            let (loss, grad) = cuda::loss_and_grad(logits, targets)?;
            return Ok(record(OP, &[logits], loss, move |g, _| Ok(vec![Some(grad.mul(g)?)])));
        }
    }
    let t = targets.to_vec::<i64>()?;
    if let Some(bad) = t.iter().find(|&&v| v < 0 || v as usize >= c) {
        return Err(Error::index(OP, format!("target {bad} out of range for {c} classes")));
    }
    let logp = crate::autograd::no_grad(|| logits.detach().log_softmax(-1))?;
    let (loss, grad) = float_dispatch!(OP, logits.dtype(), T => {
        let lp = logp.host_data::<T>()?;
        let loss = -t.iter().enumerate().map(|(i, &k)| lp[i * c + k as usize].as_f64()).sum::<f64>() / n as f64;
        let mut d: Vec<T> = lp.iter().map(|&v| v.exp() / T::of_f64(n as f64)).collect();
        for (i, &k) in t.iter().enumerate() {
            d[i * c + k as usize] = d[i * c + k as usize] - T::of_f64(1.0 / n as f64);
        }
        (Tensor::full(&[], loss, logits.dtype())?, Tensor::from_vec(d, &[n, c])?)
    });
    Ok(record(OP, &[logits], loss, move |g, _| Ok(vec![Some(grad.mul(g)?)])))
}
