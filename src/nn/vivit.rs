//! ViViT, factorised-encoder variant (Arnab et al. 2021, "Model 2").
//!
//! A clip [B, T, 3, H, W] is cut into tubelets of t frames × p×p pixels, each
//! linearly embedded to D dims. A *spatial* transformer runs on the tokens of
//! each temporal slice (plus a CLS token); the slices' CLS outputs then go
//! through a *temporal* transformer (plus its own CLS token), whose CLS output,
//! layer-normed, is the clip representation.
//!
//! Why this variant: attention costs O(T'·S² + T'²) instead of O((T'·S)²) for
//! joint space-time attention (T' slices of S tokens: 10 × 64 at 20×128×128),
//! and it mirrors the ResNet path — per-frame features, then time — so the
//! two encoders are compared on equal terms.
//!
//! Sizes: tiny 192-d / 3 heads, small 384 / 6, base 768 / 12 (head dim 64);
//! blocks are pre-norm (x + MHA(LN x), x + MLP(LN x)), MLP ratio 4, GELU.

use super::mlp::Activation;
use super::{init, join, LayerNorm, Mlp, Module, MultiHeadAttention, TensorKind};
use crate::error::{Error, Result};
use crate::ops::matmul::linear;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct VivitConfig {
    pub dim: usize,
    pub heads: usize,
    pub spatial_depth: usize,
    pub temporal_depth: usize,
    /// Frames per tubelet and tubelet side in pixels.
    pub tubelet_frames: usize,
    pub patch: usize,
    /// Clip geometry the positional embeddings are built for.
    pub frames: usize,
    pub image: usize,
}

impl VivitConfig {
    /// `vivit_tiny`, `vivit_small`, `vivit_base` for clips of `frames`×`image`².
    pub fn named(name: &str, frames: usize, image: usize) -> Result<VivitConfig> {
        let (dim, heads) = match name {
            "vivit_tiny" => (192, 3),
            "vivit_small" => (384, 6),
            "vivit_base" => (768, 12),
            other => {
                return Err(Error::invalid(
                    "--base_model",
                    format!("unknown ViViT `{other}` (vivit_tiny, vivit_small, vivit_base)"),
                ))
            }
        };
        Ok(VivitConfig {
            dim,
            heads,
            spatial_depth: 12,
            temporal_depth: 4,
            tubelet_frames: 2,
            patch: 16,
            frames,
            image,
        })
    }

    fn slices(&self) -> usize {
        self.frames / self.tubelet_frames
    }
    fn patches(&self) -> usize {
        (self.image / self.patch).pow(2)
    }
}

/// Pre-norm transformer block.
pub struct Block {
    norm1: LayerNorm,
    attn: MultiHeadAttention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub(crate) fn new(dim: usize, heads: usize, dtype: DType, rng: &mut Rng) -> Result<Block> {
        Ok(Block {
            norm1: LayerNorm::new(dim, dtype)?,
            attn: MultiHeadAttention::new(dim, heads, dtype, rng)?,
            norm2: LayerNorm::new(dim, dtype)?,
            mlp: Mlp::new(&[dim, 4 * dim, dim], Activation::Gelu, dtype, rng)?,
        })
    }
}

impl Module for Block {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let x = x.add(&self.attn.forward(&self.norm1.forward(x)?)?)?;
        x.add(&self.mlp.forward(&self.norm2.forward(&x)?)?)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        self.norm1.visit(&join(prefix, "norm1"), f);
        self.attn.visit(&join(prefix, "attn"), f);
        self.norm2.visit(&join(prefix, "norm2"), f);
        self.mlp.visit(&join(prefix, "mlp"), f);
    }
}

/// Clips [B, T, 3, H, W] → tubelet rows [B·T', g², 3·t·p·p] (g = H/p), each row in
/// Conv3d kernel order (channel, frame, y, x) so the embedding is a Conv3d.
fn tubelets(x: &Tensor, c: &VivitConfig) -> Result<Tensor> {
    let (b, ts, g, t, p) = (x.shape()[0], c.slices(), c.image / c.patch, c.tubelet_frames, c.patch);
    // [B, T', t, 3, g, p, g, p] → [B, T', g, g, 3, t, p, p]
    x.reshape(&[b, ts, t, 3, g, p, g, p])?.permute(&[0, 1, 4, 6, 3, 2, 5, 7])?.reshape(&[b * ts, g * g, 3 * t * p * p])
}

pub struct Vivit {
    pub config: VivitConfig,
    /// Tubelet embedding: weight [D, 3·t·p·p] (a Conv3d kernel [D, 3, t, p, p], flattened) and bias.
    embed_weight: Tensor,
    embed_bias: Tensor,
    spatial_cls: Tensor,
    spatial_pos: Tensor,
    spatial: Vec<Block>,
    temporal_cls: Tensor,
    temporal_pos: Tensor,
    temporal: Vec<Block>,
    norm: LayerNorm,
}

