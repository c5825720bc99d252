//! Elementwise kernels against the CPU ops: unary maps and their autograd gradients, binary
//! arithmetic (same shape, broadcast, strided views), the broadcast backward, casts, fill, axpby.
//!
//! References run in f64 on the CPU. f32 kernels must agree to f32 rounding (rtol 1e-5);
//! bf16 kernels get bf16-rounded inputs and are checked to a bf16 rounding of the result
//! (rtol 4e-3 ≈ one bf16 ulp), looser where a bf16-stored saved tensor feeds a gradient.

use crate::common::*;
use half::bf16;
use simclr::backend::cuda::kernels::elementwise::{self as ew, Binary, Saved, Unary, UnaryGrad};
use simclr::backend::cuda::Gpu;
use simclr::{Error, Tensor};

const SIZES: [usize; 7] = [1, 3, 31, 33, 257, 1000, 4099];

fn cpu(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.iter().map(|&x| x as f64).collect::<Vec<_>>(), shape).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_f64_vec().iter().map(|&x| x as f32).collect()
}

fn run_unary_f32(gpu: &Gpu, op: Unary, x: &[f32]) -> Vec<f32> {
    let dx = gpu.upload(x).unwrap();
    let mut dy = gpu.alloc::<f32>(x.len()).unwrap();
    ew::unary(gpu, op, &dx, &mut dy).unwrap();
    dy.to_vec().unwrap()
}

fn run_unary_bf16(gpu: &Gpu, op: Unary, x: &[f32]) -> Vec<f32> {
    let dx = gpu.upload(&to_bf16(x)).unwrap();
    let mut dy = gpu.alloc::<bf16>(x.len()).unwrap();
    ew::unary(gpu, op, &dx, &mut dy).unwrap();
    from_bf16(&dy.to_vec().unwrap())
}

fn cpu_unary(op: Unary, x: &Tensor) -> Tensor {
    match op {
        Unary::Relu => x.relu(),
        Unary::GeluErf => x.gelu_erf(),
        Unary::GeluTanh => x.gelu_tanh(),
        Unary::Sigmoid => x.sigmoid(),
        Unary::Tanh => x.tanh(),
        Unary::Exp => x.exp(),
        Unary::Log => x.log(),
        Unary::Sqrt => x.sqrt(),
        Unary::Neg => x.neg(),
        Unary::Abs => x.abs(),
    }
    .unwrap()
}

/// Inputs in the op's domain: positive for log and sqrt, both signs (and exact zeros) otherwise.
fn inputs(op_positive: bool, n: usize, seed: u64) -> Vec<f32> {
    if op_positive {
        uniform(n, 0.05, 4.0, seed)
    } else {
        let mut v = uniform(n, -4.0, 4.0, seed);
        if n > 2 {
            v[n / 2] = 0.0;
        }
        v
    }
}

const UNARY: [Unary; 10] = [
    Unary::Relu,
    Unary::GeluErf,
    Unary::GeluTanh,
    Unary::Sigmoid,
    Unary::Tanh,
    Unary::Exp,
    Unary::Log,
    Unary::Sqrt,
    Unary::Neg,
    Unary::Abs,
];

parity_test!(unary_forward_matches_cpu, |gpu| {
    for op in UNARY {
        for (k, &n) in SIZES.iter().enumerate() {
            let x = inputs(matches!(op, Unary::Log | Unary::Sqrt), n, 100 + k as u64);
            let want = vals(&cpu_unary(op, &cpu(&x, &[n])));
            assert_close(&format!("{op:?} f32 n={n}"), &run_unary_f32(gpu, op, &x), &want, 1e-6, 1e-5);
            let xr = round_bf16(&x);
            let want = vals(&cpu_unary(op, &cpu(&xr, &[n])));
            assert_close(&format!("{op:?} bf16 n={n}"), &run_unary_bf16(gpu, op, &x), &want, 1e-6, 4e-3);
        }
    }
    // Sigmoid must not overflow for large |x|; exp/log at the edges of the range.
    let x = vec![-100.0, -30.0, 30.0, 100.0, 88.0, -88.0, 0.0];
    let want = vals(&cpu(&x, &[7]).sigmoid().unwrap());
    assert_close("sigmoid extremes", &run_unary_f32(gpu, Unary::Sigmoid, &x), &want, 1e-7, 1e-5);
});

