//! NHWC max pooling and global average pooling (forward and backward) against
//! `simclr::ops::pool` (NCHW, f64, gradients from its autograd), f32 and bf16: ResNet's 3×3/2 pad-1
//! max pool on odd and even sizes, a non-overlapping and an unpadded window, and the global pool.
//! Max pooling selects and routes values, so f32 must match exactly (the backward sums at most a
//! few values in a fixed order) and bf16 up to one output rounding.

use crate::common::*;
use half::bf16;
use simclr::backend::cuda::kernels::pool::{self, MaxPoolShape};
use simclr::backend::cuda::kernels::KernelFloat;
use simclr::backend::cuda::Gpu;
use simclr::ops::pool::{global_avg_pool2d, max_pool2d};
use simclr::Tensor;

fn nhwc_to_nchw(v: &[f32], (_n, h, w, c): (usize, usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for (i, &x) in v.iter().enumerate() {
        let (ci, rest) = (i % c, i / c);
        let (wi, rest) = (rest % w, rest / w);
        let (hi, ni) = (rest % h, rest / h);
        out[((ni * c + ci) * h + hi) * w + wi] = x as f64;
    }
    out
}

fn nchw_to_nhwc(v: &[f64], (_n, h, w, c): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for (i, o) in out.iter_mut().enumerate() {
        let (ci, rest) = (i % c, i / c);
        let (wi, rest) = (rest % w, rest / w);
        let (hi, ni) = (rest % h, rest / h);
        *o = v[((ni * c + ci) * h + hi) * w + wi] as f32;
    }
    out
}

fn to_f32(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

/// A pooled storage type the test converts to and from f32.
trait PoolElement: KernelFloat {
    fn of(v: f32) -> Self;
    fn f32(self) -> f32;
}
impl PoolElement for f32 {
    fn of(v: f32) -> f32 {
        v
    }
    fn f32(self) -> f32 {
        self
    }
}
impl PoolElement for bf16 {
    fn of(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

fn round<T: PoolElement>(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| T::of(x).f32()).collect()
}

fn upload<T: PoolElement>(gpu: &Gpu, v: &[f32]) -> simclr::backend::cuda::DeviceBuffer<T> {
    gpu.upload(&v.iter().map(|&x| T::of(x)).collect::<Vec<T>>()).unwrap()
}

fn download<T: PoolElement>(gpu: &Gpu, b: &simclr::backend::cuda::DeviceBuffer<T>) -> Vec<f32> {
    gpu.download(b).unwrap().into_iter().map(T::f32).collect()
}

fn check_max_pool<T: PoolElement>(gpu: &Gpu, s: MaxPoolShape, seed: u64) {
    let (oh, ow) = (s.oh(), s.ow());
    let x = round::<T>(uniform(s.input_len(), -2.0, 2.0, seed));
    let dy = round::<T>(normal(s.output_len(), 1.0, seed + 1));
    let xt = Tensor::from_vec(nhwc_to_nchw(&x, (s.n, s.h, s.w, s.c)), &[s.n, s.c, s.h, s.w])
        .unwrap()
        .requires_grad()
        .unwrap();
    let y = max_pool2d(&xt, (s.kh, s.kw), (s.stride, s.stride), (s.pad, s.pad)).unwrap();
    let dyt = Tensor::from_vec(nhwc_to_nchw(&dy, (s.n, oh, ow, s.c)), &[s.n, s.c, oh, ow]).unwrap();
    y.mul(&dyt).unwrap().sum_all().unwrap().backward().unwrap();
    let want_y = nchw_to_nhwc(&to_f32(&y), (s.n, oh, ow, s.c));
    let want_dx = nchw_to_nhwc(&to_f32(&xt.grad().unwrap()), (s.n, s.h, s.w, s.c));

    let xd = upload::<T>(gpu, &x);
    let mut yd = gpu.alloc::<T>(s.output_len()).unwrap();
    let mut arg = gpu.alloc::<i32>(s.output_len()).unwrap();
    pool::max_pool2d_forward(gpu, &s, &xd, &mut yd, &mut arg).unwrap();
    let what = format!("{s:?} {}", T::SUFFIX);
    assert_close(&format!("max_pool y {what}"), &download(gpu, &yd), &want_y, 0.0, 0.0);
    let dyd = upload::<T>(gpu, &dy);
    let mut dxd = gpu.alloc::<T>(s.input_len()).unwrap();
    pool::max_pool2d_backward(gpu, &s, &dyd, &arg, &mut dxd).unwrap();
    let tol = if T::SUFFIX == "f32" { 1e-6 } else { 8e-3 };
    assert_close(&format!("max_pool dx {what}"), &download(gpu, &dxd), &want_dx, tol, tol);
}

fn check_global_avg<T: PoolElement>(gpu: &Gpu, (n, h, w, c): (usize, usize, usize, usize), seed: u64) {
    let x = round::<T>(uniform(n * h * w * c, -2.0, 2.0, seed));
    let dy = round::<T>(normal(n * c, 1.0, seed + 1));
    let xt = Tensor::from_vec(nhwc_to_nchw(&x, (n, h, w, c)), &[n, c, h, w]).unwrap().requires_grad().unwrap();
    let y = global_avg_pool2d(&xt).unwrap();
    let dyt = Tensor::from_vec(dy.iter().map(|&v| v as f64).collect::<Vec<f64>>(), &[n, c]).unwrap();
    y.mul(&dyt).unwrap().sum_all().unwrap().backward().unwrap();
    let want_y: Vec<f32> = to_f32(&y).into_iter().map(|v| v as f32).collect();
    let want_dx = nchw_to_nhwc(&to_f32(&xt.grad().unwrap()), (n, h, w, c));

    let xd = upload::<T>(gpu, &x);
    let mut yd = gpu.alloc::<T>(n * c).unwrap();
    pool::global_avg_pool2d_forward(gpu, &xd, &mut yd, n, h * w, c).unwrap();
    let tol = if T::SUFFIX == "f32" { 1e-5 } else { 8e-3 };
    assert_close(&format!("global_avg y {}", T::SUFFIX), &download(gpu, &yd), &want_y, tol, tol);
    let dyd = upload::<T>(gpu, &dy);
    let mut dxd = gpu.alloc::<T>(n * h * w * c).unwrap();
    pool::global_avg_pool2d_backward(gpu, &dyd, &mut dxd, n, h * w, c).unwrap();
    assert_close(&format!("global_avg dx {}", T::SUFFIX), &download(gpu, &dxd), &want_dx, tol, tol);
}

const fn mp(n: usize, h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> MaxPoolShape {
    MaxPoolShape { n, h, w, c, kh: k, kw: k, stride, pad }
}

const MAX_POOL_CASES: &[MaxPoolShape] = &[
    mp(2, 9, 9, 8, 3, 2, 1), // ResNet's 3×3/2 pad 1, odd size
    mp(1, 8, 6, 5, 3, 2, 1), // even, rectangular, odd channel count
    mp(1, 6, 6, 3, 2, 2, 0), // non-overlapping windows
    mp(1, 7, 5, 4, 3, 1, 0), // stride 1, no padding: each pixel in up to 9 windows
];

parity_test!(max_pool2d_nhwc, |gpu| {
    for (i, &s) in MAX_POOL_CASES.iter().enumerate() {
        check_max_pool::<f32>(gpu, s, 10 + i as u64);
        check_max_pool::<bf16>(gpu, s, 20 + i as u64);
    }
});

parity_test!(global_avg_pool2d_nhwc, |gpu| {
    check_global_avg::<f32>(gpu, (3, 4, 4, 40), 30);
    check_global_avg::<bf16>(gpu, (2, 7, 7, 33), 31);
});

parity_test!(pool_rejects_bad_arguments, |gpu| {
    let s = mp(1, 4, 4, 2, 3, 2, 1);
    let x = gpu.zeros::<f32>(s.input_len()).unwrap();
    let mut y = gpu.zeros::<f32>(s.output_len()).unwrap();
    let mut arg = gpu.zeros::<i32>(s.output_len()).unwrap();
    let wide_pad = MaxPoolShape { pad: 2, ..s };
    assert!(pool::max_pool2d_forward(gpu, &wide_pad, &x, &mut y, &mut arg).is_err());
    let mut short = gpu.zeros::<i32>(s.output_len() - 1).unwrap();
    let err = pool::max_pool2d_forward(gpu, &s, &x, &mut y, &mut short).unwrap_err();
    assert!(err.to_string().contains("argmax"), "{err}");
    let mut yy = gpu.zeros::<f32>(3).unwrap();
    assert!(pool::global_avg_pool2d_forward(gpu, &x, &mut yy, 1, 16, 2).is_err());
    assert!(pool::global_avg_pool2d_forward(gpu, &x, &mut yy, 0, 16, 2).is_err());
});
