//! One training run as the loop it is: `Trainer::new` builds everything a run needs (or takes
//! it back from a checkpoint), `run` goes over the epochs, `step` trains one batch, `end_epoch`
//! logs the epoch and takes its checkpoint, `checkpoint` writes what a resume needs.

use super::device::{add_gpu_memory, autocast_bf16, device_name, gpu_memory, training_device};
use super::{build_optimizer, TrainOptions, TrainOutcome, BUCKET_MB, MODEL_INIT_STREAM};
use crate::backend::Device;
use crate::checkpoint::{
    final_model_path, load_train_state, load_weights_into, save_checkpoint, save_model, DatasetIdentity, ModelSpec,
    TrainState, STATE_VERSION,
};
use crate::config::TrainConfig;
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::data::shards::ShardDataset;
use crate::dist::{
    broadcast_from_rank0, convert_sync_batch_norm, global_nt_xent, CommWorker, Communicator, GradientBuckets,
    SingleProcess,
};
use crate::error::{Error, Result};
use crate::metrics::MetricsLog;
use crate::nn::simclr::SimClr;
use crate::nn::{move_to_device, parameter_count, parameters, Module};
use crate::ops::autocast::autocast;
use crate::optim::{clip_grad_norm, grad_norm, warmup_cosine, Optimizer};
use crate::rng::Rng;
use crate::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Where the run stands: what a checkpoint records.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    epochs_done: usize,
    global_step: u64,
    /// Steps of the current epoch already trained, and the sum of their losses (non-zero
    /// between steps of an epoch, and at the start of a run resumed in the middle of one).
    epoch_steps_done: usize,
    epoch_loss_sum: f64,
}

pub(super) struct Trainer<'a> {
    cfg: &'a TrainConfig,
    /// The data-parallel group: every collective goes through `worker` when there are several
    /// ranks, so that they run in the same order on every rank.
    comm: Arc<dyn Communicator>,
    worker: Option<Arc<CommWorker>>,
    world: usize,
    /// Rank 0: the only one that writes files and prints.
    writer: bool,
    verbose: bool,
    device: Device,
    bf16: bool,

    loader: Loader,
    dataset: DatasetIdentity,
    steps_per_epoch: usize,
    total_steps: u64,
    warmup_steps: usize,
    /// The learning rate scaled by the number of ranks (the baseline's linear rule).
    base_lr: f64,

    spec: ModelSpec,
    model: SimClr,
    params: Vec<Tensor>,
    optimizer: Box<dyn Optimizer>,
    buckets: GradientBuckets,

    progress: Progress,
    last_epoch_loss: f64,
    last_checkpoint: Option<PathBuf>,
    last_checkpoint_time: Instant,
    /// The signal that stopped the run (set after the step it arrived in).
    stopped_by: Option<String>,
    metrics: Option<MetricsLog>,
    bar: ProgressBar,
    run_start: Instant,
    clips_seen: usize,
}

