//! conv2d on the GPU: the implicit-GEMM kernels of `kernels/conv.cu` (launchers in
//! `backend/cuda/kernels/conv.rs`; f32 on the SIMT path, bf16 on tensor cores).
//!
//! The kernels take NHWC activations and KRSC weights. On our side an image tensor is
//! NCHW-*shaped*; on the GPU its memory is normally channels-last (strides
//! [H·W·C, 1, W·C, C]: a permuted view of a row-major [N, H, W, C] buffer), which is what
//! every conv here returns, so a conv fed by another conv (or by the pointwise ops and batch
//! norm between them, which keep the layout) reads its input without a copy. A plain NCHW
//! input — the image batch of the first layer — is copied to NHWC once per use. Weights
//! [K, C, R, S] are permuted to KRSC (a small copy) at every call: they change at every
//! optimiser step, so there is nothing safe to cache.
//!
//! Under bf16 autocast (`ops::autocast`) f32 tensors are cast to bf16 on the way in (after
//! the layout change, so the cast reads row-major data) and the results back to f32; the
//! weight gradient is accumulated in f32 by the kernel either way.

use crate::backend::cpu::conv::ConvGeometry;
use crate::backend::cuda::kernels::conv::{
    conv2d_backward_input, conv2d_backward_weight, conv2d_forward, ConvEpilogue, ConvShape,
};
use crate::error::{Error, Result};
use crate::kernel_dispatch;
use crate::ops::cuda_support::{cast, gpu_of, row_major, wrap};
use crate::tensor::{DType, Tensor};

const OP: &str = "conv2d";

/// Whether an [N, C, H, W] tensor is channels-last in memory (its NHWC permutation is
/// row-major). Tensors with C = 1 or H·W = 1 are both this and plain NCHW.
pub(crate) fn is_channels_last(t: &Tensor) -> bool {
    t.rank() == 4 && t.layout().permute(OP, &[0, 2, 3, 1]).is_ok_and(|l| l.is_contiguous())
}

/// The elements of an [N, C, H, W] device tensor in NHWC order, as a row-major [N, H, W, C]
/// tensor cut from the graph: the tensor's own memory when it is channels-last, else a copy.
/// The same permutation turns a [K, C, R, S] weight into KRSC.
pub(crate) fn to_nhwc(t: &Tensor) -> Result<Tensor> {
    row_major(&t.detach().permute(&[0, 2, 3, 1])?)
}

/// A row-major [N, H, W, C] device tensor seen as the [N, C, H, W] tensor it holds
/// (channels-last strides; no copy).
pub(crate) fn nchw_view(t: &Tensor) -> Result<Tensor> {
    t.permute(&[0, 3, 1, 2])
}

/// The kernels' shape for a geometry; they take one stride and one padding for both axes.
fn conv_shape(g: &ConvGeometry) -> Result<ConvShape> {
    if g.sh != g.sw || g.ph != g.pw {
        return Err(Error::invalid(
            OP,
            format!(
                "the CUDA convolution takes the same stride and padding along both axes, got stride ({}, {}) \
                 and padding ({}, {})",
                g.sh, g.sw, g.ph, g.pw
            ),
        ));
    }
    Ok(ConvShape { n: g.n, h: g.h, w: g.w, c: g.c, k: g.o, r: g.kh, s: g.kw, stride: g.sh, pad: g.ph })
}

/// Zeros of `shape` on the device of `like` (gradients of an empty batch).
fn zeros_on(like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Tensor::zeros(shape, like.dtype())?.to_device(like.device())
}

/// The dtype the kernels run in: bf16 for f32 tensors under autocast, else the tensors' own.
fn compute_dtype(dtype: DType, bf16_autocast: bool) -> DType {
    if bf16_autocast && dtype == DType::F32 {
        DType::BF16
    } else {
        dtype
    }
}

