//! Adam and AdamW (PyTorch's formulation).
//!
//! m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  m̂ = m/(1−β₁ᵗ),  v̂ = v/(1−β₂ᵗ)
//! AdamW: w ← w·(1 − lr·λ) − lr·m̂/(√v̂ + ε)   (decay decoupled from the gradient)
//! Adam:  g ← g + λw before the moments       (L2 penalty through the gradient)

mod cpu_fused;

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub struct AdamW {
    params: Vec<Tensor>,
    /// The fused kernel of the parameters on a GPU (made at their first step).
    #[cfg(feature = "cuda")]
    fused: Option<crate::backend::cuda::kernels::optim::FusedAdam>,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// true: AdamW; false: Adam with L2 weight decay.
    pub decoupled: bool,
    pub steps: u64,
    /// Host f32/f64 parameters take the one-pass in-place step (`cpu_fused`); false
    /// runs the tensor-op definition for every parameter (the reference in tests).
    pub(crate) fused_cpu: bool,
}

impl AdamW {
    pub fn new(params: Vec<Tensor>, lr: f64, weight_decay: f64, decoupled: bool) -> Result<AdamW> {
        if !(lr > 0.0) || weight_decay < 0.0 {
            return Err(Error::invalid(
                "AdamW::new",
                format!("need lr > 0 and weight_decay >= 0, got {lr} and {weight_decay}"),
            ));
        }
        if let Some(p) = params.iter().find(|p| !p.is_tracked()) {
            return Err(Error::invalid(
                "AdamW::new",
                format!("parameter of shape {:?} does not require grad", p.shape()),
            ));
        }
        let n = params.len();
        Ok(AdamW {
            params,
            #[cfg(feature = "cuda")]
            fused: None,
            m: vec![None; n],
            v: vec![None; n],
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay,
            decoupled,
            steps: 0,
            fused_cpu: true,
        })
    }

    pub fn step(&mut self) -> Result<()> {
        self.steps += 1;
        let (b1, b2) = self.betas;
        let (c1, c2) = (1.0 - b1.powi(self.steps as i32), 1.0 - b2.powi(self.steps as i32));
        no_grad(|| {
            #[cfg(feature = "cuda")]
            let mut on_device = Vec::new();
            for i in 0..self.params.len() {
                let p = &self.params[i];
                let Some(mut g) = p.grad() else { continue };
                #[cfg(feature = "cuda")]
                if super::cuda::fused(p) {
                    on_device.push(i);
                    continue;
                }
                if self.fused_cpu && cpu_fused::applies(p) {
                    let s = cpu_fused::AdamStep {
                        lr: self.lr,
                        betas: self.betas,
                        c1,
                        c2,
                        eps: self.eps,
                        weight_decay: self.weight_decay,
                        decoupled: self.decoupled,
                    };
                    cpu_fused::step(p, &g, &mut self.m[i], &mut self.v[i], &s)?;
                    continue;
                }
                let w = p.detach();
                if !self.decoupled && self.weight_decay > 0.0 {
                    g = g.add(&w.mul_scalar(self.weight_decay)?)?;
                }
                let m = match self.m[i].take() {
                    Some(m) => m.mul_scalar(b1)?.add(&g.mul_scalar(1.0 - b1)?)?,
                    None => g.mul_scalar(1.0 - b1)?,
                };
                let v = match self.v[i].take() {
                    Some(v) => v.mul_scalar(b2)?.add(&g.mul(&g)?.mul_scalar(1.0 - b2)?)?,
                    None => g.mul(&g)?.mul_scalar(1.0 - b2)?,
                };
                let update = m.mul_scalar(1.0 / c1)?.div(&v.mul_scalar(1.0 / c2)?.sqrt()?.add_scalar(self.eps)?)?;
                let decayed = if self.decoupled && self.weight_decay > 0.0 {
                    w.mul_scalar(1.0 - self.lr * self.weight_decay)?
                } else {
                    w
                };
                p.set_data(&decayed.sub(&update.mul_scalar(self.lr)?)?.contiguous()?)?;
                self.m[i] = Some(m);
                self.v[i] = Some(v);
            }
            #[cfg(feature = "cuda")]
            {
                use crate::backend::cuda::kernels::optim::AdamConfig;
                let config = AdamConfig {
                    lr: self.lr,
                    betas: self.betas,
                    eps: self.eps,
                    weight_decay: self.weight_decay,
                    decoupled: self.decoupled,
                };
                let (params, m, v) = (&self.params, &mut self.m, &mut self.v);
                super::cuda::adam_step(&mut self.fused, config, params, m, v, &on_device, self.steps)?;
            }
            Ok(())
        })
    }

