//! `ModelSpec`: what a model is (encoder, sizes, temporal pooling, head), saved in every
//! weights file so that a checkpoint alone rebuilds its model.

use super::simclr::{Encoder, SimClr};
use super::temporal::TemporalKind;
use crate::config::TrainConfig;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// Everything needed to rebuild the model from its weights file alone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelSpec {
    pub base_model: String,
    pub num_frames: usize,
    pub image_size: usize,
    pub width: f64,
    pub small_stem: bool,
    /// How a ResNet's frame features become the clip's (`nn::temporal`). Checkpoints from
    /// before `--temporal` existed have no such field: they averaged, and load as `mean`.
    #[serde(default = "mean_temporal")]
    pub temporal: String,
    pub projection_dim: usize,
    pub temperature: f64,
}

fn mean_temporal() -> String {
    TemporalKind::Mean.name().to_string()
}

impl ModelSpec {
    pub fn from_config(c: &TrainConfig) -> ModelSpec {
        ModelSpec {
            base_model: c.base_model.clone(),
            num_frames: c.num_frames,
            image_size: c.image_size,
            width: c.width,
            small_stem: c.small_stem,
            temporal: c.temporal.clone(),
            projection_dim: c.projection_dim,
            temperature: c.temperature,
        }
    }

    /// A freshly initialised model (f32) drawn from `rng`.
    pub fn build(&self, rng: &mut Rng) -> Result<SimClr> {
        let encoder = Encoder::named(
            &self.base_model,
            self.num_frames,
            self.image_size,
            self.width,
            self.small_stem,
            TemporalKind::parse(&self.temporal)?,
            DType::F32,
            rng,
        )?;
        SimClr::new(encoder, self.projection_dim, self.temperature, DType::F32, rng)
    }
}