parity_test!(scale_shift_matches_cpu, |gpu| {
    for (k, &n) in SIZES.iter().enumerate() {
        let x = uniform(n, -2.0, 2.0, 7 + k as u64);
        let (a, b) = (-1.75f32, 0.3f32);
        let want = vals(&cpu(&x, &[n]).mul_scalar(a as f64).unwrap().add_scalar(b as f64).unwrap());
        let dx = gpu.upload(&x).unwrap();
        let mut dy = gpu.alloc::<f32>(n).unwrap();
        ew::scale_shift(gpu, &dx, a, b, &mut dy).unwrap();
        assert_close(&format!("scale_shift f32 n={n}"), &dy.to_vec().unwrap(), &want, 1e-6, 1e-5);

        let want = vals(&cpu(&round_bf16(&x), &[n]).mul_scalar(a as f64).unwrap().add_scalar(b as f64).unwrap());
        let dx = gpu.upload(&to_bf16(&x)).unwrap();
        let mut dy = gpu.alloc::<bf16>(n).unwrap();
        ew::scale_shift(gpu, &dx, a, b, &mut dy).unwrap();
        assert_close(&format!("scale_shift bf16 n={n}"), &from_bf16(&dy.to_vec().unwrap()), &want, 1e-6, 4e-3);
    }
});

const GRADS: [(UnaryGrad, Unary); 8] = [
    (UnaryGrad::Relu, Unary::Relu),
    (UnaryGrad::GeluErf, Unary::GeluErf),
    (UnaryGrad::GeluTanh, Unary::GeluTanh),
    (UnaryGrad::Sigmoid, Unary::Sigmoid),
    (UnaryGrad::Tanh, Unary::Tanh),
    (UnaryGrad::Exp, Unary::Exp),
    (UnaryGrad::Log, Unary::Log),
    (UnaryGrad::Sqrt, Unary::Sqrt),
];

/// The CPU gradient of Σ f(x)·g with respect to x (= g·f′(x)), and f(x).
fn cpu_grad(op: Unary, x: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = x.len();
    let xt = cpu(x, &[n]).requires_grad().unwrap();
    let y = cpu_unary(op, &xt);
    y.mul(&cpu(g, &[n])).unwrap().sum_all().unwrap().backward().unwrap();
    (vals(&xt.grad().unwrap()), vals(&y))
}

parity_test!(unary_backward_matches_autograd, |gpu| {
    for (grad, op) in GRADS {
        for (k, &n) in SIZES.iter().enumerate() {
            let x = inputs(matches!(op, Unary::Log | Unary::Sqrt), n, 200 + k as u64);
            let g = normal(n, 1.0, 300 + k as u64);
            let what = |t: &str| format!("{grad:?} backward {t} n={n}");

            let (want, y) = cpu_grad(op, &x, &g);
            let saved = if grad.saved() == Saved::Input { &x } else { &y };
            let (dg, ds) = (gpu.upload(&g).unwrap(), gpu.upload(saved).unwrap());
            let mut dx = gpu.alloc::<f32>(n).unwrap();
            ew::unary_backward(gpu, grad, &dg, &ds, &mut dx).unwrap();
            assert_close(&what("f32"), &dx.to_vec().unwrap(), &want, 1e-6, 1e-5);

            // bf16: the kernel sees bf16 dy and a bf16 saved tensor; the CPU gets the same
            // rounded x and dy. Where the saved tensor is the output, its own bf16 rounding
            // (relative 2⁻⁹) enters f′ — for tanh, 1 − y² near |y| = 1 amplifies it — hence
            // the absolute term scaled by |dy|.
            let (xr, gr) = (round_bf16(&x), round_bf16(&g));
            let (want, y) = cpu_grad(op, &xr, &gr);
            let saved = if grad.saved() == Saved::Input { xr } else { round_bf16(&y) };
            let (dg, ds) = (gpu.upload(&to_bf16(&gr)).unwrap(), gpu.upload(&to_bf16(&saved)).unwrap());
            let mut dx = gpu.alloc::<bf16>(n).unwrap();
            ew::unary_backward(gpu, grad, &dg, &ds, &mut dx).unwrap();
            let atol = if grad.saved() == Saved::Output { 1.6e-2 } else { 1e-5 };
            assert_close(&what("bf16"), &from_bf16(&dx.to_vec().unwrap()), &want, atol, 8e-3);
        }
    }
});

fn cpu_binary(op: Binary, a: &Tensor, b: &Tensor) -> Tensor {
    match op {
        Binary::Add => a.add(b),
        Binary::Sub => a.sub(b),
        Binary::Mul => a.mul(b),
        Binary::Div => a.div(b),
        // a, broadcast to the output shape (b's values do not matter: + 0·b).
        Binary::First => a.add(&b.mul_scalar(0.0).unwrap()),
    }
    .unwrap()
}

