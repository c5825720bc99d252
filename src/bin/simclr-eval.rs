//! `simclr-eval`: the physics probe suite on one or more trained checkpoints.
//!
//!   simclr-eval --checkpoint PATH [--checkpoint PATH2 ...] [--processed_dir DIR] [--out FILE.json]
//!               [--future_frames K] [--splits N] [--export-embeddings FILE.npy] [--seed N]
//!               [--max_clips N] [--batch_size N]
//!
//! Several checkpoints are compared in one table (one column each, named by
//! their run directory), on the same clips and splits; they must see the same
//! number of frames. The future probe asks where the balls are at the clip's
//! last frame, which evenly spaced frames leave unseen (e.g. 4 of 12 frames:
//! 0, 3, 6, 9 seen, frame 11 predicted); `--future_frames K` asks K frames
//! after the last seen one, hiding the clip's last K frames where needed.
//!
//! Without `--processed_dir` it evaluates on a bouncing-ball set matching the
//! checkpoint (600 clips, seed 1000003; clip length and frame size of the
//! training set where the files beside the checkpoint name it, else 20
//! frames at the model's input size), generated into the cache directory
//! (`$SIMCLR_CACHE`, else `$XDG_CACHE_HOME/simclr`, else `~/.cache/simclr`)
//! the first time and reused afterwards.
//!
//! `--export-embeddings FILE.npy` writes the trained encoder's features as
//! float32 `[N, D]` to FILE.npy and the clip ids (row r is clip ids[r] of the
//! dataset) as int64 `[N]` to FILE.ids.npy; `np.load` reads both.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use simclr::atomic_file::write_atomic;
use simclr::checkpoint::{load_model, load_train_state, DatasetIdentity, ModelSpec};
use simclr::data::shards::{read_manifest, ShardDataset};
use simclr::eval::default_set::{default_eval_config, ensure_default_eval_set};
use simclr::eval::npy::{ids_path, write_npy_f32, write_npy_i64};
use simclr::eval::picture::write_eval_picture;
use simclr::eval::{evaluate, Candidate, EvalOptions};
use simclr::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "simclr-eval", about = "Linear and regression probes on a trained SimCLR checkpoint")]
struct Cli {
    /// A model file written by simclr-train (final_model.safetensors or checkpoint_epoch_N.safetensors);
    /// repeat to compare several in one table.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// A processed dataset (simclr-data); default: a bouncing-ball set generated into the cache directory.
    #[arg(long = "processed_dir", alias = "processed-dir")]
    processed_dir: Option<PathBuf>,
    /// Where to write the report as JSON [default: eval.json next to the (first) checkpoint]; its
    /// picture goes beside it with the extension .png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the (first) trained encoder's features to FILE.npy ([N, D] float32) and the clip ids to FILE.ids.npy.
    #[arg(long = "export-embeddings", alias = "export_embeddings", value_name = "FILE.npy")]
    export_embeddings: Option<PathBuf>,
    /// Seed of the random-init encoder and of the train/test split [default: the training seed, read
    /// from the checkpoint's state file or config.toml beside it, else 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate only the first N clips of the dataset.
    #[arg(long = "max_clips", alias = "max-clips")]
    max_clips: Option<usize>,
    /// Clips per encoder forward pass.
    #[arg(long = "batch_size", alias = "batch-size", default_value_t = 32)]
    batch_size: usize,
    /// The future probe asks where the balls are K frames after the last frame the encoders see
    /// (who then see the clip minus its last K frames where needed) [default: at the clip's last frame].
    #[arg(long = "future_frames", alias = "future-frames")]
    future_frames: Option<usize>,
    /// Random train/test splits each probe is scored on (the table shows mean ± sd).
    #[arg(long, default_value_t = 3)]
    splits: usize,
}

/// Table column names for the checkpoints: "trained" for one; for several, each file's run
/// directory (the file name where two share one, the whole path where that is not enough).
fn labels(checkpoints: &[PathBuf]) -> Vec<String> {
    if checkpoints.len() == 1 {
        return vec!["trained".into()];
    }
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = |p: &Path| p.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let run = |p: &PathBuf| p.parent().map(name).filter(|n| !n.is_empty()).unwrap_or_else(|| stem(p));
    let with_file = |p: &PathBuf| format!("{}/{}", run(p), stem(p));
    let whole = |p: &PathBuf| p.display().to_string();
    for candidate in [&run as &dyn Fn(&PathBuf) -> String, &with_file, &whole] {
        let names: Vec<String> = checkpoints.iter().map(candidate).collect();
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        if distinct.len() == names.len() {
            return names;
        }
    }
    (1..=checkpoints.len()).map(|i| format!("model {i}")).collect()
}

/// What files beside the checkpoint say about its training run: the seed and
/// the training set's geometry. A `checkpoint_epoch_N` has its training state
/// beside it; any checkpoint in a run directory has the run's `config.toml`.
#[derive(Default)]
struct TrainingRun {
    seed: Option<u64>,
    dataset: Option<DatasetIdentity>,
}