/// Y = conv(X, W) + b: an [N, K, P, Q] tensor with channels-last strides. With
/// `bf16_autocast`, f32 operands are convolved in bf16 (f32 accumulation) and Y is f32.
pub(crate) fn forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
    bf16_autocast: bool,
) -> Result<Tensor> {
    let shape = conv_shape(g)?;
    let (gpu, ordinal) = gpu_of(OP, x)?;
    if g.n == 0 {
        // The kernels need a non-empty batch; an empty one has an empty output.
        return zeros_on(x, &[0, g.o, g.oh, g.ow]);
    }
    let dtype = compute_dtype(x.dtype(), bf16_autocast);
    let (xn, wk) = (cast(OP, &to_nhwc(x)?, dtype)?, cast(OP, &to_nhwc(weight)?, dtype)?);
    // The epilogue adds an f32 bias per output channel.
    let bias = bias.map(|b| cast(OP, &row_major(b)?, DType::F32)).transpose()?;
    let y = kernel_dispatch!(OP, dtype, T => {
        let bias = bias.as_ref().map(|b| b.cuda_slice::<f32>(OP)).transpose()?;
        let epilogue = ConvEpilogue { scale: None, bias: bias.as_deref(), relu: false };
        let mut y = gpu.alloc::<T>(shape.output_len())?;
        conv2d_forward(&gpu, &shape, &*xn.cuda_slice::<T>(OP)?, &*wk.cuda_slice::<T>(OP)?, epilogue, &mut y)?;
        wrap(y, &[g.n, g.oh, g.ow, g.o], ordinal)?
    });
    nchw_view(&cast(OP, &y, x.dtype())?)
}

/// (dX, dW) for the output gradient `dy`, each only if asked for, in the forward's autocast
/// mode. dX comes back channels-last like the forward's output; dW row-major [K, C, R, S]
/// like the weight.
pub(crate) fn backward(
    dy: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    g: &ConvGeometry,
    (need_dx, need_dw): (bool, bool),
    bf16_autocast: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let shape = conv_shape(g)?;
    let (gpu, ordinal) = gpu_of(OP, dy)?;
    if g.n == 0 {
        let dx = need_dx.then(|| zeros_on(x, x.shape())).transpose()?;
        let dw = need_dw.then(|| zeros_on(weight, weight.shape())).transpose()?;
        return Ok((dx, dw));
    }
    let dtype = compute_dtype(dy.dtype(), bf16_autocast);
    let dy_nhwc = cast(OP, &to_nhwc(dy)?, dtype)?;
    kernel_dispatch!(OP, dtype, T => {
        let dyd = dy_nhwc.cuda_slice::<T>(OP)?;
        let dx = if need_dx {
            let wk = cast(OP, &to_nhwc(weight)?, dtype)?;
            let mut dx = gpu.alloc::<T>(shape.input_len())?;
            conv2d_backward_input(&gpu, &shape, &dyd, &*wk.cuda_slice::<T>(OP)?, &mut dx)?;
            let dx = wrap(dx, &[g.n, g.h, g.w, g.c], ordinal)?;
            Some(nchw_view(&cast(OP, &dx, dy.dtype())?)?)
        } else {
            None
        };
        let dw = if need_dw {
            let xn = cast(OP, &to_nhwc(x)?, dtype)?;
            // The kernel accumulates dW in f32 (split-K atomics), whatever the activations are.
            let mut dw = gpu.alloc::<f32>(shape.weight_len())?;
            conv2d_backward_weight(&gpu, &shape, &*xn.cuda_slice::<T>(OP)?, &dyd, &mut dw)?;
            // KRSC back to the weight's row-major [K, C, R, S], for the optimiser.
            let krsc = wrap(dw, &[g.o, g.kh, g.kw, g.c], ordinal)?;
            Some(cast(OP, &row_major(&nchw_view(&krsc)?)?, weight.dtype())?)
        } else {
            None
        };
        Ok((dx, dw))
    })
}
