//! The autograd tape.
//!
//! Every differentiable op, when any input is tracked and gradients are
//! enabled, wraps its output in a [`Node`]: the op's name, one edge per input
//! (where that input's gradient should go), and a `backward` closure that
//! captured only what the gradient needs (e.g. relu keeps its output, not its
//! input). Tensors point at the node that made them, so the graph lives
//! exactly as long as something can still call `backward` on it.
//!
//! `backward(loss)` sorts the graph topologically, walks it in reverse, calls
//! each closure once (taking it out of the node, which frees the saved
//! tensors as it goes) and accumulates gradients into the leaves' [`GradSlot`]s.
//! Backward closures run with gradients disabled, so they may use ordinary
//! tensor ops without growing the graph.

pub mod gradcheck;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Computes the gradients of a node's inputs from the gradient of its output.
/// The `&[bool]` says which inputs need one; the rest may be `None`.
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send>;

/// Where a trainable leaf's gradient accumulates.
#[derive(Default)]
pub struct GradSlot {
    grad: Mutex<Option<Tensor>>,
}

impl GradSlot {
    pub fn get(&self) -> Option<Tensor> {
        self.grad.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, g: Option<Tensor>) {
        *self.grad.lock().unwrap_or_else(|e| e.into_inner()) = g;
    }

    fn accumulate(&self, g: Tensor) -> Result<()> {
        let mut slot = self.grad.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(match slot.take() {
            None => g,
            Some(prev) => prev.add(&g)?,
        });
        Ok(())
    }
}

/// How a tensor takes part in autograd.
#[derive(Clone, Default)]
pub enum GradInfo {
    /// Not tracked: a constant as far as gradients go.
    #[default]
    None,
    /// A trainable leaf (a parameter): gradients accumulate in the slot.
    Leaf(Arc<GradSlot>),
    /// The output of a recorded op.
    Node(Arc<Node>),
}

impl GradInfo {
    pub fn is_tracked(&self) -> bool {
        !matches!(self, GradInfo::None)
    }
}

/// One recorded op application.
pub struct Node {
    pub name: &'static str,
    inputs: Vec<(GradInfo, Vec<usize>)>,
    backward: Mutex<Option<BackwardFn>>,
}

