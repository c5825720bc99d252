//! The optimisers on a GPU (feature `cuda`). f32 parameters on a CUDA device are updated by
//! the fused multi-tensor kernels of `backend/cuda/kernels/optim.rs` — one launch per step for
//! Adam/AdamW, two for LARS, whatever the model — and SGD by in-place `axpby`s (two or three per
//! tensor). The state (Adam's moments, momentum buffers) is created on the parameter's device and
//! updated there in place through [`Tensor::device_buffer_mut`]; nothing goes through the host.
//! The gradient norm is one sum-of-squares kernel per gradient into one buffer, read back once.
//!
//! The arithmetic follows the CPU optimisers (same operations in the same order, in f32), so a
//! device step matches the CPU step to a few f32 roundings (tests/cuda_train.rs).

use crate::backend::cuda::kernels::elementwise::axpby;
use crate::backend::cuda::kernels::optim::{AdamConfig, AdamTensor, FusedAdam, FusedLars, LarsConfig, LarsTensor};
use crate::backend::cuda::kernels::reduce::sum_squares_all;
use crate::backend::cuda::Gpu;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::ops::cuda_support::row_major;
use crate::tensor::device_storage::DeviceBufferMut;
use crate::tensor::{DType, DeviceSlice, Tensor};

/// Whether the device path updates `p`: an f32 parameter on a GPU. (Parameters of other dtypes
/// on a GPU take the generic tensor-op path, which runs where the kernels have their dtype.)
pub(crate) fn fused(p: &Tensor) -> bool {
    matches!(p.device(), Device::Cuda(_)) && p.dtype() == DType::F32
}

/// The parameters `idx` grouped by their device, each with its handle, in `idx` order.
fn by_device(op: &'static str, params: &[Tensor], idx: &[usize]) -> Result<Vec<(Gpu, Vec<usize>)>> {
    let mut groups: Vec<(usize, Gpu, Vec<usize>)> = Vec::new();
    for &i in idx {
        let (gpu, ordinal) =
            params[i].gpu().ok_or_else(|| Error::Device { op, msg: "expected a CUDA tensor".into() })?;
        match groups.iter_mut().find(|(o, _, _)| *o == ordinal) {
            Some((_, _, members)) => members.push(i),
            None => groups.push((ordinal, gpu, vec![i])),
        }
    }
    // Every parameter is locked for writing during the launch: one listed twice would wait on itself.
    for (k, &i) in idx.iter().enumerate() {
        if idx[..k].iter().any(|&j| params[j].same_tensor(&params[i])) {
            return Err(Error::invalid(op, format!("parameter {i} is listed twice (also as an earlier one)")));
        }
    }
    Ok(groups.into_iter().map(|(_, gpu, members)| (gpu, members)).collect())
}

/// The gradient of device parameter `p` as row-major f32 elements on its device.
fn grad_slice(op: &'static str, i: usize, p: &Tensor) -> Result<DeviceSlice<f32>> {
    let g = p.grad().ok_or_else(|| Error::Autograd(format!("{op}: parameter {i} has no gradient")))?;
    if g.device() != p.device() || g.dtype() != DType::F32 {
        return Err(Error::Device {
            op,
            msg: format!(
                "parameter {i} is f32 on {:?} but its gradient is {} on {:?}",
                p.device(),
                g.dtype(),
                g.device()
            ),
        });
    }
    row_major(&g)?.cuda_slice::<f32>(op)
}

/// Makes `slot` a whole-storage f32 buffer on `p`'s device: zeros when empty, and a state
/// loaded from a checkpoint (or kept from before the model moved) is moved there.
fn ensure_state(slot: &mut Option<Tensor>, p: &Tensor) -> Result<()> {
    let ready =
        |s: &Tensor| s.device() == p.device() && s.dtype() == DType::F32 && s.shape() == p.shape() && s.is_contiguous();
    *slot = match slot.take() {
        Some(s) if ready(&s) => Some(s),
        Some(s) => Some(s.to_dtype(DType::F32)?.to_device(Device::Cpu)?.to_device(p.device())?),
        None => {
            let (gpu, ordinal) =
                p.gpu().ok_or_else(|| Error::Device { op: "optimizer state", msg: "a CPU parameter".into() })?;
            Some(Tensor::from_device_buffer(gpu.zeros::<f32>(p.numel())?, p.shape(), ordinal)?)
        }
    };
    Ok(())
}

