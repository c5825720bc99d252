//! The training loop behind `simclr-train`.
//!
//! One step, following a batch from shard to update:
//! 1. `data::loader` picks this step's clips (a seeded permutation per epoch),
//!    reads them from the memory-mapped shards and augments each clip twice
//!    (one random crop/flip/colour draw per view, applied to every frame):
//!    two tensors `[B, T, 3, S, S]`;
//! 2. `SimClr::loss` runs both views through the encoder as one batch of 2B
//!    clips (ResNet per frame + mean over time, or ViViT), the projection head,
//!    and NT-Xent, which asks each clip's view to find its partner among 2B − 1;
//! 3. `backward` walks the tape; the gradient norm is checked (and clipped on
//!    request); the optimiser steps with the learning rate of the warm-up +
//!    cosine schedule at this step.
//!
//! Around it: metrics per step in `OUT/metrics.jsonl`, plots per epoch,
//! checkpoints every `checkpoint_every` epochs (and, on request, every N steps or M minutes in
//! the middle of an epoch), and an exact resume. A stop signal (`crate::signals`: SIGTERM,
//! SIGINT, SIGUSR1) ends the run after the current step with a checkpoint: every rank agrees to
//! stop at the same step, rank 0 writes, and the outcome says which signal it was.
//!
//! Data parallel (a communicator of W ranks in `TrainOptions`): every rank
//! starts from rank 0's weights (`dist::broadcast_from_rank0`), the global
//! batch is split over ranks by the sampler, the loss is NT-Xent over the
//! whole global batch (`dist::global_nt_xent`), gradients are averaged in
//! buckets while backward runs (each bucket all-reduced on the rank's
//! communication thread, `dist::CommWorker`, as soon as its gradients are
//! final), the learning rate is scaled by W (the baseline's
//! linear rule), batch norm is per rank unless `sync_bn`, and only rank 0
//! writes files. The CPU tests run this with in-process thread ranks.
//!
//! On a GPU (`--device cuda`, the GPU of this rank's local rank): the model is built on the
//! host and moved there in place, the optimiser's state is made there, the forward runs under
//! bf16 autocast unless `--precision f32`, each step uploads its two augmented views once and
//! reads back the loss and the gradient norm (one value each);
//! checkpoints download the weights and state, and a resume uploads them again. The metrics
//! add the peak GPU memory; running out of it ends the run with the allocator's error, which
//! says to reduce --batch_size.

use crate::backend::Device;
use crate::checkpoint::{
    final_model_path, load_train_state, load_weights_into, save_checkpoint, save_model, DatasetIdentity, ModelSpec,
    TrainState,
};
use crate::config::TrainConfig;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::shards::ShardDataset;
use crate::dist::{
    broadcast_from_rank0, convert_sync_batch_norm, global_nt_xent, CommWorker, Communicator, GradientBuckets,
    SingleProcess,
};
use crate::error::{Error, Result};
use crate::metrics::MetricsLog;
use crate::nn::{move_to_device, parameter_count, parameters, Module};
use crate::ops::autocast::autocast;
use crate::optim::{clip_grad_norm, grad_norm, warmup_cosine, AdamW, Lars, Optimizer, Sgd};
use crate::rng::Rng;
use crate::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// RNG stream of the model's initial weights (the loader uses its own
/// streams); `eval` rebuilds the same initial model as its random-init baseline.
pub const MODEL_INIT_STREAM: u64 = 0x1417;
/// LARS trust coefficient (SimCLR's value).
const LARS_ETA: f64 = 1e-3;

pub struct TrainOptions {
    /// A `checkpoint_epoch_N.safetensors` to continue from.
    pub resume: Option<PathBuf>,
    /// Draw a progress bar (on a terminal) and print one line per epoch.
    pub verbose: bool,
    /// This process's data-parallel group (`None`: one process).
    pub comm: Option<Arc<dyn Communicator>>,
}

/// Gradient bucket size for the all-reduce (PyTorch DDP's default).
const BUCKET_MB: f64 = 25.0;

