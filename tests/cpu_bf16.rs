//! bf16 autocast on the CPU: the bf16 GEMM (backend/cpu/gemm_bf16.rs) against an f64
//! reference on bf16-rounded operands, and matmul/linear under `autocast` taking it.
//! Where the CPU lacks AVX512-BF16 the GEMM tests say so and check the refusal instead.

use simclr::backend::cpu::gemm_bf16::{gemm_bf16, round_to_bf16, supported};
use simclr::backend::cpu::matmul::GemmPrecision;
use simclr::ops::autocast::{autocast, cpu_gemm_precision};
use simclr::ops::matmul::linear;
use simclr::{DType, Rng, Tensor};

#[test]
fn rounding_to_bf16_is_to_nearest_ties_to_even() {
    let ulp = 2f32.powi(-7); // bf16's spacing in [1, 2)
    assert_eq!(round_to_bf16(1.0), 1.0);
    assert_eq!(round_to_bf16(-2.5), -2.5);
    assert_eq!(round_to_bf16(1.0 + ulp / 2.0), 1.0, "a tie goes to the even neighbour (1.0)");
    assert_eq!(round_to_bf16(1.0 + 1.5 * ulp), 1.0 + 2.0 * ulp, "a tie goes to the even neighbour");
    assert_eq!(round_to_bf16(1.0 + ulp / 2.0 + 2f32.powi(-20)), 1.0 + ulp, "past the tie rounds up");
    assert_eq!(round_to_bf16(1.0 + ulp / 2.0 - 2f32.powi(-20)), 1.0, "short of the tie rounds down");
    assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
    assert_eq!(round_to_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
    assert_eq!(round_to_bf16(f32::MAX), f32::INFINITY, "past the largest bf16");
    assert!(round_to_bf16(f32::NAN).is_nan());
    assert!(round_to_bf16(f32::from_bits(0x7F80_0001)).is_nan(), "a NaN with only low bits set stays NaN");
}

/// Where AVX512-BF16 is missing, the autocast precision is refused with the reason; true
/// where the tests below can run.
fn bf16_cpu() -> bool {
    let chosen = cpu_gemm_precision("test", true, DType::F32);
    if supported() {
        assert_eq!(chosen.unwrap(), GemmPrecision::Bf16);
        true
    } else {
        let err = chosen.unwrap_err().to_string();
        assert!(err.contains("AVX512-BF16") && err.contains("--precision f32"), "{err}");
        eprintln!("this CPU has no AVX512-BF16: the bf16 GEMM itself is not exercised here");
        false
    }
}

#[test]
fn autocast_leaves_f64_and_autocast_off_exact() {
    assert_eq!(cpu_gemm_precision("test", false, DType::F32).unwrap(), GemmPrecision::Exact);
    assert_eq!(cpu_gemm_precision("test", true, DType::F64).unwrap(), GemmPrecision::Exact);
}

/// A strided f32 matrix: element (i, j) at i·rs + j·cs.
struct Strided {
    data: Vec<f32>,
    rs: isize,
    cs: isize,
}

impl Strided {
    fn random(rows: usize, cols: usize, transposed: bool, rng: &mut Rng) -> Strided {
        let data = (0..rows * cols).map(|_| rng.uniform_range(-2.0, 2.0) as f32).collect();
        let (rs, cs) = if transposed { (1, rows as isize) } else { (cols as isize, 1) };
        Strided { data, rs, cs }
    }
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[(i as isize * self.rs + j as isize * self.cs) as usize]
    }
}

/// `dst (+)= a · b` ([m×k] · [k×n]) through `gemm_bf16` on `threads` threads.
fn multiply(
    dst: &mut Strided,
    a: &Strided,
    b: &Strided,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    threads: usize,
) {
    // SAFETY: every operand holds its full matrix at the strides given.
    unsafe {
        gemm_bf16(
            m,
            n,
            k,
            (dst.data.as_mut_ptr(), dst.rs, dst.cs),
            (a.data.as_ptr(), a.rs, a.cs),
            (b.data.as_ptr(), b.rs, b.cs),
            accumulate,
            threads,
        )
    }
}

