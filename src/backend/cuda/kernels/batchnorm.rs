//! Batch normalisation of `x: [N, C, H, W]` (NCHW, contiguous) per channel (kernels/batchnorm.cu).
//!
//! With M = N·H·W values per channel:
//! - training: μ and σ² (biased) of the channel, r = 1/√(σ² + eps), y = γ·(x − μ)·r + β; μ and r
//!   are saved for the backward, and the running statistics move towards the batch's with the
//!   unbiased variance, running ← (1 − momentum)·running + momentum·batch (PyTorch's rule, as
//!   `ops::batchnorm::RunningStats::update`);
//! - eval: the same normalisation with the running mean and variance;
//! - backward: x̂ = (x − μ)·r, dγ = Σ dy·x̂, dβ = Σ dy and
//!   dx = γ·r/M·(M·dy − Σdy − x̂·Σ(dy·x̂)) in training (the statistics depend on x), dx = γ·r·dy
//!   in eval (they are constants).
//!
//! x, y, dy and dx are `T` (f32 or bf16); γ, β and all statistics are f32.
//!
//! How the kernels are organised, and why: every kernel runs on a (C, S) grid, block (c, s)
//! owning images [s·N/S, (s+1)·N/S) of channel c. For small inputs S = 1 (a block per channel);
//! for large ones a channel is spread over up to 256 blocks so that a layer with 64 channels
//! still fills the GPU. Statistics are then pooled across the S blocks exactly and in a fixed
//! order (no atomics: bit-reproducible), which takes two launches: one computes per-block
//! partials (count·mean/M2 for the forward, Σdy/Σdy·x̂ for the backward), the next pools them at
//! its start and writes y or dx. Each launch reads x (and dy) once. Within a block, threads tile
//! the H·W planes so that small maps (7×7) keep the threads busy, with 16-byte f32 / 8-byte bf16
//! vector accesses when `H·W % 4 == 0`.

use super::{as_i32, check_len, kernel_name, KernelFloat};
use crate::backend::cuda::{Arg, DeviceBuffer, DeviceElement, Gpu, LaunchConfig};
use crate::error::{Error, Result};

const OP_TRAIN: &str = "cuda batch_norm_2d (training)";
const OP_EVAL: &str = "cuda batch_norm_2d (eval)";
const OP_BWD: &str = "cuda batch_norm_2d backward";

/// Threads per block: up to 256, fewer for small channels (about 8 values per thread; the
/// block reductions need a multiple of 32).
const MAX_THREADS: usize = 256;
const VALUES_PER_THREAD: usize = 8;
/// A channel is split over more blocks only while each keeps at least this many values.
const MIN_VALUES_PER_BLOCK: usize = 4096;
/// Enough blocks to fill an H100 (132 SMs × 8 resident blocks of 256 threads).
const TARGET_BLOCKS: usize = 1024;
/// Most blocks per channel: also bounds the pooling work every block repeats.
const MAX_SPLITS: usize = 256;

/// The running statistics a training forward updates in place.
pub struct RunningStats<'a> {
    pub mean: &'a mut DeviceBuffer<f32>,
    pub var: &'a mut DeviceBuffer<f32>,
    pub momentum: f32,
}

/// The statistics the forward normalised with, for the backward.
pub enum BatchNormSaved<'a> {
    /// Training: the batch mean and r = 1/√(σ² + eps) the forward saved; the statistics depend
    /// on x, so dx has the two extra terms.
    Batch { mean: &'a DeviceBuffer<f32>, rstd: &'a DeviceBuffer<f32> },
    /// Eval: the running mean and variance and the forward's eps (constants: dx = γ·r·dy).
    Running { mean: &'a DeviceBuffer<f32>, var: &'a DeviceBuffer<f32>, eps: f32 },
}

/// Checked sizes of one call.
struct Dims {
    n: i32,
    c: i32,
    hw: i32,
    /// Values per channel, N·H·W.
    m: usize,
    numel: usize,
}

fn dims(op: &'static str, shape: [usize; 4]) -> Result<Dims> {
    let [n, c, h, w] = shape;
    if c == 0 {
        return Err(Error::shape(op, format!("input {shape:?} has no channels")));
    }
    let hw = h.checked_mul(w).ok_or_else(|| Error::shape(op, format!("{shape:?} overflows")))?;
    let m = n.checked_mul(hw).ok_or_else(|| Error::shape(op, format!("{shape:?} overflows")))?;
    let numel = m.checked_mul(c).ok_or_else(|| Error::shape(op, format!("{shape:?} overflows")))?;
    Ok(Dims { n: as_i32(op, "N", n)?, c: as_i32(op, "C", c)?, hw: as_i32(op, "H·W", hw)?, m, numel })
}

fn ptr_or_null<T: DeviceElement>(b: Option<&DeviceBuffer<T>>) -> Arg {
    Arg::Ptr(b.map_or(0, |b| b.device_ptr()))
}

fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::invalid(op, format!("eps must be a positive number, got {eps}")));
    }
    Ok(())
}

/// Errors unless an optional per-channel buffer, when given, holds `c` elements.
fn check_opt(op: &'static str, what: &str, buf: Option<&DeviceBuffer<f32>>, c: usize) -> Result<()> {
    buf.map_or(Ok(()), |b| check_len(op, what, b, c))
}

/// The (C, S) grid: S blocks per channel, each owning a contiguous range of images.
fn grid(d: &Dims) -> LaunchConfig {
    let (n, c) = (d.n as usize, d.c as usize);
    let splits = n.min(d.m.div_ceil(MIN_VALUES_PER_BLOCK)).min(TARGET_BLOCKS.div_ceil(c)).clamp(1, MAX_SPLITS);
    let threads = (d.m.div_ceil(splits) / VALUES_PER_THREAD).next_multiple_of(32).clamp(32, MAX_THREADS);
    LaunchConfig { grid: (c as u32, splits as u32, 1), block: (threads as u32, 1, 1), shared_bytes: 0 }
}

/// 1 (4-element chunks) when planes are a multiple of 4 long and `data` is aligned for
/// 4-element loads of `T`, else 0.
fn vec_flag<T: KernelFloat>(hw: i32, data: &[u64]) -> i32 {
    let align = 4 * std::mem::size_of::<T>() as u64;
    i32::from(hw % 4 == 0 && data.iter().all(|p| p % align == 0))
}

/// Training forward of `x` with shape `[N, C, H, W]`: y = γ·(x − μ)·r + β with the channel's
/// batch mean μ and r = 1/√(σ² + eps) for its biased batch variance σ²; writes μ and r to
/// `save_mean`/`save_rstd` ([C]) and, if given, updates `running` in place with the unbiased
/// variance σ²·M/(M − 1). `gamma`/`beta` ([C]) are optional (γ = 1, β = 0).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_train<T: KernelFloat>(
    gpu: &Gpu,
    shape: [usize; 4],
    x: &DeviceBuffer<T>,
    gamma: Option<&DeviceBuffer<f32>>,
    beta: Option<&DeviceBuffer<f32>>,
    eps: f32,
    running: Option<RunningStats<'_>>,
    y: &mut DeviceBuffer<T>,
    save_mean: &mut DeviceBuffer<f32>,
    save_rstd: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let op = OP_TRAIN;
    let d = dims(op, shape)?;
    let c = d.c as usize;
    check_len(op, "x", x, d.numel)?;
    check_len(op, "y", y, d.numel)?;
    check_len(op, "save_mean", save_mean, c)?;
    check_len(op, "save_rstd", save_rstd, c)?;
    check_opt(op, "gamma", gamma, c)?;
    check_opt(op, "beta", beta, c)?;
    check_eps(op, eps)?;
    if d.m < 2 {
        return Err(Error::shape(op, format!("training needs more than one value per channel, got {shape:?}")));
    }
    let (run_mean, run_var, momentum) = match running {
        Some(r) => {
            check_len(op, "running mean", r.mean, c)?;
            check_len(op, "running var", r.var, c)?;
            if !r.momentum.is_finite() {
                return Err(Error::invalid(op, format!("momentum must be finite, got {}", r.momentum)));
            }
            (Arg::from(&*r.mean), Arg::from(&*r.var), r.momentum)
        }
        None => (Arg::Ptr(0), Arg::Ptr(0), 0.0),
    };
    let cfg = grid(&d);
    let vec = vec_flag::<T>(d.hw, &[x.device_ptr(), y.device_ptr()]);
    let partial = gpu.alloc::<f32>(c * cfg.grid.1 as usize * 2)?;
    let stats_args = crate::cuda_args![x, d.n, d.c, d.hw, vec, &partial];
    gpu.launch(&kernel_name::<T>("batchnorm_stats"), cfg, &stats_args)?;
    let args = [
        Arg::from(x),
        ptr_or_null(gamma),
        ptr_or_null(beta),
        Arg::from(&partial),
        Arg::I32(d.n),
        Arg::I32(d.c),
        Arg::I32(d.hw),
        Arg::I32(vec),
        Arg::F32(eps),
        Arg::F32(momentum),
        Arg::from(&mut *y),
        Arg::from(&mut *save_mean),
        Arg::from(&mut *save_rstd),
        run_mean,
        run_var,
    ];
    gpu.launch(&kernel_name::<T>("batchnorm_fwd_train"), cfg, &args)
}

