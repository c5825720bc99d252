//! The training loop behind `simclr-train`.
//!
//! One step, following a batch from shard to update:
//! 1. `data::loader` picks this step's clips (a seeded permutation per epoch),
//!    reads them from the memory-mapped shards and augments each clip twice
//!    (one random crop/flip/colour draw per view, applied to every frame):
//!    two tensors `[B, T, 3, S, S]`;
//! 2. `SimClr::loss` runs both views through the encoder as one batch of 2B
//!    clips (ResNet per frame + temporal pooling, or ViViT), the projection head,
//!    and NT-Xent, which asks each clip's view to find its partner among 2B − 1;
//! 3. `backward` walks the tape; the gradient norm is checked (and clipped on
//!    request); the optimiser steps with the learning rate of the warm-up +
//!    cosine schedule at this step.
//!
//! `Trainer` (`trainer.rs`) is that loop: `step` is the three items above, `end_epoch` and
//! `checkpoint` what follows. Around it: metrics per step in `OUT/metrics.jsonl`, plots per epoch,
//! checkpoints every `checkpoint_every` epochs (and, on request, every N steps or M minutes in
//! the middle of an epoch), and an exact resume. A stop signal (`crate::signals`: SIGTERM,
//! SIGINT, SIGUSR1) ends the run after the current step with a checkpoint: every rank agrees to
//! stop at the same step, rank 0 writes, and the outcome says which signal it was.
//!
//! Data parallel (a communicator of W ranks in `TrainOptions`): every rank
//! starts from rank 0's weights (`dist::broadcast_from_rank0`), the global
//! batch is split over ranks by the sampler, the loss is NT-Xent over the
//! whole global batch (`dist::global_nt_xent`), gradients are averaged in
//! buckets while backward runs (each bucket all-reduced on the rank's
//! communication thread, `dist::CommWorker`, as soon as its gradients are
//! final), the learning rate is scaled by W (the baseline's
//! linear rule), batch norm is per rank unless `sync_bn`, and only rank 0
//! writes files. The CPU tests run this with in-process thread ranks.
//!
//! On a GPU (`--device cuda`, the GPU of this rank's local rank): the model is built on the
//! host and moved there in place, the optimiser's state is made there, the forward runs under
//! bf16 autocast unless `--precision f32` (on the CPU only with `--precision bf16`, where the
//! matmul and convolution GEMMs multiply bf16 operands with AVX512-BF16), each step uploads its two augmented views once and
//! reads back the loss and the gradient norm (one value each);
//! checkpoints download the weights and state, and a resume uploads them again. The metrics
//! add the peak GPU memory; running out of it ends the run with the allocator's error, which
//! says to reduce --batch_size.

mod device;
mod trainer;

pub use device::training_device;

use crate::config::TrainConfig;
use crate::dist::Communicator;
use crate::error::{Error, Result};
use crate::optim::{AdamW, Lars, Optimizer, Sgd};
use crate::tensor::Tensor;
use std::path::PathBuf;
use std::sync::Arc;
use trainer::Trainer;

/// RNG stream of the model's initial weights (the loader uses its own
/// streams); `eval` rebuilds the same initial model as its random-init baseline.
pub const MODEL_INIT_STREAM: u64 = 0x1417;
/// LARS trust coefficient (SimCLR's value).
const LARS_ETA: f64 = 1e-3;

pub struct TrainOptions {
    /// A `checkpoint_epoch_N.safetensors` to continue from.
    pub resume: Option<PathBuf>,
    /// Draw a progress bar (on a terminal) and print one line per epoch.
    pub verbose: bool,
    /// This process's data-parallel group (`None`: one process).
    pub comm: Option<Arc<dyn Communicator>>,
}

/// Gradient bucket size for the all-reduce (PyTorch DDP's default).
const BUCKET_MB: f64 = 25.0;

#[derive(Debug)]
pub struct TrainOutcome {
    pub final_model: PathBuf,
    pub epochs_done: usize,
    pub global_step: u64,
    /// Mean loss of the last epoch trained in this run (NaN if none ran).
    pub last_epoch_loss: f64,
    /// Stopped early by a signal (its name), after writing `checkpoint`; no final model then.
    pub stopped_by: Option<String>,
    /// The last checkpoint written or resumed from.
    pub checkpoint: Option<PathBuf>,
    /// Training throughput of this run (clips per second, data loading included).
    pub clips_per_s: f64,
}

pub fn build_optimizer(cfg: &TrainConfig, params: Vec<Tensor>) -> Result<Box<dyn Optimizer>> {
    let (lr, wd) = (cfg.lr, cfg.weight_decay);
    Ok(match cfg.optimizer.as_str() {
        "adam" => Box::new(AdamW::new(params, lr, wd, false)?),
        "adamw" => Box::new(AdamW::new(params, lr, wd, true)?),
        "sgd" => Box::new(Sgd::new(params, lr, cfg.momentum, wd)?),
        "lars" => Box::new(Lars::new(params, lr, cfg.momentum, wd, LARS_ETA)?),
        other => return Err(Error::invalid("--optimizer", format!("unknown optimizer `{other}`"))),
    })
}

/// Trains as `cfg` says (optionally continuing a checkpoint) and writes
/// checkpoints, the final model, metrics and plots under `cfg.out`.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainOutcome> {
    cfg.validate()?;
    Trainer::new(cfg, opts)?.run()
}
