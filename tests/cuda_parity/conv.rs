//! Implicit-GEMM convolution (forward, input gradient, weight gradient) against the CPU conv of
//! `simclr::backend::cpu::conv` in f64 on the same inputs (bf16-rounded for the tensor-core
//! kernels). The kernels take NHWC activations and KRSC weights; the CPU reference is NCHW/OIHW,
//! so the test transposes both ways.
//!
//! Cases: every distinct ResNet-18/34/50 layer geometry (7×7/2 stem on RGB, 3×3/1, 3×3/2, 1×1/1,
//! 1×1/2), channel counts scaled down and odd spatial sizes (5, 7) so the emulator stays fast,
//! plus odd shapes: c = 3 and k not a multiple of 8 (the scalar-load kernels), k and c above 64
//! (the 128×128 tiles) and not multiples of the tile, a reduction long enough that the weight
//! gradient splits it over blocks. Tolerances: bf16 outputs are compared at 1 % (one bf16
//! rounding of the output is 0.4 %); f32 weight gradients from bf16 inputs, and every f32-path
//! result, at 1e-4–1e-3 relative to the output scale.

use crate::common::*;
use half::{bf16, f16};
use simclr::backend::cpu::conv::{conv2d_backward_input, conv2d_backward_weight, conv2d_forward, ConvGeometry};
use simclr::backend::cpu::matmul::GemmPrecision;
use simclr::backend::cuda::kernels::conv::{self, ConvElement, ConvEpilogue, ConvShape};
use simclr::backend::cuda::{DeviceBuffer, Gpu};

