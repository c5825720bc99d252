//! Cross-entropy on the GPU, composed from device kernels: log_softmax (kernels/softmax.cu),
//! a gather of the target log-probabilities, a sum; the gradient (softmax − onehot)/N is
//! exp(log_softmax)/N minus the one-hot scatter of 1/N (gather's backward kernel).

use crate::autograd::no_grad;
use crate::backend::cuda::kernels::elementwise::fill;
use crate::error::Result;
use crate::kernel_dispatch;
use crate::ops::cuda_support::{gpu_of, wrap};
use crate::ops::shape::cuda::{check_gather_index, gather, gather_backward};
use crate::tensor::Tensor;

const OP: &str = "cross_entropy";

/// The mean loss and its gradient with respect to `logits: [N, C]` (shapes checked by the op).
/// The targets are downloaded once to check their range (a wait for the GPU: cross-entropy
/// serves the linear probes, not the training step).
pub(super) fn loss_and_grad(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (gpu, ordinal) = gpu_of(OP, logits)?;
    let (n, c) = (logits.shape()[0], logits.shape()[1]);
    let index = check_gather_index(&targets.detach().reshape(&[n, 1])?, c)?;
    no_grad(|| {
        let logp = logits.detach().log_softmax(-1)?;
        let loss = gather(&logp, 1, &index)?.sum_all()?.mul_scalar(-1.0 / n as f64)?;
        // 1/N at each row's target class, 0 elsewhere.
        let share = kernel_dispatch!(OP, logits.dtype(), T => {
            let mut b = gpu.alloc::<T>(n)?;
            fill(&gpu, &mut b, 1.0 / n as f32)?;
            wrap(b, &[n, 1], ordinal)?
        });
        let onehot = gather_backward(&share, 1, &index, &[n, c])?;
        let grad = logp.exp()?.mul_scalar(1.0 / n as f64)?.sub(&onehot)?;
        Ok((loss, grad))
    })
}
