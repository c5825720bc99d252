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
