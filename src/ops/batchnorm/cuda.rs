//! Batch norm on the GPU (`kernels/batchnorm.cu`, launchers in
//! `backend/cuda/kernels/batchnorm.rs`): two-launch training forward (statistics, then
//! normalise + running-statistics update), eval forward, and the two-launch backward.
//!
//! The kernels read [N, C, H, W] row-major and reduce each channel over N·H·W values. A
//! channels-last tensor (a device conv's output) is row-major [N·H·W, C, 1, 1] in that
//! sense — the same per-channel sets — so it is handed over as that, without a copy, and the
//! output and input gradient keep its layout. (The kernels then read a channel with a
//! stride of C elements; an NHWC kernel would coalesce better.)
//!
//! The kernels keep γ, β and every statistic in f32; for bf16 tensors those are cast on the
//! way in and the parameter gradients and running statistics on the way out.

use super::RunningStats;
use crate::backend::cuda::kernels::batchnorm::{
    batch_norm_backward, batch_norm_forward_eval, batch_norm_forward_train, BatchNormSaved,
    RunningStats as KernelRunningStats,
};
use crate::backend::cuda::{DeviceBuffer, Gpu};
use crate::error::Result;
use crate::kernel_dispatch;
use crate::ops::conv2d::cuda::{is_channels_last, nchw_view, to_nhwc};
use crate::ops::cuda_support::{cast, gpu_of, row_major, wrap};
use crate::tensor::{DType, Tensor};

const OP: &str = "batch_norm_2d";

/// The layout the kernels see an [N, C, H, W] tensor in.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    channels_last: bool,
    shape: [usize; 4],
}

impl Geometry {
    fn of(x: &Tensor) -> Geometry {
        let s = x.shape();
        let shape = [s[0], s[1], s[2], s[3]];
        // Row-major wins where a tensor is both (C = 1 or H·W = 1): that is the kernels' layout.
        Geometry { channels_last: !x.is_contiguous() && is_channels_last(x), shape }
    }

    /// The shape passed to the kernels: channels-last memory is row-major [N·H·W, C, 1, 1].
    fn kernel_shape(&self) -> [usize; 4] {
        let [n, c, h, w] = self.shape;
        if self.channels_last {
            [n * h * w, c, 1, 1]
        } else {
            self.shape
        }
    }

    /// `t` ([N, C, H, W], on the device) in the memory order the kernels are given.
    fn kernel_input(&self, t: &Tensor) -> Result<Tensor> {
        if self.channels_last {
            to_nhwc(t)
        } else {
            row_major(t)
        }
    }

    /// A kernel's output buffer as the [N, C, H, W] tensor it holds.
    fn output<T: crate::tensor::DeviceStorageElement>(&self, buf: DeviceBuffer<T>, ordinal: usize) -> Result<Tensor> {
        let [n, c, h, w] = self.shape;
        if self.channels_last {
            nchw_view(&wrap(buf, &[n, h, w, c], ordinal)?)
        } else {
            wrap(buf, &self.shape, ordinal)
        }
    }
}

/// The statistics the forward normalised with.
enum Stats {
    /// Training: batch mean and 1/√(σ² + eps) (f32, [C]).
    Batch { mean: Tensor, rstd: Tensor },
    /// Eval: the running mean and variance used (f32, [C]) and eps.
    Running { mean: Tensor, var: Tensor, eps: f32 },
}

/// What the backward needs.
pub(crate) struct Saved {
    geometry: Geometry,
    /// The input, in the kernels' memory order.
    x: Tensor,
    /// γ in f32, if the layer has one.
    gamma: Option<Tensor>,
    stats: Stats,
    has_weight: bool,
}

/// A [C] tensor as f32 on the device (the kernels' parameter and statistics type).
fn f32_param(t: &Tensor) -> Result<Tensor> {
    cast(OP, &row_major(t)?, DType::F32)
}

/// A fresh f32 buffer holding `t` ([C]): the training kernel updates running statistics in
/// place, and a tensor's device memory is never written after its op.
fn writable_copy(gpu: &Gpu, t: &Tensor) -> Result<DeviceBuffer<f32>> {
    let src = f32_param(t)?;
    let mut dst = gpu.alloc::<f32>(src.numel())?;
    gpu.copy(&*src.cuda_slice::<f32>(OP)?, &mut dst)?;
    Ok(dst)
}

