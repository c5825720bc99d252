//! The ViViT and SimCLR-head ops on the device vs the CPU: layer_norm, softmax/log_softmax,
//! attention (bf16 autocast), NT-Xent, l2_normalize, cross-entropy, dropout and the shape ops
//! that move data (cat, narrow's backward, index_select, gather, to_dtype); then a pre-norm
//! transformer block and a projection head + NT-Xent composed on the device.
//!
//! Tolerances (|diff| ≤ tol + tol·|want|): 1e-5–1e-4 for f32 kernels (f32 rounding, sums in a
//! different order), 1e-3 for a whole f32 transformer block; the fused attention runs with bf16
//! operands under autocast (8-bit mantissa, relative rounding 2⁻⁹ ≈ 2e-3 per value) and is
//! checked to 3e-2, a whole block under autocast to 2e-2 in relative L2 norm; data movement
//! (cat, narrow, gather, dropout's mask, to_dtype) is exact.

use super::common::*;
use simclr::backend::Device;
use simclr::ops::attention::scaled_dot_product_attention;
use simclr::ops::autocast::autocast;
use simclr::ops::dropout::dropout;
use simclr::ops::layernorm::layer_norm;
use simclr::ops::loss::{cross_entropy, nt_xent};
use simclr::ops::matmul::linear;
use simclr::{DType, Error, Rng, Tensor};

/// As `check_op`, for results that carry bf16 rounding through long sums (a whole transformer
/// block): each output and gradient must agree in relative L2 norm, ‖got − want‖ ≤ rel·‖want‖,
/// not element by element (a summed parameter gradient can cancel to a small value whose
/// absolute error is that of its large summands).
fn check_op_rel(
    what: &str,
    device: Device,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> simclr::Result<Tensor>,
    rel: f64,
) {
    let run = |dev: Device| -> Vec<Vec<f64>> {
        let leaves: Vec<Tensor> = inputs.iter().map(|t| t.to_device(dev).unwrap().requires_grad().unwrap()).collect();
        let out = f(&leaves).unwrap_or_else(|e| panic!("{what} on {dev:?}: {e}"));
        assert_eq!(out.device(), dev, "{what}: output on the wrong device");
        let w = randn(out.shape(), 99).to_device(dev).unwrap();
        out.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let mut all = vec![values(&out)];
        all.extend(leaves.iter().map(|l| values(&l.grad().expect("a gradient"))));
        all
    };
    let (want, got) = (run(Device::Cpu), run(device));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let name = if i == 0 { "forward".to_string() } else { format!("d/d input {}", i - 1) };
        let diff = g.iter().zip(w).map(|(g, w)| (g - w).powi(2)).sum::<f64>().sqrt();
        let norm = w.iter().map(|w| w * w).sum::<f64>().sqrt();
        assert!(diff <= rel * norm, "{what} {name}: relative L2 error {:.3e} > {rel:.1e}", diff / norm);
    }
}

/// normal(0, std) values.
fn randn_std(shape: &[usize], std: f64, seed: u64) -> Tensor {
    randn(shape, seed).mul_scalar(std).unwrap()
}

device_test!(layer_norm_matches_cpu, |device| {
    // ViViT-like rows (192 wide, 65 tokens), an odd width, a row longer than the warp kernels
    // take (block path), and a two-axis normalized shape.
    let (x, w, b) = (randn(&[2, 65, 192], 1), randn(&[192], 2), randn(&[192], 3));
    check_op(
        "layer_norm [2,65,192]",
        device,
        &[x, w, b],
        |t| layer_norm(&t[0], &[192], Some(&t[1]), Some(&t[2]), 1e-5),
        1e-4,
    );
    let (x, w) = (randn(&[7, 37], 4), randn(&[37], 5));
    check_op(
        "layer_norm weight only",
        device,
        &[x.clone(), w],
        |t| layer_norm(&t[0], &[37], Some(&t[1]), None, 1e-5),
        1e-4,
    );
    check_op("layer_norm no affine", device, &[x], |t| layer_norm(&t[0], &[37], None, None, 1e-5), 1e-4);
    let (x, w, b) = (randn(&[3, 1500], 6), randn(&[1500], 7), randn(&[1500], 8));
    check_op(
        "layer_norm long rows",
        device,
        &[x, w, b],
        |t| layer_norm(&t[0], &[1500], Some(&t[1]), Some(&t[2]), 1e-5),
        1e-4,
    );
    let (x, w, b) = (randn(&[4, 5, 7], 9), randn(&[5, 7], 10), randn(&[5, 7], 11));
    check_op(
        "layer_norm [5,7]",
        device,
        &[x, w, b],
        |t| layer_norm(&t[0], &[5, 7], Some(&t[1]), Some(&t[2]), 1e-5),
        1e-4,
    );
    // A strided input (a transpose) is made row-major first.
    let x = randn(&[37, 6], 12);
    check_op("layer_norm of a transpose", device, &[x], |t| layer_norm(&t[0].t()?, &[37], None, None, 1e-5), 1e-4);
});

