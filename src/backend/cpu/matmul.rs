//! Batched matrix multiply through the `gemm` crate (or, for f32 under bf16 autocast,
//! `gemm_bf16`).
//!
//! Both take a row stride and a column stride for each operand, so
//! transposed and broadcast views are multiplied in place, without copies.

use super::elementwise::{element_offsets, PAR_MIN};
use super::{SendConstPtr, SendPtr};
use crate::error::{Error, Result};
use crate::tensor::layout::{broadcast_shapes, Layout};
use crate::tensor::{Float, StorageElement, Tensor};
use rayon::prelude::*;
use std::any::TypeId;
use std::mem::MaybeUninit;

/// How a GEMM multiplies: `Exact` in the operands' own type, or `Bf16` — f32 operands
/// rounded to bf16, products summed in f32 (`gemm_bf16`: bf16 autocast on the CPU). f64
/// GEMMs are exact either way, as autocast leaves f64 alone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GemmPrecision {
    Exact,
    Bf16,
}

/// One GEMM: `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, each operand given by pointer and
/// (row stride, column stride) in elements. `dst` is overwritten, or added to
/// when `accumulate` is set.
///
/// # Safety
/// The pointers must cover the addressed elements; `dst` must not alias the inputs; with
/// `GemmPrecision::Bf16` and f32, the CPU must have AVX512-BF16 (`gemm_bf16::supported`).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_strided<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: isize,
    dst_cs: isize,
    lhs: *const T,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const T,
    rhs_rs: isize,
    rhs_cs: isize,
    accumulate: bool,
    threads: usize,
    precision: GemmPrecision,
) {
    if m == 0 || n == 0 || (k == 0 && accumulate) {
        return;
    }
    if precision == GemmPrecision::Bf16 && TypeId::of::<T>() == TypeId::of::<f32>() {
        let f = |p: *const T| p as *const f32;
        return super::gemm_bf16::gemm_bf16(
            m,
            n,
            k,
            (dst as *mut f32, dst_rs, dst_cs),
            (f(lhs), lhs_rs, lhs_cs),
            (f(rhs), rhs_rs, rhs_cs),
            accumulate,
            threads,
        );
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                *dst.offset(i as isize * dst_rs + j as isize * dst_cs) = T::zero();
            }
        }
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // gemm computes dst := alpha·dst + beta·lhs·rhs; read_dst=false ignores alpha·dst.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        if accumulate { T::one() } else { T::zero() },
        T::one(),
        false,
        false,
        false,
        par,
    );
}

/// Whether one product should run as `threads` single-threaded GEMMs over slices of the
/// inner axis (see [`inner_axis_split`]): long inner axes (weight gradients, k = the rows
/// of a batch) over outputs too small to give every thread a good share.
fn splits_inner_axis(m: usize, n: usize, k: usize, threads: usize) -> bool {
    threads > 1 && k >= m.max(n) && k >= 256 * threads && m * n * k >= 1 << 22
}

