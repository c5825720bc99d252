//! Fused optimiser steps (kernels/optim.cu): Adam/AdamW and LARS over every parameter tensor
//! of a model in one launch ("multi-tensor apply"), f32 parameters and state.
//!
//! A ResNet has a few hundred parameter tensors, many of them tiny (biases, batch-norm scales).
//! One launch per tensor would cost more in launch latency than the arithmetic, so the launcher
//! uploads a table of device pointers and sizes and the grid covers all tensors at once:
//!
//! ```text
//! ptrs[t·P + k]      buffer k of tensor t (param, grad, state…)      P = 4 (Adam), 3 (LARS)
//! numel[t]           its element count
//! chunk_start[t]     Σ_{u<t} ⌈numel[u] / CHUNK⌉: the first block of tensor t; chunk_start[T] = grid
//! adapt[t]           LARS only: 1 for weight matrices and conv kernels, 0 for biases and norms
//! ```
//!
//! Block b binary-searches `chunk_start` for its tensor and updates one chunk of
//! [`CHUNK_ELEMS`] elements of it with float4 loads and stores (a scalar tail for the last
//! numel mod 4). Every element is read and written once per step.
//!
//! The table lives in device memory and is uploaded only when it changes (a new set of buffers):
//! [`FusedAdam`] and [`FusedLars`] keep the last one, so a steady-state training step queues its
//! launches without waiting for the GPU (an upload waits for the stream). The hyper-parameters,
//! which a schedule changes every step, travel as kernel arguments.
//!
//! LARS needs each tensor's ‖w‖ and ‖g + λw‖ before it can update any element of it. A first
//! kernel writes per-block partial sums of squares (no atomics, so the result is deterministic);
//! in the second, one warp of every block re-sums its tensor's partials in the same fixed order
//! (at most a few hundred floats, from L2), so all blocks of a tensor compute bit-identical
//! trust ratios, and the block then applies the momentum update. Two launches per step in
//! total, whatever the model.
//!
//! Arithmetic is f32 in the CPU optimisers' order with separately rounded multiplies and adds,
//! so the GPU step matches `simclr::optim` to rounding.

use super::as_i32;
use crate::backend::cuda::{Arg, DeviceBuffer, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::{Error, Result};

/// Elements per block: each of the 256 threads handles 64 f32 per buffer (16 float4 loads).
/// Big enough that a tensor has at most a few hundred chunks (ResNet-50's largest: 144), small
/// enough that ResNet-50 (25.6M parameters) still gives ~1700 blocks to spread over the SMs.
pub const CHUNK_ELEMS: usize = 16384;
const BLOCK: u32 = 256;

// ---------------------------------------------------------------- the pointer table

/// The host image of the last uploaded table and its device copy.
#[derive(Default)]
struct TableCache {
    host: Vec<i64>,
    device: Option<DeviceBuffer<i64>>,
}

impl TableCache {
    /// The device copy of `host`, uploaded if it differs from the last one (or lives on another
    /// device). Device addresses are unique in the process (unified addressing), so an equal
    /// table names the same buffers.
    fn upload(&mut self, gpu: &Gpu, host: Vec<i64>) -> Result<&DeviceBuffer<i64>> {
        let current = self.device.as_ref().is_some_and(|d| d.gpu().name() == gpu.name() && self.host == host);
        if !current {
            self.device = None;
            self.device = Some(gpu.upload(&host)?);
            self.host = host;
        }
        Ok(self.device.as_ref().expect("set above"))
    }
}

/// Builds `[ptrs (T·P) | numel (T) | chunk_start (T + 1) | extra (T)]` and returns it with the
/// total chunk count (the grid size).
fn build_table(
    op: &'static str,
    per_tensor: impl ExactSizeIterator<Item = (Vec<u64>, usize, Option<i64>)>,
) -> Result<(Vec<i64>, usize)> {
    let n = per_tensor.len();
    let (mut ptrs, mut numel, mut starts, mut extra) = (Vec::new(), Vec::with_capacity(n), vec![0i64], Vec::new());
    let mut chunks = 0usize;
    for (p, len, x) in per_tensor {
        ptrs.extend(p.into_iter().map(|a| a as i64));
        numel.push(len as i64);
        chunks += len.div_ceil(CHUNK_ELEMS);
        starts.push(chunks as i64);
        extra.extend(x);
    }
    // gridDim.x may be up to 2^31 − 1; blocks are indexed with int in the kernels.
    as_i32(op, "total chunks (blocks)", chunks)?;
    let mut table = ptrs;
    table.extend(numel);
    table.extend(starts);
    table.extend(extra);
    Ok((table, chunks))
}

fn check_same_len(op: &'static str, t: usize, what: &str, got: usize, param: usize) -> Result<()> {
    if got != param {
        return Err(Error::shape(op, format!("tensor {t}: {what} has {got} elements, the parameter {param}")));
    }
    Ok(())
}

fn check_finite_nonneg(op: &'static str, what: &str, v: f64) -> Result<()> {
    if !(v >= 0.0 && v.is_finite()) {
        return Err(Error::invalid(op, format!("{what} must be a finite number >= 0, got {v}")));
    }
    Ok(())
}

// ---------------------------------------------------------------- Adam / AdamW

/// Hyper-parameters of Adam/AdamW, as in [`crate::optim::AdamW`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// true: AdamW (decay applied to the weights); false: Adam (λw added to the gradient).
    pub decoupled: bool,
}