impl Vivit {
    pub fn new(config: VivitConfig, dtype: DType, rng: &mut Rng) -> Result<Vivit> {
        let c = config;
        if c.tubelet_frames == 0
            || c.patch == 0
            || c.frames % c.tubelet_frames != 0
            || c.image % c.patch != 0
            || c.slices() == 0
            || c.patches() == 0
        {
            return Err(Error::invalid(
                "ViViT",
                format!(
                    "{} frames of {}px must split into tubelets of {} frames × {}px",
                    c.frames, c.image, c.tubelet_frames, c.patch
                ),
            ));
        }
        let d = c.dim;
        let fan_in = 3 * c.tubelet_frames * c.patch * c.patch;
        Ok(Vivit {
            config,
            embed_weight: init::fan_in_uniform(&[d, fan_in], fan_in, dtype, rng)?,
            embed_bias: init::fan_in_uniform(&[d], fan_in, dtype, rng)?,
            spatial_cls: init::normal(&[1, 1, d], 0.02, dtype, rng)?,
            spatial_pos: init::normal(&[1, c.patches() + 1, d], 0.02, dtype, rng)?,
            spatial: (0..c.spatial_depth).map(|_| Block::new(d, c.heads, dtype, rng)).collect::<Result<_>>()?,
            temporal_cls: init::normal(&[1, 1, d], 0.02, dtype, rng)?,
            temporal_pos: init::normal(&[1, c.slices() + 1, d], 0.02, dtype, rng)?,
            temporal: (0..c.temporal_depth).map(|_| Block::new(d, c.heads, dtype, rng)).collect::<Result<_>>()?,
            norm: LayerNorm::new(d, dtype)?,
        })
    }

    /// Prepends a learned CLS token to every sequence of `x: [N, L, D]` and adds positions.
    fn with_cls(x: &Tensor, cls: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let (n, d) = (x.shape()[0], x.shape()[2]);
        Tensor::cat(&[&cls.broadcast_to(&[n, 1, d])?, x], 1)?.add(pos)
    }
}

impl Module for Vivit {
    /// Clips [B, T, 3, H, W] → representations [B, D].
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let c = self.config;
        if x.rank() != 5 || x.shape()[1..] != [c.frames, 3, c.image, c.image] {
            return Err(Error::shape(
                "ViViT",
                format!("expected clips [B, {}, 3, {}, {}], got {:?}", c.frames, c.image, c.image, x.shape()),
            ));
        }
        let (b, ts) = (x.shape()[0], c.slices());
        let tubelets = tubelets(x, &c)?;
        let mut h = Self::with_cls(
            &linear(&tubelets, &self.embed_weight, Some(&self.embed_bias))?,
            &self.spatial_cls,
            &self.spatial_pos,
        )?;
        for block in &mut self.spatial {
            h = block.forward(&h)?;
        }
        // Each slice's CLS output becomes a token of the temporal sequence.
        let slice_tokens = h.narrow(1, 0, 1)?.reshape(&[b, ts, c.dim])?;
        let mut z = Self::with_cls(&slice_tokens, &self.temporal_cls, &self.temporal_pos)?;
        for block in &mut self.temporal {
            z = block.forward(&z)?;
        }
        self.norm.forward(&z.narrow(1, 0, 1)?.reshape(&[b, c.dim])?)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "tubelet_embed.weight"), &self.embed_weight, TensorKind::Parameter);
        f(&join(prefix, "tubelet_embed.bias"), &self.embed_bias, TensorKind::Parameter);
        f(&join(prefix, "spatial_cls"), &self.spatial_cls, TensorKind::Parameter);
        f(&join(prefix, "spatial_pos"), &self.spatial_pos, TensorKind::Parameter);
        for (i, blk) in self.spatial.iter().enumerate() {
            blk.visit(&join(prefix, &format!("spatial.{i}")), f);
        }
        f(&join(prefix, "temporal_cls"), &self.temporal_cls, TensorKind::Parameter);
        f(&join(prefix, "temporal_pos"), &self.temporal_pos, TensorKind::Parameter);
        for (i, blk) in self.temporal.iter().enumerate() {
            blk.visit(&join(prefix, &format!("temporal.{i}")), f);
        }
        self.norm.visit(&join(prefix, "norm"), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tubelet_rows_follow_conv3d_kernel_order() {
        let c = VivitConfig {
            dim: 4,
            heads: 1,
            spatial_depth: 0,
            temporal_depth: 0,
            tubelet_frames: 2,
            patch: 2,
            frames: 4,
            image: 4,
        };
        // Pixel value encodes (frame, channel, y, x) as f·1000 + ch·100 + y·10 + x.
        let mut v = Vec::new();
        for f in 0..4 {
            for ch in 0..3 {
                for y in 0..4 {
                    for x in 0..4 {
                        v.push((f * 1000 + ch * 100 + y * 10 + x) as f64);
                    }
                }
            }
        }
        let clip = Tensor::from_f64s(&v, &[1, 4, 3, 4, 4], DType::F64).unwrap();
        let rows = tubelets(&clip, &c).unwrap();
        assert_eq!(rows.shape(), &[2, 4, 24]);
        // Slice 1 (frames 2–3), patch (gy 0, gx 1) → x in 2..4, y in 0..2.
        let row: Vec<f64> = rows.narrow(0, 1, 1).unwrap().narrow(1, 1, 1).unwrap().to_f64_vec();
        let mut want = Vec::new();
        for ch in 0..3 {
            for f in 2..4 {
                for y in 0..2 {
                    for x in 2..4 {
                        want.push((f * 1000 + ch * 100 + y * 10 + x) as f64);
                    }
                }
            }
        }
        assert_eq!(row, want);
    }
}
