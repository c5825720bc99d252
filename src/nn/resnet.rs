//! ResNet-18/34/50 with torchvision's structure and parameter names
//! (`conv1.weight`, `layer1.0.bn1.running_mean`, `layer2.0.downsample.0.weight`,
//! ..., `fc.weight`), so weights load into `torchvision.models.resnetNN`.
//!
//! Options for small CPU runs: a width multiplier (64·w channels in the first
//! stage) and a small-image stem (3×3 stride-1 conv, no max-pool) for frames
//! of 32–64 pixels, where the standard stem would shrink the image 4× at once.

use super::{init, join, BatchNorm2d, Conv2d, Linear, Module, TensorKind};
use crate::error::{Error, Result};
use crate::ops::pool::{global_avg_pool2d, max_pool2d};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    R18,
    R34,
    R50,
}

impl Depth {
    /// Blocks per stage and whether they are bottlenecks (expansion 4).
    fn plan(self) -> ([usize; 4], bool) {
        match self {
            Depth::R18 => ([2, 2, 2, 2], false),
            Depth::R34 => ([3, 4, 6, 3], false),
            Depth::R50 => ([3, 4, 6, 3], true),
        }
    }

    pub fn parse(name: &str) -> Result<Depth> {
        match name {
            "resnet18" => Ok(Depth::R18),
            "resnet34" => Ok(Depth::R34),
            "resnet50" => Ok(Depth::R50),
            other => {
                Err(Error::invalid("--base_model", format!("unknown ResNet `{other}` (resnet18, resnet34, resnet50)")))
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ResNetConfig {
    pub depth: Depth,
    /// Channels of the first stage = round(64 · width).
    pub width: f64,
    pub small_stem: bool,
    /// Size of the final `fc` layer; `None` drops it (the encoder outputs pooled features).
    pub num_classes: Option<usize>,
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, dtype: DType, rng: &mut Rng) -> Result<Conv2d> {
    Ok(Conv2d {
        weight: init::kaiming_normal_fan_out(&[cout, cin, k, k], cout * k * k, dtype, rng)?,
        bias: None,
        stride: (stride, stride),
        padding: (pad, pad),
    })
}

/// One residual block: BasicBlock (two 3×3) or Bottleneck (1×1, 3×3, 1×1 ×4).
struct Block {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm2d>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    fn new(cin: usize, planes: usize, stride: usize, bottleneck: bool, dtype: DType, rng: &mut Rng) -> Result<Block> {
        let (convs, out) = if bottleneck {
            (
                vec![
                    conv(cin, planes, 1, 1, 0, dtype, rng)?,
                    conv(planes, planes, 3, stride, 1, dtype, rng)?, // torchvision v1.5: stride on the 3×3
                    conv(planes, planes * 4, 1, 1, 0, dtype, rng)?,
                ],
                planes * 4,
            )
        } else {
            (vec![conv(cin, planes, 3, stride, 1, dtype, rng)?, conv(planes, planes, 3, 1, 1, dtype, rng)?], planes)
        };
        let bns = convs.iter().map(|c| BatchNorm2d::new(c.weight.shape()[0], dtype)).collect::<Result<_>>()?;
        let downsample = if stride != 1 || cin != out {
            Some((conv(cin, out, 1, stride, 0, dtype, rng)?, BatchNorm2d::new(out, dtype)?))
        } else {
            None
        };
        Ok(Block { convs, bns, downsample })
    }

    fn out_channels(&self) -> usize {
        self.convs.last().map_or(0, |c| c.weight.shape()[0])
    }

    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, (c, bn)) in self.convs.iter_mut().zip(self.bns.iter_mut()).enumerate() {
            h = bn.forward(&c.forward(&h)?)?;
            if i < last {
                h = h.relu()?;
            }
        }
        let identity = match &mut self.downsample {
            Some((c, bn)) => bn.forward(&c.forward(x)?)?,
            None => x.clone(),
        };
        h.add(&identity)?.relu()
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for (i, (c, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            c.visit(&join(prefix, &format!("conv{}", i + 1)), f);
            bn.visit(&join(prefix, &format!("bn{}", i + 1)), f);
        }
        if let Some((c, bn)) = &self.downsample {
            c.visit(&join(prefix, "downsample.0"), f);
            bn.visit(&join(prefix, "downsample.1"), f);
        }
    }

    fn set_training(&mut self, training: bool) {
        self.bns.iter_mut().for_each(|b| b.set_training(training));
        if let Some((_, bn)) = &mut self.downsample {
            bn.set_training(training);
        }
    }

    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        self.bns.iter_mut().for_each(&mut *f);
        if let Some((_, bn)) = &mut self.downsample {
            f(bn);
        }
    }
}

pub struct ResNet {
    pub config: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    fc: Option<Linear>,
}

impl ResNet {
    pub fn new(config: ResNetConfig, dtype: DType, rng: &mut Rng) -> Result<ResNet> {
        if !(config.width > 0.0) {
            return Err(Error::invalid("ResNet", format!("width multiplier must be > 0, got {}", config.width)));
        }
        let base = ((64.0 * config.width).round() as usize).max(1);
        let conv1 =
            if config.small_stem { conv(3, base, 3, 1, 1, dtype, rng)? } else { conv(3, base, 7, 2, 3, dtype, rng)? };
        let bn1 = BatchNorm2d::new(base, dtype)?;
        let (blocks, bottleneck) = config.depth.plan();
        let mut cin = base;
        let mut stages = Vec::new();
        for (s, &n) in blocks.iter().enumerate() {
            let planes = base << s;
            let mut stage = Vec::new();
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let block = Block::new(cin, planes, stride, bottleneck, dtype, rng)?;
                cin = block.out_channels();
                stage.push(block);
            }
            stages.push(stage);
        }
        let fc = config.num_classes.map(|k| Linear::new(cin, k, true, dtype, rng)).transpose()?;
        Ok(ResNet { config, conv1, bn1, stages, fc })
    }

    /// Channels of the pooled features (512 for ResNet-18/34, 2048 for ResNet-50, times the width).
    pub fn feature_dim(&self) -> usize {
        self.stages.last().and_then(|s| s.last()).map_or(0, Block::out_channels)
    }
}

impl Module for ResNet {
    /// Images [N, 3, H, W] → pooled features [N, feature_dim] (or `fc` logits when it has one).
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        if !self.config.small_stem {
            h = max_pool2d(&h, (3, 3), (2, 2), (1, 1))?;
        }
        for stage in &mut self.stages {
            for block in stage {
                h = block.forward(&h)?;
            }
        }
        let features = global_avg_pool2d(&h)?;
        match &mut self.fc {
            Some(fc) => fc.forward(&features),
            None => Ok(features),
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        self.conv1.visit(&join(prefix, "conv1"), f);
        self.bn1.visit(&join(prefix, "bn1"), f);
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                block.visit(&join(prefix, &format!("layer{}.{b}", s + 1)), f);
            }
        }
        if let Some(fc) = &self.fc {
            fc.visit(&join(prefix, "fc"), f);
        }
    }

    fn set_training(&mut self, training: bool) {
        self.bn1.set_training(training);
        self.stages.iter_mut().flatten().for_each(|b| b.set_training(training));
    }

    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        f(&mut self.bn1);
        self.stages.iter_mut().flatten().for_each(|b| b.for_each_batch_norm(f));
    }
}
