//! The evaluation set `simclr-eval` uses when given no `--processed_dir`:
//! bouncing balls matching the checkpoint, generated into the cache
//! directory the first time and reused afterwards.
//!
//! "Matching" means: as many frames per clip as the training clips had (so
//! the evenly spaced frames the model sees are as far apart in time as in
//! training; 20, the baseline's clip length, when unknown) and frames of the
//! training size (the model's input size when unknown).

use super::cache::cache_dir;
use crate::checkpoint::{DatasetIdentity, ModelSpec};
use crate::data::shards::ShardDataset;
use crate::data::synthetic::{default_clips_per_shard, write_bouncing, BouncingConfig, BouncingDataset};
use crate::error::Result;
use std::path::PathBuf;

/// Seed of the default evaluation set. Training sets come from small seeds
/// (`simclr-data bouncing` defaults to 0), so these clips are new to the model.
pub const EVAL_DATA_SEED: u64 = 1_000_003;
/// Clips in the default evaluation set: a 30 % test split of 180 clips.
pub const EVAL_CLIPS: usize = 600;
/// Frames per clip when the training clips' length is unknown (the baseline's).
pub const EVAL_FRAMES: usize = 20;
/// Largest frame side generated (the largest `simclr-data bouncing` accepts).
const MAX_SIZE: usize = 1024;

/// The default set's settings for a model, trained on `trained_on` where known.
pub fn default_eval_config(spec: &ModelSpec, trained_on: Option<&DatasetIdentity>) -> BouncingDataset {
    let frames =
        trained_on.map(|d| d.frames).filter(|&f| f >= spec.num_frames).unwrap_or(EVAL_FRAMES.max(spec.num_frames));
    let size = trained_on
        .map(|d| d.height.min(d.width))
        .filter(|&s| s >= spec.image_size && s <= MAX_SIZE)
        .unwrap_or(spec.image_size);
    let clip = BouncingConfig { frames, size, ..Default::default() };
    BouncingDataset { clips: EVAL_CLIPS, seed: EVAL_DATA_SEED, clips_per_shard: default_clips_per_shard(&clip), clip }
}

/// Where a default set lives: its settings are in the name, so models of
/// different geometry get different sets.
pub fn default_eval_dir(d: &BouncingDataset) -> PathBuf {
    cache_dir().join(format!("eval-bouncing-seed{}-{}clips-{}x{}px", d.seed, d.clips, d.clip.frames, d.clip.size))
}

/// Makes sure the default evaluation set for `spec` (trained on `trained_on`,
/// where known) exists and returns its directory. A complete set (it opens,
/// with the expected settings) is used as it is; a missing or damaged one is
/// generated, or finished where an earlier run stopped.
pub fn ensure_default_eval_set(
    spec: &ModelSpec,
    trained_on: Option<&DatasetIdentity>,
    on_progress: impl Fn(usize) + Sync,
) -> Result<PathBuf> {
    let d = default_eval_config(spec, trained_on);
    let dir = default_eval_dir(&d);
    let complete = ShardDataset::open(&dir).is_ok_and(|ds| {
        let m = ds.manifest();
        m.clips == d.clips
            && m.frames == d.clip.frames
            && m.height == d.clip.size
            && m.source.get("seed").and_then(|s| s.as_u64()) == Some(d.seed)
    });
    if !complete {
        write_bouncing(&dir, &d, on_progress)?;
    }
    Ok(dir)
}
