//! Matrix multiply (batched, broadcasting) and the linear layer.
//!
//! For C = A·B: ∂L/∂A = ∂L/∂C · Bᵀ and ∂L/∂B = Aᵀ · ∂L/∂C, summed over any
//! batch axes that were broadcast. Transposes are views, so backward does not
//! copy the operands.

#[cfg(feature = "cuda")]
mod cuda;

use super::{autocast, placement, Placement};
use crate::autograd::record;
use crate::backend::cpu::matmul::{matmul as matmul_kernel, matmul_plus_row};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::Tensor;
use autocast::cpu_gemm_precision;

use super::elementwise::{check_same_dtype, sum_to_shape};

/// a @ b on the device of the operands, outside the graph.
fn product(op: &'static str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match placement(op, &[a, b])? {
        Placement::Cpu => {
            let precision = cpu_gemm_precision(op, autocast::is_autocast_enabled(), a.dtype())?;
            Ok(float_dispatch!(op, a.dtype(), T => matmul_kernel::<T>(a, b, precision)?))
        }
        #[cfg(feature = "cuda")]
        Placement::Cuda => cuda::matmul(a, b, super::autocast::is_autocast_enabled()),
    }
}

/// `a @ b + row` (row [n] added to every output row), outside the graph. On the
/// CPU the row is the GEMM's starting value; on a GPU it is a broadcast add.
fn product_plus_row(op: &'static str, a: &Tensor, b: &Tensor, row: &Tensor) -> Result<Tensor> {
    match placement(op, &[a, b, row])? {
        Placement::Cpu => {
            let precision = cpu_gemm_precision(op, autocast::is_autocast_enabled(), a.dtype())?;
            Ok(float_dispatch!(op, a.dtype(), T => matmul_plus_row::<T>(a, b, Some(row), precision)?))
        }
        #[cfg(feature = "cuda")]
        Placement::Cuda => product(op, a, b)?.add(row),
    }
}

impl Tensor {
    /// `self @ other` for `[..., m, k] @ [..., k, n]`, batch axes broadcasting.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        check_same_dtype("matmul", self, other)?;
        let out = product("matmul", self, other)?;
        let (a, b) = (self.detach(), other.detach());
        let bf16 = autocast::is_autocast_enabled();
        Ok(record("matmul", &[self, other], out, move |g, needs| {
            autocast::autocast(bf16, || {
                Ok(vec![
                    if needs[0] { Some(sum_to_shape(&g.matmul(&b.t()?)?, a.shape())?) } else { None },
                    if needs[1] { Some(sum_to_shape(&a.t()?.matmul(g)?, b.shape())?) } else { None },
                ])
            })
        }))
    }
}

/// `y = x·Wᵀ + b` for `x: [..., in]`, `weight: [out, in]`, `bias: [out]`
/// (PyTorch's `nn.Linear` layout). One node, so backward is three GEMM-sized
/// steps: dx = dy·W, dW = dyᵀ·x (over all leading axes), db = Σ dy.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    if weight.rank() != 2 || x.rank() < 1 || x.shape()[x.rank() - 1] != weight.shape()[1] {
        return Err(Error::shape(
            OP,
            format!("input {:?} does not fit weight {:?} ([out, in])", x.shape(), weight.shape()),
        ));
    }
    check_same_dtype(OP, x, weight)?;
    let out_features = weight.shape()[0];
    if let Some(b) = bias {
        check_same_dtype(OP, x, b)?;
        if b.shape() != [out_features] {
            return Err(Error::shape(OP, format!("bias {:?} should be [{out_features}]", b.shape())));
        }
    }
    let in_features = weight.shape()[1];
    let rows = x.numel() / in_features.max(1);
    let x2 = x.detach().reshape(&[rows, in_features])?;
    let w = weight.detach();
    let y2 = match bias {
        None => product(OP, &x2, &w.t()?)?,
        Some(b) => product_plus_row(OP, &x2, &w.t()?, &b.detach())?,
    };
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().expect("rank >= 1") = out_features;
    let out = y2.reshape(&out_shape)?;
    let x_shape = x.shape().to_vec();
    let mut inputs = vec![x, weight];
    if let Some(b) = bias {
        inputs.push(b);
    }
    let bf16 = autocast::is_autocast_enabled();
    Ok(record(OP, &inputs, out, move |g, needs| {
        let g2 = g.reshape(&[rows, out_features])?;
        let (dx, dw) = autocast::autocast(bf16, || -> Result<_> {
            let dx = if needs[0] { Some(g2.matmul(&w)?.reshape(&x_shape)?) } else { None };
            let dw = if needs[1] { Some(g2.t()?.matmul(&x2)?) } else { None };
            Ok((dx, dw))
        })?;
        let mut grads = vec![dx, dw];
        if needs.len() == 3 {
            grads.push(if needs[2] { Some(g2.sum(&[0], false)?) } else { None });
        }
        Ok(grads)
    }))
}
