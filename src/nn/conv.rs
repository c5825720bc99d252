//! 2-D convolution layer (NCHW), weight [out, in, kh, kw].

use super::{init, join, Module, TensorKind};
use crate::error::Result;
use crate::ops::conv2d::conv2d;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl Conv2d {
    /// A square `kernel`×`kernel` convolution with PyTorch's default init.
    pub fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        let fan_in = cin * kernel * kernel;
        let weight = init::fan_in_uniform(&[cout, cin, kernel, kernel], fan_in, dtype, rng)?;
        let bias = if bias { Some(init::fan_in_uniform(&[cout], fan_in, dtype, rng)?) } else { None };
        Ok(Conv2d { weight, bias, stride: (stride, stride), padding: (padding, padding) })
    }
}

impl Module for Conv2d {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, self.bias.as_ref(), self.stride, self.padding)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b, TensorKind::Parameter);
        }
    }
}
