//! layer_norm forward and fused backward against `simclr::ops::layernorm::layer_norm` (f64 CPU,
//! gradients from its autograd), for warp-per-row rows (every register tier, vectorised and
//! scalar) and block-per-row rows (including rows longer than the register cache).

use crate::common::*;
use half::bf16;
use simclr::backend::cuda::kernels::layernorm::{layer_norm_backward, layer_norm_forward};
use simclr::backend::cuda::{DeviceBuffer, Gpu};
use simclr::ops::layernorm::layer_norm;
use simclr::Tensor;

const EPS: f32 = 1e-5;

/// The CPU op's results, in f32.
struct Reference {
    y: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.iter().map(|&a| a as f64).collect::<Vec<f64>>(), shape).unwrap()
}

fn to_f32(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f64>().unwrap().into_iter().map(|v| v as f32).collect()
}

/// y and the gradients of Σ y·dy from the CPU op in f64; μ and r per row computed directly
/// (the op does not return them).
fn reference(
    x: &[f32],
    dy: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    rows: usize,
    cols: usize,
) -> Reference {
    let xt = tensor(x, &[rows, cols]).requires_grad().unwrap();
    let gt = gamma.map(|g| tensor(g, &[cols]).requires_grad().unwrap());
    let bt = beta.map(|b| tensor(b, &[cols]).requires_grad().unwrap());
    let y = layer_norm(&xt, &[cols], gt.as_ref(), bt.as_ref(), EPS as f64).unwrap();
    y.mul(&tensor(dy, &[rows, cols])).unwrap().sum_all().unwrap().backward().unwrap();
    let (mut mean, mut rstd) = (Vec::new(), Vec::new());
    for row in x.chunks(cols) {
        let m = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / cols as f64;
        mean.push(m as f32);
        rstd.push((1.0 / (var + EPS as f64).sqrt()) as f32);
    }
    let zeros = vec![0.0; cols];
    Reference {
        y: to_f32(&y),
        mean,
        rstd,
        dx: to_f32(&xt.grad().unwrap()),
        dgamma: gt.map_or(zeros.clone(), |g| to_f32(&g.grad().unwrap())),
        // dβ = Σ_rows dy whether or not the forward had β.
        dbeta: bt.map_or_else(
            || (0..cols).map(|j| (0..rows).map(|r| dy[r * cols + j] as f64).sum::<f64>() as f32).collect(),
            |b| to_f32(&b.grad().unwrap()),
        ),
    }
}

/// Inputs of one case: x with a non-zero mean, γ around 1, β around 0, dy.
fn inputs(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = rows * cols;
    (
        uniform(n, -2.0, 3.0, seed),
        uniform(cols, 0.5, 1.5, seed + 1),
        uniform(cols, -0.5, 0.5, seed + 2),
        normal(n, 1.0, seed + 3),
    )
}

/// Runs forward and backward in f32 on the device and compares everything with the CPU op.
fn check_f32(gpu: &Gpu, rows: usize, cols: usize, affine: bool, seed: u64) {
    let (x, gamma, beta, dy) = inputs(rows, cols, seed);
    let (g, b) = if affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };
    let want = reference(&x, &dy, g, b, rows, cols);
    let what = |s: &str| format!("{s} f32 ({rows}×{cols}, affine {affine})");

    let xd = gpu.upload(&x).unwrap();
    let gd = g.map(|v| gpu.upload(v).unwrap());
    let bd = b.map(|v| gpu.upload(v).unwrap());
    let mut y = gpu.alloc::<f32>(rows * cols).unwrap();
    let mut mean = gpu.alloc::<f32>(rows).unwrap();
    let mut rstd = gpu.alloc::<f32>(rows).unwrap();
    layer_norm_forward(gpu, &xd, gd.as_ref(), bd.as_ref(), &mut y, &mut mean, &mut rstd, rows, cols, EPS).unwrap();
    assert_close(&what("y"), &y.to_vec().unwrap(), &want.y, 1e-5, 1e-5);
    assert_close(&what("mean"), &mean.to_vec().unwrap(), &want.mean, 1e-6, 1e-5);
    assert_close(&what("rstd"), &rstd.to_vec().unwrap(), &want.rstd, 0.0, 1e-5);

    let dyd = gpu.upload(&dy).unwrap();
    let mut dx = gpu.alloc::<f32>(rows * cols).unwrap();
    let mut dgamma = gpu.alloc::<f32>(cols).unwrap();
    let mut dbeta = gpu.alloc::<f32>(cols).unwrap();
    layer_norm_backward(
        gpu,
        &xd,
        &dyd,
        gd.as_ref(),
        &mean,
        &rstd,
        &mut dx,
        Some(&mut dgamma),
        Some(&mut dbeta),
        rows,
        cols,
    )
    .unwrap();
    assert_close(&what("dx"), &dx.to_vec().unwrap(), &want.dx, 2e-5, 1e-5);
    if affine {
        assert_close(&what("dgamma"), &dgamma.to_vec().unwrap(), &want.dgamma, 1e-5, 1e-5);
    }
    assert_close(&what("dbeta"), &dbeta.to_vec().unwrap(), &want.dbeta, 1e-5, 1e-5);

    // dx alone (no partial buffer, no second kernel) is the same.
    let mut dx2 = gpu.alloc::<f32>(rows * cols).unwrap();
    layer_norm_backward(gpu, &xd, &dyd, gd.as_ref(), &mean, &rstd, &mut dx2, None, None, rows, cols).unwrap();
    assert_eq!(dx2.to_vec().unwrap(), dx.to_vec().unwrap(), "{}", what("dx without dγ/dβ"));
}

