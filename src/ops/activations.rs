//! Pointwise nonlinearities and their derivatives.

use super::{placement, Placement};
use crate::autograd::record;
use crate::backend::cpu::elementwise::{binary, unary};
use crate::backend::cpu::fast_math::{erf_f32, exp_f32};
#[cfg(feature = "cuda")]
use crate::backend::cuda::kernels::elementwise::{Unary, UnaryGrad};
use crate::error::Result;
use crate::float_dispatch;
#[cfg(feature = "cuda")]
use crate::ops::elementwise::cuda;
use crate::tensor::{DType, Float, Tensor};
#[allow(unused_imports)]
use num_traits::{Float as _, One, Zero};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4; // √(2/π)
const GELU_TANH_C: f64 = 0.044715;
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7; // 1/√(2π)

/// GELU(x) = x·Φ(x), Φ the standard normal CDF.
fn gelu_erf<T: Float>(x: T) -> T {
    x * T::of_f64(0.5) * (T::one() + (x * T::of_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// d/dx x·Φ(x) = Φ(x) + x·φ(x).
fn gelu_erf_grad<T: Float>(x: T) -> T {
    let cdf = T::of_f64(0.5) * (T::one() + (x * T::of_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = T::of_f64(FRAC_1_SQRT_2PI) * (-(x * x) * T::of_f64(0.5)).exp();
    cdf + x * pdf
}

/// `gelu_erf` for f32 through the vectorisable erf and exp of `fast_math`
/// (within 5e-7 of libm's; f64 keeps libm so gradchecks see the exact function).
fn gelu_erf_f32(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

fn gelu_erf_grad_f32(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = FRAC_1_SQRT_2PI as f32 * exp_f32(-(x * x) * 0.5);
    cdf + x * pdf
}

/// The tanh approximation: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
fn gelu_tanh<T: Float>(x: T) -> T {
    let u = T::of_f64(SQRT_2_OVER_PI) * (x + T::of_f64(GELU_TANH_C) * x * x * x);
    T::of_f64(0.5) * x * (T::one() + u.tanh())
}

fn gelu_tanh_grad<T: Float>(x: T) -> T {
    let u = T::of_f64(SQRT_2_OVER_PI) * (x + T::of_f64(GELU_TANH_C) * x * x * x);
    let t = u.tanh();
    let du = T::of_f64(SQRT_2_OVER_PI) * (T::one() + T::of_f64(3.0 * GELU_TANH_C) * x * x);
    T::of_f64(0.5) * (T::one() + t) + T::of_f64(0.5) * x * (T::one() - t * t) * du
}

impl Tensor {
    /// max(x, 0). Backward keeps only the output (positive ⇔ gradient passes).
    pub fn relu(&self) -> Result<Tensor> {
        let out = match placement("relu", &[self])? {
            Placement::Cpu => {
                float_dispatch!("relu", self.dtype(), T => unary::<T>(self, |v: T| if v > T::zero() { v } else { T::zero() })?)
            }
            #[cfg(feature = "cuda")]
            Placement::Cuda => cuda::unary("relu", Unary::Relu, self)?,
        };
        let y = out.clone();
        Ok(record("relu", &[self], out, move |g, _| {
            let gi = match placement("relu", &[g])? {
                Placement::Cpu => {
                    float_dispatch!("relu", g.dtype(), T => binary::<T>("relu", g, &y, |g: T, y: T| if y > T::zero() { g } else { T::zero() })?)
                }
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::unary_grad("relu", UnaryGrad::Relu, g, &y)?,
            };
            Ok(vec![Some(gi)])
        }))
    }

    /// GELU with the exact erf form (as `torch.nn.GELU()`).
    pub fn gelu_erf(&self) -> Result<Tensor> {
        let out = match placement("gelu_erf", &[self])? {
            Placement::Cpu if self.dtype() == DType::F32 => unary::<f32>(self, gelu_erf_f32)?,
            Placement::Cpu => float_dispatch!("gelu_erf", self.dtype(), T => unary::<T>(self, gelu_erf::<T>)?),
            #[cfg(feature = "cuda")]
            Placement::Cuda => cuda::unary("gelu_erf", Unary::GeluErf, self)?,
        };
        let x = self.detach();
        Ok(record("gelu_erf", &[self], out, move |g, _| {
            let gi = match placement("gelu_erf", &[g])? {
                Placement::Cpu if g.dtype() == DType::F32 => {
                    binary::<f32>("gelu_erf", g, &x, |g, x| g * gelu_erf_grad_f32(x))?
                }
                Placement::Cpu => {
                    float_dispatch!("gelu_erf", g.dtype(), T => binary::<T>("gelu_erf", g, &x, |g: T, x: T| g * gelu_erf_grad(x))?)
                }
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::unary_grad("gelu_erf", UnaryGrad::GeluErf, g, &x)?,
            };
            Ok(vec![Some(gi)])
        }))
    }

    /// GELU with the tanh approximation (as `torch.nn.GELU(approximate="tanh")`).
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        let out = match placement("gelu_tanh", &[self])? {
            Placement::Cpu => float_dispatch!("gelu_tanh", self.dtype(), T => unary::<T>(self, gelu_tanh::<T>)?),
            #[cfg(feature = "cuda")]
            Placement::Cuda => cuda::unary("gelu_tanh", Unary::GeluTanh, self)?,
        };
        let x = self.detach();
        Ok(record("gelu_tanh", &[self], out, move |g, _| {
            let gi = match placement("gelu_tanh", &[g])? {
                Placement::Cpu => {
                    float_dispatch!("gelu_tanh", g.dtype(), T => binary::<T>("gelu_tanh", g, &x, |g: T, x: T| g * gelu_tanh_grad(x))?)
                }
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::unary_grad("gelu_tanh", UnaryGrad::GeluTanh, g, &x)?,
            };
            Ok(vec![Some(gi)])
        }))
    }

    /// 1 / (1 + e⁻ˣ); σ' = σ(1 − σ), computed from the saved output.
    pub fn sigmoid(&self) -> Result<Tensor> {
        let out = match placement("sigmoid", &[self])? {
            Placement::Cpu => float_dispatch!("sigmoid", self.dtype(), T => unary::<T>(self, |v: T| {
            // Branch so that exp never overflows.
            if v >= T::zero() { T::one() / (T::one() + (-v).exp()) } else { let e = v.exp(); e / (T::one() + e) }
        })?),
            #[cfg(feature = "cuda")]
            Placement::Cuda => cuda::unary("sigmoid", Unary::Sigmoid, self)?,
        };
        let y = out.clone();
        Ok(record("sigmoid", &[self], out, move |g, _| {
            let gi = match placement("sigmoid", &[g])? {
                Placement::Cpu => {
                    float_dispatch!("sigmoid", g.dtype(), T => binary::<T>("sigmoid", g, &y, |g: T, s: T| g * s * (T::one() - s))?)
                }
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::unary_grad("sigmoid", UnaryGrad::Sigmoid, g, &y)?,
            };
            Ok(vec![Some(gi)])
        }))
    }

    /// tanh; tanh' = 1 − tanh², computed from the saved output.
    pub fn tanh(&self) -> Result<Tensor> {
        let out = match placement("tanh", &[self])? {
            Placement::Cpu => float_dispatch!("tanh", self.dtype(), T => unary::<T>(self, |v: T| v.tanh())?),
            #[cfg(feature = "cuda")]
            Placement::Cuda => cuda::unary("tanh", Unary::Tanh, self)?,
        };
        let y = out.clone();
        Ok(record("tanh", &[self], out, move |g, _| {
            let gi = match placement("tanh", &[g])? {
                Placement::Cpu => {
                    float_dispatch!("tanh", g.dtype(), T => binary::<T>("tanh", g, &y, |g: T, t: T| g * (T::one() - t * t))?)
                }
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::unary_grad("tanh", UnaryGrad::Tanh, g, &y)?,
            };
            Ok(vec![Some(gi)])
        }))
    }
}
