//! Forward values of the layer ops against naive references, NT-Xent against
//! its composition from primitive ops, and errors on bad input.

use simclr::autograd::no_grad;
use simclr::ops::attention::scaled_dot_product_attention;
use simclr::ops::batchnorm::{batch_norm_2d, RunningStats};
use simclr::ops::conv2d::conv2d;
use simclr::ops::dropout::dropout;
use simclr::ops::layernorm::layer_norm;
use simclr::ops::loss::{cross_entropy, nt_xent};
use simclr::ops::pool::{adaptive_avg_pool2d, max_pool2d, temporal_mean};
use simclr::{DType, Error, Result, Rng, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, DType::F64, &mut Rng::new(seed)).unwrap()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
    }
}

/// The definition of convolution, seven nested loops.
fn naive_conv(x: &Tensor, w: &Tensor, b: &[f64], s: (usize, usize), p: (usize, usize)) -> Vec<f64> {
    let (xs, ws) = (x.shape(), w.shape());
    let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (o, kh, kw) = (ws[0], ws[2], ws[3]);
    let (oh, ow) = ((h + 2 * p.0 - kh) / s.0 + 1, (wd + 2 * p.1 - kw) / s.1 + 1);
    let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
    let mut out = vec![0.0; n * o * oh * ow];
    for ni in 0..n {
        for oi in 0..o {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = b[oi];
                    for ci in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let (iy, ix) =
                                    ((y * s.0 + i) as isize - p.0 as isize, (xo * s.1 + j) as isize - p.1 as isize);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += xv[((ni * c + ci) * h + iy as usize) * wd + ix as usize]
                                        * wv[((oi * c + ci) * kh + i) * kw + j];
                                }
                            }
                        }
                    }
                    out[((ni * o + oi) * oh + y) * ow + xo] = acc;
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_matches_the_definition() {
    for (batch, s, p, k) in [
        (2, (1, 1), (1, 1), (3, 3)),
        (3, (2, 1), (0, 2), (2, 3)),
        (1, (2, 2), (3, 3), (7, 7)),
        (8, (2, 2), (0, 0), (1, 1)),
    ] {
        let x = randn(&[batch, 3, 9, 8], 1);
        let w = randn(&[4, 3, k.0, k.1], 2);
        let b = [0.5, -1.0, 0.25, 2.0];
        let bt = Tensor::from_f64s(&b, &[4], DType::F64).unwrap();
        let got = conv2d(&x, &w, Some(&bt), s, p).unwrap();
        assert_close(&got.to_f64_vec(), &naive_conv(&x, &w, &b, s, p), 1e-12);
        // f32 agrees with f64 to f32 precision
        let got32 = conv2d(
            &x.to_dtype(DType::F32).unwrap(),
            &w.to_dtype(DType::F32).unwrap(),
            Some(&bt.to_dtype(DType::F32).unwrap()),
            s,
            p,
        )
        .unwrap();
        assert_close(&got32.to_f64_vec(), &got.to_f64_vec(), 1e-4);
    }
}

#[test]
fn pooling_values() {
    let x = Tensor::arange(16, DType::F64).unwrap().reshape(&[1, 1, 4, 4]).unwrap();
    assert_eq!(max_pool2d(&x, (2, 2), (2, 2), (0, 0)).unwrap().to_f64_vec(), vec![5.0, 7.0, 13.0, 15.0]);
    // padding never wins, even against negative values
    let neg = x.mul_scalar(-1.0).unwrap();
    assert_eq!(max_pool2d(&neg, (3, 3), (2, 2), (1, 1)).unwrap().to_f64_vec(), vec![0.0, -1.0, -4.0, -5.0]);
    // adaptive average: 4 → 3 bins [0,2), [1,3), [2,4)
    let row = Tensor::from_f64s(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 1, 4], DType::F64).unwrap();
    assert_eq!(adaptive_avg_pool2d(&row, (1, 3)).unwrap().to_f64_vec(), vec![1.5, 2.5, 3.5]);
    let clips = Tensor::from_f64s(&[1.0, 3.0, 5.0, 7.0], &[1, 2, 2], DType::F64).unwrap();
    assert_eq!(temporal_mean(&clips).unwrap().to_f64_vec(), vec![3.0, 5.0]);
}

