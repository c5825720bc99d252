//! `simclr-train`: SimCLR training on preprocessed video shards.
//!
//! ```text
//! simclr-train                                   # the quick CPU demo (see demo.rs)
//! simclr-train --processed_dir data/bouncing --epochs 100 --batch_size 256 --lr 3e-4 --base_model resnet18
//! simclr-train --config run.toml --seed 3        # a TOML file of the same keys; flags win
//! simclr-train --resume runs/checkpoint_epoch_50.safetensors   # continues exactly where it stopped
//! simclr-train --resume auto --out runs ...      # the newest checkpoint in runs/, or a fresh start
//! simclr-train --device cuda ...                 # on GPU 0 (a build with --features cuda)
//! ```
//!
//! Settings are resolved as: defaults (the PyTorch baseline's) → the resumed
//! checkpoint's saved config → `--config` file → flags.
//!
//! SIGTERM, SIGINT and SIGUSR1 end training after the current step with a checkpoint, and the
//! process exits with status 75 (`simclr::signals::EXIT_STOPPED`): rerun the same command with
//! `--resume auto` to continue.

mod demo;

use clap::Parser;
use simclr::config::{resolve, TrainConfig};
use simclr::dist::{connect_rank, Communicator, DistBackend, DistEnv};
use simclr::train::{train, TrainOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "simclr-train",
    about = "SimCLR training (no arguments: a quick CPU demo)",
    args_override_self = true,
    allow_negative_numbers = true
)]
struct Cli {
    /// Preprocessed shards (made by `simclr-data bouncing` or `simclr-data clevrer`).
    #[arg(long = "processed_dir")]
    processed_dir: Option<PathBuf>,
    /// Number of epochs [default: 100].
    #[arg(long)]
    epochs: Option<usize>,
    /// Clips per step, global across GPUs [default: 256].
    #[arg(long = "batch_size")]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 3e-4].
    #[arg(long)]
    lr: Option<f64>,
    /// resnet18 | resnet34 | resnet50 | vivit_tiny | vivit_small | vivit_base [default: resnet18].
    #[arg(long = "base_model")]
    base_model: Option<String>,
    /// Continue from a checkpoint (OUT/checkpoint_epoch_N.safetensors; its saved settings are the
    /// base), or `auto` (`last`): the newest complete checkpoint in --out, else a fresh start.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// TOML file with any of the settings (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NT-Xent temperature [default: 0.5].
    #[arg(long)]
    temperature: Option<f64>,
    /// Frames per clip, evenly spaced over the stored clip [default: 20].
    #[arg(long = "num_frames")]
    num_frames: Option<usize>,
    /// Side of the augmented views in pixels [default: 128].
    #[arg(long = "image_size")]
    image_size: Option<usize>,
    /// Output dimension of the projection head [default: 128].
    #[arg(long = "projection_dim")]
    projection_dim: Option<usize>,
    /// ResNet width multiplier (1.0 = torchvision) [default: 1.0].
    #[arg(long)]
    width: Option<f64>,
    /// ResNet stem for small frames: 3×3 stride-1 conv, no max-pool (`--small_stem false` turns it off).
    #[arg(long = "small_stem", num_args = 0..=1, default_missing_value = "true")]
    small_stem: Option<bool>,
    /// How a ResNet's frame features become the clip's: mean (the baseline's) | transformer
    /// (order-aware: learned frame positions and attention over frames, then the mean) | motion
    /// (the same attention over each frame's change from the clip's mean, added to it) [default: mean].
    #[arg(long)]
    temporal: Option<String>,
    /// adam | adamw | sgd | lars [default: adam].
    #[arg(long)]
    optimizer: Option<String>,
    #[arg(long = "weight_decay")]
    weight_decay: Option<f64>,
    #[arg(long)]
    momentum: Option<f64>,
    /// Fraction of training spent warming the learning rate up [default: 0.1].
    #[arg(long = "warmup_fraction")]
    warmup_fraction: Option<f64>,
    /// Clip the global gradient norm to this value.
    #[arg(long = "grad_clip")]
    grad_clip: Option<f64>,
    /// Checkpoint every N epochs (and at the end) [default: 10].
    #[arg(long = "checkpoint_every")]
    checkpoint_every: Option<usize>,
    /// Also checkpoint every N steps, mid-epoch (a preempted job loses at most N steps).
    #[arg(long = "checkpoint_every_steps")]
    checkpoint_every_steps: Option<usize>,
    /// Also checkpoint whenever M minutes have passed since the last checkpoint.
    #[arg(long = "checkpoint_every_minutes")]
    checkpoint_every_minutes: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory [default: runs].
    #[arg(long)]
    out: Option<PathBuf>,
    /// auto | cpu | cuda [default: auto: the GPU(s) when there are any, else the CPU].
    #[arg(long)]
    device: Option<String>,
    /// auto | bf16 | f32 [default: auto: bf16 on the GPU, f32 on the CPU]. bf16 is autocast:
    /// on the GPU tensor-core matmul/conv/attention, on the CPU matmul/conv GEMMs with AVX512-BF16; f32 weights.
    #[arg(long)]
    precision: Option<String>,
    /// On the GPU: true = the same bits every run (fixed-order sums instead of float atomics in
    /// the conv weight gradient and attention dQ) | false [default: true].
    #[arg(long, value_name = "true|false")]
    deterministic: Option<bool>,
    /// Data-loading threads [default: 2].
    #[arg(long)]
    workers: Option<usize>,
    /// Data-parallel training: one process per GPU, started here (or by torchrun/srun, whose
    /// variables are recognised). --batch_size is global; the learning rate scales with the ranks.
    #[arg(long)]
    ddp: bool,
    /// With --ddp: use N GPUs (default: all); with --device cpu: N processes.
    #[arg(long = "num_gpus")]
    num_gpus: Option<usize>,
    /// Synchronise batch-norm statistics across GPUs.
    #[arg(long = "sync_bn")]
    sync_bn: bool,
    /// Compute threads (default: all cores, shared out among the ranks of this machine).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds a rank waits for the others in a collective before giving up [default: 300].
    #[arg(long = "dist_timeout")]
    dist_timeout: Option<f64>,
    /// Collectives between ranks: nccl (GPU ranks, device to device), tcp (anything, through
    /// host memory) or auto: NCCL where every rank trains on a GPU and libnccl is found [default: auto].
    #[arg(long = "dist_backend")]
    dist_backend: Option<String>,
    /// Hide the progress bar and per-epoch lines.
    #[arg(long)]
    quiet: bool,
}