#[test]
fn bf16_gemm_matches_an_f64_product_of_the_rounded_operands() {
    if !bf16_cpu() {
        return;
    }
    let mut rng = Rng::new(11);
    // Sizes around the kernel's tile (12 × 32), its k slice (384, odd k pads a zero) and block (96 rows).
    for (m, n, k) in [(1, 1, 1), (13, 37, 5), (12, 32, 384), (97, 70, 777), (200, 33, 2), (5, 100, 1100)] {
        for (lhs_t, rhs_t, out_t, accumulate, threads) in [
            (false, false, false, false, 1),
            (false, true, false, true, 2),
            (true, false, true, false, 2),
            (true, true, false, true, 1),
        ] {
            let (a, b) = (Strided::random(m, k, lhs_t, &mut rng), Strided::random(k, n, rhs_t, &mut rng));
            let start = Strided::random(m, n, out_t, &mut rng);
            let mut got = Strided { data: start.data.clone(), rs: start.rs, cs: start.cs };
            multiply(&mut got, &a, &b, (m, n, k), accumulate, threads);
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut scale) = (if accumulate { start.at(i, j) as f64 } else { 0.0 }, 1.0);
                    for d in 0..k {
                        let p = round_to_bf16(a.at(i, d)) as f64 * round_to_bf16(b.at(d, j)) as f64;
                        exact += p;
                        scale += p.abs();
                    }
                    let err = (got.at(i, j) as f64 - exact).abs();
                    // f32 sums: a few units of f32 rounding per term of the scale.
                    assert!(
                        err <= 1e-6 * scale,
                        "{m}×{n}×{k} (lhsᵀ {lhs_t}, rhsᵀ {rhs_t}, dstᵀ {out_t}, += {accumulate}, {threads} threads) \
                         at ({i}, {j}): {} vs {exact} (scale {scale})",
                        got.at(i, j)
                    );
                }
            }
        }
    }
}

#[test]
fn bf16_gemm_sums_the_same_on_any_thread_count() {
    if !bf16_cpu() {
        return;
    }
    let (m, n, k) = (300, 70, 900);
    let mut rng = Rng::new(3);
    let (a, b) = (Strided::random(m, k, false, &mut rng), Strided::random(k, n, true, &mut rng));
    let run = |threads| {
        let mut dst = Strided { data: vec![0f32; m * n], rs: n as isize, cs: 1 };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| multiply(&mut dst, &a, &b, (m, n, k), false, threads));
        dst.data
    };
    assert_eq!(run(1), run(3));
}

/// The reference for x·Wᵀ + b with x and W rounded to bf16.
fn rounded_linear(x: &[f32], w: &[f32], b: &[f32], (rows, inputs, outputs): (usize, usize, usize)) -> Vec<f64> {
    let mut y = vec![0f64; rows * outputs];
    for r in 0..rows {
        for o in 0..outputs {
            y[r * outputs + o] = b[o] as f64
                + (0..inputs)
                    .map(|i| round_to_bf16(x[r * inputs + i]) as f64 * round_to_bf16(w[o * inputs + i]) as f64)
                    .sum::<f64>();
        }
    }
    y
}

