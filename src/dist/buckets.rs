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
//! On the CPU (and in this version generally) the buckets are reduced one after
//! another *after* backward has finished: there is no overlap of communication
//! with backward yet. The bucket order is the one an overlapped NCCL version
//! would use, so adding overlap changes when buckets are reduced, not what.
//!
//! A parameter with no gradient on a rank contributes zeros. Each bucket also
//! carries one flag per parameter (1 where the rank has a gradient), so a
//! parameter that no rank touched keeps no gradient at all, as in PyTorch.

use super::Communicator;
use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{DType, Float, StorageElement, Tensor};

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_MB: f64 = 25.0;

struct Bucket {
    params: Vec<Tensor>,
    dtype: DType,
    numel: usize,
}

/// The bucket plan for one model's parameters; build it once, reduce every step.
pub struct GradientBuckets {
    buckets: Vec<Bucket>,
}

impl GradientBuckets {
    /// Groups `params` (in registration order, e.g. from `nn::parameters`)
    /// into buckets of at most `bucket_mb` MB, filled from the last parameter
    /// backwards. A parameter larger than the cap gets a bucket of its own; a
    /// bucket holds one dtype.
    pub fn new(params: &[Tensor], bucket_mb: f64) -> Result<GradientBuckets> {
        const OP: &str = "GradientBuckets::new";
        if !(bucket_mb > 0.0 && bucket_mb.is_finite()) {
            return Err(Error::invalid(OP, format!("bucket size must be a positive number of MB, got {bucket_mb}")));
        }
        if let Some(p) = params.iter().find(|p| !p.is_tracked() || !p.dtype().is_compute_float()) {
            return Err(Error::invalid(
                OP,
                format!("every parameter must be a trainable f32/f64 tensor; got {:?} {}", p.shape(), p.dtype()),
            ));
        }
        let cap_bytes = (bucket_mb * 1024.0 * 1024.0) as usize;
        let mut buckets: Vec<Bucket> = Vec::new();
        for p in params.iter().rev() {
            let bytes = p.numel() * p.dtype().size_in_bytes();
            let fits = buckets
                .last()
                .is_some_and(|b| b.dtype == p.dtype() && (b.numel * b.dtype.size_in_bytes() + bytes <= cap_bytes));
            if !fits {
                buckets.push(Bucket { params: Vec::new(), dtype: p.dtype(), numel: 0 });
            }
            let b = buckets.last_mut().expect("a bucket was just pushed");
            b.params.push(p.clone());
            b.numel += p.numel();
        }
        Ok(GradientBuckets { buckets })
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
        if comm.world_size() == 1 {
            return Ok(());
        }
        no_grad(|| {
            for b in &self.buckets {
                float_dispatch!("all_reduce_mean", b.dtype, T => reduce_bucket::<T>(b, comm)?);
            }
            Ok(())
        })
    }
}

fn reduce_bucket<T: Float + StorageElement>(b: &Bucket, comm: &dyn Communicator) -> Result<()> {
    let n_params = b.params.len();
    // Layout: every gradient flattened back to back, then one presence flag per parameter.
    let mut flat: Vec<T> = Vec::with_capacity(b.numel + n_params);
    let mut flags = Vec::with_capacity(n_params);
    for p in &b.params {
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
    let summed = comm.all_reduce_sum(&Tensor::from_vec(flat, &[b.numel + n_params])?)?;
    let summed = summed.host_data::<T>()?;
    let scale = 1.0 / comm.world_size() as f64;
    let mut start = 0;
    for (i, p) in b.params.iter().enumerate() {
        let n = p.numel();
        let grad = if summed[b.numel + i] == T::zero() {
            None // no rank produced a gradient: leave it unset, as a single process would
        } else {
            let mean: Vec<T> = summed[start..start + n].iter().map(|&v| T::of_f64(v.as_f64() * scale)).collect();
            Some(Tensor::from_vec(mean, p.shape())?)
        };
        p.set_grad(grad)?;
        start += n;
    }
    Ok(())
}
