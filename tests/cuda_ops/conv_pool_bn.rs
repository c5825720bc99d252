//! Convolution, pooling and batch norm on the device vs the CPU — ResNet's ops — and a ResNet
//! stem and basic block composed from them. Channel counts and images are small: the kernel
//! emulator runs one OS thread per CUDA thread.

use super::common::*;
use simclr::backend::Device;
use simclr::ops::autocast::autocast;
use simclr::ops::batchnorm::{batch_norm_2d, RunningStats};
use simclr::ops::conv2d::conv2d;
use simclr::ops::pool::{adaptive_avg_pool2d, global_avg_pool2d, max_pool2d, temporal_mean};
use simclr::{DType, Result, Tensor};
use std::sync::Mutex;

/// f32 convolutions and batch norms: different summation orders, sums of at most a few
/// hundred terms.
const TOL: f64 = 1e-4;

/// The same values as a channels-last tensor (NCHW shape over NHWC memory), made on the
/// tensor's device inside the graph, so gradients flow back through the copy.
fn channels_last(t: &Tensor) -> Result<Tensor> {
    t.permute(&[0, 2, 3, 1])?.contiguous()?.permute(&[0, 3, 1, 2])
}

/// Whether an [N, C, H, W] tensor has channels-last strides.
fn has_channels_last_strides(t: &Tensor) -> bool {
    let s = t.shape();
    t.strides() == [s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]]
}

/// Fresh running statistics (mean `m0`, variance `v0`, both f32) on `device`, in `dtype`.
fn stats_on(m0: &Tensor, v0: &Tensor, dtype: DType, device: Device) -> Result<RunningStats> {
    Ok(RunningStats {
        mean: m0.to_dtype(dtype)?.to_device(device)?,
        var: v0.to_dtype(dtype)?.to_device(device)?,
        momentum: 0.1,
    })
}

/// `t` rounded to bf16 values, as f32 (what the CPU reference of a bf16 run gets).
fn bf16_values(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

/// The output of f(inputs) on `device` with the inputs in `dtype` (all values already
/// bf16-exact, so every run sees the same numbers), and, for f32 (bf16 tensors cannot be
/// trained), the gradient of every input of Σ out·w.
fn run_in(
    device: Device,
    dtype: DType,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<f64>, Vec<Vec<f64>>) {
    let train = dtype == DType::F32;
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            let t = t.to_dtype(dtype).unwrap().to_device(device).unwrap();
            if train {
                t.requires_grad().unwrap()
            } else {
                t
            }
        })
        .collect();
    let out = f(&leaves).unwrap_or_else(|e| panic!("{dtype} on {device:?}: {e}"));
    if !train {
        return (out.clone(), values(&out), Vec::new());
    }
    let w = bf16_values(&randn(out.shape(), 99)).to_device(device).unwrap();
    out.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = leaves.iter().map(|l| values(&l.grad().expect("a gradient for every input"))).collect();
    (out.clone(), values(&out), grads)
}

/// Asserts |got − want| ≤ tol·(max |want| + |want|) elementwise: bf16 results carry an error
/// relative to the scale of the whole tensor (cancellation makes small elements no more exact).
#[track_caller]
fn assert_close_scaled(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert_close(what, got, want, tol * scale, tol);
}

/// Checks `f` in bf16 on `device` against the CPU in f32 on the same (bf16-exact) values: the
/// forward with bf16 tensors, and, when `autocast_too`, forward and gradients with f32 tensors
/// under bf16 autocast. Values are compared to `tol` of each tensor's largest element.
fn check_bf16(
    what: &str,
    device: Device,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    autocast_too: bool,
    tol: f64,
) {
    let inputs: Vec<Tensor> = inputs.iter().map(bf16_values).collect();
    let (_, want, want_grads) = run_in(Device::Cpu, DType::F32, &inputs, f);
    let (out, got, _) = run_in(device, DType::BF16, &inputs, f);
    assert_eq!((out.device(), out.dtype()), (device, DType::BF16), "{what}: bf16 in, bf16 out, on the device");
    assert_close_scaled(&format!("{what} (bf16 tensors) forward"), &got, &want, tol);
    if autocast_too {
        let (out, got, grads) = autocast(true, || run_in(device, DType::F32, &inputs, f));
        assert_eq!((out.device(), out.dtype()), (device, DType::F32), "{what}: autocast returns f32");
        assert_close_scaled(&format!("{what} (autocast) forward"), &got, &want, tol);
        for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
            assert_close_scaled(&format!("{what} (autocast) d/d input {i}"), g, w, tol);
        }
        // f32 in and out, but computed in bf16: the outputs were rounded to 8-bit mantissas.
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff > 1e-6, "{what} under autocast: identical to the f32 result, so it did not run in bf16");
    }
}

