//! Shape ops on the GPU: views cost nothing anywhere; only materialising one does.
//!
//! Copies that only move elements (`cat`, narrow's backward, `index_select`, `gather`) use the
//! bit-copying kernels of kernels/elementwise.cu, so they work for every dtype; the gradients
//! that add (index_select's and gather's) are f32/bf16 and sum in a fixed order, like the CPU.

use crate::any_dispatch;
use crate::backend::cuda::kernels::elementwise as k;
use crate::error::{Error, Result};
use crate::kernel_dispatch;
use crate::ops::cuda_support::{cast, gpu_of, row_major, strided_slice, wrap};
use crate::tensor::layout::{contiguous_strides, numel, Layout};
use crate::tensor::{DType, Tensor};

/// A row-major copy of a (possibly strided) device tensor.
pub(super) fn contiguous_copy(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "contiguous";
    let (gpu, ordinal) = gpu_of(OP, x)?;
    let n = x.numel();
    let out_strides = contiguous_strides(x.shape());
    let fits = merged_rank(x.shape(), x.strides(), &out_strides) <= k::MAX_DIMS;
    if fits && matches!(x.dtype(), DType::F32 | DType::BF16) {
        // The float copy kernel reads 16-byte packs where it can.
        return kernel_dispatch!(OP, x.dtype(), T => {
            let mut y = gpu.alloc::<T>(n)?;
            if n > 0 {
                k::copy_strided(&gpu, &*strided_slice::<T>(OP, x)?, x.strides(), x.shape(), &mut y)?;
            }
            wrap(y, x.shape(), ordinal)
        });
    }
    // Other dtypes, and views of more dims than the kernels index: the bit-copying kernel.
    any_dispatch!(x.dtype(), T => {
        let mut y = gpu.alloc::<T>(n)?;
        if n > 0 {
            copy_any_rank(&gpu, &*strided_slice::<T>(OP, x)?, x.strides(), x.shape(), &mut y, 0, &out_strides)?;
        }
        wrap(y, x.shape(), ordinal)
    })
}

/// How many dims a copy between these two strided views has once size-1 dims are dropped and
/// neighbours that both views traverse contiguously are merged (what the kernels index).
fn merged_rank(shape: &[usize], x_strides: &[usize], y_strides: &[usize]) -> usize {
    let mut rank = 0;
    let mut outer: Option<usize> = None;
    for i in (0..shape.len()).filter(|&i| shape[i] != 1) {
        let merges =
            outer.is_some_and(|o| x_strides[o] == x_strides[i] * shape[i] && y_strides[o] == y_strides[i] * shape[i]);
        if !merges {
            rank += 1;
        }
        outer = Some(i);
    }
    rank
}

/// [`k::copy_view`] for any rank: a copy with more dims than the kernel indexes (a ViViT
/// tubelet permute has 7) is split along its first axis, one launch per index, until it fits.
fn copy_any_rank<T: crate::backend::cuda::DeviceElement>(
    gpu: &crate::backend::cuda::Gpu,
    x: &crate::backend::cuda::DeviceBuffer<T>,
    x_strides: &[usize],
    shape: &[usize],
    y: &mut crate::backend::cuda::DeviceBuffer<T>,
    y_offset: usize,
    y_strides: &[usize],
) -> Result<()> {
    if merged_rank(shape, x_strides, y_strides) <= k::MAX_DIMS {
        return k::copy_view(gpu, x, x_strides, shape, y, y_offset, y_strides);
    }
    for i in 0..shape[0] {
        let start = i * x_strides[0];
        let part = x.alias(start, x.len() - start);
        copy_any_rank(gpu, &part, &x_strides[1..], &shape[1..], y, y_offset + i * y_strides[0], &y_strides[1..])?;
    }
    Ok(())
}

/// Joins device tensors along `axis` into `shape` (checked by the caller): each input, view or
/// not, is copied straight into its slab of the output, one launch per input.
pub(super) fn cat(tensors: &[&Tensor], axis: usize, shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "cat";
    let (gpu, ordinal) = gpu_of(OP, tensors[0])?;
    let out_strides = contiguous_strides(shape);
    any_dispatch!(tensors[0].dtype(), T => {
        let mut y = gpu.alloc::<T>(numel(shape))?;
        let mut start = 0;
        for t in tensors {
            if t.numel() > 0 {
                let src = strided_slice::<T>(OP, t)?;
                k::copy_view(&gpu, &src, t.strides(), t.shape(), &mut y, start * out_strides[axis], &out_strides)?;
            }
            start += t.shape()[axis];
        }
        wrap(y, shape, ordinal)
    })
}

/// A zero tensor of `shape` with `src` (shaped like `view`) written at the positions `view`
/// addresses: narrow's backward. `view` must not repeat positions (a narrow never does).
pub(super) fn scatter_into_zeros(src: &Tensor, shape: &[usize], view: &Layout) -> Result<Tensor> {
    const OP: &str = "narrow";
    let (gpu, ordinal) = gpu_of(OP, src)?;
    any_dispatch!(src.dtype(), T => {
        let mut y = gpu.zeros::<T>(numel(shape))?;
        if src.numel() > 0 {
            let s = strided_slice::<T>(OP, src)?;
            k::copy_view(&gpu, &s, src.strides(), src.shape(), &mut y, view.offset, &view.strides)?;
        }
        wrap(y, shape, ordinal)
    })
}

