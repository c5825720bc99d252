//! Data-parallel training: the ranks of a job and the collectives between them.
//!
//! A [`Communicator`] joins `world_size` ranks (one per GPU, or one per thread
//! in tests). Every rank calls the same collectives in the same order; each
//! call returns once all ranks have made it. Implementations:
//! - [`SingleProcess`]: world size 1, every collective is the identity;
//! - [`ThreadGroup`]: ranks are threads of one process (CPU tests), with a
//!   timeout and clear errors when a rank leaves or the ranks disagree;
//! - [`TcpCommunicator`]: ranks are processes (CPU training with `--ddp`,
//!   torchrun, SLURM), a star over TCP around rank 0 with the same semantics;
//!   these two take tensors on a GPU too, staging them through host memory
//!   ([`through_host`]), so GPU ranks train over them where there is no NCCL
//!   (on the kernel emulator, say);
//! - [`nccl::NcclCommunicator`] (feature `nccl`): GPU ranks through NCCL, device
//!   tensors straight from their buffers, host tensors copied up and back
//!   (verified on a GPU: not yet).
//!
//! On top of the collectives:
//! - [`gather`]: a differentiable `all_gather` and NT-Xent over the global batch;
//! - [`buckets`]: gradient averaging in flat buckets, like PyTorch DDP, after
//!   backward or overlapped with it ([`overlap`]) on the rank's communication
//!   thread ([`worker`], which then makes all of the rank's collectives);
//! - [`sync_batchnorm`]: batch norm with statistics over every rank's batch;
//! - [`rendezvous`]: rank and world size from torchrun or SLURM, and the TCP
//!   exchange that hands rank 0's NCCL id to the others;
//! - [`replicate`]: every rank starts from rank 0's weights;
//! - [`connect`]: which communicator a launched rank joins (NCCL for GPU ranks
//!   where it can, TCP otherwise).

pub mod buckets;
pub mod connect;
pub mod gather;
pub mod launch;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod overlap;
pub mod rendezvous;
pub mod replicate;
mod round;
pub mod single;
pub mod sync_batchnorm;
pub mod tcp;
pub mod threads;
pub mod worker;

pub use buckets::GradientBuckets;
pub use connect::{connect_rank, DistBackend};
pub use gather::{all_gather, global_nt_xent};
pub use rendezvous::DistEnv;
pub use replicate::broadcast_from_rank0;
pub use single::SingleProcess;
pub use sync_batchnorm::{convert_sync_batch_norm, sync_batch_norm_2d};
pub use tcp::TcpCommunicator;
pub use threads::{ThreadCommunicator, ThreadGroup};
pub use worker::{CommWorker, Pending};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Runs a host collective on a tensor wherever it is: a tensor on a GPU is copied to host memory
/// for the collective, and the result copied back to its device. (NCCL moves device buffers
/// without the round trip; the thread and TCP communicators only know host memory.)
/// (On a host tensor both copies are the no-op of `to_device` to its own device.)
pub(crate) fn through_host(t: &Tensor, collective: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    collective(&t.to_device(Device::Cpu)?)?.to_device(t.device())
}

/// Collectives over the ranks of one job. Inputs are CPU tensors (any layout);
/// outputs are new tensors, never tracked by autograd (see [`gather::all_gather`]
/// for the differentiable version). Every rank receives bitwise-identical results.
pub trait Communicator: Send + Sync {
    /// This process's (or thread's) index, 0..world_size.
    fn rank(&self) -> usize;

    fn world_size(&self) -> usize;

    /// Elementwise sum over ranks of an f32/f64 tensor of the same shape on
    /// every rank, added in rank order (so the result does not depend on timing).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;

    /// Every rank's tensor concatenated along axis 0, in rank order. All ranks
    /// must pass the same shape (rank >= 1) and dtype.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;

    /// `root`'s tensor on every rank; the others pass a tensor of the same shape
    /// and dtype (its values are ignored), as NCCL's receive buffer.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// Checks done by every implementation before a collective, so that a bad
/// argument fails the same way at world size 1 as at world size 8.
pub(crate) fn check_all_reduce_input(t: &Tensor) -> Result<()> {
    if !t.dtype().is_compute_float() {
        return Err(Error::dtype(
            "all_reduce_sum",
            format!("only f32 and f64 tensors can be summed, got {}", t.dtype()),
        ));
    }
    Ok(())
}

pub(crate) fn check_all_gather_input(t: &Tensor) -> Result<()> {
    if t.rank() == 0 {
        return Err(Error::shape("all_gather", "cannot concatenate scalars along axis 0; reshape to [1] first"));
    }
    Ok(())
}

pub(crate) fn check_root(root: usize, world_size: usize) -> Result<()> {
    if root >= world_size {
        return Err(Error::invalid(
            "broadcast",
            format!("root rank {root} is outside the group of {world_size} ranks"),
        ));
    }
    Ok(())
}
