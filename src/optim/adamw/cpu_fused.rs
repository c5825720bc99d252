//! Adam/AdamW on host parameters in one pass: for each element, the moments and
//! the weight are read once and written back in place (`Tensor::update_host`).
//! The tensor-op form in `AdamW::step_composed` is the definition; this computes the
//! same expression in the same order in the parameter's dtype, so the two agree
//! bitwise (tested in adamw.rs). The composed form makes ~12 passes and as many
//! fresh buffers per parameter.

use crate::backend::cpu::elementwise::PAR_MIN;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Float, StorageElement, Tensor};
use rayon::prelude::*;

/// One step's constants (bias corrections c1 = 1 − β₁ᵗ, c2 = 1 − β₂ᵗ).
#[derive(Clone, Copy, Debug)]
pub(super) struct AdamStep {
    pub lr: f64,
    pub betas: (f64, f64),
    pub c1: f64,
    pub c2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
}

/// Whether `p` takes this path: a host tensor in f32 or f64.
pub(super) fn applies(p: &Tensor) -> bool {
    p.device() == Device::Cpu && matches!(p.dtype(), DType::F32 | DType::F64)
}

/// Updates `p` from its gradient `g`, creating `m`/`v` on the first step.
pub(super) fn step(p: &Tensor, g: &Tensor, m: &mut Option<Tensor>, v: &mut Option<Tensor>, s: &AdamStep) -> Result<()> {
    match p.dtype() {
        DType::F32 => step_typed::<f32>(p, g, m, v, s),
        DType::F64 => step_typed::<f64>(p, g, m, v, s),
        other => Err(Error::dtype("AdamW", format!("the fused CPU step takes f32 or f64 parameters, not {other}"))),
    }
}

fn step_typed<T: Float + StorageElement>(
    p: &Tensor,
    g: &Tensor,
    m: &mut Option<Tensor>,
    v: &mut Option<Tensor>,
    s: &AdamStep,
) -> Result<()> {
    let g = g.host_data::<T>()?;
    // A missing moment is zero; the composed form then skips `β·0 +`, and so do we
    // (0 + x is not bitwise x for x = −0).
    let (fresh_m, fresh_v) = (m.is_none(), v.is_none());
    let m = match m {
        Some(t) => t,
        None => m.insert(Tensor::zeros(p.shape(), p.dtype())?),
    };
    let v = match v {
        Some(t) => t,
        None => v.insert(Tensor::zeros(p.shape(), p.dtype())?),
    };
    let c = Constants::<T>::new(s, fresh_m, fresh_v);
    p.update_host(|w: &mut [T]| {
        m.update_host(|m: &mut [T]| {
            v.update_host(|v: &mut [T]| {
                if w.len() >= PAR_MIN {
                    let chunk = PAR_MIN;
                    w.par_chunks_mut(chunk)
                        .zip(m.par_chunks_mut(chunk))
                        .zip(v.par_chunks_mut(chunk))
                        .zip(g.par_chunks(chunk))
                        .for_each(|(((w, m), v), g)| update(w, m, v, g, &c));
                } else {
                    update(w, m, v, &g, &c);
                }
            })
        })
    })??? // one Result per nested update_host
    ;
    Ok(())
}

/// The step's scalars in the parameter's dtype, as `mul_scalar` converts them.
struct Constants<T> {
    b1: T,
    one_minus_b1: T,
    b2: T,
    one_minus_b2: T,
    inv_c1: T,
    inv_c2: T,
    eps: T,
    lr: T,
    /// λ for Adam's L2 term (added to the gradient), when there is one.
    l2: Option<T>,
    /// 1 − lr·λ for AdamW's decoupled decay, when there is one.
    decay: Option<T>,
    fresh_m: bool,
    fresh_v: bool,
}

impl<T: Float> Constants<T> {
    fn new(s: &AdamStep, fresh_m: bool, fresh_v: bool) -> Constants<T> {
        let (b1, b2) = s.betas;
        let decays = s.weight_decay > 0.0;
        Constants {
            b1: T::of_f64(b1),
            one_minus_b1: T::of_f64(1.0 - b1),
            b2: T::of_f64(b2),
            one_minus_b2: T::of_f64(1.0 - b2),
            inv_c1: T::of_f64(1.0 / s.c1),
            inv_c2: T::of_f64(1.0 / s.c2),
            eps: T::of_f64(s.eps),
            lr: T::of_f64(s.lr),
            l2: (decays && !s.decoupled).then(|| T::of_f64(s.weight_decay)),
            decay: (decays && s.decoupled).then(|| T::of_f64(1.0 - s.lr * s.weight_decay)),
            fresh_m,
            fresh_v,
        }
    }
}

fn update<T: Float>(w: &mut [T], m: &mut [T], v: &mut [T], g: &[T], c: &Constants<T>) {
    for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let g = match c.l2 {
            Some(l2) => g + *w * l2,
            None => g,
        };
        let m_new = if c.fresh_m { g * c.one_minus_b1 } else { *m * c.b1 + g * c.one_minus_b1 };
        let v_new = if c.fresh_v { (g * g) * c.one_minus_b2 } else { *v * c.b2 + (g * g) * c.one_minus_b2 };
        let step = (m_new * c.inv_c1) / ((v_new * c.inv_c2).sqrt() + c.eps);
        let decayed = match c.decay {
            Some(d) => *w * d,
            None => *w,
        };
        *w = decayed - step * c.lr;
        *m = m_new;
        *v = v_new;
    }
}
