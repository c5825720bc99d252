//! The softmax family, layer norm, L2 normalisation, dropout, attention and the
//! two losses against references written out by hand or composed from
//! primitive ops — values and gradients, f32 as well as f64 — and bad input
//! coming back as errors, never panics.

use simclr::ops::attention::scaled_dot_product_attention;
use simclr::ops::dropout::dropout;
use simclr::ops::layernorm::layer_norm;
use simclr::ops::loss::{cross_entropy, nt_xent};
use simclr::ops::normalize::cosine_similarity;
use simclr::{DType, Error, Result, Rng, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, DType::F64, &mut Rng::new(seed)).unwrap()
}

fn f64s(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64s(values, shape, DType::F64).unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}, element {i}: got {g}, want {w}");
    }
}

/// Runs `f` on fresh trainable copies of `inputs`, reduces a non-scalar output
/// with fixed random weights (so every element matters), back-propagates, and
/// returns the output values and each input's gradient.
fn value_and_grads(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let leaves: Vec<Tensor> = inputs.iter().map(|x| x.requires_grad().unwrap()).collect();
    let y = f(&leaves).unwrap();
    let loss = if y.numel() == 1 {
        y.clone()
    } else {
        let w = Tensor::uniform(y.shape(), -1.0, 1.0, y.dtype(), &mut Rng::new(777)).unwrap();
        y.mul(&w).unwrap().sum_all().unwrap()
    };
    loss.backward().unwrap();
    let grads = leaves.iter().map(|l| l.grad().map_or(vec![0.0; l.numel()], |g| g.to_f64_vec())).collect();
    (y.to_f64_vec(), grads)
}

// ------------------------------------------------------------------ NT-Xent

/// NT-Xent spelled out with primitive ops, exactly as the definition reads.
fn nt_xent_composed(z: &Tensor, tau: f64) -> Result<Tensor> {
    let two_n = z.shape()[0];
    let zn = z.l2_normalize(-1, 1e-12)?;
    let sim = zn.matmul(&zn.t()?)?.mul_scalar(1.0 / tau)?;
    // A row is not its own candidate: push the diagonal to −1e9 (exp underflows to 0).
    let diag: Vec<f64> = (0..two_n * two_n).map(|k| if k / two_n == k % two_n { -1e9 } else { 0.0 }).collect();
    let logp = sim.add(&Tensor::from_f64s(&diag, &[two_n, two_n], z.dtype())?)?.log_softmax(-1)?;
    let positives: Vec<i64> = (0..two_n).map(|i| ((i + two_n / 2) % two_n) as i64).collect();
    logp.gather(1, &Tensor::from_vec(positives, &[two_n, 1])?)?.mean_all()?.neg()
}

#[test]
fn nt_xent_equals_its_composition_in_value_and_gradient() {
    let strided = randn(&[5, 6], 11).t().unwrap(); // [6, 5], not row-major
    let large = randn(&[8, 4], 12).mul_scalar(40.0).unwrap();
    let cases = [
        (randn(&[2, 4], 10), 1.0),
        (randn(&[6, 5], 13), 0.5),
        (randn(&[8, 3], 14), 0.1),
        (randn(&[16, 16], 15), 0.07),
        (strided, 0.5),
        (large, 0.2),
    ];
    for (z, tau) in cases {
        let what = format!("z {:?}, tau {tau}", z.shape());
        let (fused, g_fused) = value_and_grads(&[z.clone()], |x| nt_xent(&x[0], tau));
        let (composed, g_composed) = value_and_grads(&[z.clone()], |x| nt_xent_composed(&x[0], tau));
        assert_close(&fused, &composed, 1e-12, &format!("loss, {what}"));
        assert_close(&g_fused[0], &g_composed[0], 1e-10, &format!("gradient, {what}"));
    }
}

#[test]
fn nt_xent_in_f32_agrees_with_f64() {
    let z = randn(&[12, 8], 20);
    let (v64, g64) = value_and_grads(&[z.clone()], |x| nt_xent(&x[0], 0.2));
    let (v32, g32) = value_and_grads(&[z.to_dtype(DType::F32).unwrap()], |x| nt_xent(&x[0], 0.2));
    assert_close(&v32, &v64, 1e-5, "f32 loss");
    assert_close(&g32[0], &g64[0], 1e-4, "f32 gradient");
}