/// Forward of `batch_norm_2d` on the device (inputs already checked by the op): the output,
/// and in training the updated running statistics written back to `stats`.
pub(crate) fn forward(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    stats: &mut RunningStats,
    training: bool,
    eps: f64,
) -> Result<(Tensor, Saved)> {
    let (gpu, ordinal) = gpu_of(OP, x)?;
    let geometry = Geometry::of(x);
    let c = geometry.shape[1];
    let kshape = geometry.kernel_shape();
    let xk = geometry.kernel_input(x)?;
    let gamma = weight.map(f32_param).transpose()?;
    let beta = bias.map(f32_param).transpose()?;
    let gs = gamma.as_ref().map(|t| t.cuda_slice::<f32>(OP)).transpose()?;
    let bs = beta.as_ref().map(|t| t.cuda_slice::<f32>(OP)).transpose()?;
    let eps32 = eps as f32;
    let (out, stats_used) = if training {
        let (mut run_mean, mut run_var) = (writable_copy(&gpu, &stats.mean)?, writable_copy(&gpu, &stats.var)?);
        let (mut save_mean, mut save_rstd) = (gpu.alloc::<f32>(c)?, gpu.alloc::<f32>(c)?);
        let out = kernel_dispatch!(OP, x.dtype(), T => {
            let mut y = gpu.alloc::<T>(x.numel())?;
            let momentum = stats.momentum as f32;
            let running = KernelRunningStats { mean: &mut run_mean, var: &mut run_var, momentum };
            batch_norm_forward_train(
                &gpu, kshape, &*xk.cuda_slice::<T>(OP)?, gs.as_deref(), bs.as_deref(), eps32, Some(running),
                &mut y, &mut save_mean, &mut save_rstd,
            )?;
            geometry.output(y, ordinal)?
        });
        // Only once the kernels succeeded: a failed step leaves the statistics as they were.
        stats.mean = cast(OP, &wrap(run_mean, &[c], ordinal)?, x.dtype())?;
        stats.var = cast(OP, &wrap(run_var, &[c], ordinal)?, x.dtype())?;
        let used = Stats::Batch { mean: wrap(save_mean, &[c], ordinal)?, rstd: wrap(save_rstd, &[c], ordinal)? };
        (out, used)
    } else {
        let (mean, var) = (f32_param(&stats.mean)?, f32_param(&stats.var)?);
        let out = kernel_dispatch!(OP, x.dtype(), T => {
            let mut y = gpu.alloc::<T>(x.numel())?;
            batch_norm_forward_eval(
                &gpu, kshape, &*xk.cuda_slice::<T>(OP)?, gs.as_deref(), bs.as_deref(),
                &*mean.cuda_slice::<f32>(OP)?, &*var.cuda_slice::<f32>(OP)?, eps32, &mut y,
            )?;
            geometry.output(y, ordinal)?
        });
        (out, Stats::Running { mean, var, eps: eps32 })
    };
    let saved = Saved { geometry, x: xk, gamma, stats: stats_used, has_weight: weight.is_some() };
    Ok((out, saved))
}

/// Gradients of (x, γ if present, β if present) for the output gradient `g`, each only if
/// `needs` asks for it.
pub(crate) fn backward(g: &Tensor, saved: &Saved, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
    let (gpu, ordinal) = gpu_of(OP, g)?;
    let geometry = &saved.geometry;
    let c = geometry.shape[1];
    let dy = geometry.kernel_input(g)?;
    // needs = [x, γ?, β?] in the order the op recorded its inputs.
    let need_dgamma = saved.has_weight && needs[1];
    let beta_slot = if saved.has_weight { 2 } else { 1 };
    let need_dbeta = needs.len() > beta_slot && needs[beta_slot];
    let mut dgamma = need_dgamma.then(|| gpu.alloc::<f32>(c)).transpose()?;
    let mut dbeta = need_dbeta.then(|| gpu.alloc::<f32>(c)).transpose()?;
    let gamma = saved.gamma.as_ref().map(|t| t.cuda_slice::<f32>(OP)).transpose()?;
    let (s1, s2) = match &saved.stats {
        Stats::Batch { mean, rstd } => (mean.cuda_slice::<f32>(OP)?, rstd.cuda_slice::<f32>(OP)?),
        Stats::Running { mean, var, .. } => (mean.cuda_slice::<f32>(OP)?, var.cuda_slice::<f32>(OP)?),
    };
    let used = match &saved.stats {
        Stats::Batch { .. } => BatchNormSaved::Batch { mean: &s1, rstd: &s2 },
        Stats::Running { eps, .. } => BatchNormSaved::Running { mean: &s1, var: &s2, eps: *eps },
    };
    let dx = kernel_dispatch!(OP, g.dtype(), T => {
        let mut dx = gpu.alloc::<T>(g.numel())?;
        batch_norm_backward(
            &gpu, geometry.kernel_shape(), &*saved.x.cuda_slice::<T>(OP)?, &*dy.cuda_slice::<T>(OP)?,
            gamma.as_deref(), used, &mut dx, dgamma.as_mut(), dbeta.as_mut(),
        )?;
        geometry.output(dx, ordinal)?
    });
    // The kernels produce the parameter gradients in f32; the parameters have the input's dtype.
    let param_grad = |b: Option<DeviceBuffer<f32>>| -> Result<Option<Tensor>> {
        b.map(|b| cast(OP, &wrap(b, &[c], ordinal)?, g.dtype())).transpose()
    };
    let mut grads = vec![needs[0].then_some(dx)];
    if saved.has_weight {
        grads.push(param_grad(dgamma)?);
    }
    if needs.len() > beta_slot {
        grads.push(param_grad(dbeta)?);
    }
    Ok(grads)
}
