//! Elementwise arithmetic with broadcasting, and the scalar and unary maps.
//!
//! Gradients of broadcast inputs are summed back to the input's shape
//! ([`sum_to_shape`]): an input repeated along an axis receives the sum of
//! the gradients of all its copies.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use super::{placement, Placement};
use crate::autograd::record;
use crate::backend::cpu::elementwise::{binary, unary};
use crate::backend::cpu::reduce::{reduce, Reduction};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{Element, Tensor};
#[allow(unused_imports)]
use num_traits::{Float as _, One, Zero};

#[cfg(feature = "cuda")]
use crate::backend::cuda::kernels::elementwise::Unary;

/// Sums `g` over the axes that broadcasting expanded, giving `shape`.
pub fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    #[cfg(feature = "cuda")]
    if placement("sum_to_shape", &[g])? == Placement::Cuda {
        return cuda::sum_to_shape(g, shape);
    }
    let lead = g.rank() - shape.len();
    let axes: Vec<usize> = (0..g.rank()).filter(|&i| i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)).collect();
    let summed = float_dispatch!("sum_to_shape", g.dtype(), T => reduce::<T>(g, &axes, Reduction::Sum)?);
    summed.reshape(shape)
}

pub(crate) fn check_same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::dtype(op, format!("operands have different dtypes: {} and {}", a.dtype(), b.dtype())));
    }
    Ok(())
}

/// The forward of a binary op: the CPU closure, or on a GPU the kernel `Binary::$kind`
/// (`None`: no CUDA implementation).
macro_rules! binary_forward {
    ($op:expr, $kind:tt, $a:expr, $b:expr, |$x:ident, $y:ident| $e:expr) => {{
        check_same_dtype($op, $a, $b)?;
        match placement($op, &[$a, $b])? {
            Placement::Cpu => float_dispatch!($op, $a.dtype(), T => binary::<T>($op, $a, $b, |$x: T, $y: T| $e)?),
            #[cfg(feature = "cuda")]
            Placement::Cuda => device_binary!($op, $kind, $a, $b),
        }
    }};
}

#[cfg(feature = "cuda")]
macro_rules! device_binary {
    ($op:expr, None, $a:expr, $b:expr) => {
        return Err(super::not_on_cuda($op))
    };
    ($op:expr, $kind:ident, $a:expr, $b:expr) => {
        cuda::binary($op, crate::backend::cuda::kernels::elementwise::Binary::$kind, $a, $b)?
    };
}

/// The forward of a pointwise op: the CPU closure, or on a GPU `$device` (an expression
/// giving `Result<Tensor>`; `None`: no CUDA implementation).
macro_rules! unary_forward {
    ($op:expr, $device:tt, $x:expr, |$v:ident| $e:expr) => {{
        match placement($op, &[$x])? {
            Placement::Cpu => float_dispatch!($op, $x.dtype(), T => unary::<T>($x, |$v: T| $e)?),
            #[cfg(feature = "cuda")]
            Placement::Cuda => device_unary!($op, $device),
        }
    }};
}

#[cfg(feature = "cuda")]
macro_rules! device_unary {
    ($op:expr, None) => {
        return Err(super::not_on_cuda($op))
    };
    ($op:expr, $device:expr) => {
        $device?
    };
}

