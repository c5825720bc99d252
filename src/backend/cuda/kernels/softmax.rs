//! softmax and log_softmax over the last axis of a `[rows, cols]` matrix (kernels/softmax.cu),
//! forward and backward, f32 and bf16 storage with f32 arithmetic.
//!
//! Forward, with m = maxⱼ xⱼ and s = Σⱼ exp(xⱼ − m) (max-subtracted, so ±1000 inputs are exact):
//! softmax yⱼ = exp(xⱼ − m)/s, log_softmax yⱼ = (xⱼ − m) − ln s. A row of −∞ gives zeros
//! under softmax (attention that may attend to nothing), as the CPU op.
//! Backward from the forward output y and the upstream gradient dy:
//! softmax dxⱼ = yⱼ(dyⱼ − Σₖ dyₖyₖ), log_softmax dxⱼ = dyⱼ − exp(yⱼ)·Σₖ dyₖ.
//!
//! The kernels are memory-bound; the organisation aims to read each row once:
//! - rows of ≤ [`WARP_MAX_COLS`] get one warp each (4 rows per block) and live in registers
//!   (up to 32 values per lane, loaded in 16-byte packs when the row length allows), so the
//!   max, the sum and the output pass need a single read and warp shuffles only;
//! - longer rows get one block each. Forward copies the row into shared memory (as f32) while
//!   taking the max, when it fits in [`CACHE_MAX_COLS`] floats (47 KiB: with the kernel's own
//!   scratch, within the 48 KiB of shared memory every GPU grants without opt-in): one read of
//!   global memory. Longer rows use the
//!   online form — a running (max, sum) rescaled as the max grows, merged across the block —
//!   and a second read to write: two reads instead of three. Backward reads dy and y, reduces,
//!   and reads them again to write (the second read of a just-read row mostly hits L2).

use super::elementwise::numel;
use super::{as_i32, check_len, kernel_name, KernelFloat};
use crate::backend::cuda::{DeviceBuffer, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::Result;

/// Rows up to this long take the warp-per-row kernels (the row in registers).
pub const WARP_MAX_COLS: usize = 1024;
/// Longest row the block forward kernel caches in shared memory: 47 KiB of f32, because a
/// block may use 48 KiB in all without opting in (cudaFuncSetAttribute), and the kernel's
/// static reduction scratch (512 B) counts against the same limit.
pub const CACHE_MAX_COLS: usize = 47 * 1024 / 4;
/// Rows per block of the warp kernels (must match WARP_ROWS in softmax.cu).
const WARP_ROWS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Softmax,
    LogSoftmax,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Softmax => "softmax",
            Kind::LogSoftmax => "log_softmax",
        }
    }
}

/// Threads of the block-per-row kernels: each thread handles 1–8 packs of its row.
fn block_threads(cols: usize) -> u32 {
    match cols {
        c if c <= 8192 => 256,
        c if c <= 16384 => 512,
        _ => 1024,
    }
}

fn forward<T: KernelFloat>(
    gpu: &Gpu,
    kind: Kind,
    x: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = match kind {
        Kind::Softmax => "cuda softmax",
        Kind::LogSoftmax => "cuda log_softmax",
    };
    let n = numel(name, &[rows, cols])?;
    check_len(name, "x", x, n)?;
    check_len(name, "y", y, n)?;
    let (rows_i, cols_i) = (as_i32(name, "rows", rows)?, as_i32(name, "cols", cols)?);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if cols <= WARP_MAX_COLS {
        let cfg = LaunchConfig::per_row(rows.div_ceil(WARP_ROWS), (32 * WARP_ROWS) as u32);
        let kernel = kernel_name::<T>(&format!("{}_fwd_warp", kind.prefix()));
        return gpu.launch(&kernel, cfg, &cuda_args![x, y, rows_i, cols_i]);
    }
    let cached = cols <= CACHE_MAX_COLS;
    let mut cfg = LaunchConfig::per_row(rows, block_threads(cols));
    if cached {
        cfg = cfg.with_shared_bytes((cols * 4) as u32);
    }
    let kernel = kernel_name::<T>(&format!("{}_fwd_block", kind.prefix()));
    gpu.launch(&kernel, cfg, &cuda_args![x, y, cols_i, cached as i32])
}

fn backward<T: KernelFloat>(
    gpu: &Gpu,
    kind: Kind,
    dy: &DeviceBuffer<T>,
    y: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = match kind {
        Kind::Softmax => "cuda softmax_backward",
        Kind::LogSoftmax => "cuda log_softmax_backward",
    };
    let n = numel(name, &[rows, cols])?;
    check_len(name, "dy", dy, n)?;
    check_len(name, "y", y, n)?;
    check_len(name, "dx", dx, n)?;
    let (rows_i, cols_i) = (as_i32(name, "rows", rows)?, as_i32(name, "cols", cols)?);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if cols <= WARP_MAX_COLS {
        let cfg = LaunchConfig::per_row(rows.div_ceil(WARP_ROWS), (32 * WARP_ROWS) as u32);
        let kernel = kernel_name::<T>(&format!("{}_bwd_warp", kind.prefix()));
        return gpu.launch(&kernel, cfg, &cuda_args![dy, y, dx, rows_i, cols_i]);
    }
    let cfg = LaunchConfig::per_row(rows, block_threads(cols));
    let kernel = kernel_name::<T>(&format!("{}_bwd_block", kind.prefix()));
    gpu.launch(&kernel, cfg, &cuda_args![dy, y, dx, cols_i])
}

/// y = softmax(x) along the last axis of `x` (`[rows, cols]`, row-major):
/// yᵢⱼ = exp(xᵢⱼ − mᵢ) / Σₖ exp(xᵢₖ − mᵢ), mᵢ = maxₖ xᵢₖ; a row of −∞ gives zeros.
pub fn softmax_forward<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    forward(gpu, Kind::Softmax, x, rows, cols, y)
}

/// y = log_softmax(x) along the last axis: yᵢⱼ = (xᵢⱼ − mᵢ) − ln Σₖ exp(xᵢₖ − mᵢ).
pub fn log_softmax_forward<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    forward(gpu, Kind::LogSoftmax, x, rows, cols, y)
}

/// The gradient of softmax from its output y and the upstream dy:
/// dxᵢⱼ = yᵢⱼ·(dyᵢⱼ − Σₖ dyᵢₖ·yᵢₖ).
pub fn softmax_backward<T: KernelFloat>(
    gpu: &Gpu,
    dy: &DeviceBuffer<T>,
    y: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    backward(gpu, Kind::Softmax, dy, y, rows, cols, dx)
}

/// The gradient of log_softmax from its output y and the upstream dy:
/// dxᵢⱼ = dyᵢⱼ − exp(yᵢⱼ)·Σₖ dyᵢₖ.
pub fn log_softmax_backward<T: KernelFloat>(
    gpu: &Gpu,
    dy: &DeviceBuffer<T>,
    y: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    backward(gpu, Kind::LogSoftmax, dy, y, rows, cols, dx)
}
