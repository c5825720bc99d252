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
//!
//! Built from existing ops only (linear, attention, layer norm, GELU, add,
//! mean), each gradchecked and with its CUDA kernel.

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
}

/// The values `--temporal` accepts.
pub const TEMPORAL_KINDS: &[&str] = &["mean", "transformer"];

impl TemporalKind {
    pub fn parse(name: &str) -> Result<TemporalKind> {
        match name {
            "mean" => Ok(TemporalKind::Mean),
            "transformer" => Ok(TemporalKind::Transformer),
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

pub enum TemporalPooling {
    Mean,
    Transformer(TemporalTransformer),
}

impl TemporalPooling {
    /// Aggregation `kind` over `frames` frames of `dim`-wide features.
    pub fn new(kind: TemporalKind, frames: usize, dim: usize, dtype: DType, rng: &mut Rng) -> Result<TemporalPooling> {
        Ok(match kind {
            TemporalKind::Mean => TemporalPooling::Mean,
            TemporalKind::Transformer => TemporalPooling::Transformer(TemporalTransformer {
                positions: init::normal(&[1, frames, dim], 0.02, dtype, rng)?,
                blocks: (0..TEMPORAL_DEPTH)
                    .map(|_| Block::new(dim, heads_for(dim), dtype, rng))
                    .collect::<Result<_>>()?,
            }),
        })
    }

    pub fn kind(&self) -> TemporalKind {
        match self {
            TemporalPooling::Mean => TemporalKind::Mean,
            TemporalPooling::Transformer(_) => TemporalKind::Transformer,
        }
    }
}

impl Module for TemporalPooling {
    /// Per-frame features [B, T, F] → clip features [B, F].
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        match self {
            TemporalPooling::Mean => temporal_mean(x),
            TemporalPooling::Transformer(t) => {
                let want = t.positions.shape();
                if x.rank() != 3 || x.shape()[1..] != want[1..] {
                    return Err(Error::shape(
                        "temporal transformer",
                        format!("expected frame features [B, {}, {}], got {:?}", want[1], want[2], x.shape()),
                    ));
                }
                let mut h = x.add(&t.positions)?;
                for block in &mut t.blocks {
                    h = block.forward(&h)?;
                }
                temporal_mean(&h)
            }
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        if let TemporalPooling::Transformer(t) = self {
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
