//! Fully connected layer: y = x·Wᵀ + b, W: [out, in] (PyTorch's layout).

use super::{init, join, Module, TensorKind};
use crate::error::Result;
use crate::ops::matmul::linear;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, bias: bool, dtype: DType, rng: &mut Rng) -> Result<Linear> {
        let weight = init::fan_in_uniform(&[out_features, in_features], in_features, dtype, rng)?;
        let bias = if bias { Some(init::fan_in_uniform(&[out_features], in_features, dtype, rng)?) } else { None };
        Ok(Linear { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref())
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b, TensorKind::Parameter);
        }
    }
}