/// `dst[m×n] (+)= lhs · rhs` as one single-threaded GEMM per thread over its own slice of
/// the inner axis, the partial products then added in slice order (a fixed split: the
/// same sum on every run). Measured (2-core Xeon, f32): ViViT-tiny's weight gradients,
/// 192×192 and 576×192 over 1088 rows, 0.44 → 0.41 ms and 1.39 → 0.96 ms, where the
/// gemm crate's own threading splits the small output.
///
/// # Safety
/// As for [`gemm_strided`]: `dst` [m, n] row-major, lhs [m, k] and rhs [k, n] at the strides given.
#[allow(clippy::too_many_arguments)]
unsafe fn inner_axis_split<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    (dst, lhs, rhs): (*mut T, *const T, *const T),
    (lhs_rs, lhs_cs, rhs_rs, rhs_cs): (isize, isize, isize, isize),
    accumulate: bool,
    threads: usize,
    precision: GemmPrecision,
) {
    let slice = k.div_ceil(threads);
    let (lhs, rhs, dst) = (SendConstPtr(lhs), SendConstPtr(rhs), SendPtr(dst));
    // Slice 0 goes straight into dst; the others into buffers of their own.
    let partials: Vec<Vec<T>> = (0..k.div_ceil(slice))
        .into_par_iter()
        .map(|s| {
            let (lhs, rhs, dst) = (lhs, rhs, dst);
            let (first, len) = (s * slice, slice.min(k - s * slice));
            let mut own = if s == 0 { Vec::new() } else { vec![T::zero(); m * n] };
            let out = if s == 0 { dst.0 } else { own.as_mut_ptr() };
            gemm_strided(
                m,
                n,
                len,
                out,
                n as isize,
                1,
                lhs.0.offset(first as isize * lhs_cs),
                lhs_rs,
                lhs_cs,
                rhs.0.offset(first as isize * rhs_rs),
                rhs_rs,
                rhs_cs,
                accumulate && s == 0,
                1,
                precision,
            );
            own
        })
        .collect();
    let out = std::slice::from_raw_parts_mut(dst.0, m * n);
    for part in &partials[1..] {
        out.par_chunks_mut(PAR_MIN).zip(part.par_chunks(PAR_MIN)).for_each(|(o, p)| {
            o.iter_mut().zip(p).for_each(|(o, &p)| *o += p);
        });
    }
}

/// `a @ b` for `a: [..., m, k]`, `b: [..., k, n]` with broadcast batch axes.
pub fn matmul<T: Float + StorageElement>(a: &Tensor, b: &Tensor, precision: GemmPrecision) -> Result<Tensor> {
    matmul_plus_row::<T>(a, b, None, precision)
}

