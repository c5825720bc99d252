//! Shape and view ops.

use crate::common::*;
use simclr::autograd::gradcheck::GradcheckOptions;
use simclr::{DType, Tensor};

pub fn cases() -> Vec<Case> {
    vec![
        case("reshape", "[3,5] -> [5,3], then x²", || {
            check(&[rand(&[3, 5], 1)], |x| x[0].reshape(&[5, 3])?.mul(&x[0].reshape(&[5, 3])?))
        }),
        case("reshape", "strided [4,3] -> [2,6]", || check(&[strided(&[4, 3], 2)], |x| x[0].reshape(&[2, 6])?.exp())),
        case("permute", "[2,3,4] -> [2,0,1]", || {
            check(&[rand(&[2, 3, 4], 3)], |x| x[0].permute(&[2, 0, 1])?.mul(&rand(&[4, 2, 3], 4)))
        }),
        case("transpose", "[3,2,5] swap 0 and 2", || check(&[rand(&[3, 2, 5], 5)], |x| x[0].transpose(0, 2)?.exp())),
        case("narrow", "[5,7] axis 1, 2..6", || check(&[rand(&[5, 7], 6)], |x| x[0].narrow(1, 2, 4)?.exp())),
        case("narrow", "strided [4,6] axis 0, 1..3", || check(&[strided(&[4, 6], 7)], |x| x[0].narrow(0, 1, 2)?.exp())),
        case("broadcast_to", "[3,1] -> [2,3,5]", || {
            check(&[rand(&[3, 1], 8)], |x| x[0].broadcast_to(&[2, 3, 5])?.mul(&rand(&[2, 3, 5], 9)))
        }),
        case("contiguous", "copy of a transposed view", || {
            check(&[strided(&[3, 4], 10)], |x| x[0].contiguous()?.exp())
        }),
        case("cat", "three inputs along axis 1", || {
            check(&[rand(&[2, 3], 11), rand(&[2, 1], 12), strided(&[2, 4], 13)], |x| {
                Tensor::cat(&[&x[0], &x[1], &x[2]], 1)?.exp()
            })
        }),
        case("stack", "two [3,2] on a new axis 1", || {
            check(&[rand(&[3, 2], 14), rand(&[3, 2], 15)], |x| Tensor::stack(&[&x[0], &x[1]], 1)?.exp())
        }),
        case("index_select", "repeated indices along axis 0", || {
            check(&[rand(&[4, 3], 16)], |x| x[0].index_select(0, &[3, 0, 3, 1])?.exp())
        }),
        case("gather", "axis 1 of [3,5] with an i64 index [3,2]", || {
            let idx = Tensor::from_vec(vec![0i64, 4, 2, 2, 1, 3], &[3, 2]).unwrap();
            check(&[rand(&[3, 5], 17)], move |x| x[0].gather(1, &idx)?.exp())
        }),
        case("to_dtype", "f64 -> f32 -> f64 (linear, so a wide step is exact)", || {
            let opts = GradcheckOptions { eps: 1e-2, atol: 1e-5, rtol: 1e-4 };
            check_with(&[rand(&[3, 4], 18)], opts, |x| x[0].to_dtype(DType::F32)?.to_dtype(DType::F64)?.mul_scalar(3.0))
        }),
    ]
}
