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
//!
//! [`backward_with_hook`] also says when each leaf's gradient is *final*: it
//! counts, before the walk, the edges of the graph that end at each leaf, and
//! calls [`LeafHook::ready`] when the last node holding such an edge has run.
//! Data-parallel training uses it to all-reduce the last layers' gradients
//! while backward is still computing the first layers' (`dist::overlap`).

pub mod gradcheck;
pub mod op_times;

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
    op_times::forward_recorded(name);
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

/// Identifies a trainable leaf (its gradient slot) for as long as the leaf lives;
/// every clone of a parameter tensor has the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeafId(usize);

/// The id of a trainable leaf (`requires_grad`); `None` for constants and op outputs.
pub fn leaf_id(t: &Tensor) -> Option<LeafId> {
    match t.grad_info() {
        GradInfo::Leaf(slot) => Some(slot_id(slot)),
        _ => None,
    }
}

fn slot_id(slot: &Arc<GradSlot>) -> LeafId {
    LeafId(Arc::as_ptr(slot) as usize)
}

/// What [`backward_with_hook`] tells its caller about the leaves.
pub trait LeafHook {
    /// Called once, before any gradient is computed, with every leaf the loss
    /// depends on (each once). A leaf not in the list gets nothing from this
    /// backward: its gradient is already final.
    fn reachable(&mut self, _leaves: &[LeafId]) -> Result<()> {
        Ok(())
    }

    /// Every node with an edge to `leaf` has run: its gradient will not change
    /// again in this backward (it may still be `None` if no node produced one).
    /// Called exactly once per reachable leaf, on the thread running backward.
    fn ready(&mut self, leaf: LeafId) -> Result<()>;
}

/// A closure is a hook that only wants to hear about ready leaves.
impl<F: FnMut(LeafId) -> Result<()>> LeafHook for F {
    fn ready(&mut self, leaf: LeafId) -> Result<()> {
        self(leaf)
    }
}

/// Back-propagates from a scalar `loss`, accumulating into every leaf's gradient.
pub fn backward(loss: &Tensor) -> Result<()> {
    backward_with_hook(loss, &mut |_: LeafId| Ok(()))
}

/// [`backward`], telling `hook` which leaves the loss reaches and when each
/// one's gradient is final. An error from the hook stops backward and is returned.
pub fn backward_with_hook(loss: &Tensor, hook: &mut dyn LeafHook) -> Result<()> {
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
        GradInfo::Leaf(slot) => {
            hook.reachable(&[slot_id(slot)])?;
            slot.accumulate(seed)?;
            return hook.ready(slot_id(slot));
        }
        GradInfo::Node(n) => n.clone(),
    };
    let _guard = NoGradGuard::new();
    let order = topological_order(&root);
    // How many edges of not-yet-run nodes still end at each leaf; a leaf is ready at 0.
    let mut edges_left: HashMap<LeafId, usize> = HashMap::new();
    let mut reachable = Vec::new();
    for node in order.iter().rev() {
        for (info, _) in &node.inputs {
            if let GradInfo::Leaf(slot) = info {
                let count = edges_left.entry(slot_id(slot)).or_insert(0);
                if *count == 0 {
                    reachable.push(slot_id(slot));
                }
                *count += 1;
            }
        }
    }
    hook.reachable(&reachable)?;
    let mut grads: HashMap<*const Node, Tensor> = HashMap::new();
    grads.insert(Arc::as_ptr(&root), seed);
    for node in order.iter().rev() {
        // A node no gradient reached (every consumer returned `None` for it) does not run,
        // but its edges to leaves are settled all the same.
        if let Some(grad_out) = grads.remove(&Arc::as_ptr(node)) {
            run_node(node, &grad_out, &mut grads)?;
        }
        for (info, _) in &node.inputs {
            if let GradInfo::Leaf(slot) = info {
                let count = edges_left.get_mut(&slot_id(slot)).expect("every leaf edge was counted");
                *count -= 1;
                if *count == 0 {
                    hook.ready(slot_id(slot))?;
                }
            }
        }
    }
    Ok(())
}

/// Calls `node`'s backward closure and hands each input its gradient: into the
/// leaf's slot, or added to what `grads` holds for an input node.
fn run_node(node: &Node, grad_out: &Tensor, grads: &mut HashMap<*const Node, Tensor>) -> Result<()> {
    let f = node.backward.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| {
        Error::Autograd(format!(
            "the graph through `{}` was already used by an earlier backward (the tape frees itself); \
             run the forward pass again",
            node.name
        ))
    })?;
    op_times::time_backward(node.name, || run_closure(node, f, grad_out, grads))
}

