//! Neural-network modules: layers that own their parameters, named the way
//! PyTorch names them so weights move between the two.
//!
//! A `Module` runs forward and lists its tensors by dotted name through
//! `visit` (parameters, and buffers such as batch-norm running statistics).
//! Everything else — collecting parameters for an optimiser, saving and
//! loading state dicts — is built on `visit`.

pub mod attention;
pub mod batchnorm;
pub mod conv;
pub mod init;
pub mod layernorm;
pub mod linear;
pub mod mlp;
pub mod resnet;
pub mod simclr;
pub mod spec;
pub mod temporal;
pub mod vivit;

pub use attention::MultiHeadAttention;
pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use layernorm::LayerNorm;
pub use linear::Linear;
pub use mlp::Mlp;

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Trained by the optimiser.
    Parameter,
    /// State that is saved but not trained (running statistics, counters).
    Buffer,
}

pub trait Module {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor>;

    /// Calls `f(name, tensor, kind)` for every tensor, names prefixed by `prefix`
    /// (e.g. `layer1.0.` — pass "" at the top).
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind));

    /// Switches between training (batch statistics, dropout on) and evaluation.
    fn set_training(&mut self, _training: bool) {}

    /// Calls `f` on every `BatchNorm2d` inside (e.g. to synchronise them over ranks).
    fn for_each_batch_norm(&mut self, _f: &mut dyn FnMut(&mut BatchNorm2d)) {}
}

/// `prefix` + `name`, with the dot PyTorch puts between them.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The trainable parameters, by name, in a stable order.
pub fn parameters(m: &dyn Module) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    m.visit("", &mut |n, t, k| {
        if k == TensorKind::Parameter {
            out.push((n.to_string(), t.clone()));
        }
    });
    out
}

/// Parameters and buffers, by name: what a checkpoint holds.
pub fn state_dict(m: &dyn Module) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    m.visit("", &mut |n, t, _| out.push((n.to_string(), t.clone())));
    out
}

pub fn parameter_count(m: &dyn Module) -> usize {
    parameters(m).iter().map(|(_, t)| t.numel()).sum()
}

/// Moves the module's parameters and floating-point buffers (batch-norm running statistics)
/// to `device` in place, so every parameter keeps its identity and gradient slot: an optimiser
/// built before or after the move updates the moved tensors. Integer buffers (batch norm's
/// `num_batches_tracked` counter, read on the host every step) stay on the host.
pub fn move_to_device(m: &dyn Module, device: Device) -> Result<()> {
    let mut result = Ok(());
    m.visit("", &mut |name, t, _| {
        if result.is_ok() && matches!(t.dtype(), DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
            result = move_tensor(t, device).map_err(|e| match e {
                // Out of memory keeps its own message (it says what to reduce).
                e @ Error::OutOfMemory { .. } => e,
                e => Error::invalid("move_to_device", format!("`{name}`: {e}")),
            });
        }
    });
    result
}

#[cfg(feature = "cuda")]
fn move_tensor(t: &Tensor, device: Device) -> Result<()> {
    t.move_to_device(device)
}

#[cfg(not(feature = "cuda"))]
fn move_tensor(t: &Tensor, device: Device) -> Result<()> {
    // Without the CUDA backend every tensor is on the CPU already; to_device says why not elsewhere.
    t.to_device(device).map(|_| ())
}

/// Copies `tensors` into the module's parameters and buffers by name, onto the device each
/// module tensor is on. `strict`: every module tensor must be present and every given tensor used.
pub fn load_state_dict(m: &dyn Module, tensors: &[(String, Tensor)], strict: bool) -> Result<()> {
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut problems = Vec::new();
    let mut used = 0;
    m.visit("", &mut |name, target, _| match by_name.get(name) {
        None => {
            if strict {
                problems.push(format!("missing `{name}`"))
            }
        }
        Some(src) => {
            used += 1;
            if src.shape() != target.shape() {
                problems.push(format!("`{name}`: expected {:?}, got {:?}", target.shape(), src.shape()));
                return;
            }
            let converted = src.to_dtype(target.dtype()).and_then(|c| c.to_device(target.device()));
            if let Err(e) = converted.and_then(|c| target.set_data(&c)) {
                problems.push(format!("`{name}`: {e}"));
            }
        }
    });
    if strict && used < tensors.len() {
        let mut known = Vec::new();
        m.visit("", &mut |n, _, _| known.push(n.to_string()));
        for (n, _) in tensors {
            if !known.contains(n) {
                problems.push(format!("unexpected `{n}`"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid("load_state_dict", problems.join("; ")))
    }
}
