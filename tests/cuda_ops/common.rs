//! The two-device test macro and the CPU-vs-device comparison shared by the modules.

use simclr::backend::Device;
use simclr::{Rng, Tensor};

/// `device_test!(name, |device| { ... })` defines `name::emulated` (runs everywhere, on the
/// kernel emulator) and `name::gpu` (ignored; needs a CUDA device). The body gets the
/// `Device` to put tensors on.
macro_rules! device_test {
    ($name:ident, |$device:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn check($device: simclr::backend::Device) $body
            #[test]
            fn emulated() {
                simclr::backend::cuda::devices::use_emulator();
                check(simclr::backend::Device::Cuda(0));
            }
            #[test]
            #[ignore = "needs a CUDA GPU: run with --ignored on the GPU machine"]
            fn gpu() {
                assert!(
                    !simclr::backend::cuda::devices::emulated(),
                    "run the GPU tests on their own (--ignored), without SIMCLR_CUDA_EMULATOR"
                );
                check(simclr::backend::Device::Cuda(0));
            }
        }
    };
}

/// An f32 tensor of normal(0, 1) values.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, simclr::DType::F32, &mut Rng::new(seed)).unwrap()
}

/// Values as f64, wherever the tensor is.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_device(Device::Cpu).unwrap().to_f64_vec()
}

/// Asserts |got − want| ≤ atol + rtol·|want| elementwise, naming the worst element.
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .enumerate()
        .map(|(i, (g, w))| (i, (g - w).abs() - (atol + rtol * w.abs())))
        .fold((0, f64::MIN), |a, b| if b.1 > a.1 || b.1.is_nan() { b } else { a });
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}[{i}]: got {}, want {} (|diff| {:.3e} > atol {atol:.1e} + rtol {rtol:.1e}·|want|)",
        got[i],
        want[i],
        (got[i] - want[i]).abs()
    );
}

/// Runs `f` on CPU copies and on `device` copies of `inputs` (all trainable), then
/// back-propagates Σ out·w for a fixed random w, and compares the outputs and every
/// input's gradient. Returns the device output.
#[track_caller]
pub fn check_op(
    what: &str,
    device: Device,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> simclr::Result<Tensor>,
    tol: f64,
) -> Tensor {
    let run = |dev: Device| -> (Tensor, Vec<Vec<f64>>) {
        let leaves: Vec<Tensor> = inputs.iter().map(|t| t.to_device(dev).unwrap().requires_grad().unwrap()).collect();
        let out = f(&leaves).unwrap_or_else(|e| panic!("{what} on {dev:?}: {e}"));
        assert_eq!(out.device(), dev, "{what}: output on the wrong device");
        let w = randn(out.shape(), 99).to_device(dev).unwrap();
        out.mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap_or_else(|e| panic!("{what} backward on {dev:?}: {e}"));
        let grads = leaves
            .iter()
            .map(|l| {
                let g = l.grad().unwrap_or_else(|| panic!("{what}: no gradient on {dev:?}"));
                assert_eq!(g.device(), dev, "{what}: gradient on the wrong device");
                values(&g)
            })
            .collect();
        (out, grads)
    };
    let (want, want_grads) = run(Device::Cpu);
    let (got, got_grads) = run(device);
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_close(&format!("{what} forward"), &values(&got), &values(&want), tol, tol);
    for (i, (g, w)) in got_grads.iter().zip(&want_grads).enumerate() {
        assert_close(&format!("{what} d/d input {i}"), g, w, tol, tol);
    }
    got
}
