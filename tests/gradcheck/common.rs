//! Shared helpers for gradcheck cases.

use simclr::autograd::gradcheck::{gradcheck, GradcheckOptions, GradcheckReport};
use simclr::{DType, Result, Rng, Tensor};

/// One gradient check: the registered op it covers, what makes it interesting,
/// and the check itself.
pub struct Case {
    pub op: &'static str,
    pub what: &'static str,
    pub run: Box<dyn Fn() -> Result<GradcheckReport>>,
}

pub fn case(op: &'static str, what: &'static str, run: impl Fn() -> Result<GradcheckReport> + 'static) -> Case {
    Case { op, what, run: Box::new(run) }
}

/// Random f64 tensor, values in [-1, 1), seeded by `seed`.
pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    Tensor::uniform(shape, -1.0, 1.0, DType::F64, &mut Rng::new(seed)).unwrap()
}

/// Random f64 tensor, values in [lo, hi).
pub fn rand_in(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    Tensor::uniform(shape, lo, hi, DType::F64, &mut Rng::new(seed)).unwrap()
}

/// A non-contiguous tensor with the given shape: built transposed, then
/// transposed back as a view (so its strides are not row-major).
pub fn strided(shape: &[usize], seed: u64) -> Tensor {
    assert!(shape.len() >= 2);
    let mut s = shape.to_vec();
    let r = s.len();
    s.swap(r - 1, r - 2);
    let t = rand(&s, seed).t().unwrap();
    assert!(!t.is_contiguous());
    t
}

pub fn check(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<GradcheckReport> {
    gradcheck(inputs, f, GradcheckOptions::default())
}

pub fn check_with(
    inputs: &[Tensor],
    opts: GradcheckOptions,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<GradcheckReport> {
    gradcheck(inputs, f, opts)
}
