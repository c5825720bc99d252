//! What every op's CUDA path shares (feature `cuda`): finding the device of its inputs,
//! choosing the kernel instantiation for a dtype, and wrapping results as tensors.
//!
//! An op runs where its inputs are: all on the CPU → the CPU backend; all on one GPU → its
//! `cuda.rs` beside the op (e.g. `ops/elementwise/cuda.rs`); anything else is an error, as
//! in PyTorch — nothing is moved between devices behind the caller's back.

use crate::backend::cuda::{DeviceBuffer, Gpu};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::{DeviceSlice, DeviceStorageElement, Tensor};

/// The one device all `inputs` are on; an error naming `op` if they disagree.
pub fn common_device(op: &'static str, inputs: &[&Tensor]) -> Result<Device> {
    let first = inputs.first().map_or(Device::Cpu, |t| t.device());
    if let Some(other) = inputs.iter().find(|t| t.device() != first) {
        return Err(Error::Device {
            op,
            msg: format!(
                "expected every input on the same device, got {first:?} and {:?} (move them with to_device)",
                other.device()
            ),
        });
    }
    Ok(first)
}

/// The GPU handle of a device tensor (every input of a CUDA path has one).
pub fn gpu_of(op: &'static str, t: &Tensor) -> Result<(Gpu, usize)> {
    t.gpu().ok_or_else(|| Error::Device { op, msg: "expected a CUDA tensor, got a CPU one".into() })
}

/// A new tensor of `shape` on `ordinal` owning `buf`.
pub fn wrap<T: DeviceStorageElement>(buf: DeviceBuffer<T>, shape: &[usize], ordinal: usize) -> Result<Tensor> {
    Tensor::from_device_buffer(buf, shape, ordinal)
}

/// Runs `$body` with `$T` the storage type of a dtype the float kernels are instantiated
/// for (f32, bf16); an error naming `$op` for any other (f64 stays on the CPU: it is the
/// gradcheck dtype).
#[macro_export]
macro_rules! kernel_dispatch {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            $crate::tensor::DType::BF16 => {
                #[allow(dead_code)]
                type $T = half::bf16;
                $body
            }
            d => {
                return Err($crate::error::Error::dtype(
                    $op,
                    format!("the CUDA kernels take f32 or bf16 tensors, got {d} (f64 runs on the CPU backend)"),
                ))
            }
        }
    };
}

/// The elements of a device tensor from its view's offset to the end of its storage: with
/// the view's strides, what a strided kernel (`binary_strided`, `copy_strided`) reads.
pub fn strided_slice<T: DeviceStorageElement>(op: &'static str, t: &Tensor) -> Result<DeviceSlice<T>> {
    let storage = t.device_storage(op)?;
    let (offset, dtype) = (t.layout().offset, storage.dtype());
    let len = storage.len() - offset;
    DeviceSlice::new(storage, offset, len)
        .ok_or_else(|| Error::dtype(op, format!("tensor is {dtype}, the kernel wants {}", T::DTYPE)))
}

/// A contiguous version of a device tensor (itself if it already is), cut from the graph:
/// for CUDA paths whose kernels read row-major data.
pub fn row_major(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        Ok(t.detach())
    } else {
        t.contiguous_copy()
    }
}

/// `t` (on a GPU) converted to `dtype`: f32 ↔ bf16 on the device, keeping a dense view's
/// strides (a transposed weight stays a transposed view); the same tensor when it already
/// has that dtype.
pub fn cast(op: &'static str, t: &Tensor, dtype: crate::tensor::DType) -> Result<Tensor> {
    use crate::backend::cuda::kernels::elementwise::{cast_bf16_to_f32, cast_f32_to_bf16};
    use crate::tensor::DType;
    if t.dtype() == dtype {
        return Ok(t.clone());
    }
    let (gpu, ordinal) = gpu_of(op, t)?;
    let t = if is_dense(t.layout()) { t.clone() } else { row_major(t)? };
    let converted = match (t.dtype(), dtype) {
        (DType::F32, DType::BF16) => {
            let mut y = gpu.alloc::<half::bf16>(t.numel())?;
            cast_f32_to_bf16(&gpu, &*dense_slice::<f32>(op, &t)?, &mut y)?;
            wrap(y, t.shape(), ordinal)?
        }
        (DType::BF16, DType::F32) => {
            let mut y = gpu.alloc::<f32>(t.numel())?;
            cast_bf16_to_f32(&gpu, &*dense_slice::<half::bf16>(op, &t)?, &mut y)?;
            wrap(y, t.shape(), ordinal)?
        }
        (from, to) => {
            return Err(Error::dtype(op, format!("no CUDA conversion from {from} to {to} (f32 ↔ bf16 only)")))
        }
    };
    Ok(dense_result(converted, &t))
}

/// True when the view covers `numel` consecutive storage elements in some axis order (a
/// permutation of a row-major tensor, e.g. channels-last images): elementwise kernels can
/// then run over the raw elements and give the result the same strides, with no copy.
pub fn is_dense(l: &crate::tensor::Layout) -> bool {
    let mut dims: Vec<(usize, usize)> =
        l.shape.iter().copied().zip(l.strides.iter().copied()).filter(|d| d.0 != 1).collect();
    dims.sort_by(|a, b| b.1.cmp(&a.1));
    let mut expected = 1;
    for &(size, stride) in dims.iter().rev() {
        if stride != expected {
            return false;
        }
        expected *= size;
    }
    true
}

/// The strides a dense result should get: those of `like` (size-1 axes normalised).
pub fn dense_result(buf_tensor: Tensor, like: &Tensor) -> Tensor {
    let layout = crate::tensor::Layout { shape: like.shape().to_vec(), strides: like.strides().to_vec(), offset: 0 };
    buf_tensor.view_with_layout(layout)
}

/// The `numel` elements of a dense device view, from its offset.
pub fn dense_slice<T: DeviceStorageElement>(op: &'static str, t: &Tensor) -> Result<DeviceSlice<T>> {
    let storage = t.device_storage(op)?;
    let dtype = storage.dtype();
    DeviceSlice::new(storage, t.layout().offset, t.numel())
        .ok_or_else(|| Error::dtype(op, format!("tensor is {dtype}, the kernel wants {}", T::DTYPE)))
}