impl<'a> Trainer<'a> {
    /// The data, the model on its device, the optimiser and the metrics log of a run; with
    /// `opts.resume`, the weights, optimiser state and position of that checkpoint.
    pub(super) fn new(cfg: &'a TrainConfig, opts: &TrainOptions) -> Result<Trainer<'a>> {
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
        let writer = rank == 0;
        let (device, device_reason) = training_device(cfg)?;
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

        let spec = ModelSpec::from_config(cfg);
        let mut model = spec.build(&mut Rng::fork(cfg.seed, MODEL_INIT_STREAM))?;
        // Initialised on the host (the same weights whatever the device), then moved in place: the
        // optimiser, the gradient buckets and a resumed checkpoint all find the parameters there.
        move_to_device(&model, device)?;
        let params: Vec<Tensor> = parameters(&model).into_iter().map(|(_, p)| p).collect();
        let optimizer = build_optimizer(cfg, params.clone())?;
        let buckets = GradientBuckets::new(&params, BUCKET_MB)?;
        if world > 1 && cfg.sync_bn {
            convert_sync_batch_norm(&mut model, Some(comm.clone()));
        }

        let verbose = opts.verbose && writer;
        let mut trainer = Trainer {
            cfg,
            comm,
            worker,
            world,
            writer,
            verbose,
            device,
            bf16: autocast_bf16(cfg, device)?,
            loader,
            dataset,
            steps_per_epoch,
            total_steps,
            warmup_steps: (total_steps as f64 * cfg.warmup_fraction).round() as usize,
            base_lr: cfg.lr * world as f64,
            spec,
            model,
            params,
            optimizer,
            buckets,
            progress: Progress::default(),
            last_epoch_loss: f64::NAN,
            last_checkpoint: None,
            last_checkpoint_time: Instant::now(),
            stopped_by: None,
            metrics: None,
            bar: ProgressBar::hidden(),
            run_start: Instant::now(),
            clips_seen: 0,
        };
        if let Some(path) = &opts.resume {
            trainer.resume_from(path)?;
        }
        if world > 1 {
            broadcast_from_rank0(&trainer.model, trainer.comm.as_ref())?;
        }
        if writer {
            std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io("creating the output directory", &cfg.out, e))?;
            crate::atomic_file::write_atomic(&cfg.out.join("config.toml"), cfg.to_toml().as_bytes())?;
            let resumed_at = opts.resume.as_ref().map(|_| trainer.progress.global_step);
            trainer.metrics = Some(MetricsLog::open(&cfg.out, resumed_at)?);
        }
        if verbose {
            trainer.announce(&m, device_reason.as_deref());
        }
        trainer.bar = progress_bar(total_steps, trainer.progress.global_step, verbose);
        Ok(trainer)
    }

    /// Takes the weights, optimiser state and position of `path`, refusing a checkpoint of
    /// another dataset or one whose epoch no longer has that many steps.
    fn resume_from(&mut self, path: &PathBuf) -> Result<()> {
        let (state, opt_state) = load_train_state(path)?;
        if state.dataset != self.dataset {
            return Err(Error::invalid(
                "--resume",
                format!(
                    "{} was trained on a different dataset ({:?}) than {} ({:?})",
                    path.display(),
                    state.dataset,
                    self.cfg.processed_dir.display(),
                    self.dataset
                ),
            ));
        }
        let epoch = load_weights_into(path, &self.model, &self.spec)?;
        if epoch != state.epochs_done {
            return Err(Error::format(
                path,
                format!("model file says epoch {epoch} but its state file says {}", state.epochs_done),
            ));
        }
        if state.epoch_steps_done >= self.steps_per_epoch {
            return Err(Error::invalid(
                "--resume",
                format!(
                    "{} was taken {} steps into an epoch, but an epoch now has {} steps (was --batch_size changed?)",
                    path.display(),
                    state.epoch_steps_done,
                    self.steps_per_epoch
                ),
            ));
        }
        self.optimizer.load_state(&opt_state)?;
        self.progress = Progress {
            epochs_done: state.epochs_done,
            global_step: state.global_step,
            epoch_steps_done: state.epoch_steps_done,
            epoch_loss_sum: state.epoch_loss_sum,
        };
        self.last_checkpoint = Some(path.clone());
        Ok(())
    }