impl AdamConfig {
    /// AdamW with PyTorch's defaults β = (0.9, 0.999), ε = 1e-8.
    pub fn adamw(lr: f64, weight_decay: f64) -> AdamConfig {
        AdamConfig { lr, betas: (0.9, 0.999), eps: 1e-8, weight_decay, decoupled: true }
    }
    /// Adam with L2 weight decay through the gradient, PyTorch's defaults otherwise.
    pub fn adam(lr: f64, weight_decay: f64) -> AdamConfig {
        AdamConfig { decoupled: false, ..AdamConfig::adamw(lr, weight_decay) }
    }

    fn validate(&self) -> Result<()> {
        const OP: &str = "cuda adam step";
        check_finite_nonneg(OP, "lr", self.lr)?;
        check_finite_nonneg(OP, "weight_decay", self.weight_decay)?;
        check_finite_nonneg(OP, "eps", self.eps)?;
        for b in [self.betas.0, self.betas.1] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(OP, format!("betas must lie in [0, 1), got {:?}", self.betas)));
            }
        }
        Ok(())
    }
}

/// One parameter tensor of a fused Adam step: its values, gradient and moment buffers (all the
/// same length; m and v start as zeros, e.g. from [`Gpu::zeros`]).
pub struct AdamTensor<'a> {
    pub param: &'a mut DeviceBuffer<f32>,
    pub grad: &'a DeviceBuffer<f32>,
    pub m: &'a mut DeviceBuffer<f32>,
    pub v: &'a mut DeviceBuffer<f32>,
}

/// Adam/AdamW over many tensors in one launch; keeps the uploaded pointer table between steps.
pub struct FusedAdam {
    pub config: AdamConfig,
    table: TableCache,
}

impl FusedAdam {
    pub fn new(config: AdamConfig) -> Result<FusedAdam> {
        config.validate()?;
        Ok(FusedAdam { config, table: TableCache::default() })
    }

    /// Step number `step` (1 for the first) of every tensor, exactly as
    /// [`crate::optim::AdamW::step`] with the same configuration:
    ///
    /// ```text
    /// Adam:  g ← g + λw
    /// m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  m̂ = m/(1−β₁ᵗ),  v̂ = v/(1−β₂ᵗ)
    /// w ← w·(1 − lr·λ [AdamW only]) − lr·m̂/(√v̂ + ε)
    /// ```
    pub fn step(&mut self, gpu: &Gpu, tensors: &mut [AdamTensor<'_>], step: u64) -> Result<()> {
        const OP: &str = "cuda adam step";
        self.config.validate()?;
        if step == 0 || step > i32::MAX as u64 {
            return Err(Error::invalid(OP, format!("step counts from 1 (and below 2^31), got {step}")));
        }
        for (i, t) in tensors.iter().enumerate() {
            let n = t.param.len();
            check_same_len(OP, i, "grad", t.grad.len(), n)?;
            check_same_len(OP, i, "m", t.m.len(), n)?;
            check_same_len(OP, i, "v", t.v.len(), n)?;
        }
        let n_tensors = as_i32(OP, "tensor count", tensors.len())?;
        let (host, chunks) = build_table(
            OP,
            tensors.iter().map(|t| {
                let p = vec![t.param.device_ptr(), t.grad.device_ptr(), t.m.device_ptr(), t.v.device_ptr()];
                (p, t.param.len(), None)
            }),
        )?;
        if chunks == 0 {
            return Ok(());
        }
        let c = &self.config;
        let (b1, b2) = c.betas;
        // The CPU optimiser's scalars, rounded to f32 where it rounds them.
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        let decays = c.weight_decay > 0.0;
        let l2 = if !c.decoupled && decays { c.weight_decay as f32 } else { 0.0 };
        let decay = if c.decoupled && decays { (1.0 - c.lr * c.weight_decay) as f32 } else { 1.0 };
        let nt = tensors.len();
        let table = self.table.upload(gpu, host)?;
        gpu.launch(
            "adam_step_f32",
            LaunchConfig::per_row(chunks, BLOCK),
            &cuda_args![
                table,
                Arg::Ptr(table.device_ptr_at(4 * nt)),
                Arg::Ptr(table.device_ptr_at(5 * nt)),
                n_tensors,
                CHUNK_ELEMS as i64,
                c.lr as f32,
                b1 as f32,
                (1.0 - b1) as f32,
                b2 as f32,
                (1.0 - b2) as f32,
                (1.0 / c1) as f32,
                (1.0 / c2) as f32,
                c.eps as f32,
                l2,
                decay,
            ],
        )
    }
}

// ---------------------------------------------------------------- LARS

/// Hyper-parameters of LARS, as in [`crate::optim::Lars`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LarsConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// The trust coefficient η.
    pub eta: f64,
}

