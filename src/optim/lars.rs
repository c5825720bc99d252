//! LARS, as SimCLR uses it: SGD with momentum where each weight matrix's step
//! is scaled by a trust ratio η·‖w‖/‖g + λw‖, so every layer moves by a similar
//! fraction of its norm — what makes batch sizes in the thousands trainable.
//! Biases and normalisation parameters (rank ≤ 1) are excluded from both the
//! weight decay and the adaptation, as in SimCLR.
//!
//!   g' = g + λw,  r = η‖w‖/‖g'‖ (1 if either norm is 0),  u ← μu + lr·r·g',  w ← w − u

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub struct Lars {
    params: Vec<Tensor>,
    /// The fused kernels of the parameters on a GPU (made at their first step).
    #[cfg(feature = "cuda")]
    fused: Option<crate::backend::cuda::kernels::optim::FusedLars>,
    momentum_buf: Vec<Option<Tensor>>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub eta: f64,
}

/// SimCLR's rule for which parameters LARS adapts: weight matrices and conv kernels.
pub fn is_adapted(p: &Tensor) -> bool {
    p.rank() > 1
}

impl Lars {
    pub fn new(params: Vec<Tensor>, lr: f64, momentum: f64, weight_decay: f64, eta: f64) -> Result<Lars> {
        if !(lr > 0.0) || !(0.0..1.0).contains(&momentum) || weight_decay < 0.0 || !(eta > 0.0) {
            return Err(Error::invalid("Lars::new", format!("need lr > 0, 0 <= momentum < 1, weight_decay >= 0, eta > 0; got {lr}, {momentum}, {weight_decay}, {eta}")));
        }
        if let Some(p) = params.iter().find(|p| !p.is_tracked()) {
            return Err(Error::invalid(
                "Lars::new",
                format!("parameter of shape {:?} does not require grad", p.shape()),
            ));
        }
        let n = params.len();
        Ok(Lars {
            params,
            #[cfg(feature = "cuda")]
            fused: None,
            momentum_buf: vec![None; n],
            lr,
            momentum,
            weight_decay,
            eta,
        })
    }

    pub fn step(&mut self) -> Result<()> {
        no_grad(|| {
            #[cfg(feature = "cuda")]
            let mut on_device = Vec::new();
            #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
            for (i, (p, buf)) in self.params.iter().zip(self.momentum_buf.iter_mut()).enumerate() {
                let Some(g) = p.grad() else { continue };
                #[cfg(feature = "cuda")]
                if super::cuda::fused(p) {
                    on_device.push(i);
                    continue;
                }
                let w = p.detach();
                let (g, trust) = if is_adapted(p) {
                    let g = if self.weight_decay > 0.0 { g.add(&w.mul_scalar(self.weight_decay)?)? } else { g };
                    let (wn, gn) = (w.mul(&w)?.sum_all()?.item()?.sqrt(), g.mul(&g)?.sum_all()?.item()?.sqrt());
                    let trust = if wn > 0.0 && gn > 0.0 { self.eta * wn / gn } else { 1.0 };
                    (g, trust)
                } else {
                    (g, 1.0)
                };
                let scaled = g.mul_scalar(self.lr * trust)?;
                let u = match buf.take() {
                    Some(prev) => prev.mul_scalar(self.momentum)?.add(&scaled)?,
                    None => scaled,
                };
                p.set_data(&w.sub(&u)?.contiguous()?)?;
                *buf = Some(u);
            }
            #[cfg(feature = "cuda")]
            {
                use crate::backend::cuda::kernels::optim::LarsConfig;
                let config =
                    LarsConfig { lr: self.lr, momentum: self.momentum, weight_decay: self.weight_decay, eta: self.eta };
                super::cuda::lars_step(
                    &mut self.fused,
                    config,
                    &self.params,
                    &mut self.momentum_buf,
                    &on_device,
                    is_adapted,
                )?;
            }
            Ok(())
        })
    }

    pub fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }
}

impl super::Optimizer for Lars {
    fn step(&mut self) -> Result<()> {
        Lars::step(self)
    }
    fn zero_grad(&self) {
        Lars::zero_grad(self)
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> super::OptimizerState {
        let mut buffers = Vec::new();
        super::export_buffers("momentum", &self.momentum_buf, &mut buffers);
        super::OptimizerState { steps: 0, buffers }
    }
    fn load_state(&mut self, state: &super::OptimizerState) -> Result<()> {
        super::import_buffers("momentum", &self.params, &mut self.momentum_buf, state)
    }
}
