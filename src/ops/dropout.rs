//! Inverted dropout: keep each element with probability 1 − p and scale it by
//! 1/(1 − p), so the expected activation is unchanged and evaluation needs no
//! rescaling. The mask comes from the caller's seeded RNG (reproducible runs);
//! backward multiplies by the same mask.

use crate::autograd::{no_grad, record};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// Zeroes each element of `x` with probability `p` (in [0, 1)) and scales the
/// rest by 1/(1 − p) when `training`; the identity otherwise or when p = 0.
pub fn dropout(x: &Tensor, p: f64, training: bool, rng: &mut Rng) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid("dropout", format!("p must be in [0, 1), got {p}")));
    }
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 / (1.0 - p);
    // The mask already carries the 1/(1 − p) scale: y = x·mask, dx = g·mask.
    let mask = float_dispatch!("dropout", x.dtype(), T => {
        let keep = T::of_f64(keep);
        let m: Vec<T> = (0..x.numel()).map(|_| if rng.uniform() < p { T::of_f64(0.0) } else { keep }).collect();
        Tensor::from_vec(m, x.shape())?
    });
    // On a GPU the mask is drawn here, on the host, from the same RNG stream and uploaded: CPU
    // and GPU runs with one seed then drop exactly the same elements (and leave the stream in
    // the same state), which keeps runs reproducible across devices. The multiplies run on the
    // device. (A no-op on the CPU.)
    let mask = mask.to_device(x.device())?;
    let out = no_grad(|| x.detach().mul(&mask))?;
    Ok(record("dropout", &[x], out, move |g, _| Ok(vec![Some(g.mul(&mask)?)])))
}