/// `a @ b + row` with `row` ([n], host) added to every output row, as the GEMM's
/// starting value: a linear layer's bias costs no pass of its own.
pub fn matmul_plus_row<T: Float + StorageElement>(
    a: &Tensor,
    b: &Tensor,
    row: Option<&Tensor>,
    precision: GemmPrecision,
) -> Result<Tensor> {
    const OP: &str = "matmul";
    if a.rank() < 2 || b.rank() < 2 {
        return Err(Error::shape(OP, format!("needs rank >= 2 operands, got {:?} and {:?}", a.shape(), b.shape())));
    }
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (k2, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    if k != k2 {
        return Err(Error::shape(OP, format!("inner sizes differ: {:?} @ {:?}", a.shape(), b.shape())));
    }
    let batch = broadcast_shapes(OP, &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
    let mut shape_a = batch.clone();
    shape_a.extend([m, k]);
    let mut shape_b = batch.clone();
    shape_b.extend([k, n]);
    let la = a.layout().broadcast_to(OP, &shape_a)?;
    let lb = b.layout().broadcast_to(OP, &shape_b)?;
    // Offsets of each batch's matrix: enumerate the batch axes only.
    let batch_offsets = |l: &Layout| -> Vec<usize> {
        let nb = l.rank() - 2;
        element_offsets(&Layout { shape: l.shape[..nb].to_vec(), strides: l.strides[..nb].to_vec(), offset: l.offset })
    };
    let (offs_a, offs_b) = (batch_offsets(&la), batch_offsets(&lb));
    let (sa, sb) = (a.host_storage(OP)?, b.host_storage(OP)?);
    let da = T::slice(&sa).ok_or_else(|| Error::dtype(OP, "operands must share a dtype"))?;
    let db = T::slice(&sb).ok_or_else(|| Error::dtype(OP, "operands must share a dtype"))?;
    let nbatch = offs_a.len();
    // Not zeroed first: the GEMMs write every element, over the row where there is one.
    let len = nbatch * m * n;
    let mut out: Vec<T> = Vec::with_capacity(len);
    let accumulate = match row {
        None => false,
        Some(row) => {
            if row.shape() != [n] {
                return Err(Error::shape(OP, format!("row {:?} should be [{n}]", row.shape())));
            }
            let row = row.host_data::<T>()?;
            let fill = |out_row: &mut [MaybeUninit<T>]| {
                out_row.iter_mut().zip(row.iter()).for_each(|(o, &r)| _ = o.write(r));
            };
            let spare = &mut out.spare_capacity_mut()[..len];
            if n == 0 {
            } else if len >= PAR_MIN {
                spare.par_chunks_mut(n).for_each(fill);
            } else {
                spare.chunks_mut(n).for_each(fill);
            }
            // SAFETY: the rows of n cover all len elements.
            unsafe { out.set_len(len) };
            true
        }
    };
    let (pa, pb, po) = (SendConstPtr(da.as_ptr()), SendConstPtr(db.as_ptr()), SendPtr(out.as_mut_ptr()));
    let nl = la.rank();
    let (a_rs, a_cs) = (la.strides[nl - 2] as isize, la.strides[nl - 1] as isize);
    let (b_rs, b_cs) = (lb.strides[nl - 2] as isize, lb.strides[nl - 1] as isize);
    let run = |i: usize, threads: usize| unsafe {
        let (pa, pb, po) = (pa, pb, po);
        gemm_strided(
            m,
            n,
            k,
            po.0.add(i * m * n),
            n as isize,
            1,
            pa.0.add(offs_a[i]),
            a_rs,
            a_cs,
            pb.0.add(offs_b[i]),
            b_rs,
            b_cs,
            accumulate,
            threads,
            precision,
        );
    };
    let threads = rayon::current_num_threads();
    if nbatch >= threads && m * n * k < 1 << 21 {
        (0..nbatch).into_par_iter().for_each(|i| run(i, 1));
    } else if nbatch == 1 && splits_inner_axis(m, n, k, threads) {
        // SAFETY: as for `run`: the operands cover [m, k] and [k, n] at their strides.
        unsafe {
            inner_axis_split(
                m,
                n,
                k,
                (po.0, pa.0.add(offs_a[0]), pb.0.add(offs_b[0])),
                (a_rs, a_cs, b_rs, b_cs),
                accumulate,
                threads,
                precision,
            )
        };
    } else {
        (0..nbatch).for_each(|i| run(i, threads));
    }
    // SAFETY: gemm_strided writes every element of each batch's [m, n] block (zeros when k = 0).
    unsafe { out.set_len(len) };
    let mut out_shape = batch;
    out_shape.extend([m, n]);
    Tensor::from_vec(out, &out_shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    /// A long inner axis (a weight gradient's shape) takes the split path on 2+ threads;
    /// it must agree with one GEMM over the whole axis, with and without a starting row.
    #[test]
    fn inner_axis_split_matches_one_gemm() {
        let (m, k, n) = (40, 3000, 36);
        assert!(splits_inner_axis(m, n, k, 3) && !splits_inner_axis(m, n, k, 1));
        let mut rng = crate::rng::Rng::new(2);
        // lhs as the transposed view a weight gradient multiplies (dYᵀ).
        let a = Tensor::randn(&[k, m], 1.0, DType::F64, &mut rng).unwrap().t().unwrap();
        let b = Tensor::randn(&[k, n], 1.0, DType::F64, &mut rng).unwrap();
        let row = Tensor::randn(&[n], 1.0, DType::F64, &mut rng).unwrap();
        let on = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for row in [None, Some(&row)] {
            let split = on(3)
                .install(|| matmul_plus_row::<f64>(&a, &b, row, GemmPrecision::Exact))
                .unwrap()
                .to_vec::<f64>()
                .unwrap();
            let whole = on(1)
                .install(|| matmul_plus_row::<f64>(&a, &b, row, GemmPrecision::Exact))
                .unwrap()
                .to_vec::<f64>()
                .unwrap();
            assert!(split.iter().zip(&whole).all(|(s, w)| (s - w).abs() < 1e-9 * (1.0 + w.abs())), "row {row:?}");
        }
    }
}