impl LarsConfig {
    fn validate(&self) -> Result<()> {
        const OP: &str = "cuda lars step";
        check_finite_nonneg(OP, "lr", self.lr)?;
        check_finite_nonneg(OP, "weight_decay", self.weight_decay)?;
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::invalid(OP, format!("momentum must lie in [0, 1), got {}", self.momentum)));
        }
        if !(self.eta > 0.0 && self.eta.is_finite()) {
            return Err(Error::invalid(OP, format!("eta must be a finite number > 0, got {}", self.eta)));
        }
        Ok(())
    }
}

/// One parameter tensor of a fused LARS step. `momentum` starts as zeros; `adapt` is
/// [`crate::optim::lars::is_adapted`] of the parameter (rank > 1): trust ratio and weight decay
/// for weight matrices and conv kernels, plain momentum SGD for biases and norm parameters.
pub struct LarsTensor<'a> {
    pub param: &'a mut DeviceBuffer<f32>,
    pub grad: &'a DeviceBuffer<f32>,
    pub momentum: &'a mut DeviceBuffer<f32>,
    pub adapt: bool,
}

/// LARS over many tensors in two launches; keeps the uploaded pointer table between steps.
pub struct FusedLars {
    pub config: LarsConfig,
    table: TableCache,
}

impl FusedLars {
    pub fn new(config: LarsConfig) -> Result<FusedLars> {
        config.validate()?;
        Ok(FusedLars { config, table: TableCache::default() })
    }

    /// One step of every tensor, exactly as [`crate::optim::Lars::step`]:
    ///
    /// ```text
    /// adapted:      g' = g + λw,  r = η‖w‖/‖g'‖ (1 if either norm is 0)
    /// not adapted:  g' = g,       r = 1
    /// u ← μu + lr·r·g',  w ← w − u
    /// ```
    pub fn step(&mut self, gpu: &Gpu, tensors: &mut [LarsTensor<'_>]) -> Result<()> {
        const OP: &str = "cuda lars step";
        self.config.validate()?;
        for (i, t) in tensors.iter().enumerate() {
            let n = t.param.len();
            check_same_len(OP, i, "grad", t.grad.len(), n)?;
            check_same_len(OP, i, "momentum", t.momentum.len(), n)?;
        }
        let n_tensors = as_i32(OP, "tensor count", tensors.len())?;
        let (host, chunks) = build_table(
            OP,
            tensors.iter().map(|t| {
                let p = vec![t.param.device_ptr(), t.grad.device_ptr(), t.momentum.device_ptr()];
                (p, t.param.len(), Some(t.adapt as i64))
            }),
        )?;
        if chunks == 0 {
            return Ok(());
        }
        let c = self.config;
        let nt = tensors.len();
        let table = self.table.upload(gpu, host)?;
        let at = |offset: usize| Arg::Ptr(table.device_ptr_at(offset));
        let (numel, starts, adapt) = (at(3 * nt), at(4 * nt), at(5 * nt + 1));
        // Two floats per block, every block writes its own: no zeroing needed.
        let mut partials = gpu.alloc::<f32>(2 * chunks)?;
        let cfg = LaunchConfig::per_row(chunks, BLOCK);
        gpu.launch(
            "lars_sumsq_f32",
            cfg,
            &cuda_args![
                table,
                numel,
                starts,
                adapt,
                n_tensors,
                CHUNK_ELEMS as i64,
                c.weight_decay as f32,
                &mut partials
            ],
        )?;
        gpu.launch(
            "lars_step_f32",
            cfg,
            &cuda_args![
                table,
                numel,
                starts,
                adapt,
                n_tensors,
                CHUNK_ELEMS as i64,
                &partials,
                c.lr,
                c.momentum as f32,
                c.weight_decay as f32,
                c.eta,
            ],
        )
    }
}