/// Eval forward of `x` with shape `[N, C, H, W]`: y = γ·(x − μ)/√(σ² + eps) + β with the
/// running mean μ and variance σ² ([C]). `gamma`/`beta` ([C]) are optional (γ = 1, β = 0).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_eval<T: KernelFloat>(
    gpu: &Gpu,
    shape: [usize; 4],
    x: &DeviceBuffer<T>,
    gamma: Option<&DeviceBuffer<f32>>,
    beta: Option<&DeviceBuffer<f32>>,
    running_mean: &DeviceBuffer<f32>,
    running_var: &DeviceBuffer<f32>,
    eps: f32,
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    let op = OP_EVAL;
    let d = dims(op, shape)?;
    let c = d.c as usize;
    check_len(op, "x", x, d.numel)?;
    check_len(op, "y", y, d.numel)?;
    check_len(op, "running mean", running_mean, c)?;
    check_len(op, "running var", running_var, c)?;
    check_opt(op, "gamma", gamma, c)?;
    check_opt(op, "beta", beta, c)?;
    check_eps(op, eps)?;
    if d.m == 0 {
        return Ok(());
    }
    let cfg = grid(&d);
    let vec = vec_flag::<T>(d.hw, &[x.device_ptr(), y.device_ptr()]);
    let args = [
        Arg::from(x),
        ptr_or_null(gamma),
        ptr_or_null(beta),
        Arg::from(running_mean),
        Arg::from(running_var),
        Arg::I32(d.n),
        Arg::I32(d.c),
        Arg::I32(d.hw),
        Arg::I32(vec),
        Arg::F32(eps),
        Arg::from(&mut *y),
    ];
    gpu.launch(&kernel_name::<T>("batchnorm_fwd_eval"), cfg, &args)
}

/// Backward of [`batch_norm_forward_train`] (`saved` = [`BatchNormSaved::Batch`]) or
/// [`batch_norm_forward_eval`] (`saved` = [`BatchNormSaved::Running`]) for `x: [N, C, H, W]` and
/// the output gradient `dy`. With x̂ = (x − μ)·r and M = N·H·W, writes
/// dx = γ·r·(dy − Σdy/M − x̂·Σ(dy·x̂)/M) (training) or dx = γ·r·dy (eval), and, when asked for,
/// dγ = Σ dy·x̂ and dβ = Σ dy per channel ([C]). `gamma` is the forward's (absent: γ = 1).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<T: KernelFloat>(
    gpu: &Gpu,
    shape: [usize; 4],
    x: &DeviceBuffer<T>,
    dy: &DeviceBuffer<T>,
    gamma: Option<&DeviceBuffer<f32>>,
    saved: BatchNormSaved<'_>,
    dx: &mut DeviceBuffer<T>,
    dgamma: Option<&mut DeviceBuffer<f32>>,
    dbeta: Option<&mut DeviceBuffer<f32>>,
) -> Result<()> {
    let op = OP_BWD;
    let d = dims(op, shape)?;
    let c = d.c as usize;
    check_len(op, "x", x, d.numel)?;
    check_len(op, "dy", dy, d.numel)?;
    check_len(op, "dx", dx, d.numel)?;
    let (dgamma, dbeta) = (dgamma.map(|b| &*b), dbeta.map(|b| &*b));
    check_opt(op, "gamma", gamma, c)?;
    check_opt(op, "dgamma", dgamma, c)?;
    check_opt(op, "dbeta", dbeta, c)?;
    let (mean, stat2, is_var, eps, training) = match saved {
        BatchNormSaved::Batch { mean, rstd } => (mean, rstd, 0, 0.0, 1),
        BatchNormSaved::Running { mean, var, eps } => {
            check_eps(op, eps)?;
            (mean, var, 1, eps, 0)
        }
    };
    check_len(op, "saved mean", mean, c)?;
    check_len(op, if is_var == 1 { "running var" } else { "saved rstd" }, stat2, c)?;
    if d.m == 0 {
        // Empty sums.
        for b in [dgamma, dbeta].into_iter().flatten() {
            gpu.memset_zero(b)?;
        }
        return Ok(());
    }
    let cfg = grid(&d);
    let vec = vec_flag::<T>(d.hw, &[x.device_ptr(), dy.device_ptr(), dx.device_ptr()]);
    let partial = gpu.alloc::<f32>(c * cfg.grid.1 as usize * 2)?;
    let reduce_args = crate::cuda_args![x, dy, mean, stat2, is_var, eps, d.n, d.c, d.hw, vec, &partial];
    gpu.launch(&kernel_name::<T>("batchnorm_bwd_reduce"), cfg, &reduce_args)?;
    let args = [
        Arg::from(x),
        Arg::from(dy),
        ptr_or_null(gamma),
        Arg::from(mean),
        Arg::from(stat2),
        Arg::I32(is_var),
        Arg::F32(eps),
        Arg::from(&partial),
        Arg::I32(d.n),
        Arg::I32(d.c),
        Arg::I32(d.hw),
        Arg::I32(vec),
        Arg::I32(training),
        Arg::from(&mut *dx),
        ptr_or_null(dgamma),
        ptr_or_null(dbeta),
    ];
    gpu.launch(&kernel_name::<T>("batchnorm_bwd_dx"), cfg, &args)
}
