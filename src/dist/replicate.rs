//! Every rank starts from rank 0's weights, as PyTorch DDP makes sure when it wraps a model.
//!
//! Ranks build their models from the same seed, and a resume loads the same checkpoint, so
//! the weights already agree; the broadcast makes that a guarantee rather than an
//! assumption (a rank that resumed another copy of the file, a model whose initialisation
//! came to depend on something rank-local), instead of ranks that train apart in silence.
//! Parameters and buffers (batch-norm running statistics) go where they live: GPU ranks under
//! NCCL send their device buffers.

use super::Communicator;
use crate::error::Result;
use crate::nn::{state_dict, Module};

/// Overwrites every parameter and buffer of `model` with rank 0's, in place (the optimiser
/// and the gradient buckets keep the same tensors). Every rank must call it, with the same
/// architecture. Returns how many tensors were broadcast.
pub fn broadcast_from_rank0(model: &dyn Module, comm: &dyn Communicator) -> Result<usize> {
    let tensors = state_dict(model);
    for (_, t) in &tensors {
        t.set_data(&comm.broadcast(t, 0)?)?;
    }
    Ok(tensors.len())
}
