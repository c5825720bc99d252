//! `evaluate`: features of a trained model, a random-initialised one and raw
//! pixels on one dataset, the same probes on each, and the report.

use super::features::{check_compatible, encode_dataset_with_progress, pixel_features, Features, PIXEL_SIZE};
use super::probes::{classification_probe, majority_class, regression_probe, stratified_split, Matrix, Split};
use super::report::{EvalReport, Metric, ProbeReport, Score};
use super::targets::{probe_targets, Target};
use crate::checkpoint::ModelSpec;
use crate::data::loader::evenly_spaced_frames;
use crate::data::shards::ShardDataset;
use crate::error::{Error, Result};
use crate::nn::simclr::{Encoder, SimClr};
use crate::rng::Rng;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

/// RNG stream of the model's initial weights, the same as the trainer's
/// (`train.rs`): `spec.build(&mut Rng::fork(seed, MODEL_INIT_STREAM))` is the
/// exact model a run with that seed started from.
pub use crate::train::MODEL_INIT_STREAM;
/// RNG stream of the train/test split.
const SPLIT_STREAM: u64 = 0x5917;
/// Fewer clips than this cannot give a meaningful held-out score.
pub const MIN_EVAL_CLIPS: usize = 20;

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Seed of the random-init encoder (use the training seed) and of the split.
    pub seed: u64,
    /// Evaluate only the first this many clips.
    pub max_clips: Option<usize>,
    /// Clips per encoder forward pass.
    pub batch_size: usize,
    /// Fraction of the clips held out for testing (stratified by count).
    pub test_fraction: f64,
    /// Progress bars and stage timings on stderr.
    pub verbose: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { seed: 0, max_clips: None, batch_size: 32, test_fraction: 0.3, verbose: false }
    }
}

pub struct Evaluation {
    pub report: EvalReport,
    /// The trained encoder's features of every evaluated clip (for `--export-embeddings`).
    pub features: Features,
}

fn to_matrix(f: &Features) -> Matrix {
    Matrix::new(f.ids.len(), f.dim, f.data.iter().map(|&v| v as f64).collect())
}

fn encode(
    encoder: &mut Encoder,
    what: &str,
    ds: &ShardDataset,
    ids: &[usize],
    spec: &ModelSpec,
    opts: &EvalOptions,
) -> Result<Features> {
    let bar = if opts.verbose { ProgressBar::new(ids.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:<28} {bar:30} {pos}/{len} clips  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("encoding ({what})"));
    let features = encode_dataset_with_progress(encoder, ds, ids, spec, opts.batch_size, &mut |n| bar.inc(n as u64));
    bar.finish_and_clear();
    features
}

/// One probe run on one feature set: train rows and test rows of `x`.
fn probe_score(x: &Matrix, target: &Target, split: &Split, classes: usize, seed: u64) -> Score {
    let (train_x, test_x) = (x.select_rows(&split.train), x.select_rows(&split.test));
    match target {
        Target::Classes { labels, .. } => {
            let label = |rows: &[usize]| rows.iter().map(|&i| labels[i].unwrap_or(0)).collect::<Vec<_>>();
            let s = classification_probe(&train_x, &label(&split.train), &test_x, &label(&split.test), classes, seed);
            Score { test: s.test_accuracy, train: s.train_accuracy, per_target: vec![], lambda: vec![s.lambda] }
        }
        Target::Values { values, .. } => {
            let rows = |idx: &[usize]| {
                Matrix::from_rows(&idx.iter().map(|&i| values[i].clone().unwrap_or_default()).collect::<Vec<_>>())
            };
            let s = regression_probe(&train_x, &rows(&split.train), &test_x, &rows(&split.test), seed);
            let train = super::probes::finite_mean(&s.train_r2);
            Score { test: s.mean_test_r2(), train, per_target: s.test_r2, lambda: s.lambdas }
        }
    }
}

