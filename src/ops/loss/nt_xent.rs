//! NT-Xent: the normalised-temperature cross-entropy loss of SimCLR.
//!
//! SimCLR learns by agreement: each clip in a batch is augmented twice, both
//! views go through the encoder and projection head, and the loss asks every
//! projection to pick out its partner among all the others in the batch.
//!
//! A batch of N clips gives 2N projections `z` (rows 0..N: view 1 of each clip,
//! rows N..2N: view 2, in the same clip order). Row i has one positive — the
//! other view of the same clip, p(i) = (i + N) mod 2N — and 2N − 2 negatives:
//! every other row. With unit vectors ẑ = z / max(‖z‖, 1e-12) and similarities
//! s_ij = ẑ_i·ẑ_j / τ (cosine similarity over a temperature):
//!
//!   ℓ_i = −s_{i,p(i)} + log Σ_{j≠i} exp(s_ij)          loss = (1/2N) Σ_i ℓ_i
//!
//! i.e. a (2N − 1)-way softmax classification "which row is my other view?",
//! where the row itself is not a candidate (s_ii = 1/τ always; it says nothing).
//! Normalising makes only directions matter; a small temperature τ sharpens the
//! softmax so the hardest negatives dominate the gradient (SimCLR uses 0.1–0.5).
//!
//! Gradient, with P_ij = softmax_{j≠i}(s_ij) (and P_ii = 0):
//!   ∂loss/∂s_ij = (P_ij − [j = p(i)]) / 2N                  (call it D; D_ii = 0)
//!   ∂loss/∂ẑ    = (D + Dᵀ) ẑ / τ           (ẑ_i appears in both row i and column i of s)
//!   ∂loss/∂z_i  = (g_i − ẑ_i⟨g_i, ẑ_i⟩) / ‖z_i‖     (only the part orthogonal to ẑ_i survives
//!                                                   the normalisation)
//!
//! Memory: one 2N×2N buffer holds s, is overwritten by D in the softmax pass,
//! then by G = (D + Dᵀ)/τ, which is all backward needs besides ẑ and ‖z‖.
//! On a GPU the op runs in the fused kernels of kernels/nt_xent.cu (`nt_xent/cuda.rs`).

#[cfg(feature = "cuda")]
mod cuda;

use super::super::{placement, Placement};
use crate::autograd::record;
use crate::backend::cpu::matmul::{gemm_strided, GemmPrecision};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{Float, StorageElement, Tensor};
use rayon::prelude::*;

const OP: &str = "nt_xent";
/// The norm floor of `F.normalize`: a zero row maps to zero instead of NaN.
const NORM_EPS: f64 = 1e-12;

/// ẑ (rows of `z` scaled to unit length) and each row's clamped norm max(‖z_i‖, eps).
fn normalize_rows<T: Float>(z: &[T], d: usize) -> (Vec<T>, Vec<T>) {
    let mut zhat = vec![T::zero(); z.len()];
    let mut norm = vec![T::zero(); z.len() / d];
    zhat.par_chunks_mut(d).zip(z.par_chunks(d)).zip(norm.par_iter_mut()).for_each(|((out, row), nr)| {
        let n = row.iter().map(|v| v.as_f64().powi(2)).sum::<f64>().sqrt().max(NORM_EPS);
        *nr = T::of_f64(n);
        for (o, &v) in out.iter_mut().zip(row) {
            *o = T::of_f64(v.as_f64() / n);
        }
    });
    (zhat, norm)
}

