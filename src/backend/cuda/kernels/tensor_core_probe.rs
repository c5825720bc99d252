//! The one-warp self-check of the tensor-core primitives in kernels/mma.cuh
//! (kernels/tensor_core_probe.cu): a 16×16·16×16 product through `mma.sync` with fragments
//! built three ways (layout formulas, `ldmatrix`, `ldmatrix.trans`), plus `cp.async`'s
//! zero-fill. The parity tests run it on the GPU and on the emulator; agreement with a plain
//! matrix product on both is what lets the emulated convolution and attention tests stand
//! for the hardware.

use super::check_len;
use crate::backend::cuda::{DeviceBuffer, DeviceElement, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::Result;

/// Element types the tensor-core kernels take as input.
pub trait TensorCoreInput: DeviceElement {
    const SUFFIX: &'static str;
}
impl TensorCoreInput for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl TensorCoreInput for half::f16 {
    const SUFFIX: &'static str = "f16";
}

/// Floats the probe writes: three 16×16 products and 8 zero-filled floats.
pub const PROBE_OUTPUT_LEN: usize = 3 * 256 + 8;

/// Runs the probe on row-major `a` (16×16) and `b` (16×16, k×n); see kernels/tensor_core_probe.cu
/// for the layout of the [`PROBE_OUTPUT_LEN`] outputs.
pub fn tensor_core_probe<T: TensorCoreInput>(
    gpu: &Gpu,
    a: &DeviceBuffer<T>,
    b: &DeviceBuffer<T>,
    out: &mut DeviceBuffer<f32>,
) -> Result<()> {
    const OP: &str = "cuda tensor_core_probe";
    check_len(OP, "a", a, 256)?;
    check_len(OP, "b", b, 256)?;
    check_len(OP, "out", out, PROBE_OUTPUT_LEN)?;
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), shared_bytes: 0 };
    gpu.launch(&format!("tensor_core_probe_{}", T::SUFFIX), cfg, &cuda_args![a, b, out])
}
