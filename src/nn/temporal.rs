//! Temporal aggregation: per-frame features [B, T, F] → clip features [B, F].
//!
//! - `mean` (the baseline's): the average over frames. It cannot tell a clip
//!   from the same clip played backwards or shuffled, so nothing that depends on
//!   frame order — the direction of motion, what happens next — is readable
//!   from it, however good the per-frame features are.
//! - `transformer`: learned positional embeddings tell the frames apart, then
//!   pre-norm transformer blocks let every frame attend to the others, then the
//!   frames are averaged. The blocks are residual, so the output is the mean of
//!   the frame features plus learned, order-aware corrections: the baseline's
//!   answer is always one term of it. Two blocks, width F, head dim 64 (32, or
//!   F, where F is not a multiple): at T ≤ 20 tokens the attention is cheap
//!   next to the per-frame ResNet.
//! - `motion`: two order-aware summaries side by side, [B, 2F]. First, the
//!   same blocks over each frame's difference from the clip's mean frame
//!   feature instead of the features themselves, averaged and added to the
//!   mean: frames of one clip look nearly alike (background and ball colours
//!   dominate a frame's features), so in `transformer` what changes from frame
//!   to frame is a small part of each token, and here it is all of it, at full
//!   scale after the blocks' layer norm. Second, each feature's least-squares
//!   slope over the frames (`temporal_slope`): linear in the frames and odd
//!   under reversal, so where frame features place the balls linearly, the
//!   slope holds their velocity linearly — the direction of motion, which
//!   neither the mean nor the blocks' symmetric average keeps in a linear
//!   read-out (docs/SIMCLR.md, section 14, has the measurements).
//!
//! Built from existing ops only (linear, attention, layer norm, GELU, add,
//! sub, mul, mean, cat), each gradchecked and with its CUDA kernel.

use super::vivit::Block;
use super::{init, join, Module, TensorKind};
use crate::error::{Error, Result};
use crate::ops::pool::temporal_mean;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// What `--temporal` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemporalKind {
    Mean,
    Transformer,
    Motion,
}

/// The values `--temporal` accepts.
pub const TEMPORAL_KINDS: &[&str] = &["mean", "transformer", "motion"];

