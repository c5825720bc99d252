//! batch_norm_2d (NCHW) forward in training and eval mode, the running-statistics update and the
//! backward, against `simclr::ops::batchnorm::batch_norm_2d` (f64 CPU, gradients from its
//! autograd).

use crate::common::*;
use simclr::backend::cuda::kernels::batchnorm::{
    batch_norm_backward, batch_norm_forward_eval, batch_norm_forward_train, BatchNormSaved, RunningStats,
};
use simclr::backend::cuda::kernels::KernelFloat;
use simclr::backend::cuda::{DeviceBuffer, Gpu};
use simclr::ops::batchnorm::{batch_norm_2d, RunningStats as CpuRunningStats};
use simclr::Tensor;

const EPS: f32 = 1e-5;
const MOMENTUM: f32 = 0.1;

fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.iter().map(|&a| a as f64).collect::<Vec<f64>>(), shape).unwrap()
}

fn to_f32(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f64>().unwrap().into_iter().map(|v| v as f32).collect()
}

/// One case's inputs: x with per-channel offsets and scales (so the statistics matter), γ, β,
/// dy, and running statistics away from their defaults.
struct Case {
    shape: [usize; 4],
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dy: Vec<f32>,
    run_mean: Vec<f32>,
    run_var: Vec<f32>,
}

impl Case {
    fn new(shape: [usize; 4], seed: u64) -> Case {
        let [n, c, h, w] = shape;
        let hw = h * w;
        let (offset, scale) = (uniform(c, -2.0, 2.0, seed), uniform(c, 0.5, 3.0, seed + 1));
        let raw = normal(n * c * hw, 1.0, seed + 2);
        let x = raw.iter().enumerate().map(|(i, &v)| offset[(i / hw) % c] + scale[(i / hw) % c] * v).collect();
        Case {
            shape,
            x,
            gamma: uniform(c, 0.5, 1.5, seed + 3),
            beta: uniform(c, -0.5, 0.5, seed + 4),
            dy: normal(n * c * hw, 1.0, seed + 5),
            run_mean: uniform(c, -0.5, 0.5, seed + 6),
            run_var: uniform(c, 0.5, 2.0, seed + 7),
        }
    }

    /// The bf16 kernels' view: x and dy rounded to bf16.
    fn rounded(mut self) -> Case {
        self.x = round_bf16(&self.x);
        self.dy = round_bf16(&self.dy);
        self
    }
}