device_test!(conv2d_resnet_geometries, |device| {
    // The 7×7 stride-2 stem on RGB (C = 3), odd image sizes, with a bias.
    let (x, w, b) = (randn(&[2, 3, 11, 13], 1), randn(&[4, 3, 7, 7], 2), randn(&[4], 3));
    let out =
        check_op("7x7 s2 p3 stem", device, &[x, w, b], |t| conv2d(&t[0], &t[1], Some(&t[2]), (2, 2), (3, 3)), TOL);
    assert!(has_channels_last_strides(&out), "device conv output strides {:?}", out.strides());
    // 3×3 stride 1 on a channels-last input (the kernels read it as it is).
    let (x, w) = (randn(&[2, 8, 7, 9], 4), randn(&[8, 8, 3, 3], 5));
    check_op(
        "3x3 s1 p1 channels-last",
        device,
        &[x, w],
        |t| conv2d(&channels_last(&t[0])?, &t[1], None, (1, 1), (1, 1)),
        TOL,
    );
    // 3×3 stride 2, odd sizes, plain NCHW input, more output channels than input ones.
    let (x, w, b) = (randn(&[2, 8, 9, 7], 6), randn(&[12, 8, 3, 3], 7), randn(&[12], 8));
    check_op("3x3 s2 p1", device, &[x, w, b], |t| conv2d(&t[0], &t[1], Some(&t[2]), (2, 2), (1, 1)), TOL);
    // The 1×1 stride-2 downsample of a shortcut: odd pixels get no gradient.
    let (x, w) = (randn(&[2, 8, 7, 7], 9), randn(&[16, 8, 1, 1], 10));
    check_op(
        "1x1 s2 downsample",
        device,
        &[x, w],
        |t| conv2d(&channels_last(&t[0])?, &t[1], None, (2, 2), (0, 0)),
        TOL,
    );
    // No padding, a filter as large as the image.
    let (x, w) = (randn(&[3, 5, 4, 4], 11), randn(&[3, 5, 4, 4], 12));
    check_op("4x4 over a 4x4 image", device, &[x, w], |t| conv2d(&t[0], &t[1], None, (1, 1), (0, 0)), TOL);
    // A strided view that is neither layout (copied to NHWC first).
    let (x, w) = (randn(&[2, 4, 6, 8], 13), randn(&[4, 4, 3, 3], 14));
    check_op("narrowed input", device, &[x, w], |t| conv2d(&t[0].narrow(3, 1, 6)?, &t[1], None, (1, 1), (1, 1)), TOL);
    // An empty batch: an empty output, zero weight gradient.
    let (x, w) = (Tensor::zeros(&[0, 3, 5, 5], DType::F32).unwrap(), randn(&[2, 3, 3, 3], 15));
    check_op("empty batch", device, &[x, w], |t| conv2d(&t[0], &t[1], None, (1, 1), (1, 1)), TOL);
});

device_test!(conv2d_errors_on_the_device, |device| {
    let (x, w) =
        (randn(&[1, 2, 6, 6], 16).to_device(device).unwrap(), randn(&[2, 2, 3, 3], 17).to_device(device).unwrap());
    let err = conv2d(&x, &w, None, (1, 2), (1, 1)).unwrap_err().to_string();
    assert!(err.contains("same stride and padding"), "{err}");
    let err = conv2d(&x, &w, None, (1, 1), (0, 1)).unwrap_err().to_string();
    assert!(err.contains("same stride and padding"), "{err}");
    // Inputs on two devices are refused, not moved.
    let err = conv2d(&x, &randn(&[2, 2, 3, 3], 17), None, (1, 1), (1, 1)).unwrap_err().to_string();
    assert!(err.contains("same device"), "{err}");
});

device_test!(conv2d_in_bf16, |device| {
    // C = 8: the tensor-core kernels with 16-byte tile copies; C = 3: their element-wise loaders.
    let conv =
        |stride: usize, pad: usize| move |t: &[Tensor]| conv2d(&t[0], &t[1], Some(&t[2]), (stride, stride), (pad, pad));
    let (x, w, b) = (randn(&[2, 8, 7, 9], 20), randn(&[8, 8, 3, 3], 21), randn(&[8], 22));
    check_bf16("3x3 s2 conv, C = 8", device, &[x, w, b], &conv(2, 1), true, 2e-2);
    let (x, w, b) = (randn(&[2, 3, 9, 9], 23), randn(&[8, 3, 7, 7], 24), randn(&[8], 25));
    check_bf16("7x7 s2 stem, C = 3", device, &[x, w, b], &conv(2, 3), false, 2e-2);
});

