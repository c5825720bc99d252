//! Gradient averaging over ranks in flat buckets, as PyTorch DDP does it.
//!
//! One all-reduce per parameter would pay the collective's fixed latency
//! hundreds of times per step; one all-reduce of everything could not start
//! until the whole backward is done. DDP's middle way: parameters are grouped
//! into buckets of about `bucket_mb` megabytes, in *reverse* registration
//! order — backward produces the last layers' gradients first, so the first
//! bucket is ready first — and each bucket is flattened into one buffer,
//! all-reduced, divided by the world size and written back.
//!
//! Two ways to run it, with bitwise the same result (same buffers, same
//! collectives, same order):
//! - [`GradientBuckets::all_reduce_mean`], after backward has finished: the
//!   buckets are reduced one after another on the calling thread;
//! - [`GradientBuckets::backward_all_reduce_mean`], overlapped with backward
//!   (what training uses): bucket i is handed to the rank's communication
//!   thread as soon as its gradients are final and buckets 0..i were launched,
//!   while backward goes on computing earlier layers (see [`super::overlap`]).
//!
//! A parameter with no gradient on a rank contributes zeros. Each bucket also
//! carries one flag per parameter (1 where the rank has a gradient), so a
//! parameter that no rank touched keeps no gradient at all, as in PyTorch.

use super::worker::CommWorker;
use super::Communicator;
use crate::autograd::{leaf_id, no_grad, LeafId};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{DType, Float, StorageElement, Tensor};
use std::collections::{HashMap, HashSet};

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_MB: f64 = 25.0;

pub(super) struct Bucket {
    pub(super) params: Vec<Tensor>,
    dtype: DType,
    numel: usize,
}

/// The bucket plan for one model's parameters; build it once, reduce every step.
pub struct GradientBuckets {
    pub(super) buckets: Vec<Bucket>,
    /// Each parameter's (bucket, position in the bucket), by its autograd leaf.
    pub(super) slots: HashMap<LeafId, (usize, usize)>,
}

impl GradientBuckets {
    /// Groups `params` (in registration order, e.g. from `nn::parameters`)
    /// into buckets of at most `bucket_mb` MB, filled from the last parameter
    /// backwards. A parameter larger than the cap gets a bucket of its own; a
    /// bucket holds one dtype. A parameter listed twice (tied weights) is
    /// reduced once, where it was first listed.
    pub fn new(params: &[Tensor], bucket_mb: f64) -> Result<GradientBuckets> {
        const OP: &str = "GradientBuckets::new";
        if !(bucket_mb > 0.0 && bucket_mb.is_finite()) {
            return Err(Error::invalid(OP, format!("bucket size must be a positive number of MB, got {bucket_mb}")));
        }
        // Each parameter once, at its first registration (tied weights appear under two names).
        let mut unique: Vec<(LeafId, &Tensor)> = Vec::with_capacity(params.len());
        let mut seen = HashSet::new();
        for p in params {
            match leaf_id(p) {
                Some(leaf) if p.dtype().is_compute_float() => {
                    if seen.insert(leaf) {
                        unique.push((leaf, p));
                    }
                }
                _ => {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "every parameter must be a trainable f32/f64 tensor (requires_grad); got {:?} {}{}",
                            p.shape(),
                            p.dtype(),
                            if p.is_tracked() { " computed by an op" } else { " that is not tracked" }
                        ),
                    ))
                }
            }
        }
        let cap_bytes = (bucket_mb * 1024.0 * 1024.0) as usize;
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut slots = HashMap::new();
        for (leaf, p) in unique.into_iter().rev() {
            let bytes = p.numel() * p.dtype().size_in_bytes();
            let fits = buckets
                .last()
                .is_some_and(|b| b.dtype == p.dtype() && (b.numel * b.dtype.size_in_bytes() + bytes <= cap_bytes));
            if !fits {
                buckets.push(Bucket { params: Vec::new(), dtype: p.dtype(), numel: 0 });
            }
            let index = buckets.len() - 1;
            let b = &mut buckets[index];
            slots.insert(leaf, (index, b.params.len()));
            b.params.push(p.clone());
            b.numel += p.numel();
        }
        Ok(GradientBuckets { buckets, slots })
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Elements in each bucket, in reduction order.
    pub fn bucket_numels(&self) -> Vec<usize> {
        self.buckets.iter().map(|b| b.numel).collect()
    }

    /// Replaces every parameter's gradient by its mean over the ranks. Call it
    /// on every rank after `backward` and before the optimiser step.
    pub fn all_reduce_mean(&self, comm: &dyn Communicator) -> Result<()> {
        no_grad(|| {
            for b in &self.buckets {
                let summed = comm.all_reduce_sum(&b.flatten()?)?;
                b.unflatten_mean(&summed, comm.world_size())?;
            }
            Ok(())
        })
    }

    /// Runs `loss`'s backward and averages every gradient over the ranks, each
    /// bucket reduced on `worker`'s thread while backward is still running.
    /// Returns when every bucket is reduced and written back: call the
    /// optimiser after it. Every rank must call it (its collectives are
    /// matched by order), with the same bucket plan.
    pub fn backward_all_reduce_mean(&self, loss: &Tensor, worker: &CommWorker) -> Result<()> {
        super::overlap::backward_all_reduce_mean(self, loss, worker)
    }
}

