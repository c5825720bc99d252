//! CPU benchmark of one SimCLR training step, as `src/train.rs` runs it
//! (zero_grad → `model.loss(&v1, &v2)` → `loss.backward()` → `opt.step()`,
//! Adam), for three models (`SIMCLR_BENCH_CASES=demo,resnet18,vivit_tiny` picks some):
//! 1. `demo`: the quick demo's encoder (resnet18 at width 0.25, 4 frames of 32×32,
//!    batch 128, temporal mean; `src/bin/simclr-train/demo.rs`);
//! 2. `resnet18`: full width on 20 frames of 64×64 (the baseline's clip length), batch 8;
//! 3. `vivit_tiny`: 8 frames of 64×64, batch 8.
//!
//! The views are random `[B, T, 3, S, S]` tensors: data loading and
//! augmentation are measured on their own in benches/data_loader.rs.
//! Per model: one warm-up step, then a few timed steps; clips/s and the
//! forward / backward / optimiser split are medians over the timed steps.
//! `SIMCLR_OP_TIMES=1` adds a table of the time per op (forward and backward; autograd::op_times).
//! `SIMCLR_BENCH_PRECISION=bf16` runs the steps under bf16 autocast (`--precision bf16`: the
//! matmul and conv GEMM operands in bf16 on CPUs with AVX512-BF16), its `RESULT` lines as `simclr-bf16`.
//! (train.rs's forward time also reads the loss, as here; its backward time
//! also includes the gradient-norm check, which is left out here.) Each model
//! ends with one `RESULT` line for tools/bench_cpu_vs_torch.sh, which runs the
//! same steps in PyTorch (tools/torch_reference/bench_cpu_step.py) beside it.
//!
//! Reference measured in the same run, just before each model's steps: the
//! f32 GEMM throughput of the tensor `matmul` (backend::cpu::matmul) on 1024³
//! with all threads; it is measured again at the end, and if the machine's
//! load changed during the run the GEMM rates differ and the ratios are not to
//! be trusted. The ResNet steps' FLOPs are counted analytically (2 per multiply-add
//! of the convolutions, linear layers and NT-Xent's similarity GEMM; forward +
//! backward ≈ 3 × forward), so `step/gemm` says what fraction of the machine's
//! GEMM rate a whole training step reaches.
//!
//! Run: `cargo bench --bench train_step` (tools/bench_train.sh saves the output
//! under benches/results/ with the machine, date and commit).

mod common;

use simclr::autograd::op_times;
use simclr::checkpoint::ModelSpec;
use simclr::config::TrainConfig;
use simclr::nn::{parameter_count, parameters, Module};
use simclr::ops::autocast::autocast;
use simclr::train::build_optimizer;
use simclr::{DType, Rng, Tensor};
use std::time::Instant;