/// The spec's shapes plus every warp register tier, vectorised (cols % 4 == 0) and scalar:
/// tier 4: (1, 1), (3, 5), (4, 64); 8: (9, 130), (7, 192); 16: (2, 333), (33, 384), (6, 500);
/// 24: (3, 701), (5, 768); 32: (2, 1000), (2, 1023), (3, 1024).
const WARP_SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 5),
    (4, 64),
    (9, 130),
    (7, 192),
    (2, 333),
    (33, 384),
    (6, 500),
    (3, 701),
    (5, 768),
    (2, 1000),
    (2, 1023),
    (3, 1024),
];
/// Block per row: 4099 (scalar), 2048 (vectorised), and rows longer than the register cache
/// (9000: vectorised, 8211: scalar), which re-read the rest from memory. (rows, cols, affine).
const BLOCK_SHAPES: &[(usize, usize, bool)] = &[(3, 4099, true), (5, 2048, false)];
const LONG_SHAPES: &[(usize, usize, bool)] = &[(2, 9000, true), (1, 8211, false)];

parity_test!(layer_norm_f32_warp_rows, |gpu| {
    for (i, &(rows, cols)) in WARP_SHAPES.iter().enumerate() {
        check_f32(gpu, rows, cols, true, 10 + i as u64);
        check_f32(gpu, rows, cols, false, 50 + i as u64);
    }
});

parity_test!(layer_norm_f32_block_rows, |gpu| {
    for (i, &(rows, cols, affine)) in BLOCK_SHAPES.iter().enumerate() {
        check_f32(gpu, rows, cols, affine, 100 + i as u64);
    }
});

parity_test!(layer_norm_f32_rows_longer_than_the_register_cache, |gpu| {
    for (i, &(rows, cols, affine)) in LONG_SHAPES.iter().enumerate() {
        check_f32(gpu, rows, cols, affine, 150 + i as u64);
    }
});

parity_test!(layer_norm_bf16, |gpu| {
    // bf16 storage: the CPU gets the bf16-rounded x and dy; y and dx are rounded to bf16 on the
    // way out (relative error up to 2^-9 plus f32 arithmetic); dγ/dβ and the statistics are f32.
    for (i, &(rows, cols)) in [(3, 5), (7, 192), (5, 768), (2, 1000), (3, 4099), (2, 9000)].iter().enumerate() {
        let (x, gamma, beta, dy) = inputs(rows, cols, 200 + i as u64);
        let (x, dy) = (round_bf16(&x), round_bf16(&dy));
        let want = reference(&x, &dy, Some(&gamma), Some(&beta), rows, cols);
        let what = |s: &str| format!("{s} bf16 ({rows}×{cols})");

        let xd: DeviceBuffer<bf16> = gpu.upload(&to_bf16(&x)).unwrap();
        let (gd, bd) = (gpu.upload(&gamma).unwrap(), gpu.upload(&beta).unwrap());
        let mut y = gpu.alloc::<bf16>(rows * cols).unwrap();
        let mut mean = gpu.alloc::<f32>(rows).unwrap();
        let mut rstd = gpu.alloc::<f32>(rows).unwrap();
        layer_norm_forward(gpu, &xd, Some(&gd), Some(&bd), &mut y, &mut mean, &mut rstd, rows, cols, EPS).unwrap();
        assert_close(&what("y"), &from_bf16(&y.to_vec().unwrap()), &want.y, 1e-2, 4e-3);
        assert_close(&what("mean"), &mean.to_vec().unwrap(), &want.mean, 1e-6, 1e-5);
        assert_close(&what("rstd"), &rstd.to_vec().unwrap(), &want.rstd, 0.0, 1e-5);

        let dyd = gpu.upload(&to_bf16(&dy)).unwrap();
        let mut dx = gpu.alloc::<bf16>(rows * cols).unwrap();
        let mut dgamma = gpu.alloc::<f32>(cols).unwrap();
        let mut dbeta = gpu.alloc::<f32>(cols).unwrap();
        layer_norm_backward(
            gpu,
            &xd,
            &dyd,
            Some(&gd),
            &mean,
            &rstd,
            &mut dx,
            Some(&mut dgamma),
            Some(&mut dbeta),
            rows,
            cols,
        )
        .unwrap();
        assert_close(&what("dx"), &from_bf16(&dx.to_vec().unwrap()), &want.dx, 1e-2, 4e-3);
        assert_close(&what("dgamma"), &dgamma.to_vec().unwrap(), &want.dgamma, 1e-5, 1e-5);
        assert_close(&what("dbeta"), &dbeta.to_vec().unwrap(), &want.dbeta, 1e-5, 1e-5);
    }
});