device_test!(pooling, |device| {
    let x = randn(&[2, 3, 9, 7], 30);
    let max = |k: usize, s: usize, p: usize| move |t: &[Tensor]| max_pool2d(&t[0], (k, k), (s, s), (p, p));
    check_op("max 3x3 s2 p1", device, &[x.clone()], max(3, 2, 1), 1e-6);
    check_op("max 2x2 s2", device, &[x.clone()], max(2, 2, 0), 1e-6);
    check_op("max 3x2 s1", device, &[x.clone()], |t| max_pool2d(&t[0], (3, 2), (1, 1), (0, 0)), 1e-6);
    let out = check_op(
        "max 3x3 s2 p1 channels-last",
        device,
        &[x.clone()],
        |t| max_pool2d(&channels_last(&t[0])?, (3, 3), (2, 2), (1, 1)),
        1e-6,
    );
    assert!(has_channels_last_strides(&out), "max pool output strides {:?}", out.strides());
    check_op(
        "max of a narrowed view",
        device,
        &[x.clone()],
        |t| max_pool2d(&t[0].narrow(2, 1, 7)?, (3, 3), (2, 2), (1, 1)),
        1e-6,
    );

    check_op("global avg", device, &[x.clone()], |t| adaptive_avg_pool2d(&t[0], (1, 1)), 1e-5);
    check_op("global avg channels-last", device, &[x.clone()], |t| global_avg_pool2d(&channels_last(&t[0])?), 1e-5);
    // Per-frame features of clips [B, T, C, H, W] pooled, then averaged over frames.
    let clips = randn(&[2, 3, 4, 5, 5], 31);
    check_op(
        "pooled frames, temporal mean",
        device,
        &[clips],
        |t| temporal_mean(&global_avg_pool2d(&channels_last(&t[0].reshape(&[6, 4, 5, 5])?)?)?.reshape(&[2, 3, 4])?),
        1e-5,
    );
    check_bf16("max pool", device, &[x.clone()], &max(3, 2, 1), false, 1e-2);
    check_bf16("global avg pool", device, &[x.clone()], &|t| global_avg_pool2d(&t[0]), false, 1e-2);

    let xd = x.to_device(device).unwrap();
    let err = adaptive_avg_pool2d(&xd, (2, 2)).unwrap_err().to_string();
    assert!(err.contains("global 1x1"), "{err}");
    let err = max_pool2d(&xd, (3, 3), (2, 1), (1, 1)).unwrap_err().to_string();
    assert!(err.contains("one stride and one padding"), "{err}");
});

