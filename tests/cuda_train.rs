//! Training on the GPU, checked on the kernel emulator against the CPU reference: models moved
//! to a device, the optimisers' device paths (fused Adam/AdamW and LARS kernels, SGD through
//! axpby, the gradient norm), a projection head and the temporal transformer on the device,
//! checkpoints saved from and resumed onto the device, the out-of-memory error, and
//! `simclr-train --device cuda` end to end (in subprocesses with `SIMCLR_CUDA_EMULATOR=1`).
//!
//! Every in-process test uses `Device::Cuda(0)` on the emulator (`devices::use_emulator`),
//! except the out-of-memory one, which registers a small emulator as device 5.
#![cfg(feature = "cuda")]

mod common;

use common::{s, temp_dir};
use simclr::backend::cuda::devices;
use simclr::backend::Device;
use simclr::checkpoint::{
    load_model, load_train_state, load_weights_into, save_checkpoint, DatasetIdentity, ModelSpec, TrainState,
};
use simclr::config::TrainConfig;
use simclr::dist::rendezvous::Launcher;
use simclr::dist::{connect_rank, sync_batch_norm_2d, Communicator, DistBackend, DistEnv, ThreadGroup};
use simclr::nn::mlp::Activation;
use simclr::nn::temporal::{TemporalKind, TemporalPooling};
use simclr::nn::{move_to_device, parameters, state_dict, BatchNorm2d, Mlp, Module};
use simclr::ops::batchnorm::RunningStats;
use simclr::optim::{clip_grad_norm, grad_norm, AdamW, Lars, Optimizer, Sgd};
use simclr::tensor::safetensors_io::load_safetensors;
use simclr::{DType, Rng, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn emulated_gpu() -> Device {
    devices::use_emulator();
    Device::Cuda(0)
}

fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor {
    Tensor::randn(shape, std, DType::F32, &mut Rng::new(seed)).unwrap()
}

/// Values as f64, wherever the tensor is.
fn values(t: &Tensor) -> Vec<f64> {
    t.to_device(Device::Cpu).unwrap().to_f64_vec()
}

/// Asserts |got − want| ≤ atol + rtol·|want| elementwise, naming the worst element.
#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut worst, mut at) = (f64::MIN, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst || excess.is_nan() {
            (worst, at) = (excess, i);
        }
    }
    // Shown with --nocapture: how much of the tolerance a check uses.
    let max_abs = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    eprintln!("{what}: max |diff| {max_abs:.2e}");
    assert!(
        worst <= 0.0,
        "{what}[{at}]: got {}, want {} (|diff| {:.3e} > {atol:.1e} + {rtol:.1e}·|want|)",
        got[at],
        want[at],
        (got[at] - want[at]).abs()
    );
}

// ---------------------------------------------------------------- moving models

#[test]
fn moving_a_model_keeps_its_parameters_and_moves_buffers() {
    let gpu = emulated_gpu();
    let mlp = Mlp::new(&[6, 5, 3], Activation::Relu, DType::F32, &mut Rng::new(1)).unwrap();
    let before: Vec<(String, Vec<f64>)> = state_dict(&mlp).iter().map(|(n, t)| (n.clone(), values(t))).collect();
    // An optimiser made before the move must update the moved tensors: same identity.
    let params: Vec<Tensor> = parameters(&mlp).into_iter().map(|(_, p)| p).collect();
    let mut opt = Sgd::new(params.clone(), 0.1, 0.0, 0.0).unwrap();
    move_to_device(&mlp, gpu).unwrap();
    for ((name, t), (_, want)) in state_dict(&mlp).iter().zip(&before) {
        assert_eq!(t.device(), gpu, "{name}");
        assert!(t.is_tracked(), "{name} is no longer a trainable leaf");
        assert_eq!(&values(t), want, "{name} changed value moving");
    }
    let loss = params.iter().map(|p| p.sum_all().unwrap()).reduce(|a, b| a.add(&b).unwrap()).unwrap();
    loss.backward().unwrap();
    opt.step().unwrap();
    for ((name, t), (_, old)) in state_dict(&mlp).iter().zip(&before) {
        let want: Vec<f64> = old.iter().map(|w| w - 0.1).collect(); // d(Σw)/dw = 1
        assert_close(name, &values(t), &want, 1e-6, 0.0);
    }

    // Batch norm: running statistics go to the device, the step counter stays on the host.
    let bn = BatchNorm2d::new(4, DType::F32).unwrap();
    bn.weight.set_grad(Some(Tensor::ones(&[4], DType::F32).unwrap())).unwrap();
    move_to_device(&bn, gpu).unwrap();
    for t in [&bn.weight, &bn.bias, &bn.stats.mean, &bn.stats.var] {
        assert_eq!(t.device(), gpu);
    }
    assert_eq!(bn.weight.grad().unwrap().device(), gpu, "an accumulated gradient moves with its parameter");
    assert_eq!(bn.num_batches_tracked.device(), Device::Cpu);
    // And back: the host copy has the same values.
    move_to_device(&bn, Device::Cpu).unwrap();
    assert_eq!(bn.stats.var.to_f64_vec(), vec![1.0; 4]);
    // A view cannot move in place (it does not own its storage).
    let whole = randn(&[4, 4], 1.0, 2);
    let err = whole.narrow(0, 1, 2).unwrap().move_to_device(gpu).unwrap_err().to_string();
    assert!(err.contains("to_device"), "{err}");
}

