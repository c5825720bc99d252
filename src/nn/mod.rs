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
pub mod vivit;

pub use attention::MultiHeadAttention;
pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use layernorm::LayerNorm;
pub use linear::Linear;
pub use mlp::Mlp;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
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

/// Copies `tensors` into the module's parameters and buffers by name.
/// `strict`: every module tensor must be present and every given tensor used.
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
            let converted = src.to_dtype(target.dtype());
            match converted.and_then(|c| target.set_data(&c)) {
                Ok(()) => {}
                Err(_) => problems.push(format!("`{name}`: expected {:?}, got {:?}", target.shape(), src.shape())),
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
