//! bf16 autocast: inside [`autocast`], matmul/linear and convolution (and on the GPU
//! attention) take f32 tensors, multiply in bf16 with f32 accumulation, and return f32.
//! Parameters stay f32 (the optimiser's master weights) and every other op — normalisations,
//! softmax, the loss — stays f32, as with PyTorch's `torch.autocast(dtype=torch.bfloat16)`.
//!
//! On a GPU the bf16 products run on the tensor cores. On the CPU, the GEMMs of matmul,
//! linear and the convolutions' GEMM schedules (im2col, channels-last) round their operands
//! to bf16 as they pack them and multiply with AVX512-BF16 (`backend/cpu/gemm_bf16.rs`);
//! [`cpu_gemm_precision`] refuses where the CPU lacks it. The CPU's direct and pixel-tap
//! convolution kernels (chosen where they beat the GEMMs) and attention stay f32.
//!
//! The mode is per thread, like `no_grad`. An op records the mode it ran under and its
//! backward uses the same one, whatever the mode is when `backward()` is called.

use crate::backend::cpu::gemm_bf16;
use crate::backend::cpu::matmul::GemmPrecision;
use crate::error::{Error, Result};
use crate::tensor::DType;
use std::cell::Cell;

thread_local! {
    static AUTOCAST: Cell<bool> = const { Cell::new(false) };
}

/// True inside [`autocast`]`(true, …)` on this thread.
pub fn is_autocast_enabled() -> bool {
    AUTOCAST.with(|a| a.get())
}

/// Runs `f` with bf16 autocast on or off (restoring the previous mode afterwards, also on panic).
pub fn autocast<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(AUTOCAST.with(|a| a.replace(enabled)));
    f()
}

/// How a CPU GEMM of `dtype` operands multiplies when autocast is `enabled`: f32 in bf16
/// (an error naming the missing instructions where this CPU has no AVX512-BF16), anything
/// else exactly.
pub fn cpu_gemm_precision(op: &'static str, enabled: bool, dtype: DType) -> Result<GemmPrecision> {
    if !enabled || dtype != DType::F32 {
        return Ok(GemmPrecision::Exact);
    }
    if !gemm_bf16::supported() {
        return Err(Error::invalid(op, BF16_CPU_UNSUPPORTED));
    }
    Ok(GemmPrecision::Bf16)
}

/// Why bf16 on this CPU is refused.
pub const BF16_CPU_UNSUPPORTED: &str = "bf16 on the CPU needs AVX512-BF16 (Intel Cooper Lake / Sapphire Rapids \
     or later, AMD Zen 4 or later), which this CPU lacks; use --precision f32, or auto (the default: f32 on the CPU)";