#[test]
fn linear_under_autocast_multiplies_bf16_operands_forward_and_backward() {
    if !bf16_cpu() {
        return;
    }
    let (rows, inputs, outputs) = (9, 40, 6);
    let mut rng = Rng::new(5);
    let x = Tensor::randn(&[rows, inputs], 1.0, DType::F32, &mut rng).unwrap().requires_grad().unwrap();
    let w = Tensor::randn(&[outputs, inputs], 1.0, DType::F32, &mut rng).unwrap().requires_grad().unwrap();
    let b = Tensor::randn(&[outputs], 1.0, DType::F32, &mut rng).unwrap().requires_grad().unwrap();
    let upstream = Tensor::randn(&[rows, outputs], 1.0, DType::F32, &mut rng).unwrap();
    let close = |got: &[f32], want: &[f64], what: &str| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "{what} {i}: {g} vs {w}");
        }
    };

    let y = autocast(true, || linear(&x, &w, Some(&b))).unwrap();
    assert_eq!(y.dtype(), DType::F32, "autocast returns f32");
    let (xd, wd, bd) = (x.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    close(&y.to_vec::<f32>().unwrap(), &rounded_linear(&xd, &wd, &bd, (rows, inputs, outputs)), "y");
    let exact = linear(&x, &w, Some(&b)).unwrap().to_vec::<f32>().unwrap();
    assert!(
        y.to_vec::<f32>().unwrap().iter().zip(&exact).any(|(a, e)| (a - e).abs() > 1e-4),
        "autocast's product should differ from the f32 one by bf16 rounding"
    );

    // Backward (run outside autocast: the op keeps its forward's mode): dx = bf16(g)·bf16(W),
    // dW = bf16(g)ᵀ·bf16(x), db = Σ g in f32.
    y.mul(&upstream).unwrap().sum(&[0, 1], false).unwrap().backward().unwrap();
    let g = upstream.to_vec::<f32>().unwrap();
    let r = |v: f32| round_to_bf16(v) as f64;
    let dx: Vec<f64> = (0..rows * inputs)
        .map(|e| (0..outputs).map(|o| r(g[e / inputs * outputs + o]) * r(wd[o * inputs + e % inputs])).sum())
        .collect();
    let dw: Vec<f64> = (0..outputs * inputs)
        .map(|e| (0..rows).map(|row| r(g[row * outputs + e / inputs]) * r(xd[row * inputs + e % inputs])).sum())
        .collect();
    let db: Vec<f64> = (0..outputs).map(|o| (0..rows).map(|row| g[row * outputs + o] as f64).sum()).collect();
    close(&x.grad().unwrap().to_vec::<f32>().unwrap(), &dx, "dx");
    close(&w.grad().unwrap().to_vec::<f32>().unwrap(), &dw, "dW");
    close(&b.grad().unwrap().to_vec::<f32>().unwrap(), &db, "db");
}

#[test]
fn f64_matmul_ignores_autocast() {
    let mut rng = Rng::new(9);
    let a = Tensor::randn(&[2, 7, 30], 1.0, DType::F64, &mut rng).unwrap();
    let b = Tensor::randn(&[30, 5], 1.0, DType::F64, &mut rng).unwrap();
    let plain = a.matmul(&b).unwrap().to_vec::<f64>().unwrap();
    let under = autocast(true, || a.matmul(&b)).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(plain, under);
}

/// `t` with every element rounded to bf16, as f64 (exact there).
fn rounded_f64(t: &Tensor) -> Tensor {
    let v: Vec<f64> = t.to_vec::<f32>().unwrap().iter().map(|&x| round_to_bf16(x) as f64).collect();
    Tensor::from_vec(v, t.shape()).unwrap()
}

/// Runs conv2d (no bias) forward and backward against a random upstream gradient, under
/// autocast or not: (y, dx, dW, the upstream gradient).
fn conv_step(
    x: &Tensor,
    w: &Tensor,
    (s, p): (usize, usize),
    bf16: bool,
    rng: &mut Rng,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let (x, w) = (x.detach().requires_grad().unwrap(), w.detach().requires_grad().unwrap());
    let y = autocast(bf16, || simclr::ops::conv2d::conv2d(&x, &w, None, (s, s), (p, p))).unwrap();
    let upstream = Tensor::randn(y.shape(), 1.0, y.dtype(), rng).unwrap();
    y.mul(&upstream).unwrap().sum(&[0, 1, 2, 3], false).unwrap().backward().unwrap();
    (y, x.grad().unwrap(), w.grad().unwrap(), upstream)
}

