//! conv2d: NCHW input, [O, C, kh, kw] weight (PyTorch's layout), optional bias.
//!
//! Forward, per image n (see `backend/cpu/conv.rs` for im2col):
//!   Y[n] = W · cols(X[n]) + b            W: [O, K], cols: [K, P], K = C·kh·kw, P = OH·OW
//! Backward follows from that one matrix product:
//!   dW = Σ_n dY[n] · cols(X[n])ᵀ          (each weight meets every output pixel)
//!   dX[n] = col2im(Wᵀ · dY[n])            (each input pixel fed several columns;
//!                                          col2im adds their gradients back)
//!   db = Σ_{n, pixels} dY
//! Backward recomputes cols from X instead of saving them (K·P per image is
//! kh·kw times the input), and skips dX when the input needs no gradient —
//! the first layer, whose input is data.
//!
//! On a GPU (`conv2d/cuda.rs`) the same three products run as implicit GEMMs over
//! channels-last (NHWC) activations; outputs and input gradients come back as NCHW-shaped
//! views of NHWC memory.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use super::autocast::{self, cpu_gemm_precision};
use super::{placement, Placement};
use crate::autograd::record;
use crate::backend::cpu::conv::{conv2d_backward_input, conv2d_backward_weight, conv2d_forward, ConvGeometry};
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::Tensor;

fn geometry(x: &Tensor, w: &Tensor, stride: (usize, usize), padding: (usize, usize)) -> Result<ConvGeometry> {
    const OP: &str = "conv2d";
    if x.rank() != 4 {
        return Err(Error::shape(OP, format!("input must be [N, C, H, W], got {:?}", x.shape())));
    }
    if w.rank() != 4 {
        return Err(Error::shape(OP, format!("weight must be [O, C, kh, kw], got {:?}", w.shape())));
    }
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, wc, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    if wc != c {
        return Err(Error::shape(OP, format!("input has {c} channels, weight {:?} expects {wc}", w.shape())));
    }
    // An empty channel axis or image leaves the im2col matrix with no rows or
    // columns to build; an empty batch is fine (an empty output).
    if c == 0 || o == 0 || h == 0 || wd == 0 {
        return Err(Error::shape(
            OP,
            format!("needs non-empty channels and images, got input {:?} and weight {:?}", x.shape(), w.shape()),
        ));
    }
    if stride.0 == 0 || stride.1 == 0 {
        return Err(Error::invalid(OP, format!("stride must be >= 1, got {stride:?}")));
    }
    if kh == 0 || kw == 0 || kh > h + 2 * padding.0 || kw > wd + 2 * padding.1 {
        return Err(Error::shape(
            OP,
            format!("kernel {kh}x{kw} does not fit the padded input {}x{}", h + 2 * padding.0, wd + 2 * padding.1),
        ));
    }
    Ok(ConvGeometry::new(n, c, (h, wd), o, (kh, kw), stride, padding))
}

/// 2-D cross-correlation (what deep learning calls convolution).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let g = geometry(x, weight, stride, padding)?;
    if weight.dtype() != x.dtype() {
        return Err(Error::dtype(OP, format!("input is {}, weight is {}", x.dtype(), weight.dtype())));
    }
    if let Some(b) = bias {
        if b.shape() != [g.o] {
            return Err(Error::shape(
                OP,
                format!("bias must be [{}] (one per output channel), got {:?}", g.o, b.shape()),
            ));
        }
        if b.dtype() != x.dtype() {
            return Err(Error::dtype(OP, format!("input is {}, bias is {}", x.dtype(), b.dtype())));
        }
    }
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    // Under autocast the GEMMs multiply in bf16 (tensor cores, or AVX512-BF16 on the CPU);
    // the backward uses the forward's mode.
    let bf16 = autocast::is_autocast_enabled();
    let out = match placement(OP, &inputs)? {
        Placement::Cpu => float_dispatch!(OP, x.dtype(), T => {
            let precision = cpu_gemm_precision(OP, bf16, x.dtype())?;
            let (xd, wd) = (x.host_data::<T>()?, weight.host_data::<T>()?);
            let bd = bias.map(|b| b.host_data::<T>()).transpose()?;
            Tensor::from_vec(conv2d_forward::<T>(&xd, &wd, bd.as_deref(), &g, precision), &[g.n, g.o, g.oh, g.ow])?
        }),
        #[cfg(feature = "cuda")]
        Placement::Cuda => cuda::forward(x, weight, bias, &g, bf16)?,
    };
    let (xs, ws) = (x.detach(), weight.detach());
    Ok(record(OP, &inputs, out, move |dy, needs| {
        let (dx, dw) = match placement(OP, &[dy])? {
            Placement::Cpu => float_dispatch!(OP, dy.dtype(), T => {
                let precision = cpu_gemm_precision(OP, bf16, dy.dtype())?;
                let dyd = dy.host_data::<T>()?;
                let dx = if needs[0] {
                    let wd = ws.host_data::<T>()?;
                    Some(Tensor::from_vec(conv2d_backward_input::<T>(&dyd, &wd, &g, precision), xs.shape())?)
                } else {
                    None
                };
                let dw = if needs[1] {
                    let xd = xs.host_data::<T>()?;
                    Some(Tensor::from_vec(conv2d_backward_weight::<T>(&xd, &dyd, &g, precision), ws.shape())?)
                } else {
                    None
                };
                (dx, dw)
            }),
            #[cfg(feature = "cuda")]
            Placement::Cuda => cuda::backward(dy, &xs, &ws, &g, (needs[0], needs[1]), bf16)?,
        };
        let mut grads = vec![dx, dw];
        if needs.len() == 3 {
            grads.push(if needs[2] { Some(dy.sum(&[0, 2, 3], false)?) } else { None });
        }
        Ok(grads)
    }))
}