device_test!(softmax_and_log_softmax_match_cpu, |device| {
    // Attention-score rows (65 and 197 tokens), scaled up so the max subtraction matters.
    let x = randn_std(&[2, 3, 65, 65], 4.0, 20);
    check_op("softmax last", device, &[x.clone()], |t| t[0].softmax(-1), 1e-5);
    check_op("log_softmax last", device, &[x.clone()], |t| t[0].log_softmax(-1), 1e-5);
    let x = randn_std(&[5, 197], 4.0, 21);
    check_op("softmax 197", device, &[x.clone()], |t| t[0].softmax(-1), 1e-5);
    check_op("log_softmax 197", device, &[x], |t| t[0].log_softmax(-1), 1e-5);
    // Another axis: moved last, and back.
    let x = randn_std(&[3, 11, 5], 3.0, 22);
    check_op("softmax axis 1", device, &[x.clone()], |t| t[0].softmax(1), 1e-5);
    check_op("log_softmax axis 0", device, &[x], |t| t[0].log_softmax(0), 1e-5);
    // Rows longer than the warp kernels take.
    let x = randn_std(&[2, 1500], 3.0, 23);
    check_op("log_softmax long rows", device, &[x], |t| t[0].log_softmax(-1), 1e-5);
});

device_test!(fused_attention_under_autocast_matches_cpu, |device| {
    let sdpa = |t: &[Tensor], scale| autocast(true, || scaled_dot_product_attention(&t[0], &t[1], &t[2], None, scale));
    // [batch, heads, tokens, head dim]: ViViT's 3 heads × 65 tokens and 6 heads × 197 tokens.
    for (shape, seed) in [([2, 3, 65, 64], 30), ([1, 6, 197, 64], 40)] {
        let (q, k, v) = (randn(&shape, seed), randn(&shape, seed + 1), randn(&shape, seed + 2));
        let out = check_op(&format!("attention {shape:?} (autocast)"), device, &[q, k, v], |t| sdpa(t, None), 3e-2);
        assert_eq!(out.dtype(), DType::F32, "f32 in, f32 out");
    }
    // Different query and key lengths, head dim 32, an explicit scale.
    let (q, k, v) = (randn(&[3, 17, 32], 50), randn(&[3, 40, 32], 51), randn(&[3, 40, 32], 52));
    let out = check_op(
        "attention L≠S d=32 (autocast)",
        device,
        &[q.clone(), k.clone(), v.clone()],
        |t| sdpa(t, Some(0.3)),
        3e-2,
    );
    // It really ran in bf16: the f32 composition gives other values.
    let on = |t: &Tensor| t.to_device(device).unwrap();
    let exact = scaled_dot_product_attention(&on(&q), &on(&k), &on(&v), None, Some(0.3)).unwrap();
    let diff = values(&exact).iter().zip(values(&out)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(diff > 1e-5 && diff < 3e-2, "bf16 vs f32 attention differ by {diff}");
    // bf16 tensors take the kernels without autocast, and stay bf16.
    let b16 = |t: &Tensor| on(t).to_dtype(DType::BF16).unwrap();
    let out16 = scaled_dot_product_attention(&b16(&q), &b16(&k), &b16(&v), None, Some(0.3)).unwrap();
    assert_eq!((out16.dtype(), out16.device()), (DType::BF16, device));
    assert_close("attention of bf16 tensors", &values(&out16), &values(&exact), 3e-2, 3e-2);

    // What the kernels cannot do is an error that says so.
    let x = on(&randn(&[1, 2, 9, 48], 53));
    let err = autocast(true, || scaled_dot_product_attention(&x, &x, &x, None, None)).unwrap_err();
    assert!(err.to_string().contains("head dimension"), "{err}");
    let x = on(&randn(&[1, 2, 9, 64], 54));
    let mask = on(&Tensor::ones(&[9, 9], DType::F32).unwrap());
    let err = scaled_dot_product_attention(&x, &x, &x, Some(&mask), None).unwrap_err();
    assert!(matches!(err, Error::Device { .. }) && err.to_string().contains("mask"), "{err}");
});

device_test!(f32_attention_outside_autocast_matches_cpu, |device| {
    // The composition in f32 on the device: any head dim, f32 accuracy.
    let shape = [2, 3, 65, 64];
    let (q, k, v) = (randn(&shape, 55), randn(&shape, 56), randn(&shape, 57));
    check_op(
        "attention f32",
        device,
        &[q, k, v],
        |t| scaled_dot_product_attention(&t[0], &t[1], &t[2], None, None),
        1e-4,
    );
    let (q, k, v) = (randn(&[2, 9, 48], 58), randn(&[2, 11, 48], 59), randn(&[2, 11, 20], 60));
    check_op(
        "attention f32 d=48",
        device,
        &[q, k, v],
        |t| scaled_dot_product_attention(&t[0], &t[1], &t[2], None, None),
        1e-4,
    );
});

device_test!(nt_xent_l2_normalize_and_cross_entropy_match_cpu, |device| {
    // 2N = 26 projections of 128 (SimCLR's head), and an odd width.
    for (shape, tau) in [([26, 128], 0.1), ([6, 33], 0.5)] {
        let z = randn(&shape, 60);
        check_op(&format!("nt_xent {shape:?}"), device, &[z], |t| nt_xent(&t[0], tau), 1e-4);
    }
    // The loss of a computed (non-leaf, strided) z.
    let z = randn(&[33, 10], 61);
    check_op("nt_xent of a transpose", device, &[z], |t| nt_xent(&t[0].t()?.mul_scalar(2.0)?, 0.2), 1e-4);

    let x = randn(&[7, 33], 62);
    check_op("l2_normalize last", device, &[x.clone()], |t| t[0].l2_normalize(-1, 1e-12), 1e-5);
    check_op("l2_normalize axis 0", device, &[x], |t| t[0].l2_normalize(0, 1e-12), 1e-5);
    // A row below eps: the floor, and its linear gradient g/eps.
    let mut v = randn(&[4, 9], 63).to_vec::<f32>().unwrap();
    v[9..18].iter_mut().for_each(|x| *x *= 1e-4);
    let x = Tensor::from_vec(v, &[4, 9]).unwrap();
    check_op("l2_normalize clamped row", device, &[x], |t| t[0].l2_normalize(1, 1e-3), 1e-5);

    // Cross-entropy: targets are not trainable, so this is check_op by hand.
    let logits = randn_std(&[9, 11], 3.0, 64);
    let targets = Tensor::from_vec(vec![0i64, 10, 3, 3, 7, 1, 10, 5, 2], &[9]).unwrap();
    let run = |dev: Device| {
        let x = logits.to_device(dev).unwrap().requires_grad().unwrap();
        let loss = cross_entropy(&x, &targets.to_device(dev).unwrap()).unwrap();
        assert_eq!(loss.device(), dev);
        loss.mul_scalar(1.7).unwrap().backward().unwrap();
        (values(&loss), values(&x.grad().unwrap()))
    };
    let ((want, want_g), (got, got_g)) = (run(Device::Cpu), run(device));
    assert_close("cross_entropy", &got, &want, 1e-5, 1e-5);
    assert_close("cross_entropy d/dlogits", &got_g, &want_g, 1e-6, 1e-5);
    let bad = Tensor::from_vec(vec![0i64, 11, 0, 0, 0, 0, 0, 0, 0], &[9]).unwrap().to_device(device).unwrap();
    let err = cross_entropy(&logits.to_device(device).unwrap(), &bad).unwrap_err();
    assert!(matches!(err, Error::Index { .. }) && err.to_string().contains("11"), "{err}");
});

device_test!(dropout_drops_the_same_elements_as_the_cpu, |device| {
    let x = randn(&[5, 37], 70);
    // One seed on both devices: the same mask, hence identical values and gradients.
    let out = check_op("dropout", device, &[x], |t| dropout(&t[0], 0.3, true, &mut Rng::new(7)), 0.0);
    let zeros = values(&out).iter().filter(|&&v| v == 0.0).count();
    assert!((20..100).contains(&zeros), "p = 0.3 of 185 elements dropped {zeros}");
});

device_test!(shape_ops_that_move_data_match_cpu, |device| {
    // cat of a plain tensor, a broadcast view and a transpose, along a middle axis.
    let (a, b, c) = (randn(&[2, 3, 4], 80), randn(&[1, 1, 4], 81), randn(&[4, 5, 2], 82));
    check_op(
        "cat views",
        device,
        &[a, b, c],
        |t| Tensor::cat(&[&t[0], &t[1].broadcast_to(&[2, 2, 4])?, &t[2].permute(&[2, 1, 0])?], 1),
        1e-6,
    );
    check_op(
        "cat axis 0, then narrow and sum",
        device,
        &[randn(&[3, 7], 83), randn(&[5, 7], 84)],
        |t| Tensor::cat(&[&t[0], &t[1]], 0)?.narrow(0, 1, 6)?.reshape(&[2, 3, 7])?.sum(&[0], false),
        1e-6,
    );
    // Integer tensors move too (bits are bits).
    let (i, j) = (Tensor::arange(6, DType::I64).unwrap(), Tensor::from_vec(vec![7i64, 8], &[2]).unwrap());
    let joined = Tensor::cat(&[&i.to_device(device).unwrap(), &j.to_device(device).unwrap()], 0).unwrap();
    assert_eq!(joined.to_device(Device::Cpu).unwrap().to_vec::<i64>().unwrap(), vec![0, 1, 2, 3, 4, 5, 7, 8]);

    // narrow's backward writes the gradient into its window of zeros.
    check_op("narrow", device, &[randn(&[4, 9, 5], 85)], |t| t[0].narrow(1, 2, 3), 0.0);
    check_op("narrow of a narrow", device, &[randn(&[6, 8], 86)], |t| t[0].narrow(0, 1, 4)?.narrow(1, 3, 5), 0.0);

    // index_select with repeats: the gradient of a repeated slab is summed.
    let x = randn(&[5, 6, 3], 87);
    check_op("index_select axis 0", device, &[x.clone()], |t| t[0].index_select(0, &[4, 0, 4, 2, 4]), 1e-6);
    check_op("index_select axis 1", device, &[x.clone()], |t| t[0].index_select(1, &[5, 1, 1]), 1e-6);
    check_op("index_select of a transpose", device, &[x], |t| t[0].permute(&[2, 1, 0])?.index_select(2, &[3, 3]), 1e-6);
    let err = randn(&[3, 2], 88).to_device(device).unwrap().index_select(0, &[3]).unwrap_err();
    assert!(matches!(err, Error::Index { .. }), "{err}");

    // gather along each axis, with an index smaller than the input off the axis.
    let x = randn(&[4, 6], 89);
    let idx1 = Tensor::from_vec(vec![5i64, 0, 5, 2, 2, 2, 1, 3, 3], &[3, 3]).unwrap();
    let idx0 = Tensor::from_vec(vec![3i64, 0, 1, 3, 3, 2], &[2, 3]).unwrap();
    for (axis, idx) in [(1, idx1), (0, idx0)] {
        let on_dev = idx.to_device(device).unwrap();
        let run = |dev: Device, idx: &Tensor| {
            let leaf = x.to_device(dev).unwrap().requires_grad().unwrap();
            let out = leaf.gather(axis, idx).unwrap();
            out.mul(&randn(out.shape(), 90).to_device(dev).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            (values(&out), values(&leaf.grad().unwrap()))
        };
        let ((want, want_g), (got, got_g)) = (run(Device::Cpu, &idx), run(device, &on_dev));
        assert_close(&format!("gather axis {axis}"), &got, &want, 0.0, 0.0);
        assert_close(&format!("gather axis {axis} grad"), &got_g, &want_g, 1e-6, 1e-6);
    }
    let bad = Tensor::from_vec(vec![6i64], &[1, 1]).unwrap().to_device(device).unwrap();
    let err = x.to_device(device).unwrap().gather(1, &bad).unwrap_err();
    assert!(matches!(err, Error::Index { .. }), "{err}");

    // to_dtype: f32 ↔ bf16 on the device, rounding as the CPU does; others are refused.
    let x = randn(&[7, 9], 91);
    let round_trip = |dev: Device| {
        let b = x.to_device(dev).unwrap().to_dtype(DType::BF16).unwrap();
        assert_eq!((b.dtype(), b.device()), (DType::BF16, dev));
        values(&b.to_dtype(DType::F32).unwrap())
    };
    assert_close("to_dtype bf16 and back", &round_trip(device), &round_trip(Device::Cpu), 0.0, 0.0);
    let err = x.to_device(device).unwrap().to_dtype(DType::F64).unwrap_err();
    assert!(matches!(err, Error::Device { .. }), "{err}");
});

/// A pre-norm transformer block as ViViT's (`nn::vivit::Block`): x + attn(ln1(x)), then
/// that plus mlp(ln2(·)) with GELU. `p` = [x, ln1 γ, ln1 β, in_proj w, in_proj b, out w, out b,
/// ln2 γ, ln2 β, fc1 w, fc1 b, fc2 w, fc2 b].
fn block(p: &[Tensor], heads: usize) -> simclr::Result<Tensor> {
    let x = &p[0];
    let (b, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let h = layer_norm(x, &[d], Some(&p[1]), Some(&p[2]), 1e-6)?;
    let qkv = linear(&h, &p[3], Some(&p[4]))?.reshape(&[b, l, 3, heads, d / heads])?.permute(&[2, 0, 3, 1, 4])?;
    let part = |i: usize| qkv.narrow(0, i, 1)?.squeeze(0);
    let o = scaled_dot_product_attention(&part(0)?, &part(1)?, &part(2)?, None, None)?;
    let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, l, d])?;
    let x = x.add(&linear(&o, &p[5], Some(&p[6]))?)?;
    let h = layer_norm(&x, &[d], Some(&p[7]), Some(&p[8]), 1e-6)?;
    let h = linear(&linear(&h, &p[9], Some(&p[10]))?.gelu_erf()?, &p[11], Some(&p[12]))?;
    x.add(&h)
}

device_test!(transformer_block_matches_cpu, |device| {
    // ViViT-tiny widths: 3 heads of 64 (dim 192), 65 tokens, MLP 2×.
    let (d, hidden) = (192, 384);
    let w = |shape: &[usize], seed| randn_std(shape, 1.0 / (shape[shape.len() - 1] as f64).sqrt(), seed);
    let small = |n, seed| randn_std(&[n], 0.1, seed);
    let params = vec![
        randn(&[2, 65, d], 100),
        randn_std(&[d], 0.1, 101).add_scalar(1.0).unwrap(),
        small(d, 102),
        w(&[3 * d, d], 103),
        small(3 * d, 104),
        w(&[d, d], 105),
        small(d, 106),
        randn_std(&[d], 0.1, 107).add_scalar(1.0).unwrap(),
        small(d, 108),
        w(&[hidden, d], 109),
        small(hidden, 110),
        w(&[d, hidden], 111),
        small(d, 112),
    ];
    // f32: every op on the device in f32 (attention composed).
    check_op("transformer block f32", device, &params, |p| block(p, 3), 1e-3);
    // Under autocast the products and the attention run in bf16, and that rounding reaches every
    // output and gradient through long sums: compared in relative L2 norm.
    check_op_rel("transformer block (autocast)", device, &params, |p| autocast(true, || block(p, 3)), 2e-2);
});

device_test!(projection_head_and_nt_xent_match_cpu, |device| {
    // 2N = 22 encoder features of 192 → Linear → ReLU → Linear(128) → NT-Xent (τ = 0.1), with
    // the two views joined by cat as SimCLR does.
    let w = |shape: &[usize], seed| randn_std(shape, 1.0 / (shape[1] as f64).sqrt(), seed);
    let params = vec![
        randn(&[11, 192], 120),
        randn(&[11, 192], 121),
        w(&[192, 192], 122),
        randn_std(&[192], 0.1, 123),
        w(&[128, 192], 124),
        randn_std(&[128], 0.1, 125),
    ];
    check_op(
        "projection head + nt_xent",
        device,
        &params,
        |p| {
            let h = Tensor::cat(&[&p[0], &p[1]], 0)?;
            let z = linear(&linear(&h, &p[2], Some(&p[3]))?.relu()?, &p[4], Some(&p[5]))?;
            nt_xent(&z, 0.1)
        },
        1e-4,
    );
});
