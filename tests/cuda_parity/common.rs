//! The two-device test macro and comparison helpers shared by the parity modules.

use half::bf16;
use simclr::backend::cuda::Gpu;
use simclr::Rng;

/// `parity_test!(name, |gpu| { ... })` defines `name::emulated` (runs everywhere) and
/// `name::gpu` (ignored; needs a CUDA device). The body gets a `&Gpu`.
macro_rules! parity_test {
    ($name:ident, |$gpu:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn check($gpu: &simclr::backend::cuda::Gpu) $body
            #[test]
            fn emulated() {
                check(&simclr::backend::cuda::Gpu::emulated());
            }
            #[test]
            #[ignore = "needs a CUDA GPU: run with --ignored on the GPU machine"]
            fn gpu() {
                check(&$crate::common::real_gpu());
            }
        }
    };
}

/// GPU 0, or a panic that says why there is none.
pub fn real_gpu() -> Gpu {
    Gpu::open(0).unwrap_or_else(|e| panic!("the ignored GPU tests need a CUDA device: {e}"))
}

/// Values in [lo, hi) from a seeded generator.
pub fn uniform(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| lo + (hi - lo) * rng.uniform() as f32).collect()
}

/// Normal(0, std) values from a seeded generator.
pub fn normal(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| std * rng.normal() as f32).collect()
}

pub fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub fn from_bf16(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Rounds through bf16: the inputs a bf16 kernel actually sees.
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// Asserts |got − want| ≤ atol + rtol·|want| elementwise, naming the worst element.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        assert!(!g.is_nan() || w.is_nan(), "{what}[{i}]: got NaN, want {w}");
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}[{i}]: got {}, want {} (|diff| {:.3e} > atol {atol:.1e} + rtol {rtol:.1e}·|want|)",
        got[i],
        want[i],
        (got[i] - want[i]).abs()
    );
}
