//! Training configuration: built-in defaults (the PyTorch baseline's), then an
//! optional TOML file (`--config`), then command-line flags, later ones winning.
//!
//! Every field has a default, so a config file names only what it changes:
//!
//! ```toml
//! base_model = "vivit_small"
//! batch_size = 128
//! lr = 1e-4
//! [augment]
//! crop_scale_min = 0.2
//! ```

use crate::data::augment::AugmentConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MODELS: &[&str] = &["resnet18", "resnet34", "resnet50", "vivit_tiny", "vivit_small", "vivit_base"];
pub const OPTIMIZERS: &[&str] = &["adam", "adamw", "sgd", "lars"];
pub const PRECISIONS: &[&str] = &["auto", "bf16", "f32"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Directory of preprocessed shards (`simclr-data bouncing|clevrer`).
    pub processed_dir: PathBuf,
    pub epochs: usize,
    /// Clips per step, summed over all GPUs (as in the baseline).
    pub batch_size: usize,
    /// Peak learning rate (for one GPU; the multi-GPU trainer, when it lands, scales it by the GPU count).
    pub lr: f64,
    pub base_model: String,
    pub temperature: f64,
    /// Frames per clip fed to the encoder, spread evenly over the stored clip.
    pub num_frames: usize,
    /// Side of the augmented views (the random crop is resized to this).
    pub image_size: usize,
    pub projection_dim: usize,
    /// ResNet width multiplier (1.0 = torchvision's) and the small-image stem, for CPU-sized runs.
    pub width: f64,
    pub small_stem: bool,
    /// How a ResNet's per-frame features become the clip's: `mean` (the baseline's) or the
    /// order-aware `transformer` or `motion` (`nn::temporal`).
    pub temporal: String,
    pub optimizer: String,
    pub weight_decay: f64,
    /// Momentum of SGD and LARS.
    pub momentum: f64,
    /// Fraction of all steps spent in the linear warm-up before the cosine decay.
    pub warmup_fraction: f64,
    /// Clip the global gradient norm to this value (off when absent).
    pub grad_clip: Option<f64>,
    /// Write `checkpoint_epoch_N.safetensors` every this many epochs (and at the end).
    pub checkpoint_every: usize,
    /// Also checkpoint every N steps, in the middle of epochs (resumable exactly).
    pub checkpoint_every_steps: Option<usize>,
    /// Also checkpoint when this many minutes have passed since the last checkpoint.
    pub checkpoint_every_minutes: Option<f64>,
    pub seed: u64,
    /// Output directory: checkpoints, metrics.jsonl, plots.
    pub out: PathBuf,
    /// `auto` (the default: CUDA when this machine has a GPU and the build has the CUDA
    /// backend, else the CPU), `cpu`, or `cuda` (the GPU of this rank's local rank; needs a build
    /// with feature `cuda`).
    pub device: String,
    /// `bf16`: bf16 autocast — on the GPU matmuls, convolutions and attention run on bf16 tensor
    /// cores, on the CPU matmuls, linear layers and the convolutions' GEMMs multiply bf16
    /// operands with AVX512-BF16 (an error on a CPU without it); products are summed in f32,
    /// and weights, optimiser and every other op stay f32. `f32`: f32 throughout. `auto` (the
    /// default): bf16 on the GPU, f32 on the CPU (the reference).
    pub precision: String,
    /// On the GPU, the fixed-order path of the kernels that would otherwise add partial sums with
    /// atomics (conv weight gradient, attention dQ): the same bits every run, a resume that
    /// matches an uninterrupted run. `false` trades that for a little speed (see
    /// backend/cuda/determinism.rs). The CPU is always deterministic.
    pub deterministic: bool,
    /// Data-loading worker threads.
    pub workers: usize,
    /// Data-parallel training: one process per local GPU (`--device cuda`) or per
    /// `--num_gpus` process on the CPU; the training loop itself takes any `dist::Communicator`.
    pub ddp: bool,
    pub num_gpus: Option<usize>,
    /// Batch-norm statistics over every rank's batch instead of each rank's own.
    pub sync_bn: bool,
    pub augment: AugmentSettings,
}

/// The augmentation knobs of SimCLR (defaults: torchvision's SimCLR recipe).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentSettings {
    pub crop_scale_min: f64,
    pub crop_scale_max: f64,
    pub flip_p: f64,
    pub jitter_p: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    pub grayscale_p: f64,
    /// Each view's frames shifted later by a random 0..=N stored frames (0: the same frames).
    pub temporal_jitter: usize,
    /// Every clip also enters the batch played backwards, as its own instance.
    pub reversed_twins: bool,
}

impl Default for AugmentSettings {
    fn default() -> Self {
        let a = AugmentConfig::default();
        AugmentSettings {
            crop_scale_min: a.crop_scale.0,
            crop_scale_max: a.crop_scale.1,
            flip_p: a.flip_p,
            jitter_p: a.jitter_p,
            brightness: a.brightness,
            contrast: a.contrast,
            saturation: a.saturation,
            hue: a.hue,
            grayscale_p: a.grayscale_p,
            temporal_jitter: a.temporal_jitter,
            reversed_twins: a.reversed_twins,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            processed_dir: PathBuf::from("data/bouncing"),
            epochs: 100,
            batch_size: 256,
            lr: 3e-4,
            base_model: "resnet18".into(),
            temperature: 0.5,
            num_frames: 20,
            image_size: 128,
            projection_dim: 128,
            width: 1.0,
            small_stem: false,
            temporal: "mean".into(),
            optimizer: "adam".into(),
            weight_decay: 1e-6,
            momentum: 0.9,
            warmup_fraction: 0.1,
            grad_clip: None,
            checkpoint_every: 10,
            checkpoint_every_steps: None,
            checkpoint_every_minutes: None,
            seed: 0,
            out: PathBuf::from("runs"),
            device: "auto".into(),
            precision: "auto".into(),
            deterministic: true,
            workers: 2,
            ddp: false,
            num_gpus: None,
            sync_bn: false,
            augment: AugmentSettings::default(),
        }
    }
}

