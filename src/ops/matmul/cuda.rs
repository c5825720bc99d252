//! Matrix products on the GPU: cuBLAS GEMM (`backend/cuda/gemm.rs`), one call per matrix of
//! the batch, or one call in all when the batch folds into the rows.
//!
//! A transposed view (`b.t()`, as every backward takes) is not copied: a matrix whose last
//! two strides are (1, rows) is the row-major storage of its transpose, which GEMM reads
//! with its `trans` flag.

use crate::backend::cuda::{gemm, GemmShape};
use crate::error::{Error, Result};
use crate::kernel_dispatch;
use crate::ops::cuda_support::{cast, gpu_of, row_major, strided_slice, wrap};
use crate::tensor::layout::{broadcast_shapes, Layout};
use crate::tensor::{DType, Tensor};

/// How GEMM reads the last two axes of a tensor: straight, or as the transpose of a
/// row-major matrix; `None` if neither (the caller copies it row-major first).
fn matrix_order(l: &Layout) -> Option<bool> {
    let r = l.rank();
    let (rows, cols) = (l.shape[r - 2], l.shape[r - 1]);
    let (sr, sc) = (l.strides[r - 2], l.strides[r - 1]);
    if (sc == 1 || cols == 1) && (sr == cols || rows == 1) {
        Some(false)
    } else if (sr == 1 || rows == 1) && (sc == rows || cols == 1) {
        Some(true)
    } else {
        None
    }
}

/// Storage offsets (relative to the view's offset) of each matrix of the batch axes.
fn batch_offsets(l: &Layout, batch: &[usize]) -> Vec<usize> {
    let nb = batch.len();
    let strides = &l.strides[..nb];
    let mut out = Vec::with_capacity(batch.iter().product());
    let mut idx = vec![0usize; nb];
    loop {
        out.push(idx.iter().zip(strides).map(|(i, s)| i * s).sum());
        let Some(axis) = (0..nb).rev().find(|&a| idx[a] + 1 < batch[a]) else { break };
        idx[axis] += 1;
        idx[axis + 1..].iter_mut().for_each(|i| *i = 0);
    }
    out
}

/// `a @ b` for device tensors of rank ≥ 2 with broadcast batch axes; with `bf16_autocast`,
/// f32 operands are multiplied in bf16 (f32 accumulation) and the product returned as f32.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, bf16_autocast: bool) -> Result<Tensor> {
    const OP: &str = "matmul";
    if bf16_autocast && a.dtype() == DType::F32 {
        let (a16, b16) = (cast(OP, a, DType::BF16)?, cast(OP, b, DType::BF16)?);
        return cast(OP, &matmul(&a16, &b16, false)?, DType::F32);
    }
    if a.rank() < 2 || b.rank() < 2 {
        return Err(Error::shape(OP, "the CUDA matmul takes matrices (rank ≥ 2); reshape vectors to [1, n] or [n, 1]"));
    }
    let (gpu, ordinal) = gpu_of(OP, a)?;
    let (m, k, n) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1], b.shape()[b.rank() - 1]);
    if b.shape()[b.rank() - 2] != k {
        return Err(Error::shape(OP, format!("{:?} @ {:?}: inner sizes differ", a.shape(), b.shape())));
    }
    let batch = broadcast_shapes(OP, &a.shape()[..a.rank() - 2], &b.shape()[..b.rank() - 2])?;
    let operand = |t: &Tensor, rows: usize, cols: usize| -> Result<(Tensor, Layout, bool)> {
        let mut full = batch.clone();
        full.extend([rows, cols]);
        let t = if matrix_order(t.layout()).is_some() { t.detach() } else { row_major(t)? };
        let l = t.layout().broadcast_to(OP, &full)?;
        let trans = matrix_order(&l).expect("row-major or transposed by construction");
        Ok((t, l, trans))
    };
    let (a, la, trans_a) = operand(a, m, k)?;
    let (b, lb, trans_b) = operand(b, k, n)?;
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    let (offs_a, offs_b) = (batch_offsets(&la, &batch), batch_offsets(&lb, &batch));
    kernel_dispatch!(OP, a.dtype(), T => {
        // k = 0: every product is an empty sum, and GEMM would not write C.
        let mut c = if k == 0 { gpu.zeros::<T>(offs_a.len() * m * n)? } else { gpu.alloc::<T>(offs_a.len() * m * n)? };
        let (sa, sb) = (strided_slice::<T>(OP, &a)?, strided_slice::<T>(OP, &b)?);
        // The whole batch is one GEMM when B is shared and A's matrices are stacked rows.
        let fold = !trans_a && offs_b.iter().all(|&o| o == offs_b[0])
            && offs_a.iter().enumerate().all(|(i, &o)| o == i * m * k);
        if fold {
            let shape = GemmShape { m: m * offs_a.len(), n, k, trans_a, trans_b };
            gemm(&gpu, shape, 1.0, &sa, &sb.alias(offs_b[0], k * n), 0.0, &mut c)?;
        } else {
            let shape = GemmShape { m, n, k, trans_a, trans_b };
            for (i, (&oa, &ob)) in offs_a.iter().zip(&offs_b).enumerate() {
                let mut ci = c.alias(i * m * n, m * n);
                gemm(&gpu, shape, 1.0, &sa.alias(oa, m * k), &sb.alias(ob, k * n), 0.0, &mut ci)?;
            }
        }
        wrap(c, &out_shape, ordinal)
    })
}