// ---------------------------------------------------------------- optimisers

/// Shapes with scalar tails (odd sizes), matrices (LARS adapts those) and vectors (it does not).
const SHAPES: &[&[usize]] = &[&[7, 13], &[13], &[4099], &[64, 33], &[1], &[3, 2, 5]];
const STEPS: usize = 8;

fn make_params(device: Device) -> Vec<Tensor> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| randn(s, 0.5, 10 + i as u64).to_device(device).unwrap().requires_grad().unwrap())
        .collect()
}

/// Back-propagates L = Σᵢ Σ (0.5·wᵢ² + cᵢ·wᵢ) with a new random cᵢ each step, so the gradient
/// wᵢ + cᵢ depends on where the weights went (the two runs must stay together to agree).
fn backprop(params: &[Tensor], step: usize, device: Device) {
    let mut loss: Option<Tensor> = None;
    for (i, p) in params.iter().enumerate() {
        let c = randn(p.shape(), 0.3, 1000 * step as u64 + i as u64).to_device(device).unwrap();
        let term = p.mul(p).unwrap().mul_scalar(0.5).unwrap().add(&p.mul(&c).unwrap()).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            None => term,
            Some(l) => l.add(&term).unwrap(),
        });
    }
    loss.unwrap().backward().unwrap();
}

type MakeOpt = fn(Vec<Tensor>) -> Box<dyn Optimizer>;

/// Runs STEPS steps (a changing learning rate, gradient clipping on) on the CPU and on the
/// device from the same weights; compares the weights, clipping norms and state buffers.
fn check_optimizer(name: &str, make: MakeOpt, base_lr: f64, atol: f64, rtol: f64) {
    let gpu = emulated_gpu();
    let run = |device: Device| {
        let params = make_params(device);
        let mut opt = make(params.clone());
        let mut norms = Vec::new();
        for step in 0..STEPS {
            opt.set_lr(base_lr * (step + 1) as f64 / STEPS as f64);
            opt.zero_grad();
            backprop(&params, step, device);
            norms.push(clip_grad_norm(&params, 4.0).unwrap());
            opt.step().unwrap();
        }
        (params, opt, norms)
    };
    let (cpu_params, cpu_opt, cpu_norms) = run(Device::Cpu);
    let (dev_params, dev_opt, dev_norms) = run(gpu);
    // Gradient norms: f32 sums on the device, f64 on the CPU.
    assert_close(&format!("{name}: gradient norms"), &dev_norms, &cpu_norms, 0.0, 1e-5);
    for (i, (c, d)) in cpu_params.iter().zip(&dev_params).enumerate() {
        assert_eq!(d.device(), gpu, "{name}: parameter {i} left the device");
        assert_close(&format!("{name}: parameter {i} {:?}", SHAPES[i]), &values(d), &values(c), atol, rtol);
    }
    let (cpu_state, dev_state) = (cpu_opt.state(), dev_opt.state());
    assert_eq!(cpu_state.steps, dev_state.steps, "{name}");
    assert_eq!(cpu_state.buffers.len(), dev_state.buffers.len(), "{name}: state buffers");
    for ((cn, ct), (dn, dt)) in cpu_state.buffers.iter().zip(&dev_state.buffers) {
        assert_eq!(cn, dn);
        assert_eq!(dt.device(), gpu, "{name}: state `{dn}` must live on the parameter's device");
        // Adam's second moment is ~g² (≪ 1): compare it relative to its own scale.
        assert_close(&format!("{name}: state `{dn}`"), &values(dt), &values(ct), atol * 1e-2, rtol);
    }
}

// Tolerances: the device runs the CPU's operations in the same order in f32; what differs is
// the rounding of f32 sums (norms, and through them the clipping scale and LARS's trust ratio:
// the CPU sums in f64) and of the few products the CPU takes in f64. Observed over 8 coupled
// steps: AdamW and plain SGD bitwise equal, Adam/SGD+momentum/LARS within 1.2e-7 (one f32 ulp
// at |w| ≈ 1); the bound 1e-6 + 1e-6·|w| is ~10 ulps.

#[test]
fn adamw_on_the_device_tracks_the_cpu() {
    check_optimizer("adamw", |p| Box::new(AdamW::new(p, 1e-2, 0.05, true).unwrap()), 1e-2, 1e-6, 1e-6);
}

#[test]
fn adam_with_l2_decay_on_the_device_tracks_the_cpu() {
    check_optimizer("adam", |p| Box::new(AdamW::new(p, 1e-2, 0.05, false).unwrap()), 1e-2, 1e-6, 1e-6);
}

#[test]
fn sgd_on_the_device_tracks_the_cpu() {
    check_optimizer("sgd+momentum", |p| Box::new(Sgd::new(p, 0.05, 0.9, 1e-3).unwrap()), 0.05, 1e-6, 1e-6);
    check_optimizer("plain sgd", |p| Box::new(Sgd::new(p, 0.05, 0.0, 0.0).unwrap()), 0.05, 1e-6, 1e-6);
}