impl Cli {
    /// The settings given on the command line, as a TOML table to merge.
    fn flags(&self) -> toml::Table {
        let mut t = toml::Table::new();
        let mut set = |k: &str, v: Option<toml::Value>| {
            if let Some(v) = v {
                t.insert(k.to_string(), v);
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| toml::Value::String(p.display().to_string()));
        let int = |v: Option<usize>| v.map(|v| toml::Value::Integer(v as i64));
        set("processed_dir", path(&self.processed_dir));
        set("epochs", int(self.epochs));
        set("batch_size", int(self.batch_size));
        set("lr", self.lr.map(toml::Value::Float));
        set("base_model", self.base_model.clone().map(toml::Value::String));
        set("temperature", self.temperature.map(toml::Value::Float));
        set("num_frames", int(self.num_frames));
        set("image_size", int(self.image_size));
        set("projection_dim", int(self.projection_dim));
        set("width", self.width.map(toml::Value::Float));
        set("small_stem", self.small_stem.map(toml::Value::Boolean));
        set("temporal", self.temporal.clone().map(toml::Value::String));
        set("optimizer", self.optimizer.clone().map(toml::Value::String));
        set("weight_decay", self.weight_decay.map(toml::Value::Float));
        set("momentum", self.momentum.map(toml::Value::Float));
        set("warmup_fraction", self.warmup_fraction.map(toml::Value::Float));
        set("grad_clip", self.grad_clip.map(toml::Value::Float));
        set("checkpoint_every", int(self.checkpoint_every));
        set("checkpoint_every_steps", int(self.checkpoint_every_steps));
        set("checkpoint_every_minutes", self.checkpoint_every_minutes.map(toml::Value::Float));
        set("seed", self.seed.map(|s| toml::Value::Integer(s as i64)));
        set("out", path(&self.out));
        set("device", self.device.clone().map(toml::Value::String));
        set("precision", self.precision.clone().map(toml::Value::String));
        set("deterministic", self.deterministic.map(toml::Value::Boolean));
        set("workers", int(self.workers));
        set("ddp", self.ddp.then_some(toml::Value::Boolean(true)));
        set("num_gpus", int(self.num_gpus));
        set("sync_bn", self.sync_bn.then_some(toml::Value::Boolean(true)));
        t
    }
}

fn run(cli: Cli) -> simclr::Result<()> {
    // A rank started by torchrun, srun or our own --ddp launch knows its place from the environment.
    let launched = DistEnv::from_env()?;
    let threads = match (cli.threads, &launched) {
        (Some(0), _) => return Err(simclr::Error::invalid("--threads", "must be at least 1")),
        (Some(n), _) => Some(n),
        // Ranks sharing a machine share its cores, instead of each taking all of them.
        (None, Some(_)) => local_world_size().map(|ranks| (available_cores() / ranks).max(1)),
        (None, None) => None,
    };
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().ok();
    }
    let timeout = match cli.dist_timeout {
        None => Duration::from_secs(300),
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(simclr::Error::invalid("--dist_timeout", format!("{s} is not a positive number of seconds")))
        }
    };
    // Stop signals end training after a step with a checkpoint. A rank of a launched job catches
    // every one (its launcher may forward a signal it also got itself); a lone process catches
    // only the first, so a second Ctrl-C ends it at once.
    simclr::signals::install(launched.is_none())?;
    // What --resume auto found, said by the process that trains (rank 0), not by a launcher.
    let mut found_message = None;
    let resume = match cli.resume.as_deref() {
        Some(p) if p == Path::new("auto") || p == Path::new("last") => {
            // The output directory the settings name without a checkpoint.
            let out = resolve(&TrainConfig::default(), cli.config.as_deref(), cli.flags())?.out;
            let found = simclr::checkpoint::latest_checkpoint(&out)?;
            found_message = Some(match &found {
                Some(path) => format!("--resume auto: {}", path.display()),
                None => format!("--resume auto: no checkpoint in {}, starting from scratch", out.display()),
            });
            found
        }
        other => other.map(Path::to_path_buf),
    };
    let base = match &resume {
        Some(path) => simclr::checkpoint::load_train_state(path)?.0.config,
        None => TrainConfig::default(),
    };
    let cfg = resolve(&base, cli.config.as_deref(), cli.flags())?;
    cfg.validate()?;
    let backend: DistBackend = cli.dist_backend.as_deref().unwrap_or("auto").parse()?;
    let comm: Option<Arc<dyn Communicator>> = match launched {
        Some(env) => {
            let (device, _) = simclr::train::training_device(&cfg)?;
            let (comm, which) = connect_rank(&env, backend, device, timeout)?;
            if comm.rank() == 0 && !cli.quiet {
                println!("{which}");
            }
            Some(comm)
        }
        None if cfg.ddp => {
            return match launch_ranks(&cfg)? {
                LaunchEnd::Finished => Ok(()),
                LaunchEnd::Stopped => {
                    println!("the ranks stopped on a signal after saving a checkpoint; rerun with --resume auto");
                    std::process::exit(simclr::signals::EXIT_STOPPED);
                }
            }
        }
        None if cfg.num_gpus.is_some() => {
            return Err(simclr::Error::invalid("--num_gpus", "only means something with --ddp"));
        }
        None if cli.dist_backend.is_some() => {
            return Err(simclr::Error::invalid("--dist_backend", "only means something with --ddp or a launcher"));
        }
        None => None,
    };
    let writer = comm.as_ref().is_none_or(|c| c.rank() == 0); // rank 0 speaks for the job
    if let (true, Some(message)) = (writer, found_message) {
        println!("{message}");
    }
    let outcome = train(&cfg, &TrainOptions { resume, verbose: !cli.quiet, comm })?;
    if let Some(signal) = &outcome.stopped_by {
        if writer {
            let kept = outcome.checkpoint.as_ref().map_or("no checkpoint".into(), |p| p.display().to_string());
            println!(
                "stopped by {signal} after step {} (epoch {}); checkpoint: {kept}. Rerun with --resume auto to continue.",
                outcome.global_step,
                outcome.epochs_done + 1
            );
        }
        std::process::exit(simclr::signals::EXIT_STOPPED);
    }
    if writer {
        println!(
            "trained {} epochs ({} steps, {:.1} clips/s); final model: {}",
            outcome.epochs_done,
            outcome.global_step,
            outcome.clips_per_s,
            outcome.final_model.display()
        );
    }
    Ok(())
}

