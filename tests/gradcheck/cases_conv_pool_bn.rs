//! Convolution, pooling, batch norm, temporal mean.

use crate::common::*;
use simclr::ops::batchnorm::{batch_norm_2d, RunningStats};
use simclr::ops::conv2d::conv2d;
use simclr::ops::pool::{adaptive_avg_pool2d, global_avg_pool2d, max_pool2d, temporal_mean};
use simclr::{DType, Tensor};

/// Distinct, well-separated values in a random order: no ties for max pooling.
fn tie_free(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.1 - n as f64 * 0.05).collect();
    simclr::Rng::new(seed).shuffle(&mut v);
    Tensor::from_f64s(&v, shape, DType::F64).unwrap()
}

/// Which affine parameters a batch-norm case passes.
#[derive(Clone, Copy)]
enum Affine {
    None,
    Both,
    BiasOnly,
}

fn bn_case(
    training: bool,
    affine: Affine,
    seed: u64,
) -> impl Fn() -> simclr::Result<simclr::autograd::gradcheck::GradcheckReport> {
    move || {
        let mut inputs = vec![rand(&[3, 2, 3, 2], seed)];
        if matches!(affine, Affine::Both) {
            inputs.push(rand_in(&[2], 0.5, 1.5, seed + 1));
        }
        if !matches!(affine, Affine::None) {
            inputs.push(rand(&[2], seed + 2));
        }
        check(&inputs, |x| {
            // Fresh, non-trivial running stats each evaluation so every call is the same function.
            let mut stats = RunningStats::new(2, DType::F64)?;
            stats.mean = Tensor::from_f64s(&[0.1, -0.2], &[2], DType::F64)?;
            stats.var = Tensor::from_f64s(&[0.5, 2.0], &[2], DType::F64)?;
            let (w, b) = match affine {
                Affine::None => (None, None),
                Affine::Both => (Some(&x[1]), Some(&x[2])),
                Affine::BiasOnly => (None, Some(&x[1])),
            };
            batch_norm_2d(&x[0], w, b, &mut stats, training, 1e-5)
        })
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        case("conv2d", "3x3, stride 1, padding 1, bias", || {
            check(&[rand(&[2, 3, 5, 4], 1), rand(&[4, 3, 3, 3], 2), rand(&[4], 3)], |x| {
                conv2d(&x[0], &x[1], Some(&x[2]), (1, 1), (1, 1))
            })
        }),
        case("conv2d", "non-square 2x3 kernel, stride (2, 1), padding (1, 0), no bias", || {
            check(&[rand(&[1, 2, 7, 6], 4), rand(&[3, 2, 2, 3], 5)], |x| conv2d(&x[0], &x[1], None, (2, 1), (1, 0)))
        }),
        case("conv2d", "7x7 stride 2 padding 3 (ResNet stem), odd size", || {
            check(&[rand(&[1, 1, 9, 9], 6), rand(&[2, 1, 7, 7], 7)], |x| conv2d(&x[0], &x[1], None, (2, 2), (3, 3)))
        }),
        case("conv2d", "1x1 stride 2 on a permuted (non-contiguous) input, batch 5", || {
            let x = rand(&[5, 3, 4, 2], 8).permute(&[0, 3, 1, 2]).unwrap(); // [5, 2, 3, 4] view
            check(&[x, rand(&[3, 2, 1, 1], 9)], |x| conv2d(&x[0], &x[1], None, (2, 2), (0, 0)))
        }),
        // The CPU kernel runs maps of >= 64 output pixels one GEMM per image (the
        // cases above are smaller and take the grouped schedule).
        case("conv2d", "per-image schedule (8x8 map, 1 image), strided input, bias", || {
            check(&[strided(&[1, 2, 8, 8], 23), rand(&[2, 2, 3, 3], 24), rand(&[2], 25)], |x| {
                conv2d(&x[0], &x[1], Some(&x[2]), (1, 1), (1, 1))
            })
        }),
        case("conv2d", "per-image schedule, images spread over threads (batch 3)", || {
            check(&[rand(&[3, 1, 9, 8], 26), rand(&[2, 1, 2, 3], 27)], |x| conv2d(&x[0], &x[1], None, (1, 1), (0, 1)))
        }),
        case("max_pool2d", "3x3 stride 2 padding 1", || {
            check(&[tie_free(&[2, 2, 5, 6], 10)], |x| max_pool2d(&x[0], (3, 3), (2, 2), (1, 1)))
        }),
        case("max_pool2d", "2x2 stride 2, odd input (last row dropped)", || {
            check(&[tie_free(&[1, 3, 5, 4], 11)], |x| max_pool2d(&x[0], (2, 2), (2, 2), (0, 0)))
        }),
        case("adaptive_avg_pool2d", "uneven bins 7x5 -> 3x2", || {
            check(&[rand(&[2, 2, 7, 5], 12)], |x| adaptive_avg_pool2d(&x[0], (3, 2)))
        }),
        case("adaptive_avg_pool2d", "upsampling bins 2x3 -> 3x4 (overlapping)", || {
            check(&[rand(&[1, 2, 2, 3], 13)], |x| adaptive_avg_pool2d(&x[0], (3, 4)))
        }),
        case("global_avg_pool2d", "[3,4,3,5] -> [3,4]", || {
            check(&[rand(&[3, 4, 3, 5], 14)], |x| global_avg_pool2d(&x[0]))
        }),
        case("temporal_mean", "[2,5,3] clips of 5 frames", || check(&[rand(&[2, 5, 3], 15)], |x| temporal_mean(&x[0]))),
        case("batch_norm_2d", "training, affine", bn_case(true, Affine::Both, 16)),
        case("batch_norm_2d", "training, no affine", bn_case(true, Affine::None, 19)),
        case("batch_norm_2d", "training, bias only", bn_case(true, Affine::BiasOnly, 28)),
        case("batch_norm_2d", "eval (running statistics), affine", bn_case(false, Affine::Both, 22)),
        case("batch_norm_2d", "eval (running statistics), no affine", bn_case(false, Affine::None, 31)),
    ]
}