/// Evaluates `model` (trained for `epoch` epochs, described by `spec`) on
/// `ds`: features of the trained encoder, of the encoder as initialised by
/// the trainer with `opts.seed`, and of raw pixels; each probe the labels
/// support is fitted on a stratified train split and scored on the rest.
/// Leaves the model's encoder in evaluation mode.
pub fn evaluate(
    model: &mut SimClr,
    spec: &ModelSpec,
    epoch: usize,
    ds: &ShardDataset,
    opts: &EvalOptions,
) -> Result<Evaluation> {
    let start = Instant::now();
    check_compatible(ds, spec)?;
    if !(opts.test_fraction > 0.0 && opts.test_fraction < 1.0) {
        return Err(Error::invalid("evaluate", format!("test_fraction must be in (0, 1), got {}", opts.test_fraction)));
    }
    let clips = opts.max_clips.map_or(ds.len(), |m| m.min(ds.len()));
    if clips < MIN_EVAL_CLIPS {
        return Err(Error::invalid(
            "--processed_dir",
            format!(
                "{} clips to evaluate ({} holds {}); the probes need at least {MIN_EVAL_CLIPS} — use a larger dataset or raise --max_clips",
                clips,
                ds.dir().display(),
                ds.len()
            ),
        ));
    }
    let ids: Vec<usize> = (0..clips).collect();
    let targets = probe_targets(ds, &ids, spec.num_frames)?;

    // One split for every probe, stratified by the count label where there is one.
    let strata: Vec<usize> = match targets.first().map(|t| &t.target) {
        Some(Ok(Target::Classes { labels, .. })) => labels.iter().map(|l| l.unwrap_or(usize::MAX)).collect(),
        _ => vec![0; clips],
    };
    let split = stratified_split(&strata, opts.test_fraction, &mut Rng::fork(opts.seed, SPLIT_STREAM));

    let stage = |what: &str, t: Instant| {
        if opts.verbose {
            eprintln!("{what} in {:.1} s", t.elapsed().as_secs_f64());
        }
    };
    let t = Instant::now();
    let pixels = pixel_features(ds, &ids, spec.num_frames)?;
    stage("pixel features", t);
    let t = Instant::now();
    let mut random_init = spec.build(&mut Rng::fork(opts.seed, MODEL_INIT_STREAM))?;
    let random_features = encode(&mut random_init.encoder, "random-init encoder", ds, &ids, spec, opts)?;
    stage("random-init encoder features", t);
    let t = Instant::now();
    let trained = encode(&mut model.encoder, "trained encoder", ds, &ids, spec, opts)?;
    stage("trained encoder features", t);

    let t = Instant::now();
    let sets = [to_matrix(&pixels), to_matrix(&random_features), to_matrix(&trained)];
    let mut probes = Vec::with_capacity(targets.len());
    for (k, probe) in targets.iter().enumerate() {
        let metric = match &probe.target {
            Ok(Target::Classes { .. }) => Metric::Accuracy,
            Ok(Target::Values { .. }) => Metric::R2,
            Err(_) => {
                if probe.name == "positions" || probe.name == "velocity" {
                    Metric::R2
                } else {
                    Metric::Accuracy
                }
            }
        };
        let target = match &probe.target {
            Ok(t) => t,
            Err(reason) => {
                probes.push(ProbeReport::not_available(&probe.name, metric, reason.clone()));
                continue;
            }
        };
        // Only the clips that have this probe's target.
        let has = |i: &usize| match target {
            Target::Classes { labels, .. } => labels[*i].is_some(),
            Target::Values { values, .. } => values[*i].is_some(),
        };
        let sub = Split {
            train: split.train.iter().copied().filter(has).collect(),
            test: split.test.iter().copied().filter(has).collect(),
        };
        let (names, chance) = match target {
            Target::Classes { class_names, labels } => {
                let train_labels: Vec<usize> = sub.train.iter().filter_map(|&i| labels[i]).collect();
                let majority = majority_class(&train_labels);
                let hits = sub.test.iter().filter(|&&i| labels[i] == Some(majority)).count();
                let distinct = train_labels.iter().collect::<std::collections::BTreeSet<_>>().len();
                if distinct < 2 {
                    let reason = format!("every labelled train clip is in one class ({})", class_names[majority]);
                    probes.push(ProbeReport::not_available(&probe.name, metric, reason));
                    continue;
                }
                (class_names.clone(), Some(hits as f64 / sub.test.len().max(1) as f64))
            }
            Target::Values { names, .. } => (names.clone(), Some(0.0)),
        };
        if sub.train.len() < 4 || sub.test.is_empty() {
            let reason = format!("only {} train and {} test clips have this target", sub.train.len(), sub.test.len());
            probes.push(ProbeReport::not_available(&probe.name, metric, reason));
            continue;
        }
        let seed = opts.seed ^ ((k as u64) << 32);
        let [p, r, tr] = [0, 1, 2].map(|s| probe_score(&sets[s], target, &sub, names.len(), seed));
        probes.push(ProbeReport {
            name: probe.name.clone(),
            metric,
            targets: names,
            train_clips: sub.train.len(),
            test_clips: sub.test.len(),
            chance,
            pixels: Some(p),
            random_init: Some(r),
            trained: Some(tr),
            missing: None,
        });
    }
    stage("probes", t);

    let report = EvalReport {
        checkpoint: None,
        model: spec.clone(),
        epoch,
        dataset: ds.dir().display().to_string(),
        clips,
        train_clips: split.train.len(),
        test_clips: split.test.len(),
        frames: evenly_spaced_frames(ds.manifest().frames, spec.num_frames),
        seed: opts.seed,
        encoder_dim: trained.dim,
        pixel_dim: pixels.dim,
        pixel_features: format!(
            "each of the {} frames the model sees, resized to {PIXEL_SIZE}x{PIXEL_SIZE} RGB in [0, 1] (antialiased), concatenated",
            spec.num_frames
        ),
        probes,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(Evaluation { report, features: trained })
}
