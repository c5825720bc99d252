//! Element types a tensor can hold, and the traits that let kernels be generic.
//!
//! Storage dtypes: f32, f64, bf16, f16, u8 (raw frames), i64 (labels, indices).
//! Arithmetic (`Float`) is done in f32 or f64; the half types are for storage
//! and mixed precision on the GPU, and are converted before CPU math.

use half::{bf16, f16};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    U8,
    I64,
}

impl DType {
    pub const ALL: [DType; 6] = [DType::F32, DType::F64, DType::BF16, DType::F16, DType::U8, DType::I64];

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }

    /// Whether CPU arithmetic ops accept this dtype directly.
    pub fn is_compute_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U8 => "u8",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A type that can live in a tensor's storage.
pub trait Element: Copy + Send + Sync + Default + fmt::Debug + 'static {
    const DTYPE: DType;
    fn as_f64(self) -> f64;
    fn of_f64(v: f64) -> Self;
}

macro_rules! element {
    ($t:ty, $dt:expr, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = $dt;
            #[inline]
            fn as_f64(self) -> f64 {
                ($to)(self)
            }
            #[inline]
            fn of_f64(v: f64) -> Self {
                ($from)(v)
            }
        }
    };
}

element!(f32, DType::F32, |x: f32| x as f64, |v: f64| v as f32);
element!(f64, DType::F64, |x: f64| x, |v: f64| v);
element!(bf16, DType::BF16, |x: bf16| x.to_f64(), bf16::from_f64);
element!(f16, DType::F16, |x: f16| x.to_f64(), f16::from_f64);
// Saturating conversions: frames are 0..=255, labels are whole numbers.
element!(u8, DType::U8, |x: u8| x as f64, |v: f64| v.round().clamp(0.0, 255.0) as u8);
element!(i64, DType::I64, |x: i64| x as f64, |v: f64| v.round() as i64);

/// The floating types CPU kernels compute in (f32 for training, f64 for gradcheck).
pub trait Float: Element + num_traits::Float + std::iter::Sum + std::ops::AddAssign + std::ops::MulAssign {
    /// erf, which `std` lacks.
    fn erf(self) -> Self;
}

impl Float for f32 {
    #[inline]
    fn erf(self) -> Self {
        libm::erff(self)
    }
}

impl Float for f64 {
    #[inline]
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// `T::of_f64(v)` with a short name, for constants inside generic kernels.
#[inline]
pub fn c<T: Float>(v: f64) -> T {
    T::of_f64(v)
}
