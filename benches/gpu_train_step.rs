//! GPU benchmark of one SimCLR training step, as `src/train.rs` runs it with `--device cuda`
//! (upload both views → `model.loss` under bf16 autocast → `backward` → optimiser step), next
//! to the PyTorch reference of the same step measured on the same GPU in the same run
//! (tools/torch_reference/bench_step.py, whose JSON lines `SIMCLR_TORCH_REFERENCE_STEPS`
//! names; tools/gpu/run.sh's `train` step runs both).
//!
//! Per case (model × image size, batch 256, 20 frames: the baseline's defaults): 2 warm-up
//! steps, then `SIMCLR_TRAIN_STEPS` (default 5) timed steps. The phases are separated by
//! device synchronisations (so each phase's time is its own work, at the price of the
//! overlap a free-running step would have); the step time is the sum. The views are random
//! `[B, T, 3, S, S]` host tensors, uploaded each step (the data phase; augmentation is timed
//! in benches/data_loader.rs). Peak memory is the caching allocator's peak of bytes held by
//! tensors (PyTorch's `max_memory_allocated` is the same quantity).
//!
//! Output per case: clips/s, the phase split, peak memory, then `ours / eager` and
//! `ours / compile` clips/s ratios when the reference has that case (> 1: we are faster).
//!
//! Run on the GPU machine: `bash .gpu/tools/run.sh train`; check that it works here first
//! with `SIMCLR_BENCH_EMULATED=1 cargo bench --features cuda --bench gpu_train_step` (tiny
//! sizes on the kernel emulator: the timings mean nothing).
//! Environment: `SIMCLR_TRAIN_MODELS` (default "resnet18 vivit_small"), `SIMCLR_TRAIN_SIZES`
//! (default "128"), `SIMCLR_TRAIN_BATCH` (256), `SIMCLR_TRAIN_FRAMES` (20).

mod common;

