//! Fused NT-Xent (kernels/nt_xent.cu) against `simclr::ops::loss::nt_xent` run in f64 with
//! autograd: the loss and dL/dz.

use crate::common::*;
use simclr::backend::cuda::kernels::nt_xent::NtXent;
use simclr::backend::cuda::Gpu;
use simclr::ops::loss::nt_xent;
use simclr::Tensor;

/// The CPU loss and upstream·dL/dz of `z: [rows, dim]`, in f64.
fn reference(z: &[f32], rows: usize, dim: usize, tau: f32, upstream: f64) -> (f64, Vec<f32>) {
    let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
    let zt = Tensor::from_vec(z64, &[rows, dim]).unwrap().requires_grad().unwrap();
    let loss = nt_xent(&zt, tau as f64).unwrap();
    loss.mul_scalar(upstream).unwrap().backward().unwrap();
    let grad = zt.grad().unwrap().to_f64_vec().iter().map(|&v| v as f32).collect();
    (loss.item().unwrap(), grad)
}

/// Compares row by row, with the absolute tolerance relative to the row's largest gradient
/// (a zero row's gradient is ~1e12 times the others', see the norm clamp).
#[track_caller]
fn assert_rows_close(what: &str, got: &[f32], want: &[f32], dim: usize, atol_rel: f32, rtol: f32) {
    for (r, (g, w)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_close(&format!("{what} row {r}"), g, w, atol_rel * scale + 1e-30, rtol);
    }
}

/// Runs forward + backward on the device and checks both against the CPU; on small batches
/// also checks that a forward pass without gradient gives the same loss.
#[allow(clippy::too_many_arguments)]
fn check_f32(gpu: &Gpu, z: &[f32], rows: usize, dim: usize, tau: f32, loss_rtol: f64, atol_rel: f32, rtol: f32) {
    let upstream = 0.75;
    let (want_loss, want_dz) = reference(z, rows, dim, tau, upstream as f64);
    let zd = gpu.upload(z).unwrap();
    let (loss, saved) = NtXent::forward(gpu, &zd, rows / 2, dim, tau, true).unwrap();
    let what = format!("2N={rows} D={dim} tau={tau}");
    let err = (loss as f64 - want_loss).abs();
    assert!(err <= loss_rtol * want_loss.abs().max(1.0), "{what}: loss {loss}, want {want_loss} (|diff| {err:.3e})");
    let saved = saved.expect("want_grad gives saved state");
    assert_eq!(saved.shape(), (rows, dim));
    let dz = NtXent::backward(saved, upstream).unwrap().to_vec().unwrap();
    assert_rows_close(&format!("{what} dz"), &dz, &want_dz, dim, atol_rel, rtol);

    if rows > 6 {
        return; // keeps the emulated tests fast
    }
    // Without a gradient: the same loss, nothing saved.
    let (again, none) = NtXent::forward(gpu, &zd, rows / 2, dim, tau, false).unwrap();
    assert!(none.is_none());
    assert_eq!(again.to_bits(), loss.to_bits(), "{what}: loss must not depend on want_grad");
}

parity_test!(nt_xent_f32_small_batches, |gpu| {
    for rows in [2, 4, 6] {
        for dim in [1, 3, 16, 128] {
            for tau in [0.5, 0.1] {
                let z = normal(rows * dim, 1.0, (rows * 1000 + dim) as u64);
                check_f32(gpu, &z, rows, dim, tau, 5e-6, 1e-5, 1e-4);
            }
        }
    }
});

parity_test!(nt_xent_f32_larger_batches, |gpu| {
    // 34 rows: a row length that is not a multiple of 4 (float2 path); 130: several warps.
    for (rows, dim, tau) in [(34, 1, 0.5), (34, 3, 0.1), (34, 16, 0.5), (34, 128, 0.1), (130, 3, 0.5), (130, 128, 0.1)]
    {
        let z = normal(rows * dim, 1.0, (rows * 1000 + dim) as u64);
        check_f32(gpu, &z, rows, dim, tau, 5e-6, 1e-5, 1e-4);
    }
    // 2N a multiple of 4 (float4 path) and D not a multiple of 4 (scalar normalisation).
    let z = normal(64 * 17, 1.0, 5);
    check_f32(gpu, &z, 64, 17, 0.2, 5e-6, 1e-5, 1e-4);
});