#[test]
fn batch_norm_running_statistics_and_eval_mode() {
    // Channel 0 holds 1..4, channel 1 holds 2·(1..4).
    let x = Tensor::from_f64s(&[1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0], &[1, 2, 2, 2], DType::F64).unwrap();
    let mut stats = RunningStats::new(2, DType::F64).unwrap();
    let y = batch_norm_2d(&x, None, None, &mut stats, true, 1e-5).unwrap();
    // running = 0.9·init + 0.1·batch; the variance uses the unbiased estimate (5/3 and 20/3).
    assert_close(&stats.mean.to_f64_vec(), &[0.25, 0.5], 1e-12);
    assert_close(&stats.var.to_f64_vec(), &[0.9 + 0.1 * 5.0 / 3.0, 0.9 + 0.1 * 20.0 / 3.0], 1e-12);
    // Training output is normalised per channel with the biased variance.
    let yv = y.to_f64_vec();
    let expect0: Vec<f64> = [1.0, 2.0, 3.0, 4.0].iter().map(|v: &f64| (v - 2.5) / (1.25f64 + 1e-5).sqrt()).collect();
    assert_close(&yv[..4], &expect0, 1e-12);
    // Eval mode uses the running statistics and leaves them alone.
    let before = stats.mean.to_f64_vec();
    let ye = batch_norm_2d(&x, None, None, &mut stats, false, 1e-5).unwrap();
    assert_eq!(stats.mean.to_f64_vec(), before);
    assert_close(&ye.to_f64_vec()[..1], &[(1.0 - 0.25) / (stats.var.to_f64_vec()[0] + 1e-5).sqrt()], 1e-12);
}

/// NT-Xent spelled out with primitive ops: the reference for the fused op.
fn nt_xent_composed(z: &Tensor, tau: f64) -> Result<Tensor> {
    let two_n = z.shape()[0];
    let zn = z.l2_normalize(-1, 1e-12)?;
    let sim = zn.matmul(&zn.t()?)?.mul_scalar(1.0 / tau)?;
    let eye: Vec<f64> = (0..two_n * two_n).map(|k| if k / two_n == k % two_n { -1e9 } else { 0.0 }).collect();
    let masked = sim.add(&Tensor::from_f64s(&eye, &[two_n, two_n], z.dtype())?)?;
    let logp = masked.log_softmax(-1)?;
    let pos: Vec<i64> = (0..two_n).map(|i| ((i + two_n / 2) % two_n) as i64).collect();
    let picked = logp.gather(1, &Tensor::from_vec(pos, &[two_n, 1])?)?;
    picked.mean_all()?.neg()
}

#[test]
fn nt_xent_equals_its_composition_in_value_and_gradient() {
    for (n, d, tau) in [(3, 5, 0.5), (8, 16, 0.1), (1, 4, 1.0)] {
        let z = randn(&[2 * n, d], 40 + n as u64);
        let (za, zb) = (z.requires_grad().unwrap(), z.requires_grad().unwrap());
        let fused = nt_xent(&za, tau).unwrap();
        let composed = nt_xent_composed(&zb, tau).unwrap();
        assert!((fused.item().unwrap() - composed.item().unwrap()).abs() < 1e-10);
        fused.backward().unwrap();
        composed.backward().unwrap();
        assert_close(&za.grad().unwrap().to_f64_vec(), &zb.grad().unwrap().to_f64_vec(), 1e-9);
    }
}

#[test]
fn nt_xent_is_low_when_views_agree() {
    // Orthogonal clip embeddings, identical across views: the best case.
    let n = 4;
    let mut v = vec![0.0; 2 * n * n];
    for i in 0..2 * n {
        v[i * n + i % n] = 1.0;
    }
    let aligned = Tensor::from_f64s(&v, &[2 * n, n], DType::F64).unwrap();
    let random = randn(&[2 * n, n], 3);
    let (good, bad) = (nt_xent(&aligned, 0.5).unwrap().item().unwrap(), nt_xent(&random, 0.5).unwrap().item().unwrap());
    assert!(good < bad, "{good} vs {bad}");
    // Its exact value: −2 + log(e² + 6·e⁰) for each row.
    assert!((good - (-2.0 + (2f64.exp() + 6.0).ln())).abs() < 1e-12);
}

#[test]
fn softmax_is_stable_and_normalised() {
    let x = Tensor::from_f64s(&[1000.0, 999.0, -1000.0, 0.0, 0.0, 0.0], &[2, 3], DType::F32).unwrap();
    let y = x.softmax(-1).unwrap().to_f64_vec();
    assert!(y.iter().all(|v| v.is_finite()));
    assert!((y[0] + y[1] + y[2] - 1.0).abs() < 1e-6 && (y[3] - 1.0 / 3.0).abs() < 1e-6);
    let ls = x.log_softmax(-1).unwrap().to_f64_vec();
    assert!((ls[0] - (-(1.0 + (-1.0f64).exp()).ln())).abs() < 1e-5);
}

#[test]
fn attention_matches_a_naive_reference() {
    let (q, k, v) = (randn(&[1, 1, 3, 4], 5), randn(&[1, 1, 5, 4], 6), randn(&[1, 1, 5, 2], 7));
    let out = scaled_dot_product_attention(&q, &k, &v, None, None).unwrap().to_f64_vec();
    let (qv, kv, vv) = (q.to_f64_vec(), k.to_f64_vec(), v.to_f64_vec());
    for i in 0..3 {
        let s: Vec<f64> = (0..5).map(|j| (0..4).map(|d| qv[i * 4 + d] * kv[j * 4 + d]).sum::<f64>() / 2.0).collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for e in 0..2 {
            let want: f64 = (0..5).map(|j| (s[j] - m).exp() / z * vv[j * 2 + e]).sum();
            assert!((out[i * 2 + e] - want).abs() < 1e-12);
        }
    }
}

