//! Inverted dropout: keep each element with probability 1 − p and scale it by
//! 1/(1 − p), so the expected activation is unchanged and evaluation needs no
//! rescaling. The mask comes from the caller's seeded RNG (reproducible runs);
//! backward multiplies by the same mask.

use crate::autograd::record;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

pub fn dropout(x: &Tensor, p: f64, training: bool, rng: &mut Rng) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid("dropout", format!("p must be in [0, 1), got {p}")));
    }
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    let scale = 1.0 / (1.0 - p);
    let mask_values: Vec<f64> = (0..x.numel()).map(|_| if rng.uniform() < p { 0.0 } else { scale }).collect();
    let mask = Tensor::from_f64s(&mask_values, x.shape(), x.dtype())?;
    let out = crate::autograd::no_grad(|| x.detach().mul(&mask))?;
    Ok(record("dropout", &[x], out, move |g, _| Ok(vec![Some(g.mul(&mask)?)])))
}
