//! Softmax family, layer norm, L2 normalisation, dropout, attention, losses.

use crate::common::*;
use simclr::ops::attention::{multi_head_attention, scaled_dot_product_attention};
use simclr::ops::dropout::dropout;
use simclr::ops::layernorm::layer_norm;
use simclr::ops::loss::{cross_entropy, nt_xent};
use simclr::ops::normalize::cosine_similarity;
use simclr::{Rng, Tensor};

pub fn cases() -> Vec<Case> {
    vec![
        case("softmax", "last axis of [3,5]", || check(&[rand(&[3, 5], 1)], |x| x[0].softmax(-1))),
        case("softmax", "axis 0 of a strided [4,3]", || check(&[strided(&[4, 3], 2)], |x| x[0].softmax(0))),
        case("log_softmax", "last axis of [2,3,4], large values", || {
            check(&[rand(&[2, 3, 4], 3).mul_scalar(20.0).unwrap()], |x| x[0].log_softmax(-1))
        }),
        case("log_softmax", "axis 1 of [3,4,2]", || check(&[rand(&[3, 4, 2], 4)], |x| x[0].log_softmax(1))),
        case("log_softmax", "axis 0 of a strided [4,3]", || check(&[strided(&[4, 3], 26)], |x| x[0].log_softmax(0))),
        case("layer_norm", "over the last axis, affine", || {
            check(&[rand(&[3, 5], 5), rand(&[5], 6), rand(&[5], 7)], |x| {
                layer_norm(&x[0], &[5], Some(&x[1]), Some(&x[2]), 1e-5)
            })
        }),
        case("layer_norm", "over the last two axes of a strided input, no affine", || {
            let x = rand(&[3, 2, 4], 8).permute(&[1, 0, 2]).unwrap(); // [2, 3, 4]
            check(&[x], |x| layer_norm(&x[0], &[3, 4], None, None, 1e-5))
        }),
        case("layer_norm", "over the last two axes, affine", || {
            check(&[rand(&[2, 3, 4], 27), rand(&[3, 4], 28), rand(&[3, 4], 29)], |x| {
                layer_norm(&x[0], &[3, 4], Some(&x[1]), Some(&x[2]), 1e-5)
            })
        }),
        case("layer_norm", "weight only", || {
            check(&[rand(&[4, 3], 9), rand(&[3], 10)], |x| layer_norm(&x[0], &[3], Some(&x[1]), None, 1e-5))
        }),
        case("layer_norm", "bias only, rows of 19 (two 8-lane blocks and a tail)", || {
            check(&[rand(&[3, 19], 30), rand(&[19], 31)], |x| layer_norm(&x[0], &[19], None, Some(&x[1]), 1e-5))
        }),
        case("l2_normalize", "rows of [4,3]", || check(&[rand(&[4, 3], 11)], |x| x[0].l2_normalize(-1, 1e-12))),
        case("l2_normalize", "axis 0 of a strided [3,5]", || {
            check(&[strided(&[3, 5], 12)], |x| x[0].l2_normalize(0, 1e-12))
        }),
        case("cosine_similarity", "[3,4] vs [5,4]", || {
            check(&[rand(&[3, 4], 13), rand(&[5, 4], 14)], |x| cosine_similarity(&x[0], &x[1], 1e-8))
        }),
        case("dropout", "p = 0.3, seeded mask", || {
            check(&[rand(&[4, 6], 15)], |x| dropout(&x[0], 0.3, true, &mut Rng::new(99)))
        }),
        case("scaled_dot_product_attention", "[2,2,5,4] queries, 7 keys, no mask", || {
            check(&[rand(&[2, 2, 5, 4], 16), rand(&[2, 2, 7, 4], 17), rand(&[2, 2, 7, 3], 18)], |x| {
                scaled_dot_product_attention(&x[0], &x[1], &x[2], None, None)
            })
        }),
        case("scaled_dot_product_attention", "u8 mask [5,7] with a fully masked row", || {
            // L=5 queries, S=7 keys; query 2 may attend to nothing (its output and gradients are 0).
            #[rustfmt::skip]
            let allowed = vec![
                1u8, 1, 0, 1, 0, 1, 1,
                0, 1, 1, 1, 1, 0, 0,
                0, 0, 0, 0, 0, 0, 0,
                1, 0, 0, 0, 0, 0, 1,
                1, 1, 1, 1, 1, 1, 1,
            ];
            let mask = Tensor::from_vec(allowed, &[5, 7]).unwrap();
            check(&[rand(&[1, 2, 5, 4], 19), rand(&[1, 2, 7, 4], 20), rand(&[1, 2, 7, 3], 21)], move |x| {
                scaled_dot_product_attention(&x[0], &x[1], &x[2], Some(&mask), None)
            })
        }),
        case("multi_head_attention", "packed qkv [2,5,18]: 3 heads of 2", || {
            check(&[rand(&[2, 5, 18], 33)], |x| multi_head_attention(&x[0], 3))
        }),
        case("multi_head_attention", "one token, one head, strided qkv", || {
            let x = rand(&[3, 1, 2], 34).permute(&[1, 2, 0]).unwrap(); // [1, 2, 3]: not contiguous
            check(&[x], |x| multi_head_attention(&x[0], 1))
        }),
        case("scaled_dot_product_attention", "f64 key-padding mask [2,1,1,4], custom scale", || {
            let mask = Tensor::from_vec(vec![1.0f64, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0], &[2, 1, 1, 4]).unwrap();
            check(&[rand(&[2, 2, 3, 2], 30), rand(&[2, 2, 4, 2], 31), rand(&[2, 2, 4, 5], 32)], move |x| {
                scaled_dot_product_attention(&x[0], &x[1], &x[2], Some(&mask), Some(0.7))
            })
        }),
        case("cross_entropy", "[5,4] logits", || {
            let t = Tensor::from_vec(vec![0i64, 3, 1, 1, 2], &[5]).unwrap();
            check(&[rand(&[5, 4], 22).mul_scalar(3.0).unwrap()], move |x| cross_entropy(&x[0], &t))
        }),
        case("nt_xent", "N=3, D=5, temperature 0.5", || check(&[rand(&[6, 5], 23)], |x| nt_xent(&x[0], 0.5))),
        case("nt_xent", "N=3, D=5, temperature 0.1", || check(&[rand(&[6, 5], 33)], |x| nt_xent(&x[0], 0.1))),
        case("nt_xent", "N=4, D=3, temperature 0.5", || check(&[rand(&[8, 3], 34)], |x| nt_xent(&x[0], 0.5))),
        case("nt_xent", "N=4, D=3, temperature 0.1", || check(&[rand(&[8, 3], 24)], |x| nt_xent(&x[0], 0.1))),
        case("nt_xent", "N=2, D=3, strided input", || check(&[strided(&[4, 3], 25)], |x| nt_xent(&x[0], 0.5))),
    ]
}