impl Bucket {
    /// Every gradient flattened back to back, then one presence flag per parameter, where
    /// the parameters live: a bucket of GPU parameters is flattened on the GPU, so NCCL
    /// reduces it in place (the thread and TCP communicators stage it through the host,
    /// one copy per bucket).
    pub(super) fn flatten(&self) -> Result<Tensor> {
        match self.device() {
            Device::Cpu => float_dispatch!("all_reduce_mean", self.dtype, T => self.flatten_as::<T>()),
            device => no_grad(|| self.flatten_on(device)),
        }
    }

    /// The device of the bucket's parameters (all on one: a model is moved as a whole).
    fn device(&self) -> Device {
        self.params.first().map_or(Device::Cpu, |p| p.device())
    }

    /// [`Bucket::flatten`] with tensor ops on `device`.
    fn flatten_on(&self, device: Device) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(self.params.len() + 1);
        let mut flags = Vec::with_capacity(self.params.len());
        for p in &self.params {
            match p.grad() {
                Some(g) => {
                    parts.push(g.reshape(&[p.numel()])?);
                    flags.push(1.0);
                }
                None => {
                    parts.push(Tensor::zeros(&[p.numel()], self.dtype)?.to_device(device)?);
                    flags.push(0.0);
                }
            }
        }
        parts.push(Tensor::from_f64s(&flags, &[flags.len()], self.dtype)?.to_device(device)?);
        let refs: Vec<&Tensor> = parts.iter().collect();
        Tensor::cat(&refs, 0)
    }

    fn flatten_as<T: Float + StorageElement>(&self) -> Result<Tensor> {
        let n_params = self.params.len();
        let mut flat: Vec<T> = Vec::with_capacity(self.numel + n_params);
        let mut flags = Vec::with_capacity(n_params);
        for p in &self.params {
            match p.grad() {
                Some(g) => {
                    flat.extend_from_slice(&g.host_data::<T>()?);
                    flags.push(T::one());
                }
                None => {
                    flat.resize(flat.len() + p.numel(), T::zero());
                    flags.push(T::zero());
                }
            }
        }
        flat.extend(flags);
        Tensor::from_vec(flat, &[self.numel + n_params])
    }

    /// Writes `summed / world_size` (a flattened bucket summed over the ranks)
    /// back as the gradients; a parameter whose flag sums to 0 keeps none.
    pub(super) fn unflatten_mean(&self, summed: &Tensor, world_size: usize) -> Result<()> {
        if summed.shape() != [self.numel + self.params.len()] || summed.dtype() != self.dtype {
            return Err(Error::dist(
                "all_reduce_mean",
                format!(
                    "internal: a bucket of {} elements came back as {:?} {}",
                    self.numel + self.params.len(),
                    summed.shape(),
                    summed.dtype()
                ),
            ));
        }
        match self.device() {
            Device::Cpu => {
                float_dispatch!("all_reduce_mean", self.dtype, T => self.unflatten_as::<T>(summed, world_size))
            }
            device => no_grad(|| self.unflatten_on(device, summed, world_size)),
        }
    }

    /// [`Bucket::unflatten_mean`] with tensor ops on `device`. Only the flags come to the
    /// host (one value per parameter): whether a gradient exists is decided there.
    fn unflatten_on(&self, device: Device, summed: &Tensor, world_size: usize) -> Result<()> {
        let summed = summed.to_device(device)?;
        let flags = summed.narrow(0, self.numel, self.params.len())?.to_device(Device::Cpu)?.to_f64_vec();
        let scale = 1.0 / world_size as f64;
        let mut start = 0;
        for (p, flag) in self.params.iter().zip(flags) {
            let n = p.numel();
            let grad = if flag == 0.0 {
                None // no rank produced a gradient: leave it unset, as a single process would
            } else {
                Some(summed.narrow(0, start, n)?.mul_scalar(scale)?.reshape(p.shape())?)
            };
            p.set_grad(grad)?;
            start += n;
        }
        Ok(())
    }

    fn unflatten_as<T: Float + StorageElement>(&self, summed: &Tensor, world_size: usize) -> Result<()> {
        let summed = summed.host_data::<T>()?;
        let scale = 1.0 / world_size as f64;
        let mut start = 0;
        for (i, p) in self.params.iter().enumerate() {
            let n = p.numel();
            let grad = if summed[self.numel + i] == T::zero() {
                None // no rank produced a gradient: leave it unset, as a single process would
            } else {
                let mean: Vec<T> = summed[start..start + n].iter().map(|&v| T::of_f64(v.as_f64() * scale)).collect();
                Some(Tensor::from_vec(mean, p.shape())?.to_device(p.device())?)
            };
            p.set_grad(grad)?;
            start += n;
        }
        Ok(())
    }
}
