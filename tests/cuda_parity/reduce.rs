//! Reductions against the CPU ops: `Tensor::sum/mean/max` over the last axis, `sum` over the
//! first (and a middle) axis, `sum_all` and the sum of squares of a whole buffer.
//!
//! References run in f64. The kernels accumulate in f32, so sums are checked to
//! atol ≈ 1e-6·√(terms) (the typical f32 rounding of a sum of |x| < 1 values) plus rtol 1e-5;
//! bf16 inputs are exact in f32, so bf16 runs are held to the same tolerance.

use crate::common::*;
use simclr::backend::cuda::kernels::reduce::{self, RowReduction};
use simclr::backend::cuda::kernels::KernelFloat;
use simclr::backend::cuda::{DeviceBuffer, Gpu};
use simclr::{Error, Tensor};

fn cpu(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.iter().map(|&x| x as f64).collect::<Vec<_>>(), shape).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_f64_vec().iter().map(|&x| x as f32).collect()
}

fn sum_atol(terms: usize) -> f32 {
    1e-6 * (terms as f32).sqrt().max(1.0)
}

/// A device buffer and the values it actually holds (as f32).
type Uploaded<T> = (DeviceBuffer<T>, Vec<f32>);

/// The same values as f32 and bf16 device buffers.
fn both(gpu: &Gpu, x: &[f32]) -> (Uploaded<f32>, Uploaded<half::bf16>) {
    ((gpu.upload(x).unwrap(), x.to_vec()), (gpu.upload(&to_bf16(x)).unwrap(), round_bf16(x)))
}

fn rows_case<T: KernelFloat>(gpu: &Gpu, dx: &DeviceBuffer<T>, x: &[f32], rows: usize, cols: usize) {
    let t = cpu(x, &[rows, cols]);
    for op in [RowReduction::Sum, RowReduction::Mean, RowReduction::Max] {
        let want = match op {
            RowReduction::Sum => t.sum(&[-1], false),
            RowReduction::Mean => t.mean(&[-1], false),
            RowReduction::Max => t.max(&[-1], false),
        };
        let want = vals(&want.unwrap());
        let mut out = gpu.alloc::<f32>(rows).unwrap();
        reduce::reduce_rows(gpu, op, dx, rows, cols, &mut out).unwrap();
        let atol = match op {
            RowReduction::Sum => sum_atol(cols),
            RowReduction::Mean => sum_atol(cols) / cols as f32,
            RowReduction::Max => 0.0,
        };
        let what = format!("{op:?} {} [{rows}, {cols}]", T::SUFFIX);
        assert_close(&what, &out.to_vec().unwrap(), &want, atol, 1e-5);
    }
}

parity_test!(row_reductions_match_cpu, |gpu| {
    // Warp per row up to 1024 columns, a block of 256 / 512 / 1024 threads beyond.
    let shapes = [
        (1, 1),
        (3, 31),
        (33, 33),
        (5, 257),
        (2, 1000),
        (65, 3),
        (1, 1024),
        (2, 1025),
        (3, 4099),
        (2, 9000),
        (1, 33000),
    ];
    for (k, &(rows, cols)) in shapes.iter().enumerate() {
        let x = uniform(rows * cols, -1.0, 1.0, 300 + k as u64);
        let ((d32, x32), (d16, x16)) = both(gpu, &x);
        rows_case(gpu, &d32, &x32, rows, cols);
        rows_case(gpu, &d16, &x16, rows, cols);
    }
    // All-negative rows: the max must not come from the identity.
    let x = uniform(3 * 70, -9.0, -1.0, 399);
    let ((d32, x32), _) = both(gpu, &x);
    rows_case(gpu, &d32, &x32, 3, 70);
});

fn middle_case<T: KernelFloat>(gpu: &Gpu, dx: &DeviceBuffer<T>, x: &[f32], batch: usize, rows: usize, cols: usize) {
    let want = vals(&cpu(x, &[batch, rows, cols]).sum(&[1], false).unwrap());
    let mut out = gpu.alloc::<f32>(batch * cols).unwrap();
    reduce::sum_middle(gpu, dx, batch, rows, cols, &mut out).unwrap();
    let what = format!("sum_middle {} [{batch}, {rows}, {cols}]", T::SUFFIX);
    let got = out.to_vec().unwrap();
    assert_close(&what, &got, &want, sum_atol(rows), 1e-5);
    // Deterministic: a second run gives the same bits.
    reduce::sum_middle(gpu, dx, batch, rows, cols, &mut out).unwrap();
    assert_eq!(out.to_vec().unwrap(), got, "{what}: rerun differs");
}

fn cols_case<T: KernelFloat>(gpu: &Gpu, dx: &DeviceBuffer<T>, x: &[f32], rows: usize, cols: usize) {
    let want = vals(&cpu(x, &[rows, cols]).sum(&[0], false).unwrap());
    let mut out = gpu.alloc::<f32>(cols).unwrap();
    reduce::sum_cols(gpu, dx, rows, cols, &mut out).unwrap();
    let what = format!("sum_cols {} [{rows}, {cols}]", T::SUFFIX);
    assert_close(&what, &out.to_vec().unwrap(), &want, sum_atol(rows), 1e-5);
}