impl Drop for Node {
    /// Drops the chain of ancestors iteratively: a long graph dropped
    /// recursively (node → input node → ...) would overflow the stack.
    fn drop(&mut self) {
        let mut stack: Vec<Arc<Node>> = Vec::new();
        let take_nodes = |inputs: &mut Vec<(GradInfo, Vec<usize>)>, stack: &mut Vec<Arc<Node>>| {
            for (info, _) in inputs.drain(..) {
                if let GradInfo::Node(n) = info {
                    stack.push(n);
                }
            }
        };
        take_nodes(&mut self.inputs, &mut stack);
        while let Some(n) = stack.pop() {
            // Only the last owner dismantles a node; shared ancestors stay alive.
            if let Some(mut node) = Arc::into_inner(n) {
                take_nodes(&mut node.inputs, &mut stack);
            }
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Disables recording until dropped (restores the previous state).
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    pub fn new() -> NoGradGuard {
        NoGradGuard { prev: GRAD_ENABLED.with(|g| g.replace(false)) }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Runs `f` with gradient recording off (evaluation, optimiser steps, backward itself).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// True when an op on these inputs should be recorded.
pub fn needs_grad(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.grad_info().is_tracked())
}

/// Records `output = op(inputs)` on the tape if any input is tracked.
/// `backward` receives the output's gradient and returns one gradient per input.
pub fn record(
    name: &'static str,
    inputs: &[&Tensor],
    output: Tensor,
    backward: impl FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + 'static,
) -> Tensor {
    if !needs_grad(inputs) {
        return output;
    }
    debug_assert!(crate::ops::registry::is_recorded_op(name), "op `{name}` records a node but is not in ops::registry");
    let node = Node {
        name,
        inputs: inputs.iter().map(|t| (t.grad_info().clone(), t.shape().to_vec())).collect(),
        backward: Mutex::new(Some(Box::new(backward))),
    };
    output.with_grad_info(GradInfo::Node(Arc::new(node)))
}

/// Nodes reachable from `root`, inputs before the nodes that consume them.
fn topological_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut order = Vec::new();
    let mut visited: HashMap<*const Node, ()> = HashMap::new();
    // Iterative post-order DFS: deep networks would overflow a recursive one.
    let mut stack: Vec<(Arc<Node>, usize)> = vec![(root.clone(), 0)];
    visited.insert(Arc::as_ptr(root), ());
    while let Some((node, next_child)) = stack.pop() {
        if next_child < node.inputs.len() {
            stack.push((node.clone(), next_child + 1));
            if let GradInfo::Node(child) = &node.inputs[next_child].0 {
                if visited.insert(Arc::as_ptr(child), ()).is_none() {
                    stack.push((child.clone(), 0));
                }
            }
        } else {
            order.push(node);
        }
    }
    order
}

/// Back-propagates from a scalar `loss`, accumulating into every leaf's gradient.
pub fn backward(loss: &Tensor) -> Result<()> {
    if loss.numel() != 1 {
        return Err(Error::Autograd(format!(
            "backward needs a scalar loss, got shape {:?} (reduce it with sum or mean first)",
            loss.shape()
        )));
    }
    let seed = Tensor::ones(loss.shape(), loss.dtype())?.to_device(loss.device())?;
    let root = match loss.grad_info() {
        GradInfo::None => {
            return Err(Error::Autograd(
                "loss does not depend on any parameter that requires grad (was it computed under no_grad?)".into(),
            ))
        }
        GradInfo::Leaf(slot) => return slot.accumulate(seed),
        GradInfo::Node(n) => n.clone(),
    };
    let _guard = NoGradGuard::new();
    let order = topological_order(&root);
    let mut grads: HashMap<*const Node, Tensor> = HashMap::new();
    grads.insert(Arc::as_ptr(&root), seed);
    for node in order.iter().rev() {
        let Some(grad_out) = grads.remove(&Arc::as_ptr(node)) else { continue };
        let f = node.backward.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| {
            Error::Autograd(format!(
                "the graph through `{}` was already used by an earlier backward (the tape frees itself); \
                 run the forward pass again",
                node.name
            ))
        })?;
        let needs: Vec<bool> = node.inputs.iter().map(|(g, _)| g.is_tracked()).collect();
        let grads_in = f(&grad_out, &needs)?;
        if grads_in.len() != node.inputs.len() {
            return Err(Error::Autograd(format!(
                "op `{}` returned {} gradients for {} inputs",
                node.name,
                grads_in.len(),
                node.inputs.len()
            )));
        }
        for ((info, shape), g) in node.inputs.iter().zip(grads_in) {
            let Some(g) = g else { continue };
            if g.shape() != shape.as_slice() {
                return Err(Error::Autograd(format!(
                    "op `{}` produced a gradient of shape {:?} for an input of shape {shape:?}",
                    node.name,
                    g.shape()
                )));
            }
            match info {
                GradInfo::None => {}
                GradInfo::Leaf(slot) => slot.accumulate(g)?,
                GradInfo::Node(n) => {
                    let key = Arc::as_ptr(n);
                    let acc = match grads.remove(&key) {
                        Some(prev) => prev.add(&g)?,
                        None => g,
                    };
                    grads.insert(key, acc);
                }
            }
        }
    }
    Ok(())
}

/// Names of the ops in the graph that produced `t` (each node once, inputs first).
/// Used by the gradcheck suite to prove each case exercises the op it claims to.
pub fn graph_op_names(t: &Tensor) -> Vec<&'static str> {
    match t.grad_info() {
        GradInfo::Node(n) => topological_order(n).iter().map(|n| n.name).collect(),
        _ => Vec::new(),
    }
}