const BINARY: [Binary; 5] = [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div, Binary::First];

/// Operand values; divisors kept away from 0.
fn operand(op: Binary, second: bool, n: usize, seed: u64) -> Vec<f32> {
    if second && op == Binary::Div {
        uniform(n, 0.5, 2.0, seed).iter().enumerate().map(|(i, &v)| if i % 2 == 0 { v } else { -v }).collect()
    } else {
        uniform(n, -3.0, 3.0, seed)
    }
}

parity_test!(binary_same_shape_matches_cpu, |gpu| {
    for op in BINARY {
        for (k, &n) in SIZES.iter().enumerate() {
            let (a, b) = (operand(op, false, n, 10 + k as u64), operand(op, true, n, 20 + k as u64));
            let want = vals(&cpu_binary(op, &cpu(&a, &[n]), &cpu(&b, &[n])));
            let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            let mut dy = gpu.alloc::<f32>(n).unwrap();
            ew::binary(gpu, op, &da, &db, &mut dy).unwrap();
            assert_close(&format!("{op:?} f32 n={n}"), &dy.to_vec().unwrap(), &want, 1e-6, 1e-5);

            let (ar, br) = (round_bf16(&a), round_bf16(&b));
            let want = vals(&cpu_binary(op, &cpu(&ar, &[n]), &cpu(&br, &[n])));
            let (da, db) = (gpu.upload(&to_bf16(&a)).unwrap(), gpu.upload(&to_bf16(&b)).unwrap());
            let mut dy = gpu.alloc::<bf16>(n).unwrap();
            ew::binary(gpu, op, &da, &db, &mut dy).unwrap();
            assert_close(&format!("{op:?} bf16 n={n}"), &from_bf16(&dy.to_vec().unwrap()), &want, 1e-6, 4e-3);
        }
    }
});

/// Shape pairs: scalars, bias rows (the packed path: inner length a multiple of 8), columns,
/// outer products, NCHW with per-channel and mixed broadcasts, and six alternating dims.
const BROADCASTS: [(&[usize], &[usize]); 12] = [
    (&[4099], &[1]),
    (&[], &[5]),
    (&[33, 257], &[257]),
    (&[16, 64], &[64]),
    (&[31, 1], &[1, 33]),
    (&[257, 3], &[257, 1]),
    (&[2, 3, 5, 7], &[1, 3, 1, 1]),
    (&[2, 3, 5, 7], &[3, 1, 7]),
    (&[2, 1, 5, 1], &[3, 1, 7]),
    (&[4, 8, 16], &[4, 1, 16]),
    (&[3, 1, 4, 1, 5, 2], &[1, 6, 1, 3, 1, 2]),
    (&[1], &[1]),
];

parity_test!(binary_broadcast_matches_cpu, |gpu| {
    // The ops share the indexing code (and each is checked on every size above): one op per
    // shape pair, cycling, keeps the emulated test short.
    for (k, &(sa, sb)) in BROADCASTS.iter().enumerate() {
        let op = BINARY[k % BINARY.len()];
        {
            // Each way round, so both operands take the broadcast role.
            for (sa, sb) in [(sa, sb), (sb, sa)] {
                let (na, nb) = (sa.iter().product::<usize>(), sb.iter().product::<usize>());
                let (a, b) = (operand(op, false, na, 40 + k as u64), operand(op, true, nb, 50 + k as u64));
                let what = |t: &str| format!("{op:?} {t} {sa:?} ∘ {sb:?}");
                let want_t = cpu_binary(op, &cpu(&a, sa), &cpu(&b, sb));
                let n = want_t.numel();

                let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
                let mut dy = gpu.alloc::<f32>(n).unwrap();
                let shape = ew::binary_broadcast(gpu, op, &da, sa, &db, sb, &mut dy).unwrap();
                assert_eq!(shape, want_t.shape(), "{}", what("shape"));
                assert_close(&what("f32"), &dy.to_vec().unwrap(), &vals(&want_t), 1e-6, 1e-5);

                let want = vals(&cpu_binary(op, &cpu(&round_bf16(&a), sa), &cpu(&round_bf16(&b), sb)));
                let (da, db) = (gpu.upload(&to_bf16(&a)).unwrap(), gpu.upload(&to_bf16(&b)).unwrap());
                let mut dy = gpu.alloc::<bf16>(n).unwrap();
                ew::binary_broadcast(gpu, op, &da, sa, &db, sb, &mut dy).unwrap();
                assert_close(&what("bf16"), &from_bf16(&dy.to_vec().unwrap()), &want, 1e-6, 4e-3);
            }
        }
    }
});

