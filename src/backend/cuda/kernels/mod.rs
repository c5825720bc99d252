//! Typed launchers, one module per `kernels/*.cu` file. Each checks its arguments (lengths,
//! shapes, dtype support) and returns an error instead of launching a kernel that would read
//! out of bounds; the kernels themselves trust what they are given.

pub mod attention;
pub mod batchnorm;
pub mod conv;
pub mod elementwise;
pub mod layernorm;
pub mod nt_xent;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod softmax;
pub mod tensor_core_probe;

use super::buffer::{DeviceBuffer, DeviceElement};
use crate::error::{Error, Result};

/// Storage types the float kernels are instantiated for; arithmetic is f32 inside.
pub trait KernelFloat: DeviceElement + super::GemmElement {
    /// The suffix of the exported kernel names: `layernorm_fwd_f32`, `layernorm_fwd_bf16`.
    const SUFFIX: &'static str;
}
impl KernelFloat for f32 {
    const SUFFIX: &'static str = "f32";
}
impl KernelFloat for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// `{base}_{suffix}`: the exported name of a kernel instantiated for `T`.
pub(crate) fn kernel_name<T: KernelFloat>(base: &str) -> String {
    format!("{base}_{}", T::SUFFIX)
}

/// Errors unless `buf` holds exactly `want` elements.
pub(crate) fn check_len<T: DeviceElement>(
    op: &'static str,
    what: &str,
    buf: &DeviceBuffer<T>,
    want: usize,
) -> Result<()> {
    if buf.len() != want {
        return Err(Error::shape(op, format!("{what} has {} elements, expected {want}", buf.len())));
    }
    Ok(())
}

/// Errors unless a count fits the kernels' `int` parameters.
pub(crate) fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} exceeds the kernel's 32-bit limit")))
}
