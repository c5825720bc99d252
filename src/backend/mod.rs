//! Devices and their kernels.
//!
//! `cpu` is the reference backend: every op has a CPU kernel, in f32 and f64,
//! and the gradcheck suite runs against it. A CUDA backend (feature `cuda`)
//! will implement the same kernel surface and be parity-tested against this one.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal. Not usable in this build: see `Tensor::to_device`.
    Cuda(usize),
}