parity_test!(binary_strided_reads_views, |gpu| {
    // a: a [7, 5] matrix read transposed as [5, 7]; b: a [7] row broadcast over the rows.
    let a = uniform(35, -2.0, 2.0, 61);
    let b = uniform(7, -2.0, 2.0, 62);
    let want = vals(&cpu(&a, &[7, 5]).t().unwrap().mul(&cpu(&b, &[7])).unwrap());
    let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
    let mut dy = gpu.alloc::<f32>(35).unwrap();
    ew::binary_strided(gpu, Binary::Mul, &da, &[1, 5], &db, &[0, 1], &[5, 7], &mut dy).unwrap();
    assert_close("transposed * row", &dy.to_vec().unwrap(), &want, 1e-6, 1e-5);

    // A read past the end of an operand is refused.
    let err = ew::binary_strided(gpu, Binary::Mul, &da, &[1, 6], &db, &[0, 1], &[5, 7], &mut dy).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
});

parity_test!(sum_to_shape_matches_cpu, |gpu| {
    let cases: [(&[usize], &[usize]); 11] = [
        (&[33, 257], &[257]),
        (&[33, 257], &[33, 1]),
        (&[33, 257], &[1, 1]),
        (&[33, 257], &[]),
        (&[4099], &[1]),
        (&[2, 3, 5, 7], &[1, 3, 1, 1]),
        (&[2, 3, 5, 7], &[3, 1, 7]),
        (&[2, 3, 5, 7], &[2, 1, 5, 1]),
        (&[3, 4, 5, 6, 7], &[4, 1, 6, 1]),
        (&[6, 1000], &[6, 1000]),
        (&[1, 31], &[31]),
    ];
    for (k, &(out, shape)) in cases.iter().enumerate() {
        let n: usize = out.iter().product();
        let g = uniform(n, -1.0, 1.0, 70 + k as u64);
        let what = |t: &str| format!("{t} {out:?} -> {shape:?}");
        let want = vals(&simclr::ops::elementwise::sum_to_shape(&cpu(&g, out), shape).unwrap());
        let m = want.len();
        // f32 sums of up to ~4000 terms of |x| < 1.
        let atol = 1e-6 * ((n / m.max(1)) as f32).sqrt().max(1.0);

        let dg = gpu.upload(&g).unwrap();
        let mut dst = gpu.alloc::<f32>(m).unwrap();
        ew::sum_to_shape(gpu, &dg, out, shape, &mut dst).unwrap();
        assert_close(&what("f32"), &dst.to_vec().unwrap(), &want, atol, 1e-5);

        let want = vals(&simclr::ops::elementwise::sum_to_shape(&cpu(&round_bf16(&g), out), shape).unwrap());
        let dg = gpu.upload(&to_bf16(&g)).unwrap();
        let mut dst = gpu.alloc::<f32>(m).unwrap();
        ew::sum_to_shape(gpu, &dg, out, shape, &mut dst).unwrap();
        // bf16 inputs, f32 accumulation and result: as tight as f32.
        assert_close(&what("bf16"), &dst.to_vec().unwrap(), &want, atol, 1e-5);
    }
    let dg = gpu.zeros::<f32>(6).unwrap();
    let mut dst = gpu.alloc::<f32>(4).unwrap();
    let err = ew::sum_to_shape(gpu, &dg, &[2, 3], &[4], &mut dst).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
});

parity_test!(casts_round_to_nearest_even, |gpu| {
    let mut x = normal(4099, 10.0, 80);
    // Ties (exactly halfway between two bf16 values), specials and subnormals.
    x[..8].copy_from_slice(&[
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        1e-40,
        -0.0,
        3.0e38,
    ]);
    let dx = gpu.upload(&x).unwrap();
    let mut dy = gpu.alloc::<bf16>(x.len()).unwrap();
    ew::cast_f32_to_bf16(gpu, &dx, &mut dy).unwrap();
    let got: Vec<u16> = dy.to_vec().unwrap().iter().map(|v| v.to_bits()).collect();
    let want: Vec<u16> = to_bf16(&x).iter().map(|v| v.to_bits()).collect();
    assert_eq!(got, want, "f32 -> bf16 bits");

    let mut back = gpu.alloc::<f32>(x.len()).unwrap();
    ew::cast_bf16_to_f32(gpu, &dy, &mut back).unwrap();
    assert_eq!(back.to_vec().unwrap(), round_bf16(&x), "bf16 -> f32 is exact");

    let nan = gpu.upload(&[f32::NAN]).unwrap();
    let mut out = gpu.alloc::<bf16>(1).unwrap();
    ew::cast_f32_to_bf16(gpu, &nan, &mut out).unwrap();
    assert!(out.to_vec().unwrap()[0].is_nan());

    let err = ew::cast_f32_to_bf16(gpu, &dx, &mut gpu.alloc::<bf16>(4098).unwrap()).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
});