    /// The run's first console lines: model, data, schedule, ranks and device.
    fn announce(&self, m: &crate::data::shards::Manifest, device_reason: Option<&str>) {
        let (cfg, world) = (self.cfg, self.world);
        println!(
            "{}: {} parameters, {} clips of {}×{}×{} from {}, {} steps/epoch, {} epochs{}",
            cfg.base_model,
            parameter_count(&self.model),
            m.clips,
            m.frames,
            m.height,
            m.width,
            cfg.processed_dir.display(),
            self.steps_per_epoch,
            cfg.epochs,
            match (self.progress.epochs_done, self.progress.epoch_steps_done) {
                (0, 0) => String::new(),
                (e, 0) => format!(" (resuming after epoch {e})"),
                (e, s) => format!(" (resuming after step {s} of epoch {})", e + 1),
            }
        );
        if world > 1 {
            println!("{world} ranks, {} clips each per step, lr {} × {world}", cfg.batch_size / world, cfg.lr);
        }
        if let Some(reason) = device_reason {
            println!("--device auto: {} ({reason})", if self.device == Device::Cpu { "the CPU" } else { "CUDA" });
        }
        if let Some(name) = device_name(self.device) {
            println!("training on {name}, {}", if self.bf16 { "bf16 autocast" } else { "f32" });
        } else if self.bf16 {
            println!(
                "bf16 autocast on the CPU: matmul and conv GEMM operands in bf16 (AVX512-BF16), sums and weights f32"
            );
        }
    }

    /// The epochs left, then the final model (unless a signal stopped the run first).
    pub(super) fn run(mut self) -> Result<TrainOutcome> {
        (self.run_start, self.last_checkpoint_time) = (Instant::now(), Instant::now());
        self.model.set_training(true);
        while self.progress.epochs_done < self.cfg.epochs && self.stopped_by.is_none() {
            self.train_epoch()?;
        }
        self.bar.finish_and_clear();
        // A stop at the very last step has finished the training all the same.
        if self.progress.epochs_done == self.cfg.epochs {
            self.stopped_by = None;
        }
        let final_model = final_model_path(&self.cfg.out);
        if self.writer && self.stopped_by.is_none() {
            save_model(&final_model, &self.model, &self.spec, self.progress.epochs_done)?;
        }
        Ok(TrainOutcome {
            final_model,
            epochs_done: self.progress.epochs_done,
            global_step: self.progress.global_step,
            last_epoch_loss: self.last_epoch_loss,
            clips_per_s: self.clips_seen as f64 / self.run_start.elapsed().as_secs_f64().max(1e-9),
            stopped_by: self.stopped_by,
            checkpoint: self.last_checkpoint,
        })
    }

    /// The steps of the current epoch not trained yet, with the step and time checkpoints and
    /// stop signals agreed after each; then `end_epoch`, unless a signal stopped it midway.
    fn train_epoch(&mut self) -> Result<()> {
        let epoch = self.progress.epochs_done;
        let epoch_start = Instant::now();
        let first_step = self.progress.epoch_steps_done;
        let mut batches = self.loader.epoch(epoch, first_step);
        let mut checkpoint_due = false; // a step/time checkpoint falling on the epoch's last step
        for step in first_step..self.steps_per_epoch {
            let wait = Instant::now();
            let batch = batches.next().ok_or_else(|| Error::invalid("loader", "epoch ended early"))??;
            self.step(batch, wait)?;

            // Stop (a signal on any rank) or a step/time checkpoint, agreed by every rank.
            let (stop, due) = self.checkpoint_decision()?;
            if stop {
                self.stopped_by = Some(
                    crate::signals::received()
                        .map_or("a stop signal on another rank".into(), |s| crate::signals::name(s).to_string()),
                );
            }
            if step + 1 == self.steps_per_epoch {
                checkpoint_due = due; // the epoch's checkpoint takes it
            } else if stop || due {
                if let Some(path) = self.checkpoint()? {
                    if self.verbose {
                        let line = format!("step {}: checkpoint → {}", self.progress.global_step, path.display());
                        print_line(&self.bar, line);
                    }
                }
                if stop {
                    return Ok(());
                }
            }
        }
        drop(batches);
        self.end_epoch(epoch_start, checkpoint_due)
    }

