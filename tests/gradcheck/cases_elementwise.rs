//! Elementwise arithmetic, activations, matmul/linear, reductions.

use crate::common::*;
use simclr::ops::matmul::linear;

pub fn cases() -> Vec<Case> {
    vec![
        case("add", "broadcast [3,1,5] + [4,1]", || {
            check(&[rand(&[3, 1, 5], 1), rand(&[4, 1], 2)], |x| x[0].add(&x[1]))
        }),
        case("add", "strided + contiguous, same shape", || {
            check(&[strided(&[3, 5], 3), rand(&[3, 5], 4)], |x| x[0].add(&x[1]))
        }),
        case("add", "same input twice (gradient accumulates)", || {
            check(&[rand(&[2, 3], 5)], |x| x[0].add(&x[0])?.mul(&x[0]))
        }),
        case("sub", "broadcast [5] - [2,3,5]", || check(&[rand(&[5], 6), rand(&[2, 3, 5], 7)], |x| x[0].sub(&x[1]))),
        case("mul", "broadcast [2,1,3] * strided [4,3]", || {
            check(&[rand(&[2, 1, 3], 8), strided(&[4, 3], 9)], |x| x[0].mul(&x[1]))
        }),
        case("div", "broadcast [3,4] / [4], denominator away from 0", || {
            check(&[rand(&[3, 4], 10), rand_in(&[4], 0.5, 2.0, 11)], |x| x[0].div(&x[1]))
        }),
        case("add_scalar", "x + 2.5", || check(&[rand(&[7], 12)], |x| x[0].add_scalar(2.5)?.mul(&x[0]))),
        case("mul_scalar", "x * -1.5 on a strided view", || check(&[strided(&[3, 3], 13)], |x| x[0].mul_scalar(-1.5))),
        case("neg", "-x", || check(&[rand(&[5, 3], 14)], |x| x[0].neg())),
        case("exp", "exp(x)", || check(&[rand(&[3, 7], 15)], |x| x[0].exp())),
        case("log", "log(x), x in [0.5, 3)", || check(&[rand_in(&[3, 5], 0.5, 3.0, 16)], |x| x[0].log())),
        case("sqrt", "sqrt(x), x in [0.5, 3)", || check(&[rand_in(&[11], 0.5, 3.0, 17)], |x| x[0].sqrt())),
        case("pow", "x^2.7, x in [0.5, 2)", || check(&[rand_in(&[2, 5], 0.5, 2.0, 18)], |x| x[0].pow(2.7))),
        case("pow", "x^3 for negative x too", || check(&[rand(&[9], 19)], |x| x[0].pow(3.0))),
        case("abs", "|x|, x away from 0", || {
            let x = rand_in(&[3, 3], 0.1, 1.0, 20)
                .mul(&rand(&[3, 3], 21).map_f64(|v| if v < 0.0 { -1.0 } else { 1.0 }).unwrap())
                .unwrap();
            check(&[x], |x| x[0].abs())
        }),
        case("relu", "relu, inputs away from the kink", || {
            let x = rand(&[4, 5], 22).map_f64(|v| if v.abs() < 0.05 { 0.3 } else { v }).unwrap();
            check(&[x], |x| x[0].relu())
        }),
        case("gelu_erf", "exact GELU on [-3, 3)", || check(&[rand_in(&[13], -3.0, 3.0, 23)], |x| x[0].gelu_erf())),
        case("gelu_tanh", "tanh GELU on [-3, 3)", || check(&[rand_in(&[13], -3.0, 3.0, 24)], |x| x[0].gelu_tanh())),
        case("sigmoid", "sigmoid on [-6, 6)", || check(&[rand_in(&[3, 4], -6.0, 6.0, 25)], |x| x[0].sigmoid())),
        case("tanh", "tanh on strided input", || check(&[strided(&[5, 3], 26)], |x| x[0].tanh())),
        case("matmul", "[3,5] @ [5,4]", || check(&[rand(&[3, 5], 27), rand(&[5, 4], 28)], |x| x[0].matmul(&x[1]))),
        case("matmul", "batched, broadcast [2,1,3,4] @ [3,4,2]", || {
            check(&[rand(&[2, 1, 3, 4], 29), rand(&[3, 4, 2], 30)], |x| x[0].matmul(&x[1]))
        }),
        case("matmul", "transposed views as operands", || {
            check(&[strided(&[3, 4], 31), strided(&[4, 5], 32)], |x| x[0].matmul(&x[1]))
        }),
        case("linear", "[2,3,5] x W[4,5] + b[4]", || {
            check(&[rand(&[2, 3, 5], 33), rand(&[4, 5], 34), rand(&[4], 35)], |x| linear(&x[0], &x[1], Some(&x[2])))
        }),
        case("linear", "no bias, strided input", || {
            check(&[strided(&[3, 5], 36), rand(&[2, 5], 37)], |x| linear(&x[0], &x[1], None))
        }),
        case("sum", "axes (0, 2) of [3,4,5], keepdim", || check(&[rand(&[3, 4, 5], 38)], |x| x[0].sum(&[0, 2], true))),
        case("sum", "axis -1 of a strided view, squeezed", || {
            check(&[strided(&[4, 3], 39)], |x| x[0].sum(&[-1], false))
        }),
        case("mean", "axis 1 of [3,5,2]", || check(&[rand(&[3, 5, 2], 40)], |x| x[0].mean(&[1], false))),
        case("mean", "all axes", || check(&[rand(&[3, 7], 41)], |x| x[0].mean_all())),
        case("max", "axis 1 of [4,7] (no ties)", || check(&[rand(&[4, 7], 42)], |x| x[0].max(&[1], false))),
        case("max", "axes (0, 1) keepdim on strided", || check(&[strided(&[3, 5], 43)], |x| x[0].max(&[0, 1], true))),
        case("var", "unbiased over axis 0 of [5,3]", || check(&[rand(&[5, 3], 44)], |x| x[0].var(&[0], 1, false))),
        case("var", "population over axes (1, 2) keepdim", || {
            check(&[rand(&[2, 3, 4], 45)], |x| x[0].var(&[1, 2], 0, true))
        }),
    ]
}
