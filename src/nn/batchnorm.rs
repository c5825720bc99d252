//! BatchNorm2d with PyTorch's parameter and buffer names
//! (`weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`).
//!
//! Under data parallelism each rank normalises with its own batch's statistics
//! unless a communicator is set (`set_sync`, or `dist::convert_sync_batch_norm`
//! for a whole model): then training uses statistics over every rank's batch.

use super::{init, join, Module, TensorKind};
use crate::dist::{sync_batch_norm_2d, Communicator};
use crate::error::Result;
use crate::ops::batchnorm::{batch_norm_2d, RunningStats};
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stats: RunningStats,
    /// Training steps seen (kept for PyTorch compatibility of state dicts).
    pub num_batches_tracked: Tensor,
    pub eps: f64,
    pub training: bool,
    /// `Some`: synchronised statistics over the communicator's ranks (`--sync_bn`).
    pub sync: Option<Arc<dyn Communicator>>,
}

impl BatchNorm2d {
    pub fn new(channels: usize, dtype: DType) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            weight: init::constant(&[channels], 1.0, dtype)?,
            bias: init::constant(&[channels], 0.0, dtype)?,
            stats: RunningStats::new(channels, dtype)?,
            num_batches_tracked: Tensor::zeros(&[], DType::I64)?,
            eps: 1e-5,
            training: true,
            sync: None,
        })
    }

    /// Synchronised statistics over `comm`'s ranks, or per-rank ones (`None`).
    pub fn set_sync(&mut self, comm: Option<Arc<dyn Communicator>>) {
        self.sync = comm;
    }
}

impl Module for BatchNorm2d {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (Some(&self.weight), Some(&self.bias));
        let y = match &self.sync {
            Some(comm) => sync_batch_norm_2d(x, w, b, &mut self.stats, self.training, self.eps, comm)?,
            None => batch_norm_2d(x, w, b, &mut self.stats, self.training, self.eps)?,
        };
        if self.training {
            let n = self.num_batches_tracked.item()? + 1.0;
            self.num_batches_tracked = Tensor::from_vec(vec![n as i64], &[])?;
        }
        Ok(y)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        f(&join(prefix, "bias"), &self.bias, TensorKind::Parameter);
        f(&join(prefix, "running_mean"), &self.stats.mean, TensorKind::Buffer);
        f(&join(prefix, "running_var"), &self.stats.var, TensorKind::Buffer);
        f(&join(prefix, "num_batches_tracked"), &self.num_batches_tracked, TensorKind::Buffer);
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        f(self);
    }
}