impl TrainConfig {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a TrainConfig always serialises")
    }

    /// The augmentation of the loader, at this run's view size.
    pub fn augment_config(&self) -> AugmentConfig {
        let a = &self.augment;
        AugmentConfig {
            out_size: self.image_size,
            crop_scale: (a.crop_scale_min, a.crop_scale_max),
            flip_p: a.flip_p,
            jitter_p: a.jitter_p,
            brightness: a.brightness,
            contrast: a.contrast,
            saturation: a.saturation,
            hue: a.hue,
            grayscale_p: a.grayscale_p,
            temporal_jitter: a.temporal_jitter,
            reversed_twins: a.reversed_twins,
            ..AugmentConfig::default()
        }
    }

    /// Checks every value a user can get wrong, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &'static str, msg: String| Err(Error::invalid(flag, msg));
        if self.epochs == 0 {
            return bad("--epochs", "must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(
                "--batch_size",
                format!("must be at least 2 (NT-Xent needs other clips as negatives), got {}", self.batch_size),
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr", format!("must be a positive number, got {}", self.lr));
        }
        if !MODELS.contains(&self.base_model.as_str()) {
            return bad("--base_model", format!("unknown model `{}`; one of {}", self.base_model, MODELS.join(", ")));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad("--temperature", format!("must be a positive number, got {}", self.temperature));
        }
        if self.num_frames == 0 {
            return bad("--num_frames", "must be at least 1".into());
        }
        if self.image_size < 8 {
            return bad("--image_size", format!("must be at least 8 pixels, got {}", self.image_size));
        }
        if self.projection_dim == 0 {
            return bad("--projection_dim", "must be at least 1".into());
        }
        if !(self.width > 0.0 && self.width <= 4.0) {
            return bad("--width", format!("must be in (0, 4], got {}", self.width));
        }
        let temporal = crate::nn::temporal::TemporalKind::parse(&self.temporal)?;
        crate::nn::temporal::check_applies(&self.base_model, temporal)?;
        if !OPTIMIZERS.contains(&self.optimizer.as_str()) {
            return bad(
                "--optimizer",
                format!("unknown optimizer `{}`; one of {}", self.optimizer, OPTIMIZERS.join(", ")),
            );
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("--weight_decay", format!("must be >= 0, got {}", self.weight_decay));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("--momentum", format!("must be in [0, 1), got {}", self.momentum));
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return bad("--warmup_fraction", format!("must be in [0, 1), got {}", self.warmup_fraction));
        }
        if let Some(c) = self.grad_clip {
            if !(c > 0.0 && c.is_finite()) {
                return bad("--grad_clip", format!("must be a positive number, got {c}"));
            }
        }
        if self.checkpoint_every == 0 {
            return bad("--checkpoint_every", "must be at least 1 (epochs)".into());
        }
        if self.checkpoint_every_steps == Some(0) {
            return bad("--checkpoint_every_steps", "must be at least 1 (steps)".into());
        }
        if let Some(m) = self.checkpoint_every_minutes.filter(|m| !(m.is_finite() && *m > 0.0)) {
            return bad("--checkpoint_every_minutes", format!("{m} is not a positive number of minutes"));
        }
        if self.workers == 0 {
            return bad("--workers", "must be at least 1".into());
        }
        match self.device.as_str() {
            "cpu" | "auto" => {}
            // Which GPU, and whether there is one, is found out when training opens it.
            "cuda" if cfg!(feature = "cuda") => {}
            "cuda" => {
                return bad(
                    "--device",
                    "this build has no CUDA backend: rebuild with `cargo build --release --features cuda`, \
                     or use --device cpu"
                        .into(),
                )
            }
            other => return bad("--device", format!("unknown device `{other}`; use auto, cpu or cuda")),
        }
        if !PRECISIONS.contains(&self.precision.as_str()) {
            return bad("--precision", format!("unknown precision `{}`; use auto, bf16 or f32", self.precision));
        }
        self.augment_config().validate()
    }
}

/// `base`, then the TOML file's keys, then `flags` (keys set on the command
/// line), later ones winning; nested tables (`[augment]`) merge key by key.
pub fn resolve(base: &TrainConfig, file: Option<&Path>, flags: toml::Table) -> Result<TrainConfig> {
    let mut merged = toml::Table::try_from(base).expect("a TrainConfig is a TOML table");
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading the config file", path, e))?;
        // Checked on its own first, so errors point at the file's own lines.
        let bad = |e: toml::de::Error| Error::format(path, format!("not a valid simclr-train config: {e}"));
        toml::from_str::<TrainConfig>(&text).map_err(bad)?;
        merge(&mut merged, text.parse().map_err(bad)?);
    }
    merge(&mut merged, flags);
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| Error::invalid("config", e.message().to_string()))
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(key, v);
            }
        }
    }
}