/// NHWC → NCHW (`dims` = n, h, w, c).
fn nhwc_to_nchw(v: &[f32], (n, h, w, c): (usize, usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for ni in 0..n {
        for hi in 0..h {
            for wi in 0..w {
                for ci in 0..c {
                    out[((ni * c + ci) * h + hi) * w + wi] = v[((ni * h + hi) * w + wi) * c + ci] as f64;
                }
            }
        }
    }
    out
}

/// NCHW → NHWC.
fn nchw_to_nhwc(v: &[f64], (n, h, w, c): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for ni in 0..n {
        for hi in 0..h {
            for wi in 0..w {
                for ci in 0..c {
                    out[((ni * h + hi) * w + wi) * c + ci] = v[((ni * c + ci) * h + hi) * w + wi] as f32;
                }
            }
        }
    }
    out
}

/// The CPU results in the kernels' layouts: y (NHWC), dx (NHWC), dw (KRSC).
struct Reference {
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

fn reference(s: &ConvShape, x: &[f32], w: &[f32], dy: &[f32]) -> Reference {
    let (p, q) = (s.p(), s.q());
    let g = ConvGeometry {
        n: s.n,
        c: s.c,
        h: s.h,
        w: s.w,
        o: s.k,
        kh: s.r,
        kw: s.s,
        sh: s.stride,
        sw: s.stride,
        ph: s.pad,
        pw: s.pad,
        oh: p,
        ow: q,
    };
    // KRSC is OIHW with the channel axis moved last: treat it as NHWC of k "images" of r × s.
    let w_oihw = nhwc_to_nchw(w, (s.k, s.r, s.s, s.c));
    let x_nchw = nhwc_to_nchw(x, (s.n, s.h, s.w, s.c));
    let dy_nchw = nhwc_to_nchw(dy, (s.n, p, q, s.k));
    let y = conv2d_forward::<f64>(&x_nchw, &w_oihw, None, &g, GemmPrecision::Exact);
    let dx = conv2d_backward_input::<f64>(&dy_nchw, &w_oihw, &g, GemmPrecision::Exact);
    let dw = conv2d_backward_weight::<f64>(&x_nchw, &dy_nchw, &g, GemmPrecision::Exact);
    Reference {
        y: nchw_to_nhwc(&y, (s.n, p, q, s.k)),
        dx: nchw_to_nhwc(&dx, (s.n, s.h, s.w, s.c)),
        dw: nchw_to_nhwc(&dw, (s.k, s.r, s.s, s.c)),
    }
}

/// The largest |value|, for tolerances relative to an output's scale.
fn scale_of(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6)
}

/// A storage type the test can convert to and from f32.
trait TestElement: ConvElement {
    fn of(v: f32) -> Self;
    fn f32(self) -> f32;
}
impl TestElement for f32 {
    fn of(v: f32) -> f32 {
        v
    }
    fn f32(self) -> f32 {
        self
    }
}
impl TestElement for bf16 {
    fn of(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
    fn f32(self) -> f32 {
        self.to_f32()
    }
}
impl TestElement for f16 {
    fn of(v: f32) -> f16 {
        f16::from_f32(v)
    }
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

fn upload<T: TestElement>(gpu: &Gpu, v: &[f32]) -> DeviceBuffer<T> {
    gpu.upload(&v.iter().map(|&x| T::of(x)).collect::<Vec<T>>()).unwrap()
}

fn download<T: TestElement>(gpu: &Gpu, b: &DeviceBuffer<T>) -> Vec<f32> {
    gpu.download(b).unwrap().into_iter().map(T::f32).collect()
}

/// Runs all three passes in `T` on random inputs and compares them with the CPU conv.
fn check_passes<T: TestElement>(gpu: &Gpu, s: ConvShape, seed: u64) {
    let what = format!("{s:?} {}", T::SUFFIX);
    let rounded = |v: Vec<f32>| v.into_iter().map(|x| T::of(x).f32()).collect::<Vec<f32>>();
    let x = rounded(uniform(s.input_len(), -1.0, 1.0, seed));
    let w = rounded(uniform(s.weight_len(), -1.0, 1.0, seed + 1));
    let dy = rounded(uniform(s.output_len(), -1.0, 1.0, seed + 2));
    let want = reference(&s, &x, &w, &dy);
    // bf16/f16 outputs carry one rounding of the output; f32 only summation-order error.
    let (rtol, rel_atol) = if T::TENSOR_CORES { (1e-2, 2e-3) } else { (1e-4, 1e-4) };

    let (xd, wd, dyd) = (upload::<T>(gpu, &x), upload::<T>(gpu, &w), upload::<T>(gpu, &dy));
    let mut y = gpu.alloc::<T>(s.output_len()).unwrap();
    conv::conv2d_forward(gpu, &s, &xd, &wd, ConvEpilogue::default(), &mut y).unwrap();
    assert_close(&format!("fprop {what}"), &download(gpu, &y), &want.y, rel_atol * scale_of(&want.y), rtol);

    if !T::TENSOR_CORES || with_dgrad(&s) {
        let mut dx = gpu.alloc::<T>(s.input_len()).unwrap();
        conv::conv2d_backward_input(gpu, &s, &dyd, &wd, &mut dx).unwrap();
        assert_close(&format!("dgrad {what}"), &download(gpu, &dx), &want.dx, rel_atol * scale_of(&want.dx), rtol);
    }

    // dW is f32 whatever T: only summation order differs from the f64 reference.
    let mut dw = gpu.alloc::<f32>(s.weight_len()).unwrap();
    conv::conv2d_backward_weight(gpu, &s, &xd, &dyd, &mut dw).unwrap();
    assert_close(&format!("wgrad {what}"), &gpu.download(&dw).unwrap(), &want.dw, 1e-4 * scale_of(&want.dw), 1e-3);
}

#[allow(clippy::too_many_arguments)]
const fn shape(n: usize, h: usize, w: usize, c: usize, k: usize, r: usize, stride: usize, pad: usize) -> ConvShape {
    ConvShape { n, h, w, c, k, r, s: r, stride, pad }
}

/// Every distinct ResNet-18/34/50 layer geometry, channels scaled down (c a multiple of 8 except
/// the RGB stem) and one image: the emulator runs a 256-thread block at a time, slowly.
const RESNET: &[ConvShape] = &[
    shape(1, 7, 7, 3, 8, 7, 2, 3),   // conv1: 7×7/2 on RGB (scalar-load kernels)
    shape(1, 5, 5, 8, 8, 3, 1, 1),   // 3×3/1 (basic blocks; bottleneck conv2)
    shape(1, 7, 7, 8, 8, 3, 2, 1),   // 3×3/2 (first block of layers 2-4; bottleneck conv2 in v1.5)
    shape(1, 7, 7, 16, 16, 1, 2, 0), // 1×1/2 downsample
    shape(1, 5, 5, 16, 24, 1, 1, 0), // 1×1/1 bottleneck reduce/expand, layer1 downsample of ResNet-50
];

/// Odd shapes: k and c above 64 (128×128 tiles, partly filled); k not a multiple of 8 (scalar
/// gradient kernels) with a 3×1 filter; a reduction long enough (8 k-tiles) that the weight
/// gradient splits it over two blocks, on a rectangular image.
const ODD: &[ConvShape] = &[
    shape(1, 3, 3, 72, 80, 1, 1, 0),
    ConvShape { n: 1, h: 5, w: 5, c: 8, k: 12, r: 3, s: 1, stride: 1, pad: 1 },
    shape(1, 16, 15, 8, 8, 1, 1, 0),
];

/// Which passes a case runs: the stem's input gradient is never needed in training (the input
/// images take no gradient) and its phases are the slowest thing to emulate on tensor cores, so
/// the bf16/f16 stem runs forward and weight gradient only (the scalar input-gradient kernel is
/// covered by k = 12); the f32 path runs all three.
fn with_dgrad(s: &ConvShape) -> bool {
    s.c != 3
}

parity_test!(conv_resnet_bf16, |gpu| {
    for (i, &s) in RESNET.iter().enumerate() {
        check_passes::<bf16>(gpu, s, 100 + 10 * i as u64);
    }
});

parity_test!(conv_odd_shapes_bf16, |gpu| {
    for (i, &s) in ODD.iter().enumerate() {
        check_passes::<bf16>(gpu, s, 300 + 10 * i as u64);
    }
});

parity_test!(conv_f16, |gpu| {
    check_passes::<f16>(gpu, RESNET[1], 400);
});

// The SIMT path has no tile variants: one case per kind of indexing (stem, stride-2 phases, a
// 1×1/2 with empty phases, channels not a multiple of 8) keeps the emulated time down.
parity_test!(conv_f32, |gpu| {
    for (i, s) in [RESNET[0], RESNET[2], RESNET[3], ODD[1]].into_iter().enumerate() {
        check_passes::<f32>(gpu, s, 500 + 10 * i as u64);
    }
});

// The fused epilogue: y = relu(acc · scale[k] + bias[k]), and bias alone.
parity_test!(conv_epilogue, |gpu| {
    let s = RESNET[4];
    let x = round_bf16(&uniform(s.input_len(), -1.0, 1.0, 600));
    let w = round_bf16(&uniform(s.weight_len(), -1.0, 1.0, 601));
    let scale = uniform(s.k, 0.5, 1.5, 602);
    let bias = uniform(s.k, -2.0, 2.0, 603);
    let plain = reference(&s, &x, &w, &vec![0.0; s.output_len()]).y;
    let (sd, bd) = (gpu.upload(&scale).unwrap(), gpu.upload(&bias).unwrap());
    let (xd, wd) = (upload::<bf16>(gpu, &x), upload::<bf16>(gpu, &w));
    for (relu, with_scale) in [(false, false), (true, true)] {
        let ep = ConvEpilogue { scale: with_scale.then_some(&sd), bias: Some(&bd), relu };
        let mut y = gpu.alloc::<bf16>(s.output_len()).unwrap();
        conv::conv2d_forward(gpu, &s, &xd, &wd, ep, &mut y).unwrap();
        let want: Vec<f32> = plain
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let k = i % s.k;
                let v = v * if with_scale { scale[k] } else { 1.0 } + bias[k];
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
            .collect();
        let got = download(gpu, &y);
        assert_close(&format!("epilogue relu={relu} scale={with_scale}"), &got, &want, 2e-3 * scale_of(&want), 1e-2);
    }
});

parity_test!(conv_rejects_bad_arguments, |gpu| {
    let s = RESNET[1];
    let x = gpu.zeros::<bf16>(s.input_len()).unwrap();
    let w = gpu.zeros::<bf16>(s.weight_len()).unwrap();
    let mut y = gpu.zeros::<bf16>(s.output_len()).unwrap();
    let mut short = gpu.zeros::<bf16>(s.output_len() - 1).unwrap();
    let err = conv::conv2d_forward(gpu, &s, &x, &w, ConvEpilogue::default(), &mut short).unwrap_err();
    assert!(err.to_string().contains("y has"), "{err}");
    let too_big = ConvShape { r: 12, s: 12, ..s };
    let err = conv::conv2d_forward(gpu, &too_big, &x, &w, ConvEpilogue::default(), &mut y).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let zero_stride = ConvShape { stride: 0, ..s };
    assert!(conv::conv2d_forward(gpu, &zero_stride, &x, &w, ConvEpilogue::default(), &mut y).is_err());
    let bias = gpu.zeros::<f32>(s.k + 1).unwrap();
    let ep = ConvEpilogue { bias: Some(&bias), ..Default::default() };
    assert!(conv::conv2d_forward(gpu, &s, &x, &w, ep, &mut y).unwrap_err().to_string().contains("bias"));
    let mut dw = gpu.zeros::<f32>(s.weight_len() + 1).unwrap();
    assert!(conv::conv2d_backward_weight(gpu, &s, &x, &y, &mut dw).is_err());
});