device_test!(batch_norm_training_updates_running_stats, |device| {
    let x = randn(&[3, 4, 5, 3], 40).mul_scalar(2.0).unwrap().add_scalar(0.5).unwrap();
    let (w, b) = (randn(&[4], 41), randn(&[4], 42));
    let (m0, v0) = (randn(&[4], 43), randn(&[4], 44).abs().unwrap().add_scalar(0.5).unwrap());
    for cl in [false, true] {
        let after = Mutex::new(Vec::new());
        let out = check_op(
            if cl { "train, channels-last" } else { "train" },
            device,
            &[x.clone(), w.clone(), b.clone()],
            |t| {
                let mut stats = stats_on(&m0, &v0, DType::F32, t[0].device())?;
                let x = if cl { channels_last(&t[0])? } else { t[0].clone() };
                let y = batch_norm_2d(&x, Some(&t[1]), Some(&t[2]), &mut stats, true, 1e-5)?;
                after.lock().unwrap().push(stats);
                Ok(y)
            },
            TOL,
        );
        assert_eq!(has_channels_last_strides(&out), cl, "batch norm keeps the input's layout: {:?}", out.strides());
        let after = after.into_inner().unwrap();
        let (cpu, dev) = (&after[0], &after[1]);
        assert_eq!((dev.mean.device(), dev.var.device()), (device, device), "running stats stay on the device");
        assert_close("running mean", &values(&dev.mean), &values(&cpu.mean), 1e-5, 1e-5);
        assert_close("running var", &values(&dev.var), &values(&cpu.var), 1e-5, 1e-5);
        let moved = values(&dev.mean).iter().zip(values(&m0)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(moved > 1e-3, "the running mean did not move");
    }
    // Without affine parameters, and with only one of them (the gradient list follows the inputs).
    let train = |wt: bool, bs: bool| {
        let (m0, v0) = (m0.clone(), v0.clone());
        move |t: &[Tensor]| {
            let mut stats = stats_on(&m0, &v0, t[0].dtype(), t[0].device())?;
            let (wt, bs) = (wt.then(|| &t[1]), bs.then(|| t.last().unwrap()));
            batch_norm_2d(&t[0], wt, bs, &mut stats, true, 1e-5)
        }
    };
    check_op("train, no affine", device, &[x.clone()], train(false, false), TOL);
    check_op("train, weight only", device, &[x.clone(), w.clone()], train(true, false), TOL);
    check_op("train, bias only", device, &[x.clone(), b.clone()], train(false, true), TOL);
    check_bf16("train", device, &[x.clone(), w.clone(), b.clone()], &train(true, true), false, 2e-2);
});

device_test!(batch_norm_eval_uses_running_stats, |device| {
    let x = randn(&[2, 5, 3, 4], 50);
    let (w, b) = (randn(&[5], 51), randn(&[5], 52));
    let (m0, v0) = (randn(&[5], 53), randn(&[5], 54).abs().unwrap().add_scalar(0.5).unwrap());
    for cl in [false, true] {
        check_op(
            if cl { "eval, channels-last" } else { "eval" },
            device,
            &[x.clone(), w.clone(), b.clone()],
            |t| {
                let mut stats = stats_on(&m0, &v0, DType::F32, t[0].device())?;
                let x = if cl { channels_last(&t[0])? } else { t[0].clone() };
                let y = batch_norm_2d(&x, Some(&t[1]), Some(&t[2]), &mut stats, false, 1e-5)?;
                // Eval leaves the statistics alone.
                assert_eq!(values(&stats.mean), values(&m0));
                Ok(y)
            },
            TOL,
        );
    }
    // Statistics left on the CPU while the input is on the device: refused.
    let mut host_stats = stats_on(&m0, &v0, DType::F32, Device::Cpu).unwrap();
    let err = batch_norm_2d(&x.to_device(device).unwrap(), None, None, &mut host_stats, false, 1e-5).unwrap_err();
    assert!(err.to_string().contains("same device"), "{err}");
});

/// ResNet's stem: 7×7/2 conv, batch norm, ReLU, 3×3/2 max pool (inputs: x, conv weight, γ, β).
fn stem(t: &[Tensor]) -> Result<Tensor> {
    let mut stats = RunningStats::new(t[1].shape()[0], DType::F32)?;
    stats.mean = stats.mean.to_device(t[0].device())?;
    stats.var = stats.var.to_device(t[0].device())?;
    let y = conv2d(&t[0], &t[1], None, (2, 2), (3, 3))?;
    let y = batch_norm_2d(&y, Some(&t[2]), Some(&t[3]), &mut stats, true, 1e-5)?.relu()?;
    max_pool2d(&y, (3, 3), (2, 2), (1, 1))
}

/// A torchvision BasicBlock with a stride-2 1×1 downsample, then global average pooling
/// (inputs: x, then weight, γ, β of conv1, conv2 and the downsample).
fn basic_block(t: &[Tensor]) -> Result<Tensor> {
    let bn = |y: &Tensor, g: &Tensor, b: &Tensor| -> Result<Tensor> {
        let mut stats = RunningStats::new(y.shape()[1], DType::F32)?;
        stats.mean = stats.mean.to_device(y.device())?;
        stats.var = stats.var.to_device(y.device())?;
        batch_norm_2d(y, Some(g), Some(b), &mut stats, true, 1e-5)
    };
    let y = bn(&conv2d(&t[0], &t[1], None, (2, 2), (1, 1))?, &t[2], &t[3])?.relu()?;
    let y = bn(&conv2d(&y, &t[4], None, (1, 1), (1, 1))?, &t[5], &t[6])?;
    let shortcut = bn(&conv2d(&t[0], &t[7], None, (2, 2), (0, 0))?, &t[8], &t[9])?;
    global_avg_pool2d(&y.add(&shortcut)?.relu()?)
}

device_test!(resnet_stem_and_basic_block, |device| {
    let gamma = |c: usize, seed: u64| randn(&[c], seed).mul_scalar(0.2).unwrap().add_scalar(1.0).unwrap();
    let stem_inputs = [randn(&[2, 3, 15, 13], 60), randn(&[8, 3, 7, 7], 61), gamma(8, 62), randn(&[8], 63)];
    check_op("stem", device, &stem_inputs, stem, 1e-3);
    let (cin, cout) = (4, 8);
    let block_inputs = [
        randn(&[2, cin, 9, 9], 70),
        randn(&[cout, cin, 3, 3], 71),
        gamma(cout, 72),
        randn(&[cout], 73),
        randn(&[cout, cout, 3, 3], 74),
        gamma(cout, 75),
        randn(&[cout], 76),
        randn(&[cout, cin, 1, 1], 77),
        gamma(cout, 78),
        randn(&[cout], 79),
    ];
    check_op("basic block", device, &block_inputs, basic_block, 1e-3);
});