/// Write access to the f32 buffers of `tensors`, in order.
fn lock_all<'a>(op: &'static str, tensors: impl Iterator<Item = &'a Tensor>) -> Result<Vec<DeviceBufferMut<'a, f32>>> {
    tensors.map(|t| t.device_buffer_mut::<f32>(op)).collect()
}

/// One Adam/AdamW step (number `step`, from 1) of the device parameters `idx`, which have gradients.
pub(crate) fn adam_step(
    kernel: &mut Option<FusedAdam>,
    config: AdamConfig,
    params: &[Tensor],
    m: &mut [Option<Tensor>],
    v: &mut [Option<Tensor>],
    idx: &[usize],
    step: u64,
) -> Result<()> {
    const OP: &str = "AdamW::step (cuda)";
    if idx.is_empty() {
        return Ok(());
    }
    let groups = by_device(OP, params, idx)?;
    for &i in idx {
        ensure_state(&mut m[i], &params[i])?;
        ensure_state(&mut v[i], &params[i])?;
    }
    let kernel = match kernel {
        Some(k) => {
            k.config = config;
            k
        }
        None => kernel.insert(FusedAdam::new(config)?),
    };
    let state = |s: &[Option<Tensor>], i: usize| s[i].as_ref().expect("state ensured above").clone();
    for (gpu, group) in groups {
        let grads = group.iter().map(|&i| grad_slice(OP, i, &params[i])).collect::<Result<Vec<_>>>()?;
        let (ms, vs): (Vec<Tensor>, Vec<Tensor>) = group.iter().map(|&i| (state(m, i), state(v, i))).unzip();
        let mut ws = lock_all(OP, group.iter().map(|&i| &params[i]))?;
        let mut ms = lock_all(OP, ms.iter())?;
        let mut vs = lock_all(OP, vs.iter())?;
        let mut tensors: Vec<AdamTensor<'_>> = ws
            .iter_mut()
            .zip(&grads)
            .zip(ms.iter_mut().zip(vs.iter_mut()))
            .map(|((w, g), (m, v))| AdamTensor { param: &mut **w, grad: &**g, m: &mut **m, v: &mut **v })
            .collect();
        kernel.step(&gpu, &mut tensors, step)?;
    }
    Ok(())
}

/// One LARS step of the device parameters `idx`, which have gradients; `adapted` says which
/// parameters get the layer-wise trust ratio (`Lars`'s rule).
pub(crate) fn lars_step(
    kernel: &mut Option<FusedLars>,
    config: LarsConfig,
    params: &[Tensor],
    momentum: &mut [Option<Tensor>],
    idx: &[usize],
    adapted: fn(&Tensor) -> bool,
) -> Result<()> {
    const OP: &str = "Lars::step (cuda)";
    if idx.is_empty() {
        return Ok(());
    }
    let groups = by_device(OP, params, idx)?;
    for &i in idx {
        ensure_state(&mut momentum[i], &params[i])?;
    }
    let kernel = match kernel {
        Some(k) => {
            k.config = config;
            k
        }
        None => kernel.insert(FusedLars::new(config)?),
    };
    for (gpu, group) in groups {
        let grads = group.iter().map(|&i| grad_slice(OP, i, &params[i])).collect::<Result<Vec<_>>>()?;
        let adapt: Vec<bool> = group.iter().map(|&i| adapted(&params[i])).collect();
        let us: Vec<Tensor> =
            group.iter().map(|&i| momentum[i].as_ref().expect("state ensured above").clone()).collect();
        let mut ws = lock_all(OP, group.iter().map(|&i| &params[i]))?;
        let mut us = lock_all(OP, us.iter())?;
        let mut tensors: Vec<LarsTensor<'_>> = ws
            .iter_mut()
            .zip(&grads)
            .zip(us.iter_mut().zip(&adapt))
            .map(|((w, g), (u, &adapt))| LarsTensor { param: &mut **w, grad: &**g, momentum: &mut **u, adapt })
            .collect();
        kernel.step(&gpu, &mut tensors)?;
    }
    Ok(())
}