#[derive(Debug)]
pub struct TrainOutcome {
    pub final_model: PathBuf,
    pub epochs_done: usize,
    pub global_step: u64,
    /// Mean loss of the last epoch trained in this run (NaN if none ran).
    pub last_epoch_loss: f64,
    /// Stopped early by a signal (its name), after writing `checkpoint`; no final model then.
    pub stopped_by: Option<String>,
    /// The last checkpoint written or resumed from.
    pub checkpoint: Option<PathBuf>,
    /// Training throughput of this run (clips per second, data loading included).
    pub clips_per_s: f64,
}

pub fn build_optimizer(cfg: &TrainConfig, params: Vec<Tensor>) -> Result<Box<dyn Optimizer>> {
    let (lr, wd) = (cfg.lr, cfg.weight_decay);
    Ok(match cfg.optimizer.as_str() {
        "adam" => Box::new(AdamW::new(params, lr, wd, false)?),
        "adamw" => Box::new(AdamW::new(params, lr, wd, true)?),
        "sgd" => Box::new(Sgd::new(params, lr, cfg.momentum, wd)?),
        "lars" => Box::new(Lars::new(params, lr, cfg.momentum, wd, LARS_ETA)?),
        other => return Err(Error::invalid("--optimizer", format!("unknown optimizer `{other}`"))),
    })
}

/// Training stopped on a NaN/inf: say where, what was kept, and what to try.
fn non_finite(what: &str, value: f64, epoch: usize, step: u64, last_checkpoint: &Option<PathBuf>) -> Error {
    let kept = match last_checkpoint {
        Some(p) => format!("the last good checkpoint is {}", p.display()),
        None => "no checkpoint was written yet".to_string(),
    };
    Error::NonFinite(format!(
        "{what} is {value} at epoch {} (global step {step}); training stopped before updating the weights, {kept}. \
         Try a lower --lr, or --grad_clip 1.0",
        epoch + 1
    ))
}

/// On a terminal the line goes above the bar; in a log it is the only output.
fn print_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

fn progress_bar(total: u64, done: u64, verbose: bool) -> ProgressBar {
    if !verbose {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_position(done);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}").expect("valid template"),
    );
    bar
}

