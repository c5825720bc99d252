//! conv2d, pooling and batch norm: forward values and gradients against naive
//! loop references, the running-statistics rules, and errors on bad input.
//!
//! The gradcheck suite proves each backward matches its own forward; these
//! tests pin the forwards themselves to the definitions (and, for conv2d, the
//! gradients too, at sizes that take both of the kernel's schedules).

use simclr::ops::batchnorm::{batch_norm_2d, batch_norm_2d_composed, RunningStats};
use simclr::ops::conv2d::conv2d;
use simclr::ops::pool::{adaptive_avg_pool2d, global_avg_pool2d, max_pool2d, temporal_mean};
use simclr::{DType, Error, Result, Rng, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, DType::F64, &mut Rng::new(seed)).unwrap()
}

fn f64s(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64s(v, shape, DType::F64).unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}, element {i}: {a} vs {b}");
    }
}

fn is_shape_err<T>(r: Result<T>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}
fn is_invalid<T>(r: Result<T>) -> bool {
    matches!(r, Err(Error::InvalidArgument { .. }))
}
fn is_dtype_err<T>(r: Result<T>) -> bool {
    matches!(r, Err(Error::DType { .. }))
}

// ---- conv2d

/// One convolution's sizes, for the naive references.
#[derive(Clone, Copy)]
struct Geo {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    s: (usize, usize),
    p: (usize, usize),
}

impl Geo {
    fn out(&self) -> (usize, usize) {
        ((self.h + 2 * self.p.0 - self.kh) / self.s.0 + 1, (self.w + 2 * self.p.1 - self.kw) / self.s.1 + 1)
    }