use simclr::dist::launch::LaunchEnd;

/// `--ddp` with no launcher around us: start one rank per GPU (or per `--num_gpus` process on
/// the CPU) from this same command line, and wait for them.
fn launch_ranks(cfg: &TrainConfig) -> simclr::Result<LaunchEnd> {
    // --device auto: GPUs when this machine has any, else CPU processes.
    let device = match cfg.device.as_str() {
        "auto" if gpu_count().unwrap_or(0) > 0 => "cuda",
        "auto" => "cpu",
        other => other,
    };
    let ranks = match (cfg.num_gpus, device) {
        (Some(0), _) => return Err(simclr::Error::invalid("--num_gpus", "must be at least 1")),
        (Some(n), "cuda") => {
            let gpus = gpu_count()?;
            if n > gpus {
                return Err(simclr::Error::invalid(
                    "--num_gpus",
                    format!("{n} ranks asked for, but this machine has {gpus} CUDA device(s)"),
                ));
            }
            n
        }
        (Some(n), _) => n,
        // One rank per GPU of this machine.
        (None, "cuda") => match gpu_count()? {
            0 => {
                return Err(simclr::Error::invalid(
                    "--ddp",
                    "no CUDA device found on this machine; use --device cpu --num_gpus N for CPU processes",
                ))
            }
            n => n,
        },
        (None, _) => {
            return Err(simclr::Error::invalid(
                "--ddp",
                "on the CPU there are no GPUs to count: say how many processes to run with --num_gpus N",
            ))
        }
    };
    if cfg.batch_size % ranks != 0 {
        return Err(simclr::Error::invalid(
            "--batch_size",
            format!("the global batch of {} clips does not split evenly over {ranks} ranks", cfg.batch_size),
        ));
    }
    let program = std::env::current_exe()
        .map_err(|e| simclr::Error::dist("--ddp", format!("cannot find this program to start the ranks: {e}")))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    simclr::dist::launch::run_local_ranks(&program, &args, ranks)
}

/// The CUDA devices of this machine (1 on the kernel emulator, `SIMCLR_CUDA_EMULATOR=1`).
#[cfg(feature = "cuda")]
fn gpu_count() -> simclr::Result<usize> {
    simclr::backend::cuda::devices::device_count()
}

#[cfg(not(feature = "cuda"))]
fn gpu_count() -> simclr::Result<usize> {
    // Config validation refuses --device cuda in such a build before this is asked.
    Err(simclr::Error::invalid("--device", "this build has no CUDA backend (build with --features cuda)"))
}

/// Ranks on this machine, as the launcher says (torchrun, our --ddp launch, srun).
fn local_world_size() -> Option<usize> {
    ["LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn main() {
    simclr::backend::cpu::heap::keep_freed_memory();
    let result = if std::env::args().len() <= 1 { demo::run() } else { run(Cli::parse()) };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
