//! softmax / log_softmax kernels against `Tensor::softmax` / `log_softmax` and their autograd
//! gradients (loss = Σ y⊙g, so x.grad() is the backward of upstream g).
//!
//! Shapes cover the warp-per-row kernels (≤ 1024 columns, packed and scalar loads), the
//! block kernels with the row cached in shared memory (≤ 12032 columns) and the online
//! (max, sum) form beyond. References run in f64; f32 is checked to rtol 1e-5, bf16 (inputs
//! rounded to bf16 for the CPU too, output rounded once) to about one bf16 ulp.

use crate::common::*;
use half::bf16;
use simclr::backend::cuda::kernels::softmax as sm;
use simclr::backend::cuda::Gpu;
use simclr::{Error, Tensor};

fn cpu(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.iter().map(|&x| x as f64).collect::<Vec<_>>(), shape).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_f64_vec().iter().map(|&x| x as f32).collect()
}

/// (rows, cols): warp kernels with K = 1…32 values per lane, packed (cols a multiple of 8)
/// and scalar; block kernels, cached (up to `CACHE_MAX_COLS` = 12032) and online (beyond).
const SHAPES: [(usize, usize); 14] = [
    (1, 1),
    (3, 31),
    (5, 33),
    (9, 64),
    (4, 257),
    (3, 256),
    (3, 1000),
    (2, 1024),
    (2, 1025),
    (3, 4099),
    (2, 8192),
    (1, 12032),
    (2, 13001),
    (1, 16384),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Softmax,
    LogSoftmax,
}

fn cpu_forward(kind: Kind, x: &Tensor) -> Tensor {
    match kind {
        Kind::Softmax => x.softmax(-1),
        Kind::LogSoftmax => x.log_softmax(-1),
    }
    .unwrap()
}

fn gpu_forward_f32(gpu: &Gpu, kind: Kind, x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let dx = gpu.upload(x).unwrap();
    let mut dy = gpu.alloc::<f32>(x.len()).unwrap();
    match kind {
        Kind::Softmax => sm::softmax_forward(gpu, &dx, rows, cols, &mut dy),
        Kind::LogSoftmax => sm::log_softmax_forward(gpu, &dx, rows, cols, &mut dy),
    }
    .unwrap();
    dy.to_vec().unwrap()
}

fn gpu_forward_bf16(gpu: &Gpu, kind: Kind, x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let dx = gpu.upload(&to_bf16(x)).unwrap();
    let mut dy = gpu.alloc::<bf16>(x.len()).unwrap();
    match kind {
        Kind::Softmax => sm::softmax_forward(gpu, &dx, rows, cols, &mut dy),
        Kind::LogSoftmax => sm::log_softmax_forward(gpu, &dx, rows, cols, &mut dy),
    }
    .unwrap();
    from_bf16(&dy.to_vec().unwrap())
}

parity_test!(forward_matches_cpu, |gpu| {
    assert_eq!(sm::CACHE_MAX_COLS, 12032, "SHAPES probe both sides of the cache limit");
    for kind in [Kind::Softmax, Kind::LogSoftmax] {
        for (k, &(rows, cols)) in SHAPES.iter().enumerate() {
            let mut x = normal(rows * cols, 3.0, 600 + k as u64);
            // A large offset on one row: max subtraction keeps it exact.
            if rows > 1 {
                x[cols..2 * cols].iter_mut().for_each(|v| *v += 1000.0);
            }
            let what = |t: &str| format!("{kind:?} {t} [{rows}, {cols}]");
            let want = vals(&cpu_forward(kind, &cpu(&x, &[rows, cols])));
            // log_softmax values are O(ln cols + spread): an absolute term for the f32
            // rounding of x − m at |x| ≈ 1000.
            let atol = if kind == Kind::LogSoftmax { 1e-4 } else { 1e-7 };
            assert_close(&what("f32"), &gpu_forward_f32(gpu, kind, &x, rows, cols), &want, atol, 1e-5);

            let xr = round_bf16(&x);
            let want = vals(&cpu_forward(kind, &cpu(&xr, &[rows, cols])));
            let atol = if kind == Kind::LogSoftmax { 1e-4 } else { 1e-7 };
            assert_close(&what("bf16"), &gpu_forward_bf16(gpu, kind, &x, rows, cols), &want, atol, 4e-3);
        }
    }
});

parity_test!(fully_masked_rows_give_zeros, |gpu| {
    // softmax of a row of −∞ is 0 everywhere (as the CPU op), in every kernel variant.
    for &(rows, cols) in &[(2, 5), (2, 64), (2, 3000), (2, 13000)] {
        let mut x = normal(rows * cols, 1.0, 700);
        x[..cols].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
        x[cols + 1] = f32::NEG_INFINITY; // a partly masked row
        let want = vals(&cpu(&x, &[rows, cols]).softmax(-1).unwrap());
        let got = gpu_forward_f32(gpu, Kind::Softmax, &x, rows, cols);
        assert_close(&format!("masked [{rows}, {cols}]"), &got, &want, 1e-7, 1e-5);
        assert!(got[..cols].iter().all(|&v| v == 0.0));
    }
});