    /// Calls `f(x_index, w_index, y_index)` for every multiply-add of the
    /// convolution that lands inside the input (padding contributes 0): the
    /// seven loops of the definition, shared by forward and both gradients.
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = self.out();
        for n in 0..self.n {
            for o in 0..self.o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for c in 0..self.c {
                            for i in 0..self.kh {
                                for j in 0..self.kw {
                                    let iy = (oy * self.s.0 + i) as isize - self.p.0 as isize;
                                    let ix = (ox * self.s.1 + j) as isize - self.p.1 as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= self.h || ix as usize >= self.w {
                                        continue;
                                    }
                                    let xi = ((n * self.c + c) * self.h + iy as usize) * self.w + ix as usize;
                                    let wi = ((o * self.c + c) * self.kh + i) * self.kw + j;
                                    let yi = ((n * self.o + o) * oh + oy) * ow + ox;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn naive_forward(&self, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
        let (oh, ow) = self.out();
        let mut y = vec![0.0; self.n * self.o * oh * ow];
        if let Some(b) = b {
            y.iter_mut().enumerate().for_each(|(k, v)| *v = b[(k / (oh * ow)) % self.o]);
        }
        self.for_each_tap(|xi, wi, yi| y[yi] += x[xi] * w[wi]);
        y
    }

    /// dX, dW, db of Σ y·g, straight from the definition y = Σ x·w + b.
    fn naive_backward(&self, x: &[f64], w: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        self.for_each_tap(|xi, wi, yi| {
            dx[xi] += g[yi] * w[wi];
            dw[wi] += g[yi] * x[xi];
        });
        let (oh, ow) = self.out();
        let mut db = vec![0.0; self.o];
        g.iter().enumerate().for_each(|(k, v)| db[(k / (oh * ow)) % self.o] += v);
        (dx, dw, db)
    }
}

/// Shapes covering both schedules of the CPU kernel (≥ 64 output pixels: one
/// GEMM per image, on one thread per image or all threads on one image;
/// fewer: images grouped into one wide GEMM), strides, padding and
/// non-square kernels.
fn conv_shapes() -> Vec<Geo> {
    vec![
        // large map, one image (all threads on its GEMM)
        Geo { n: 1, c: 3, h: 12, w: 10, o: 4, kh: 3, kw: 3, s: (1, 1), p: (1, 1) },
        // large map, more images than threads (images spread over threads)
        Geo { n: 5, c: 2, h: 11, w: 13, o: 3, kh: 2, kw: 3, s: (1, 1), p: (1, 0) },
        // small map (grouped GEMM), stride 2, padding 1, non-square kernel
        Geo { n: 3, c: 3, h: 7, w: 6, o: 5, kh: 3, kw: 2, s: (2, 2), p: (1, 1) },
        // grouped, uneven stride and padding, kernel wider than tall
        Geo { n: 4, c: 2, h: 5, w: 9, o: 3, kh: 1, kw: 4, s: (1, 3), p: (0, 2) },
        // ResNet stem 7x7/2 pad 3 on an odd-sized frame
        Geo { n: 2, c: 3, h: 13, w: 11, o: 4, kh: 7, kw: 7, s: (2, 2), p: (3, 3) },
        // kernel as large as the padded input: a single output pixel
        Geo { n: 2, c: 2, h: 3, w: 4, o: 2, kh: 5, kw: 4, s: (1, 1), p: (1, 0) },
        // padding wider than the kernel: whole output rows and columns read only padding
        Geo { n: 2, c: 1, h: 2, w: 3, o: 2, kh: 1, kw: 2, s: (2, 3), p: (2, 3) },
        // stride 1, outputs as wide as the input (im2col's shifted-plane path): 3×3 grouped,
        // a wide 1×5 kernel, a tall kernel with more padding than the input has rows
        Geo { n: 3, c: 2, h: 4, w: 3, o: 2, kh: 3, kw: 3, s: (1, 1), p: (1, 1) },
        Geo { n: 2, c: 2, h: 3, w: 6, o: 3, kh: 1, kw: 5, s: (1, 1), p: (0, 2) },
        Geo { n: 2, c: 1, h: 3, w: 4, o: 2, kh: 5, kw: 3, s: (1, 1), p: (3, 1) },
        // ResNet's last stages: 3×3 on 2×2 and 1×1 maps (most taps read padding)
        Geo { n: 2, c: 2, h: 2, w: 2, o: 2, kh: 3, kw: 3, s: (1, 1), p: (1, 1) },
        Geo { n: 3, c: 2, h: 1, w: 1, o: 2, kh: 3, kw: 3, s: (1, 1), p: (1, 1) },
    ]
}

#[test]
fn conv2d_forward_matches_the_seven_loop_definition() {
    for (k, g) in conv_shapes().into_iter().enumerate() {
        let seed = 10 * k as u64;
        let x = randn(&[g.n, g.c, g.h, g.w], seed);
        let w = randn(&[g.o, g.c, g.kh, g.kw], seed + 1);
        let b = randn(&[g.o], seed + 2);
        let (xv, wv, bv) = (x.to_f64_vec(), w.to_f64_vec(), b.to_f64_vec());
        let (oh, ow) = g.out();

        let y = conv2d(&x, &w, Some(&b), g.s, g.p).unwrap();
        assert_eq!(y.shape(), [g.n, g.o, oh, ow]);
        assert_close(&y.to_f64_vec(), &g.naive_forward(&xv, &wv, Some(&bv)), 1e-12, "f64 with bias");

        let y = conv2d(&x, &w, None, g.s, g.p).unwrap();
        assert_close(&y.to_f64_vec(), &g.naive_forward(&xv, &wv, None), 1e-12, "f64 without bias");

        let to32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let y32 = conv2d(&to32(&x), &to32(&w), Some(&to32(&b)), g.s, g.p).unwrap();
        assert_eq!(y32.dtype(), DType::F32);
        assert_close(&y32.to_f64_vec(), &g.naive_forward(&xv, &wv, Some(&bv)), 1e-4, "f32");
    }
}

#[test]
fn conv2d_gradients_match_the_definition() {
    for (k, g) in conv_shapes().into_iter().enumerate() {
        let seed = 100 + 10 * k as u64;
        let (oh, ow) = g.out();
        let x = randn(&[g.n, g.c, g.h, g.w], seed).requires_grad().unwrap();
        let w = randn(&[g.o, g.c, g.kh, g.kw], seed + 1).requires_grad().unwrap();
        let b = randn(&[g.o], seed + 2).requires_grad().unwrap();
        let up = randn(&[g.n, g.o, oh, ow], seed + 3);
        // loss = Σ y·up, so dL/dy = up
        conv2d(&x, &w, Some(&b), g.s, g.p).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        let (dx, dw, db) = g.naive_backward(&x.to_f64_vec(), &w.to_f64_vec(), &up.to_f64_vec());
        assert_close(&x.grad().unwrap().to_f64_vec(), &dx, 1e-12, "dx");
        assert_close(&w.grad().unwrap().to_f64_vec(), &dw, 1e-12, "dw");
        assert_close(&b.grad().unwrap().to_f64_vec(), &db, 1e-12, "db");

        // Input that is data (the first layer): dX is skipped, dW is unchanged.
        let w2 = w.detach().requires_grad().unwrap();
        conv2d(&x.detach(), &w2, None, g.s, g.p).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(&w2.grad().unwrap().to_f64_vec(), &dw, 1e-12, "dw, untracked input");

        // Frozen weight: only the input's gradient.
        let x2 = x.detach().requires_grad().unwrap();
        conv2d(&x2, &w.detach(), None, g.s, g.p).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(&x2.grad().unwrap().to_f64_vec(), &dx, 1e-12, "dx, frozen weight");
    }
}

#[test]
fn conv2d_f32_gradients_agree_with_f64() {
    let g = Geo { n: 3, c: 4, h: 9, w: 9, o: 5, kh: 3, kw: 3, s: (1, 1), p: (1, 1) };
    let (oh, ow) = g.out();
    let (x, w, up) = (randn(&[g.n, g.c, g.h, g.w], 7), randn(&[g.o, g.c, 3, 3], 8), randn(&[g.n, g.o, oh, ow], 9));
    let (dx, dw, _) = g.naive_backward(&x.to_f64_vec(), &w.to_f64_vec(), &up.to_f64_vec());
    let to32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let (x32, w32) = (to32(&x).requires_grad().unwrap(), to32(&w).requires_grad().unwrap());
    let y = conv2d(&x32, &w32, None, g.s, g.p).unwrap();
    y.mul(&to32(&up)).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x32.grad().unwrap().dtype(), DType::F32);
    assert_close(&x32.grad().unwrap().to_f64_vec(), &dx, 1e-4, "f32 dx");
    assert_close(&w32.grad().unwrap().to_f64_vec(), &dw, 1e-4, "f32 dw");
}

#[test]
fn conv2d_reads_strided_views_by_their_logical_layout() {
    // [N, H, W, C] storage permuted to an NCHW view: not contiguous.
    let nhwc = randn(&[3, 6, 5, 4], 1);
    let x = nhwc.permute(&[0, 3, 1, 2]).unwrap();
    assert!(!x.is_contiguous());
    // A transposed weight view too: [O, C, kw, kh] storage → [O, C, kh, kw].
    let w = randn(&[2, 4, 3, 2], 2).transpose(2, 3).unwrap();
    let want = conv2d(&x.contiguous().unwrap(), &w.contiguous().unwrap(), None, (2, 1), (1, 1)).unwrap();
    let got = conv2d(&x, &w, None, (2, 1), (1, 1)).unwrap();
    assert_eq!(got.to_f64_vec(), want.to_f64_vec());
}

#[test]
fn conv2d_rejects_bad_input() {
    let x = randn(&[2, 3, 5, 5], 1);
    let w = randn(&[4, 3, 3, 3], 2);
    assert!(is_shape_err(conv2d(&randn(&[3, 5, 5], 1), &w, None, (1, 1), (0, 0))), "input rank 3");
    assert!(is_shape_err(conv2d(&x, &randn(&[4, 3, 3], 2), None, (1, 1), (0, 0))), "weight rank 3");
    assert!(is_shape_err(conv2d(&x, &randn(&[4, 2, 3, 3], 2), None, (1, 1), (0, 0))), "channel mismatch");
    assert!(is_shape_err(conv2d(&x, &randn(&[4, 3, 6, 3], 2), None, (1, 1), (0, 0))), "kernel taller than input");
    assert!(is_shape_err(conv2d(&x, &randn(&[4, 3, 3, 8], 2), None, (1, 1), (1, 1))), "kernel wider than padded");
    assert!(conv2d(&x, &randn(&[4, 3, 7, 7], 2), None, (1, 1), (1, 1)).is_ok(), "kernel = padded input fits");
    assert!(is_invalid(conv2d(&x, &w, None, (0, 1), (0, 0))), "stride 0");
    assert!(is_invalid(conv2d(&x, &w, None, (1, 0), (0, 0))), "stride 0");
    assert!(is_dtype_err(conv2d(&x, &w.to_dtype(DType::F32).unwrap(), None, (1, 1), (0, 0))), "weight dtype");
    let b = randn(&[4], 3);
    assert!(is_shape_err(conv2d(&x, &w, Some(&randn(&[3], 3)), (1, 1), (0, 0))), "bias length");
    assert!(is_shape_err(conv2d(&x, &w, Some(&randn(&[1, 4], 3)), (1, 1), (0, 0))), "bias rank");
    assert!(is_dtype_err(conv2d(&x, &w, Some(&b.to_dtype(DType::F32).unwrap()), (1, 1), (0, 0))), "bias dtype");
    let xi = Tensor::zeros(&[2, 3, 5, 5], DType::I64).unwrap();
    assert!(is_dtype_err(conv2d(&xi, &Tensor::zeros(&[4, 3, 3, 3], DType::I64).unwrap(), None, (1, 1), (0, 0))));
    // Empty channels or feature maps would leave nothing to convolve.
    let zeros = |s: &[usize]| Tensor::zeros(s, DType::F64).unwrap();
    assert!(is_shape_err(conv2d(&zeros(&[2, 0, 5, 5]), &zeros(&[4, 0, 3, 3]), None, (1, 1), (1, 1))), "C = 0");
    assert!(is_shape_err(conv2d(&x, &zeros(&[0, 3, 3, 3]), None, (1, 1), (1, 1))), "O = 0");
    assert!(is_shape_err(conv2d(&zeros(&[2, 3, 0, 5]), &zeros(&[4, 3, 1, 1]), None, (1, 1), (1, 1))), "H = 0");
    assert!(is_shape_err(conv2d(&x, &zeros(&[4, 3, 0, 3]), None, (1, 1), (1, 1))), "kh = 0");
}

#[test]
fn conv2d_of_an_empty_batch_is_empty() {
    let x = Tensor::zeros(&[0, 3, 6, 6], DType::F64).unwrap().requires_grad().unwrap();
    let w = randn(&[4, 3, 3, 3], 1).requires_grad().unwrap();
    let y = conv2d(&x, &w, None, (2, 2), (1, 1)).unwrap();
    assert_eq!(y.shape(), [0, 4, 3, 3]);
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_f64_vec(), vec![0.0; 4 * 3 * 9]);
}

// ---- pooling

#[test]
fn max_pool2d_values_and_padding() {
    // 0..16 in a 4x4 plane.
    let x = Tensor::arange(16, DType::F64).unwrap().reshape(&[1, 1, 4, 4]).unwrap();
    assert_eq!(max_pool2d(&x, (2, 2), (2, 2), (0, 0)).unwrap().to_f64_vec(), [5.0, 7.0, 13.0, 15.0]);
    // 3x3 stride 1: each window's bottom-right corner.
    assert_eq!(max_pool2d(&x, (3, 3), (1, 1), (0, 0)).unwrap().to_f64_vec(), [10.0, 11.0, 14.0, 15.0]);
    // Non-square window and stride: 1x3 every (2, 1) → rows 0 and 2.
    assert_eq!(max_pool2d(&x, (1, 3), (2, 1), (0, 0)).unwrap().to_f64_vec(), [2.0, 3.0, 10.0, 11.0]);
    // Padding is −∞: on all-negative input the padded border never wins.
    let neg = x.add_scalar(1.0).unwrap().neg().unwrap(); // −1..−16
    let y = max_pool2d(&neg, (3, 3), (2, 2), (1, 1)).unwrap();
    assert_eq!(y.shape(), [1, 1, 2, 2]);
    assert_eq!(y.to_f64_vec(), [-1.0, -2.0, -5.0, -6.0]);
    // Odd input with a 2x2/2 window drops the last row and column, like PyTorch.
    let odd = Tensor::arange(25, DType::F32).unwrap().reshape(&[1, 1, 5, 5]).unwrap();
    let y = max_pool2d(&odd, (2, 2), (2, 2), (0, 0)).unwrap();
    assert_eq!((y.shape(), y.dtype()), (&[1usize, 1, 2, 2][..], DType::F32));
    assert_eq!(y.to_f64_vec(), [6.0, 8.0, 16.0, 18.0]);
}

#[test]
fn max_pool2d_routes_each_gradient_to_its_window_maximum() {
    // One plane; the maximum 9 sits where the two 2x2/stride-1 windows of row 0 overlap.
    let x = f64s(&[1.0, 9.0, 2.0, 3.0, 4.0, 5.0], &[1, 1, 2, 3]).requires_grad().unwrap();
    let y = max_pool2d(&x, (2, 2), (1, 1), (0, 0)).unwrap();
    assert_eq!(y.to_f64_vec(), [9.0, 9.0]);
    y.mul(&f64s(&[10.0, 100.0], &[1, 1, 1, 2])).unwrap().sum_all().unwrap().backward().unwrap();
    // Both windows chose the 9, so its gradient is the sum; everything else gets 0.
    assert_eq!(x.grad().unwrap().to_f64_vec(), [0.0, 110.0, 0.0, 0.0, 0.0, 0.0]);

    // Several planes, padding: compare with a naive argmax routing.
    let (n, c, h, w) = (2, 3, 5, 4);
    let mut vals: Vec<f64> = (0..n * c * h * w).map(|i| i as f64).collect();
    Rng::new(5).shuffle(&mut vals); // distinct values: no ties
    let x = f64s(&vals, &[n, c, h, w]).requires_grad().unwrap();
    let y = max_pool2d(&x, (3, 3), (2, 2), (1, 1)).unwrap();
    let (oh, ow) = (3, 2);
    assert_eq!(y.shape(), [n, c, oh, ow]);
    let up = randn(&[n, c, oh, ow], 6);
    y.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
    let (upv, yv) = (up.to_f64_vec(), y.to_f64_vec());
    let mut want_y = vec![f64::NEG_INFINITY; n * c * oh * ow];
    let mut want_dx = vec![0.0; vals.len()];
    for pl in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = (f64::NEG_INFINITY, 0);
                for iy in (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(h) {
                    for ix in (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(w) {
                        let i = (pl * h + iy) * w + ix;
                        if vals[i] > best.0 {
                            best = (vals[i], i);
                        }
                    }
                }
                let o = (pl * oh + oy) * ow + ox;
                want_y[o] = best.0;
                want_dx[best.1] += upv[o];
            }
        }
    }
    assert_eq!(yv, want_y);
    assert_close(&x.grad().unwrap().to_f64_vec(), &want_dx, 1e-15, "max_pool2d dx");
}

#[test]
fn max_pool2d_rejects_bad_input() {
    let x = randn(&[2, 3, 5, 5], 1);
    assert!(is_shape_err(max_pool2d(&randn(&[3, 5, 5], 1), (2, 2), (2, 2), (0, 0))), "rank 3");
    assert!(is_invalid(max_pool2d(&x, (0, 2), (1, 1), (0, 0))), "kernel 0");
    assert!(is_invalid(max_pool2d(&x, (2, 2), (2, 0), (0, 0))), "stride 0");
    assert!(is_invalid(max_pool2d(&x, (3, 3), (1, 1), (2, 1))), "padding over half the kernel");
    assert!(is_shape_err(max_pool2d(&x, (6, 2), (1, 1), (0, 0))), "kernel taller than input");
    assert!(is_shape_err(max_pool2d(&x, (2, 8), (1, 1), (0, 1))), "kernel wider than padded input");
    assert!(is_dtype_err(max_pool2d(&Tensor::zeros(&[1, 1, 4, 4], DType::U8).unwrap(), (2, 2), (2, 2), (0, 0))));
    // An empty plane (padding alone would fill the window) is an error, not a panic.
    let empty = Tensor::zeros(&[1, 1, 0, 4], DType::F64).unwrap();
    assert!(is_shape_err(max_pool2d(&empty, (2, 2), (1, 1), (1, 1))), "H = 0");
}

/// PyTorch's adaptive pooling, written out: bin i of `out` over `len` covers
/// floor(i·len/out) .. ceil((i+1)·len/out).
fn naive_adaptive_avg(x: &[f64], planes: usize, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f64> {
    let bin = |i: usize, len: usize, out: usize| {
        ((i * len) as f64 / out as f64).floor() as usize..(((i + 1) * len) as f64 / out as f64).ceil() as usize
    };
    let mut y = Vec::new();
    for pl in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let (rows, cols) = (bin(oy, h, oh), bin(ox, w, ow));
                let count = (rows.len() * cols.len()) as f64;
                let s: f64 = rows.flat_map(|iy| cols.clone().map(move |ix| x[(pl * h + iy) * w + ix])).sum();
                y.push(s / count);
            }
        }
    }
    y
}