impl TemporalKind {
    pub fn parse(name: &str) -> Result<TemporalKind> {
        match name {
            "mean" => Ok(TemporalKind::Mean),
            "transformer" => Ok(TemporalKind::Transformer),
            "motion" => Ok(TemporalKind::Motion),
            other => Err(Error::invalid(
                "--temporal",
                format!(
                    "unknown temporal aggregation `{other}`; one of {} (mean: the baseline's average over frames; \
                     transformer: order-aware attention over frames, then the average)",
                    TEMPORAL_KINDS.join(", ")
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TemporalKind::Mean => "mean",
            TemporalKind::Transformer => "transformer",
            TemporalKind::Motion => "motion",
        }
    }
}

/// `kind` over `base_model`'s frame features, or why not: ViViT already attends over time with
/// its own temporal transformer, so it takes only `mean` (meaning "nothing added").
pub fn check_applies(base_model: &str, kind: TemporalKind) -> Result<()> {
    if base_model.starts_with("vivit") && kind != TemporalKind::Mean {
        return Err(Error::invalid(
            "--temporal",
            format!(
                "`{}` applies to the per-frame ResNet encoders; {base_model} already attends over time with its \
                 own temporal transformer (leave --temporal at mean)",
                kind.name()
            ),
        ));
    }
    Ok(())
}

/// Blocks of the temporal transformer.
pub const TEMPORAL_DEPTH: usize = 2;

/// Heads for width `dim`: head dim 64 where it divides, else 32, else one head.
fn heads_for(dim: usize) -> usize {
    [64, 32].iter().find(|&&d| dim % d == 0).map_or(1, |d| dim / d)
}

pub struct TemporalTransformer {
    /// Learned position of each of the T frames, [1, T, F].
    pub positions: Tensor,
    pub blocks: Vec<Block>,
}

/// Each feature's least-squares slope over the frames: Σ_t (t − t̄)·x_t / Σ_t (t − t̄)²,
/// [B, T, F] → [B, F]. Linear in the frames and odd under reversal.
pub fn temporal_slope(x: &Tensor) -> Result<Tensor> {
    if x.rank() != 3 {
        return Err(Error::shape("temporal_slope", format!("expected frame features [B, T, F], got {:?}", x.shape())));
    }
    let t = x.shape()[1];
    let centre = (t as f64 - 1.0) / 2.0;
    let spread: f64 = (0..t).map(|i| (i as f64 - centre).powi(2)).sum();
    // × t: temporal_mean divides by t.
    let w: Vec<f64> =
        (0..t).map(|i| if spread > 0.0 { (i as f64 - centre) / spread * t as f64 } else { 0.0 }).collect();
    let w = Tensor::from_f64s(&w, &[1, t, 1], x.dtype())?.to_device(x.device())?;
    temporal_mean(&x.mul(&w)?)
}

impl TemporalPooling {
    /// Width of the clip features for `frame_dim`-wide frame features.
    pub fn output_dim(&self, frame_dim: usize) -> usize {
        match self {
            TemporalPooling::Motion(_) => 2 * frame_dim,
            TemporalPooling::Mean | TemporalPooling::Transformer(_) => frame_dim,
        }
    }
}

impl TemporalTransformer {
    fn new(frames: usize, dim: usize, dtype: DType, rng: &mut Rng) -> Result<TemporalTransformer> {
        Ok(TemporalTransformer {
            positions: init::normal(&[1, frames, dim], 0.02, dtype, rng)?,
            blocks: (0..TEMPORAL_DEPTH).map(|_| Block::new(dim, heads_for(dim), dtype, rng)).collect::<Result<_>>()?,
        })
    }

    /// Frame features of the clip length and width the positions were made for.
    fn check_frames(&self, x: &Tensor) -> Result<()> {
        let want = self.positions.shape();
        if x.rank() != 3 || x.shape()[1..] != want[1..] {
            return Err(Error::shape(
                "temporal transformer",
                format!("expected frame features [B, {}, {}], got {:?}", want[1], want[2], x.shape()),
            ));
        }
        Ok(())
    }

    /// Positions added, then the blocks: [B, T, F] → [B, T, F].
    fn attend(&mut self, x: &Tensor) -> Result<Tensor> {
        self.check_frames(x)?;
        let mut h = x.add(&self.positions)?;
        for block in &mut self.blocks {
            h = block.forward(&h)?;
        }
        Ok(h)
    }
}

pub enum TemporalPooling {
    Mean,
    Transformer(TemporalTransformer),
    Motion(TemporalTransformer),
}

impl TemporalPooling {
    /// Aggregation `kind` over `frames` frames of `dim`-wide features.
    pub fn new(kind: TemporalKind, frames: usize, dim: usize, dtype: DType, rng: &mut Rng) -> Result<TemporalPooling> {
        Ok(match kind {
            TemporalKind::Mean => TemporalPooling::Mean,
            TemporalKind::Transformer => {
                TemporalPooling::Transformer(TemporalTransformer::new(frames, dim, dtype, rng)?)
            }
            TemporalKind::Motion => TemporalPooling::Motion(TemporalTransformer::new(frames, dim, dtype, rng)?),
        })
    }

    pub fn kind(&self) -> TemporalKind {
        match self {
            TemporalPooling::Mean => TemporalKind::Mean,
            TemporalPooling::Transformer(_) => TemporalKind::Transformer,
            TemporalPooling::Motion(_) => TemporalKind::Motion,
        }
    }
}

impl Module for TemporalPooling {
    /// Per-frame features [B, T, F] → clip features [B, F].
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        match self {
            TemporalPooling::Mean => temporal_mean(x),
            TemporalPooling::Transformer(t) => temporal_mean(&t.attend(x)?),
            TemporalPooling::Motion(t) => {
                t.check_frames(x)?;
                let (b, f) = (x.shape()[0], x.shape()[2]);
                let mean = temporal_mean(x)?;
                // How each frame differs from the clip's average: where the balls moved to.
                let change = x.sub(&mean.reshape(&[b, 1, f])?)?;
                let pooled = mean.add(&temporal_mean(&t.attend(&change)?)?)?;
                Tensor::cat(&[&pooled, &temporal_slope(x)?], 1)
            }
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        if let TemporalPooling::Transformer(t) | TemporalPooling::Motion(t) = self {
            f(&join(prefix, "positions"), &t.positions, TensorKind::Parameter);
            for (i, block) in t.blocks.iter().enumerate() {
                block.visit(&join(prefix, &format!("blocks.{i}")), f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_keep_a_supported_head_dim() {
        assert_eq!(heads_for(128), 2);
        assert_eq!(heads_for(512), 8);
        assert_eq!(heads_for(96), 3);
        assert_eq!(heads_for(40), 1);
    }

    #[test]
    fn unknown_kind_names_the_choices() {
        let e = TemporalKind::parse("lstm").unwrap_err().to_string();
        assert!(e.contains("--temporal") && e.contains("`lstm`") && e.contains("mean, transformer"), "{e}");
        for name in TEMPORAL_KINDS {
            assert_eq!(TemporalKind::parse(name).unwrap().name(), *name);
        }
    }
}
