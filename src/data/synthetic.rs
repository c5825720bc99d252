//! The bouncing-ball dataset: simulate, render, label.
//!
//! Clip `i` of a dataset with seed `s` depends only on (s, i) — its RNG is
//! `Rng::fork(s, i)` — so clips are generated in parallel, any subset can be
//! regenerated, and the same seed always gives the same bytes.

use super::bouncing::{random_world, Event};
use super::render::{render_frame, Background, Disc, PALETTE};
use crate::rng::Rng;
use serde::Serialize;

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

/// Simulates and renders clip `index`: T×size×size×3 bytes plus its labels.
pub fn generate_clip(seed: u64, index: usize, cfg: &BouncingConfig) -> (Vec<u8>, ClipLabels) {
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
    (bytes, labels)
}