#[test]
fn nt_xent_prefers_agreeing_views() {
    // N = 4 clips with orthogonal embeddings e_0..e_3. View 2 equal to view 1
    // is the best case; view 2 pointing away from view 1 the worst.
    let n = 4;
    let mut aligned = vec![0.0; 2 * n * n];
    let mut opposed = vec![0.0; 2 * n * n];
    for i in 0..2 * n {
        aligned[i * n + i % n] = 1.0;
        opposed[i * n + i % n] = if i < n { 1.0 } else { -1.0 };
    }
    let loss = |v: &[f64]| nt_xent(&f64s(v, &[2 * n, n]), 0.5).unwrap().item().unwrap();
    let (good, bad) = (loss(&aligned), loss(&opposed));
    let random = nt_xent(&randn(&[2 * n, n], 21), 0.5).unwrap().item().unwrap();
    assert!(good < random && random < bad, "aligned {good}, random {random}, opposed {bad}");
    // Aligned: s_pos = 1/τ = 2, the 6 other rows are orthogonal (s = 0).
    assert!((good - (-2.0 + (2f64.exp() + 6.0).ln())).abs() < 1e-12);
    // Opposed: s_pos = −2, and the 6 negatives (the other clips, both views) are still orthogonal.
    assert!((bad - (2.0 + ((-2f64).exp() + 6.0).ln())).abs() < 1e-12);
}

#[test]
fn nt_xent_gradient_steps_lower_the_loss() {
    let mut z = randn(&[8, 6], 22);
    let mut losses = Vec::new();
    for _ in 0..15 {
        let zt = z.requires_grad().unwrap();
        let loss = nt_xent(&zt, 0.5).unwrap();
        loss.backward().unwrap();
        losses.push(loss.item().unwrap());
        z = z.sub(&zt.grad().unwrap().mul_scalar(2.0).unwrap()).unwrap();
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "loss should fall every step: {losses:?}");
    assert!(losses[14] < losses[0] - 0.3, "{losses:?}");
}

#[test]
fn nt_xent_sees_only_directions() {
    let z = randn(&[6, 4], 23);
    let row_scales = f64s(&[0.1, 3.0, 7.5, 1.0, 0.4, 12.0], &[6, 1]);
    let base = nt_xent(&z, 0.3).unwrap().item().unwrap();
    let scaled = nt_xent(&z.mul(&row_scales).unwrap(), 0.3).unwrap().item().unwrap();
    assert!((base - scaled).abs() < 1e-12);
    // ...so the gradient of each row is orthogonal to that row.
    let (_, g) = value_and_grads(&[z.clone()], |x| nt_xent(&x[0], 0.3));
    let zv = z.to_f64_vec();
    for i in 0..6 {
        let dot: f64 = (0..4).map(|d| g[0][i * 4 + d] * zv[i * 4 + d]).sum();
        assert!(dot.abs() < 1e-12, "row {i}: ⟨dz, z⟩ = {dot}");
    }
    // A zero row (a dead projection) gives finite values, not NaN.
    let mut v = z.to_f64_vec();
    v[..4].iter_mut().for_each(|x| *x = 0.0);
    let (loss, g) = value_and_grads(&[f64s(&v, &[6, 4])], |x| nt_xent(&x[0], 0.3));
    assert!(loss[0].is_finite() && g[0].iter().all(|x| x.is_finite()));
}

// ------------------------------------------------------------------ softmax