fn run_closure(node: &Node, f: BackwardFn, grad_out: &Tensor, grads: &mut HashMap<*const Node, Tensor>) -> Result<()> {
    let needs: Vec<bool> = node.inputs.iter().map(|(g, _)| g.is_tracked()).collect();
    let grads_in = f(grad_out, &needs)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn leaf(v: &[f64]) -> Tensor {
        Tensor::from_f64s(v, &[v.len()], DType::F64).unwrap().requires_grad().unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
    }

    /// Records what the hook hears: the reachable leaves, and per ready leaf its
    /// gradient at that moment and `watched`'s gradient at that moment.
    struct Recorder {
        names: Vec<(&'static str, Tensor)>,
        watched: Tensor,
        reachable: Option<Vec<&'static str>>,
        ready: Vec<(&'static str, Option<Tensor>, Option<Tensor>)>,
    }

    impl Recorder {
        fn name(&self, id: LeafId) -> &'static str {
            self.names.iter().find(|(_, t)| leaf_id(t) == Some(id)).expect("a known leaf").0
        }
    }

    impl LeafHook for Recorder {
        fn reachable(&mut self, leaves: &[LeafId]) -> Result<()> {
            assert!(self.reachable.is_none() && self.ready.is_empty(), "reachable comes once, first");
            self.reachable = Some(leaves.iter().map(|&l| self.name(l)).collect());
            Ok(())
        }

        fn ready(&mut self, id: LeafId) -> Result<()> {
            let name = self.name(id);
            let grad = self.names.iter().find(|(n, _)| *n == name).unwrap().1.grad();
            self.ready.push((name, grad, self.watched.grad()));
            Ok(())
        }
    }

    #[test]
    fn the_hook_fires_once_per_leaf_after_its_last_contribution() {
        // loss = Σ ((tanh(x·w1)·w2 + w3·w3) · w1): w1 feeds the first and the last node,
        // w3 feeds one node twice, `unused` nothing.
        let x = Tensor::from_f64s(&[0.5, -1.0, 2.0, 1.5, 0.25, -0.75], &[2, 3], DType::F64).unwrap();
        let (w1, w2, w3, unused) =
            (leaf(&[1.0, -2.0, 0.5]), leaf(&[0.3, 0.7, -1.1]), leaf(&[2.0, 1.0, -1.0]), leaf(&[9.0]));
        let loss = || {
            let h = x.mul(&w1).unwrap().tanh().unwrap();
            let y = h.mul(&w2).unwrap().add(&w3.mul(&w3).unwrap()).unwrap();
            y.mul(&w1).unwrap().sum_all().unwrap()
        };
        let names = vec![("w1", w1.clone()), ("w2", w2.clone()), ("w3", w3.clone()), ("unused", unused.clone())];
        let mut rec = Recorder { names, watched: w1.clone(), reachable: None, ready: Vec::new() };
        backward_with_hook(&loss(), &mut rec).unwrap();

        let mut reachable = rec.reachable.clone().unwrap();
        reachable.sort_unstable();
        assert_eq!(reachable, ["w1", "w2", "w3"], "`unused` is not reachable");
        let mut fired: Vec<&str> = rec.ready.iter().map(|r| r.0).collect();
        assert_eq!(fired.last(), Some(&"w1"), "w1 feeds the first node to be created, so it is ready last");
        fired.sort_unstable();
        assert_eq!(fired, ["w1", "w2", "w3"], "once per reachable leaf");
        for (name, grad, _) in &rec.ready {
            let fin = rec.names.iter().find(|(n, _)| n == name).unwrap().1.grad().unwrap();
            assert_eq!(bits(grad.as_ref().unwrap()), bits(&fin), "{name}: the gradient at its hook is the final one");
        }
        // When w2 was ready, w1 held the last node's contribution only: the hook fires during
        // backward, between accumulations, not after it.
        let (_, _, w1_then) = rec.ready.iter().find(|r| r.0 == "w2").unwrap();
        let w1_then = w1_then.as_ref().expect("w1 already had its first contribution");
        assert_ne!(bits(w1_then), bits(&w1.grad().unwrap()));
        assert!(unused.grad().is_none());

        // The plain backward computes the same gradients.
        let hooked: Vec<Tensor> = [&w1, &w2, &w3].iter().map(|w| w.grad().unwrap()).collect();
        [&w1, &w2, &w3].iter().for_each(|w| w.zero_grad());
        loss().backward().unwrap();
        for (w, g) in [&w1, &w2, &w3].iter().zip(&hooked) {
            assert_eq!(bits(&w.grad().unwrap()), bits(g));
        }
    }

    #[test]
    fn a_leaf_loss_is_reachable_and_ready_and_hook_errors_stop_backward() {
        let w = Tensor::from_f64s(&[3.0], &[], DType::F64).unwrap().requires_grad().unwrap();
        let mut seen = Vec::new();
        backward_with_hook(&w, &mut |id: LeafId| {
            seen.push(id);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [leaf_id(&w).unwrap()]);
        assert_eq!(w.grad().unwrap().to_f64_vec(), [1.0]);

        // A failing hook stops the walk: the first leaf's error is returned and the
        // leaves before the failing node got nothing.
        let (a, b) = (leaf(&[1.0, 2.0]), leaf(&[3.0, 4.0]));
        let loss = a.exp().unwrap().mul(&b).unwrap().sum_all().unwrap();
        let mut calls = 0;
        let err = backward_with_hook(&loss, &mut |_: LeafId| {
            calls += 1;
            Err(Error::Autograd("stop here".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("stop here"), "{err}");
        assert_eq!(calls, 1);
        assert!(b.grad().is_some() && a.grad().is_none(), "b's node ran, a's (exp) did not");
        assert_eq!(leaf_id(&loss), None, "an op output is not a leaf");
        assert_eq!(leaf_id(&a.detach()), None, "a detached copy is a constant");
        assert_eq!(leaf_id(&a.clone()), leaf_id(&a), "clones share the leaf");
    }
}