parity_test!(fill_and_axpby_match_cpu, |gpu| {
    for &n in &SIZES {
        let mut y = gpu.alloc::<f32>(n).unwrap();
        ew::fill(gpu, &mut y, -2.5).unwrap();
        assert!(y.to_vec().unwrap().iter().all(|&v| v == -2.5), "fill f32 n={n}");
        let mut y = gpu.alloc::<bf16>(n).unwrap();
        ew::fill(gpu, &mut y, 0.1).unwrap();
        assert!(y.to_vec().unwrap().iter().all(|&v| v == bf16::from_f32(0.1)), "fill bf16 n={n}");

        let (x, y0) = (uniform(n, -1.0, 1.0, 90), uniform(n, -1.0, 1.0, 91));
        let (a, b) = (0.75f32, -1.5f32);
        let want = vals(
            &cpu(&x, &[n]).mul_scalar(a as f64).unwrap().add(&cpu(&y0, &[n]).mul_scalar(b as f64).unwrap()).unwrap(),
        );
        let dx = gpu.upload(&x).unwrap();
        let mut dy = gpu.upload(&y0).unwrap();
        ew::axpby(gpu, a, &dx, b, &mut dy).unwrap();
        assert_close(&format!("axpby f32 n={n}"), &dy.to_vec().unwrap(), &want, 1e-6, 1e-5);

        let (xr, yr) = (round_bf16(&x), round_bf16(&y0));
        let want = vals(
            &cpu(&xr, &[n]).mul_scalar(a as f64).unwrap().add(&cpu(&yr, &[n]).mul_scalar(b as f64).unwrap()).unwrap(),
        );
        let dx = gpu.upload(&to_bf16(&x)).unwrap();
        let mut dy = gpu.upload(&to_bf16(&y0)).unwrap();
        ew::axpby(gpu, a, &dx, b, &mut dy).unwrap();
        assert_close(&format!("axpby bf16 n={n}"), &from_bf16(&dy.to_vec().unwrap()), &want, 1e-6, 4e-3);

        // b = 0 ignores the old y, even NaN.
        let dx = gpu.upload(&x).unwrap();
        let mut dy = gpu.upload(&vec![f32::NAN; n]).unwrap();
        ew::axpby(gpu, 2.0, &dx, 0.0, &mut dy).unwrap();
        let want: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
        assert_close(&format!("axpby b=0 n={n}"), &dy.to_vec().unwrap(), &want, 0.0, 0.0);
    }
});

parity_test!(elementwise_bad_inputs_are_errors, |gpu| {
    let x = gpu.zeros::<f32>(10).unwrap();
    let mut short = gpu.alloc::<f32>(9).unwrap();
    let shape_err = |r: simclr::Result<()>| matches!(r, Err(Error::Shape { .. }));
    assert!(shape_err(ew::unary(gpu, Unary::Relu, &x, &mut short)));
    assert!(shape_err(ew::scale_shift(gpu, &x, 1.0, 0.0, &mut short)));
    assert!(shape_err(ew::unary_backward(gpu, UnaryGrad::Tanh, &x, &short, &mut gpu.alloc(10).unwrap())));
    assert!(shape_err(ew::binary(gpu, Binary::Add, &x, &short, &mut gpu.alloc(10).unwrap())));
    assert!(shape_err(ew::axpby(gpu, 1.0, &x, 1.0, &mut short)));
    assert!(shape_err(ew::cast_bf16_to_f32(gpu, &gpu.zeros::<bf16>(10).unwrap(), &mut short)));

    // Shapes that do not broadcast; a buffer that does not match its shape.
    let mut y = gpu.alloc::<f32>(30).unwrap();
    let r = ew::binary_broadcast(gpu, Binary::Add, &x, &[10], &gpu.zeros::<f32>(3).unwrap(), &[3], &mut y);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = ew::binary_broadcast(gpu, Binary::Add, &x, &[10, 1], &short, &[1, 3], &mut y);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");

    // Seven alternating broadcast dims cannot be merged below the kernel's six.
    let (sa, sb) = ([2, 1, 2, 1, 2, 1, 2], [1, 2, 1, 2, 1, 2, 1]);
    let (a, b) = (gpu.zeros::<f32>(16).unwrap(), gpu.zeros::<f32>(8).unwrap());
    let mut y = gpu.alloc::<f32>(128).unwrap();
    let r = ew::binary_broadcast(gpu, Binary::Mul, &a, &sa, &b, &sb, &mut y);
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
});