#[test]
fn softmax_rows_sum_to_one_and_survive_large_inputs() {
    let values = [1000.0, 999.0, -1000.0, 1000.0, 0.0, 0.0, 0.0, 0.0, -1000.0, -999.0, -1000.0, -1000.0];
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_f64s(&values, &[3, 4], dtype).unwrap();
        for axis in [-1isize, 0] {
            let y = x.softmax(axis).unwrap();
            assert!(y.to_f64_vec().iter().all(|v| v.is_finite() && *v >= 0.0), "{dtype} axis {axis}");
            let sums = y.sum(&[axis], false).unwrap().to_f64_vec();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{dtype} axis {axis}: sums {sums:?}");
            let ls = x.log_softmax(axis).unwrap().to_f64_vec();
            assert!(ls.iter().all(|v| v.is_finite() && *v <= 0.0), "{dtype} axis {axis}: {ls:?}");
        }
        // Row 0 along the last axis: [1000, 999, −1000, 1000] → weights e⁰, e⁻¹, ~0, e⁰.
        let y = x.softmax(-1).unwrap().to_f64_vec();
        let z = 2.0 + (-1f64).exp();
        assert_close(&y[..4], &[1.0 / z, (-1f64).exp() / z, 0.0, 1.0 / z], 1e-6, "softmax row 0");
        let ls = x.log_softmax(-1).unwrap().to_f64_vec();
        assert_close(&ls[..4], &[-z.ln(), -1.0 - z.ln(), -2000.0 - z.ln(), -z.ln()], 1e-6, "log_softmax row 0");
    }
    // −∞ entries (masked scores) get exactly zero weight.
    let y = f64s(&[f64::NEG_INFINITY, 0.0, 0.0], &[1, 3]).softmax(-1).unwrap().to_f64_vec();
    assert_eq!(y, vec![0.0, 0.5, 0.5]);
}

// ------------------------------------------------------------------ attention

