//! L2 normalisation and the cosine-similarity matrix.
//!
//! y = x / max(‖x‖, eps) along an axis (as PyTorch's `F.normalize`).
//! Where ‖x‖ > eps: dy/dx = (I − y yᵀ)/‖x‖, so dx = (g − y·⟨g, y⟩)/‖x‖ — the
//! gradient is the part of g orthogonal to y: scaling x does not change y.
//! On a GPU the op is composed of device ops, with the norm floor (and its gradient mask)
//! from the `clamp_min` kernels of kernels/elementwise.cu.

use super::{placement, Placement};
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
        let (out, raw, norm) = no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
            let raw = x.mul(&x)?.sum(&[ax], true)?.sqrt()?;
            let norm = match placement("l2_normalize", &[&raw])? {
                Placement::Cpu => raw.map_f64(|v| v.max(eps))?,
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::clamp_min(&raw, eps)?,
            };
            Ok((x.div(&norm)?, raw, norm))
        })?;
        let y = out.clone();
        Ok(record("l2_normalize", &[self], out, move |g, _| {
            // Below eps the norm is the constant eps, so the map is linear: dx = g/eps. Which
            // rows were clamped is read from the unclamped norm: the clamped one holds eps
            // rounded to the dtype, which may compare above eps itself.
            let radial = match placement("l2_normalize", &[g])? {
                Placement::Cpu => {
                    let unclamped = raw.map_f64(|v| if v > eps { 1.0 } else { 0.0 })?;
                    y.mul(&g.mul(&y)?.sum(&[ax], true)?)?.mul(&unclamped)?
                }
                #[cfg(feature = "cuda")]
                Placement::Cuda => y.mul(&cuda::where_above(&g.mul(&y)?.sum(&[ax], true)?, &raw, eps)?)?,
            };
            Ok(vec![Some(g.sub(&radial)?.div(&norm)?)])
        }))
    }
}

/// The norm floor on the GPU (the rest of `l2_normalize` is composed of device ops).
#[cfg(feature = "cuda")]
mod cuda {
    use crate::backend::cuda::kernels::elementwise as k;
    use crate::error::Result;
    use crate::kernel_dispatch;
    use crate::ops::cuda_support::{gpu_of, row_major, wrap};
    use crate::tensor::Tensor;

    const OP: &str = "l2_normalize";

    /// max(t, lo) elementwise.
    pub(super) fn clamp_min(t: &Tensor, lo: f64) -> Result<Tensor> {
        let (gpu, ordinal) = gpu_of(OP, t)?;
        let t = row_major(t)?;
        kernel_dispatch!(OP, t.dtype(), T => {
            let mut y = gpu.alloc::<T>(t.numel())?;
            k::clamp_min(&gpu, &*t.cuda_slice::<T>(OP)?, lo as f32, &mut y)?;
            wrap(y, t.shape(), ordinal)
        })
    }

    /// `g` where `t > lo`, 0 elsewhere (`g` and `t` of one shape): the norms that were not clamped.
    pub(super) fn where_above(g: &Tensor, t: &Tensor, lo: f64) -> Result<Tensor> {
        let (gpu, ordinal) = gpu_of(OP, g)?;
        let (g, t) = (row_major(g)?, row_major(t)?);
        kernel_dispatch!(OP, g.dtype(), T => {
            let mut dx = gpu.alloc::<T>(g.numel())?;
            k::clamp_min_backward(&gpu, &*g.cuda_slice::<T>(OP)?, &*t.cuda_slice::<T>(OP)?, lo as f32, &mut dx)?;
            wrap(dx, g.shape(), ordinal)
        })
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
