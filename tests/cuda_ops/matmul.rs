//! Matrix products on the device (cuBLAS; a loop on the emulator) vs the CPU.

use super::common::*;

device_test!(matmul_plain_transposed_and_batched, |device| {
    let (a, b) = (randn(&[5, 7], 1), randn(&[7, 3], 2));
    check_op("matmul", device, &[a.clone(), b.clone()], |t| t[0].matmul(&t[1]), 1e-4);
    // Transposed views go to GEMM without a copy.
    let (at, bt) = (randn(&[7, 5], 3), randn(&[3, 7], 4));
    check_op("matmul of transposes", device, &[at, bt], |t| t[0].t()?.matmul(&t[1].t()?), 1e-4);
    // Batched, with B broadcast over the batch (folds into one GEMM) and without.
    let a3 = randn(&[2, 4, 5, 7], 5);
    check_op("batched, shared B", device, &[a3.clone(), b.clone()], |t| t[0].matmul(&t[1]), 1e-4);
    let b3 = randn(&[4, 7, 3], 6);
    check_op("batched, broadcast batch", device, &[a3, b3], |t| t[0].matmul(&t[1]), 1e-4);
});

device_test!(linear_with_and_without_bias, |device| {
    let (x, w, b) = (randn(&[2, 6, 8], 7), randn(&[4, 8], 8), randn(&[4], 9));
    check_op(
        "linear+bias",
        device,
        &[x.clone(), w.clone(), b],
        |t| simclr::ops::matmul::linear(&t[0], &t[1], Some(&t[2])),
        1e-4,
    );
    check_op("linear", device, &[x, w], |t| simclr::ops::matmul::linear(&t[0], &t[1], None), 1e-4);
});

device_test!(autocast_multiplies_in_bf16_and_returns_f32, |device| {
    use simclr::ops::autocast::autocast;
    let (x, w, b) = (randn(&[6, 32], 10), randn(&[16, 32], 11), randn(&[16], 12));
    // bf16 inputs (8 bits of mantissa) over 32-term sums: errors of a few 1e-2 at most.
    let out = check_op(
        "linear under autocast",
        device,
        &[x.clone(), w.clone(), b],
        |t| autocast(true, || simclr::ops::matmul::linear(&t[0], &t[1], Some(&t[2]))),
        6e-2,
    );
    assert_eq!(out.dtype(), simclr::DType::F32);
    // It really ran in bf16: the result differs from the f32 product.
    let exact = x.to_device(device).unwrap().matmul(&w.t().unwrap().to_device(device).unwrap()).unwrap();
    let rounded =
        autocast(true, || x.to_device(device).unwrap().matmul(&w.t().unwrap().to_device(device).unwrap())).unwrap();
    let diff = values(&exact).iter().zip(values(&rounded)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(diff > 1e-5 && diff < 6e-2, "bf16 vs f32 products differ by {diff}");
});