/// Attention by its definition, one query row at a time. `allowed(b, i, j)`
/// says whether query i of batch-head b may see key j.
fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    allowed: impl Fn(usize, usize, usize) -> bool,
) -> Vec<f64> {
    let (l, d) = (q.shape()[q.rank() - 2], q.shape()[q.rank() - 1]);
    let (s, dv) = (k.shape()[k.rank() - 2], v.shape()[v.rank() - 1]);
    let (qv, kv, vv) = (q.to_f64_vec(), k.to_f64_vec(), v.to_f64_vec());
    let heads = qv.len() / (l * d);
    let mut out = vec![0.0; heads * l * dv];
    for b in 0..heads {
        for i in 0..l {
            let keys: Vec<usize> = (0..s).filter(|&j| allowed(b, i, j)).collect();
            let score =
                |j: usize| (0..d).map(|e| qv[(b * l + i) * d + e] * kv[(b * s + j) * d + e]).sum::<f64>() * scale;
            let m = keys.iter().map(|&j| score(j)).fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = keys.iter().map(|&j| (score(j) - m).exp()).sum();
            for &j in &keys {
                let p = (score(j) - m).exp() / total;
                for e in 0..dv {
                    out[(b * l + i) * dv + e] += p * vv[(b * s + j) * dv + e];
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_a_naive_reference() {
    let (bsz, h, l, s, d, dv) = (2, 3, 5, 7, 4, 3);
    let (q, k, v) = (randn(&[bsz, h, l, d], 30), randn(&[bsz, h, s, d], 31), randn(&[bsz, h, s, dv], 32));
    // A per-batch mask [B, 1, L, S] shared by the heads; query 3 of batch 1 sees nothing.
    let mut rng = Rng::new(33);
    let mut allowed: Vec<u8> = (0..bsz * l * s).map(|_| (rng.uniform() < 0.6) as u8).collect();
    allowed[(l + 3) * s..(l + 4) * s].iter_mut().for_each(|a| *a = 0);
    let mask = Tensor::from_vec(allowed.clone(), &[bsz, 1, l, s]).unwrap();
    let sees = |bh: usize, i: usize, j: usize| allowed[((bh / h) * l + i) * s + j] != 0;

    let want = naive_attention(&q, &k, &v, 0.5, |_, _, _| true); // default scale 1/√4
    let got = scaled_dot_product_attention(&q, &k, &v, None, None).unwrap().to_f64_vec();
    assert_close(&got, &want, 1e-12, "no mask");

    let want = naive_attention(&q, &k, &v, 0.3, sees);
    let got = scaled_dot_product_attention(&q, &k, &v, Some(&mask), Some(0.3)).unwrap().to_f64_vec();
    assert_close(&got, &want, 1e-12, "u8 mask");
    for bh in h..2 * h {
        assert!(got[(bh * l + 3) * dv..(bh * l + 4) * dv].iter().all(|&x| x == 0.0), "fully masked row is 0");
    }
    // The same mask as 0/1 floats, and the whole thing in f32.
    let fmask = mask.to_dtype(DType::F32).unwrap();
    let [q32, k32, v32] = [&q, &k, &v].map(|t| t.to_dtype(DType::F32).unwrap());
    let got = scaled_dot_product_attention(&q32, &k32, &v32, Some(&fmask), Some(0.3)).unwrap().to_f64_vec();
    assert_close(&got, &want, 1e-5, "f32 with a float mask");
}

#[test]
fn attention_gradients_match_the_composed_ops() {
    let (q, k, v) = (randn(&[2, 2, 5, 4], 40), randn(&[2, 2, 7, 4], 41), randn(&[2, 2, 7, 3], 42));
    // Key padding per batch (no row fully masked, so the composition is well defined).
    let keep: Vec<f64> = (0..2 * 7).map(|j| if j == 6 || j == 10 || j == 11 { 0.0 } else { 1.0 }).collect();
    let mask = f64s(&keep, &[2, 1, 1, 7]);
    let additive = mask.map_f64(|a| if a != 0.0 { 0.0 } else { -1e9 }).unwrap();
    let inputs = [q, k, v];
    for masked in [false, true] {
        let (fused, g_fused) = value_and_grads(&inputs, |x| {
            scaled_dot_product_attention(&x[0], &x[1], &x[2], masked.then_some(&mask), Some(0.4))
        });
        let (composed, g_composed) = value_and_grads(&inputs, |x| {
            let mut scores = x[0].matmul(&x[1].t()?)?.mul_scalar(0.4)?;
            if masked {
                scores = scores.add(&additive)?;
            }
            scores.softmax(-1)?.matmul(&x[2])
        });
        assert_close(&fused, &composed, 1e-12, &format!("output, masked {masked}"));
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(g_fused.iter().zip(&g_composed)) {
            assert_close(a, b, 1e-10, &format!("{name}, masked {masked}"));
        }
    }
}

#[test]
fn fully_masked_attention_rows_have_zero_gradients() {
    let (q, k, v) = (randn(&[1, 1, 3, 2], 50), randn(&[1, 1, 4, 2], 51), randn(&[1, 1, 4, 2], 52));
    // Query 1 sees nothing; key 3 is seen by nobody.
    let mask = Tensor::from_vec(vec![1u8, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0], &[3, 4]).unwrap();
    let (out, g) =
        value_and_grads(&[q, k, v], |x| scaled_dot_product_attention(&x[0], &x[1], &x[2], Some(&mask), None));
    assert!(out.iter().chain(g.iter().flatten()).all(|x| x.is_finite()));
    assert_eq!(&out[2..4], &[0.0, 0.0]);
    assert_eq!(&g[0][2..4], &[0.0, 0.0], "dq of the masked query");
    assert_eq!(&g[1][6..8], &[0.0, 0.0], "dk of the unseen key");
    assert_eq!(&g[2][6..8], &[0.0, 0.0], "dv of the unseen key");
}

// ------------------------------------------------------------------ cross-entropy, layer norm, normalise, dropout

#[test]
fn cross_entropy_matches_a_hand_computation() {
    #[rustfmt::skip]
    let logits = [
        0.5, -1.0, 2.0, 0.0,
        1000.0, -1000.0, 0.0, 999.0,
        -3.0, -3.0, -3.0, -3.0,
    ];
    let targets = [2i64, 3, 1];
    let (n, c) = (3, 4);
    let mut want_loss = 0.0;
    let mut want_grad = vec![0.0; n * c];
    for i in 0..n {
        let row = &logits[i * c..(i + 1) * c];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
        want_loss += (m + z.ln() - row[targets[i] as usize]) / n as f64;
        for j in 0..c {
            let onehot = if j == targets[i] as usize { 1.0 } else { 0.0 };
            want_grad[i * c + j] = ((row[j] - m).exp() / z - onehot) / n as f64;
        }
    }
    // Row 1 by hand: log(1 + e⁻¹) − (999 − 1000) = 1 + log(1 + e⁻¹); row 2: log 4.
    let by_hand =
        ((2f64.exp() + 0.5f64.exp() + (-1f64).exp() + 1.0).ln() - 2.0 + 1.0 + (1.0 + (-1f64).exp()).ln() + 4f64.ln())
            / 3.0;
    assert!((want_loss - by_hand).abs() < 1e-12);
    let t = Tensor::from_vec(targets.to_vec(), &[n]).unwrap();
    for dtype in [DType::F64, DType::F32] {
        let x = Tensor::from_f64s(&logits, &[n, c], dtype).unwrap();
        let (loss, g) = value_and_grads(&[x], |x| cross_entropy(&x[0], &t));
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        assert_close(&loss, &[want_loss], tol, &format!("{dtype} loss"));
        assert_close(&g[0], &want_grad, tol, &format!("{dtype} gradient"));
    }
}

#[test]
fn layer_norm_matches_the_definition_and_its_composition() {
    let (x, w, b) = (
        randn(&[3, 2, 5], 60).mul_scalar(4.0).unwrap().add_scalar(2.0).unwrap(),
        randn(&[2, 5], 61),
        randn(&[2, 5], 62),
    );
    let eps = 1e-5;
    let (fused, g_fused) = value_and_grads(&[x.clone(), w.clone(), b.clone()], |t| {
        layer_norm(&t[0], &[2, 5], Some(&t[1]), Some(&t[2]), eps)
    });
    let (xv, wv, bv) = (x.to_f64_vec(), w.to_f64_vec(), b.to_f64_vec());
    for (r, row) in xv.chunks(10).enumerate() {
        let mean = row.iter().sum::<f64>() / 10.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 10.0; // biased, as PyTorch
        let want: Vec<f64> = (0..10).map(|j| (row[j] - mean) / (var + eps).sqrt() * wv[j] + bv[j]).collect();
        assert_close(&fused[r * 10..(r + 1) * 10], &want, 1e-12, &format!("row {r}"));
    }
    let (_, g_composed) = value_and_grads(&[x.clone(), w.clone(), b.clone()], |t| {
        let centred = t[0].sub(&t[0].mean(&[1, 2], true)?)?;
        let std = t[0].var(&[1, 2], 0, true)?.add_scalar(eps)?.sqrt()?;
        centred.div(&std)?.mul(&t[1])?.add(&t[2])
    });
    for (name, (a, c)) in ["dx", "dweight", "dbias"].iter().zip(g_fused.iter().zip(&g_composed)) {
        assert_close(a, c, 1e-10, name);
    }
    // f32 and no affine: rows come out with mean 0 and variance 1.
    let y = layer_norm(&x.to_dtype(DType::F32).unwrap(), &[5], None, None, eps).unwrap();
    let means = y.mean(&[-1], false).unwrap().to_f64_vec();
    let vars = y.var(&[-1], 0, false).unwrap().to_f64_vec();
    assert!(means.iter().all(|m| m.abs() < 1e-5) && vars.iter().all(|v| (v - 1.0).abs() < 1e-3), "{means:?} {vars:?}");
}

#[test]
fn l2_normalize_and_cosine_similarity_values() {
    let x = f64s(&[3.0, 4.0, 0.0, 0.0, 1e-20, 0.0], &[3, 2]);
    let y = x.l2_normalize(-1, 1e-12).unwrap().to_f64_vec();
    // Below eps the norm is eps, like F.normalize: tiny rows shrink, zero rows stay 0.
    assert_close(&y, &[0.6, 0.8, 0.0, 0.0, 1e-8, 0.0], 1e-15, "l2_normalize");
    let a = randn(&[4, 6], 70);
    let b = randn(&[3, 6], 71);
    let sim = cosine_similarity(&a, &b, 1e-8).unwrap();
    assert_eq!(sim.shape(), &[4, 3]);
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    for i in 0..4 {
        for j in 0..3 {
            let (ra, rb) = (&av[i * 6..(i + 1) * 6], &bv[j * 6..(j + 1) * 6]);
            let want = ra.iter().zip(rb).map(|(p, q)| p * q).sum::<f64>() / (norm(ra) * norm(rb));
            assert!((sim.to_f64_vec()[i * 3 + j] - want).abs() < 1e-12);
        }
    }
}

#[test]
fn dropout_is_seeded_scaled_and_masks_its_gradient() {
    let x = Tensor::uniform(&[4000], 0.5, 1.5, DType::F64, &mut Rng::new(80)).unwrap();
    let (y, g) = value_and_grads(&[x.clone()], |t| dropout(&t[0], 0.3, true, &mut Rng::new(5)));
    let xv = x.to_f64_vec();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / 4000.0;
    assert!((kept - 0.7).abs() < 0.03, "kept {kept}");
    // The gradient of Σ w·y is w·mask/(1 − p): zero exactly where y was dropped.
    let w = Tensor::uniform(&[4000], -1.0, 1.0, DType::F64, &mut Rng::new(777)).unwrap().to_f64_vec();
    for i in 0..4000 {
        let scale = if y[i] == 0.0 { 0.0 } else { 1.0 / 0.7 };
        assert!((y[i] - xv[i] * scale).abs() < 1e-12 && (g[0][i] - w[i] * scale).abs() < 1e-12, "element {i}");
    }
    let again = dropout(&x, 0.3, true, &mut Rng::new(5)).unwrap().to_f64_vec();
    assert_eq!(y, again, "same seed, same mask");
    assert_ne!(y, dropout(&x, 0.3, true, &mut Rng::new(6)).unwrap().to_f64_vec(), "another seed, another mask");
    assert_eq!(dropout(&x, 0.3, false, &mut Rng::new(5)).unwrap().to_f64_vec(), xv, "eval is the identity");
    assert_eq!(dropout(&x, 0.0, true, &mut Rng::new(5)).unwrap().to_f64_vec(), xv, "p = 0 is the identity");
    let y32 = dropout(&x.to_dtype(DType::F32).unwrap(), 0.3, true, &mut Rng::new(5)).unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    assert_close(&y32.to_f64_vec(), &y, 1e-6, "f32 dropout draws the same mask");
}

// ------------------------------------------------------------------ errors

#[test]
fn bad_inputs_are_errors_not_panics() {
    let is_shape = |r: Result<Tensor>| matches!(r, Err(Error::Shape { .. }));
    let is_dtype = |r: Result<Tensor>| matches!(r, Err(Error::DType { .. }));
    let is_invalid = |r: Result<Tensor>| matches!(r, Err(Error::InvalidArgument { .. }));
    let is_index = |r: Result<Tensor>| matches!(r, Err(Error::Index { .. }));
    let ints = Tensor::from_vec(vec![1i64, 2, 3, 4], &[2, 2]).unwrap();

    // softmax family
    assert!(randn(&[2, 3], 1).softmax(2).is_err());
    assert!(randn(&[2, 3], 1).log_softmax(-3).is_err());
    assert!(is_dtype(ints.softmax(-1)));

    // NT-Xent: [2N, D] with 2N even and ≥ 2, D > 0, finite τ > 0
    assert!(is_shape(nt_xent(&randn(&[3, 4], 1), 0.5)), "odd row count");
    assert!(is_shape(nt_xent(&randn(&[1, 4], 1), 0.5)), "one row");
    assert!(is_shape(nt_xent(&Tensor::zeros(&[0, 4], DType::F64).unwrap(), 0.5)), "no rows");
    assert!(is_shape(nt_xent(&Tensor::zeros(&[4, 0], DType::F64).unwrap(), 0.5)), "D = 0");
    assert!(is_shape(nt_xent(&randn(&[4], 1), 0.5)), "rank 1");
    assert!(is_shape(nt_xent(&randn(&[2, 2, 4], 1), 0.5)), "rank 3");
    for tau in [0.0, -0.5, f64::NAN, f64::INFINITY] {
        assert!(is_invalid(nt_xent(&randn(&[4, 4], 1), tau)), "temperature {tau}");
    }
    assert!(is_dtype(nt_xent(&ints, 0.5)));

    // cross-entropy
    let logits = randn(&[2, 3], 1);
    let targets = |v: Vec<i64>| Tensor::from_vec(v.clone(), &[v.len()]).unwrap();
    assert!(is_index(cross_entropy(&logits, &targets(vec![0, 3]))), "target = C");
    assert!(is_index(cross_entropy(&logits, &targets(vec![-1, 0]))), "negative target");
    assert!(is_shape(cross_entropy(&logits, &targets(vec![0]))), "too few targets");
    assert!(is_dtype(cross_entropy(&logits, &f64s(&[0.0, 1.0], &[2]))), "float targets");
    assert!(is_shape(cross_entropy(&randn(&[3], 1), &targets(vec![0]))), "rank-1 logits");
    assert!(is_shape(cross_entropy(&Tensor::zeros(&[0, 3], DType::F64).unwrap(), &targets(vec![]))), "empty batch");

    // dropout
    for p in [1.0, 1.5, -0.1, f64::NAN] {
        assert!(is_invalid(dropout(&logits, p, true, &mut Rng::new(0))), "p = {p}");
    }
    assert!(is_dtype(dropout(&ints, 0.5, true, &mut Rng::new(0))));

    // layer norm
    let x = randn(&[2, 3, 4], 1);
    assert!(is_shape(layer_norm(&x, &[3], None, None, 1e-5)), "not the trailing shape");
    assert!(is_shape(layer_norm(&x, &[], None, None, 1e-5)), "empty normalized_shape");
    assert!(is_shape(layer_norm(&x, &[4], Some(&randn(&[3], 2)), None, 1e-5)), "weight shape");
    assert!(is_dtype(layer_norm(&x, &[4], None, Some(&randn(&[4], 2).to_dtype(DType::F32).unwrap()), 1e-5)));
    assert!(is_invalid(layer_norm(&x, &[4], None, None, 0.0)), "eps = 0");
    assert!(is_shape(layer_norm(&Tensor::zeros(&[2, 0], DType::F64).unwrap(), &[0], None, None, 1e-5)));

    // L2 normalisation and cosine similarity
    assert!(is_invalid(x.l2_normalize(-1, 0.0)));
    assert!(x.l2_normalize(3, 1e-12).is_err());
    assert!(is_shape(cosine_similarity(&randn(&[2, 3], 1), &randn(&[2, 4], 2), 1e-8)));

    // attention
    let (q, k, v) = (randn(&[1, 2, 3, 4], 1), randn(&[1, 2, 5, 4], 2), randn(&[1, 2, 5, 6], 3));
    let sdpa = |q: &Tensor, k: &Tensor, v: &Tensor, m: Option<&Tensor>| scaled_dot_product_attention(q, k, v, m, None);
    assert!(sdpa(&q, &k, &v, None).is_ok());
    assert!(is_shape(sdpa(&q, &k, &randn(&[1, 2, 4, 6], 3), None)), "v has the wrong number of keys");
    assert!(is_shape(sdpa(&q, &randn(&[1, 2, 5, 3], 2), &v, None)), "k has the wrong D");
    assert!(is_shape(sdpa(&q, &randn(&[2, 2, 5, 4], 2), &v, None)), "batch axes differ");
    assert!(is_shape(sdpa(&q, &randn(&[2, 5, 4], 2), &v, None)), "ranks differ");
    assert!(is_shape(sdpa(&randn(&[4], 1), &randn(&[4], 1), &randn(&[4], 1), None)), "rank 1");
    assert!(is_dtype(sdpa(&q, &k.to_dtype(DType::F32).unwrap(), &v, None)));
    for bad in [vec![2, 5], vec![3, 4], vec![1, 3, 3, 5], vec![2, 1, 1, 1, 5]] {
        let m = Tensor::ones(&bad, DType::U8).unwrap();
        assert!(is_shape(sdpa(&q, &k, &v, Some(&m))), "mask {bad:?}");
    }
    assert!(sdpa(&q, &k, &v, Some(&Tensor::ones(&[3, 5], DType::U8).unwrap())).is_ok());
}
