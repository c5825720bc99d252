//! `evaluate`: features of one or more trained models, a random-initialised
//! encoder and raw pixels on one dataset, the same probes on each over several
//! random train/test splits, and the report.

use super::features::{check_compatible, encode_dataset_with_progress, pixel_features, Features, PIXEL_SIZE};
use super::probes::{
    classification_probe, finite_mean, majority_class, regression_probe, stratified_split, Matrix, Split,
};
use super::report::{EvalReport, EvaluatedModel, Metric, ProbeReport, Score};
use super::targets::{probe_targets, Target, Window};
use crate::checkpoint::ModelSpec;
use crate::data::shards::ShardDataset;
use crate::error::{Error, Result};
use crate::nn::simclr::{Encoder, SimClr};
use crate::rng::Rng;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::time::Instant;

/// RNG stream of the model's initial weights, the same as the trainer's
/// (`train.rs`): `spec.build(&mut Rng::fork(seed, MODEL_INIT_STREAM))` is the
/// exact model a run with that seed started from.
pub use crate::train::MODEL_INIT_STREAM;
/// RNG stream of the first train/test split; split k uses stream + k.
const SPLIT_STREAM: u64 = 0x5917;
/// Fewer clips than this cannot give a meaningful held-out score.
pub const MIN_EVAL_CLIPS: usize = 20;

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Seed of the random-init encoder (use the training seed) and of the splits.
    pub seed: u64,
    /// Evaluate only the first this many clips.
    pub max_clips: Option<usize>,
    /// Clips per encoder forward pass.
    pub batch_size: usize,
    /// Fraction of the clips held out for testing (stratified by count).
    pub test_fraction: f64,
    /// Random train/test splits every probe is scored on (mean ± sd).
    pub splits: usize,
    /// How far after the last seen frame the future probe looks. None: at the clip's last
    /// frame (evenly spaced frames leave a few unseen at the end; no future probe where the
    /// last frame is seen). Further than that, the encoders see the clip minus its last this
    /// many frames (`targets::Window`).
    pub future_frames: Option<usize>,
    /// Progress bars and stage timings on stderr.
    pub verbose: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            seed: 0,
            max_clips: None,
            batch_size: 32,
            test_fraction: 0.3,
            splits: 3,
            future_frames: None,
            verbose: false,
        }
    }
}

/// A model to evaluate, and how the report names it.
pub struct Candidate<'a> {
    pub label: String,
    pub model: &'a mut SimClr,
    pub spec: ModelSpec,
    pub epoch: usize,
    pub checkpoint: Option<String>,
}

pub struct Evaluation {
    pub report: EvalReport,
    /// Each model's features of every evaluated clip, in `report.models` order (for
    /// `--export-embeddings` and the picture).
    pub features: Vec<Features>,
    /// The probes' targets, by probe name, for the evaluated clips (for the picture).
    pub targets: Vec<super::targets::ProbeTarget>,
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
    frames: &[usize],
    opts: &EvalOptions,
) -> Result<Features> {
    let bar = if opts.verbose { ProgressBar::new(ids.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:<28} {bar:30} {pos}/{len} clips  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("encoding ({what})"));
    let features =
        encode_dataset_with_progress(encoder, ds, ids, spec, frames, opts.batch_size, &mut |n| bar.inc(n as u64));
    bar.finish_and_clear();
    features
}

/// One probe fitted on one split's train rows of `x` and scored on its test rows.
struct ProbeRun {
    test: f64,
    train: f64,
    balanced_accuracy: Option<f64>,
    per_target: Vec<f64>,
    lambda: Vec<f64>,
}

fn probe_run(x: &Matrix, target: &Target, metric: Metric, split: &Split, classes: usize, seed: u64) -> ProbeRun {
    let (train_x, test_x) = (x.select_rows(&split.train), x.select_rows(&split.test));
    match target {
        Target::Classes { labels, .. } => {
            let label = |rows: &[usize]| rows.iter().map(|&i| labels[i].unwrap_or(0)).collect::<Vec<_>>();
            let s = classification_probe(&train_x, &label(&split.train), &test_x, &label(&split.test), classes, seed);
            let test = match metric {
                Metric::RocAuc => s.test_roc_auc.unwrap_or(f64::NAN),
                _ => s.test_accuracy,
            };
            ProbeRun {
                test,
                train: s.train_accuracy,
                balanced_accuracy: Some(s.test_balanced_accuracy),
                per_target: vec![],
                lambda: vec![s.lambda],
            }
        }
        Target::Values { values, .. } => {
            let rows = |idx: &[usize]| {
                Matrix::from_rows(&idx.iter().map(|&i| values[i].clone().unwrap_or_default()).collect::<Vec<_>>())
            };
            let s = regression_probe(&train_x, &rows(&split.train), &test_x, &rows(&split.test), seed);
            let train = finite_mean(&s.train_r2);
            ProbeRun {
                test: s.mean_test_r2(),
                train,
                balanced_accuracy: None,
                per_target: s.test_r2,
                lambda: s.lambdas,
            }
        }
    }
}

