//! NT-Xent: the normalised-temperature cross-entropy loss of SimCLR.
//!
//! A batch of N clips gives 2N projections `z` (rows 0..N: view 1 of each clip,
//! rows N..2N: view 2, in the same clip order). Each row i has one positive —
//! the other view of the same clip, p(i) = (i + N) mod 2N — and 2N − 2
//! negatives: every other row in the batch. With unit vectors ẑ = z/‖z‖ and
//! similarities s_ij = ẑ_i·ẑ_j / τ:
//!
//!   ℓ_i = −s_{i,p(i)} + log Σ_{j≠i} exp(s_ij)          loss = (1/2N) Σ_i ℓ_i
//!
//! i.e. a (2N − 1)-way softmax classification "which row is my other view?".
//! A small temperature τ sharpens the softmax, weighting hard negatives more.
//!
//! Gradient, with P_ij = softmax_{j≠i}(s_ij) (P_ii = 0):
//!   ∂loss/∂s_ij = (P_ij − [j = p(i)]) / 2N                   (call it D)
//!   ∂loss/∂ẑ    = (D + Dᵀ) ẑ / τ                         (s is symmetric in ẑ)
//!   ∂loss/∂z_i  = (g_i − ẑ_i⟨g_i, ẑ_i⟩) / ‖z_i‖           (through the normalisation)
//! Only one 2N×2N matrix (S, overwritten by D) is ever held.

use crate::autograd::record;
use crate::backend::cpu::matmul::matmul;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{Element, Float, Tensor};
#[allow(unused_imports)]
use num_traits::{Float as _, One, Zero};
use rayon::prelude::*;

/// Row-wise softmax over j ≠ i of S (in place → P), returning the mean loss.
/// `s` is the 2N×2N similarity matrix already divided by τ.
fn loss_and_softmax<T: Float>(s: &mut [T], two_n: usize) -> f64 {
    let half = two_n / 2;
    let losses: Vec<f64> = s
        .par_chunks_mut(two_n)
        .enumerate()
        .map(|(i, row)| {
            let pos = (i + half) % two_n;
            let positive = row[pos].as_f64();
            let m = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, v)| v.as_f64())
                .fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for (j, v) in row.iter_mut().enumerate() {
                let e = if j == i { 0.0 } else { (v.as_f64() - m).exp() };
                sum += e;
                *v = T::of_f64(e);
            }
            let lse = m + sum.ln();
            for v in row.iter_mut() {
                *v = T::of_f64(v.as_f64() / sum);
            }
            lse - positive
        })
        .collect();
    losses.iter().sum::<f64>() / two_n as f64
}

/// NT-Xent loss of `z: [2N, D]` at temperature τ (SimCLR uses 0.5 here, 0.1–1 in general).
pub fn nt_xent(z: &Tensor, temperature: f64) -> Result<Tensor> {
    const OP: &str = "nt_xent";
    if z.rank() != 2 {
        return Err(Error::shape(OP, format!("z must be [2N, D], got {:?}", z.shape())));
    }
    let (two_n, d) = (z.shape()[0], z.shape()[1]);
    if two_n < 2 || two_n % 2 != 0 || d == 0 {
        return Err(Error::shape(
            OP,
            format!("z must have an even number (>= 2) of rows and D > 0, got {:?}", z.shape()),
        ));
    }
    if !(temperature > 0.0) || !temperature.is_finite() {
        return Err(Error::invalid(OP, format!("temperature must be a positive number, got {temperature}")));
    }
    let (loss, zhat, norm, dmat) = crate::autograd::no_grad(|| -> Result<_> {
        let x = z.detach();
        let norm = x.mul(&x)?.sum(&[1], true)?.sqrt()?.map_f64(|v| v.max(1e-12))?;
        let zhat = x.div(&norm)?;
        float_dispatch!(OP, z.dtype(), T => {
            let s = matmul::<T>(&zhat, &zhat.t()?)?.mul_scalar(1.0 / temperature)?;
            let mut p = s.to_vec::<T>()?;
            let loss = loss_and_softmax::<T>(&mut p, two_n);
            // D = (P − onehot(positive)) / 2N, written over P.
            let scale = T::of_f64(1.0 / two_n as f64);
            for i in 0..two_n {
                let pos = (i + two_n / 2) % two_n;
                p[i * two_n + pos] = p[i * two_n + pos] - T::one();
                for v in &mut p[i * two_n..(i + 1) * two_n] {
                    *v = *v * scale;
                }
            }
            Ok((Tensor::full(&[], loss, z.dtype())?, zhat, norm, Tensor::from_vec(p, &[two_n, two_n])?))
        })
    })?;
    Ok(record(OP, &[z], loss, move |g, _| {
        let dzhat = dmat.add(&dmat.t()?)?.matmul(&zhat)?.mul_scalar(1.0 / temperature)?;
        let radial = zhat.mul(&dzhat.mul(&zhat)?.sum(&[1], true)?)?;
        let dz = dzhat.sub(&radial)?.div(&norm)?.mul(g)?;
        Ok(vec![Some(dz)])
    }))
}
