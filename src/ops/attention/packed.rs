//! Multi-head self-attention over packed projections, as one op on the CPU.
//!
//! `qkv` is [B, L, 3·D] as `nn.MultiheadAttention`'s input projection makes it: q, k and v
//! side by side, head h at columns h·Dh.. of each (Dh = D / H). The output is [B, L, D],
//! head h's at columns h·Dh... By definition (and on a GPU, where the fused FlashAttention
//! kernels run it) this is the composition
//!   q, k, v = narrow(qkv) → reshape [B, L, H, Dh] → permute [B, H, L, Dh]
//!   o = scaled_dot_product_attention(q, k, v) → permute [B, L, H, Dh] → reshape [B, L, D].
//! On the CPU that composition moved every head through layout copies (the output's
//! reshape forward, each narrow and reshape backward) and hundreds of tiny GEMMs: for
//! ViViT-tiny's 17-token sequences, the copies and calls cost more than the arithmetic.
//! Here each (sequence, head) reads q, k, v where they lie and writes its output in place:
//!   S = q·kᵀ·scale,  P = softmax(S) (rows, max subtracted),  O = P·v,
//! and backward, from the saved P, writes one [B, L, 3·D] gradient:
//!   dV = Pᵀ·dO,  dP = dO·vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dQ = dS·k·scale,  dK = dSᵀ·q·scale.
//! Every sum runs in a fixed order (dot products in 8 interleaved partial sums), so
//! results do not depend on the thread count.

use super::scaled_dot_product_attention;
use crate::autograd::record;
use crate::backend::cpu::fast_math::exp_f32;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::ops::{placement, Placement};
use crate::tensor::{DType, Float, StorageElement, Tensor};
use rayon::prelude::*;

const OP: &str = "multi_head_attention";

/// Self-attention of `heads` heads over packed projections `qkv` [B, L, 3·D] → [B, L, D]
/// (scale 1/√Dh, no mask). See the module documentation.
pub fn multi_head_attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let shape = Shape::of(qkv, heads)?;
    match placement(OP, &[qkv])? {
        // f32 through the vectorisable exp of `fast_math` (f64 keeps libm's for the gradcheck).
        Placement::Cpu if qkv.dtype() == DType::F32 => fused::<f32, _>(qkv, shape, exp_f32),
        Placement::Cpu => float_dispatch!(OP, qkv.dtype(), T => fused::<T, _>(qkv, shape, T::exp)),
        #[cfg(feature = "cuda")]
        Placement::Cuda => composed(qkv, shape),
    }
}

/// The definition: narrow, reshape and permute into [B, H, L, Dh], attend, and back.
pub fn multi_head_attention_composed(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    composed(qkv, Shape::of(qkv, heads)?)
}

#[derive(Clone, Copy)]
struct Shape {
    b: usize,
    l: usize,
    d: usize,
    heads: usize,
    dh: usize,
}

impl Shape {
    /// `qkv`'s sizes, or a clear error where it is not [B, L, 3·D] with D a multiple of `heads`.
    fn of(qkv: &Tensor, heads: usize) -> Result<Shape> {
        if qkv.rank() != 3 || heads == 0 || !qkv.shape()[2].is_multiple_of(3 * heads) {
            return Err(Error::shape(
                OP,
                format!("qkv must be [B, L, 3·D] with D a multiple of {heads} heads, got {:?}", qkv.shape()),
            ));
        }
        let (b, l, d) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2] / 3);
        Ok(Shape { b, l, d, heads, dh: d / heads })
    }
}

fn composed(qkv: &Tensor, s: Shape) -> Result<Tensor> {
    let part = |i: usize| qkv.narrow(2, i * s.d, s.d)?.reshape(&[s.b, s.l, s.heads, s.dh])?.permute(&[0, 2, 1, 3]);
    let o = scaled_dot_product_attention(&part(0)?, &part(1)?, &part(2)?, None, None)?;
    o.permute(&[0, 2, 1, 3])?.reshape(&[s.b, s.l, s.d])
}