/// Mean and sample standard deviation (n − 1) of the finite values; sd 0 for one value.
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let mean = finite_mean(&finite);
    if finite.len() < 2 {
        return (mean, if finite.is_empty() { f64::NAN } else { 0.0 });
    }
    let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (finite.len() - 1) as f64;
    (mean, var.sqrt())
}

/// A feature set's score over the splits' runs.
fn aggregate(runs: &[ProbeRun]) -> Score {
    let per_split: Vec<f64> = runs.iter().map(|r| r.test).collect();
    let (test, test_sd) = mean_sd(&per_split);
    let balanced: Vec<f64> = runs.iter().filter_map(|r| r.balanced_accuracy).collect();
    let (balanced_accuracy, balanced_accuracy_sd) = match balanced.is_empty() {
        true => (None, None),
        false => {
            let (mean, sd) = mean_sd(&balanced);
            (Some(mean), Some(sd))
        }
    };
    let targets = runs.first().map_or(0, |r| r.per_target.len());
    let per_target =
        (0..targets).map(|t| finite_mean(&runs.iter().map(|r| r.per_target[t]).collect::<Vec<_>>())).collect();
    Score {
        test,
        test_sd,
        per_split,
        train: finite_mean(&runs.iter().map(|r| r.train).collect::<Vec<_>>()),
        balanced_accuracy,
        balanced_accuracy_sd,
        per_target,
        lambda: runs.first().map(|r| r.lambda.clone()).unwrap_or_default(),
    }
}

/// The part of `split` whose clips have `target`.
fn labelled_part(split: &Split, target: &Target) -> Split {
    let has = |i: &usize| match target {
        Target::Classes { labels, .. } => labels[*i].is_some(),
        Target::Values { values, .. } => values[*i].is_some(),
    };
    Split {
        train: split.train.iter().copied().filter(has).collect(),
        test: split.test.iter().copied().filter(has).collect(),
    }
}

