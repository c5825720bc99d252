//! The CUDA backend (feature `cuda`): device memory, kernel launches and the hand-written
//! kernels of `kernels/*.cu`, each with a typed launcher here and a parity test against
//! the CPU reference op (tests/cuda_parity.rs).
//!
//! - [`devices`]: the `Gpu` behind each `Device::Cuda(ordinal)` tensor (or the emulator);
//! - [`Gpu`]: a device handle: a real GPU through the CUDA driver ([`Gpu::open`]), or the
//!   CPU emulator of the same kernels ([`Gpu::emulated`]) that runs them where there is no GPU;
//! - [`DeviceBuffer`]: typed device memory from the caching allocator (`allocator.rs`);
//! - [`Gpu::launch`] with [`LaunchConfig`] and [`Arg`]s: the untyped launch both share;
//! - [`gemm`]: cuBLAS GEMM;
//! - [`kernels`]: one module per kernel file, the typed entry points the rest of the crate calls.

mod allocator;
mod buffer;
mod determinism;
pub mod devices;
mod driver;
mod emulator;
pub mod gemm;
pub(crate) mod gpu;
pub mod kernels;
mod kernels_table;
mod launch;
pub mod launch_check;

pub use allocator::MemoryStats;
pub use buffer::{DeviceBuffer, DeviceElement};
pub use determinism::{deterministic, set_deterministic};
pub use emulator::{block_order_seed, set_block_order_seed};
pub use gemm::{gemm, GemmElement, GemmShape};
pub use gpu::Gpu;
pub use kernels_table::{KernelModule, KernelSignature, MODULES, SIGNATURES};
pub use launch::{Arg, LaunchConfig};