// ---------------------------------------------------------------- clamp_min, views, index_select, gather

parity_test!(clamp_min_and_its_gradient_match_cpu, |gpu| {
    for n in SIZES {
        let mut x = uniform(n, -1.0, 1.0, 700 + n as u64);
        if n > 2 {
            x[1] = 0.25; // exactly at the floor: clamped, no gradient (CPU: v > eps)
            x[2] = f32::NAN; // NaN becomes the floor, as f64::max
        }
        let g = normal(n, 1.0, 800 + n as u64);
        let lo = 0.25f32;
        let want: Vec<f32> = x.iter().map(|&v| (v as f64).max(lo as f64) as f32).collect();
        let want_g: Vec<f32> = x.iter().zip(&g).map(|(&v, &g)| if v > lo { g } else { 0.0 }).collect();

        let (dx, dg) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap());
        let mut y = gpu.alloc::<f32>(n).unwrap();
        ew::clamp_min(gpu, &dx, lo, &mut y).unwrap();
        assert_close(&format!("clamp_min f32 n={n}"), &y.to_vec().unwrap(), &want, 0.0, 0.0);
        let mut d = gpu.alloc::<f32>(n).unwrap();
        ew::clamp_min_backward(gpu, &dg, &dx, lo, &mut d).unwrap();
        assert_close(&format!("clamp_min_backward f32 n={n}"), &d.to_vec().unwrap(), &want_g, 0.0, 0.0);

        let (bx, bg) = (gpu.upload(&to_bf16(&x)).unwrap(), gpu.upload(&to_bf16(&g)).unwrap());
        let mut y = gpu.alloc::<bf16>(n).unwrap();
        ew::clamp_min(gpu, &bx, lo, &mut y).unwrap();
        assert_close(&format!("clamp_min bf16 n={n}"), &from_bf16(&y.to_vec().unwrap()), &round_bf16(&want), 0.0, 0.0);
        let mut d = gpu.alloc::<bf16>(n).unwrap();
        ew::clamp_min_backward(gpu, &bg, &bx, lo, &mut d).unwrap();
        let want_g: Vec<f32> =
            round_bf16(&x).iter().zip(round_bf16(&g)).map(|(&v, g)| if v > lo { g } else { 0.0 }).collect();
        assert_close(&format!("clamp_min_backward bf16 n={n}"), &from_bf16(&d.to_vec().unwrap()), &want_g, 0.0, 0.0);
    }
});

/// Row-major strides of `shape`.
fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The offsets Σ cᵢ·stridesᵢ of every coordinate of `shape`, row-major order.
fn view_offsets(shape: &[usize], strides: &[usize], offset: usize) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let rs = strides_of(shape);
    (0..n).map(|i| offset + (0..shape.len()).map(|a| (i / rs[a]) % shape[a] * strides[a]).sum::<usize>()).collect()
}

