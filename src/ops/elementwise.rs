//! Elementwise arithmetic with broadcasting, and the scalar and unary maps.
//!
//! Gradients of broadcast inputs are summed back to the input's shape
//! ([`sum_to_shape`]): an input repeated along an axis receives the sum of
//! the gradients of all its copies.

use crate::autograd::record;
use crate::backend::cpu::elementwise::{binary, unary};
use crate::backend::cpu::reduce::{reduce, Reduction};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{Element, Tensor};
#[allow(unused_imports)]
use num_traits::{Float as _, One, Zero};

/// Sums `g` over the axes that broadcasting expanded, giving `shape`.
pub fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
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

macro_rules! binary_forward {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $e:expr) => {{
        check_same_dtype($op, $a, $b)?;
        float_dispatch!($op, $a.dtype(), T => binary::<T>($op, $a, $b, |$x: T, $y: T| $e)?)
    }};
}

macro_rules! unary_forward {
    ($op:expr, $x:expr, |$v:ident| $e:expr) => {{
        float_dispatch!($op, $x.dtype(), T => unary::<T>($x, |$v: T| $e)?)
    }};
}

impl Tensor {
    /// `self + other`, broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        let out = binary_forward!("add", self, other, |x, y| x + y);
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
        let out = binary_forward!("sub", self, other, |x, y| x - y);
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
        let out = binary_forward!("mul", self, other, |x, y| x * y);
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
        let out = binary_forward!("div", self, other, |x, y| x / y);
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
        let out = unary_forward!("add_scalar", self, |v| v + T::of_f64(s));
        Ok(record("add_scalar", &[self], out, |g, _| Ok(vec![Some(g.clone())])))
    }

    /// `self * s`.
    pub fn mul_scalar(&self, s: f64) -> Result<Tensor> {
        let out = unary_forward!("mul_scalar", self, |v| v * T::of_f64(s));
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
        let out = unary_forward!("neg", self, |v| -v);
        Ok(record("neg", &[self], out, |g, _| Ok(vec![Some(g.neg()?)])))
    }

    /// eˣ; its derivative is itself, so the output is what backward keeps.
    pub fn exp(&self) -> Result<Tensor> {
        let out = unary_forward!("exp", self, |v| v.exp());
        let y = out.clone();
        Ok(record("exp", &[self], out, move |g, _| Ok(vec![Some(g.mul(&y)?)])))
    }

    /// Natural log; d ln x = dx / x.
    pub fn log(&self) -> Result<Tensor> {
        let out = unary_forward!("log", self, |v| v.ln());
        let x = self.detach();
        Ok(record("log", &[self], out, move |g, _| Ok(vec![Some(g.div(&x)?)])))
    }

    /// √x; d√x = dx / (2√x).
    pub fn sqrt(&self) -> Result<Tensor> {
        let out = unary_forward!("sqrt", self, |v| v.sqrt());
        let y = out.clone();
        Ok(record("sqrt", &[self], out, move |g, _| Ok(vec![Some(g.div(&y)?.mul_scalar(0.5)?)])))
    }

    /// xᵖ for a scalar exponent; d xᵖ = p·xᵖ⁻¹ dx.
    pub fn pow(&self, p: f64) -> Result<Tensor> {
        let out = unary_forward!("pow", self, |v| v.powf(T::of_f64(p)));
        let x = self.detach();
        Ok(record("pow", &[self], out, move |g, _| {
            let dx = unary_forward!("pow", &x, |v| T::of_f64(p) * v.powf(T::of_f64(p - 1.0)));
            Ok(vec![Some(g.mul(&dx)?)])
        }))
    }

    /// |x|; the gradient at 0 is taken as 0.
    pub fn abs(&self) -> Result<Tensor> {
        let out = unary_forward!("abs", self, |v| v.abs());
        let x = self.detach();
        Ok(record("abs", &[self], out, move |g, _| {
            let sign = unary_forward!("abs", &x, |v| if v > T::zero() {
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
        let out = binary_forward!("eq_mask", self, other, |x, y| if x == y { T::one() } else { T::zero() });
        Ok(out)
    }

    /// 1.0 where `self > 0`, else 0.0. Not differentiable: a mask.
    pub fn positive_mask(&self) -> Result<Tensor> {
        Ok(unary_forward!("positive_mask", self, |v| if v > T::zero() { T::one() } else { T::zero() }))
    }

    /// Applies `f` to each element; no gradient. For masks and data preparation.
    pub fn map_f64(&self, f: impl Fn(f64) -> f64 + Sync + Send) -> Result<Tensor> {
        Ok(unary_forward!("map_f64", self, |v| T::of_f64(f(v.as_f64()))))
    }
}
