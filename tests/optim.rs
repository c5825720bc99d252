//! Optimisers against hand-computed updates, the schedule's shape, clipping.

use simclr::optim::lars::is_adapted;
use simclr::optim::{clip_grad_norm, warmup_cosine, AdamW, Lars};
use simclr::{DType, Tensor};

fn param(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64s(v, shape, DType::F64).unwrap().requires_grad().unwrap()
}

/// Sets p.grad = g.
fn give_grad(p: &Tensor, g: &[f64]) {
    p.zero_grad();
    p.set_grad(Some(Tensor::from_f64s(g, p.shape(), DType::F64).unwrap())).unwrap();
}

#[test]
fn adamw_matches_the_reference_update() {
    let w = param(&[1.0, -2.0], &[2]);
    let mut opt = AdamW::new(vec![w.clone()], 0.1, 0.01, true).unwrap();
    let grads = [[0.5, -1.0], [0.2, 0.3]];
    let (mut m, mut v, mut x) = ([0.0; 2], [0.0; 2], [1.0, -2.0]);
    for (t, g) in grads.iter().enumerate() {
        give_grad(&w, g);
        opt.step().unwrap();
        let t = t as i32 + 1;
        for k in 0..2 {
            m[k] = 0.9 * m[k] + 0.1 * g[k];
            v[k] = 0.999 * v[k] + 0.001 * g[k] * g[k];
            let (mh, vh) = (m[k] / (1.0 - 0.9f64.powi(t)), v[k] / (1.0 - 0.999f64.powi(t)));
            x[k] = x[k] * (1.0 - 0.1 * 0.01) - 0.1 * mh / (vh.sqrt() + 1e-8);
        }
    }
    let got = w.to_f64_vec();
    assert!((got[0] - x[0]).abs() < 1e-12 && (got[1] - x[1]).abs() < 1e-12, "{got:?} vs {x:?}");
    // The first Adam step moves every coordinate by about lr, whatever the gradient scale.
    let w2 = param(&[0.0, 0.0], &[2]);
    let mut adam = AdamW::new(vec![w2.clone()], 0.01, 0.0, false).unwrap();
    give_grad(&w2, &[1e-3, 1e3]);
    adam.step().unwrap();
    assert!(w2.to_f64_vec().iter().all(|x| (x.abs() - 0.01).abs() < 1e-6));
    assert!(AdamW::new(vec![w2.detach()], 0.1, 0.0, true).is_err());
}

#[test]
fn lars_scales_weight_steps_by_the_trust_ratio_and_skips_biases() {
    let w = param(&[3.0, 4.0, 0.0, 0.0], &[2, 2]); // ‖w‖ = 5
    let b = param(&[1.0, 1.0], &[2]);
    assert!(is_adapted(&w) && !is_adapted(&b));
    let mut opt = Lars::new(vec![w.clone(), b.clone()], 0.5, 0.9, 0.0, 0.001).unwrap();
    give_grad(&w, &[0.0, 0.0, 0.6, 0.8]); // ‖g‖ = 1 → trust = 0.001·5/1
    give_grad(&b, &[1.0, -1.0]);
    opt.step().unwrap();
    let step = 0.5 * 0.001 * 5.0;
    let wv = w.to_f64_vec();
    assert!((wv[2] + step * 0.6).abs() < 1e-12 && (wv[3] + step * 0.8).abs() < 1e-12 && wv[0] == 3.0, "{wv:?}");
    assert_eq!(b.to_f64_vec(), vec![0.5, 1.5], "biases take plain SGD steps");
    // Weight decay enters the adapted gradient only.
    let w3 = param(&[1.0, 0.0, 0.0, 0.0], &[2, 2]);
    let mut lars = Lars::new(vec![w3.clone()], 1.0, 0.0, 0.5, 1.0).unwrap();
    give_grad(&w3, &[0.0, 0.0, 0.0, 0.0]);
    lars.step().unwrap(); // g' = 0.5·w, trust = 1·1/0.5 = 2, step = 2·0.5·w = w
    assert!(w3.to_f64_vec().iter().all(|v| v.abs() < 1e-12));
}