parity_test!(copy_view_writes_strided_views_for_every_element_size, |gpu| {
    // (shape, source strides, destination offset, destination strides, destination length):
    // a transpose into a slab of a wider buffer (cat), a window of a zeroed buffer (narrow's
    // backward), a broadcast source, and seven dims that merge to fewer.
    type Case = (Vec<usize>, Vec<usize>, usize, Vec<usize>, usize);
    let cases: Vec<Case> = vec![
        (vec![3, 5], vec![1, 3], 5, vec![10, 1], 30),
        (vec![4, 3, 2], vec![6, 2, 1], 7, vec![30, 5, 1], 130),
        (vec![2, 6, 33], vec![0, 0, 1], 0, vec![198, 33, 1], 396),
        (vec![2, 1, 3, 1, 2, 2, 5], vec![120, 60, 20, 20, 10, 5, 1], 3, vec![120, 60, 20, 20, 10, 5, 1], 250),
        (vec![1031], vec![2], 1, vec![1], 1033),
    ];
    fn run<T: simclr::backend::cuda::DeviceElement + PartialEq>(gpu: &Gpu, make: impl Fn(usize) -> T, cases: &[Case]) {
        for (shape, xs, off, ys, ylen) in cases {
            let xlen = 1 + shape.iter().zip(xs).map(|(d, s)| (d - 1) * s).sum::<usize>();
            let x: Vec<T> = (0..xlen).map(&make).collect();
            let fill = make(usize::MAX / 2);
            let mut want = vec![fill; *ylen];
            for (src, dst) in view_offsets(shape, xs, 0).into_iter().zip(view_offsets(shape, ys, *off)) {
                want[dst] = x[src];
            }
            let dx = gpu.upload(&x).unwrap();
            let mut dy = gpu.upload(&vec![fill; *ylen]).unwrap();
            ew::copy_view(gpu, &dx, xs, shape, &mut dy, *off, ys).unwrap();
            assert_eq!(
                dy.to_vec().unwrap(),
                want,
                "copy_view {shape:?} {xs:?} → {off}+{ys:?} ({})",
                std::any::type_name::<T>()
            );
        }
    }
    run(gpu, |i| (i % 251) as u8, &cases);
    run(gpu, |i| bf16::from_f32((i % 1000) as f32 - 3.5), &cases);
    run(gpu, |i| (i % 100_000) as f32 * 0.5, &cases);
    run(gpu, |i| (i as i64 % 1_000_003) - 7, &cases);

    // Reaching beyond either buffer, or a destination that repeats elements, is an error.
    let x = gpu.zeros::<f32>(10).unwrap();
    let mut y = gpu.alloc::<f32>(10).unwrap();
    let r = ew::copy_view(gpu, &x, &[1], &[10], &mut y, 1, &[1]);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = ew::copy_view(gpu, &x, &[2], &[6], &mut y, 0, &[1]);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = ew::copy_view(gpu, &x, &[1, 0], &[2, 2], &mut y, 0, &[1, 0]);
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
});