/// (outer, size, inner): `shape` seen as [axes before `axis`, `axis`, axes after].
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// The indices as a device i64 buffer next to `like`.
fn upload_indices(
    op: &'static str,
    like: &Tensor,
    indices: &[usize],
) -> Result<crate::backend::cuda::DeviceBuffer<i64>> {
    let (gpu, _) = gpu_of(op, like)?;
    let v: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    gpu.upload(&v)
}

/// `x.index_select(axis, indices)` on the device (indices checked by the caller): one gather
/// kernel over the row-major input.
pub(super) fn index_select(x: &Tensor, axis: usize, indices: &[usize]) -> Result<Tensor> {
    const OP: &str = "index_select";
    let (gpu, ordinal) = gpu_of(OP, x)?;
    let x = row_major(x)?;
    let (outer, size, inner) = split_at_axis(x.shape(), axis);
    let mut shape = x.shape().to_vec();
    shape[axis] = indices.len();
    let idx = upload_indices(OP, &x, indices)?;
    any_dispatch!(x.dtype(), T => {
        let mut y = gpu.alloc::<T>(numel(&shape))?;
        k::index_select(&gpu, &*x.cuda_slice::<T>(OP)?, &idx, (outer, size, inner), &mut y)?;
        wrap(y, &shape, ordinal)
    })
}

/// The gradient of `index_select`: each input slab receives the sum of the gradients of the
/// output slabs that selected it, in output order (the CPU's order). The inverse of the index
/// list is built here, on the host, where the indices already are.
pub(super) fn index_select_backward(g: &Tensor, axis: usize, indices: &[usize], in_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "index_select";
    let (gpu, ordinal) = gpu_of(OP, g)?;
    let g = row_major(g)?;
    let (outer, size, inner) = split_at_axis(in_shape, axis);
    // CSR of the inverse: rows[offsets[s]..offsets[s + 1]] = the j with indices[j] = s, ascending.
    let mut offsets = vec![0i64; size + 1];
    for &s in indices {
        offsets[s + 1] += 1;
    }
    for s in 0..size {
        offsets[s + 1] += offsets[s];
    }
    let mut fill = offsets.clone();
    let mut rows = vec![0i64; indices.len()];
    for (j, &s) in indices.iter().enumerate() {
        rows[fill[s] as usize] = j as i64;
        fill[s] += 1;
    }
    let (offsets, rows) = (gpu.upload(&offsets)?, gpu.upload(&rows)?);
    kernel_dispatch!(OP, g.dtype(), T => {
        let mut dx = gpu.alloc::<T>(numel(in_shape))?;
        k::index_add(&gpu, &*g.cuda_slice::<T>(OP)?, &offsets, &rows, (outer, size, inner), &mut dx)?;
        wrap(dx, in_shape, ordinal)
    })
}

/// The indices of a device `gather`, downloaded once to check their range: an index outside
/// the axis would make the kernel read outside the input, and the check must fail here, with
/// the offending value, rather than on the GPU. (This waits for the GPU; gather is not on the
/// training path.)
pub(crate) fn check_gather_index(index: &Tensor, size: usize) -> Result<Tensor> {
    const OP: &str = "gather";
    let index = row_major(index)?;
    let host = index.to_device(crate::backend::Device::Cpu)?;
    let idx = host.host_data::<i64>()?;
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= size) {
        return Err(Error::index(OP, format!("index {bad} out of range for an axis of size {size}")));
    }
    Ok(index)
}

/// `x.gather(axis, index)` on the device; `index` row-major and range-checked
/// ([`check_gather_index`]). `x` is read through its strides.
pub(crate) fn gather(x: &Tensor, axis: usize, index: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather";
    let (gpu, ordinal) = gpu_of(OP, x)?;
    let out_shape = index.shape().to_vec();
    let idx = index.cuda_slice::<i64>(OP)?;
    any_dispatch!(x.dtype(), T => {
        let mut y = gpu.alloc::<T>(numel(&out_shape))?;
        if !y.is_empty() {
            let xs = strided_slice::<T>(OP, x)?;
            k::gather(&gpu, &xs, x.shape(), x.strides(), &idx, &out_shape, axis, &mut y)?;
        }
        wrap(y, &out_shape, ordinal)
    })
}

/// The gradient of `gather`: the sum, at every input position, of the gradients of the output
/// elements gathered from it (in index order, no atomics).
pub(crate) fn gather_backward(g: &Tensor, axis: usize, index: &Tensor, in_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "gather";
    let (gpu, ordinal) = gpu_of(OP, g)?;
    let g = row_major(g)?;
    let idx = index.cuda_slice::<i64>(OP)?;
    kernel_dispatch!(OP, g.dtype(), T => {
        let mut dx = gpu.alloc::<T>(numel(in_shape))?;
        k::gather_backward(&gpu, &*g.cuda_slice::<T>(OP)?, &idx, g.shape(), in_shape, axis, &mut dx)?;
        wrap(dx, in_shape, ordinal)
    })
}

/// `x` converted to `dtype` on the device: f32 ↔ bf16 only (the kernels' two storage types).
pub(super) fn to_dtype(x: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "to_dtype";
    match (x.dtype(), dtype) {
        (DType::F32, DType::BF16) | (DType::BF16, DType::F32) => cast(OP, x, dtype),
        (from, to) => Err(Error::Device {
            op: OP,
            msg: format!(
                "CUDA tensors convert between f32 and bf16 only, not {from} to {to}; convert on the CPU \
                 (to_device(Device::Cpu))"
            ),
        }),
    }
}