/// One SGD step of the device parameters `idx` (with gradients), as `Sgd::step`:
/// d = g + λw,  v ← μv + d (v = d on the first step or without momentum),  w ← w − lr·v.
pub(crate) fn sgd_step(
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    params: &[Tensor],
    velocity: &mut [Option<Tensor>],
    idx: &[usize],
) -> Result<()> {
    const OP: &str = "Sgd::step (cuda)";
    by_device(OP, params, idx)?;
    for &i in idx {
        let p = &params[i];
        let (gpu, ordinal) = p.gpu().ok_or_else(|| Error::Device { op: OP, msg: "expected a CUDA tensor".into() })?;
        // d: a buffer of our own (the gradient belongs to the autograd slot).
        let mut d = gpu.alloc::<f32>(p.numel())?;
        gpu.copy(&*grad_slice(OP, i, p)?, &mut d)?;
        if weight_decay > 0.0 {
            // The weight's slice is dropped before the weight is locked below (or it would be copied).
            axpby(&gpu, weight_decay as f32, &*p.cuda_slice::<f32>(OP)?, 1.0, &mut d)?;
        }
        let keep = velocity[i].as_ref().is_some_and(|v| v.device() == p.device() && v.dtype() == DType::F32);
        let v = match velocity[i].take() {
            Some(prev) if momentum > 0.0 => {
                let prev = if keep {
                    prev
                } else {
                    prev.to_dtype(DType::F32)?.to_device(Device::Cpu)?.to_device(p.device())?
                };
                axpby(&gpu, 1.0, &d, momentum as f32, &mut *prev.device_buffer_mut::<f32>(OP)?)?;
                prev
            }
            _ => Tensor::from_device_buffer(d, p.shape(), ordinal)?,
        };
        axpby(&gpu, -(lr as f32), &*v.cuda_slice::<f32>(OP)?, 1.0, &mut *p.device_buffer_mut::<f32>(OP)?)?;
        velocity[i] = Some(v);
    }
    Ok(())
}

/// Σ‖g‖² over device gradients (f32 or bf16): one kernel per gradient writing into one buffer
/// per device, one read-back per device, the per-tensor sums added in f64 in order.
pub(crate) fn sum_of_squares(grads: &[Tensor]) -> Result<f64> {
    const OP: &str = "grad_norm (cuda)";
    let mut groups: Vec<(usize, Gpu, Vec<&Tensor>)> = Vec::new();
    for g in grads {
        let (gpu, ordinal) = g.gpu().ok_or_else(|| Error::Device { op: OP, msg: "expected a CUDA tensor".into() })?;
        match groups.iter_mut().find(|(o, _, _)| *o == ordinal) {
            Some((_, _, members)) => members.push(g),
            None => groups.push((ordinal, gpu, vec![g])),
        }
    }
    let mut total = 0.0;
    for (_, gpu, members) in groups {
        let mut sums = gpu.alloc::<f32>(members.len())?;
        for (k, g) in members.iter().enumerate() {
            let g = row_major(g)?;
            crate::kernel_dispatch!(OP, g.dtype(), T => sum_squares_all(&gpu, &*g.cuda_slice::<T>(OP)?, &mut sums, k)?);
        }
        total += sums.to_vec()?.iter().map(|&s| s as f64).sum::<f64>();
    }
    Ok(total)
}