/// The CPU op; `exp` is the exponential its softmax uses.
fn fused<T, E>(qkv: &Tensor, s: Shape, exp: E) -> Result<Tensor>
where
    T: Float + StorageElement,
    E: Fn(T) -> T + Copy + Send + Sync,
{
    let x = qkv.host_data::<T>()?;
    let (row, lsq) = (3 * s.d, s.l * s.l);
    let mut out = vec![T::zero(); s.b * s.l * s.d];
    let mut probs = vec![T::zero(); s.b * s.heads * lsq];
    let wide = avx2();
    out.par_chunks_mut(s.l * s.d).zip(probs.par_chunks_mut(s.heads * lsq)).enumerate().for_each(|(n, (o, p))| {
        let x = &x[n * s.l * row..][..s.l * row];
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: the CPU has AVX2 (`avx2()`).
            return unsafe { forward_sequence_avx2(x, o, p, s, exp) };
        }
        forward_sequence(x, o, p, s, exp)
    });
    let out = Tensor::from_vec(out, &[s.b, s.l, s.d])?;
    let xs = qkv.detach();
    Ok(record(OP, &[qkv], out, move |g, _| {
        let (x, g) = (xs.host_data::<T>()?, g.host_data::<T>()?);
        let mut dx = vec![T::zero(); s.b * s.l * row];
        dx.par_chunks_mut(s.l * row).enumerate().for_each_init(
            || vec![T::zero(); s.l], // dP of one query row
            |dp, (n, dx)| {
                let (x, g) = (&x[n * s.l * row..][..s.l * row], &g[n * s.l * s.d..][..s.l * s.d]);
                let p = &probs[n * s.heads * lsq..][..s.heads * lsq];
                #[cfg(target_arch = "x86_64")]
                if wide {
                    // SAFETY: the CPU has AVX2 (`avx2()`).
                    return unsafe { backward_sequence_avx2(x, g, p, dx, dp, s) };
                }
                backward_sequence(x, g, p, dx, dp, s)
            },
        );
        Ok(vec![Some(Tensor::from_vec(dx, &[s.b, s.l, row])?)])
    }))
}

/// Whether to run the sequences' loops compiled again with AVX2 (`*_avx2` below; the crate
/// is built for baseline x86-64), as `simd::vectorized` does for short loops. These are
/// explicit functions around `#[inline(always)]` bodies: handed to `vectorized` as a
/// closure, the loops stayed in a baseline-compiled function (4 lanes, libm's roundf).
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_sequence_avx2<T: Float>(x: &[T], o: &mut [T], p: &mut [T], s: Shape, exp: impl Fn(T) -> T + Copy) {
    forward_sequence(x, o, p, s, exp)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn backward_sequence_avx2<T: Float>(x: &[T], g: &[T], p: &[T], dx: &mut [T], dp: &mut [T], s: Shape) {
    backward_sequence(x, g, p, dx, dp, s)
}

/// One sequence: `x` its [L, 3·D] projections → `o` its [L, D] output, `p` its [H, L, L]
/// attention probabilities.
#[inline(always)] // into `vectorized`'s AVX2 code, as are the helpers below
fn forward_sequence<T: Float>(x: &[T], o: &mut [T], p: &mut [T], s: Shape, exp: impl Fn(T) -> T + Copy) {
    let (row, scale) = (3 * s.d, T::of_f64(1.0 / (s.dh as f64).sqrt()));
    for (h, p) in p.chunks_exact_mut(s.l * s.l).enumerate() {
        let at = |token: usize, part: usize| &x[token * row + part * s.d + h * s.dh..][..s.dh];
        for (i, p_row) in p.chunks_exact_mut(s.l).enumerate() {
            for (j, score) in p_row.iter_mut().enumerate() {
                *score = dot(at(i, 0), at(j, 1)) * scale;
            }
            softmax_in_place(p_row, exp);
            let o_i = &mut o[i * s.d + h * s.dh..][..s.dh];
            for (j, &pij) in p_row.iter().enumerate() {
                axpy(pij, at(j, 2), o_i);
            }
        }
    }
}

/// One sequence's gradient: `x` its projections, `g` the output's gradient, `p` the saved
/// probabilities → `dx` ([L, 3·D], zeroed), `dp` scratch for one row of dP.
#[inline(always)]
fn backward_sequence<T: Float>(x: &[T], g: &[T], p: &[T], dx: &mut [T], dp: &mut [T], s: Shape) {
    let (row, scale) = (3 * s.d, T::of_f64(1.0 / (s.dh as f64).sqrt()));
    for (h, p) in p.chunks_exact(s.l * s.l).enumerate() {
        let at = |token: usize, part: usize| &x[token * row + part * s.d + h * s.dh..][..s.dh];
        let g_at = |token: usize| &g[token * s.d + h * s.dh..][..s.dh];
        for (i, p_row) in p.chunks_exact(s.l).enumerate() {
            // dP[i, j] = dO_i · v_j; dS[i, j] = P[i, j]·(dP[i, j] − Σ_j' dP[i, j']·P[i, j']).
            for (j, d) in dp.iter_mut().enumerate() {
                *d = dot(g_at(i), at(j, 2));
            }
            let centre = dp.iter().zip(p_row).fold(T::zero(), |acc, (&d, &p)| acc + d * p);
            for (j, &pij) in p_row.iter().enumerate() {
                let ds = pij * (dp[j] - centre) * scale;
                // dQ_i += dS[i, j]·k_j·scale;  dK_j += dS[i, j]·q_i·scale;  dV_j += P[i, j]·dO_i.
                axpy(ds, at(j, 1), &mut dx[i * row + h * s.dh..][..s.dh]);
                axpy(ds, at(i, 0), &mut dx[j * row + s.d + h * s.dh..][..s.dh]);
                axpy(pij, g_at(i), &mut dx[j * row + 2 * s.d + h * s.dh..][..s.dh]);
            }
        }
    }
}

/// Σ a_i·b_i in 8 interleaved partial sums (vectorisable without reordering a chain of
/// adds), the partial sums then added in order: the same result on every run.
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 8;
    let mut lanes = [T::zero(); LANES];
    let (a_body, a_tail) = a.split_at(a.len() / LANES * LANES);
    for (ca, cb) in a_body.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for l in 0..LANES {
            lanes[l] += ca[l] * cb[l];
        }
    }
    let tail = a_tail.iter().zip(&b[a_body.len()..]).fold(T::zero(), |acc, (&x, &y)| acc + x * y);
    lanes.iter().fold(T::zero(), |acc, &v| acc + v) + tail
}

