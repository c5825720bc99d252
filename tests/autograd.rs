//! The tape's contract: accumulation, zero_grad, detach, no_grad, freeing
//! after backward, and clear errors on misuse.

use simclr::autograd::{graph_op_names, no_grad};
use simclr::{DType, Error, Tensor};

fn param(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64s(v, shape, DType::F64).unwrap().requires_grad().unwrap()
}

#[test]
fn gradients_accumulate_across_backward_calls_until_zero_grad() {
    let w = param(&[1.0, 2.0, 3.0], &[3]);
    let loss = || w.mul(&w).unwrap().sum_all().unwrap(); // d/dw = 2w
    loss().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_f64_vec(), vec![2.0, 4.0, 6.0]);
    loss().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_f64_vec(), vec![4.0, 8.0, 12.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
    loss().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_f64_vec(), vec![2.0, 4.0, 6.0]);
}

#[test]
fn shared_subgraph_gradients_add_up() {
    // y = a·b used twice: L = Σ (y + y²) → dL/da = (1 + 2y)·b
    let a = param(&[1.0, -2.0], &[2]);
    let b = param(&[3.0, 0.5], &[2]);
    let y = a.mul(&b).unwrap();
    let l = y.add(&y.mul(&y).unwrap()).unwrap().sum_all().unwrap();
    l.backward().unwrap();
    assert_eq!(a.grad().unwrap().to_f64_vec(), vec![(1.0 + 2.0 * 3.0) * 3.0, (1.0 + 2.0 * -1.0) * 0.5]);
}

#[test]
fn detach_and_no_grad_stop_the_graph() {
    let w = param(&[2.0], &[1]);
    let d = w.detach().mul(&w).unwrap().sum_all().unwrap(); // only the right factor is tracked
    d.backward().unwrap();
    assert_eq!(w.grad().unwrap().to_f64_vec(), vec![2.0]);
    let untracked = no_grad(|| w.mul(&w).unwrap().sum_all().unwrap());
    assert!(!untracked.is_tracked());
    assert!(graph_op_names(&untracked).is_empty());
    assert!(matches!(untracked.backward(), Err(Error::Autograd(_))));
    // no_grad restores the previous state afterwards
    assert!(w.mul(&w).unwrap().is_tracked());
}

#[test]
fn tape_frees_itself_after_backward() {
    let w = param(&[1.0, 2.0], &[2]);
    let l = w.exp().unwrap().sum_all().unwrap();
    assert_eq!(graph_op_names(&l), vec!["exp", "sum"]);
    l.backward().unwrap();
    let err = l.backward().unwrap_err().to_string();
    assert!(err.contains("already used"), "{err}");
}

#[test]
fn backward_needs_a_scalar() {
    let w = param(&[1.0, 2.0], &[2]);
    let y = w.exp().unwrap();
    assert!(matches!(y.backward(), Err(Error::Autograd(_))));
}

#[test]
fn saved_tensors_survive_a_parameter_update() {
    // set_data swaps storage; a graph recorded before the step still sees the old values.
    let w = param(&[3.0], &[1]);
    let l = w.mul(&w).unwrap().sum_all().unwrap();
    w.set_data(&Tensor::from_f64s(&[10.0], &[1], DType::F64).unwrap()).unwrap();
    l.backward().unwrap();
    assert_eq!(w.grad().unwrap().to_f64_vec(), vec![6.0]);
    assert_eq!(w.to_f64_vec(), vec![10.0]);
    assert!(matches!(w.set_data(&Tensor::zeros(&[2], DType::F64).unwrap()), Err(Error::Shape { .. })));
}

#[test]
fn deep_graph_does_not_overflow_the_stack() {
    let w = param(&[0.5], &[1]);
    let mut y = w.clone();
    for _ in 0..20_000 {
        y = y.mul_scalar(1.0).unwrap();
    }
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_f64_vec(), vec![1.0]);
}
