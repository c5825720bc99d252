//! The SimCLR model: encoder f(·) → representation h, projection head g(·) →
//! z, NT-Xent on the two views' z. After training, h is the representation
//! that downstream probes use; the head exists only to shape the loss.
//!
//! Video encoders: a ResNet applied to every frame followed by a temporal
//! aggregation (`--temporal mean`, the baseline's, or the order-aware
//! `transformer`; see `nn::temporal`), or a ViViT over the whole clip.

use super::mlp::Activation;
use super::resnet::{Depth, ResNet, ResNetConfig};
use super::temporal::{TemporalKind, TemporalPooling};
use super::vivit::{Vivit, VivitConfig};
use super::{join, Mlp, Module, TensorKind};
use crate::error::{Error, Result};
use crate::ops::loss::nt_xent;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

pub enum Encoder {
    /// Per-frame ResNet, then the frame features aggregated over time.
    ResNet(ResNet, TemporalPooling),
    Vivit(Vivit),
}

impl Encoder {
    /// `resnet18|resnet34|resnet50|vivit_tiny|vivit_small|vivit_base`.
    /// `width` and `small_stem` shrink ResNets for CPU runs; `temporal` is how a
    /// ResNet's frame features become the clip's (ViViT has its own temporal
    /// transformer and takes only `mean`, meaning "nothing added").
    #[allow(clippy::too_many_arguments)]
    pub fn named(
        name: &str,
        frames: usize,
        image: usize,
        width: f64,
        small_stem: bool,
        temporal: TemporalKind,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<Encoder> {
        if name.starts_with("resnet") {
            let cfg = ResNetConfig { depth: Depth::parse(name)?, width, small_stem, num_classes: None };
            let resnet = ResNet::new(cfg, dtype, rng)?;
            let pooling = TemporalPooling::new(temporal, frames, resnet.feature_dim(), dtype, rng)?;
            Ok(Encoder::ResNet(resnet, pooling))
        } else if name.starts_with("vivit") {
            super::temporal::check_applies(name, temporal)?;
            Ok(Encoder::Vivit(Vivit::new(VivitConfig::named(name, frames, image)?, dtype, rng)?))
        } else {
            Err(Error::invalid(
                "--base_model",
                format!("unknown model `{name}` (resnet18, resnet34, resnet50, vivit_tiny, vivit_small, vivit_base)"),
            ))
        }
    }

    pub fn feature_dim(&self) -> usize {
        match self {
            Encoder::ResNet(r, pooling) => pooling.output_dim(r.feature_dim()),
            Encoder::Vivit(v) => v.config.dim,
        }
    }
}

impl Module for Encoder {
    /// Clips [B, T, 3, H, W] → representations h [B, feature_dim].
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 5 {
            return Err(Error::shape("encoder", format!("expected clips [B, T, 3, H, W], got {:?}", x.shape())));
        }
        match self {
            Encoder::ResNet(r, pooling) => {
                let (b, t) = (x.shape()[0], x.shape()[1]);
                let frames = x.reshape(&[b * t, x.shape()[2], x.shape()[3], x.shape()[4]])?;
                let per_frame = r.forward(&frames)?;
                pooling.forward(&per_frame.reshape(&[b, t, per_frame.shape()[1]])?)
            }
            Encoder::Vivit(v) => v.forward(x),
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        match self {
            Encoder::ResNet(r, pooling) => {
                r.visit(prefix, f);
                pooling.visit(&join(prefix, "temporal"), f);
            }
            Encoder::Vivit(v) => v.visit(prefix, f),
        }
    }

    fn set_training(&mut self, training: bool) {
        match self {
            Encoder::ResNet(r, pooling) => {
                r.set_training(training);
                pooling.set_training(training);
            }
            Encoder::Vivit(v) => v.set_training(training),
        }
    }

    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut super::BatchNorm2d)) {
        match self {
            Encoder::ResNet(r, _) => r.for_each_batch_norm(f),
            Encoder::Vivit(v) => v.for_each_batch_norm(f),
        }
    }
}

pub struct SimClr {
    pub encoder: Encoder,
    /// g(·): Linear(d, d) → ReLU → Linear(d, projection_dim), as in SimCLR.
    pub projector: Mlp,
    pub temperature: f64,
}

impl SimClr {
    pub fn new(
        encoder: Encoder,
        projection_dim: usize,
        temperature: f64,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<SimClr> {
        let d = encoder.feature_dim();
        let projector = Mlp::new(&[d, d, projection_dim], Activation::Relu, dtype, rng)?;
        Ok(SimClr { encoder, projector, temperature })
    }

    /// NT-Xent loss of a batch of two views ([B, T, 3, H, W] each). Both views
    /// go through the encoder as one batch of 2B clips: rows i and i + B of z
    /// are the positive pair the loss expects.
    pub fn loss(&mut self, view1: &Tensor, view2: &Tensor) -> Result<Tensor> {
        if view1.shape() != view2.shape() {
            return Err(Error::shape(
                "SimClr::loss",
                format!("views differ in shape: {:?} vs {:?}", view1.shape(), view2.shape()),
            ));
        }
        let both = Tensor::cat(&[view1, view2], 0)?;
        let z = self.forward(&both)?;
        nt_xent(&z, self.temperature)
    }
}

impl Module for SimClr {
    /// Clips → projections z.
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let h = self.encoder.forward(x)?;
        self.projector.forward(&h)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        self.encoder.visit(&join(prefix, "encoder"), f);
        self.projector.visit(&join(prefix, "projector"), f);
    }

    fn set_training(&mut self, training: bool) {
        self.encoder.set_training(training);
        self.projector.set_training(training);
    }

    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut super::BatchNorm2d)) {
        self.encoder.for_each_batch_norm(f);
        self.projector.for_each_batch_norm(f);
    }
}