parity_test!(index_select_and_its_gradient_match_cpu, |gpu| {
    // (shape, axis, indices with repeats and unselected slabs)
    let cases: [(&[usize], usize, &[usize]); 4] = [
        (&[7, 5], 0, &[6, 0, 6, 3, 6]),
        (&[3, 9, 33], 1, &[8, 1, 1, 4]),
        (&[4, 6], 1, &[5, 5, 5, 5, 5, 5, 5, 0]),
        (&[2, 3, 1031], 2, &[1030, 0, 517]),
    ];
    for (shape, axis, idx) in cases {
        let n: usize = shape.iter().product();
        let x = normal(n, 1.0, 900 + n as u64);
        let (outer, size, inner) = (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product());
        let xt = Tensor::from_vec(x.clone(), shape).unwrap().requires_grad().unwrap();
        let yt = xt.index_select(axis, idx).unwrap();
        let g = normal(yt.numel(), 1.0, 950 + n as u64);
        yt.mul(&Tensor::from_vec(g.clone(), yt.shape()).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let (want, want_g) = (vals(&yt), vals(&xt.grad().unwrap()));

        let didx = gpu.upload(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).unwrap();
        let mut y = gpu.alloc::<f32>(yt.numel()).unwrap();
        ew::index_select(gpu, &gpu.upload(&x).unwrap(), &didx, (outer, size, inner), &mut y).unwrap();
        assert_close(&format!("index_select {shape:?} axis {axis}"), &y.to_vec().unwrap(), &want, 0.0, 0.0);

        // The inverse index as CSR: the j with idx[j] = s, ascending.
        let mut offsets = vec![0i64; size + 1];
        let mut rows = Vec::new();
        for s in 0..size {
            rows.extend(idx.iter().enumerate().filter(|&(_, &i)| i == s).map(|(j, _)| j as i64));
            offsets[s + 1] = rows.len() as i64;
        }
        let (doff, drows) = (gpu.upload(&offsets).unwrap(), gpu.upload(&rows).unwrap());
        let mut dx = gpu.alloc::<f32>(n).unwrap();
        ew::index_add(gpu, &gpu.upload(&g).unwrap(), &doff, &drows, (outer, size, inner), &mut dx).unwrap();
        assert_close(&format!("index_add {shape:?} axis {axis}"), &dx.to_vec().unwrap(), &want_g, 1e-6, 1e-6);
        let mut dx = gpu.alloc::<bf16>(n).unwrap();
        ew::index_add(gpu, &gpu.upload(&to_bf16(&g)).unwrap(), &doff, &drows, (outer, size, inner), &mut dx).unwrap();
        assert_close(&format!("index_add bf16 {shape:?}"), &from_bf16(&dx.to_vec().unwrap()), &want_g, 2e-2, 1e-2);
    }
    let x = gpu.zeros::<f32>(12).unwrap();
    let r = ew::index_select(gpu, &x, &gpu.upload(&[0i64]).unwrap(), (2, 5, 1), &mut gpu.alloc(2).unwrap());
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
});

parity_test!(gather_and_its_gradient_match_cpu, |gpu| {
    // (input shape, index shape, axis): the index may be smaller off the axis.
    let cases: [(&[usize], &[usize], usize); 4] = [
        (&[4, 6], &[3, 9], 1),
        (&[5, 3], &[8, 2], 0),
        (&[2, 3, 33], &[2, 2, 40], 2),
        (&[3, 7, 2, 5], &[2, 4, 2, 3], 1),
    ];
    for (shape, ishape, axis) in cases {
        let n: usize = shape.iter().product();
        let m: usize = ishape.iter().product();
        let x = normal(n, 1.0, 1000 + n as u64);
        let mut rng = simclr::Rng::new(m as u64);
        let idx: Vec<i64> = (0..m).map(|_| (rng.uniform() * shape[axis] as f64) as i64).collect();
        let it = Tensor::from_vec(idx.clone(), ishape).unwrap();
        let xt = Tensor::from_vec(x.clone(), shape).unwrap().requires_grad().unwrap();
        let yt = xt.gather(axis, &it).unwrap();
        let g = normal(m, 1.0, 1100 + m as u64);
        yt.mul(&Tensor::from_vec(g.clone(), ishape).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let (want, want_g) = (vals(&yt), vals(&xt.grad().unwrap()));

        let didx = gpu.upload(&idx).unwrap();
        let strides = strides_of(shape);
        let mut y = gpu.alloc::<f32>(m).unwrap();
        ew::gather(gpu, &gpu.upload(&x).unwrap(), shape, &strides, &didx, ishape, axis, &mut y).unwrap();
        assert_close(&format!("gather {shape:?} axis {axis}"), &y.to_vec().unwrap(), &want, 0.0, 0.0);
        // Any element size: i64 values through the 8-byte kernel.
        let xi: Vec<i64> = (0..n as i64).collect();
        let mut yi = gpu.alloc::<i64>(m).unwrap();
        ew::gather(gpu, &gpu.upload(&xi).unwrap(), shape, &strides, &didx, ishape, axis, &mut yi).unwrap();
        let want_i: Vec<i64> = Tensor::from_vec(xi, shape).unwrap().gather(axis, &it).unwrap().to_vec().unwrap();
        assert_eq!(yi.to_vec().unwrap(), want_i, "gather i64 {shape:?}");

        let mut dx = gpu.alloc::<f32>(n).unwrap();
        ew::gather_backward(gpu, &gpu.upload(&g).unwrap(), &didx, ishape, shape, axis, &mut dx).unwrap();
        assert_close(&format!("gather_backward {shape:?} axis {axis}"), &dx.to_vec().unwrap(), &want_g, 1e-6, 1e-6);
        let mut dx = gpu.alloc::<bf16>(n).unwrap();
        ew::gather_backward(gpu, &gpu.upload(&to_bf16(&g)).unwrap(), &didx, ishape, shape, axis, &mut dx).unwrap();
        assert_close(
            &format!("gather_backward bf16 {shape:?}"),
            &from_bf16(&dx.to_vec().unwrap()),
            &want_g,
            2e-2,
            1e-2,
        );
    }
    // A transposed input is read through its strides.
    let x = normal(12, 1.0, 1200);
    let idx = [2i64, 0, 1, 1];
    let xt = Tensor::from_vec(x.clone(), &[3, 4]).unwrap().t().unwrap();
    let want = vals(&xt.gather(1, &Tensor::from_vec(idx.to_vec(), &[4, 1]).unwrap()).unwrap());
    let mut y = gpu.alloc::<f32>(4).unwrap();
    ew::gather(gpu, &gpu.upload(&x).unwrap(), &[4, 3], &[1, 4], &gpu.upload(&idx).unwrap(), &[4, 1], 1, &mut y)
        .unwrap();
    assert_close("gather of a transpose", &y.to_vec().unwrap(), &want, 0.0, 0.0);
    // An index larger than the input off the axis is an error.
    let r = ew::gather(
        gpu,
        &gpu.upload(&x).unwrap(),
        &[3, 4],
        &[4, 1],
        &gpu.upload(&[0i64; 8]).unwrap(),
        &[4, 2],
        1,
        &mut gpu.alloc(8).unwrap(),
    );
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
});
