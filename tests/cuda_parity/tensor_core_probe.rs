//! The tensor-core primitives of kernels/mma.cuh (mma.sync m16n8k16, ldmatrix with and without
//! .trans, cp.async and its zero-fill) against a plain f64 matrix product. On the emulator this
//! checks the shuffle-based stand-ins; on the GPU, the hardware: both must give the same
//! fragments for the convolution and attention parity tests to mean anything.
//!
//! Inputs are rounded to bf16/f16 first, so every product is exact in f32; the only error is
//! the order of the 16 f32 additions (rtol 1e-5).

use crate::common::*;
use half::{bf16, f16};
use simclr::backend::cuda::kernels::tensor_core_probe::{tensor_core_probe, TensorCoreInput, PROBE_OUTPUT_LEN};
use simclr::backend::cuda::Gpu;

fn reference(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0f32; 256];
    for i in 0..16 {
        for j in 0..16 {
            c[i * 16 + j] = (0..16).map(|k| a[i * 16 + k] as f64 * b[k * 16 + j] as f64).sum::<f64>() as f32;
        }
    }
    c
}

fn check_probe<T: TensorCoreInput>(gpu: &Gpu, convert: fn(f32) -> T, back: fn(T) -> f32) {
    // Distinct values everywhere, so a fragment element landing in the wrong place shows.
    let a: Vec<T> = uniform(256, -2.0, 2.0, 11).into_iter().map(convert).collect();
    let b: Vec<T> = uniform(256, -2.0, 2.0, 12).into_iter().map(convert).collect();
    let want =
        reference(&a.iter().map(|&x| back(x)).collect::<Vec<_>>(), &b.iter().map(|&x| back(x)).collect::<Vec<_>>());
    let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
    let mut out = gpu.alloc::<f32>(PROBE_OUTPUT_LEN).unwrap();
    tensor_core_probe(gpu, &da, &db, &mut out).unwrap();
    let got = gpu.download(&out).unwrap();
    assert_close("fragments by formula", &got[..256], &want, 1e-5, 1e-5);
    assert_close("ldmatrix.x4 / ldmatrix.x4.trans", &got[256..512], &want, 1e-5, 1e-5);
    assert_close("ldmatrix.x4 / ldmatrix.x2 on Bᵀ", &got[512..768], &want, 1e-5, 1e-5);
    assert_eq!(&got[768..], &[0f32; 8], "cp.async with valid = false must write zeros");
}

parity_test!(bf16_fragments_match_a_matrix_product, |gpu| {
    check_probe::<bf16>(gpu, bf16::from_f32, bf16::to_f32);
});

parity_test!(f16_fragments_match_a_matrix_product, |gpu| {
    check_probe::<f16>(gpu, f16::from_f32, f16::to_f32);
});