    /// One optimiser step on `batch` (`wait`: when the step started waiting for it), with its
    /// metrics record and progress-bar line.
    fn step(&mut self, batch: Batch, wait: Instant) -> Result<()> {
        let (epoch, global_step) = (self.progress.epochs_done, self.progress.global_step);
        // Augmented on the host by the loader; uploaded once per step (counted as data time).
        let (view1, view2) = (batch.view1.to_device(self.device)?, batch.view2.to_device(self.device)?);
        let data_s = wait.elapsed().as_secs_f64();

        let lr = warmup_cosine(global_step as usize, self.total_steps as usize, self.warmup_steps, self.base_lr, 0.0);
        self.optimizer.set_lr(lr);
        self.optimizer.zero_grad();
        let t = Instant::now();
        // bf16 autocast (--precision); the backward runs in each op's forward mode.
        let (model, comm, temperature) = (&mut self.model, &self.comm, self.cfg.temperature);
        let loss = autocast(self.bf16, || {
            if self.world == 1 {
                model.loss(&view1, &view2)
            } else {
                // This rank's projections; the loss sees every rank's as negatives.
                let z = model.forward(&Tensor::cat(&[&view1, &view2], 0)?)?;
                global_nt_xent(&z, temperature, comm)
            }
        })?;
        let loss_value = loss.item()?;
        let forward_s = t.elapsed().as_secs_f64();
        if !loss_value.is_finite() {
            return Err(self.non_finite("the loss", loss_value));
        }
        let t = Instant::now();
        match &self.worker {
            Some(worker) => self.buckets.backward_all_reduce_mean(&loss, worker)?,
            None => loss.backward()?,
        }
        drop(loss);
        let norm = match self.cfg.grad_clip {
            Some(max) => clip_grad_norm(&self.params, max)?,
            None => grad_norm(&self.params)?,
        };
        if !norm.is_finite() {
            return Err(self.non_finite("the gradient norm", norm));
        }
        let backward_s = t.elapsed().as_secs_f64(); // includes the gradient-norm check
        let t = Instant::now();
        self.optimizer.step()?;
        let optimizer_s = t.elapsed().as_secs_f64();

        let step = self.progress.epoch_steps_done;
        self.progress.global_step += 1;
        self.progress.epoch_steps_done += 1;
        self.progress.epoch_loss_sum += loss_value;
        self.clips_seen += batch.clips.len() * self.world;
        let step_s = data_s + forward_s + backward_s + optimizer_s;
        let clips_per_s = (batch.clips.len() * self.world) as f64 / step_s;
        if let Some(metrics) = self.metrics.as_mut() {
            let mut record = json!({
                "epoch": epoch, "step": self.progress.global_step, "epoch_step": step, "loss": loss_value,
                "lr": lr, "grad_norm": norm, "clips_per_s": clips_per_s,
                "time_s": self.run_start.elapsed().as_secs_f64(),
                "data_s": data_s, "forward_s": forward_s, "backward_s": backward_s, "optimizer_s": optimizer_s,
            });
            add_gpu_memory(&mut record, self.device);
            metrics.append(&record)?;
        }
        self.bar.set_message(format!(
            "epoch {}/{}  loss {loss_value:.4}  lr {lr:.2e}  {clips_per_s:.1} clips/s",
            epoch + 1,
            self.cfg.epochs
        ));
        self.bar.inc(1);
        Ok(())
    }

