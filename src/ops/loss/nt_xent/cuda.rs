//! NT-Xent on the GPU: the fused kernels of kernels/nt_xent.cu (row normalisation, one
//! S = ẑẑᵀ GEMM, a stable log-sum-exp pass that turns S into D in place, a fixed-order mean;
//! backward: two GEMMs with D and the normalisation's gradient). Same math as the CPU op.

use crate::autograd::{needs_grad, record};
use crate::backend::cuda::kernels::nt_xent::NtXent;
use crate::backend::cuda::kernels::KernelFloat;
use crate::backend::cuda::Gpu;
use crate::error::{Error, Result};
use crate::kernel_dispatch;
use crate::ops::cuda_support::{cast, gpu_of, row_major, wrap};
use crate::tensor::{DeviceStorageElement, Tensor};

use super::OP;

/// The loss of `z: [2N, D]` (shape and temperature checked by the op), recorded on the tape.
pub(super) fn nt_xent(z: &Tensor, two_n: usize, d: usize, tau: f64) -> Result<Tensor> {
    let (gpu, ordinal) = gpu_of(OP, z)?;
    kernel_dispatch!(OP, z.dtype(), T => run::<T>(&gpu, ordinal, z, two_n, d, tau))
}

fn run<T: KernelFloat + DeviceStorageElement>(
    gpu: &Gpu,
    ordinal: usize,
    z: &Tensor,
    two_n: usize,
    d: usize,
    tau: f64,
) -> Result<Tensor> {
    let zr = row_major(z)?;
    // Without a gradient to come, the forward frees the 2N×2N matrix before returning.
    let want_grad = needs_grad(&[z]);
    let (loss, saved) =
        NtXent::forward_on_device::<T>(gpu, &*zr.cuda_slice::<T>(OP)?, two_n / 2, d, tau as f32, want_grad)?;
    // The kernels compute the loss in f32 (the design's "loss in f32"); a bf16 z gets a bf16 loss.
    let loss = cast(OP, &wrap(loss, &[], ordinal)?, z.dtype())?;
    Ok(record(OP, &[z], loss, move |g, _| {
        let saved =
            saved.ok_or_else(|| Error::Autograd("nt_xent: the forward pass saved nothing for backward".into()))?;
        // Unit upstream in the kernels, then one device multiply by g: reading the scalar g
        // on the host would wait for the GPU.
        let dz = wrap(NtXent::backward(saved, 1.0)?, &[two_n, d], ordinal)?;
        Ok(vec![Some(dz.mul(g)?)])
    }))
}