#[test]
fn warmup_then_cosine() {
    let lr = |s| warmup_cosine(s, 100, 10, 1.0, 0.0);
    assert!((lr(0) - 0.1).abs() < 1e-12 && (lr(9) - 1.0).abs() < 1e-12);
    assert!((lr(10) - 1.0).abs() < 1e-12);
    assert!((lr(55) - 0.5).abs() < 1e-12);
    assert!(lr(100).abs() < 1e-12 && lr(500).abs() < 1e-12);
    assert!((1..100).all(|s| s < 10 || lr(s) <= lr(s - 1) + 1e-15), "monotone after warm-up");
}

#[test]
fn clipping_caps_the_global_norm() {
    let (a, b) = (param(&[0.0; 2], &[2]), param(&[0.0], &[1]));
    give_grad(&a, &[3.0, 0.0]);
    give_grad(&b, &[4.0]);
    let norm = clip_grad_norm(&[a.clone(), b.clone()], 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-12);
    assert!(
        (a.grad().unwrap().to_f64_vec()[0] - 0.6).abs() < 1e-12
            && (b.grad().unwrap().to_f64_vec()[0] - 0.8).abs() < 1e-12
    );
    let norm = clip_grad_norm(&[a.clone(), b.clone()], 10.0).unwrap();
    assert!(
        (norm - 1.0).abs() < 1e-12 && (a.grad().unwrap().to_f64_vec()[0] - 0.6).abs() < 1e-12,
        "below the cap: unchanged"
    );
    assert!(a.detach().set_grad(None).is_err());
}

#[test]
fn exported_state_is_a_snapshot_and_loads_back_exactly() {
    use simclr::optim::{Optimizer, Sgd};
    // A checkpoint holds `state()` while training goes on: later steps must not change it (the
    // GPU path updates its buffers in place, so this is a contract, not an accident).
    let make = |w: &Tensor| -> Vec<Box<dyn Optimizer>> {
        vec![
            Box::new(AdamW::new(vec![w.clone()], 0.1, 0.01, true).unwrap()),
            Box::new(Sgd::new(vec![w.clone()], 0.1, 0.9, 0.0).unwrap()),
            Box::new(Lars::new(vec![w.clone()], 0.1, 0.9, 0.0, 0.001).unwrap()),
        ]
    };
    let w = param(&[1.0, -2.0, 0.5, 3.0], &[2, 2]);
    for (k, mut opt) in make(&w).into_iter().enumerate() {
        give_grad(&w, &[0.5, -1.0, 0.25, 2.0]);
        opt.step().unwrap();
        let saved = opt.state();
        let values: Vec<Vec<f64>> = saved.buffers.iter().map(|(_, t)| t.to_f64_vec()).collect();
        give_grad(&w, &[1.0, 1.0, -1.0, 0.5]);
        opt.step().unwrap();
        let after: Vec<Vec<f64>> = saved.buffers.iter().map(|(_, t)| t.to_f64_vec()).collect();
        assert_eq!(values, after, "optimizer {k}: a later step changed an exported state");
        // Another optimiser loaded from that state takes the same next step.
        let (w1, w2) = (param(&[1.0, -2.0, 0.5, 3.0], &[2, 2]), param(&[1.0, -2.0, 0.5, 3.0], &[2, 2]));
        let (mut a, mut b) = (make(&w1).remove(k), make(&w2).remove(k));
        give_grad(&w1, &[0.5, -1.0, 0.25, 2.0]);
        a.step().unwrap();
        b.load_state(&a.state()).unwrap();
        w2.set_data(&w1.detach()).unwrap();
        for (p, g) in [(&w1, [0.3, 0.1, -0.2, 0.0]), (&w2, [0.3, 0.1, -0.2, 0.0])] {
            give_grad(p, &g);
        }
        a.step().unwrap();
        b.step().unwrap();
        assert_eq!(w1.to_f64_vec(), w2.to_f64_vec(), "optimizer {k}: resumed step differs");
    }
}