#[test]
fn lars_on_the_device_tracks_the_cpu() {
    check_optimizer("lars", |p| Box::new(Lars::new(p, 0.5, 0.9, 1e-4, 1e-3).unwrap()), 0.5, 1e-6, 1e-6);
}

#[test]
fn a_device_step_leaves_earlier_views_and_exported_state_alone() {
    let gpu = emulated_gpu();
    let params = make_params(gpu);
    let mut opt = AdamW::new(params.clone(), 0.1, 0.0, true).unwrap();
    backprop(&params, 0, gpu);
    opt.step().unwrap();
    // A view of the weights (as a graph saves them) and a state snapshot (as a checkpoint takes
    // it) share storage with what the fused kernel updates in place: they must keep their values.
    let view = params[0].detach();
    let view_before = values(&view);
    let snapshot = opt.state();
    let m_before = values(&snapshot.buffers[0].1);
    opt.zero_grad();
    backprop(&params, 1, gpu);
    opt.step().unwrap();
    assert_eq!(values(&view), view_before, "a view taken before the step changed");
    assert_eq!(values(&snapshot.buffers[0].1), m_before, "an exported state buffer changed");
    assert_ne!(values(&params[0]), view_before, "the parameter itself must have moved");
    // A parameter listed twice would lock itself: refused with an error instead.
    let twice = vec![params[1].clone(), params[1].clone()];
    let mut bad = Lars::new(twice, 0.1, 0.9, 0.0, 1e-3).unwrap();
    let err = bad.step().unwrap_err().to_string();
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn grad_norm_reads_device_gradients() {
    let gpu = emulated_gpu();
    let (cpu, dev) = (make_params(Device::Cpu), make_params(gpu));
    backprop(&cpu, 3, Device::Cpu);
    backprop(&dev, 3, gpu);
    let (a, b) = (grad_norm(&cpu).unwrap(), grad_norm(&dev).unwrap());
    assert!((a - b).abs() <= 1e-6 * a, "cpu {a} vs device {b}");
}

// ---------------------------------------------------------------- a projection head

#[test]
fn a_projection_head_trained_on_the_device_tracks_the_cpu_loss() {
    let gpu = emulated_gpu();
    let x = randn(&[16, 32], 1.0, 7);
    let y = randn(&[16, 8], 1.0, 8);
    let run = |device: Device| -> (Vec<f64>, Mlp) {
        let mut head = Mlp::new(&[32, 32, 8], Activation::Relu, DType::F32, &mut Rng::new(3)).unwrap();
        move_to_device(&head, device).unwrap();
        let params: Vec<Tensor> = parameters(&head).into_iter().map(|(_, p)| p).collect();
        let mut opt = AdamW::new(params.clone(), 3e-3, 1e-4, true).unwrap();
        let (x, y) = (x.to_device(device).unwrap(), y.to_device(device).unwrap());
        let mut losses = Vec::new();
        for _ in 0..6 {
            opt.zero_grad();
            let d = head.forward(&x).unwrap().sub(&y).unwrap();
            let loss = d.mul(&d).unwrap().mean_all().unwrap();
            assert_eq!(loss.device(), device);
            losses.push(loss.item().unwrap());
            loss.backward().unwrap();
            clip_grad_norm(&params, 1.0).unwrap();
            opt.step().unwrap();
        }
        (losses, head)
    };
    let (cpu_losses, cpu_head) = run(Device::Cpu);
    let (dev_losses, dev_head) = run(gpu);
    assert!(cpu_losses[5] < cpu_losses[0], "the head did not learn: {cpu_losses:?}");
    // Per step: f32 GEMM and reductions summed in another order, then 6 coupled updates.
    assert_close("loss per step", &dev_losses, &cpu_losses, 0.0, 1e-5);
    for ((n, c), (_, d)) in state_dict(&cpu_head).iter().zip(state_dict(&dev_head).iter()) {
        assert_close(n, &values(d), &values(c), 1e-5, 1e-4);
    }
}

/// The order-aware temporal aggregations (`--temporal transformer` and `motion`) on the device:
/// the same output and the same gradients for the frame features and every parameter as on
/// the CPU.
#[test]
fn the_temporal_transformers_on_the_device_match_the_cpu() {
    let gpu = emulated_gpu();
    let x = randn(&[4, 5, 64], 1.0, 9);
    /// Clip features, their gradient w.r.t. the frame features, and each parameter's gradient.
    type Pass = (Vec<f64>, Vec<f64>, Vec<(String, Vec<f64>)>);
    for (kind, width) in [(TemporalKind::Transformer, 64), (TemporalKind::Motion, 128)] {
        let weights = randn(&[4, width], 1.0, 10);
        let run = |device: Device| -> Pass {
            let mut pooling = TemporalPooling::new(kind, 5, 64, DType::F32, &mut Rng::new(4)).unwrap();
            move_to_device(&pooling, device).unwrap();
            let x = x.to_device(device).unwrap().requires_grad().unwrap();
            let y = pooling.forward(&x).unwrap();
            assert_eq!((y.shape(), y.device()), (&[4usize, width][..], device));
            y.mul(&weights.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            let grads = parameters(&pooling).into_iter().map(|(n, p)| (n, values(&p.grad().unwrap()))).collect();
            (values(&y), values(&x.grad().unwrap()), grads)
        };
        let (cpu_y, cpu_dx, cpu_grads) = run(Device::Cpu);
        let (dev_y, dev_dx, dev_grads) = run(gpu);
        assert_close(&format!("{kind:?}: clip features"), &dev_y, &cpu_y, 1e-5, 1e-4);
        assert_close(&format!("{kind:?}: frame-feature gradient"), &dev_dx, &cpu_dx, 1e-5, 1e-4);
        assert_eq!(cpu_grads.len(), dev_grads.len());
        for ((name, c), (_, d)) in cpu_grads.iter().zip(&dev_grads) {
            assert_close(&format!("{kind:?}: {name}"), d, c, 1e-5, 1e-4);
        }
    }
}

// ---------------------------------------------------------------- checkpoints

fn tiny_spec() -> ModelSpec {
    ModelSpec {
        base_model: "resnet18".into(),
        num_frames: 2,
        image_size: 16,
        width: 0.125,
        small_stem: true,
        temporal: "mean".into(),
        projection_dim: 8,
        temperature: 0.5,
    }
}

/// Gives every parameter the same pseudo-random gradient on `device` (no forward pass: this
/// tests the state around the model, not the convolution kernels).
fn give_grads(params: &[Tensor], step: u64, device: Device) {
    for (i, p) in params.iter().enumerate() {
        p.set_grad(Some(randn(p.shape(), 0.1, 500 * step + i as u64).to_device(device).unwrap())).unwrap();
    }
}

#[test]
fn checkpoints_save_from_the_device_and_resume_onto_it() {
    let gpu = emulated_gpu();
    let dir = temp_dir("checkpoint");
    let spec = tiny_spec();
    let model = spec.build(&mut Rng::new(4)).unwrap();
    move_to_device(&model, gpu).unwrap();
    let params: Vec<Tensor> = parameters(&model).into_iter().map(|(_, p)| p).collect();
    let mut opt = AdamW::new(params.clone(), 1e-3, 1e-4, true).unwrap();
    for step in 0..2 {
        give_grads(&params, step, gpu);
        opt.step().unwrap();
    }
    let state = TrainState {
        epochs_done: 1,
        global_step: 2,
        config: TrainConfig { device: "cuda".into(), ..TrainConfig::default() },
        dataset: DatasetIdentity { clips: 8, frames: 2, height: 16, width: 16 },
        epoch_steps_done: 0,
        epoch_loss_sum: 0.0,
        version: simclr::checkpoint::STATE_VERSION,
    };
    let path = save_checkpoint(&dir, &model, &spec, &opt.state(), &state).unwrap();

    // On the CPU: the same weights and buffers, bit for bit.
    let (cpu_model, _, epoch) = load_model(&path).unwrap();
    assert_eq!(epoch, 1);
    for ((n, d), (_, c)) in state_dict(&model).iter().zip(state_dict(&cpu_model).iter()) {
        assert_eq!(c.device(), Device::Cpu);
        assert_eq!(values(d), c.to_f64_vec(), "{n}");
    }

    // Resumed onto the device: weights and optimiser state go back there, and the next steps
    // are exactly those of the model that never stopped (same kernels, same inputs).
    let resumed = spec.build(&mut Rng::new(99)).unwrap();
    move_to_device(&resumed, gpu).unwrap();
    load_weights_into(&path, &resumed, &spec).unwrap();
    let resumed_params: Vec<Tensor> = parameters(&resumed).into_iter().map(|(_, p)| p).collect();
    let mut resumed_opt = AdamW::new(resumed_params.clone(), 1e-3, 1e-4, true).unwrap();
    let (_, opt_state) = load_train_state(&path).unwrap();
    resumed_opt.load_state(&opt_state).unwrap();
    let loaded = resumed_opt.state();
    assert_eq!(loaded.steps, 2);
    assert!(!loaded.buffers.is_empty() && loaded.buffers.iter().all(|(_, t)| t.device() == gpu));
    for t in state_dict(&resumed).iter().filter(|(_, t)| t.dtype() == DType::F32) {
        assert_eq!(t.1.device(), gpu, "{} was not put back on the device", t.0);
    }
    for step in 2..4 {
        give_grads(&params, step, gpu);
        opt.step().unwrap();
        give_grads(&resumed_params, step, gpu);
        resumed_opt.step().unwrap();
    }
    for ((n, a), (_, b)) in state_dict(&model).iter().zip(state_dict(&resumed).iter()) {
        assert_eq!(values(a), values(b), "{n} differs after resuming");
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------- out of memory

#[test]
fn running_out_of_device_memory_says_reduce_batch_size() {
    devices::use_emulator();
    // A 1 MiB device: the head fits (~0.13 MiB of weights), a batch of 1024 rows does not.
    devices::insert_emulated(5, 1 << 20).unwrap();
    let gpu = Device::Cuda(5);
    let mut head = Mlp::new(&[128, 128, 128], Activation::Relu, DType::F32, &mut Rng::new(1)).unwrap();
    move_to_device(&head, gpu).unwrap();
    let small = randn(&[8, 128], 1.0, 2).to_device(gpu).unwrap();
    head.forward(&small).unwrap();
    let err = randn(&[1024, 128], 1.0, 3)
        .to_device(gpu)
        .and_then(|x| head.forward(&x))
        .expect_err("1024 × 128 activations cannot fit in 1 MiB")
        .to_string();
    assert!(err.contains("out of memory") && err.contains("reduce --batch_size"), "{err}");
    // The device is still usable after the error.
    head.forward(&small).unwrap();
}

// ---------------------------------------------------------------- simclr-train --device cuda

fn run_bin(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove(devices::EMULATOR_MEMORY_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run binary")
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// 4 clips of 2 frames of 20×20: two steps of 2 clips (the emulator runs ~1000× slower than a GPU).
fn tiny_dataset(dir: &Path) {
    tiny_dataset_of(dir, 4);
}

/// `clips` clips of 2 frames of 20×20.
fn tiny_dataset_of(dir: &Path, clips: usize) {
    let clips = clips.to_string();
    let out = run_bin(
        env!("CARGO_BIN_EXE_simclr-data"),
        &["bouncing", "--out", s(dir), "--clips", &clips, "--frames", "2", "--size", "20", "--seed", "5"],
        &[],
    );
    assert_ok(&out, "simclr-data bouncing");
}

/// A ResNet-18 at width 0.125 on 8×8 frames: the smallest model the emulated GPU trains quickly.
const TINY_RESNET: &[&str] = &["--base_model", "resnet18", "--width", "0.125", "--small_stem", "--image_size", "8"];

/// The largest |a − b| over two weight files, and the fraction of values differing by more than 1e-5.
fn weight_differences(a: &Path, b: &Path) -> (f64, f64) {
    let load = |p: &Path| {
        let (mut t, _) = load_safetensors(p).unwrap();
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t
    };
    let (ta, tb) = (load(a), load(b));
    assert_eq!(ta.len(), tb.len());
    let (mut max, mut off, mut total) = (0.0f64, 0usize, 0usize);
    for ((na, x), (nb, y)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        for (u, v) in x.to_f64_vec().iter().zip(y.to_f64_vec()) {
            let d = (u - v).abs();
            max = max.max(d);
            off += (d > 1e-5) as usize;
            total += 1;
        }
    }
    (max, off as f64 / total as f64)
}

/// The per-step records of a metrics.jsonl.
fn step_records(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .collect()
}

const EMULATOR: (&str, &str) = (devices::EMULATOR_ENV, "1");

/// `simclr-train` on the emulated GPU (in f32) and on the CPU with the same seed: both finish,
/// the GPU run logs its memory, and the first steps' losses agree to `rtol`.
fn train_on_both(name: &str, model_flags: &[&str], rtol: f64, resume: bool) {
    let dir = temp_dir(name);
    let data = dir.join("data");
    tiny_dataset(&data);
    let train = env!("CARGO_BIN_EXE_simclr-train");
    let common = [
        "--processed_dir",
        s(&data),
        "--epochs",
        "1",
        "--batch_size",
        "2",
        "--num_frames",
        "2",
        "--lr",
        "1e-3",
        "--warmup_fraction",
        "0",
        "--seed",
        "7",
        "--workers",
        "1",
        "--precision",
        "f32",
    ];
    let args = |out: &Path, device: &str| -> Vec<String> {
        let mut a: Vec<String> = common.iter().chain(model_flags).map(|x| x.to_string()).collect();
        a.extend(["--device", device, "--out", s(out)].map(String::from));
        a
    };
    let (cpu_out, gpu_out) = (dir.join("cpu"), dir.join("gpu"));
    let cpu_args = args(&cpu_out, "cpu");
    assert_ok(&run_bin(train, &refs(&cpu_args), &[]), "CPU run");
    let t = Instant::now();
    let gpu_args = args(&gpu_out, "cuda");
    let stdout = assert_ok(&run_bin(train, &refs(&gpu_args), &[EMULATOR]), "emulated GPU run");
    eprintln!("{name}: the emulated GPU run took {:.1} s", t.elapsed().as_secs_f64());
    assert!(stdout.contains("CPU kernel emulator") && stdout.contains("clips/s"), "{stdout}");
    assert!(stdout.contains("peak GPU memory"), "{stdout}");
    assert!(
        gpu_out.join("final_model.safetensors").exists() && gpu_out.join("checkpoint_epoch_1.safetensors").exists()
    );

    let (cpu_steps, gpu_steps) = (step_records(&cpu_out), step_records(&gpu_out));
    assert_eq!(cpu_steps.len(), 2);
    assert_eq!(gpu_steps.len(), 2);
    for (c, g) in cpu_steps.iter().zip(&gpu_steps) {
        assert!(g["gpu_peak_mib"].as_f64().unwrap() > 0.0, "{g}");
        assert!(c.get("gpu_peak_mib").is_none(), "{c}");
        let (lc, lg) = (c["loss"].as_f64().unwrap(), g["loss"].as_f64().unwrap());
        assert!((lc - lg).abs() <= rtol * lc.abs(), "{name} step {}: loss {lg} on the GPU, {lc} on the CPU", c["step"]);
    }
    // The weights after two steps, saved from the device, are the CPU's: Adam moves a weight by
    // ~lr per step whatever its gradient's size, so where a gradient is ~0 the f32 noise can
    // flip a step's sign (up to ~1e-3 here, seen for a few ViViT weights); nearly every other
    // weight agrees to 1e-5. A missed or wrong update would move most of them by ~1e-3.
    let (max, off) =
        weight_differences(&cpu_out.join("final_model.safetensors"), &gpu_out.join("final_model.safetensors"));
    eprintln!("{name}: final weights differ by up to {max:.2e}; {:.4} % by more than 1e-5", 100.0 * off);
    assert!(max < 3e-3 && off < 1e-3, "{name}: weights differ by up to {max}, {off} of them by more than 1e-5");
    if resume {
        // One more epoch from each run's checkpoint, each on its own device: the GPU run gets its
        // weights and Adam's moments back on the device and carries on as the CPU run does.
        for (out, device, env) in [(&cpu_out, "cpu", &[][..]), (&gpu_out, "cuda", &[EMULATOR][..])] {
            let ckpt = out.join("checkpoint_epoch_1.safetensors");
            let args = ["--resume", s(&ckpt), "--epochs", "2", "--device", device, "--out", s(out), "--quiet"];
            assert_ok(&run_bin(train, &args, env), &format!("resumed {device} run"));
        }
        let (cpu_steps, gpu_steps) = (step_records(&cpu_out), step_records(&gpu_out));
        let steps: Vec<u64> = gpu_steps.iter().map(|r| r["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2, 3, 4], "{name}: the resumed GPU run's log");
        // Two updates in, the weights differ by the Adam sign flips above (seen: 2e-6 relative at
        // step 3): ten times the first steps' bound.
        for (c, g) in cpu_steps.iter().zip(&gpu_steps).skip(2) {
            let (lc, lg, rtol) = (c["loss"].as_f64().unwrap(), g["loss"].as_f64().unwrap(), 10.0 * rtol);
            eprintln!("{name} step {} (resumed): loss {lg} on the GPU, {lc} on the CPU", c["step"]);
            assert!((lc - lg).abs() <= rtol * lc.abs(), "{name} step {}: {lg} on the GPU, {lc} on the CPU", c["step"]);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

// In f32 (`--precision f32`) the loss of a step depends on the weights (equal at step 1, one
// update apart at step 2) and on f32 sums taken in another order on the device (convolutions,
// GEMMs, NT-Xent's log-sum-exp). Observed: ≤ 3e-7 relative. The bound 1e-5 leaves room for other
// summation orders and is far below what a missed update does to step 2 (checked on the CPU with
// lr 1e-12: +9 % for this ResNet, +2e-3 relative for this ViViT).

#[test]
fn simclr_train_resnet_on_the_emulated_gpu_tracks_the_cpu() {
    train_on_both("resnet", TINY_RESNET, 1e-5, true);
}

#[test]
fn simclr_train_vivit_on_the_emulated_gpu_tracks_the_cpu() {
    // ViViT's patches are 16 pixels: one patch per frame.
    train_on_both("vivit", &["--base_model", "vivit_tiny", "--image_size", "16"], 1e-5, false);
}

/// The default `--precision auto` (bf16 on a GPU) on the emulated GPU: one step of ViViT (its attention and
/// products on bf16 tensor cores under autocast, with f32 weights and optimiser), against the f32
/// CPU step. bf16 keeps 8 significant bits, so the loss agrees to ~1e-3 (seen: 4.4e-4) and the
/// gradient norm to a few per cent (seen: 0.6 %); the bf16 kernels' own accuracy is the parity
/// tests' business, this checks the trainer runs them and stays on course.
#[test]
fn simclr_train_in_bf16_on_the_emulated_gpu_stays_close_to_the_cpu() {
    let dir = temp_dir("bf16");
    let data = dir.join("data");
    tiny_dataset_of(&data, 2);
    let train = env!("CARGO_BIN_EXE_simclr-train");
    let (cpu_out, gpu_out) = (dir.join("cpu"), dir.join("gpu"));
    let args = |out: &Path, device: &str| -> Vec<String> {
        let flags = ["--processed_dir", s(&data), "--epochs", "1", "--batch_size", "2", "--num_frames", "2"];
        let more = ["--image_size", "16", "--base_model", "vivit_tiny", "--seed", "7", "--workers", "1"];
        flags.iter().chain(&more).chain(&["--device", device, "--out", s(out)]).map(|x| x.to_string()).collect()
    };
    assert_ok(&run_bin(train, &refs(&args(&cpu_out, "cpu")), &[]), "CPU run");
    // --device auto (the default) finds the (emulated) GPU and says so.
    let stdout = assert_ok(&run_bin(train, &refs(&args(&gpu_out, "auto")), &[EMULATOR]), "bf16 GPU run");
    assert!(stdout.contains("--device auto: CUDA (1 CUDA device(s)"), "{stdout}");
    assert!(stdout.contains("bf16 autocast"), "{stdout}");
    let (c, g) = (&step_records(&cpu_out)[0], &step_records(&gpu_out)[0]);
    let rel = |k: &str| (g[k].as_f64().unwrap() - c[k].as_f64().unwrap()).abs() / c[k].as_f64().unwrap().abs();
    eprintln!("bf16: loss differs by {:.1e}, gradient norm by {:.1e} (relative)", rel("loss"), rel("grad_norm"));
    assert!(rel("loss") < 5e-3, "bf16 loss {} vs f32 CPU {}", g["loss"], c["loss"]);
    assert!(rel("grad_norm") < 5e-2, "bf16 gradient norm {} vs f32 CPU {}", g["grad_norm"], c["grad_norm"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn simclr_train_out_of_device_memory_exits_cleanly() {
    let dir = temp_dir("oom");
    let data = dir.join("data");
    tiny_dataset(&data);
    let out_dir = dir.join("out");
    // A ResNet-18 at width 0.25 has ~2.8 MiB of weights: it cannot even move onto a 1 MiB device.
    let args = [
        "--processed_dir",
        s(&data),
        "--epochs",
        "1",
        "--batch_size",
        "2",
        "--num_frames",
        "2",
        "--image_size",
        "16",
        "--width",
        "0.25",
        "--small_stem",
        "--device",
        "cuda",
        "--quiet",
        "--out",
        s(&out_dir),
    ];
    let out = run_bin(env!("CARGO_BIN_EXE_simclr-train"), &args, &[EMULATOR, (devices::EMULATOR_MEMORY_ENV, "1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("CUDA out of memory") && err.contains("reduce --batch_size"), "{err}");
    assert!(!out_dir.join("final_model.safetensors").exists());

    // --ddp counts the GPUs: the emulator is one device.
    let mut ddp = args.to_vec();
    ddp.extend(["--ddp", "--num_gpus", "2"]);
    let out = run_bin(env!("CARGO_BIN_EXE_simclr-train"), &ddp, &[EMULATOR]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--num_gpus") && err.contains("1 CUDA device"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Deterministic mode end to end: one `simclr-train --device cuda` step — ResNet convolutions
/// whose weight gradients split over blocks — under two block-order seeds of the emulator gives
/// the same loss and bitwise the same weights. (In f32, whose SIMT kernels emulate several times
/// faster than the tensor-core ones; the bf16 kernels and attention's dQ are checked the same way
/// in tests/cuda_parity/determinism.rs. With the atomic path forced, this test fails: the
/// weights of the two runs differ by up to 9.3e-10.)
#[test]
fn simclr_train_is_bitwise_independent_of_the_block_order() {
    let dir = temp_dir("block_order");
    let data = dir.join("data");
    tiny_dataset_of(&data, 2);
    let train = env!("CARGO_BIN_EXE_simclr-train");
    let run = |name: &str, seed: &str| -> (Vec<f64>, PathBuf) {
        let out = dir.join(name);
        // 2 clips × 2 views × 2 frames of 8×8: 512 output pixels in the first layers, whose
        // weight gradients split over 8 blocks (16-pixel k-tiles of the f32 kernel).
        let mut args = vec!["--processed_dir", s(&data), "--epochs", "1", "--batch_size", "2", "--num_frames", "2"];
        args.extend_from_slice(TINY_RESNET);
        args.extend(["--precision", "f32", "--seed", "7", "--workers", "1", "--device", "cuda", "--quiet"]);
        args.extend(["--out", s(&out)]);
        assert_ok(&run_bin(train, &args, &[EMULATOR, ("SIMCLR_EMU_BLOCK_SEED", seed)]), name);
        let losses = step_records(&out).iter().map(|r| r["loss"].as_f64().unwrap()).collect();
        (losses, out.join("final_model.safetensors"))
    };
    let (loss_a, weights_a) = run("order_a", "101");
    let (loss_b, weights_b) = run("order_b", "202");
    assert_eq!(loss_a.len(), 1);
    assert_eq!(loss_a, loss_b, "the loss depends on the block order");
    let (max, _) = weight_differences(&weights_a, &weights_b);
    assert_eq!(max, 0.0, "the weights depend on the block order (up to {max:.2e})");
    std::fs::remove_dir_all(&dir).ok();
}

/// Synchronised batch norm on GPU ranks (its device path: f32 tensor ops, the collectives on
/// device tensors, which the thread communicator stages through host memory): the output,
/// the running statistics and every gradient of the host path over the same ranks.
#[test]
fn sync_batch_norm_on_gpu_ranks_matches_the_host_path() {
    let gpu = emulated_gpu();
    let (n, c, h, w) = (8, 3, 3, 2);
    let x = randn(&[n, c, h, w], 2.0, 31).add_scalar(0.7).unwrap();
    let upstream = randn(&[n, c, h, w], 1.0, 32); // weights of the scalar Σ R ⊙ y
    let gamma = Tensor::from_f64s(&[0.5, 1.5, -1.0], &[c], DType::F32).unwrap();
    let beta = Tensor::from_f64s(&[0.1, 0.0, -0.3], &[c], DType::F32).unwrap();
    for world in [2, 4] {
        let b = n / world;
        // Per rank: y, dx, dγ, dβ (this rank's), running mean and variance.
        let run = |device: Device| -> Vec<[Vec<f64>; 6]> {
            let comms = ThreadGroup::new(world, Duration::from_secs(60)).unwrap();
            let (x, upstream, gamma, beta) = (&x, &upstream, &gamma, &beta);
            std::thread::scope(|scope| {
                let ranks: Vec<_> = comms
                    .into_iter()
                    .map(|comm| {
                        scope.spawn(move || {
                            let comm: Arc<dyn Communicator> = Arc::new(comm);
                            let on = |t: &Tensor| t.narrow(0, comm.rank() * b, b).unwrap().to_device(device).unwrap();
                            let xl = on(x).requires_grad().unwrap();
                            let gl = gamma.to_device(device).unwrap().requires_grad().unwrap();
                            let bl = beta.to_device(device).unwrap().requires_grad().unwrap();
                            let mut stats = RunningStats::new(c, DType::F32).unwrap();
                            stats.mean = stats.mean.to_device(device).unwrap();
                            stats.var = stats.var.to_device(device).unwrap();
                            let y =
                                sync_batch_norm_2d(&xl, Some(&gl), Some(&bl), &mut stats, true, 1e-5, &comm).unwrap();
                            assert_eq!(y.device(), device);
                            y.mul(&on(upstream)).unwrap().sum_all().unwrap().backward().unwrap();
                            [&y, &xl.grad().unwrap(), &gl.grad().unwrap(), &bl.grad().unwrap(), &stats.mean, &stats.var]
                                .map(values)
                        })
                    })
                    .collect();
                ranks.into_iter().map(|r| r.join().unwrap()).collect()
            })
        };
        let (host, device) = (run(Device::Cpu), run(gpu));
        let names = ["output", "dx", "dgamma", "dbeta", "running mean", "running var"];
        for (rank, (h, d)) in host.iter().zip(&device).enumerate() {
            for (name, (h, d)) in names.iter().zip(h.iter().zip(d)) {
                assert_close(&format!("W={world} rank {rank} {name}"), d, h, 1e-5, 1e-4);
            }
        }
    }
}

/// `--dist_backend auto` on emulated GPUs: TCP, saying why; device tensors through it come back
/// on the device with their values. `nccl` is refused with the reason.
#[test]
fn emulated_gpu_ranks_get_tcp_and_are_told_why() {
    let gpu = emulated_gpu();
    let env = DistEnv {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
        launcher: Launcher::Torchrun,
    };
    let (comm, which) = connect_rank(&env, DistBackend::Auto, gpu, Duration::from_secs(30)).unwrap();
    assert!(which.contains("TCP") && which.contains("no NCCL"), "{which}");
    let x = randn(&[3, 4], 1.0, 5);
    for result in [comm.all_reduce_sum(&x.to_device(gpu).unwrap()), comm.broadcast(&x.to_device(gpu).unwrap(), 0)] {
        let result = result.unwrap();
        assert_eq!(result.device(), gpu);
        assert_eq!(values(&result), values(&x));
    }
    let err = connect_rank(&env, DistBackend::Nccl, gpu, Duration::from_secs(30)).err().unwrap().to_string();
    assert!(err.contains("nccl is not available"), "{err}");
}

/// `--ddp --device cuda` with 2 and 4 GPU ranks (the emulator says it has 4 devices) over the
/// TCP communicator, which stages the device tensors of every collective through host memory:
/// the same training as the same ranks on the CPU, with per-rank and with synchronised batch
/// norm. (The comparison is rank for rank; that CPU ranks equal one process is
/// tests/ddp_launch.rs's.)
#[test]
fn ddp_gpu_ranks_train_as_cpu_ranks_do() {
    let dir = temp_dir("ddp_gpu");
    let data = dir.join("data");
    tiny_dataset(&data);
    let train = env!("CARGO_BIN_EXE_simclr-train");
    // Per-rank batch norm with 2 and 4 ranks; synchronised batch norm (on the device: its
    // statistics all-gathered, its gradient sums all-reduced as device tensors) with 2.
    for (ranks, sync_bn) in [("2", false), ("4", false), ("2", true)] {
        let run = |device: &str| -> PathBuf {
            let out = dir.join(format!("{device}{ranks}{}", if sync_bn { "sync" } else { "" }));
            let args = [
                "--processed_dir",
                s(&data),
                "--epochs",
                "1",
                "--batch_size",
                "4",
                "--num_frames",
                "2",
                "--precision",
                "f32",
                "--optimizer",
                "sgd",
                "--lr",
                "0.05",
                "--seed",
                "7",
                "--workers",
                "1",
                "--ddp",
                "--num_gpus",
                ranks,
                "--device",
                device,
                "--quiet",
                "--out",
                s(&out),
            ]
            .iter()
            .chain(TINY_RESNET)
            .chain(if sync_bn { &["--sync_bn"][..] } else { &[] })
            .copied()
            .collect::<Vec<&str>>();
            let env = [EMULATOR, (devices::EMULATOR_DEVICES_ENV, "4")];
            assert_ok(&run_bin(train, &args, &env), &format!("{ranks} {device} ranks"));
            out.join("final_model.safetensors")
        };
        let (cpu, gpu) = (run("cpu"), run("cuda"));
        // One SGD step of lr 0.05 moves a weight by ~1e-3 to 1e-2; gradients summed instead of
        // averaged, or one rank's missing, would be off by as much. f32 sums taken in another
        // order on the device, through batch norm over each rank's 4 or 8 images, stay far
        // below (seen: 2.3e-6 with 2 ranks, 6.3e-5 with 4).
        let (max, _) = weight_differences(&cpu, &gpu);
        eprintln!("{ranks} GPU ranks vs CPU ranks (sync BN {sync_bn}): weights differ by up to {max:.2e}");
        assert!(max < 1e-3, "{ranks} ranks (sync BN {sync_bn}): GPU and CPU weights differ by up to {max}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
