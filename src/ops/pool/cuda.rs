//! Pooling on the GPU (`kernels/pool.cu`, launchers in `backend/cuda/kernels/pool.rs`).
//!
//! The kernels read NHWC. A channels-last input (what a device conv returns) is handed over
//! as it is; a row-major NCHW input is too, as an NHWC batch of N·C one-channel images,
//! which is the same memory. Either way nothing is copied, and the output and the input
//! gradient keep the input's layout. Only other strided views are made row-major first.

use crate::backend::cuda::kernels::pool::{
    global_avg_pool2d_backward, global_avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward, MaxPoolShape,
};
use crate::backend::cuda::DeviceBuffer;
use crate::error::{Error, Result};
use crate::kernel_dispatch;
use crate::ops::conv2d::cuda::{is_channels_last, nchw_view, to_nhwc};
use crate::ops::cuda_support::{gpu_of, row_major, wrap};
use crate::tensor::Tensor;

/// How an [N, C, H, W] tensor's memory is given to the NHWC kernels.
#[derive(Clone, Copy, Debug)]
struct Planes {
    channels_last: bool,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl Planes {
    fn of(x: &Tensor) -> Planes {
        let s = x.shape();
        // Row-major wins where a tensor is both (C = 1 or H·W = 1): it needs no permutation.
        Planes { channels_last: !x.is_contiguous() && is_channels_last(x), n: s[0], c: s[1], h: s[2], w: s[3] }
    }

    /// `t` ([N, C, ·, ·]) as the kernels read it: row-major NHWC, or row-major NCHW.
    fn kernel_input(&self, t: &Tensor) -> Result<Tensor> {
        if self.channels_last {
            to_nhwc(t)
        } else {
            row_major(t)
        }
    }

    /// Images and channels the kernels see: (N, C) for NHWC, (N·C, 1) for NCHW.
    fn kernel_images(&self) -> (usize, usize) {
        if self.channels_last {
            (self.n, self.c)
        } else {
            (self.n * self.c, 1)
        }
    }

    /// A kernel result of `hw` pixels per image back as an [N, C, h, w] tensor.
    fn output(&self, buf: Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        if self.channels_last {
            nchw_view(&buf.reshape(&[self.n, h, w, self.c])?)
        } else {
            buf.reshape(&[self.n, self.c, h, w])
        }
    }
}

/// What the max-pool backward needs: the winner of every window and the layout it was
/// computed in.
pub(crate) struct MaxPoolSaved {
    argmax: DeviceBuffer<i32>,
    shape: MaxPoolShape,
    planes: Planes,
}

/// Max pooling over `kernel` windows; (output, what the backward needs).
pub(crate) fn max_pool2d(
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<(Tensor, MaxPoolSaved)> {
    const OP: &str = "max_pool2d";
    if stride.0 != stride.1 || padding.0 != padding.1 {
        return Err(Error::invalid(
            OP,
            format!("the CUDA max pooling takes one stride and one padding for both axes, got {stride:?}, {padding:?}"),
        ));
    }
    let (gpu, ordinal) = gpu_of(OP, x)?;
    let planes = Planes::of(x);
    let (n, c) = planes.kernel_images();
    let shape =
        MaxPoolShape { n, h: planes.h, w: planes.w, c, kh: kernel.0, kw: kernel.1, stride: stride.0, pad: padding.0 };
    let mut argmax = gpu.alloc::<i32>(shape.output_len())?;
    if shape.output_len() == 0 {
        // No images or no channels: the kernels take non-empty inputs, and there is nothing to pool.
        let out = zeros_on(x, &[planes.n, planes.c, shape.oh(), shape.ow()])?;
        return Ok((out, MaxPoolSaved { argmax, shape, planes }));
    }
    let xk = planes.kernel_input(x)?;
    let y = kernel_dispatch!(OP, x.dtype(), T => {
        let mut y = gpu.alloc::<T>(shape.output_len())?;
        max_pool2d_forward(&gpu, &shape, &*xk.cuda_slice::<T>(OP)?, &mut y, &mut argmax)?;
        wrap(y, &[shape.output_len()], ordinal)?
    });
    let out = planes.output(y, (shape.oh(), shape.ow()))?;
    Ok((out, MaxPoolSaved { argmax, shape, planes }))
}

/// dX of max pooling: each input element gets the gradients of the windows it won.
pub(crate) fn max_pool2d_grad(dy: &Tensor, saved: &MaxPoolSaved) -> Result<Tensor> {
    const OP: &str = "max_pool2d";
    let (gpu, ordinal) = gpu_of(OP, dy)?;
    let (shape, planes) = (&saved.shape, &saved.planes);
    if shape.input_len() == 0 {
        return zeros_on(dy, &[planes.n, planes.c, planes.h, planes.w]);
    }
    let dyk = planes.kernel_input(dy)?;
    let dx = kernel_dispatch!(OP, dy.dtype(), T => {
        let mut dx = gpu.alloc::<T>(shape.input_len())?;
        max_pool2d_backward(&gpu, shape, &*dyk.cuda_slice::<T>(OP)?, &saved.argmax, &mut dx)?;
        wrap(dx, &[shape.input_len()], ordinal)?
    });
    planes.output(dx, (planes.h, planes.w))
}

/// What the global-average-pool backward needs: the input's geometry and layout.
pub(crate) struct AvgPoolSaved {
    planes: Planes,
}

/// Mean over each image's pixels: [N, C, H, W] → [N, C, 1, 1]; (output, what the backward needs).
pub(crate) fn global_avg_pool2d(x: &Tensor) -> Result<(Tensor, AvgPoolSaved)> {
    const OP: &str = "adaptive_avg_pool2d";
    let (gpu, ordinal) = gpu_of(OP, x)?;
    let planes = Planes::of(x);
    let (n, c) = planes.kernel_images();
    if n * c == 0 {
        return Ok((zeros_on(x, &[planes.n, planes.c, 1, 1])?, AvgPoolSaved { planes }));
    }
    let xk = planes.kernel_input(x)?;
    let out = kernel_dispatch!(OP, x.dtype(), T => {
        let mut y = gpu.alloc::<T>(n * c)?;
        global_avg_pool2d_forward(&gpu, &*xk.cuda_slice::<T>(OP)?, &mut y, n, planes.h * planes.w, c)?;
        // One pixel per image: [N, C, 1, 1] is the same memory in either layout.
        wrap(y, &[planes.n, planes.c, 1, 1], ordinal)?
    });
    Ok((out, AvgPoolSaved { planes }))
}

/// dX of the global mean: dy/(H·W) on every pixel, in the layout the forward's input had.
pub(crate) fn global_avg_pool2d_grad(dy: &Tensor, saved: &AvgPoolSaved) -> Result<Tensor> {
    const OP: &str = "adaptive_avg_pool2d";
    let (gpu, ordinal) = gpu_of(OP, dy)?;
    let planes = &saved.planes;
    let (n, c) = planes.kernel_images();
    if n * c == 0 {
        return zeros_on(dy, &[planes.n, planes.c, planes.h, planes.w]);
    }
    let hw = planes.h * planes.w;
    let dy = row_major(dy)?;
    let dx = kernel_dispatch!(OP, dy.dtype(), T => {
        let mut dx = gpu.alloc::<T>(n * hw * c)?;
        global_avg_pool2d_backward(&gpu, &*dy.cuda_slice::<T>(OP)?, &mut dx, n, hw, c)?;
        wrap(dx, &[n * hw * c], ordinal)?
    });
    planes.output(dx, (planes.h, planes.w))
}

/// Zeros of `shape` on the device of `like` (results for empty inputs).
fn zeros_on(like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Tensor::zeros(shape, like.dtype())?.to_device(like.device())
}
