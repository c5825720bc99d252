//! Global negatives: NT-Xent over the whole global batch, not just this rank's.
//!
//! With W ranks of b clips each, a rank alone would contrast every projection
//! with 2b − 2 negatives; SimCLR contrasts it with all 2Wb − 2 of the global
//! batch. Each rank gathers every rank's projections, computes the same global
//! loss, and sends the gradient back to the rank that owns each row.
//!
//! The gradient follows SimCLR's `GatherLayer`: the objective of the job is
//! the sum of the ranks' losses Σ_r L_r, so the gradient of this rank's rows
//! is Σ_r ∂L_r/∂(gathered rows of this rank) — an all-reduce-sum of the
//! incoming gradient, then this rank's slice. Every rank computes the same
//! global loss L, so that is W·∂L/∂z_local, and the W is cancelled when the
//! parameter gradients are averaged over ranks ([`super::GradientBuckets`]):
//! the averaged gradient equals the single-process gradient on the global batch.

use super::Communicator;
use crate::autograd::record;
use crate::error::{Error, Result};
use crate::ops::loss::nt_xent;
use crate::tensor::Tensor;
use std::sync::Arc;

/// Every rank's `x` concatenated along axis 0 in rank order, recorded on the
/// tape (op `all_gather`). All ranks must pass the same shape and must all
/// run backward through it (the backward is a collective too).
pub fn all_gather(x: &Tensor, comm: &Arc<dyn Communicator>) -> Result<Tensor> {
    let out = comm.all_gather(x)?;
    let (rank, rows) = (comm.rank(), x.shape()[0]);
    let comm = comm.clone();
    Ok(record("all_gather", &[x], out, move |g, _| {
        let summed = comm.all_reduce_sum(g)?;
        Ok(vec![Some(summed.narrow(0, rank * rows, rows)?.contiguous()?)])
    }))
}

/// NT-Xent over the global batch. `z_local: [2b, D]` holds this rank's
/// projections, rows 0..b view 1 and b..2b view 2 of its b clips (the layout
/// [`nt_xent`] expects). The global matrix is [view 1 of ranks 0..W; view 2 of
/// ranks 0..W], so with the global batch split over ranks in order it is
/// exactly the single-process matrix. Every rank returns the same loss.
/// Every rank must pass the same b.
pub fn global_nt_xent(z_local: &Tensor, temperature: f64, comm: &Arc<dyn Communicator>) -> Result<Tensor> {
    const OP: &str = "global_nt_xent";
    if z_local.rank() != 2 || z_local.shape()[0] < 2 || z_local.shape()[0] % 2 != 0 {
        return Err(Error::shape(
            OP,
            format!("z_local must be [2b, D] (view 1 then view 2 of b >= 1 clips), got {:?}", z_local.shape()),
        ));
    }
    let b = z_local.shape()[0] / 2;
    let w = comm.world_size();
    // One collective for both views: gathered rows are [v1 r0, v2 r0, v1 r1, v2 r1, ...].
    let gathered = all_gather(z_local, comm)?;
    let view = |v: usize| (0..w).flat_map(move |r| (0..b).map(move |i| 2 * b * r + v * b + i));
    let order: Vec<usize> = view(0).chain(view(1)).collect();
    nt_xent(&gathered.index_select(0, &order)?, temperature)
}