#[test]
fn adaptive_avg_pool2d_uses_pytorch_bins() {
    // 7x5 → 3x2: rows [0,3) [2,5) [4,7), columns [0,3) [2,5) — bins overlap.
    let x = Tensor::arange(35, DType::F64).unwrap().reshape(&[1, 1, 7, 5]).unwrap();
    let y = adaptive_avg_pool2d(&x, (3, 2)).unwrap();
    assert_eq!(y.shape(), [1, 1, 3, 2]);
    // Mean of an arithmetic grid = value at its centre: row centre r, column centre c → 5r + c.
    assert_close(&y.to_f64_vec(), &[6.0, 8.0, 16.0, 18.0, 26.0, 28.0], 1e-12, "7x5 -> 3x2");

    for (shape, out) in [([2, 3, 7, 5], (3, 2)), ([1, 2, 6, 6], (4, 4)), ([1, 1, 2, 3], (3, 5)), ([2, 2, 5, 4], (5, 4))]
    {
        let x = randn(&shape, 3);
        let y = adaptive_avg_pool2d(&x, out).unwrap();
        let want = naive_adaptive_avg(&x.to_f64_vec(), shape[0] * shape[1], (shape[2], shape[3]), out);
        assert_close(&y.to_f64_vec(), &want, 1e-12, "adaptive vs naive");
    }
    // out = in is the identity.
    let x = randn(&[2, 2, 5, 4], 4);
    assert_close(&adaptive_avg_pool2d(&x, (5, 4)).unwrap().to_f64_vec(), &x.to_f64_vec(), 1e-15, "identity");
}