/// Evaluates `candidates` on `ds`: features of each trained encoder, of the
/// encoder the trainer initialised with `opts.seed` (the first candidate's
/// spec) and of raw pixels; each probe the labels support is fitted on the
/// train part of `opts.splits` stratified random splits and scored on the
/// rest. Leaves the candidates' encoders in evaluation mode.
pub fn evaluate(candidates: &mut [Candidate], ds: &ShardDataset, opts: &EvalOptions) -> Result<Evaluation> {
    let start = Instant::now();
    let Some(first) = candidates.first() else {
        return Err(Error::invalid("evaluate", "no model to evaluate"));
    };
    let first_spec = first.spec.clone();
    for c in candidates.iter() {
        check_compatible(ds, &c.spec)?;
        if c.spec.num_frames != first_spec.num_frames {
            return Err(Error::invalid(
                "--checkpoint",
                format!(
                    "{} sees {} frames and {} sees {}: models compared in one table must see the same frames",
                    first.label, first_spec.num_frames, c.label, c.spec.num_frames
                ),
            ));
        }
    }
    if !(opts.test_fraction > 0.0 && opts.test_fraction < 1.0) {
        return Err(Error::invalid("evaluate", format!("test_fraction must be in (0, 1), got {}", opts.test_fraction)));
    }
    if opts.splits == 0 {
        return Err(Error::invalid("--splits", "must be at least 1"));
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
    let window = Window::new(ds.manifest().frames, first_spec.num_frames, opts.future_frames)?;
    let targets = probe_targets(ds, &ids, &window)?;

    // The same splits for every probe, stratified by the count label where there is one.
    let strata: Vec<usize> = match targets.first().map(|t| &t.target) {
        Some(Ok(Target::Classes { labels, .. })) => labels.iter().map(|l| l.unwrap_or(usize::MAX)).collect(),
        _ => vec![0; clips],
    };
    let splits: Vec<Split> = (0..opts.splits as u64)
        .map(|k| stratified_split(&strata, opts.test_fraction, &mut Rng::fork(opts.seed, SPLIT_STREAM + k)))
        .collect();

    let stage = |what: &str, t: Instant| {
        if opts.verbose {
            eprintln!("{what} in {:.1} s", t.elapsed().as_secs_f64());
        }
    };
    let t = Instant::now();
    let pixels = pixel_features(ds, &ids, &window.seen)?;
    stage("pixel features", t);
    let t = Instant::now();
    let mut random_init = first_spec.build(&mut Rng::fork(opts.seed, MODEL_INIT_STREAM))?;
    let random_features =
        encode(&mut random_init.encoder, "random-init encoder", ds, &ids, &first_spec, &window.seen, opts)?;
    stage("random-init encoder features", t);
    let mut trained = Vec::with_capacity(candidates.len());
    for c in candidates.iter_mut() {
        let t = Instant::now();
        trained.push(encode(&mut c.model.encoder, &c.label, ds, &ids, &c.spec, &window.seen, opts)?);
        stage(&format!("{} features", c.label), t);
    }

    let t = Instant::now();
    let mut sets = vec![to_matrix(&pixels), to_matrix(&random_features)];
    sets.extend(trained.iter().map(to_matrix));
    let mut probes = Vec::with_capacity(targets.len());
    'probes: for (k, probe) in targets.iter().enumerate() {
        let metric = probe.metric;
        let target = match &probe.target {
            Ok(t) => t,
            Err(reason) => {
                probes.push(ProbeReport::not_available(&probe.name, metric, reason.clone()));
                continue;
            }
        };
        let parts: Vec<Split> = splits.iter().map(|s| labelled_part(s, target)).collect();
        let mut chances = Vec::with_capacity(parts.len());
        for sub in &parts {
            if sub.train.len() < 4 || sub.test.is_empty() {
                let reason =
                    format!("only {} train and {} test clips have this target", sub.train.len(), sub.test.len());
                probes.push(ProbeReport::not_available(&probe.name, metric, reason));
                continue 'probes;
            }
            if let Target::Classes { class_names, labels } = target {
                let train_labels: Vec<usize> = sub.train.iter().filter_map(|&i| labels[i]).collect();
                let majority = majority_class(&train_labels);
                if train_labels.iter().all(|&l| l == majority) {
                    let reason = format!("every labelled train clip is in one class ({})", class_names[majority]);
                    probes.push(ProbeReport::not_available(&probe.name, metric, reason));
                    continue 'probes;
                }
                let hits = sub.test.iter().filter(|&&i| labels[i] == Some(majority)).count();
                chances.push(hits as f64 / sub.test.len() as f64);
            }
        }
        let (names, chance) = match (target, metric) {
            (Target::Classes { class_names, .. }, Metric::Accuracy) => (class_names.clone(), finite_mean(&chances)),
            (Target::Classes { class_names, .. }, _) => (class_names.clone(), 0.5),
            (Target::Values { names, .. }, _) => (names.clone(), 0.0),
        };
        // Feature sets in parallel (each probe's fits are sequential and mostly small).
        let mut scores: Vec<Score> = sets
            .par_iter()
            .map(|x| {
                let runs: Vec<ProbeRun> = parts
                    .iter()
                    .enumerate()
                    .map(|(s, sub)| {
                        let seed = opts.seed ^ ((k as u64) << 32) ^ ((s as u64) << 48);
                        probe_run(x, target, metric, sub, names.len(), seed)
                    })
                    .collect();
                aggregate(&runs)
            })
            .collect();
        let trained_scores = scores.split_off(2);
        let random = scores.pop();
        let pixel = scores.pop();
        probes.push(ProbeReport {
            name: probe.name.clone(),
            metric,
            targets: names,
            train_clips: parts[0].train.len(),
            test_clips: parts[0].test.len(),
            chance: Some(chance),
            pixels: pixel,
            random_init: random,
            trained: trained_scores,
            missing: None,
        });
    }
    stage("probes", t);

    let models = candidates
        .iter()
        .zip(&trained)
        .map(|(c, f)| EvaluatedModel {
            label: c.label.clone(),
            checkpoint: c.checkpoint.clone(),
            model: c.spec.clone(),
            epoch: c.epoch,
            encoder_dim: f.dim,
        })
        .collect();
    let report = EvalReport {
        models,
        dataset: ds.dir().display().to_string(),
        clips,
        train_clips: splits[0].train.len(),
        test_clips: splits[0].test.len(),
        splits: opts.splits,
        frames: window.seen.clone(),
        future_frame: window.future,
        seed: opts.seed,
        pixel_dim: pixels.dim,
        pixel_features: format!(
            "each of the {} frames the models see, resized to {PIXEL_SIZE}x{PIXEL_SIZE} RGB in [0, 1] (antialiased), concatenated",
            window.seen.len()
        ),
        probes,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(Evaluation { report, features: trained, targets })
}
