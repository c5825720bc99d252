//! Plain matrix multiplication: cuBLAS on the GPU (the design allows it for GEMM; the
//! hand-written kernels are the ones around it), a straightforward loop on the emulator.
//!
//! The interface is row-major, like the rest of the crate. cuBLAS is column-major, and a
//! row-major matrix read column-major is its transpose, so C = op(A)·op(B) is computed as
//! Cᵀ = op(B)ᵀ·op(A)ᵀ with the operands swapped.

use std::ffi::c_void;

use cudarc::cublas::{result as cublas, sys as cublas_sys};
use half::bf16;
use rayon::prelude::*;

use super::buffer::{DeviceBuffer, DeviceElement};
use super::gpu::Backend;
use super::Gpu;
use crate::error::{Error, Result};

/// Element types cuBLAS multiplies for us; accumulation is always f32 (f64 for f64).
pub trait GemmElement: DeviceElement {
    const CUDA_TYPE: cublas_sys::cudaDataType;
    const COMPUTE: cublas_sys::cublasComputeType_t;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl GemmElement for f32 {
    const CUDA_TYPE: cublas_sys::cudaDataType = cublas_sys::cudaDataType::CUDA_R_32F;
    // Full f32 (no TF32), so parity with the CPU holds to f32 rounding.
    const COMPUTE: cublas_sys::cublasComputeType_t = cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl GemmElement for bf16 {
    const CUDA_TYPE: cublas_sys::cudaDataType = cublas_sys::cudaDataType::CUDA_R_16BF;
    const COMPUTE: cublas_sys::cublasComputeType_t = cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
}

/// The shape of one product: C[m×n] = op(A)[m×k] · op(B)[k×n], row-major, contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored k×m (use its transpose).
    pub trans_a: bool,
    /// B is stored n×k (use its transpose).
    pub trans_b: bool,
}

/// C = alpha·op(A)·op(B) + beta·C.
pub fn gemm<T: GemmElement>(
    gpu: &Gpu,
    shape: GemmShape,
    alpha: f32,
    a: &DeviceBuffer<T>,
    b: &DeviceBuffer<T>,
    beta: f32,
    c: &mut DeviceBuffer<T>,
) -> Result<()> {
    let GemmShape { m, n, k, trans_a, trans_b } = shape;
    for (name, buf_len, want) in [("A", a.len(), m * k), ("B", b.len(), k * n), ("C", c.len(), m * n)] {
        if buf_len < want {
            return Err(Error::shape("cuda gemm", format!("{name} has {buf_len} elements, {shape:?} needs {want}")));
        }
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    match gpu.backend() {
        Backend::Driver(d) => d.with_cublas(|handle| {
            let op = |t: bool| {
                if t {
                    cublas_sys::cublasOperation_t::CUBLAS_OP_T
                } else {
                    cublas_sys::cublasOperation_t::CUBLAS_OP_N
                }
            };
            let lda = if trans_a { m } else { k };
            let ldb = if trans_b { k } else { n };
            let (alpha, beta) = (alpha, beta);
            // SAFETY: sizes checked above; pointers are live device buffers of this context.
            unsafe {
                cublas::gemm_ex(
                    handle,
                    op(trans_b),
                    op(trans_a),
                    n as i32,
                    m as i32,
                    k as i32,
                    &alpha as *const f32 as *const c_void,
                    b.device_ptr() as *const c_void,
                    T::CUDA_TYPE,
                    ldb.max(1) as i32,
                    a.device_ptr() as *const c_void,
                    T::CUDA_TYPE,
                    lda.max(1) as i32,
                    &beta as *const f32 as *const c_void,
                    c.device_ptr() as *mut c_void,
                    T::CUDA_TYPE,
                    n as i32,
                    T::COMPUTE,
                    cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| Error::Device { op: "cublas gemm", msg: format!("{e:?} for {shape:?}") })
        }),
        Backend::Emulator(_) => {
            // SAFETY: the emulator's device addresses are host allocations of at least these sizes.
            let (a, b) = unsafe {
                (
                    std::slice::from_raw_parts(a.device_ptr() as *const T, m * k),
                    std::slice::from_raw_parts(b.device_ptr() as *const T, k * n),
                )
            };
            let c = unsafe { std::slice::from_raw_parts_mut(c.device_ptr() as *mut T, m * n) };
            c.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
                for (j, out) in row.iter_mut().enumerate() {
                    let mut acc = 0f32;
                    for p in 0..k {
                        let av = if trans_a { a[p * m + i] } else { a[i * k + p] };
                        let bv = if trans_b { b[j * k + p] } else { b[p * n + j] };
                        acc += av.to_f64() as f32 * bv.to_f64() as f32;
                    }
                    let prev = if beta == 0.0 { 0.0 } else { beta * out.to_f64() as f32 };
                    *out = T::from_f64((alpha * acc + prev) as f64);
                }
            });
            Ok(())
        }
    }
}
