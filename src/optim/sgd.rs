//! SGD with momentum and weight decay (PyTorch's formulation):
//! v ← μ·v + (g + λ·w);  w ← w − lr·v.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub struct Sgd {
    params: Vec<Tensor>,
    velocity: Vec<Option<Tensor>>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Sgd {
    pub fn new(params: Vec<Tensor>, lr: f64, momentum: f64, weight_decay: f64) -> Result<Sgd> {
        if !(lr > 0.0) || !(0.0..1.0).contains(&momentum) || weight_decay < 0.0 {
            return Err(Error::invalid(
                "Sgd::new",
                format!("need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got {lr}, {momentum}, {weight_decay}"),
            ));
        }
        if let Some(p) = params.iter().find(|p| !p.is_tracked()) {
            return Err(Error::invalid(
                "Sgd::new",
                format!("parameter of shape {:?} does not require grad", p.shape()),
            ));
        }
        let n = params.len();
        Ok(Sgd { params, velocity: vec![None; n], lr, momentum, weight_decay })
    }

    /// One update from the accumulated gradients; parameters without a gradient are skipped.
    pub fn step(&mut self) -> Result<()> {
        no_grad(|| {
            #[cfg(feature = "cuda")]
            let mut on_device = Vec::new();
            #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
            for (i, (p, v)) in self.params.iter().zip(self.velocity.iter_mut()).enumerate() {
                let Some(g) = p.grad() else { continue };
                #[cfg(feature = "cuda")]
                if super::cuda::fused(p) {
                    on_device.push(i);
                    continue;
                }
                let g = if self.weight_decay > 0.0 { g.add(&p.detach().mul_scalar(self.weight_decay)?)? } else { g };
                let new_v = match v.take() {
                    Some(prev) if self.momentum > 0.0 => prev.mul_scalar(self.momentum)?.add(&g)?,
                    _ => g,
                };
                p.set_data(&p.detach().sub(&new_v.mul_scalar(self.lr)?)?.contiguous()?)?;
                *v = Some(new_v);
            }
            #[cfg(feature = "cuda")]
            super::cuda::sgd_step(
                self.lr,
                self.momentum,
                self.weight_decay,
                &self.params,
                &mut self.velocity,
                &on_device,
            )?;
            Ok(())
        })
    }

    pub fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }
}

impl super::Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        Sgd::step(self)
    }
    fn zero_grad(&self) {
        Sgd::zero_grad(self)
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> super::OptimizerState {
        let mut buffers = Vec::new();
        super::export_buffers("velocity", &self.velocity, &mut buffers);
        super::OptimizerState { steps: 0, buffers }
    }
    fn load_state(&mut self, state: &super::OptimizerState) -> Result<()> {
        super::import_buffers("velocity", &self.params, &mut self.velocity, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn momentum_update_matches_hand_computation() {
        let w = Tensor::from_f64s(&[1.0, -2.0], &[2], DType::F64).unwrap().requires_grad().unwrap();
        let mut opt = Sgd::new(vec![w.clone()], 0.1, 0.9, 0.0).unwrap();
        for _ in 0..2 {
            opt.zero_grad();
            w.mul(&w).unwrap().sum_all().unwrap().backward().unwrap(); // g = 2w
            opt.step().unwrap();
        }
        // step 1: v = 2w0 = [2, -4], w1 = [0.8, -1.6]
        // step 2: g = [1.6, -3.2], v = 0.9·[2, -4] + g = [3.4, -6.8], w2 = [0.46, -0.92]
        let got = w.to_f64_vec();
        assert!((got[0] - 0.46).abs() < 1e-12 && (got[1] + 0.92).abs() < 1e-12, "{got:?}");
    }

    #[test]
    fn rejects_bad_hyperparameters() {
        let w = Tensor::zeros(&[1], DType::F32).unwrap().requires_grad().unwrap();
        assert!(Sgd::new(vec![w.clone()], 0.0, 0.9, 0.0).is_err());
        assert!(Sgd::new(vec![w.clone()], 0.1, 1.0, 0.0).is_err());
        assert!(Sgd::new(vec![w.detach()], 0.1, 0.9, 0.0).is_err());
    }
}