parity_test!(nt_xent_f32_zero_row_uses_the_norm_clamp, |gpu| {
    for (rows, dim) in [(4, 3), (34, 16)] {
        let mut z = normal(rows * dim, 1.0, 77);
        // Row 1: zero, so ẑ = 0 and dz = dẑ/1e-12. Row 2: norm below 1e-12, so ẑ = z/1e-12 is
        // linear in z and dz = dẑ/1e-12 without the radial projection (which would not vanish).
        z[dim..2 * dim].fill(0.0);
        z[2 * dim..3 * dim].iter_mut().enumerate().for_each(|(k, v)| *v = 3e-14 * (1.0 + k as f32 / dim as f32));
        check_f32(gpu, &z, rows, dim, 0.5, 5e-6, 1e-5, 1e-4);
    }
});

parity_test!(nt_xent_f32_large_logits_stay_finite, |gpu| {
    // Nearly identical rows: every similarity is ≈ 1, so every logit is ≈ 1/τ. At τ = 0.005
    // exp(200) overflows f32; the online max keeps the kernel finite. The softmax over near-equal
    // logits amplifies the f32 rounding of ẑ·ẑ (≈ 6e-8 · 1/τ), hence the looser gradient bound.
    let (rows, dim) = (34, 16);
    let base = normal(dim, 1.0, 3);
    let noise = normal(rows * dim, 1e-3, 4);
    let z: Vec<f32> = (0..rows * dim).map(|i| base[i % dim] + noise[i]).collect();
    for tau in [0.05, 0.005] {
        check_f32(gpu, &z, rows, dim, tau, 5e-6, 5e-4, 5e-4);
    }
});

parity_test!(nt_xent_bf16_input, |gpu| {
    // bf16 z and dz; the CPU sees the bf16-rounded z. Inside, everything is f32, so the loss is
    // as accurate as for f32 input and dz carries bf16 rounding (2^-9 relative) on top.
    for (rows, dim, tau) in [(6, 3, 0.5), (34, 16, 0.1), (130, 128, 0.1), (64, 24, 0.5)] {
        let z = round_bf16(&normal(rows * dim, 1.0, (rows + dim) as u64));
        let (want_loss, want_dz) = reference(&z, rows, dim, tau, 1.0);
        let zb = gpu.upload(&to_bf16(&z)).unwrap();
        let (loss, saved) = NtXent::forward(gpu, &zb, rows / 2, dim, tau, true).unwrap();
        let err = (loss as f64 - want_loss).abs();
        assert!(err <= 1e-5 * want_loss.abs(), "bf16 2N={rows} D={dim}: loss {loss}, want {want_loss}");
        let dz = from_bf16(&NtXent::backward(saved.unwrap(), 1.0).unwrap().to_vec().unwrap());
        assert_rows_close(&format!("bf16 2N={rows} D={dim} dz"), &dz, &want_dz, dim, 1e-2, 8e-3);
    }
});

parity_test!(nt_xent_rejects_bad_input, |gpu| {
    let z = gpu.upload(&normal(3 * 4, 1.0, 1)).unwrap();
    // Three rows of 4 cannot be N pairs of any N.
    for n_pairs in [1, 2] {
        let err = NtXent::forward(gpu, &z, n_pairs, 4, 0.5, false).unwrap_err();
        assert!(err.to_string().contains("2N·D"), "{err}");
    }
    let z = gpu.upload(&normal(4 * 4, 1.0, 1)).unwrap();
    let err = NtXent::forward(gpu, &z, 2, 5, 0.5, false).unwrap_err();
    assert!(err.to_string().contains("16 elements"), "{err}");
    assert!(NtXent::forward(gpu, &z, 0, 4, 0.5, false).is_err());
    assert!(NtXent::forward(gpu, &z, 2, 0, 0.5, false).is_err());
    for tau in [0.0, -0.1, f32::NAN, f32::INFINITY] {
        let err = NtXent::forward(gpu, &z, 2, 4, tau, false).unwrap_err();
        assert!(err.to_string().contains("temperature"), "{err}");
    }
    // The good call still works after the bad ones.
    assert!(NtXent::forward(gpu, &z, 2, 4, 0.5, false).unwrap().0.is_finite());
});