parity_test!(column_sums_match_cpu, |gpu| {
    // [rows, cols] -> [cols] (Tensor::sum over axis 0), single- and two-stage.
    let shapes = [(1, 1), (31, 3), (33, 257), (1000, 33), (4099, 5), (257, 1000), (3, 4099), (5000, 1)];
    for (k, &(rows, cols)) in shapes.iter().enumerate() {
        let x = uniform(rows * cols, -1.0, 1.0, 400 + k as u64);
        let ((d32, x32), (d16, x16)) = both(gpu, &x);
        cols_case(gpu, &d32, &x32, rows, cols);
        cols_case(gpu, &d16, &x16, rows, cols);
    }
    // [batch, rows, cols] -> [batch, cols].
    for (k, &(batch, rows, cols)) in [(3, 50, 7), (2, 1500, 40), (5, 1, 33), (1, 600, 1)].iter().enumerate() {
        let x = uniform(batch * rows * cols, -1.0, 1.0, 450 + k as u64);
        let ((d32, x32), (d16, x16)) = both(gpu, &x);
        middle_case(gpu, &d32, &x32, batch, rows, cols);
        middle_case(gpu, &d16, &x16, batch, rows, cols);
    }
    // Zero rows sum to zeros.
    let empty = gpu.alloc::<f32>(0).unwrap();
    let mut out = gpu.upload(&[7.0f32; 4]).unwrap();
    reduce::sum_cols(gpu, &empty, 0, 4, &mut out).unwrap();
    assert_eq!(out.to_vec().unwrap(), vec![0.0; 4]);
});

parity_test!(whole_buffer_sums_match_cpu, |gpu| {
    // One block up to 8192 f32 / 16384 bf16 elements; two stages beyond.
    for (k, &n) in [0usize, 1, 3, 31, 4099, 8193, 100_003, 300_007].iter().enumerate() {
        let x = uniform(n, -1.0, 1.0, 500 + k as u64);
        let ((d32, x32), (d16, x16)) = both(gpu, &x);
        // Results go to slot 1 of a 3-slot buffer; the other slots stay untouched.
        for (xs, suffix) in [(&x32, "f32"), (&x16, "bf16")] {
            let t = cpu(xs, &[n]);
            let want_sum = t.sum_all().unwrap().item().unwrap() as f32;
            let want_sq = t.mul(&t).unwrap().sum_all().unwrap().item().unwrap() as f32;
            let mut out = gpu.upload(&[-1.0f32; 3]).unwrap();
            if suffix == "f32" {
                reduce::sum_all(gpu, &d32, &mut out, 1).unwrap();
            } else {
                reduce::sum_all(gpu, &d16, &mut out, 1).unwrap();
            }
            let got = out.to_vec().unwrap();
            assert_eq!((got[0], got[2]), (-1.0, -1.0), "sum_all {suffix} n={n}: other slots");
            assert_close(&format!("sum_all {suffix} n={n}"), &got[1..2], &[want_sum], sum_atol(n), 1e-5);
            if suffix == "f32" {
                reduce::sum_squares_all(gpu, &d32, &mut out, 1).unwrap();
            } else {
                reduce::sum_squares_all(gpu, &d16, &mut out, 1).unwrap();
            }
            let got = out.to_vec().unwrap()[1];
            assert_close(&format!("sum_squares_all {suffix} n={n}"), &[got], &[want_sq], sum_atol(n), 1e-5);
        }
        if n < 300_000 {
            continue;
        }
        // Deterministic: the same bits again.
        let mut a = gpu.alloc::<f32>(1).unwrap();
        let mut b = gpu.alloc::<f32>(1).unwrap();
        reduce::sum_squares_all(gpu, &d32, &mut a, 0).unwrap();
        reduce::sum_squares_all(gpu, &d32, &mut b, 0).unwrap();
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap(), "sum_squares_all n={n}: rerun differs");
    }
});

parity_test!(reduce_bad_inputs_are_errors, |gpu| {
    let x = gpu.zeros::<f32>(12).unwrap();
    let mut out = gpu.alloc::<f32>(3).unwrap();
    let r = reduce::reduce_rows(gpu, RowReduction::Sum, &x, 3, 5, &mut out);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = reduce::reduce_rows(gpu, RowReduction::Sum, &x, 4, 3, &mut out);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let empty = gpu.alloc::<f32>(0).unwrap();
    let r = reduce::reduce_rows(gpu, RowReduction::Max, &empty, 3, 0, &mut out);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = reduce::sum_cols(gpu, &x, 4, 3, &mut out);
    assert!(r.is_ok(), "{r:?}");
    let r = reduce::sum_cols(gpu, &x, 3, 4, &mut out);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = reduce::sum_middle(gpu, &x, 2, 2, 3, &mut out);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = reduce::sum_all(gpu, &x, &mut out, 3);
    assert!(matches!(r, Err(Error::Index { .. })), "{r:?}");
});