/// y += α·x.
#[inline(always)]
fn axpy<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x);
}

/// A row of scores → its softmax, the maximum subtracted first (as `softmax`).
#[inline(always)]
fn softmax_in_place<T: Float>(row: &mut [T], exp: impl Fn(T) -> T) {
    let m = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    let mut total = T::zero();
    for v in row.iter_mut() {
        *v = exp(*v - m);
        total += *v;
    }
    row.iter_mut().for_each(|v| *v = *v / total);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::tensor::DType;

    /// The fused op and the composition agree, forward and backward, in f64 and f32.
    #[test]
    fn fused_matches_the_composition() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            for (b, l, heads, dh) in [(3, 5, 2, 4), (2, 17, 3, 9), (1, 1, 1, 3)] {
                let mut rng = Rng::new(7);
                let d = heads * dh;
                let qkv = Tensor::randn(&[b, l, 3 * d], 1.0, dtype, &mut rng).unwrap().requires_grad().unwrap();
                let upstream = Tensor::randn(&[b, l, d], 1.0, dtype, &mut rng).unwrap();
                let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
                    let x = qkv.detach().requires_grad().unwrap();
                    let y = f(&x).unwrap();
                    y.mul(&upstream).unwrap().sum(&[0, 1, 2], false).unwrap().backward().unwrap();
                    (y.to_f64_vec(), x.grad().unwrap().to_f64_vec())
                };
                let fused = run(&|x| multi_head_attention(x, heads));
                let composed = run(&|x| multi_head_attention_composed(x, heads));
                for (what, a, c) in [("output", &fused.0, &composed.0), ("gradient", &fused.1, &composed.1)] {
                    assert_eq!(a.len(), c.len());
                    for (i, (x, y)) in a.iter().zip(c).enumerate() {
                        assert!((x - y).abs() < tol, "{dtype} [{b}, {l}] × {heads} heads: {what} {i}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = Tensor::zeros(&[2, 3, 12], DType::F32).unwrap();
        assert!(multi_head_attention(&x, 5).is_err()); // 12 is not 3·D with D a multiple of 5
        assert!(multi_head_attention(&x, 0).is_err());
        assert!(multi_head_attention(&Tensor::zeros(&[3, 12], DType::F32).unwrap(), 2).is_err());
    }
}
