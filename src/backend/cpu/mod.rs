//! The CPU reference backend: plain loops parallelised with rayon, GEMM from
//! the `gemm` crate. Kernels are generic over `Float` (f32 and f64).

pub mod conv;
pub mod elementwise;
pub mod fast_math;
pub mod gemm_bf16;
pub mod heap;
pub mod matmul;
pub mod max_pool;
pub mod reduce;
pub mod simd;

/// A raw pointer that may cross into rayon tasks. Each task writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

#[derive(Clone, Copy)]
pub(crate) struct SendConstPtr<T>(pub *const T);
unsafe impl<T> Send for SendConstPtr<T> {}
unsafe impl<T> Sync for SendConstPtr<T> {}

/// Runs `$body` with `$T` bound to f32 or f64 according to `$dtype`; any other
/// dtype is an error naming the op.
#[macro_export]
macro_rules! float_dispatch {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            d => {
                return Err($crate::error::Error::dtype(
                    $op,
                    format!("needs an f32 or f64 tensor, got {d} (convert it with to_dtype)"),
                ))
            }
        }
    };
}

/// Like `float_dispatch!` but for every storage dtype (copies, casts, indexing).
#[macro_export]
macro_rules! any_dispatch {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::tensor::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::tensor::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::tensor::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::tensor::DType::I64 => {
                type $T = i64;
                $body
            }
        }
    };
}