use simclr::backend::cuda::devices;
use simclr::backend::Device;
use simclr::checkpoint::ModelSpec;
use simclr::config::TrainConfig;
use simclr::nn::{move_to_device, parameter_count, parameters, Module};
use simclr::ops::autocast::autocast;
use simclr::train::build_optimizer;
use simclr::{DType, Result, Rng, Tensor};
use std::time::Instant;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_usize(name: &str, default: usize) -> usize {
    env_or(name, &default.to_string()).parse().unwrap_or_else(|_| panic!("{name} must be a whole number"))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// The reference's JSON lines (one per model × mode run), or none.
fn torch_reference() -> Vec<serde_json::Value> {
    let Some(path) = std::env::var_os("SIMCLR_TORCH_REFERENCE_STEPS") else {
        println!("# no PyTorch reference (set SIMCLR_TORCH_REFERENCE_STEPS to bench_step.py's JSON lines)");
        return Vec::new();
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the PyTorch reference {}: {e}", path.to_string_lossy()));
    let runs: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if let Some(r) = runs.iter().find(|r| r.get("gpu").is_some()) {
        println!("# PyTorch reference from the same run: {} torch {}", r["gpu"], r["torch"]);
    }
    runs
}

/// The reference's clips/s for this case in `mode`, if it ran (and did not fail).
fn reference_rate(
    runs: &[serde_json::Value],
    model: &str,
    mode: &str,
    batch: usize,
    frames: usize,
    size: usize,
) -> Option<f64> {
    runs.iter()
        .find(|r| {
            r["model"] == model
                && r["mode"] == mode
                && r["batch"] == batch
                && r["frames"] == frames
                && r["size"] == size
                && r.get("error").is_none()
        })
        .and_then(|r| r["clips_per_s"].as_f64())
}

struct Case {
    spec: ModelSpec,
    batch: usize,
    steps: usize,
}

/// Times one case; returns our clips/s.
fn bench(case: &Case, device: Device) -> Result<f64> {
    let Case { spec, batch, steps } = case;
    let gpu = devices::gpu(0)?;
    let mut rng = Rng::new(0);
    let mut model = spec.build(&mut rng)?;
    model.set_training(true);
    move_to_device(&model, device)?;
    let params: Vec<Tensor> = parameters(&model).into_iter().map(|(_, p)| p).collect();
    let cfg = TrainConfig { lr: 3e-4, ..TrainConfig::default() };
    let mut opt = build_optimizer(&cfg, params)?;
    let (t, s) = (spec.num_frames, spec.image_size);
    let v1 = Tensor::randn(&[*batch, t, 3, s, s], 1.0, DType::F32, &mut rng)?;
    let v2 = Tensor::randn(&[*batch, t, 3, s, s], 1.0, DType::F32, &mut rng)?;
    println!("# {} parameters; {} optimiser, lr {}; bf16 autocast", parameter_count(&model), cfg.optimizer, cfg.lr);
    gpu.synchronize()?;
    gpu.reset_peak_memory();

    let mut phases: [Vec<f64>; 5] = Default::default();
    for i in 0..steps + 2 {
        let mut marks = [Instant::now(); 5];
        opt.zero_grad();
        let (d1, d2) = (v1.to_device(device)?, v2.to_device(device)?);
        gpu.synchronize()?;
        marks[1] = Instant::now();
        let loss = autocast(true, || model.loss(&d1, &d2))?;
        gpu.synchronize()?;
        marks[2] = Instant::now();
        loss.backward()?;
        gpu.synchronize()?;
        marks[3] = Instant::now();
        opt.step()?;
        gpu.synchronize()?;
        marks[4] = Instant::now();
        let value = loss.item()?;
        if !value.is_finite() {
            return Err(simclr::Error::invalid("gpu_train_step", format!("non-finite loss {value} at step {i}")));
        }
        if i < 2 {
            continue; // warm-up: first-use allocations and module loading
        }
        for p in 0..4 {
            phases[p].push((marks[p + 1] - marks[p]).as_secs_f64());
        }
        phases[4].push((marks[4] - marks[0]).as_secs_f64());
    }
    let step_s = median(&phases[4]);
    println!("{:<10} {:>10} {:>8}", "phase", "median ms", "of step");
    for (name, v) in ["data", "forward", "backward", "optimizer", "step"].iter().zip(&phases) {
        println!("{:<10} {:>10.2} {:>8.3}", name, median(v) * 1e3, median(v) / step_s);
    }
    let stats = gpu.memory_stats();
    let rate = *batch as f64 / step_s;
    println!(
        "{rate:.1} clips/s; peak GPU memory {:.0} MiB held by tensors ({:.0} MiB reserved)",
        stats.peak_in_use_bytes as f64 / (1u64 << 20) as f64,
        stats.peak_reserved_bytes as f64 / (1u64 << 20) as f64
    );
    Ok(rate)
}

fn main() {
    common::print_header("GPU training-step benchmark", &["src", "kernels", "benches/gpu_train_step.rs", "Cargo.toml"]);
    let emulated = std::env::var_os("SIMCLR_BENCH_EMULATED").is_some_and(|v| v != "0");
    if emulated {
        devices::use_emulator();
        println!("# EMULATED: tiny sizes on the CPU kernel emulator; the timings mean nothing");
    }
    let gpu = devices::gpu(0).unwrap_or_else(|e| panic!("no GPU to benchmark: {e}"));
    println!(
        "# device: {}, compute capability {:?}, {:.1} GiB",
        gpu.name(),
        gpu.compute_capability(),
        gpu.total_memory().unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    let runs = torch_reference();
    let (batch, frames) =
        if emulated { (4, 2) } else { (env_usize("SIMCLR_TRAIN_BATCH", 256), env_usize("SIMCLR_TRAIN_FRAMES", 20)) };
    let sizes: Vec<usize> = if emulated {
        vec![32]
    } else {
        env_or("SIMCLR_TRAIN_SIZES", "128").split_whitespace().map(|s| s.parse().expect("sizes are numbers")).collect()
    };
    let steps = if emulated { 1 } else { env_usize("SIMCLR_TRAIN_STEPS", 5) };
    let mut failed = false;
    for model in env_or("SIMCLR_TRAIN_MODELS", "resnet18 vivit_small").split_whitespace() {
        for &size in &sizes {
            let spec = ModelSpec {
                base_model: model.to_string(),
                num_frames: frames,
                image_size: size,
                // The emulator runs kernels one thread at a time: a quarter-width ResNet.
                width: if emulated && model.starts_with("resnet") { 0.25 } else { 1.0 },
                small_stem: false,
                temporal: "mean".into(),
                projection_dim: 128,
                temperature: 0.5,
            };
            println!("\n## {model}, batch {batch}, {frames} frames x {size}x{size}");
            match bench(&Case { spec, batch, steps }, Device::Cuda(0)) {
                Ok(rate) => {
                    for mode in ["eager", "compile"] {
                        match reference_rate(&runs, model, mode, batch, frames, size) {
                            Some(r) => println!("ours / PyTorch {mode}: {:.2} ({rate:.1} vs {r:.1} clips/s)", rate / r),
                            None => println!("ours / PyTorch {mode}: no reference for this case"),
                        }
                    }
                }
                Err(e) => {
                    // Out of memory, or an op without a CUDA path: say so and go on to the next case.
                    println!("FAILED: {e}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