#[test]
fn adaptive_avg_pool2d_spreads_gradient_over_each_bin() {
    // 1x3 → 1x2: bins [0,2) and [1,3); the middle pixel is in both.
    let x = f64s(&[1.0, 2.0, 3.0], &[1, 1, 1, 3]).requires_grad().unwrap();
    let y = adaptive_avg_pool2d(&x, (1, 2)).unwrap();
    assert_eq!(y.to_f64_vec(), [1.5, 2.5]);
    y.mul(&f64s(&[2.0, 4.0], &[1, 1, 1, 2])).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_f64_vec(), [1.0, 3.0, 2.0]);
}

#[test]
fn global_avg_pool2d_and_temporal_mean_values() {
    let x = randn(&[3, 4, 5, 2], 1);
    let y = global_avg_pool2d(&x).unwrap();
    assert_eq!(y.shape(), [3, 4]);
    assert_close(&y.to_f64_vec(), &x.mean(&[2, 3], false).unwrap().to_f64_vec(), 1e-12, "global mean");

    // Two clips of three frames of 2-vectors.
    let clips = f64s(&[1.0, 2.0, 3.0, 4.0, 5.0, 9.0, /* clip 2 */ 0.0, -3.0, 6.0, 3.0, 0.0, 0.0], &[2, 3, 2]);
    let m = temporal_mean(&clips).unwrap();
    assert_eq!(m.shape(), [2, 2]);
    assert_close(&m.to_f64_vec(), &[3.0, 5.0, 2.0, 0.0], 1e-15, "temporal mean");
    // Any trailing shape: [B, T, C, H, W] → [B, C, H, W].
    let frames = randn(&[2, 4, 3, 2, 2], 2);
    assert_eq!(temporal_mean(&frames).unwrap().shape(), [2, 3, 2, 2]);
    // The gradient is split evenly over the frames.
    let t = randn(&[2, 4, 3], 3).requires_grad().unwrap();
    temporal_mean(&t).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(t.grad().unwrap().to_f64_vec(), vec![0.25; 24]);
}

