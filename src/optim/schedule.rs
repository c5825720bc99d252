//! Learning-rate schedule and gradient clipping.

use crate::autograd::no_grad;
use crate::error::Result;
use crate::tensor::Tensor;

/// Linear warm-up from base/warmup to base over `warmup` steps, then cosine
/// decay to `final_lr` at `total` steps (SimCLR's schedule). `step` counts from 0.
pub fn warmup_cosine(step: usize, total: usize, warmup: usize, base_lr: f64, final_lr: f64) -> f64 {
    if step < warmup {
        return base_lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    final_lr + 0.5 * (base_lr - final_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The joint L2 norm of the parameters' gradients (missing ones count as 0). Gradients on a
/// GPU are summed there and read back once per device, not once per tensor.
pub fn grad_norm(params: &[Tensor]) -> Result<f64> {
    no_grad(|| {
        let mut total = 0.0;
        #[cfg(feature = "cuda")]
        let mut on_device = Vec::new();
        for g in params.iter().filter_map(Tensor::grad) {
            #[cfg(feature = "cuda")]
            if matches!(g.device(), crate::backend::Device::Cuda(_)) {
                on_device.push(g);
                continue;
            }
            total += g.mul(&g)?.sum_all()?.item()?;
        }
        #[cfg(feature = "cuda")]
        if !on_device.is_empty() {
            total += super::cuda::sum_of_squares(&on_device)?;
        }
        Ok(total.sqrt())
    })
}

/// Scales all gradients so their joint L2 norm is at most `max_norm`.
/// Returns the norm before clipping.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(params)?;
    no_grad(|| {
        if norm > max_norm && norm > 0.0 {
            let scale = max_norm / norm;
            for p in params {
                if let Some(g) = p.grad() {
                    p.set_grad(Some(g.mul_scalar(scale)?))?;
                }
            }
        }
        Ok(norm)
    })
}
