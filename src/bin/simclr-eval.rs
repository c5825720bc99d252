//! `simclr-eval`: linear probes on a trained checkpoint.
//!
//!   simclr-eval --checkpoint PATH [--processed_dir DIR] [--out FILE.json]
//!               [--export-embeddings FILE.npy] [--seed N] [--max_clips N] [--batch_size N]
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
use simclr::eval::{evaluate, EvalOptions};
use simclr::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "simclr-eval", about = "Linear and regression probes on a trained SimCLR checkpoint")]
struct Cli {
    /// A model file written by simclr-train (final_model.safetensors or checkpoint_epoch_N.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A processed dataset (simclr-data); default: a bouncing-ball set generated into the cache directory.
    #[arg(long = "processed_dir", alias = "processed-dir")]
    processed_dir: Option<PathBuf>,
    /// Where to write the report as JSON [default: eval.json next to the checkpoint].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the trained encoder's features to FILE.npy ([N, D] float32) and the clip ids to FILE.ids.npy.
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
    let (mut model, spec, epoch) = load_model(&cli.checkpoint)?;
    let run = training_run(&cli.checkpoint);
    let seed = cli.seed.or(run.seed).unwrap_or(0);
    let ds = dataset(&cli, &spec, &run)?;
    let opts =
        EvalOptions { seed, max_clips: cli.max_clips, batch_size: cli.batch_size, verbose: true, ..Default::default() };
    let mut evaluation = evaluate(&mut model, &spec, epoch, &ds, &opts)?;
    evaluation.report.checkpoint = Some(cli.checkpoint.display().to_string());
    let report = &evaluation.report;

    println!(
        "{} ({}, epoch {}) on {}: {} clips ({} train / {} test), frames {:?}, seed {}",
        cli.checkpoint.display(),
        spec.base_model,
        epoch,
        report.dataset,
        report.clips,
        report.train_clips,
        report.test_clips,
        report.frames,
        seed
    );
    print!("{}", report.table());

    let out = cli.out.clone().unwrap_or_else(|| cli.checkpoint.with_file_name("eval.json"));
    let text = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| Error::invalid("eval.json", format!("the report does not serialise: {e}")))?;
    write_atomic(&out, (text + "\n").as_bytes())?;
    println!("report written to {}", out.display());

    if let Some(path) = &cli.export_embeddings {
        let f = &evaluation.features;
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
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
