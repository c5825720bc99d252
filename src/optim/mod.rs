//! Optimisers and schedules. Each optimiser owns its per-parameter state and
//! updates parameters in place through `Tensor::set_data`, outside the graph.
//!
//! Parameters on a GPU (f32) are updated by the fused kernels instead (`cuda.rs`), with their
//! state on the same device; the CPU code path is the reference they are tested against.

pub mod adamw;
#[cfg(feature = "cuda")]
mod cuda;
pub mod lars;
pub mod schedule;
pub mod sgd;

pub use adamw::AdamW;
pub use lars::Lars;
pub use schedule::{clip_grad_norm, grad_norm, warmup_cosine};
pub use sgd::Sgd;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// What the trainer needs from any optimiser.
pub trait Optimizer {
    /// One update from the accumulated gradients (parameters without one are skipped).
    fn step(&mut self) -> Result<()>;
    fn zero_grad(&self);
    /// The learning rate of the next step (the schedule sets it every step).
    fn set_lr(&mut self, lr: f64);
    /// Everything a checkpoint must save to continue exactly.
    fn state(&self) -> OptimizerState;
    /// Restores `state()` of an optimiser over parameters of the same shapes.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;
}

/// Per-parameter buffers named `{buffer}.{parameter index}` (absent until the
/// parameter first had a gradient), and the number of steps taken.
#[derive(Clone, Default)]
pub struct OptimizerState {
    pub steps: u64,
    pub buffers: Vec<(String, Tensor)>,
}

/// Appends `bufs` (one slot per parameter) to `out` as `{name}.{i}`: snapshots, not handles
/// (device state is updated in place, and a detached copy shares only the storage, which the
/// next step then copies before writing).
pub(crate) fn export_buffers(name: &str, bufs: &[Option<Tensor>], out: &mut Vec<(String, Tensor)>) {
    for (i, b) in bufs.iter().enumerate() {
        if let Some(t) = b {
            out.push((format!("{name}.{i}"), t.detach()));
        }
    }
}

/// The inverse of `export_buffers`: fills `bufs` from `state`, checking each
/// buffer has its parameter's shape, and puts each on its parameter's device.
pub(crate) fn import_buffers(
    name: &str,
    params: &[Tensor],
    bufs: &mut [Option<Tensor>],
    state: &OptimizerState,
) -> Result<()> {
    let by_name: HashMap<&str, &Tensor> = state.buffers.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (i, (p, slot)) in params.iter().zip(bufs.iter_mut()).enumerate() {
        *slot = match by_name.get(format!("{name}.{i}").as_str()) {
            None => None,
            Some(t) if t.shape() == p.shape() => Some(t.to_dtype(p.dtype())?.contiguous()?.to_device(p.device())?),
            Some(t) => {
                return Err(Error::invalid(
                    "optimizer state",
                    format!("`{name}.{i}` has shape {:?} but parameter {i} has {:?}", t.shape(), p.shape()),
                ))
            }
        };
    }
    Ok(())
}
