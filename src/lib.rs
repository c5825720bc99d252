//! simclr: SimCLR for video, from scratch.
//!
//! Layers, bottom up:
//! - [`tensor`]: n-d arrays (shape, strides, dtype, device), views, safetensors I/O;
//! - [`backend`]: the kernels a device provides (CPU reference backend);
//! - [`autograd`]: the tape that records ops and runs them backwards;
//! - [`ops`]: every differentiable op, forward and backward side by side;
//! - [`nn`], [`optim`]: modules and optimisers built on the ops.

pub mod atomic_file;
pub mod autograd;
pub mod backend;
pub mod data;
pub mod error;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod tensor;

pub use backend::Device;
pub use error::{Error, Result};
pub use rng::Rng;
pub use tensor::{DType, Tensor};
