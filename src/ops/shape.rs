//! Shape and view ops: reshape, permute/transpose, narrow, broadcast, concat,
//! stack, index_select, gather, dtype casts.
//!
//! Views (permute, narrow, broadcast, reshape of a contiguous tensor) share
//! storage and copy nothing. Their backward ops undo the view: permute by the
//! inverse permutation, narrow by padding with zeros, broadcast by summing.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use crate::any_dispatch;
use crate::autograd::record;
use crate::backend::cpu::elementwise::element_offsets;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::layout::{numel, Layout};
use crate::tensor::{DType, Element, StorageElement, Tensor};

use super::elementwise::sum_to_shape;
use super::{placement, Placement};

/// Writes `src` (row-major, shaped like `view`) into a zero tensor of `shape`
/// at the positions `view` addresses. The backward of every "select" op.
fn scatter_into_zeros<T: StorageElement + std::ops::AddAssign>(
    src: &Tensor,
    shape: &[usize],
    view: &Layout,
) -> Result<Tensor> {
    let mut out = vec![T::default(); numel(shape)];
    let data = src.host_data::<T>()?;
    for (v, off) in data.iter().zip(element_offsets(view)) {
        out[off] += *v; // += so repeated positions (index_select duplicates) accumulate
    }
    Tensor::from_vec(out, shape)
}

