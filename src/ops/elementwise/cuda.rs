//! Elementwise arithmetic and pointwise functions on the GPU (kernels/elementwise.cu).
//!
//! The ops' backward closures are written with tensor ops, which dispatch on the device
//! themselves; what is here is the forward kernels, the fused pointwise gradients
//! (`dy·f′`) and the broadcast gradient `sum_to_shape`.
//!
//! Dense views (a permutation of a row-major buffer: channels-last images, transposes of
//! whole tensors) are processed as flat buffers and the result keeps their strides, so a
//! chain conv → batch norm → ReLU on channels-last data never copies to row-major.

use crate::backend::cuda::kernels::elementwise as k;
use crate::backend::cuda::kernels::elementwise::{Binary, Unary, UnaryGrad};
use crate::error::Result;
use crate::kernel_dispatch;
use crate::ops::cuda_support::{cast, dense_result, dense_slice, gpu_of, is_dense, row_major, strided_slice, wrap};
use crate::tensor::layout::broadcast_shapes;
use crate::tensor::{DType, Tensor};

/// a ∘ b with broadcasting; views are read through their strides (no copies).
pub(crate) fn binary(op: &'static str, kind: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (gpu, ordinal) = gpu_of(op, a)?;
    let shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let (la, lb) = (a.layout().broadcast_to(op, &shape)?, b.layout().broadcast_to(op, &shape)?);
    kernel_dispatch!(op, a.dtype(), T => {
        let mut y = gpu.alloc::<T>(la.numel())?;
        if a.shape() == b.shape() && a.strides() == b.strides() && is_dense(a.layout()) {
            k::binary(&gpu, kind, &*dense_slice::<T>(op, a)?, &*dense_slice::<T>(op, b)?, &mut y)?;
            return Ok(dense_result(wrap(y, &shape, ordinal)?, a));
        }
        if la.is_contiguous() && lb.is_contiguous() {
            k::binary(&gpu, kind, &*a.cuda_slice::<T>(op)?, &*b.cuda_slice::<T>(op)?, &mut y)?;
        } else if la.numel() > 0 {
            let (sa, sb) = (strided_slice::<T>(op, a)?, strided_slice::<T>(op, b)?);
            k::binary_strided(&gpu, kind, &sa, &la.strides, &sb, &lb.strides, &shape, &mut y)?;
        }
        wrap(y, &shape, ordinal)
    })
}

/// f(x) elementwise.
pub(crate) fn unary(op: &'static str, kind: Unary, x: &Tensor) -> Result<Tensor> {
    let (gpu, ordinal) = gpu_of(op, x)?;
    let x = if is_dense(x.layout()) { x.clone() } else { row_major(x)? };
    kernel_dispatch!(op, x.dtype(), T => {
        let mut y = gpu.alloc::<T>(x.numel())?;
        k::unary(&gpu, kind, &*dense_slice::<T>(op, &x)?, &mut y)?;
        Ok(dense_result(wrap(y, x.shape(), ordinal)?, &x))
    })
}

/// dy·f′ elementwise, f′ from `saved` (the op's input or output, as `kind.saved()` says).
pub(crate) fn unary_grad(op: &'static str, kind: UnaryGrad, dy: &Tensor, saved: &Tensor) -> Result<Tensor> {
    let (gpu, ordinal) = gpu_of(op, dy)?;
    // Same dense layout (the usual case: dy has the strides of the op's output): flat.
    let same = dy.strides() == saved.strides() && is_dense(dy.layout());
    let (dy, saved) = if same { (dy.clone(), saved.clone()) } else { (row_major(dy)?, row_major(saved)?) };
    kernel_dispatch!(op, dy.dtype(), T => {
        let mut dx = gpu.alloc::<T>(dy.numel())?;
        k::unary_backward(&gpu, kind, &*dense_slice::<T>(op, &dy)?, &*dense_slice::<T>(op, &saved)?, &mut dx)?;
        Ok(dense_result(wrap(dx, dy.shape(), ordinal)?, &dy))
    })
}

/// a·x + b elementwise (add_scalar, mul_scalar).
pub(crate) fn scale_shift(op: &'static str, x: &Tensor, a: f64, b: f64) -> Result<Tensor> {
    let (gpu, ordinal) = gpu_of(op, x)?;
    let x = if is_dense(x.layout()) { x.clone() } else { row_major(x)? };
    kernel_dispatch!(op, x.dtype(), T => {
        let mut y = gpu.alloc::<T>(x.numel())?;
        k::scale_shift(&gpu, &*dense_slice::<T>(op, &x)?, a as f32, b as f32, &mut y)?;
        Ok(dense_result(wrap(y, x.shape(), ordinal)?, &x))
    })
}

/// Sums `g` over the axes broadcasting expanded, giving `shape` (summed in f32).
pub(crate) fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "sum_to_shape";
    let (gpu, ordinal) = gpu_of(OP, g)?;
    let g = row_major(g)?;
    let mut dst = gpu.alloc::<f32>(shape.iter().product())?;
    kernel_dispatch!(OP, g.dtype(), T => k::sum_to_shape(&gpu, &*g.cuda_slice::<T>(OP)?, g.shape(), shape, &mut dst)?);
    let summed = wrap(dst, shape, ordinal)?;
    if g.dtype() == DType::F32 {
        Ok(summed)
    } else {
        cast(OP, &summed, g.dtype())
    }
}