#[test]
fn pooling_rejects_bad_input() {
    let x = randn(&[2, 3, 5, 5], 1);
    assert!(is_shape_err(adaptive_avg_pool2d(&randn(&[3, 5, 5], 1), (2, 2))), "rank 3");
    assert!(is_shape_err(adaptive_avg_pool2d(&x, (0, 1))), "zero output");
    assert!(is_shape_err(adaptive_avg_pool2d(&Tensor::zeros(&[1, 1, 0, 3], DType::F64).unwrap(), (1, 1))));
    assert!(is_dtype_err(adaptive_avg_pool2d(&Tensor::zeros(&[1, 1, 2, 2], DType::I64).unwrap(), (1, 1))));
    assert!(is_shape_err(global_avg_pool2d(&randn(&[2, 3], 1))), "rank 2");
    assert!(is_shape_err(temporal_mean(&randn(&[4], 1))), "no frame axis");
    assert!(is_shape_err(temporal_mean(&Tensor::zeros(&[2, 0, 3], DType::F64).unwrap())), "zero frames");
}

// ---- batch norm

/// Channel 0 holds 1..4, channel 1 holds 2·(1..4) (N = 2, H = 1, W = 2).
fn bn_input() -> Tensor {
    f64s(&[1.0, 2.0, 2.0, 4.0, 3.0, 4.0, 6.0, 8.0], &[2, 2, 1, 2])
}

