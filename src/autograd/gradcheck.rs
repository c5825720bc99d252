//! Gradient checking: analytic gradients from the tape against central finite
//! differences, in f64.
//!
//! For an op `y = f(x₁, …, xₙ)` we check the scalar `L = Σ R ⊙ y` with a fixed
//! random `R` (so every output element matters, with a different weight).
//! For each input element, `∂L/∂x ≈ (L(x + ε) − L(x − ε)) / 2ε`, with error
//! O(ε²); in f64 with ε = 1e-6 that is far below the tolerance.

use crate::autograd::{graph_op_names, no_grad};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    pub eps: f64,
    pub atol: f64,
    pub rtol: f64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions { eps: 1e-6, atol: 1e-7, rtol: 1e-5 }
    }
}

#[derive(Debug)]
pub struct GradcheckReport {
    /// Ops recorded on the tape when the function ran.
    pub ops: Vec<&'static str>,
    /// Largest |analytic − numeric| over all input elements.
    pub max_abs_err: f64,
    /// Number of input elements checked.
    pub checked: usize,
}

fn weighted_sum(y: &Tensor, r: &[f64]) -> f64 {
    y.to_f64_vec().iter().zip(r).map(|(a, b)| a * b).sum()
}

/// Checks `f`'s gradients with respect to every tensor in `inputs` (all f64).
/// Inputs keep their layout for the analytic pass, so strided views are tested
/// as views. Returns the ops seen and the worst error, or an error naming the
/// first element whose gradients disagree.
pub fn gradcheck(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    opts: GradcheckOptions,
) -> Result<GradcheckReport> {
    for x in inputs {
        if x.dtype() != DType::F64 {
            return Err(Error::dtype("gradcheck", format!("inputs must be f64, got {}", x.dtype())));
        }
    }
    let leaves: Vec<Tensor> = inputs.iter().map(|x| x.requires_grad()).collect::<Result<_>>()?;
    let y = f(&leaves)?;
    let ops = graph_op_names(&y);
    let mut rng = Rng::new(0x5eed);
    let r: Vec<f64> = (0..y.numel()).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
    let r_t = Tensor::from_vec(r.clone(), y.shape())?;
    let loss = y.mul(&r_t)?.sum_all()?;
    loss.backward()?;

    let base: Vec<Vec<f64>> = inputs.iter().map(|x| x.to_f64_vec()).collect();
    let mut max_abs_err: f64 = 0.0;
    let mut checked = 0;
    for (i, leaf) in leaves.iter().enumerate() {
        let analytic = match leaf.grad() {
            Some(g) => g.to_f64_vec(),
            None => vec![0.0; leaf.numel()], // output does not depend on this input
        };
        for j in 0..base[i].len() {
            let eval = |delta: f64| -> Result<f64> {
                let perturbed: Vec<Tensor> = base
                    .iter()
                    .zip(inputs)
                    .enumerate()
                    .map(|(k, (vals, x))| {
                        let mut v = vals.clone();
                        if k == i {
                            v[j] += delta;
                        }
                        Tensor::from_vec(v, x.shape())
                    })
                    .collect::<Result<_>>()?;
                Ok(weighted_sum(&no_grad(|| f(&perturbed))?, &r))
            };
            let numeric = (eval(opts.eps)? - eval(-opts.eps)?) / (2.0 * opts.eps);
            let err = (analytic[j] - numeric).abs();
            if !(err <= opts.atol + opts.rtol * numeric.abs()) {
                return Err(Error::Autograd(format!(
                    "gradcheck failed for input {i} (shape {:?}) element {j}: analytic {:.10e}, numeric {:.10e} (ops {ops:?})",
                    leaf.shape(),
                    analytic[j],
                    numeric
                )));
            }
            max_abs_err = max_abs_err.max(err);
            checked += 1;
        }
    }
    Ok(GradcheckReport { ops, max_abs_err, checked })
}
