//! The bouncing-ball dataset: simulate, render, label.
//!
//! Clip `i` of a dataset with seed `s` depends only on (s, i) — its RNG is
//! `Rng::fork(s, i)` — so clips are generated in parallel, any subset can be
//! regenerated, and the same seed always gives the same bytes. `write_bouncing`
//! turns a range of clips into a shard dataset.

use super::bouncing::{random_world, Event};
use super::render::{render_frame, Background, Disc, PALETTE};
use super::shards::{write_dataset, Manifest, ShardContent, ShardSpec};
use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone, Copy, Debug)]
pub struct BouncingConfig {
    pub frames: usize,
    pub size: usize,
    pub min_balls: usize,
    pub max_balls: usize,
    /// Seconds between frames.
    pub frame_dt: f64,
}

impl Default for BouncingConfig {
    fn default() -> Self {
        BouncingConfig { frames: 20, size: 128, min_balls: 1, max_balls: 3, frame_dt: 0.05 }
    }
}

/// Everything known about one clip: the targets of the evaluation probes.
#[derive(Clone, Debug, Serialize)]
pub struct ClipLabels {
    pub clip: usize,
    pub source: String,
    pub ball_count: usize,
    pub gravity: f64,
    pub restitution: f64,
    pub radii: Vec<f64>,
    pub masses: Vec<f64>,
    pub colours: Vec<[f32; 3]>,
    /// [frame][ball] = [x, y] in box units (0..1, y down).
    pub positions: Vec<Vec<[f64; 2]>>,
    pub velocities: Vec<Vec<[f64; 2]>>,
    pub collisions: Vec<Event>,
}

/// Most balls a clip can hold: one distinct palette colour each.
pub const MAX_BALLS: usize = PALETTE.len();

impl BouncingConfig {
    pub fn validate(&self) -> Result<()> {
        if self.min_balls == 0 || self.min_balls > self.max_balls || self.max_balls > MAX_BALLS {
            return Err(Error::invalid(
                "--balls",
                format!(
                    "ball counts must satisfy 1 <= min <= max <= {MAX_BALLS}, got {}-{}",
                    self.min_balls, self.max_balls
                ),
            ));
        }
        if self.frames == 0 || self.size == 0 {
            return Err(Error::invalid("bouncing", "frames and size must be at least 1"));
        }
        if !(self.frame_dt.is_finite() && self.frame_dt > 0.0) {
            return Err(Error::invalid("bouncing", format!("frame_dt must be positive, got {}", self.frame_dt)));
        }
        Ok(())
    }
}

/// Simulates and renders clip `index`: T×size×size×3 bytes plus its labels.
pub fn generate_clip(seed: u64, index: usize, cfg: &BouncingConfig) -> Result<(Vec<u8>, ClipLabels)> {
    cfg.validate()?;
    let mut rng = Rng::fork(seed, index as u64);
    let count = cfg.min_balls + rng.below(cfg.max_balls - cfg.min_balls + 1);
    let mut world = random_world(&mut rng, count);
    let mut palette: Vec<usize> = (0..PALETTE.len()).collect();
    rng.shuffle(&mut palette);
    let colours: Vec<[f32; 3]> = palette[..count].iter().map(|&p| PALETTE[p]).collect();
    let background = Background::random(&mut rng);
    let frame_bytes = cfg.size * cfg.size * 3;
    let mut bytes = vec![0u8; cfg.frames * frame_bytes];
    let (mut positions, mut velocities) = (Vec::with_capacity(cfg.frames), Vec::with_capacity(cfg.frames));
    for f in 0..cfg.frames {
        if f > 0 {
            world.step(cfg.frame_dt, f);
        }
        positions.push(world.balls.iter().map(|b| b.pos).collect());
        velocities.push(world.balls.iter().map(|b| b.vel).collect());
        let discs: Vec<Disc> = world
            .balls
            .iter()
            .zip(&colours)
            .map(|(b, &colour)| Disc { centre: b.pos, radius: b.radius, colour })
            .collect();
        render_frame(&discs, &background, cfg.size, &mut bytes[f * frame_bytes..(f + 1) * frame_bytes]);
    }
    let labels = ClipLabels {
        clip: index,
        source: format!("bouncing:{seed}:{index}"),
        ball_count: count,
        gravity: world.gravity,
        restitution: world.restitution,
        radii: world.balls.iter().map(|b| b.radius).collect(),
        masses: world.balls.iter().map(|b| b.mass).collect(),
        colours,
        positions,
        velocities,
        collisions: world.events.clone(),
    };
    Ok((bytes, labels))
}

/// Where `write_bouncing` puts a dataset and how it splits it.
#[derive(Clone, Debug)]
pub struct BouncingDataset {
    pub clips: usize,
    pub seed: u64,
    pub clips_per_shard: usize,
    pub clip: BouncingConfig,
}

/// Shards of at most this many bytes by default: big enough to keep the file
/// count low, small enough to build one in memory.
pub const SHARD_BYTES_TARGET: usize = 256 << 20;

/// Default clips per shard: 64, fewer when 64 clips would exceed `SHARD_BYTES_TARGET`.
pub fn default_clips_per_shard(cfg: &BouncingConfig) -> usize {
    let clip_bytes = cfg.frames.saturating_mul(cfg.size).saturating_mul(cfg.size).saturating_mul(3).max(1);
    (SHARD_BYTES_TARGET / clip_bytes).clamp(1, 64)
}

/// Generates (or finishes generating) a bouncing-ball dataset in `dir`: clips
/// of one shard are simulated in parallel with rayon. `on_progress(n)` is
/// called as clips are done (n at a time, from any thread).
pub fn write_bouncing(dir: &Path, d: &BouncingDataset, on_progress: impl Fn(usize) + Sync) -> Result<Manifest> {
    let cfg = d.clip;
    cfg.validate()?;
    let spec = ShardSpec {
        clips: d.clips,
        frames: cfg.frames,
        height: cfg.size,
        width: cfg.size,
        clips_per_shard: d.clips_per_shard,
    };
    let source = serde_json::json!({
        "generator": "bouncing", "seed": d.seed, "balls": [cfg.min_balls, cfg.max_balls], "frame_dt": cfg.frame_dt,
    });
    // Reused shards are reported in one go when the writer reaches them.
    let reported = AtomicUsize::new(0);
    write_dataset(
        dir,
        spec,
        source,
        |_, range| {
            let clips: Vec<(Vec<u8>, ClipLabels)> = range
                .into_par_iter()
                .map(|i| {
                    let clip = generate_clip(d.seed, i, &cfg)?;
                    reported.fetch_add(1, Ordering::Relaxed);
                    on_progress(1);
                    Ok(clip)
                })
                .collect::<Result<_>>()?;
            let mut content =
                ShardContent { bytes: Vec::with_capacity(clips.len() * spec.clip_bytes()), labels: vec![] };
            for (bytes, labels) in clips {
                content.bytes.extend_from_slice(&bytes);
                let value = serde_json::to_value(labels).map_err(|e| Error::invalid("labels", e.to_string()))?;
                content.labels.push(value);
            }
            Ok(content)
        },
        |done| {
            let before = reported.swap(done, Ordering::Relaxed);
            if done > before {
                on_progress(done - before);
            }
        },
    )
}