/// `a · b` for row-major `a: [m, k]` and `b: [k, n]`, or `a · bᵀ` when
/// `b_transposed` (then `b` is row-major `[n, k]`, read in place).
fn matmul_rows<T: Float>(a: &[T], b: &[T], m: usize, k: usize, n: usize, b_transposed: bool) -> Vec<T> {
    assert!(a.len() == m * k && b.len() == k * n, "nt_xent: internal matmul sizes");
    let mut out = vec![T::zero(); m * n];
    let (b_rs, b_cs) = if b_transposed { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: `a` is m×k with strides (k, 1); `b` covers k×n at (b_rs, b_cs)
    // (sizes asserted above); `out` is a fresh m×n buffer aliasing neither.
    unsafe {
        gemm_strided(
            m,
            n,
            k,
            out.as_mut_ptr(),
            n as isize,
            1,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            b_rs,
            b_cs,
            false,
            rayon::current_num_threads(),
            GemmPrecision::Exact,
        );
    }
    out
}

/// Turns the cosine-similarity matrix `c = ẑẑᵀ` into G = (D + Dᵀ)/τ in place and
/// returns the mean loss (accumulated in f64).
fn loss_and_grad_matrix<T: Float>(c: &mut [T], two_n: usize, tau: f64) -> f64 {
    let half = two_n / 2;
    let scale = 1.0 / two_n as f64;
    // Row i: log-softmax over j ≠ i of s_ij = c_ij/τ, stabilised by the row max.
    let loss: f64 = c
        .par_chunks_mut(two_n)
        .enumerate()
        .map(|(i, row)| {
            let s = |v: T| v.as_f64() / tau;
            let pos = (i + half) % two_n;
            let positive = s(row[pos]);
            let candidates = || row.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &v)| s(v));
            let max = candidates().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = candidates().map(|v| (v - max).exp()).sum();
            // D_ij = (P_ij − [j = p(i)]) / 2N, written over the similarities.
            for (j, v) in row.iter_mut().enumerate() {
                let p = if j == i { 0.0 } else { (s(*v) - max).exp() / sum };
                let target = if j == pos { 1.0 } else { 0.0 };
                *v = T::of_f64((p - target) * scale);
            }
            max + sum.ln() - positive
        })
        .sum();
    // G = (D + Dᵀ)/τ, symmetric, so each pair (i, j) is written once.
    for i in 0..two_n {
        for j in i..two_n {
            let v = T::of_f64((c[i * two_n + j].as_f64() + c[j * two_n + i].as_f64()) / tau);
            c[i * two_n + j] = v;
            c[j * two_n + i] = v;
        }
    }
    loss * scale
}

/// dz_i = g·(dẑ_i − ẑ_i⟨dẑ_i, ẑ_i⟩)/‖z_i‖. Where the norm was clamped to eps,
/// ẑ = z/eps is linear in z and the gradient is just g·dẑ/eps.
fn through_normalization<T: Float>(dzhat: &[T], zhat: &[T], norm: &[T], d: usize, g: f64) -> Vec<T> {
    let mut dz = vec![T::zero(); dzhat.len()];
    dz.par_chunks_mut(d).zip(dzhat.par_chunks(d).zip(zhat.par_chunks(d))).zip(norm.par_iter()).for_each(
        |((out, (dzh, zh)), &n)| {
            let n = n.as_f64();
            let radial =
                if n > NORM_EPS { dzh.iter().zip(zh).map(|(a, b)| a.as_f64() * b.as_f64()).sum() } else { 0.0 };
            for ((o, a), b) in out.iter_mut().zip(dzh).zip(zh) {
                *o = T::of_f64(g * (a.as_f64() - b.as_f64() * radial) / n);
            }
        },
    );
    dz
}

/// NT-Xent loss of `z: [2N, D]` (two views stacked, see the module docs) at
/// temperature τ > 0. Returns a scalar; one node on the tape.
pub fn nt_xent(z: &Tensor, temperature: f64) -> Result<Tensor> {
    if z.rank() != 2 {
        return Err(Error::shape(OP, format!("z must be [2N, D] (two views stacked), got {:?}", z.shape())));
    }
    let (two_n, d) = (z.shape()[0], z.shape()[1]);
    if two_n < 2 || two_n % 2 != 0 || d == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "z must have an even number of rows (view 1 then view 2 of N >= 1 clips) and D > 0, got {:?}",
                z.shape()
            ),
        ));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::invalid(OP, format!("temperature must be a finite number > 0, got {temperature}")));
    }
    match placement(OP, &[z])? {
        Placement::Cpu => float_dispatch!(OP, z.dtype(), T => nt_xent_impl::<T>(z, two_n, d, temperature)),
        #[cfg(feature = "cuda")]
        Placement::Cuda => cuda::nt_xent(z, two_n, d, temperature),
    }
}

fn nt_xent_impl<T: Float + StorageElement>(z: &Tensor, two_n: usize, d: usize, tau: f64) -> Result<Tensor> {
    let (zhat, norm) = normalize_rows(&z.host_data::<T>()?, d);
    let mut c = matmul_rows(&zhat, &zhat, two_n, d, two_n, true);
    let loss = loss_and_grad_matrix(&mut c, two_n, tau);
    let out = Tensor::full(&[], loss, z.dtype())?;
    Ok(record(OP, &[z], out, move |g, _| {
        let dzhat = matmul_rows(&c, &zhat, two_n, two_n, d, false); // G·ẑ = ∂loss/∂ẑ
        let dz = through_normalization(&dzhat, &zhat, &norm, d, g.item()?);
        Ok(vec![Some(Tensor::from_vec(dz, &[two_n, d])?)])
    }))
}
