//! A multi-layer perceptron: Linear → activation → … → Linear.
//! SimCLR's projection head is `Mlp::new(&[d, d, 128], ...)`.

use super::{join, Linear, Module, TensorKind};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
}

pub struct Mlp {
    pub layers: Vec<Linear>,
    pub activation: Activation,
}

impl Mlp {
    /// `sizes` = [input, hidden..., output]; layers are named `layers.0`, `layers.1`, ...
    pub fn new(sizes: &[usize], activation: Activation, dtype: DType, rng: &mut Rng) -> Result<Mlp> {
        if sizes.len() < 2 {
            return Err(Error::invalid("Mlp::new", format!("needs at least input and output sizes, got {sizes:?}")));
        }
        let layers = sizes.windows(2).map(|w| Linear::new(w[0], w[1], true, dtype, rng)).collect::<Result<_>>()?;
        Ok(Mlp { layers, activation })
    }
}

impl Module for Mlp {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut h = x.clone();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = match self.activation {
                    Activation::Relu => h.relu()?,
                    Activation::Gelu => h.gelu_erf()?,
                };
            }
        }
        Ok(h)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for (i, l) in self.layers.iter().enumerate() {
            l.visit(&join(&join(prefix, "layers"), &i.to_string()), f);
        }
    }
}