/// The CPU backward: x.grad() of Σ y⊙g, and the forward y.
fn cpu_backward(kind: Kind, x: &[f32], g: &[f32], rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
    let xt = cpu(x, &[rows, cols]).requires_grad().unwrap();
    let y = cpu_forward(kind, &xt);
    y.mul(&cpu(g, &[rows, cols])).unwrap().sum_all().unwrap().backward().unwrap();
    (vals(&xt.grad().unwrap()), vals(&y))
}

fn gpu_backward<T: simclr::backend::cuda::kernels::KernelFloat>(
    gpu: &Gpu,
    kind: Kind,
    g: &[T],
    y: &[T],
    rows: usize,
    cols: usize,
) -> Vec<T> {
    let (dg, dy) = (gpu.upload(g).unwrap(), gpu.upload(y).unwrap());
    let mut dx = gpu.alloc::<T>(g.len()).unwrap();
    match kind {
        Kind::Softmax => sm::softmax_backward(gpu, &dg, &dy, rows, cols, &mut dx),
        Kind::LogSoftmax => sm::log_softmax_backward(gpu, &dg, &dy, rows, cols, &mut dx),
    }
    .unwrap();
    dx.to_vec().unwrap()
}

parity_test!(backward_matches_autograd, |gpu| {
    for kind in [Kind::Softmax, Kind::LogSoftmax] {
        for (k, &(rows, cols)) in SHAPES.iter().enumerate() {
            let x = normal(rows * cols, 2.0, 800 + k as u64);
            let g = normal(rows * cols, 1.0, 900 + k as u64);
            let what = |t: &str| format!("{kind:?} backward {t} [{rows}, {cols}]");

            let (want, y) = cpu_backward(kind, &x, &g, rows, cols);
            let got = gpu_backward(gpu, kind, &g, &y, rows, cols);
            // The row sums Σ dy·y / Σ dy are f32 sums of `cols` terms.
            let atol = 1e-6 * (cols as f32).sqrt() * if kind == Kind::LogSoftmax { 1e-2 } else { 1.0 };
            assert_close(&what("f32"), &got, &want, atol.max(1e-7), 1e-5);

            // bf16: rounded x and g for the CPU; the kernel gets bf16 g and the bf16-rounded
            // forward output. That rounding (up to 2⁻⁹|y| absolute) enters through the row
            // reduction: for log_softmax exp(y)·Σdy changes by up to exp(y)|y|·2⁻⁹·|Σdy|
            // ≤ e⁻¹·2⁻⁹·|Σdy|, so each row gets an absolute term proportional to its |Σdy|;
            // softmax's Σ dy⊙y is a small weighted mean and needs only a fixed one.
            let (xr, gr) = (round_bf16(&x), round_bf16(&g));
            let (want, y) = cpu_backward(kind, &xr, &gr, rows, cols);
            let got = from_bf16(&gpu_backward(gpu, kind, &to_bf16(&gr), &to_bf16(&y), rows, cols));
            for r in 0..rows {
                let row = r * cols..(r + 1) * cols;
                let atol = match kind {
                    Kind::Softmax => 4e-3,
                    Kind::LogSoftmax => 1e-3 + 2e-3 * gr[row.clone()].iter().sum::<f32>().abs(),
                };
                assert_close(&what(&format!("bf16 row {r}")), &got[row.clone()], &want[row], atol, 8e-3);
            }
        }
    }
});

parity_test!(softmax_bad_inputs_are_errors, |gpu| {
    let x = gpu.zeros::<f32>(12).unwrap();
    let mut y = gpu.alloc::<f32>(12).unwrap();
    let r = sm::softmax_forward(gpu, &x, 3, 5, &mut y);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let mut short = gpu.alloc::<f32>(11).unwrap();
    let r = sm::log_softmax_forward(gpu, &x, 3, 4, &mut short);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = sm::softmax_backward(gpu, &x, &short, 3, 4, &mut y);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = sm::log_softmax_backward(gpu, &x, &x, 4, 3, &mut short);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    // A shape whose element count overflows is an error, not a panic.
    let r = sm::softmax_forward(gpu, &x, usize::MAX / 2, 3, &mut y);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    // Empty inputs are fine and touch nothing.
    let e = gpu.alloc::<f32>(0).unwrap();
    sm::softmax_forward(gpu, &e, 0, 7, &mut gpu.alloc::<f32>(0).unwrap()).unwrap();
});