/// Trains as `cfg` says (optionally continuing a checkpoint) and writes
/// checkpoints, the final model, metrics and plots under `cfg.out`.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainOutcome> {
    cfg.validate()?;
    let comm: Arc<dyn Communicator> = opts.comm.clone().unwrap_or_else(|| Arc::new(SingleProcess));
    let (rank, world) = (comm.rank(), comm.world_size());
    // With several ranks, every collective (the gradient buckets overlapped with backward, and
    // those inside the loss and sync batch norm) goes through one communication thread, so they
    // run in the same order on every rank.
    let worker = if world > 1 { Some(Arc::new(CommWorker::spawn(comm.clone())?)) } else { None };
    let comm: Arc<dyn Communicator> = match &worker {
        Some(w) => w.clone(),
        None => comm,
    };
    let writer = rank == 0; // files and console output come from rank 0 only
    let verbose = opts.verbose && writer;
    let base_lr = cfg.lr * world as f64;
    let (device, device_reason) = training_device(cfg)?;
    let bf16 = device != Device::Cpu && cfg.precision == "bf16";
    let ds = Arc::new(ShardDataset::open(&cfg.processed_dir)?);
    let m = ds.manifest().clone();
    let dataset = DatasetIdentity { clips: m.clips, frames: m.frames, height: m.height, width: m.width };
    let loader = Loader::new(
        ds.clone(),
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            rank,
            world,
            workers: cfg.workers,
            prefetch: 2 * cfg.workers,
            augment: cfg.augment_config(),
            frames: Some(cfg.num_frames),
        },
    )?;
    // Loader::new already refused a dataset smaller than one batch.
    let steps_per_epoch = loader.sampler().steps_per_epoch();
    let total_steps = (cfg.epochs * steps_per_epoch) as u64;
    let warmup_steps = (total_steps as f64 * cfg.warmup_fraction).round() as usize;

    let spec = ModelSpec::from_config(cfg);
    let mut model = spec.build(&mut Rng::fork(cfg.seed, MODEL_INIT_STREAM))?;
    // Initialised on the host (the same weights whatever the device), then moved in place: the
    // optimiser, the gradient buckets and a resumed checkpoint all find the parameters there.
    move_to_device(&model, device)?;
    let params: Vec<Tensor> = parameters(&model).into_iter().map(|(_, p)| p).collect();
    let mut optimizer = build_optimizer(cfg, params.clone())?;
    let buckets = GradientBuckets::new(&params, BUCKET_MB)?;
    if world > 1 && cfg.sync_bn {
        convert_sync_batch_norm(&mut model, Some(comm.clone()));
    }

    let (mut epochs_done, mut global_step, mut last_checkpoint) = (0usize, 0u64, None);
    // A checkpoint taken in the middle of an epoch: the steps of it already trained.
    let (mut resume_step, mut resume_loss_sum) = (0usize, 0.0f64);
    if let Some(path) = &opts.resume {
        let (state, opt_state) = load_train_state(path)?;
        if state.dataset != dataset {
            return Err(Error::invalid(
                "--resume",
                format!(
                    "{} was trained on a different dataset ({:?}) than {} ({:?})",
                    path.display(),
                    state.dataset,
                    cfg.processed_dir.display(),
                    dataset
                ),
            ));
        }
        let epoch = load_weights_into(path, &model, &spec)?;
        if epoch != state.epochs_done {
            return Err(Error::format(
                path,
                format!("model file says epoch {epoch} but its state file says {}", state.epochs_done),
            ));
        }
        if state.epoch_steps_done >= steps_per_epoch {
            return Err(Error::invalid(
                "--resume",
                format!(
                    "{} was taken {} steps into an epoch, but an epoch now has {steps_per_epoch} steps (was --batch_size changed?)",
                    path.display(),
                    state.epoch_steps_done
                ),
            ));
        }
        optimizer.load_state(&opt_state)?;
        (epochs_done, global_step, last_checkpoint) = (state.epochs_done, state.global_step, Some(path.clone()));
        (resume_step, resume_loss_sum) = (state.epoch_steps_done, state.epoch_loss_sum);
    }
    if world > 1 {
        broadcast_from_rank0(&model, comm.as_ref())?;
    }

    let mut metrics = None;
    if writer {
        std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io("creating the output directory", &cfg.out, e))?;
        crate::atomic_file::write_atomic(&cfg.out.join("config.toml"), cfg.to_toml().as_bytes())?;
        metrics = Some(MetricsLog::open(&cfg.out, opts.resume.as_ref().map(|_| global_step))?);
    }
    if verbose {
        println!(
            "{}: {} parameters, {} clips of {}×{}×{} from {}, {} steps/epoch, {} epochs{}",
            cfg.base_model,
            parameter_count(&model),
            m.clips,
            m.frames,
            m.height,
            m.width,
            cfg.processed_dir.display(),
            steps_per_epoch,
            cfg.epochs,
            match (epochs_done, resume_step) {
                (0, 0) => String::new(),
                (e, 0) => format!(" (resuming after epoch {e})"),
                (e, s) => format!(" (resuming after step {s} of epoch {})", e + 1),
            }
        );
        if world > 1 {
            println!("{world} ranks, {} clips each per step, lr {} × {world}", cfg.batch_size / world, cfg.lr);
        }
        if let Some(reason) = &device_reason {
            println!("--device auto: {} ({reason})", if device == Device::Cpu { "the CPU" } else { "CUDA" });
        }
        if let Some(name) = device_name(device) {
            println!("training on {name}, {}", if bf16 { "bf16 autocast" } else { "f32" });
        }
    }

    let bar = progress_bar(total_steps, global_step, verbose);
    let run_start = Instant::now();
    let (mut clips_seen, mut last_epoch_loss) = (0usize, f64::NAN);
    let mut last_checkpoint_time = Instant::now();
    let mut stopped_by: Option<String> = None;
    // What a checkpoint records: `epochs` whole epochs and `steps` steps of the next.
    let position = |epochs: usize, global_step: u64, steps: usize, loss_sum: f64| TrainState {
        epochs_done: epochs,
        global_step,
        epoch_steps_done: steps,
        epoch_loss_sum: loss_sum,
        config: cfg.clone(),
        dataset: dataset.clone(),
    };
    model.set_training(true);
    'epochs: for epoch in epochs_done..cfg.epochs {
        let epoch_start = Instant::now();
        // The first epoch of a mid-epoch resume starts where the checkpoint stopped.
        let first_step = std::mem::take(&mut resume_step);
        let mut loss_sum = std::mem::take(&mut resume_loss_sum);
        let mut batches = loader.epoch(epoch, first_step);
        let mut checkpoint_due = false; // a step/time checkpoint falling on the epoch's last step
        for step in first_step..steps_per_epoch {
            let wait = Instant::now();
            let batch = batches.next().ok_or_else(|| Error::invalid("loader", "epoch ended early"))??;
            // Augmented on the host by the loader; uploaded once per step (counted as data time).
            let (view1, view2) = (batch.view1.to_device(device)?, batch.view2.to_device(device)?);
            let data_s = wait.elapsed().as_secs_f64();

            let lr = warmup_cosine(global_step as usize, total_steps as usize, warmup_steps, base_lr, 0.0);
            optimizer.set_lr(lr);
            optimizer.zero_grad();
            let t = Instant::now();
            // bf16 autocast on the GPU (--precision); the backward runs in each op's forward mode.
            let loss = autocast(bf16, || {
                if world == 1 {
                    model.loss(&view1, &view2)
                } else {
                    // This rank's projections; the loss sees every rank's as negatives.
                    let z = model.forward(&Tensor::cat(&[&view1, &view2], 0)?)?;
                    global_nt_xent(&z, cfg.temperature, &comm)
                }
            })?;
            let loss_value = loss.item()?;
            let forward_s = t.elapsed().as_secs_f64();
            if !loss_value.is_finite() {
                return Err(non_finite("the loss", loss_value, epoch, global_step, &last_checkpoint));
            }
            let t = Instant::now();
            match &worker {
                Some(worker) => buckets.backward_all_reduce_mean(&loss, worker)?,
                None => loss.backward()?,
            }
            drop(loss);
            let norm = match cfg.grad_clip {
                Some(max) => clip_grad_norm(&params, max)?,
                None => grad_norm(&params)?,
            };
            if !norm.is_finite() {
                return Err(non_finite("the gradient norm", norm, epoch, global_step, &last_checkpoint));
            }
            let backward_s = t.elapsed().as_secs_f64(); // includes the gradient-norm check
            let t = Instant::now();
            optimizer.step()?;
            let optimizer_s = t.elapsed().as_secs_f64();

            global_step += 1;
            clips_seen += batch.clips.len() * world;
            loss_sum += loss_value;
            let step_s = data_s + forward_s + backward_s + optimizer_s;
            let clips_per_s = (batch.clips.len() * world) as f64 / step_s;
            if let Some(metrics) = metrics.as_mut() {
                let mut record = json!({
                    "epoch": epoch, "step": global_step, "epoch_step": step, "loss": loss_value, "lr": lr,
                    "grad_norm": norm, "clips_per_s": clips_per_s, "time_s": run_start.elapsed().as_secs_f64(),
                    "data_s": data_s, "forward_s": forward_s, "backward_s": backward_s, "optimizer_s": optimizer_s,
                });
                add_gpu_memory(&mut record, device);
                metrics.append(&record)?;
            }
            bar.set_message(format!(
                "epoch {}/{}  loss {loss_value:.4}  lr {lr:.2e}  {clips_per_s:.1} clips/s",
                epoch + 1,
                cfg.epochs
            ));
            bar.inc(1);

            // Stop (a signal on any rank) or a step/time checkpoint, agreed by every rank.
            let (stop, due) = checkpoint_decision(cfg, global_step, last_checkpoint_time, &comm, world)?;
            if stop {
                stopped_by = Some(
                    crate::signals::received()
                        .map_or("a stop signal on another rank".into(), |s| crate::signals::name(s).to_string()),
                );
            }
            if step + 1 == steps_per_epoch {
                checkpoint_due = due; // the epoch's checkpoint below takes it
            } else if stop || due {
                if writer {
                    let state = position(epoch, global_step, step + 1, loss_sum);
                    let path = save_checkpoint(&cfg.out, &model, &spec, &optimizer.state(), &state)?;
                    if verbose {
                        print_line(&bar, format!("step {global_step}: checkpoint → {}", path.display()));
                    }
                    last_checkpoint = Some(path);
                }
                last_checkpoint_time = Instant::now();
                if stop {
                    break 'epochs;
                }
            }
        }
        drop(batches);
        epochs_done = epoch + 1;
        last_epoch_loss = loss_sum / steps_per_epoch as f64;
        let epoch_s = epoch_start.elapsed().as_secs_f64();
        if let Some(metrics) = metrics.as_mut() {
            let mut record = json!({
                "epoch": epoch, "step": global_step, "epoch_loss": last_epoch_loss, "epoch_time_s": epoch_s,
                "epoch_clips_per_s": (steps_per_epoch * cfg.batch_size) as f64 / epoch_s,
            });
            add_gpu_memory(&mut record, device);
            metrics.append(&record)?;
            metrics.write_plots()?;
        }
        let mut saved = String::new();
        let due = epochs_done % cfg.checkpoint_every == 0 || epochs_done == cfg.epochs || checkpoint_due;
        if due || stopped_by.is_some() {
            if writer {
                let state = position(epochs_done, global_step, 0, 0.0);
                let path = save_checkpoint(&cfg.out, &model, &spec, &optimizer.state(), &state)?;
                saved = format!("  → {}", path.display());
                last_checkpoint = Some(path);
            }
            last_checkpoint_time = Instant::now();
        }
        if verbose {
            let line = format!(
                "epoch {epochs_done}/{}  loss {last_epoch_loss:.4}  {:.1} clips/s  {epoch_s:.1} s{}{saved}",
                cfg.epochs,
                (steps_per_epoch * cfg.batch_size) as f64 / epoch_s,
                gpu_memory(device).map_or(String::new(), |(peak, reserved)| format!(
                    "  peak GPU memory {peak:.0} MiB ({reserved:.0} MiB reserved)"
                )),
            );
            print_line(&bar, line);
        }
        if stopped_by.is_some() {
            break;
        }
    }
    bar.finish_and_clear();
    // A stop at the very last step has finished the training all the same.
    if epochs_done == cfg.epochs {
        stopped_by = None;
    }
    let final_model = final_model_path(&cfg.out);
    if writer && stopped_by.is_none() {
        save_model(&final_model, &model, &spec, epochs_done)?;
    }
    Ok(TrainOutcome {
        final_model,
        epochs_done,
        global_step,
        last_epoch_loss,
        clips_per_s: clips_seen as f64 / run_start.elapsed().as_secs_f64().max(1e-9),
        stopped_by,
        checkpoint: last_checkpoint,
    })
}

