//! Shape ops on the GPU: views cost nothing anywhere; only materialising one does.

use crate::backend::cuda::kernels::elementwise::copy_strided;
use crate::error::Result;
use crate::kernel_dispatch;
use crate::ops::cuda_support::{gpu_of, strided_slice, wrap};
use crate::tensor::Tensor;

/// A row-major copy of a (possibly strided) device tensor.
pub(super) fn contiguous_copy(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "contiguous";
    let (gpu, ordinal) = gpu_of(OP, x)?;
    kernel_dispatch!(OP, x.dtype(), T => {
        let n = x.numel();
        let mut y = gpu.alloc::<T>(n)?;
        if n > 0 {
            copy_strided(&gpu, &*strided_slice::<T>(OP, x)?, x.strides(), x.shape(), &mut y)?;
        }
        wrap(y, x.shape(), ordinal)
    })
}