#[test]
fn batch_norm_training_normalises_and_updates_running_stats() {
    let x = bn_input();
    let (gamma, beta) = (f64s(&[2.0, 0.5], &[2]), f64s(&[1.0, -1.0], &[2]));
    let mut stats = RunningStats::new(2, DType::F64).unwrap();
    assert_eq!((stats.mean.to_f64_vec(), stats.var.to_f64_vec(), stats.momentum), (vec![0.0; 2], vec![1.0; 2], 0.1));
    let y = batch_norm_2d(&x, Some(&gamma), Some(&beta), &mut stats, true, 1e-5).unwrap();
    // Batch mean 2.5 and 5; biased variance 1.25 and 5 normalise; unbiased 5/3 and 20/3 update.
    let (r0, r1) = (1.0 / (1.25f64 + 1e-5).sqrt(), 1.0 / (5.0f64 + 1e-5).sqrt());
    let want: Vec<f64> = [(1.0, 0), (2.0, 0), (2.0, 1), (4.0, 1), (3.0, 0), (4.0, 0), (6.0, 1), (8.0, 1)]
        .iter()
        .map(|&(v, ch)| if ch == 0 { 2.0 * (v - 2.5) * r0 + 1.0 } else { 0.5 * (v - 5.0) * r1 - 1.0 })
        .collect();
    assert_close(&y.to_f64_vec(), &want, 1e-12, "training output");
    assert_close(&stats.mean.to_f64_vec(), &[0.25, 0.5], 1e-12, "running mean");
    assert_close(&stats.var.to_f64_vec(), &[0.9 + 0.5 / 3.0, 0.9 + 2.0 / 3.0], 1e-12, "running var (unbiased)");
    assert!(!stats.mean.is_tracked() && !stats.var.is_tracked());

    // A second step with another momentum compounds: running = (1 − m)·running + m·batch.
    stats.momentum = 0.5;
    batch_norm_2d(&x.mul_scalar(2.0).unwrap(), None, None, &mut stats, true, 1e-5).unwrap();
    assert_close(&stats.mean.to_f64_vec(), &[0.5 * 0.25 + 0.5 * 5.0, 0.5 * 0.5 + 0.5 * 10.0], 1e-12, "step 2 mean");
    let var1 = [0.9 + 0.5 / 3.0, 0.9 + 2.0 / 3.0];
    let want_var = [0.5 * var1[0] + 0.5 * 20.0 / 3.0, 0.5 * var1[1] + 0.5 * 80.0 / 3.0];
    assert_close(&stats.var.to_f64_vec(), &want_var, 1e-12, "step 2 var");

    // Without affine, each channel comes out with mean 0 and (biased) variance ≈ 1.
    let x = randn(&[4, 3, 5, 6], 2).mul_scalar(3.0).unwrap().add_scalar(7.0).unwrap();
    let mut stats = RunningStats::new(3, DType::F64).unwrap();
    let y = batch_norm_2d(&x, None, None, &mut stats, true, 1e-5).unwrap();
    let (mean, var) = (y.mean(&[0, 2, 3], false).unwrap(), y.var(&[0, 2, 3], 0, false).unwrap());
    assert!(mean.to_f64_vec().iter().all(|m| m.abs() < 1e-12));
    assert!(var.to_f64_vec().iter().all(|v| (v - 1.0).abs() < 1e-5));
}

