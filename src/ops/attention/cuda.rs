//! Scaled dot-product attention on the GPU: the FlashAttention-2 kernels of
//! kernels/attention.cu (forward saves the log-sum-exp; backward recomputes P tile by tile, so
//! the L×S matrix never exists in device memory).
//!
//! **bf16 autocast.** The kernels run on tensor cores and take bf16 (or f16) operands only,
//! so they serve f32 tensors under `ops::autocast` (and bf16 tensors): f32 q, k and v are cast
//! to bf16 on the device, the kernel accumulates in f32 and writes a bf16 output, which is cast
//! back to f32; the backward likewise casts dO to bf16 and dQ, dK, dV back to f32. This is the
//! "bf16 autocast for attention on CUDA" of the design's numerics: results differ from the f32
//! CPU op by bf16 rounding (relative ~1e-2). Outside autocast, f32 attention is the op's
//! composition in f32 (attention.rs), not these kernels.
//!
//! Layout: the kernels take contiguous `[B·H, L, D]`, which is our `[..., L, D]` made row-major
//! (the leading axes, e.g. [batch, heads], flatten into B·H). They exist for head dims 32, 64
//! and 128 with `v`'s head dim equal to `q`'s, and take no mask (ViViT attends to every token).

use crate::backend::cuda::kernels::attention::{
    flash_attention_backward, flash_attention_forward, AttentionSaved, AttentionShape, HEAD_DIMS,
};
use crate::error::{Error, Result};
use crate::ops::cuda_support::{cast, gpu_of, row_major, wrap};
use crate::tensor::{DType, Tensor};
use half::bf16;

const OP: &str = "scaled_dot_product_attention";

/// What the backward reads: the bf16 operands and output, and the f32 log-sum-exp.
pub(super) struct Saved {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    shape: AttentionShape,
    scale: f32,
    dtype: DType,
}

/// `t` as the kernels read it: bf16, row-major, starting 16-byte aligned (cp.async moves 16
/// bytes at a time; a fresh buffer always is, a view into the middle of one may not be).
fn operand(t: &Tensor) -> Result<Tensor> {
    let t = cast(OP, &row_major(t)?, DType::BF16)?;
    let aligned = t.cuda_slice::<bf16>(OP)?.device_ptr() % 16 == 0;
    if aligned {
        Ok(t)
    } else {
        t.contiguous_copy()
    }
}

/// Whether tensors of `dtype` take the fused kernels: bf16 ones, and f32 ones under autocast.
pub(super) fn fused(dtype: DType, bf16_autocast: bool) -> bool {
    dtype == DType::BF16 || (dtype == DType::F32 && bf16_autocast)
}

/// Attention with a mask has no device path (neither the kernels nor the composition's mask
/// conversion run there).
pub(super) fn mask_error() -> Error {
    Error::Device {
        op: OP,
        msg: "attention with a mask has no CUDA path (the fused kernels attend to every key); \
              run masked attention on the CPU"
            .into(),
    }
}

/// The problem's shape, or a clear error for what the kernels cannot do.
fn attention_shape(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<AttentionShape> {
    let r = q.rank();
    let (l, d) = (q.shape()[r - 2], q.shape()[r - 1]);
    let (s, dv) = (k.shape()[r - 2], v.shape()[r - 1]);
    if !HEAD_DIMS.contains(&d) || dv != d {
        return Err(Error::invalid(
            OP,
            format!(
                "the fused CUDA attention kernels (bf16 / autocast) need a head dimension of {HEAD_DIMS:?} \
                 shared by q, k and v, got D = {d} (v: {dv}); choose dim/heads to match, or run in f32 \
                 outside autocast"
            ),
        ));
    }
    let batch_heads = q.shape()[..r - 2].iter().product();
    Ok(AttentionShape { batch_heads, q_len: l, kv_len: s, head_dim: d })
}

/// softmax(scale·q·kᵀ)·v for f32 or bf16 tensors ([`fused`]); `q: [..., L, D]`,
/// `k, v: [..., S, D]` (shapes checked by the op).
pub(super) fn forward(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Saved)> {
    let (gpu, ordinal) = gpu_of(OP, q)?;
    let shape = attention_shape(q, k, v)?;
    let (q16, k16, v16) = (operand(q)?, operand(k)?, operand(v)?);
    let mut out = gpu.alloc::<bf16>(shape.q_elems())?;
    let mut lse = gpu.alloc::<f32>(shape.lse_elems())?;
    let scale = scale as f32;
    let (qs, ks, vs) = (q16.cuda_slice::<bf16>(OP)?, k16.cuda_slice::<bf16>(OP)?, v16.cuda_slice::<bf16>(OP)?);
    flash_attention_forward(&gpu, shape, scale, &qs, &ks, &vs, &mut out, &mut lse)?;
    let out16 = wrap(out, q.shape(), ordinal)?;
    let lse = wrap(lse, &[shape.lse_elems()], ordinal)?;
    let y = cast(OP, &out16, q.dtype())?;
    let dtype = q.dtype();
    Ok((y, Saved { q: q16, k: k16, v: v16, out: out16, lse, shape, scale, dtype }))
}

/// dq, dk, dv (in the inputs' dtype) for the upstream gradient `g` of the output.
pub(super) fn backward(g: &Tensor, saved: Saved) -> Result<[Tensor; 3]> {
    let (gpu, ordinal) = gpu_of(OP, g)?;
    let Saved { q, k, v, out, lse, shape, scale, dtype } = saved;
    let g16 = operand(g)?;
    let mut dq = gpu.alloc::<bf16>(shape.q_elems())?;
    let mut dk = gpu.alloc::<bf16>(shape.kv_elems())?;
    let mut dv = gpu.alloc::<bf16>(shape.kv_elems())?;
    {
        let (qs, ks, vs) = (q.cuda_slice::<bf16>(OP)?, k.cuda_slice::<bf16>(OP)?, v.cuda_slice::<bf16>(OP)?);
        let (os, ls, gs) = (out.cuda_slice::<bf16>(OP)?, lse.cuda_slice::<f32>(OP)?, g16.cuda_slice::<bf16>(OP)?);
        let saved = AttentionSaved { q: &qs, k: &ks, v: &vs, out: &os, lse: &ls };
        flash_attention_backward(&gpu, shape, scale, saved, &gs, &mut dq, &mut dk, &mut dv)?;
    }
    let back = |buf, like: &Tensor| cast(OP, &wrap(buf, like.shape(), ordinal)?, dtype);
    Ok([back(dq, &q)?, back(dk, &k)?, back(dv, &v)?])
}
