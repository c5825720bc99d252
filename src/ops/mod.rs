//! Differentiable ops, one file per family, forward and backward together.
//!
//! Methods on [`Tensor`](crate::tensor::Tensor) for the unary/binary/shape ops;
//! free functions here for ops with several inputs or options.
//! [`registry`] lists them all; the gradcheck suite checks each one.

pub mod activations;
pub mod attention;
pub mod batchnorm;
pub mod conv2d;
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