#[test]
fn batch_norm_eval_uses_running_stats_and_leaves_them_alone() {
    let x = bn_input().requires_grad().unwrap();
    let gamma = f64s(&[2.0, 0.5], &[2]).requires_grad().unwrap();
    let beta = f64s(&[1.0, -1.0], &[2]).requires_grad().unwrap();
    let mut stats = RunningStats::new(2, DType::F64).unwrap();
    stats.mean = f64s(&[1.0, -2.0], &[2]);
    stats.var = f64s(&[4.0, 0.25], &[2]);
    let y = batch_norm_2d(&x, Some(&gamma), Some(&beta), &mut stats, false, 0.0625).unwrap();
    assert_eq!((stats.mean.to_f64_vec(), stats.var.to_f64_vec()), (vec![1.0, -2.0], vec![4.0, 0.25]));
    // 1/√(var + eps) = 1/√4.0625 and 1/√0.3125.
    let (r0, r1) = (1.0 / 4.0625f64.sqrt(), 1.0 / 0.3125f64.sqrt());
    let xv = bn_input().to_f64_vec();
    let ch = |k: usize| (k / 2) % 2;
    let want: Vec<f64> = (0..8)
        .map(|k| if ch(k) == 0 { 2.0 * (xv[k] - 1.0) * r0 + 1.0 } else { 0.5 * (xv[k] + 2.0) * r1 - 1.0 })
        .collect();
    assert_close(&y.to_f64_vec(), &want, 1e-12, "eval output");

    // Backward in eval mode is the per-channel affine map: dx = g·γ·r.
    let up = randn(&[2, 2, 1, 2], 3);
    y.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
    let g = up.to_f64_vec();
    let want_dx: Vec<f64> = (0..8).map(|k| g[k] * if ch(k) == 0 { 2.0 * r0 } else { 0.5 * r1 }).collect();
    assert_close(&x.grad().unwrap().to_f64_vec(), &want_dx, 1e-12, "eval dx");
    let sum_ch = |f: &dyn Fn(usize) -> f64, c: usize| (0..8).filter(|&k| ch(k) == c).map(f).sum::<f64>();
    let xhat = |k: usize| if ch(k) == 0 { (xv[k] - 1.0) * r0 } else { (xv[k] + 2.0) * r1 };
    let dgamma = [sum_ch(&|k| g[k] * xhat(k), 0), sum_ch(&|k| g[k] * xhat(k), 1)];
    assert_close(&gamma.grad().unwrap().to_f64_vec(), &dgamma, 1e-12, "eval dgamma");
    assert_close(&beta.grad().unwrap().to_f64_vec(), &[sum_ch(&|k| g[k], 0), sum_ch(&|k| g[k], 1)], 1e-12, "dbeta");
}

#[test]
fn batch_norm_training_gradient_sums_to_zero_per_channel() {
    // Shifting a whole channel changes nothing after normalisation, so the
    // input gradient of any loss sums to 0 over each channel; and with eps → 0
    // scaling a channel changes nothing either, so Σ dx·(x − μ) = 0 as well.
    let x = randn(&[3, 2, 4, 3], 1).requires_grad().unwrap();
    let gamma = f64s(&[1.5, -0.7], &[2]).requires_grad().unwrap();
    let mut stats = RunningStats::new(2, DType::F64).unwrap();
    let y = batch_norm_2d(&x, Some(&gamma), None, &mut stats, true, 1e-14).unwrap();
    y.mul(&randn(&[3, 2, 4, 3], 2)).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = x.grad().unwrap();
    assert!(dx.sum(&[0, 2, 3], false).unwrap().to_f64_vec().iter().all(|s| s.abs() < 1e-12));
    let centred = x.detach().sub(&x.detach().mean(&[0, 2, 3], true).unwrap()).unwrap();
    let dot = dx.mul(&centred).unwrap().sum(&[0, 2, 3], false).unwrap().to_f64_vec();
    assert!(dot.iter().all(|s| s.abs() < 1e-10), "{dot:?}");
    assert_eq!(gamma.grad().unwrap().shape(), [2]);
}