fn training_run(checkpoint: &Path) -> TrainingRun {
    if let Ok((state, _)) = load_train_state(checkpoint) {
        return TrainingRun { seed: Some(state.config.seed), dataset: Some(state.dataset) };
    }
    let Some(config) = checkpoint.parent().map(|d| d.join("config.toml")) else { return TrainingRun::default() };
    let Some(table) = std::fs::read_to_string(config).ok().and_then(|t| t.parse::<toml::Table>().ok()) else {
        return TrainingRun::default();
    };
    let seed = table.get("seed").and_then(|s| s.as_integer()).and_then(|s| u64::try_from(s).ok());
    let dataset = table
        .get("processed_dir")
        .and_then(|d| d.as_str())
        .and_then(|d| read_manifest(Path::new(d)).ok())
        .map(|m| DatasetIdentity { clips: m.clips, frames: m.frames, height: m.height, width: m.width });
    TrainingRun { seed, dataset }
}

/// The dataset to evaluate on: the one given, or the default set (generated if missing).
fn dataset(cli: &Cli, spec: &ModelSpec, run: &TrainingRun) -> Result<ShardDataset> {
    if let Some(dir) = &cli.processed_dir {
        return ShardDataset::open(dir);
    }
    let d = default_eval_config(spec, run.dataset.as_ref());
    let bar = ProgressBar::new(d.clips as u64);
    bar.set_style(
        ProgressStyle::with_template("evaluation set {bar:30} {pos}/{len} clips  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let dir = ensure_default_eval_set(spec, run.dataset.as_ref(), |n| bar.inc(n as u64));
    bar.finish_and_clear();
    ShardDataset::open(&dir?)
}

fn run(cli: Cli) -> Result<()> {
    if cli.batch_size == 0 {
        return Err(Error::invalid("--batch_size", "must be at least 1"));
    }
    if cli.max_clips == Some(0) {
        return Err(Error::invalid("--max_clips", "must be at least 1"));
    }
    if let Some(path) = &cli.export_embeddings {
        if path.extension().is_none_or(|e| e != "npy") {
            return Err(Error::invalid(
                "--export-embeddings",
                format!("{}: give a file name ending in .npy", path.display()),
            ));
        }
    }
    if cli.splits == 0 {
        return Err(Error::invalid("--splits", "must be at least 1"));
    }
    let mut loaded = Vec::with_capacity(cli.checkpoint.len());
    for path in &cli.checkpoint {
        loaded.push(load_model(path)?);
    }
    let first = &cli.checkpoint[0];
    let run = training_run(first);
    let seed = cli.seed.or(run.seed).unwrap_or(0);
    let ds = dataset(&cli, &loaded[0].1, &run)?;
    let opts = EvalOptions {
        seed,
        max_clips: cli.max_clips,
        batch_size: cli.batch_size,
        splits: cli.splits,
        future_frames: cli.future_frames,
        verbose: true,
        ..Default::default()
    };
    let mut candidates: Vec<Candidate> = loaded
        .iter_mut()
        .zip(labels(&cli.checkpoint))
        .zip(&cli.checkpoint)
        .map(|(((model, spec, epoch), label), path)| Candidate {
            label,
            model,
            spec: spec.clone(),
            epoch: *epoch,
            checkpoint: Some(path.display().to_string()),
        })
        .collect();
    let evaluation = evaluate(&mut candidates, &ds, &opts)?;
    let report = &evaluation.report;

    for m in &report.models {
        println!(
            "{}: {} ({}, temporal {}, epoch {})",
            m.label,
            m.checkpoint.as_deref().unwrap_or("-"),
            m.model.base_model,
            m.model.temporal,
            m.epoch
        );
    }
    println!(
        "on {}: {} clips ({} train / {} test, {} splits), frames {:?}{}, seed {}",
        report.dataset,
        report.clips,
        report.train_clips,
        report.test_clips,
        report.splits,
        report.frames,
        report.future_frame.map(|f| format!(" (future: frame {f})")).unwrap_or_default(),
        seed
    );
    print!("{}", report.table());

    let out = cli.out.clone().unwrap_or_else(|| first.with_file_name("eval.json"));
    let text = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| Error::invalid("eval.json", format!("the report does not serialise: {e}")))?;
    write_atomic(&out, (text + "\n").as_bytes())?;
    let picture = out.with_extension("png");
    write_eval_picture(&picture, &evaluation)?;
    println!("report written to {} (picture: {})", out.display(), picture.display());

    if let Some(path) = &cli.export_embeddings {
        let f = &evaluation.features[0];
        write_npy_f32(path, &[f.ids.len(), f.dim], &f.data)?;
        let ids: Vec<i64> = f.ids.iter().map(|&i| i as i64).collect();
        let ids_file = ids_path(path);
        write_npy_i64(&ids_file, &[ids.len()], &ids)?;
        println!(
            "embeddings [{}, {}] written to {} (clip ids: {})",
            f.ids.len(),
            f.dim,
            path.display(),
            ids_file.display()
        );
    }
    Ok(())
}

fn main() {
    simclr::backend::cpu::heap::keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
