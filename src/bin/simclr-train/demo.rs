//! `simclr-train` with no arguments: the quick CPU demo, on video.
//!
//! 1. Generates a small bouncing-ball dataset into the cache directory
//!    (`$SIMCLR_CACHE`, else `~/.cache/simclr`; reused on the next run).
//! 2. Trains two encoders with SimCLR on the same clips, budget and seed —
//!    the same `train` as any real run, only with small settings — writing
//!    checkpoints, metrics and plots to `runs/demo-motion/` and
//!    `runs/demo-mean/`:
//!    - a narrow per-frame ResNet-18 with the order-aware `motion` pooling
//!      (`--temporal motion`: attention over how each frame differs from the
//!      clip's mean, and each feature's slope over the frames), and
//!    - the same ResNet with the baseline's temporal mean, which cannot tell a
//!      clip from the clip played backwards.
//! 3. Runs the physics probe suite (`simclr-eval`'s) on frozen features of
//!    both, next to chance, raw pixels and the untrained encoder, writes
//!    `runs/demo-motion/eval.json` and `eval.png`.
//!
//! The labels (ball counts, positions, physics) are never seen by training;
//! only the probes use them.

use simclr::checkpoint::load_model;
use simclr::config::{AugmentSettings, TrainConfig};
use simclr::data::shards::ShardDataset;
use simclr::data::synthetic::{default_clips_per_shard, write_bouncing, BouncingConfig, BouncingDataset};
use simclr::eval::cache::cache_dir;
use simclr::eval::evaluate::{evaluate, Candidate, EvalOptions};
use simclr::eval::picture::write_eval_picture;
use simclr::train::{train, TrainOptions};
use simclr::Result;
use std::path::PathBuf;
use std::time::Instant;

/// The demo's data: 2048 clips of 12 frames, 32×32 (0.6 s at 20 frames/s).
fn dataset() -> BouncingDataset {
    let clip = BouncingConfig { frames: 12, size: 32, ..Default::default() };
    BouncingDataset { clips: 2048, seed: 1, clips_per_shard: default_clips_per_shard(&clip), clip }
}

/// One of the demo's two training runs: a quarter-width ResNet-18 on 4 of the 12 frames
/// (0, 3, 6, 9: frames 10–11 stay unseen for the future probe), 32×32, 26 epochs. What
/// differs from the defaults of any run, and why (measured on 2 cores, 2026-12-07):
/// - 4 frames at 32×32 with the standard stem: motion needs frames; this trains at ~600
///   clips/s at batch 64 (95 before the CPU work of issue 17, then ~200, ~330, ~510, and
///   ~600 with the direct convolutions), so two encoders × 26 epochs, the probes and the
///   data fit in 5 minutes (231 s). Each step up in epochs, 5 → 8 → 14 → 20, raised
///   the trained scores. The small stem (no downsampling) ran at 10 clips/s; 48×48 would
///   cost 2.25× more;
/// - no horizontal flips: a flip reverses vx, so the loss would teach the encoder to ignore
///   which way the balls move;
/// - crops keep at least 60 % of the frame (SimCLR's ImageNet recipe goes down to 8 %): a
///   crop that cuts balls away teaches the encoder that the count is noise;
/// - temperature 0.2 and lr 3e-3 (Adam): a small model on little data learns faster with a
///   sharper softmax and a larger step (lr 1e-3 lost 6 points of count at batch 32);
/// - batch 64: at the same epochs, twice the steps of batch 128 for the same compute (the
///   step runs as many clips/s): the count rose from 75.0 / 72.6 % (mean / transformer,
///   seed 0, 20 epochs) to 79.7 / 78.8 %. Batch 32 helped the mean once more (83.0 %) but
///   not the transformer (73.9 %);
/// - `motion` pooling as the order-aware encoder: `transformer` read no motion at all (speed
///   and velocity R² 0.00); attention over each frame's change from the clip mean reads the
///   speed (0.41), the slope over the frames the velocity (0.64), and the two together
///   everything that moves (speed 0.43, velocity 0.66, centroid 0.90, future 0.87), at
///   ~520 clips/s against the mean's ~600.
///
/// Tried and not kept (docs/SIMCLR.md, section 14): stronger colour augmentation, temporal
/// jitter between the views, reversed twins (no gain at equal compute), more epochs than
/// the budget allows, batch 32, lr 1e-3.
fn config(data: PathBuf, temporal: &str) -> TrainConfig {
    TrainConfig {
        processed_dir: data,
        epochs: 26,
        batch_size: 64,
        lr: 3e-3,
        temperature: 0.2,
        num_frames: 4,
        image_size: 32,
        width: 0.25,
        temporal: temporal.into(),
        checkpoint_every: 26,
        out: PathBuf::from(format!("runs/demo-{temporal}")),
        // The CPU demo, with the numbers the README quotes, even in a CUDA build on a GPU machine.
        device: "cpu".into(),
        augment: AugmentSettings { crop_scale_min: 0.6, hue: 0.05, flip_p: 0.0, ..AugmentSettings::default() },
        ..TrainConfig::default()
    }
}