/// The CPU op's outputs and gradients of Σ y·dy, in f32.
struct Reference {
    y: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
    run_mean: Vec<f32>,
    run_var: Vec<f32>,
    /// The batch mean and 1/√(σ² + eps) per channel (training), computed directly.
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

fn reference(case: &Case, affine: bool, training: bool) -> Reference {
    let [n, c, h, w] = case.shape;
    let xt = tensor(&case.x, &case.shape).requires_grad().unwrap();
    let gt = tensor(&case.gamma, &[c]).requires_grad().unwrap();
    let bt = tensor(&case.beta, &[c]).requires_grad().unwrap();
    let mut stats = CpuRunningStats {
        mean: tensor(&case.run_mean, &[c]),
        var: tensor(&case.run_var, &[c]),
        momentum: MOMENTUM as f64,
    };
    let (g, b) = if affine { (Some(&gt), Some(&bt)) } else { (None, None) };
    let y = batch_norm_2d(&xt, g, b, &mut stats, training, EPS as f64).unwrap();
    y.mul(&tensor(&case.dy, &case.shape)).unwrap().sum_all().unwrap().backward().unwrap();

    let hw = h * w;
    let m = (n * hw) as f64;
    let channel = |v: &[f32], ch: usize| -> Vec<f64> {
        (0..n).flat_map(|i| v[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter().map(|&a| a as f64)).collect()
    };
    let (mut mean, mut rstd, mut dgamma, mut dbeta) = (vec![], vec![], vec![], vec![]);
    for ch in 0..c {
        let xs = channel(&case.x, ch);
        let mu = xs.iter().sum::<f64>() / m;
        let var = xs.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / m;
        mean.push(mu as f32);
        rstd.push((1.0 / (var + EPS as f64).sqrt()) as f32);
        if !affine {
            // The op has no γ/β to differentiate: dγ = Σ dy·x̂, dβ = Σ dy directly.
            let (mu, r) = if training {
                (mu, 1.0 / (var + EPS as f64).sqrt())
            } else {
                (case.run_mean[ch] as f64, 1.0 / (case.run_var[ch] as f64 + EPS as f64).sqrt())
            };
            let dys = channel(&case.dy, ch);
            dgamma.push(xs.iter().zip(&dys).map(|(x, d)| d * (x - mu) * r).sum::<f64>() as f32);
            dbeta.push(dys.iter().sum::<f64>() as f32);
        }
    }
    if affine {
        dgamma = to_f32(&gt.grad().unwrap());
        dbeta = to_f32(&bt.grad().unwrap());
    }
    Reference {
        y: to_f32(&y),
        dx: to_f32(&xt.grad().unwrap()),
        dgamma,
        dbeta,
        run_mean: to_f32(&stats.mean),
        run_var: to_f32(&stats.var),
        mean,
        rstd,
    }
}

/// Tolerances: (atol, rtol) for y/dx and for the f32 per-channel results.
struct Tol {
    out: (f32, f32),
    stats: (f32, f32),
}
const F32_TOL: Tol = Tol { out: (1e-5, 1e-5), stats: (1e-5, 1e-5) };
// bf16 outputs are rounded once (relative 2^-9); everything else is f32 arithmetic on exact inputs.
const BF16_TOL: Tol = Tol { out: (1e-2, 4e-3), stats: (1e-5, 1e-5) };

fn download<T: KernelFloat + Into<f32>>(b: &DeviceBuffer<T>) -> Vec<f32> {
    b.to_vec().unwrap().into_iter().map(Into::into).collect()
}

/// Training forward (with running statistics), then its backward, on the device.
fn check_training<T: KernelFloat + Into<f32>>(
    gpu: &Gpu,
    case: &Case,
    affine: bool,
    up: fn(&[f32]) -> Vec<T>,
    tol: &Tol,
) {
    let want = reference(case, affine, true);
    let [n, c, h, w] = case.shape;
    let numel = n * c * h * w;
    let what = |s: &str| format!("{s} {} {:?} training, affine {affine}", T::SUFFIX, case.shape);

    let x = gpu.upload(&up(&case.x)).unwrap();
    let (gd, bd) = (gpu.upload(&case.gamma).unwrap(), gpu.upload(&case.beta).unwrap());
    let (g, b) = if affine { (Some(&gd), Some(&bd)) } else { (None, None) };
    let mut run_mean = gpu.upload(&case.run_mean).unwrap();
    let mut run_var = gpu.upload(&case.run_var).unwrap();
    let mut y = gpu.alloc::<T>(numel).unwrap();
    let (mut mean, mut rstd) = (gpu.alloc::<f32>(c).unwrap(), gpu.alloc::<f32>(c).unwrap());
    let running = RunningStats { mean: &mut run_mean, var: &mut run_var, momentum: MOMENTUM };
    batch_norm_forward_train(gpu, case.shape, &x, g, b, EPS, Some(running), &mut y, &mut mean, &mut rstd).unwrap();
    assert_close(&what("y"), &download(&y), &want.y, tol.out.0, tol.out.1);
    assert_close(&what("saved mean"), &mean.to_vec().unwrap(), &want.mean, tol.stats.0, tol.stats.1);
    assert_close(&what("saved rstd"), &rstd.to_vec().unwrap(), &want.rstd, tol.stats.0, tol.stats.1);
    assert_close(&what("running mean"), &run_mean.to_vec().unwrap(), &want.run_mean, tol.stats.0, tol.stats.1);
    assert_close(&what("running var"), &run_var.to_vec().unwrap(), &want.run_var, tol.stats.0, tol.stats.1);

    let dy = gpu.upload(&up(&case.dy)).unwrap();
    let mut dx = gpu.alloc::<T>(numel).unwrap();
    let (mut dgamma, mut dbeta) = (gpu.alloc::<f32>(c).unwrap(), gpu.alloc::<f32>(c).unwrap());
    let saved = BatchNormSaved::Batch { mean: &mean, rstd: &rstd };
    batch_norm_backward(gpu, case.shape, &x, &dy, g, saved, &mut dx, Some(&mut dgamma), Some(&mut dbeta)).unwrap();
    assert_close(&what("dx"), &download(&dx), &want.dx, tol.out.0, tol.out.1);
    assert_close(&what("dgamma"), &dgamma.to_vec().unwrap(), &want.dgamma, 1e-4, tol.stats.1);
    assert_close(&what("dbeta"), &dbeta.to_vec().unwrap(), &want.dbeta, 1e-4, tol.stats.1);
}

/// Eval forward (running statistics, left unchanged) and its backward, in f32.
fn check_eval(gpu: &Gpu, case: &Case, affine: bool) {
    let want = reference(case, affine, false);
    let [n, c, h, w] = case.shape;
    let numel = n * c * h * w;
    let what = |s: &str| format!("{s} f32 {:?} eval, affine {affine}", case.shape);

    let x = gpu.upload(&case.x).unwrap();
    let (gd, bd) = (gpu.upload(&case.gamma).unwrap(), gpu.upload(&case.beta).unwrap());
    let (g, b) = if affine { (Some(&gd), Some(&bd)) } else { (None, None) };
    let (run_mean, run_var) = (gpu.upload(&case.run_mean).unwrap(), gpu.upload(&case.run_var).unwrap());
    let mut y = gpu.alloc::<f32>(numel).unwrap();
    batch_norm_forward_eval(gpu, case.shape, &x, g, b, &run_mean, &run_var, EPS, &mut y).unwrap();
    assert_close(&what("y"), &y.to_vec().unwrap(), &want.y, 1e-5, 1e-5);
    assert_eq!(want.run_mean, case.run_mean, "eval leaves the CPU's running mean alone");

    let dy = gpu.upload(&case.dy).unwrap();
    let mut dx = gpu.alloc::<f32>(numel).unwrap();
    let (mut dgamma, mut dbeta) = (gpu.alloc::<f32>(c).unwrap(), gpu.alloc::<f32>(c).unwrap());
    let saved = BatchNormSaved::Running { mean: &run_mean, var: &run_var, eps: EPS };
    batch_norm_backward(gpu, case.shape, &x, &dy, g, saved, &mut dx, Some(&mut dgamma), Some(&mut dbeta)).unwrap();
    assert_close(&what("dx"), &dx.to_vec().unwrap(), &want.dx, 1e-5, 1e-5);
    assert_close(&what("dgamma"), &dgamma.to_vec().unwrap(), &want.dgamma, 1e-4, 1e-5);
    assert_close(&what("dbeta"), &dbeta.to_vec().unwrap(), &want.dbeta, 1e-4, 1e-5);
}

fn f32_up(v: &[f32]) -> Vec<f32> {
    v.to_vec()
}

/// The spec's shapes: H·W = 35, 64 (vectorised), 9, 1 and 143; one block per channel.
const SHAPES: &[[usize; 4]] = &[[2, 3, 5, 7], [4, 16, 8, 8], [1, 64, 3, 3], [8, 5, 1, 1], [3, 7, 13, 11]];
/// Channels spread over several blocks: 10 images in 3 uneven splits (scalar), 12 images in 3
/// splits of 32×32 maps (vectorised).
const SPLIT_SHAPES: &[[usize; 4]] = &[[10, 2, 31, 33], [12, 2, 32, 32]];

parity_test!(batch_norm_f32_training, |gpu| {
    for (i, &shape) in SHAPES.iter().enumerate() {
        let case = Case::new(shape, 10 * i as u64);
        check_training(gpu, &case, true, f32_up, &F32_TOL);
        check_training(gpu, &case, false, f32_up, &F32_TOL);
    }
});

parity_test!(batch_norm_f32_training_split_channels, |gpu| {
    for (i, &shape) in SPLIT_SHAPES.iter().enumerate() {
        check_training(gpu, &Case::new(shape, 100 + 10 * i as u64), i == 0, f32_up, &F32_TOL);
    }
});

parity_test!(batch_norm_f32_eval, |gpu| {
    for (i, &shape) in SHAPES.iter().chain(&SPLIT_SHAPES[..1]).enumerate() {
        let case = Case::new(shape, 200 + 10 * i as u64);
        check_eval(gpu, &case, true);
        check_eval(gpu, &case, false);
    }
});

parity_test!(batch_norm_bf16_training, |gpu| {
    for (i, &shape) in [[4, 16, 8, 8], [3, 7, 13, 11], [10, 2, 31, 33]].iter().enumerate() {
        let case = Case::new(shape, 300 + 10 * i as u64).rounded();
        check_training(gpu, &case, true, to_bf16, &BF16_TOL);
    }
});

parity_test!(batch_norm_without_running_stats_or_outputs, |gpu| {
    // No running statistics to update, and a backward that wants dx only.
    let case = Case::new([3, 4, 5, 4], 400);
    let want = reference(&case, true, true);
    let c = 4;
    let x = gpu.upload(&case.x).unwrap();
    let (g, b) = (gpu.upload(&case.gamma).unwrap(), gpu.upload(&case.beta).unwrap());
    let mut y = gpu.alloc::<f32>(case.x.len()).unwrap();
    let (mut mean, mut rstd) = (gpu.alloc::<f32>(c).unwrap(), gpu.alloc::<f32>(c).unwrap());
    batch_norm_forward_train(gpu, case.shape, &x, Some(&g), Some(&b), EPS, None, &mut y, &mut mean, &mut rstd).unwrap();
    assert_close("y", &y.to_vec().unwrap(), &want.y, 1e-5, 1e-5);
    let dy = gpu.upload(&case.dy).unwrap();
    let mut dx = gpu.alloc::<f32>(case.x.len()).unwrap();
    let saved = BatchNormSaved::Batch { mean: &mean, rstd: &rstd };
    batch_norm_backward(gpu, case.shape, &x, &dy, Some(&g), saved, &mut dx, None, None).unwrap();
    assert_close("dx", &dx.to_vec().unwrap(), &want.dx, 1e-5, 1e-5);
});

parity_test!(batch_norm_bad_inputs, |gpu| {
    let shape = [2, 3, 4, 5];
    let x = gpu.upload(&uniform(120, -1.0, 1.0, 1)).unwrap();
    let mut y = gpu.alloc::<f32>(120).unwrap();
    let (mut mean, mut rstd) = (gpu.alloc::<f32>(3).unwrap(), gpu.alloc::<f32>(3).unwrap());
    let short = gpu.alloc::<f32>(2).unwrap();

    let err = batch_norm_forward_train(gpu, [2, 3, 4, 6], &x, None, None, EPS, None, &mut y, &mut mean, &mut rstd)
        .unwrap_err();
    assert!(err.to_string().contains("x has 120 elements, expected 144"), "{err}");
    let err = batch_norm_forward_train(gpu, shape, &x, Some(&short), None, EPS, None, &mut y, &mut mean, &mut rstd)
        .unwrap_err();
    assert!(err.to_string().contains("gamma"), "{err}");
    let mut short_var = gpu.alloc::<f32>(2).unwrap();
    let mut run_mean = gpu.alloc::<f32>(3).unwrap();
    let running = RunningStats { mean: &mut run_mean, var: &mut short_var, momentum: MOMENTUM };
    let err = batch_norm_forward_train(gpu, shape, &x, None, None, EPS, Some(running), &mut y, &mut mean, &mut rstd)
        .unwrap_err();
    assert!(err.to_string().contains("running var"), "{err}");
    // One value per channel has no batch variance (the CPU op refuses it too).
    let one = gpu.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    let mut y1 = gpu.alloc::<f32>(3).unwrap();
    let err = batch_norm_forward_train(gpu, [1, 3, 1, 1], &one, None, None, EPS, None, &mut y1, &mut mean, &mut rstd)
        .unwrap_err();
    assert!(err.to_string().contains("more than one value per channel"), "{err}");
    let err = batch_norm_forward_eval(gpu, shape, &x, None, None, &mean, &rstd, -1.0, &mut y).unwrap_err();
    assert!(err.to_string().contains("eps"), "{err}");
    let err = batch_norm_forward_eval(gpu, [2, 0, 4, 5], &x, None, None, &mean, &rstd, EPS, &mut y).unwrap_err();
    assert!(err.to_string().contains("no channels"), "{err}");

    let mut dx = gpu.alloc::<f32>(120).unwrap();
    let mut bad = gpu.alloc::<f32>(4).unwrap();
    let saved = BatchNormSaved::Batch { mean: &mean, rstd: &rstd };
    let err = batch_norm_backward(gpu, shape, &x, &x, None, saved, &mut dx, Some(&mut bad), None).unwrap_err();
    assert!(err.to_string().contains("dgamma has 4 elements, expected 3"), "{err}");
    let saved = BatchNormSaved::Running { mean: &mean, var: &short, eps: EPS };
    let err = batch_norm_backward(gpu, shape, &x, &x, None, saved, &mut dx, None, None).unwrap_err();
    assert!(err.to_string().contains("running var"), "{err}");
});