/// After each step: (stop, checkpoint due). Stop when a stop signal reached this or any other
/// rank; a checkpoint is due every `--checkpoint_every_steps` steps or `--checkpoint_every_minutes`
/// minutes. With several ranks the two flags are summed over all of them, so every rank takes the
/// same decision at the same step (a clock or a signal seen by one rank only is enough).
fn checkpoint_decision(
    cfg: &TrainConfig,
    global_step: u64,
    last_checkpoint: Instant,
    comm: &Arc<dyn Communicator>,
    world: usize,
) -> Result<(bool, bool)> {
    let stop = crate::signals::received().is_some();
    let due = cfg.checkpoint_every_steps.is_some_and(|n| global_step % n as u64 == 0)
        || cfg.checkpoint_every_minutes.is_some_and(|m| last_checkpoint.elapsed().as_secs_f64() >= 60.0 * m);
    if world == 1 {
        return Ok((stop, due));
    }
    let flags = Tensor::from_vec(vec![stop as u8 as f32, due as u8 as f32], &[2])?;
    let agreed = comm.all_reduce_sum(&flags)?.to_vec::<f32>()?;
    Ok((agreed[0] > 0.0, agreed[1] > 0.0))
}

/// The device this process trains on: the CPU, or for `--device cuda` the GPU of its local
/// rank (0 without a launcher), opened here so that a missing driver or GPU fails before any work.
/// With `--device auto`, also why that device (for the console).
pub fn training_device(cfg: &TrainConfig) -> Result<(Device, Option<String>)> {
    let local_rank = crate::dist::DistEnv::from_env()?.map_or(0, |env| env.local_rank);
    let (wanted, reason) = match cfg.device.as_str() {
        "auto" => {
            let (device, reason) = auto_device(local_rank)?;
            (device, Some(reason))
        }
        "cuda" => (Device::Cuda(local_rank), None),
        _ => (Device::Cpu, None),
    };
    if wanted == Device::Cpu {
        return Ok((Device::Cpu, reason));
    }
    #[cfg(feature = "cuda")]
    {
        crate::backend::cuda::devices::gpu(local_rank)?;
        crate::backend::cuda::set_deterministic(cfg.deterministic);
        Ok((wanted, reason))
    }
    #[cfg(not(feature = "cuda"))]
    Err(Error::invalid("--device", "this build has no CUDA backend (build with --features cuda); use --device cpu"))
}

