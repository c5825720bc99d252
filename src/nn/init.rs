//! Parameter initialisation, matching PyTorch's defaults where it matters.

use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// U(−1/√fan_in, 1/√fan_in): PyTorch's default for Linear and Conv weights
/// (kaiming_uniform with a = √5) and biases.
pub fn fan_in_uniform(shape: &[usize], fan_in: usize, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Tensor::uniform(shape, -bound, bound, dtype, rng)?.requires_grad()
}

/// N(0, 2/fan_out): torchvision's ResNet conv init (kaiming_normal, mode fan_out, ReLU).
pub fn kaiming_normal_fan_out(shape: &[usize], fan_out: usize, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    Tensor::randn(shape, (2.0 / fan_out.max(1) as f64).sqrt(), dtype, rng)?.requires_grad()
}

/// Truncated-free normal with a given std (ViT-style embeddings).
pub fn normal(shape: &[usize], std: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    Tensor::randn(shape, std, dtype, rng)?.requires_grad()
}

pub fn constant(shape: &[usize], value: f64, dtype: DType) -> Result<Tensor> {
    Tensor::full(shape, value, dtype)?.requires_grad()
}
