//! Multi-head self-attention with PyTorch's `nn.MultiheadAttention` names:
//! `in_proj_weight` [3D, D] (q, k, v stacked), `in_proj_bias` [3D], `out_proj`.

use super::{init, join, Linear, Module, TensorKind};
use crate::error::{Error, Result};
use crate::ops::attention::{multi_head_attention, scaled_dot_product_attention};
use crate::ops::matmul::linear;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

pub struct MultiHeadAttention {
    pub heads: usize,
    pub in_proj_weight: Tensor,
    pub in_proj_bias: Tensor,
    pub out_proj: Linear,
}

impl MultiHeadAttention {
    pub fn new(dim: usize, heads: usize, dtype: DType, rng: &mut Rng) -> Result<MultiHeadAttention> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::invalid("MultiHeadAttention", format!("dim {dim} must be a multiple of heads {heads}")));
        }
        // PyTorch: xavier_uniform on the stacked projection, zero biases.
        let bound = (6.0 / (dim + 3 * dim) as f64).sqrt();
        let in_proj_weight = Tensor::uniform(&[3 * dim, dim], -bound, bound, dtype, rng)?.requires_grad()?;
        let in_proj_bias = init::constant(&[3 * dim], 0.0, dtype)?;
        let mut out_proj = Linear::new(dim, dim, true, dtype, rng)?;
        out_proj.bias = Some(init::constant(&[dim], 0.0, dtype)?);
        Ok(MultiHeadAttention { heads, in_proj_weight, in_proj_bias, out_proj })
    }
}

impl Module for MultiHeadAttention {
    /// x: [B, L, D] → [B, L, D].
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 3 {
            return Err(Error::shape("MultiHeadAttention", format!("input must be [B, L, D], got {:?}", x.shape())));
        }
        let (b, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let h = self.heads;
        if x.device() == crate::backend::Device::Cpu {
            // One projection to [B, L, 3D] and one attention op that reads q, k, v from it in
            // place (ops/attention/packed.rs): no per-head layout copies.
            let qkv = linear(x, &self.in_proj_weight, Some(&self.in_proj_bias))?;
            return self.out_proj.forward(&multi_head_attention(&qkv, h)?);
        }
        // On a GPU: q, k and v each from its third of the stacked projection: three GEMMs
        // rather than one [B, L, 3D] output split three ways, whose backward would write
        // three zero-padded copies of the whole [B, L, 3D] gradient and add them.
        let project = |i: usize| -> Result<Tensor> {
            let w = self.in_proj_weight.narrow(0, i * d, d)?;
            let bias = self.in_proj_bias.narrow(0, i * d, d)?;
            // [B, L, D] → [B, L, H, Dh] → [B, H, L, Dh]
            linear(x, &w, Some(&bias))?.reshape(&[b, l, h, d / h])?.permute(&[0, 2, 1, 3])
        };
        let (q, k, v) = (project(0)?, project(1)?, project(2)?);
        let o = scaled_dot_product_attention(&q, &k, &v, None, None)?; // [B, H, L, Dh]
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, l, d])?;
        self.out_proj.forward(&o)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "in_proj_weight"), &self.in_proj_weight, TensorKind::Parameter);
        f(&join(prefix, "in_proj_bias"), &self.in_proj_bias, TensorKind::Parameter);
        self.out_proj.visit(&join(prefix, "out_proj"), f);
    }
}
