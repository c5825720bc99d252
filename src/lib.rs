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
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod signals;
pub mod tensor;
pub mod train;

pub use backend::Device;
pub use error::{Error, Result};
pub use rng::Rng;
pub use tensor::{DType, Tensor};