impl Tensor {
    /// The same elements with a new shape (a view when the tensor is contiguous).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) to {shape:?} ({} elements)",
                    self.shape(),
                    self.numel(),
                    numel(shape)
                ),
            ));
        }
        let base = if self.is_contiguous() { self.detach() } else { self.contiguous_copy()? };
        let mut l = Layout::contiguous(shape);
        l.offset = base.layout().offset;
        let out = base.view_with_layout(l);
        let in_shape = self.shape().to_vec();
        Ok(record("reshape", &[self], out, move |g, _| Ok(vec![Some(g.reshape(&in_shape)?)])))
    }

    /// Flattens axes `start..` into one (e.g. [B, C, H, W] → [B, C·H·W] with start = 1).
    pub fn flatten_from(&self, start: usize) -> Result<Tensor> {
        if start > self.rank() {
            return Err(Error::index("flatten_from", format!("axis {start} beyond rank {}", self.rank())));
        }
        let mut shape = self.shape()[..start].to_vec();
        shape.push(self.shape()[start..].iter().product());
        self.reshape(&shape)
    }

    /// Inserts a size-1 axis at `axis` (0..=rank).
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        if axis > self.rank() {
            return Err(Error::index("unsqueeze", format!("axis {axis} beyond rank {}", self.rank())));
        }
        let mut shape = self.shape().to_vec();
        shape.insert(axis, 1);
        self.reshape(&shape)
    }

    /// Removes a size-1 axis.
    pub fn squeeze(&self, axis: usize) -> Result<Tensor> {
        if axis >= self.rank() || self.shape()[axis] != 1 {
            return Err(Error::shape("squeeze", format!("axis {axis} of {:?} is not of size 1", self.shape())));
        }
        let mut shape = self.shape().to_vec();
        shape.remove(axis);
        self.reshape(&shape)
    }

    /// Reorders axes: output axis i is input axis `perm[i]`. A view.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let out = self.view_with_layout(self.layout().permute("permute", perm)?);
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(record("permute", &[self], out, move |g, _| Ok(vec![Some(g.permute(&inverse)?)])))
    }

    /// Swaps two axes (composite: a permute).
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let r = self.rank();
        if a >= r || b >= r {
            return Err(Error::index("transpose", format!("axes ({a}, {b}) out of range for rank {r}")));
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of the last two axes (matrices, batched).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::shape("t", format!("needs rank >= 2, got {:?}", self.shape())));
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// `len` elements of axis `axis` starting at `start`. A view.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let view = self.layout().narrow("narrow", axis, start, len)?;
        let out = self.view_with_layout(view);
        let in_shape = self.shape().to_vec();
        Ok(record("narrow", &[self], out, move |g, _| {
            let target = Layout::contiguous(&in_shape).narrow("narrow", axis, start, len)?;
            let gi = match placement("narrow", &[g])? {
                Placement::Cpu => {
                    float_dispatch!("narrow", g.dtype(), T => scatter_into_zeros::<T>(g, &in_shape, &target)?)
                }
                #[cfg(feature = "cuda")]
                Placement::Cuda => cuda::scatter_into_zeros(g, &in_shape, &target)?,
            };
            Ok(vec![Some(gi)])
        }))
    }

    /// Repeats size-1 axes (and prepends axes) to reach `shape`. A view.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let out = self.view_with_layout(self.layout().broadcast_to("broadcast_to", shape)?);
        let in_shape = self.shape().to_vec();
        Ok(record("broadcast_to", &[self], out, move |g, _| Ok(vec![Some(sum_to_shape(g, &in_shape)?)])))
    }

    /// A row-major copy, without touching the graph.
    pub(crate) fn contiguous_copy(&self) -> Result<Tensor> {
        match self.device() {
            Device::Cpu => Ok(Tensor::from_parts(self.contiguous_storage()?, Layout::contiguous(self.shape()))),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => cuda::contiguous_copy(self),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::Device { op: "contiguous", msg: "this build has no CUDA backend".into() }),
        }
    }

    /// Row-major layout: the tensor itself if it already is, otherwise a copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = self.contiguous_copy()?;
        Ok(record("contiguous", &[self], out, |g, _| Ok(vec![Some(g.clone())])))
    }

    /// Joins tensors along `axis`; all other axes must match.
    pub fn cat(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        const OP: &str = "cat";
        let first = tensors.first().ok_or_else(|| Error::invalid(OP, "needs at least one tensor"))?;
        let rank = first.rank();
        if axis >= rank {
            return Err(Error::index(OP, format!("axis {axis} out of range for rank {rank}")));
        }
        for t in tensors {
            if t.dtype() != first.dtype() {
                return Err(Error::dtype(OP, format!("mixed dtypes {} and {}", first.dtype(), t.dtype())));
            }
            let same = t.rank() == rank && (0..rank).all(|a| a == axis || t.shape()[a] == first.shape()[a]);
            if !same {
                return Err(Error::shape(
                    OP,
                    format!("{:?} does not fit {:?} along axis {axis}", t.shape(), first.shape()),
                ));
            }
        }
        let sizes: Vec<usize> = tensors.iter().map(|t| t.shape()[axis]).collect();
        let mut shape = first.shape().to_vec();
        shape[axis] = sizes.iter().sum();
        let out = match placement(OP, tensors)? {
            Placement::Cpu => {
                // Copy each input into its slab: outer = product of axes before `axis`.
                let outer: usize = shape[..axis].iter().product();
                let inner: usize = shape[axis + 1..].iter().product();
                any_dispatch!(first.dtype(), T => {
                    let datas: Vec<_> = tensors.iter().map(|t| t.host_data::<T>()).collect::<Result<_>>()?;
                    let mut out: Vec<T> = Vec::with_capacity(numel(&shape));
                    for o in 0..outer {
                        for (d, &s) in datas.iter().zip(&sizes) {
                            out.extend_from_slice(&d[o * s * inner..(o + 1) * s * inner]);
                        }
                    }
                    Tensor::from_vec(out, &shape)?
                })
            }
            #[cfg(feature = "cuda")]
            Placement::Cuda => cuda::cat(tensors, axis, &shape)?,
        };
        Ok(record(OP, tensors, out, move |g, needs| {
            let mut start = 0;
            let mut grads = Vec::with_capacity(sizes.len());
            for (&s, &need) in sizes.iter().zip(needs) {
                grads.push(if need { Some(g.narrow(axis, start, s)?.contiguous()?) } else { None });
                start += s;
            }
            Ok(grads)
        }))
    }

    /// Stacks same-shaped tensors along a new axis (composite: unsqueeze + cat).
    pub fn stack(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        let expanded: Vec<Tensor> = tensors.iter().map(|t| t.unsqueeze(axis)).collect::<Result<_>>()?;
        if let Some(f) = tensors.first() {
            if tensors.iter().any(|t| t.shape() != f.shape()) {
                return Err(Error::shape("stack", "all tensors must have the same shape"));
            }
        }
        let refs: Vec<&Tensor> = expanded.iter().collect();
        Tensor::cat(&refs, axis)
    }

    /// Picks entries `indices` along `axis` (repeats allowed).
    pub fn index_select(&self, axis: usize, indices: &[usize]) -> Result<Tensor> {
        const OP: &str = "index_select";
        if axis >= self.rank() {
            return Err(Error::index(OP, format!("axis {axis} out of range for rank {}", self.rank())));
        }
        let size = self.shape()[axis];
        if let Some(&bad) = indices.iter().find(|&&i| i >= size) {
            return Err(Error::index(OP, format!("index {bad} out of range for axis {axis} of size {size}")));
        }
        #[cfg(feature = "cuda")]
        if placement(OP, &[self])? == Placement::Cuda {
            let out = cuda::index_select(self, axis, indices)?;
            let (in_shape, idx) = (self.shape().to_vec(), indices.to_vec());
            return Ok(record(OP, &[self], out, move |g, _| {
                Ok(vec![Some(cuda::index_select_backward(g, axis, &idx, &in_shape)?)])
            }));
        }
        let parts: Vec<Tensor> = indices.iter().map(|&i| self.detach().narrow(axis, i, 1)).collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        let out = if refs.is_empty() {
            let mut shape = self.shape().to_vec();
            shape[axis] = 0;
            Tensor::zeros(&shape, self.dtype())?
        } else {
            crate::autograd::no_grad(|| Tensor::cat(&refs, axis))?
        };
        let (in_shape, idx) = (self.shape().to_vec(), indices.to_vec());
        Ok(record(OP, &[self], out, move |g, _| {
            // Each selected slab's gradient adds into the slab it came from.
            let mut acc = Tensor::zeros(&in_shape, g.dtype())?;
            let outer: usize = in_shape[..axis].iter().product();
            let inner: usize = in_shape[axis + 1..].iter().product();
            let gi = float_dispatch!(OP, g.dtype(), T => {
                let gd = g.host_data::<T>()?;
                let mut a = acc.to_vec::<T>()?;
                let k = idx.len();
                for o in 0..outer {
                    for (j, &src) in idx.iter().enumerate() {
                        for e in 0..inner {
                            a[(o * size + src) * inner + e] += gd[(o * k + j) * inner + e];
                        }
                    }
                }
                Tensor::from_vec(a, &in_shape)?
            });
            acc = gi;
            Ok(vec![Some(acc)])
        }))
    }

    /// `out[..., j, ...] = self[..., index[..., j, ...], ...]` along `axis`, as
    /// `torch.gather`: `index` is i64 with the same rank; other axes of `index`
    /// must not exceed `self`'s.
    pub fn gather(&self, axis: usize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        if index.dtype() != DType::I64 {
            return Err(Error::dtype(OP, format!("index must be i64, got {}", index.dtype())));
        }
        if axis >= self.rank() || index.rank() != self.rank() {
            return Err(Error::shape(
                OP,
                format!("index {:?} vs input {:?} at axis {axis}", index.shape(), self.shape()),
            ));
        }
        for a in 0..self.rank() {
            if a != axis && index.shape()[a] > self.shape()[a] {
                return Err(Error::shape(
                    OP,
                    format!("index {:?} larger than input {:?} off axis {axis}", index.shape(), self.shape()),
                ));
            }
        }
        #[cfg(feature = "cuda")]
        if placement(OP, &[self, index])? == Placement::Cuda {
            let index = cuda::check_gather_index(index, self.shape()[axis])?;
            let out = cuda::gather(self, axis, &index)?;
            let in_shape = self.shape().to_vec();
            return Ok(record(OP, &[self], out, move |g, _| {
                Ok(vec![Some(cuda::gather_backward(g, axis, &index, &in_shape)?)])
            }));
        }
        let idx = index.to_vec::<i64>()?;
        let size = self.shape()[axis] as i64;
        if let Some(bad) = idx.iter().find(|&&i| i < 0 || i >= size) {
            return Err(Error::index(OP, format!("index {bad} out of range for axis {axis} of size {size}")));
        }
        // Storage offset (in a contiguous copy of self) of every output element.
        let in_strides = crate::tensor::layout::contiguous_strides(self.shape());
        let out_shape = index.shape().to_vec();
        let positions: Vec<usize> = {
            let out_strides = crate::tensor::layout::contiguous_strides(&out_shape);
            (0..idx.len())
                .map(|flat| {
                    let mut off = 0;
                    for a in 0..out_shape.len() {
                        let coord = (flat / out_strides[a]) % out_shape[a];
                        off += if a == axis { idx[flat] as usize } else { coord } * in_strides[a];
                    }
                    off
                })
                .collect()
        };
        let out = any_dispatch!(self.dtype(), T => {
            let d = self.host_data::<T>()?;
            Tensor::from_vec(positions.iter().map(|&p| d[p]).collect::<Vec<T>>(), &out_shape)?
        });
        let in_shape = self.shape().to_vec();
        Ok(record(OP, &[self], out, move |g, _| {
            let gi = float_dispatch!(OP, g.dtype(), T => {
                let gd = g.host_data::<T>()?;
                let mut acc = vec![T::default(); numel(&in_shape)];
                for (v, &p) in gd.iter().zip(&positions) {
                    acc[p] += *v;
                }
                Tensor::from_vec(acc, &in_shape)?
            });
            Ok(vec![Some(gi)])
        }))
    }

    /// Converts to another dtype. Between float types it is differentiable
    /// (the gradient is cast back); u8 and i64 results are not tracked.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let out = match placement("to_dtype", &[self])? {
            Placement::Cpu => {
                let values = self.to_f64_vec();
                any_dispatch!(dtype, T => Tensor::from_vec(values.iter().map(|&v| T::of_f64(v)).collect::<Vec<T>>(), self.shape())?)
            }
            #[cfg(feature = "cuda")]
            Placement::Cuda => cuda::to_dtype(self, dtype)?,
        };
        if !dtype.is_compute_float() {
            return Ok(out);
        }
        let src = self.dtype();
        Ok(record("to_dtype", &[self], out, move |g, _| Ok(vec![Some(g.to_dtype(src)?)])))
    }
}