    pub fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }
}

impl super::Optimizer for AdamW {
    fn step(&mut self) -> Result<()> {
        AdamW::step(self)
    }
    fn zero_grad(&self) {
        AdamW::zero_grad(self)
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> super::OptimizerState {
        let mut buffers = Vec::new();
        super::export_buffers("m", &self.m, &mut buffers);
        super::export_buffers("v", &self.v, &mut buffers);
        super::OptimizerState { steps: self.steps, buffers }
    }
    fn load_state(&mut self, state: &super::OptimizerState) -> Result<()> {
        super::import_buffers("m", &self.params, &mut self.m, state)?;
        super::import_buffers("v", &self.params, &mut self.v, state)?;
        self.steps = state.steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Optimizer;
    use crate::rng::Rng;
    use crate::tensor::DType;

    /// The fused CPU step against the tensor-op definition: bitwise, over several
    /// steps, for Adam and AdamW, with and without decay, f32 and f64, one
    /// parameter large enough to be split across threads.
    #[test]
    fn fused_cpu_step_is_the_composed_step_bitwise() {
        for dtype in [DType::F32, DType::F64] {
            for (decoupled, weight_decay) in [(true, 0.05), (false, 0.05), (true, 0.0)] {
                let mut rng = Rng::new(3);
                let shapes: [&[usize]; 3] = [&[7], &[33, 5], &[300, 200]];
                let make = |rng: &mut Rng| -> Vec<Tensor> {
                    shapes.iter().map(|s| Tensor::randn(s, 1.0, dtype, rng).unwrap().requires_grad().unwrap()).collect()
                };
                let (a, b) = (make(&mut rng), make(&mut Rng::new(3)));
                let mut fused = AdamW::new(a.clone(), 1e-2, weight_decay, decoupled).unwrap();
                let mut composed = AdamW::new(b.clone(), 1e-2, weight_decay, decoupled).unwrap();
                composed.fused_cpu = false;
                for _ in 0..4 {
                    for (pa, pb) in a.iter().zip(&b) {
                        let g = Tensor::randn(pa.shape(), 1.0, dtype, &mut rng).unwrap();
                        pa.set_grad(Some(g.clone())).unwrap();
                        pb.set_grad(Some(g)).unwrap();
                    }
                    fused.step().unwrap();
                    composed.step().unwrap();
                }
                for (pa, pb) in a.iter().zip(&b) {
                    assert_eq!(pa.to_f64_vec(), pb.to_f64_vec(), "{dtype} decoupled {decoupled} λ {weight_decay}");
                }
                let (sa, sb) = (fused.state(), composed.state());
                for ((na, ta), (nb, tb)) in sa.buffers.iter().zip(&sb.buffers) {
                    assert_eq!(na, nb);
                    assert_eq!(ta.to_f64_vec(), tb.to_f64_vec(), "{na}");
                }
            }
        }
    }

    /// A snapshot of the state (a checkpoint) keeps its values while the optimiser
    /// goes on updating its own buffers in place.
    #[test]
    fn exported_state_is_not_changed_by_later_steps() {
        let p = Tensor::from_f64s(&[1.0, 2.0], &[2], DType::F32).unwrap().requires_grad().unwrap();
        let mut opt = AdamW::new(vec![p.clone()], 0.1, 0.0, true).unwrap();
        let grad = || Tensor::from_f64s(&[0.5, -1.0], &[2], DType::F32).unwrap();
        p.set_grad(Some(grad())).unwrap();
        opt.step().unwrap();
        let snapshot = opt.state();
        let before: Vec<Vec<f64>> = snapshot.buffers.iter().map(|(_, t)| t.to_f64_vec()).collect();
        let weight_view = p.detach();
        let weight_before = weight_view.to_f64_vec();
        p.set_grad(Some(grad())).unwrap();
        opt.step().unwrap();
        let after: Vec<Vec<f64>> = snapshot.buffers.iter().map(|(_, t)| t.to_f64_vec()).collect();
        assert_eq!(before, after, "the snapshot moved with the optimiser");
        assert_eq!(weight_view.to_f64_vec(), weight_before, "a detached copy of the weight moved");
        assert_ne!(p.to_f64_vec(), weight_before, "the parameter did not move");
    }
}