fn header() {
    common::print_header("CPU training-step benchmark", &["src", "benches/train_step.rs", "Cargo.toml"]);
    println!("# dtype f32; times are medians; GFLOP/s counts 2 flops per multiply-add");
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

/// Multiply-adds of a k×k convolution, stride `stride`, padding `pad`, on an
/// `hw`×`hw` input; returns them with the output side.
fn conv_macs(cin: usize, cout: usize, hw: usize, k: usize, stride: usize, pad: usize) -> (f64, usize) {
    let out = (hw + 2 * pad - k) / stride + 1;
    ((out * out * cout * cin * k * k) as f64, out)
}

/// Forward multiply-adds of one frame through the ResNet encoder, walking the
/// architecture of src/nn/resnet.rs (stem, four stages, downsample 1×1 convs;
/// batch norm, ReLU, pooling and the residual adds are not counted).
fn resnet_frame_macs(spec: &ModelSpec) -> f64 {
    let (blocks, bottleneck) = match spec.base_model.as_str() {
        "resnet18" => ([2, 2, 2, 2], false),
        "resnet34" => ([3, 4, 6, 3], false),
        "resnet50" => ([3, 4, 6, 3], true),
        other => panic!("FLOP count: not a ResNet: {other}"),
    };
    let base = ((64.0 * spec.width).round() as usize).max(1);
    let (mut macs, mut hw) = if spec.small_stem {
        conv_macs(3, base, spec.image_size, 3, 1, 1)
    } else {
        let (m, out) = conv_macs(3, base, spec.image_size, 7, 2, 3);
        (m, (out + 2 - 3) / 2 + 1) // max-pool 3×3/2, padding 1
    };
    let mut cin = base;
    for (s, &n) in blocks.iter().enumerate() {
        let planes = base << s;
        for b in 0..n {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let input = hw;
            let out_ch = if bottleneck {
                let (m1, _) = conv_macs(cin, planes, hw, 1, 1, 0);
                let (m2, o) = conv_macs(planes, planes, hw, 3, stride, 1);
                let (m3, _) = conv_macs(planes, planes * 4, o, 1, 1, 0);
                macs += m1 + m2 + m3;
                hw = o;
                planes * 4
            } else {
                let (m1, o) = conv_macs(cin, planes, hw, 3, stride, 1);
                let (m2, _) = conv_macs(planes, planes, o, 3, 1, 1);
                macs += m1 + m2;
                hw = o;
                planes
            };
            if stride != 1 || cin != out_ch {
                macs += conv_macs(cin, out_ch, input, 1, stride, 0).0;
            }
            cin = out_ch;
        }
    }
    macs
}

/// Forward FLOPs of one `SimClr::loss` on a batch of `batch` clips (2·batch
/// clips through the encoder, the projection head, NT-Xent's 2B×2B similarities).
fn forward_flops(spec: &ModelSpec, batch: usize, feature_dim: usize) -> f64 {
    let clips = 2 * batch;
    let frames = (clips * spec.num_frames) as f64;
    let (d, p) = (feature_dim as f64, spec.projection_dim as f64);
    let head = clips as f64 * (d * d + d * p);
    let similarities = (clips * clips) as f64 * p;
    2.0 * (frames * resnet_frame_macs(spec) + head + similarities)
}

/// f32 GEMM rate of the tensor `matmul` on n×n×n, all threads (median of ≥ 3 runs, ~1 s).
fn gemm_gflops(n: usize, rng: &mut Rng) -> f64 {
    let a = Tensor::randn(&[n, n], 1.0, DType::F32, rng).unwrap();
    let b = Tensor::randn(&[n, n], 1.0, DType::F32, rng).unwrap();
    a.matmul(&b).unwrap(); // warm-up: allocator, thread pool
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || (start.elapsed().as_secs_f64() < 1.0 && samples.len() < 50) {
        let t = Instant::now();
        a.matmul(&b).unwrap();
        samples.push(t.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / median(&samples) / 1e9
}

struct Case {
    key: &'static str,
    name: &'static str,
    spec: ModelSpec,
    batch: usize,
    lr: f64,
    steps: usize,
}

fn bench(case: &Case, gemm: f64, bf16: bool) {
    let Case { key, name, spec, batch, lr, steps } = case;
    let mut rng = Rng::new(0);
    let mut model = spec.build(&mut rng).unwrap();
    model.set_training(true);
    let params: Vec<Tensor> = parameters(&model).into_iter().map(|(_, p)| p).collect();
    let cfg = TrainConfig { lr: *lr, ..TrainConfig::default() };
    let mut opt = build_optimizer(&cfg, params).unwrap();
    let (t, s) = (spec.num_frames, spec.image_size);
    let v1 = Tensor::randn(&[*batch, t, 3, s, s], 1.0, DType::F32, &mut rng).unwrap();
    let v2 = Tensor::randn(&[*batch, t, 3, s, s], 1.0, DType::F32, &mut rng).unwrap();
    // FLOPs are counted for the ResNets only.
    let resnet = spec.base_model.starts_with("resnet");
    let flops = if resnet { 3.0 * forward_flops(spec, *batch, model.encoder.feature_dim()) } else { f64::NAN };

    println!("\n## {name}{}", if bf16 { ", bf16 autocast" } else { "" });
    println!(
        "# {} width {} {} stem, {t} frames x {s}x{s}, projection {}, batch {batch} clips \
         ({} frames through the encoder per step)",
        spec.base_model,
        spec.width,
        if spec.small_stem { "small" } else { "standard" },
        spec.projection_dim,
        2 * batch * t
    );
    println!(
        "# {} parameters; {:.2} GFLOP per step (3 x {:.2} forward); Adam, lr {lr}",
        parameter_count(&model),
        flops / 1e9,
        flops / 3e9
    );

    let (mut fwd, mut bwd, mut optim, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut loss_value = 0.0;
    for i in 0..=*steps {
        let step = Instant::now();
        opt.zero_grad();
        let t0 = Instant::now();
        op_times::mark();
        let loss = autocast(bf16, || model.loss(&v1, &v2)).unwrap();
        loss_value = loss.item().unwrap();
        let t1 = Instant::now();
        loss.backward().unwrap();
        drop(loss);
        let t2 = Instant::now();
        opt.step().unwrap();
        let t3 = Instant::now();
        let step_s = step.elapsed().as_secs_f64();
        if i == 0 {
            println!("# warm-up step {step_s:.2} s (loss {loss_value:.4}); then {steps} timed steps");
            op_times::take();
            continue;
        }
        fwd.push((t1 - t0).as_secs_f64());
        bwd.push((t2 - t1).as_secs_f64());
        optim.push((t3 - t2).as_secs_f64());
        total.push(step_s);
    }
    assert!(loss_value.is_finite(), "non-finite loss {loss_value}");
    if op_times::enabled() {
        println!("# time per op (SIMCLR_OP_TIMES=1), ms per step, means over the timed steps:");
        print!("{}", op_times::format_table(&op_times::take(), *steps as u64));
    }
    let step_s = median(&total);
    println!("{:<10} {:>10} {:>10}", "phase", "median s", "of step");
    for (phase, v) in [("forward", &fwd), ("backward", &bwd), ("optimizer", &optim), ("step", &total)] {
        println!("{:<10} {:>10.3} {:>10.3}", phase, median(v), median(v) / step_s);
    }
    let rate = flops / step_s / 1e9;
    let (min, max) = (total.iter().cloned().fold(f64::INFINITY, f64::min), total.iter().cloned().fold(0.0, f64::max));
    println!(
        "{:.2} clips/s ({:.0} frames/s through the encoder, 2 views); \
         step {rate:.1} GFLOP/s = {:.3} of the {gemm:.1} GFLOP/s GEMM (step/gemm); step times min {min:.3} max {max:.3} s",
        *batch as f64 / step_s,
        (2 * batch * t) as f64 / step_s,
        rate / gemm,
    );
    // case, clips/s, forward, backward, optimiser, step (medians, s), min and max step
    println!(
        "RESULT simclr{} {key} {:.4} {:.5} {:.5} {:.5} {step_s:.5} {min:.5} {max:.5}",
        if bf16 { "-bf16" } else { "" },
        *batch as f64 / step_s,
        median(&fwd),
        median(&bwd),
        median(&optim)
    );
}

fn main() {
    simclr::backend::cpu::heap::keep_freed_memory(); // as simclr-train does
    header();
    let mut rng = Rng::new(0);
    let n = 1024;

    let spec = |base_model: &str, num_frames, image_size, width, temperature| ModelSpec {
        base_model: base_model.into(),
        num_frames,
        image_size,
        width,
        small_stem: false,
        temporal: "mean".into(),
        projection_dim: 128,
        temperature,
    };
    let cases = [
        Case {
            key: "demo",
            name: "demo model (cargo run --release)",
            spec: spec("resnet18", 4, 32, 0.25, 0.2),
            batch: 128,
            lr: 3e-3,
            steps: 5,
        },
        Case {
            key: "resnet18",
            name: "resnet18 full width, 20 frames x 64x64",
            spec: spec("resnet18", 20, 64, 1.0, 0.5),
            batch: 8,
            lr: 3e-4,
            steps: 3,
        },
        Case {
            key: "vivit_tiny",
            name: "vivit_tiny, 8 frames x 64x64",
            spec: spec("vivit_tiny", 8, 64, 1.0, 0.5),
            batch: 8,
            lr: 3e-4,
            steps: 3,
        },
    ];
    let wanted = std::env::var("SIMCLR_BENCH_CASES").ok();
    let cases: Vec<&Case> =
        cases.iter().filter(|c| wanted.as_deref().is_none_or(|w| w.split(',').any(|k| k == c.key))).collect();
    if cases.is_empty() {
        panic!("SIMCLR_BENCH_CASES={wanted:?} names none of demo, resnet18, vivit_tiny");
    }
    let bf16 = match std::env::var("SIMCLR_BENCH_PRECISION").as_deref() {
        Err(_) | Ok("f32") => false,
        Ok("bf16") => true,
        Ok(other) => panic!("SIMCLR_BENCH_PRECISION={other:?}: use f32 or bf16"),
    };
    if bf16 && !simclr::backend::cpu::gemm_bf16::supported() {
        panic!("SIMCLR_BENCH_PRECISION=bf16: {}", simclr::ops::autocast::BF16_CPU_UNSUPPORTED);
    }
    for case in cases {
        let gemm = gemm_gflops(n, &mut rng);
        println!("\n## reference: f32 GEMM {n}x{n}x{n} (tensor matmul, all threads): {gemm:.1} GFLOP/s");
        bench(case, gemm, bf16);
    }
    println!("\n## reference again at the end: f32 GEMM {n}x{n}x{n}: {:.1} GFLOP/s", gemm_gflops(n, &mut rng));
}
