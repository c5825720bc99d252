//! L2 normalisation and the cosine-similarity matrix.
//!
//! y = x / max(‖x‖, eps) along an axis (as PyTorch's `F.normalize`).
//! Where ‖x‖ > eps: dy/dx = (I − y yᵀ)/‖x‖, so dx = (g − y·⟨g, y⟩)/‖x‖ — the
//! gradient is the part of g orthogonal to y: scaling x does not change y.

use crate::autograd::{no_grad, record};
use crate::error::{Error, Result};
use crate::tensor::layout::resolve_axis;
use crate::tensor::Tensor;

impl Tensor {
    /// x / max(‖x‖₂, eps) along `axis`.
    pub fn l2_normalize(&self, axis: isize, eps: f64) -> Result<Tensor> {
        let ax = resolve_axis("l2_normalize", axis, self.rank())? as isize;
        if !(eps > 0.0) {
            return Err(Error::invalid("l2_normalize", format!("eps must be > 0, got {eps}")));
        }
        let x = self.detach();
        let (out, norm) = no_grad(|| -> Result<(Tensor, Tensor)> {
            let norm = x.mul(&x)?.sum(&[ax], true)?.sqrt()?.map_f64(|v| v.max(eps))?;
            Ok((x.div(&norm)?, norm))
        })?;
        let y = out.clone();
        Ok(record("l2_normalize", &[self], out, move |g, _| {
            // Below eps the norm is the constant eps, so the map is linear: dx = g/eps.
            let clamped = norm.map_f64(|v| if v > eps { 1.0 } else { 0.0 })?;
            let radial = y.mul(&g.mul(&y)?.sum(&[ax], true)?)?.mul(&clamped)?;
            Ok(vec![Some(g.sub(&radial)?.div(&norm)?)])
        }))
    }
}

/// Cosine similarity of every row of `a: [N, D]` with every row of `b: [M, D]`: [N, M].
/// Composite: normalise rows, then one matrix product.
pub fn cosine_similarity(a: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if a.rank() != 2 || b.rank() != 2 || a.shape()[1] != b.shape()[1] {
        return Err(Error::shape(
            "cosine_similarity",
            format!("needs [N, D] and [M, D], got {:?} and {:?}", a.shape(), b.shape()),
        ));
    }
    a.l2_normalize(-1, eps)?.matmul(&b.l2_normalize(-1, eps)?.t()?)
}
