//! Scaled dot-product attention: O = softmax(Q·Kᵀ·scale + mask)·V.
//!
//! One recorded op. Forward keeps the attention probabilities P for backward:
//!   dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),
//!   dQ = dS·K·scale,  dK = dSᵀ·Q·scale.
//! (A fused, flash-attention style kernel would recompute P from a saved
//! log-sum-exp instead of storing it; here clarity wins.) A row whose every
//! key is masked gets P = 0: its output and gradients are zero rather than NaN.
//!
//! On a GPU, under bf16 autocast (`ops::autocast`) or with bf16 tensors, the op runs in the
//! fused FlashAttention-2 kernels, which do recompute P (`attention/cuda.rs`); f32 tensors
//! outside autocast take the composition below, in f32 on the device (cuBLAS products and the
//! softmax kernel), as PyTorch's math backend does: the kernels have no f32 form.

#[cfg(feature = "cuda")]
mod cuda;
mod packed;

pub use packed::{multi_head_attention, multi_head_attention_composed};

use super::{autocast, placement, Placement};
use crate::autograd::{no_grad, record};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// `q: [..., L, D]`, `k: [..., S, D]`, `v: [..., S, Dv]` with equal leading axes
/// (e.g. [batch, heads]). `mask` broadcasts to `[..., L, S]`: nonzero = may attend.
/// `scale` defaults to 1/√D.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f64>,
) -> Result<Tensor> {
    const OP: &str = "scaled_dot_product_attention";
    let r = q.rank();
    if r < 2 || k.rank() != r || v.rank() != r {
        return Err(Error::shape(
            OP,
            format!("q, k, v must have the same rank >= 2, got {:?}, {:?}, {:?}", q.shape(), k.shape(), v.shape()),
        ));
    }
    let lead = &q.shape()[..r - 2];
    let (l, d) = (q.shape()[r - 2], q.shape()[r - 1]);
    let (s, dk) = (k.shape()[r - 2], k.shape()[r - 1]);
    if &k.shape()[..r - 2] != lead || &v.shape()[..r - 2] != lead || dk != d || v.shape()[r - 2] != s {
        return Err(Error::shape(
            OP,
            format!(
                "q {:?}, k {:?}, v {:?} do not fit [.., L, D], [.., S, D], [.., S, Dv]",
                q.shape(),
                k.shape(),
                v.shape()
            ),
        ));
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return Err(Error::dtype(OP, "q, k and v must share a dtype"));
    }
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut inputs = vec![q, k, v];
    inputs.extend(mask);
    let bf16_autocast = autocast::is_autocast_enabled();
    match placement(OP, &inputs)? {
        Placement::Cpu => {}
        #[cfg(feature = "cuda")]
        Placement::Cuda => {
            if mask.is_some() {
                return Err(cuda::mask_error());
            }
            if cuda::fused(q.dtype(), bf16_autocast) {
                let (out, saved) = cuda::forward(q, k, v, scale)?;
                return Ok(record(OP, &[q, k, v], out, move |g, needs| {
                    let [dq, dk, dv] = cuda::backward(g, saved)?;
                    Ok(vec![needs[0].then_some(dq), needs[1].then_some(dk), needs[2].then_some(dv)])
                }));
            }
            // f32 outside autocast: the composition below, on the device.
        }
    }
    let mut score_shape = lead.to_vec();
    score_shape.extend([l, s]);
    // 0 where attending is allowed, −∞ where masked, kept at the mask's own
    // (often much smaller) shape: adding it to the scores broadcasts.
    let additive_mask = match mask {
        None => None,
        Some(m) => {
            if m.layout().broadcast_to(OP, &score_shape).is_err() {
                return Err(Error::shape(
                    OP,
                    format!("mask {:?} does not broadcast to the score shape {score_shape:?}", m.shape()),
                ));
            }
            let allowed = no_grad(|| m.detach().to_dtype(DType::F64))?;
            Some(allowed.map_f64(|a| if a != 0.0 { 0.0 } else { f64::NEG_INFINITY })?.to_dtype(q.dtype())?)
        }
    };
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let (out, p) = no_grad(|| -> Result<(Tensor, Tensor)> {
        let mut scores = qd.matmul(&kd.t()?)?.mul_scalar(scale)?;
        if let Some(m) = &additive_mask {
            scores = scores.add(m)?;
        }
        let p = scores.softmax(-1)?;
        Ok((p.matmul(&vd)?, p))
    })?;
    Ok(record(OP, &[q, k, v], out, move |g, needs| {
        // In the forward's autocast mode (it only matters for the products on a GPU).
        autocast::autocast(bf16_autocast, || {
            let dp = g.matmul(&vd.t()?)?;
            let ds = p.mul(&dp.sub(&dp.mul(&p)?.sum(&[-1], true)?)?)?;
            Ok(vec![
                if needs[0] { Some(ds.matmul(&kd)?.mul_scalar(scale)?) } else { None },
                if needs[1] { Some(ds.t()?.matmul(&qd)?.mul_scalar(scale)?) } else { None },
                if needs[2] { Some(p.t()?.matmul(g)?) } else { None },
            ])
        })
    }))
}