parity_test!(layer_norm_zero_rows, |gpu| {
    let x = gpu.alloc::<f32>(0).unwrap();
    let (mut mean, mut rstd) = (gpu.alloc::<f32>(0).unwrap(), gpu.alloc::<f32>(0).unwrap());
    layer_norm_forward(gpu, &x, None, None, &mut gpu.alloc(0).unwrap(), &mut mean, &mut rstd, 0, 16, EPS).unwrap();
    let mut dgamma = gpu.upload(&[1.0f32; 16]).unwrap();
    let mut dx = gpu.alloc::<f32>(0).unwrap();
    layer_norm_backward(gpu, &x, &x, None, &mean, &rstd, &mut dx, Some(&mut dgamma), None, 0, 16).unwrap();
    assert_eq!(dgamma.to_vec().unwrap(), vec![0.0; 16], "dγ of no rows is 0");
});

parity_test!(layer_norm_bad_inputs, |gpu| {
    let (rows, cols) = (4, 10);
    let x = gpu.upload(&uniform(rows * cols, -1.0, 1.0, 3)).unwrap();
    let mut y = gpu.alloc::<f32>(rows * cols).unwrap();
    let mut mean = gpu.alloc::<f32>(rows).unwrap();
    let mut rstd = gpu.alloc::<f32>(rows).unwrap();
    let short_gamma = gpu.alloc::<f32>(cols - 1).unwrap();

    let err = layer_norm_forward(gpu, &x, None, None, &mut y, &mut mean, &mut rstd, rows, cols + 1, EPS).unwrap_err();
    assert!(err.to_string().contains("x has 40 elements, expected 44"), "{err}");
    let err = layer_norm_forward(gpu, &x, Some(&short_gamma), None, &mut y, &mut mean, &mut rstd, rows, cols, EPS)
        .unwrap_err();
    assert!(err.to_string().contains("gamma"), "{err}");
    let err = layer_norm_forward(gpu, &x, None, None, &mut y, &mut mean, &mut rstd, rows, cols, 0.0).unwrap_err();
    assert!(err.to_string().contains("eps"), "{err}");
    let err = layer_norm_forward(gpu, &x, None, None, &mut y, &mut mean, &mut rstd, 40, 0, EPS).unwrap_err();
    assert!(err.to_string().contains("cols = 0"), "{err}");
    let mut short_rstd = gpu.alloc::<f32>(rows - 1).unwrap();
    let err = layer_norm_forward(gpu, &x, None, None, &mut y, &mut mean, &mut short_rstd, rows, cols, EPS).unwrap_err();
    assert!(err.to_string().contains("rstd"), "{err}");

    let mut dx = gpu.alloc::<f32>(rows * cols).unwrap();
    let mut bad_dbeta = gpu.alloc::<f32>(cols + 2).unwrap();
    let err = layer_norm_backward(gpu, &x, &x, None, &mean, &rstd, &mut dx, None, Some(&mut bad_dbeta), rows, cols)
        .unwrap_err();
    assert!(err.to_string().contains("dbeta has 12 elements, expected 10"), "{err}");
    let err = layer_norm_backward(gpu, &x, &y, None, &rstd, &short_rstd, &mut dx, None, None, rows, cols).unwrap_err();
    assert!(err.to_string().contains("rstd"), "{err}");
});