/// The fused CPU batch norm against its definition as tensor ops (`batch_norm_2d_composed`):
/// output, running statistics and every gradient, in f64 and f32, training and eval, with and
/// without the affine parameters, on 1×1 maps and on a map large enough to run threaded.
#[test]
fn fused_batch_norm_matches_the_composed_definition() {
    type Bn = fn(&Tensor, Option<&Tensor>, Option<&Tensor>, &mut RunningStats, bool, f64) -> Result<Tensor>;
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
        // A mean far from zero (1e6, σ = 3, f64): rounding in μ then moves x̂ by ~ε·|μ|/σ in
        // any implementation (the tolerance grows with it), but a variance that cancelled
        // (E[x²] − μ² style) would be off by ~ε·μ²/σ², far more.
        let offsets: &[f64] = if dtype == DType::F64 { &[2.0, 1e6] } else { &[2.0] };
        for (shape, &offset) in
            [[5, 3, 1, 1], [3, 4, 5, 2], [8, 16, 12, 12]].iter().flat_map(|s| offsets.iter().map(move |o| (*s, o)))
        {
            let c = shape[1];
            for (training, affine) in [(true, true), (true, false), (false, true)] {
                let run = |bn: Bn| {
                    let x = randn(&shape, 7).mul_scalar(3.0).unwrap().add_scalar(offset).unwrap();
                    let x = x.to_dtype(dtype).unwrap().requires_grad().unwrap();
                    let param = |seed| randn(&[c], seed).to_dtype(dtype).unwrap().requires_grad().unwrap();
                    let (gamma, beta) = (param(8), param(9));
                    let mut stats = RunningStats::new(c, dtype).unwrap();
                    stats.mean = randn(&[c], 10).to_dtype(dtype).unwrap();
                    stats.var = randn(&[c], 11).abs().unwrap().add_scalar(0.5).unwrap().to_dtype(dtype).unwrap();
                    let (w, b) = if affine { (Some(&gamma), Some(&beta)) } else { (None, None) };
                    let y = bn(&x, w, b, &mut stats, training, 1e-5).unwrap();
                    let up = randn(&shape, 12).to_dtype(dtype).unwrap();
                    y.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
                    let mut out = vec![y.to_f64_vec(), x.grad().unwrap().to_f64_vec()];
                    out.extend([stats.mean.to_f64_vec(), stats.var.to_f64_vec()]);
                    if affine {
                        out.extend([gamma.grad().unwrap().to_f64_vec(), beta.grad().unwrap().to_f64_vec()]);
                    }
                    out
                };
                let (fused, composed) = (run(batch_norm_2d), run(batch_norm_2d_composed));
                let names = ["output", "dx", "running mean", "running var", "dgamma", "dbeta"];
                for ((got, want), name) in fused.iter().zip(&composed).zip(names) {
                    let what = format!("{dtype} {shape:?} + {offset} training {training} affine {affine}: {name}");
                    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    assert_close(got, want, tol * scale * (1.0 + offset / 3.0), &what);
                }
            }
        }
    }
}

/// Empty maps or an empty batch in eval mode: an empty output and empty gradients, no panic.
#[test]
fn batch_norm_in_eval_mode_takes_empty_inputs() {
    for shape in [[2, 3, 0, 4], [0, 3, 2, 2]] {
        let x = Tensor::zeros(&shape, DType::F64).unwrap().requires_grad().unwrap();
        let gamma = f64s(&[1.0, 2.0, 3.0], &[3]).requires_grad().unwrap();
        let mut stats = RunningStats::new(3, DType::F64).unwrap();
        let y = batch_norm_2d(&x, Some(&gamma), None, &mut stats, false, 1e-5).unwrap();
        assert_eq!(y.shape(), shape);
        y.sum_all().unwrap().backward().unwrap();
        assert_eq!(x.grad().unwrap().shape(), shape);
        assert_eq!(gamma.grad().unwrap().to_f64_vec(), vec![0.0; 3]);
    }
}

#[test]
fn batch_norm_rejects_bad_input() {
    let x = randn(&[2, 3, 2, 2], 1);
    let mut stats = RunningStats::new(3, DType::F64).unwrap();
    let c3 = randn(&[3], 2);
    assert!(is_shape_err(batch_norm_2d(&randn(&[2, 3, 4], 1), None, None, &mut stats, true, 1e-5)), "rank 3");
    let mut stats4 = RunningStats::new(4, DType::F64).unwrap();
    assert!(is_shape_err(batch_norm_2d(&x, None, None, &mut stats4, true, 1e-5)), "running stats size");
    assert!(is_shape_err(batch_norm_2d(&x, Some(&randn(&[2], 2)), None, &mut stats, true, 1e-5)), "weight size");
    assert!(is_shape_err(batch_norm_2d(&x, Some(&c3), Some(&randn(&[3, 1], 2)), &mut stats, true, 1e-5)), "bias");
    let c3_32 = c3.to_dtype(DType::F32).unwrap();
    assert!(is_dtype_err(batch_norm_2d(&x, Some(&c3_32), None, &mut stats, true, 1e-5)), "weight dtype");
    let mut stats32 = RunningStats::new(3, DType::F32).unwrap();
    assert!(is_dtype_err(batch_norm_2d(&x, None, None, &mut stats32, true, 1e-5)), "running stats dtype");
    assert!(is_invalid(batch_norm_2d(&x, None, None, &mut stats, true, 0.0)), "eps 0");
    assert!(is_invalid(batch_norm_2d(&x, None, None, &mut stats, true, f64::NAN)), "eps NaN");
    // One value per channel has no variance to train with (eval is fine).
    let single = randn(&[1, 3, 1, 1], 3);
    assert!(is_shape_err(batch_norm_2d(&single, None, None, &mut stats, true, 1e-5)));
    assert!(batch_norm_2d(&single, None, None, &mut stats, false, 1e-5).is_ok());
    // A failed call leaves the running statistics untouched.
    assert_eq!((stats.mean.to_f64_vec(), stats.var.to_f64_vec()), (vec![0.0; 3], vec![1.0; 3]));
    let xi = Tensor::zeros(&[2, 3, 2, 2], DType::I64).unwrap();
    let mut stats_i = RunningStats { mean: Tensor::zeros(&[3], DType::I64).unwrap(), ..stats };
    stats_i.var = Tensor::ones(&[3], DType::I64).unwrap();
    assert!(is_dtype_err(batch_norm_2d(&xi, None, None, &mut stats_i, true, 1e-5)), "integer input");
}
