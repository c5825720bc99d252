//! The gradient all-reduce overlapped with backward, as PyTorch DDP's reducer
//! does it: a bucket is reduced while backward computes the layers before it.
//!
//! One step, on every rank:
//! 1. backward starts ([`autograd::backward_with_hook`]) and reports which
//!    parameters the loss reaches; the others (unused on this rank) get no
//!    gradient from it, so they are final at once and count as ready, as with
//!    DDP's `find_unused_parameters` (without a gradient they are sent as
//!    zeros with flag 0). Marking them at the start rather than at the end
//!    keeps them from holding back their bucket and every bucket after it;
//! 2. each time backward reports a parameter's gradient final, its bucket's
//!    count of missing gradients drops; when bucket i is complete *and*
//!    buckets 0..i were launched, it is flattened on this thread and queued on
//!    the rank's [`CommWorker`] (a complete bucket waits until every bucket
//!    before it is launched, so every rank launches them in the same order);
//! 3. after backward, the caller waits for the buckets in order and writes
//!    each mean back, exactly as [`GradientBuckets::all_reduce_mean`] does:
//!    same flattened buffers, same collectives, same order, so bitwise the
//!    same gradients.
//!
//! Collectives that backward itself makes (global NT-Xent's all-gather, sync
//! batch norm) go through the same worker, so they stay in the same order
//! relative to the buckets on every rank as long as the ranks run the same
//! graph. A graph that differs between ranks *and* has collectives inside
//! backward can pair the wrong calls (as in PyTorch); the communicators refuse
//! a pairing of different collectives or shapes with an error.

use super::buckets::GradientBuckets;
use super::worker::{CommWorker, Pending};
use super::Communicator;
use crate::autograd::{self, LeafHook, LeafId};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashSet;

/// The overlapped reduction of one backward: which parameters are final, and
/// the buckets launched so far.
struct Step<'a> {
    plan: &'a GradientBuckets,
    worker: &'a CommWorker,
    /// Per bucket, per parameter: its gradient is final.
    ready: Vec<Vec<bool>>,
    /// Per bucket: parameters not final yet.
    missing: Vec<usize>,
    /// Buckets `0..launched.len()` are queued on the worker, in order.
    launched: Vec<Pending<Tensor>>,
}

impl<'a> Step<'a> {
    fn new(plan: &'a GradientBuckets, worker: &'a CommWorker) -> Step<'a> {
        Step {
            plan,
            worker,
            ready: plan.buckets.iter().map(|b| vec![false; b.params.len()]).collect(),
            missing: plan.buckets.iter().map(|b| b.params.len()).collect(),
            launched: Vec::with_capacity(plan.buckets.len()),
        }
    }

    fn mark_ready(&mut self, bucket: usize, pos: usize) -> Result<()> {
        if std::mem::replace(&mut self.ready[bucket][pos], true) {
            return Ok(()); // the hook reports each leaf once; nothing to do a second time
        }
        self.missing[bucket] -= 1;
        // Launch in bucket order: a complete bucket waits for every bucket before it.
        while let Some(&0) = self.missing.get(self.launched.len()) {
            let flat = self.plan.buckets[self.launched.len()].flatten()?;
            self.launched.push(self.worker.submit("all_reduce_sum", move |comm| comm.all_reduce_sum(&flat)));
        }
        Ok(())
    }

    /// Waits for every bucket, in order, and writes the means back.
    fn finish(self) -> Result<()> {
        if self.launched.len() != self.plan.buckets.len() {
            return Err(Error::dist(
                "all_reduce_mean",
                format!(
                    "internal: backward finished with {} of {} gradient buckets launched",
                    self.launched.len(),
                    self.plan.buckets.len()
                ),
            ));
        }
        let world = self.worker.world_size();
        for (bucket, pending) in self.plan.buckets.iter().zip(self.launched) {
            bucket.unflatten_mean(&pending.wait()?, world)?;
        }
        Ok(())
    }
}

impl LeafHook for Step<'_> {
    fn reachable(&mut self, leaves: &[LeafId]) -> Result<()> {
        let reached: HashSet<LeafId> = leaves.iter().copied().collect();
        let unused: Vec<(usize, usize)> =
            self.plan.slots.iter().filter(|(leaf, _)| !reached.contains(leaf)).map(|(_, &slot)| slot).collect();
        // In any order: buckets are launched in bucket order whatever completes them.
        for (bucket, pos) in unused {
            self.mark_ready(bucket, pos)?;
        }
        Ok(())
    }

    fn ready(&mut self, leaf: LeafId) -> Result<()> {
        match self.plan.slots.get(&leaf) {
            Some(&(bucket, pos)) => self.mark_ready(bucket, pos),
            None => Ok(()), // a tracked tensor that is not one of the bucketed parameters
        }
    }
}

/// See [`GradientBuckets::backward_all_reduce_mean`].
pub(super) fn backward_all_reduce_mean(plan: &GradientBuckets, loss: &Tensor, worker: &CommWorker) -> Result<()> {
    let mut step = Step::new(plan, worker);
    // On a backward error, buckets already queued still run (the other ranks are
    // waiting for them); this rank reports its own error and launches no more.
    autograd::backward_with_hook(loss, &mut step)?;
    step.finish()
}