#[test]
fn conv2d_gemm_schedules_under_autocast_multiply_bf16_operands_forward_and_backward() {
    if !bf16_cpu() {
        return;
    }
    // (N, C, H, O, kernel, stride, padding), all on the GEMM schedules: more than 64 output
    // channels (past the direct kernels), stride 2 (the input gradient is no convolution).
    // A 3×3 (channels-last backward), a 1×1 (im2col throughout), a stem-like 7×7.
    for (n, c, h, o, k, s, p) in [(2, 4, 8, 72, 3, 2, 1), (2, 16, 6, 80, 1, 2, 0), (1, 3, 17, 70, 7, 2, 3)] {
        let mut rng = Rng::new(21);
        let x = Tensor::randn(&[n, c, h, h], 1.0, DType::F32, &mut rng).unwrap();
        let w = Tensor::randn(&[o, c, k, k], 0.5, DType::F32, &mut rng).unwrap();
        let (y, dx, dw, upstream) = conv_step(&x, &w, (s, p), true, &mut Rng::new(1));
        // The reference: the same convolution in f64 on the bf16-rounded operands, its
        // backward fed the bf16-rounded upstream gradient (what the GEMMs multiply).
        let (x64, w64) = (rounded_f64(&x).requires_grad().unwrap(), rounded_f64(&w).requires_grad().unwrap());
        let y64 = simclr::ops::conv2d::conv2d(&x64, &w64, None, (s, s), (p, p)).unwrap();
        y64.mul(&rounded_f64(&upstream)).unwrap().sum(&[0, 1, 2, 3], false).unwrap().backward().unwrap();
        let exact = conv_step(&x, &w, (s, p), false, &mut Rng::new(1)).0.to_vec::<f32>().unwrap();

        let case = format!("[{n}, {c}, {h}²] → {o}, {k}×{k}/{s} pad {p}");
        let check = |got: &Tensor, want: &Tensor, what: &str| {
            let (got, want) = (got.to_vec::<f32>().unwrap(), want.to_vec::<f64>().unwrap());
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((*g as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()), "{case} {what} {i}: {g} vs {w}");
            }
        };
        let got_y = y.to_vec::<f32>().unwrap();
        assert!(got_y.iter().zip(&exact).any(|(a, e)| (a - e).abs() > 1e-4), "{case}: no bf16 rounding seen");
        check(&y, &y64, "y");
        check(&dx, &x64.grad().unwrap(), "dx");
        check(&dw, &w64.grad().unwrap(), "dW");
    }
}

/// The schedules chosen where they beat the GEMMs stay f32 under autocast: the direct kernels
/// (a 3×3 forward with 6 output channels; this CPU has AVX-512) and pixel taps (2×2 maps over
/// 64 images), bit for bit the f32 results.
#[test]
fn conv2d_direct_and_pixel_tap_schedules_stay_f32_under_autocast() {
    if !bf16_cpu() {
        return;
    }
    let mut rng = Rng::new(4);
    let x = Tensor::randn(&[2, 4, 8, 8], 1.0, DType::F32, &mut rng).unwrap();
    let w = Tensor::randn(&[6, 4, 3, 3], 0.5, DType::F32, &mut rng).unwrap();
    let direct = |bf16| conv_step(&x, &w, (1, 1), bf16, &mut Rng::new(1)).0.to_vec::<f32>().unwrap();
    assert_eq!(direct(true), direct(false), "direct forward");

    let x = Tensor::randn(&[64, 8, 2, 2], 1.0, DType::F32, &mut rng).unwrap();
    let w = Tensor::randn(&[8, 8, 3, 3], 0.5, DType::F32, &mut rng).unwrap();
    let taps = |bf16| {
        let (y, dx, dw, _) = conv_step(&x, &w, (1, 1), bf16, &mut Rng::new(1));
        [y, dx, dw].map(|t| t.to_vec::<f32>().unwrap())
    };
    assert_eq!(taps(true), taps(false), "pixel taps, forward and backward");
}