impl Tensor {
    /// `self + other`, broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        let out = binary_forward!("add", Add, self, other, |x, y| x + y);
        let (sa, sb) = (self.shape().to_vec(), other.shape().to_vec());
        Ok(record("add", &[self, other], out, move |g, needs| {
            Ok(vec![
                if needs[0] { Some(sum_to_shape(g, &sa)?) } else { None },
                if needs[1] { Some(sum_to_shape(g, &sb)?) } else { None },
            ])
        }))
    }

    /// `self - other`, broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        let out = binary_forward!("sub", Sub, self, other, |x, y| x - y);
        let (sa, sb) = (self.shape().to_vec(), other.shape().to_vec());
        Ok(record("sub", &[self, other], out, move |g, needs| {
            Ok(vec![
                if needs[0] { Some(sum_to_shape(g, &sa)?) } else { None },
                if needs[1] { Some(sum_to_shape(&g.neg()?, &sb)?) } else { None },
            ])
        }))
    }

    /// `self * other` elementwise, broadcasting. d(ab) = b·da + a·db.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        let out = binary_forward!("mul", Mul, self, other, |x, y| x * y);
        let (a, b) = (self.detach(), other.detach());
        Ok(record("mul", &[self, other], out, move |g, needs| {
            Ok(vec![
                if needs[0] { Some(sum_to_shape(&g.mul(&b)?, a.shape())?) } else { None },
                if needs[1] { Some(sum_to_shape(&g.mul(&a)?, b.shape())?) } else { None },
            ])
        }))
    }

    /// `self / other` elementwise, broadcasting. d(a/b) = da/b − (a/b)·db/b.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        let out = binary_forward!("div", Div, self, other, |x, y| x / y);
        let (b, q, sa) = (other.detach(), out.clone(), self.shape().to_vec());
        Ok(record("div", &[self, other], out, move |g, needs| {
            let g_over_b = g.div(&b)?;
            Ok(vec![
                if needs[0] { Some(sum_to_shape(&g_over_b, &sa)?) } else { None },
                if needs[1] { Some(sum_to_shape(&g_over_b.mul(&q)?.neg()?, b.shape())?) } else { None },
            ])
        }))
    }

    /// `self + s`.
    pub fn add_scalar(&self, s: f64) -> Result<Tensor> {
        let out =
            unary_forward!("add_scalar", (cuda::scale_shift("add_scalar", self, 1.0, s)), self, |v| v + T::of_f64(s));
        Ok(record("add_scalar", &[self], out, |g, _| Ok(vec![Some(g.clone())])))
    }

    /// `self * s`.
    pub fn mul_scalar(&self, s: f64) -> Result<Tensor> {
        let out =
            unary_forward!("mul_scalar", (cuda::scale_shift("mul_scalar", self, s, 0.0)), self, |v| v * T::of_f64(s));
        Ok(record("mul_scalar", &[self], out, move |g, _| Ok(vec![Some(g.mul_scalar(s)?)])))
    }

    /// `self - s`, `self / s`: scalar forms written through `add_scalar`/`mul_scalar`.
    pub fn sub_scalar(&self, s: f64) -> Result<Tensor> {
        self.add_scalar(-s)
    }

    pub fn div_scalar(&self, s: f64) -> Result<Tensor> {
        if s == 0.0 {
            return Err(Error::invalid("div_scalar", "division by zero"));
        }
        self.mul_scalar(1.0 / s)
    }

    pub fn neg(&self) -> Result<Tensor> {
        let out = unary_forward!("neg", (cuda::unary("neg", Unary::Neg, self)), self, |v| -v);
        Ok(record("neg", &[self], out, |g, _| Ok(vec![Some(g.neg()?)])))
    }

    /// eˣ; its derivative is itself, so the output is what backward keeps.
    pub fn exp(&self) -> Result<Tensor> {
        let out = unary_forward!("exp", (cuda::unary("exp", Unary::Exp, self)), self, |v| v.exp());
        let y = out.clone();
        Ok(record("exp", &[self], out, move |g, _| Ok(vec![Some(g.mul(&y)?)])))
    }

    /// Natural log; d ln x = dx / x.
    pub fn log(&self) -> Result<Tensor> {
        let out = unary_forward!("log", (cuda::unary("log", Unary::Log, self)), self, |v| v.ln());
        let x = self.detach();
        Ok(record("log", &[self], out, move |g, _| Ok(vec![Some(g.div(&x)?)])))
    }

    /// √x; d√x = dx / (2√x).
    pub fn sqrt(&self) -> Result<Tensor> {
        let out = unary_forward!("sqrt", (cuda::unary("sqrt", Unary::Sqrt, self)), self, |v| v.sqrt());
        let y = out.clone();
        Ok(record("sqrt", &[self], out, move |g, _| Ok(vec![Some(g.div(&y)?.mul_scalar(0.5)?)])))
    }

    /// xᵖ for a scalar exponent; d xᵖ = p·xᵖ⁻¹ dx.
    pub fn pow(&self, p: f64) -> Result<Tensor> {
        let out = unary_forward!("pow", None, self, |v| v.powf(T::of_f64(p)));
        let x = self.detach();
        Ok(record("pow", &[self], out, move |g, _| {
            let dx = unary_forward!("pow", None, &x, |v| T::of_f64(p) * v.powf(T::of_f64(p - 1.0)));
            Ok(vec![Some(g.mul(&dx)?)])
        }))
    }

    /// |x|; the gradient at 0 is taken as 0.
    pub fn abs(&self) -> Result<Tensor> {
        let out = unary_forward!("abs", (cuda::unary("abs", Unary::Abs, self)), self, |v| v.abs());
        let x = self.detach();
        Ok(record("abs", &[self], out, move |g, _| {
            let sign = unary_forward!("abs", None, &x, |v| if v > T::zero() {
                T::one()
            } else if v < T::zero() {
                -T::one()
            } else {
                T::zero()
            });
            Ok(vec![Some(g.mul(&sign)?)])
        }))
    }

    /// 1.0 where `self == other` (broadcasting), else 0.0. Not differentiable: a mask.
    pub fn eq_mask(&self, other: &Tensor) -> Result<Tensor> {
        let out = binary_forward!("eq_mask", None, self, other, |x, y| if x == y { T::one() } else { T::zero() });
        Ok(out)
    }

    /// 1.0 where `self > 0`, else 0.0. Not differentiable: a mask.
    pub fn positive_mask(&self) -> Result<Tensor> {
        Ok(unary_forward!("positive_mask", None, self, |v| if v > T::zero() { T::one() } else { T::zero() }))
    }

    /// Applies `f` to each element; no gradient. For masks and data preparation.
    pub fn map_f64(&self, f: impl Fn(f64) -> f64 + Sync + Send) -> Result<Tensor> {
        Ok(unary_forward!("map_f64", None, self, |v| T::of_f64(f(v.as_f64()))))
    }
}
