//! Differentiable ops, one file per family, forward and backward together.
//!
//! Methods on [`Tensor`](crate::tensor::Tensor) for the unary/binary/shape ops;
//! free functions here for ops with several inputs or options.
//! [`registry`] lists them all; the gradcheck suite checks each one.

pub mod activations;
pub mod attention;
pub mod autocast;
pub mod batchnorm;
pub mod conv2d;
#[cfg(feature = "cuda")]
pub mod cuda_support;
pub mod dropout;
pub mod elementwise;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod normalize;
pub mod pool;
pub mod reduce;
pub mod registry;
pub mod shape;
pub mod softmax;

pub use elementwise::sum_to_shape;

use crate::error::Result;
use crate::tensor::Tensor;

/// Which implementation of an op runs: the one for the device its inputs are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

/// Where `op` runs for these inputs; an error if they are on different devices.
pub(crate) fn placement(op: &'static str, inputs: &[&Tensor]) -> Result<Placement> {
    #[cfg(feature = "cuda")]
    {
        match cuda_support::common_device(op, inputs)? {
            crate::backend::Device::Cpu => Ok(Placement::Cpu),
            crate::backend::Device::Cuda(_) => Ok(Placement::Cuda),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        // Without the CUDA backend no tensor can be anywhere else.
        let _ = (op, inputs);
        Ok(Placement::Cpu)
    }
}

/// The error of an op that has no CUDA implementation yet.
#[cfg(feature = "cuda")]
pub(crate) fn not_on_cuda(op: &'static str) -> crate::error::Error {
    crate::error::Error::Device {
        op,
        msg: "this op has no CUDA implementation yet; run it on the CPU (to_device(Device::Cpu))".into(),
    }
}
