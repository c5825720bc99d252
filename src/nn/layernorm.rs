//! LayerNorm over the last axis, PyTorch names `weight` and `bias`.

use super::{init, join, Module, TensorKind};
use crate::error::Result;
use crate::ops::layernorm::layer_norm;
use crate::tensor::{DType, Tensor};

pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, dtype: DType) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: init::constant(&[dim], 1.0, dtype)?,
            bias: init::constant(&[dim], 0.0, dtype)?,
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let d = self.weight.shape()[0];
        layer_norm(x, &[d], Some(&self.weight), Some(&self.bias), self.eps)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        f(&join(prefix, "bias"), &self.bias, TensorKind::Parameter);
    }
}