/// `--device auto`: the GPU of this rank's local rank when the machine has GPUs (and this build
/// the CUDA backend), else the CPU; with the reason.
fn auto_device(local_rank: usize) -> Result<(Device, String)> {
    #[cfg(feature = "cuda")]
    {
        match crate::backend::cuda::devices::device_count() {
            Ok(0) => Ok((Device::Cpu, "no CUDA device on this machine".into())),
            Ok(n) if local_rank < n => Ok((Device::Cuda(local_rank), format!("{n} CUDA device(s) on this machine"))),
            Ok(n) => Err(Error::invalid(
                "--device",
                format!("auto: this is local rank {local_rank}, but the machine has only {n} CUDA device(s)"),
            )),
            Err(e) => Ok((Device::Cpu, format!("no usable CUDA driver: {e}"))),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = local_rank;
        Ok((Device::Cpu, "this build has no CUDA backend (build with --features cuda for GPUs)".into()))
    }
}

/// "NVIDIA H100 80GB HBM3 (cuda:0)" (the emulator says it is one), for the console; `None` on the CPU.
fn device_name(device: Device) -> Option<String> {
    match device {
        Device::Cpu => None,
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => crate::backend::cuda::devices::gpu(i).ok().map(|g| format!("{} (cuda:{i})", g.name())),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => None,
    }
}

/// Peak GPU memory so far in MiB: (held by tensors, reserved by the caching allocator); `None` on the CPU.
fn gpu_memory(device: Device) -> Option<(f64, f64)> {
    match device {
        Device::Cpu => None,
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            let stats = crate::backend::cuda::devices::gpu(i).ok()?.memory_stats();
            let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
            Some((mib(stats.peak_in_use_bytes), mib(stats.peak_reserved_bytes)))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => None,
    }
}

/// Adds the GPU memory peaks to a metrics record (nothing on the CPU).
fn add_gpu_memory(record: &mut serde_json::Value, device: Device) {
    if let Some((peak, reserved)) = gpu_memory(device) {
        record["gpu_peak_mib"] = json!(peak);
        record["gpu_reserved_peak_mib"] = json!(reserved);
    }
}