#[test]
fn cross_entropy_and_dropout_values() {
    let logits = Tensor::from_f64s(&[0.0, 0.0, 2.0, 0.0], &[2, 2], DType::F64).unwrap();
    let t = Tensor::from_vec(vec![1i64, 0], &[2]).unwrap();
    let want = (2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 2.0;
    assert!((cross_entropy(&logits, &t).unwrap().item().unwrap() - want).abs() < 1e-12);
    let x = Tensor::ones(&[10_000], DType::F64).unwrap();
    let y = dropout(&x, 0.25, true, &mut Rng::new(1)).unwrap().to_f64_vec();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / 1e4;
    assert!((kept - 0.75).abs() < 0.02 && y.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-12));
    assert_eq!(dropout(&x, 0.25, false, &mut Rng::new(1)).unwrap().to_f64_vec(), x.to_f64_vec());
    let again = dropout(&x, 0.25, true, &mut Rng::new(1)).unwrap().to_f64_vec();
    assert_eq!(y, again, "same seed, same mask");
}

#[test]
fn layer_norm_normalises_rows() {
    let x = randn(&[4, 7], 9).mul_scalar(5.0).unwrap().add_scalar(3.0).unwrap();
    let y = layer_norm(&x, &[7], None, None, 1e-5).unwrap();
    let mean = y.mean(&[1], false).unwrap().to_f64_vec();
    let var = y.var(&[1], 0, false).unwrap().to_f64_vec();
    assert!(mean.iter().all(|m| m.abs() < 1e-12) && var.iter().all(|v| (v - 1.0).abs() < 1e-5));
}

#[test]
fn bad_layer_inputs_are_errors() {
    let x = randn(&[2, 3, 5, 5], 1);
    let w = randn(&[4, 3, 3, 3], 2);
    let shape_err = |r: Result<Tensor>| matches!(r, Err(Error::Shape { .. }));
    assert!(shape_err(conv2d(&randn(&[3, 5, 5], 1), &w, None, (1, 1), (0, 0))));
    assert!(shape_err(conv2d(&x, &randn(&[4, 2, 3, 3], 2), None, (1, 1), (0, 0))));
    assert!(shape_err(conv2d(&x, &randn(&[4, 3, 7, 7], 2), None, (1, 1), (0, 0))));
    assert!(shape_err(conv2d(&x, &w, Some(&randn(&[3], 3)), (1, 1), (0, 0))));
    assert!(matches!(conv2d(&x, &w, None, (0, 1), (0, 0)), Err(Error::InvalidArgument { .. })));
    assert!(matches!(conv2d(&x, &w.to_dtype(DType::F32).unwrap(), None, (1, 1), (0, 0)), Err(Error::DType { .. })));
    assert!(matches!(max_pool2d(&x, (0, 2), (1, 1), (0, 0)), Err(Error::InvalidArgument { .. })));
    assert!(shape_err(max_pool2d(&x, (7, 7), (1, 1), (0, 0))));
    assert!(shape_err(adaptive_avg_pool2d(&x, (0, 1))));
    let mut stats = RunningStats::new(4, DType::F64).unwrap();
    assert!(shape_err(batch_norm_2d(&x, None, None, &mut stats, true, 1e-5)));
    let mut stats3 = RunningStats::new(3, DType::F64).unwrap();
    assert!(shape_err(batch_norm_2d(&randn(&[1, 3, 1, 1], 4), None, None, &mut stats3, true, 1e-5)));
    assert!(shape_err(layer_norm(&x, &[4], None, None, 1e-5)));
    assert!(shape_err(nt_xent(&randn(&[3, 4], 1), 0.5)));
    assert!(shape_err(nt_xent(&randn(&[4], 1), 0.5)));
    assert!(matches!(nt_xent(&randn(&[4, 4], 1), 0.0), Err(Error::InvalidArgument { .. })));
    let logits = randn(&[2, 3], 1);
    assert!(matches!(
        cross_entropy(&logits, &Tensor::from_vec(vec![0i64, 3], &[2]).unwrap()),
        Err(Error::Index { .. })
    ));
    assert!(shape_err(cross_entropy(&logits, &Tensor::from_vec(vec![0i64], &[1]).unwrap())));
    assert!(matches!(dropout(&logits, 1.0, true, &mut Rng::new(0)), Err(Error::InvalidArgument { .. })));
    let (q, k) = (randn(&[1, 2, 3, 4], 1), randn(&[1, 2, 5, 4], 2));
    assert!(shape_err(scaled_dot_product_attention(&q, &k, &randn(&[1, 2, 4, 4], 3), None, None)));
    let bad_mask = Tensor::ones(&[2, 5], DType::U8).unwrap();
    assert!(shape_err(scaled_dot_product_attention(&q, &k, &randn(&[1, 2, 5, 4], 3), Some(&bad_mask), None)));
    // no_grad evaluation of a layer stack records nothing
    let y = no_grad(|| conv2d(&x.requires_grad().unwrap(), &w, None, (1, 1), (1, 1)).unwrap());
    assert!(!y.is_tracked());
}