    /// The epoch is done: its mean loss, metrics record and plots, its checkpoint when one is
    /// due (every `checkpoint_every` epochs, the last, a step/time checkpoint of its last step,
    /// or a stop), and its console line.
    fn end_epoch(&mut self, epoch_start: Instant, step_checkpoint_due: bool) -> Result<()> {
        let epoch = self.progress.epochs_done;
        self.last_epoch_loss = self.progress.epoch_loss_sum / self.steps_per_epoch as f64;
        self.progress = Progress { epochs_done: epoch + 1, epoch_steps_done: 0, epoch_loss_sum: 0.0, ..self.progress };
        let epochs_done = self.progress.epochs_done;
        let epoch_s = epoch_start.elapsed().as_secs_f64();
        let clips_per_s = (self.steps_per_epoch * self.cfg.batch_size) as f64 / epoch_s;
        if let Some(metrics) = self.metrics.as_mut() {
            let mut record = json!({
                "epoch": epoch, "step": self.progress.global_step, "epoch_loss": self.last_epoch_loss,
                "epoch_time_s": epoch_s, "epoch_clips_per_s": clips_per_s,
            });
            add_gpu_memory(&mut record, self.device);
            metrics.append(&record)?;
            metrics.write_plots()?;
        }
        let due = epochs_done % self.cfg.checkpoint_every == 0 || epochs_done == self.cfg.epochs || step_checkpoint_due;
        let mut saved = String::new();
        if due || self.stopped_by.is_some() {
            if let Some(path) = self.checkpoint()? {
                saved = format!("  → {}", path.display());
            }
        }
        if self.verbose {
            let line = format!(
                "epoch {epochs_done}/{}  loss {:.4}  {clips_per_s:.1} clips/s  {epoch_s:.1} s{}{saved}",
                self.cfg.epochs,
                self.last_epoch_loss,
                gpu_memory(self.device).map_or(String::new(), |(peak, reserved)| format!(
                    "  peak GPU memory {peak:.0} MiB ({reserved:.0} MiB reserved)"
                )),
            );
            print_line(&self.bar, line);
        }
        Ok(())
    }

    /// Writes a checkpoint of where the run stands (rank 0; every rank restarts its checkpoint
    /// clock). The path written, on rank 0.
    fn checkpoint(&mut self) -> Result<Option<PathBuf>> {
        self.last_checkpoint_time = Instant::now();
        if !self.writer {
            return Ok(None);
        }
        let p = self.progress;
        let state = TrainState {
            epochs_done: p.epochs_done,
            global_step: p.global_step,
            epoch_steps_done: p.epoch_steps_done,
            epoch_loss_sum: p.epoch_loss_sum,
            config: self.cfg.clone(),
            dataset: self.dataset.clone(),
            version: STATE_VERSION,
        };
        let path = save_checkpoint(&self.cfg.out, &self.model, &self.spec, &self.optimizer.state(), &state)?;
        self.last_checkpoint = Some(path.clone());
        Ok(Some(path))
    }

    /// After each step: (stop, checkpoint due). Stop when a stop signal reached this or any
    /// other rank; a checkpoint is due every `--checkpoint_every_steps` steps or
    /// `--checkpoint_every_minutes` minutes. With several ranks the two flags are summed over
    /// all of them, so every rank takes the same decision at the same step (a clock or a
    /// signal seen by one rank only is enough).
    fn checkpoint_decision(&self) -> Result<(bool, bool)> {
        let cfg = self.cfg;
        let stop = crate::signals::received().is_some();
        let due = cfg.checkpoint_every_steps.is_some_and(|n| self.progress.global_step % n as u64 == 0)
            || cfg
                .checkpoint_every_minutes
                .is_some_and(|m| self.last_checkpoint_time.elapsed().as_secs_f64() >= 60.0 * m);
        if self.world == 1 {
            return Ok((stop, due));
        }
        let flags = Tensor::from_vec(vec![stop as u8 as f32, due as u8 as f32], &[2])?;
        let agreed = self.comm.all_reduce_sum(&flags)?.to_vec::<f32>()?;
        Ok((agreed[0] > 0.0, agreed[1] > 0.0))
    }

    /// Training stopped on a NaN/inf: say where, what was kept, and what to try.
    fn non_finite(&self, what: &str, value: f64) -> Error {
        let kept = match &self.last_checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written yet".to_string(),
        };
        Error::NonFinite(format!(
            "{what} is {value} at epoch {} (global step {}); training stopped before updating the weights, {kept}. \
             Try a lower --lr, or --grad_clip 1.0",
            self.progress.epochs_done + 1,
            self.progress.global_step
        ))
    }
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