pub fn run() -> Result<()> {
    let start = Instant::now();
    let d = dataset();
    let data =
        cache_dir().join(format!("demo-bouncing-seed{}-{}clips-{}x{}px", d.seed, d.clips, d.clip.frames, d.clip.size));
    println!("simclr demo: SimCLR on bouncing-ball videos, CPU, {} threads", rayon::current_num_threads());
    let have = ShardDataset::open(&data).is_ok_and(|ds| ds.len() == d.clips);
    if !have {
        println!("generating {} clips into {} (reused next time)", d.clips, data.display());
        write_bouncing(&data, &d, |_| {})?;
    }
    let mut runs = Vec::new();
    for temporal in ["motion", "mean"] {
        let cfg = config(data.clone(), temporal);
        println!(
            "\ntraining {} (width {}, temporal {temporal}) on {} clips: {} epochs, batch {}, {} of {} frames at {}×{}, NT-Xent τ = {}",
            cfg.base_model,
            cfg.width,
            d.clips,
            cfg.epochs,
            cfg.batch_size,
            cfg.num_frames,
            d.clip.frames,
            cfg.image_size,
            cfg.image_size,
            cfg.temperature
        );
        let outcome = train(&cfg, &TrainOptions { resume: None, verbose: true, comm: None })?;
        runs.push((temporal, cfg, outcome.final_model));
    }

    println!("\nprobing frozen features (linear probes, 30 % of the clips held out, 3 random splits)");
    let mut loaded: Vec<_> = runs.iter().map(|(_, _, path)| load_model(path)).collect::<Result<_>>()?;
    let mut candidates: Vec<Candidate> = loaded
        .iter_mut()
        .zip(&runs)
        .map(|((model, spec, epoch), (temporal, _, path))| Candidate {
            label: format!("trained ({temporal})"),
            model,
            spec: spec.clone(),
            epoch: *epoch,
            checkpoint: Some(path.display().to_string()),
        })
        .collect();
    let ds = ShardDataset::open(&data)?;
    let seed = runs[0].1.seed;
    let evaluation = evaluate(&mut candidates, &ds, &EvalOptions { seed, ..EvalOptions::default() })?;
    println!("{}", evaluation.report.table());
    let out = &runs[0].1.out;
    let json = serde_json::to_string_pretty(&evaluation.report.to_json()).expect("a report serialises");
    simclr::atomic_file::write_atomic(&out.join("eval.json"), json.as_bytes())?;
    write_eval_picture(&out.join("eval.png"), &evaluation)?;
    println!(
        "done in {:.0} s; checkpoints, metrics.jsonl and plots in runs/demo-motion and runs/demo-mean, \
         the probes in {} and {}",
        start.elapsed().as_secs_f64(),
        out.join("eval.json").display(),
        out.join("eval.png").display()
    );
    Ok(())
}
