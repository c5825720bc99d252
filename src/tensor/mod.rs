//! `Tensor`: an n-dimensional array with a dtype, a device and (optionally) a
//! place in the autograd graph.
//!
//! Cloning a tensor is cheap (an `Arc`). Views share storage; ops return new
//! tensors. The only mutation is [`Tensor::set_data`], which swaps a
//! parameter's storage for the optimiser (old views keep the old values, so a
//! graph recorded before the step stays correct).

#[cfg(feature = "cuda")]
pub mod device_storage;
pub mod dtype;
pub mod layout;
pub mod safetensors_io;
pub mod storage;

#[cfg(feature = "cuda")]
pub use device_storage::{DeviceData, DeviceSlice, DeviceStorage, DeviceStorageElement};
pub use dtype::{DType, Element, Float};
pub use layout::Layout;
pub use storage::{Storage, StorageElement};

use crate::any_dispatch;
use crate::autograd::{GradInfo, GradSlot};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, RwLock};

#[derive(Clone)]
pub struct Tensor(Arc<TensorImpl>);

struct TensorImpl {
    data: RwLock<TensorData>,
    layout: Layout,
    grad: GradInfo,
}

/// Where a tensor's elements are: host memory, or a CUDA device's.
#[derive(Clone)]
pub(crate) enum TensorData {
    Host(Arc<Storage>),
    #[cfg(feature = "cuda")]
    Device(Arc<DeviceStorage>),
}

impl TensorData {
    fn dtype(&self) -> DType {
        match self {
            TensorData::Host(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            TensorData::Device(s) => s.dtype(),
        }
    }

    fn len(&self) -> usize {
        match self {
            TensorData::Host(s) => s.len(),
            #[cfg(feature = "cuda")]
            TensorData::Device(s) => s.len(),
        }
    }

    fn device(&self) -> Device {
        match self {
            TensorData::Host(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            TensorData::Device(s) => Device::Cuda(s.ordinal),
        }
    }
}

/// Elements of a tensor in row-major order: borrowed when the tensor is
/// contiguous, gathered into a new vector when it is a strided view.
pub struct HostData<T: 'static> {
    storage: Arc<Storage>,
    owned: Option<Vec<T>>,
    start: usize,
    len: usize,
}

impl<T: StorageElement> Deref for HostData<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.owned {
            Some(v) => v,
            // The dtype was checked when HostData was built.
            None => &T::slice(&self.storage).expect("dtype checked")[self.start..self.start + self.len],
        }
    }
}

impl Tensor {
    // ---------------------------------------------------------------- construction

    pub(crate) fn from_parts(storage: Storage, layout: Layout) -> Tensor {
        Tensor::from_data(TensorData::Host(Arc::new(storage)), layout)
    }

    fn from_data(data: TensorData, layout: Layout) -> Tensor {
        Tensor(Arc::new(TensorImpl { data: RwLock::new(data), layout, grad: GradInfo::None }))
    }

    /// A view with a new layout over the same storage (no autograd node; callers record one).
    pub(crate) fn view_with_layout(&self, layout: Layout) -> Tensor {
        Tensor::from_data(self.data(), layout)
    }

    pub(crate) fn with_grad_info(self, grad: GradInfo) -> Tensor {
        Tensor(Arc::new(TensorImpl { data: RwLock::new(self.data()), layout: self.0.layout.clone(), grad }))
    }

    /// A tensor from row-major data.
    pub fn from_vec<T: StorageElement>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n = layout::numel(shape);
        if data.len() != n {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements cannot fill shape {shape:?} ({n} elements)", data.len()),
            ));
        }
        Ok(Tensor::from_parts(T::wrap(data), Layout::contiguous(shape)))
    }

    /// A tensor from f64 values, stored as `dtype`.
    pub fn from_f64s(data: &[f64], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = layout::numel(shape);
        if data.len() != n {
            return Err(Error::shape("from_f64s", format!("{} values for shape {shape:?}", data.len())));
        }
        let storage = any_dispatch!(dtype, T => T::wrap(data.iter().map(|&v| T::of_f64(v)).collect()));
        Ok(Tensor::from_parts(storage, Layout::contiguous(shape)))
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(Tensor::from_parts(Storage::zeros(dtype, layout::numel(shape)), Layout::contiguous(shape)))
    }

    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Result<Tensor> {
        Tensor::from_f64s(&vec![value; layout::numel(shape)], shape, dtype)
    }

    pub fn ones(shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype)
    }

    pub fn scalar(value: f64, dtype: DType) -> Result<Tensor> {
        Tensor::full(&[], value, dtype)
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape(), self.dtype())
    }

    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape(), self.dtype())
    }

    /// Standard normal samples times `std`.
    pub fn randn(shape: &[usize], std: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
        let v: Vec<f64> = (0..layout::numel(shape)).map(|_| rng.normal() * std).collect();
        Tensor::from_f64s(&v, shape, dtype)
    }

    /// Uniform samples in [lo, hi).
    pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
        let v: Vec<f64> = (0..layout::numel(shape)).map(|_| rng.uniform_range(lo, hi)).collect();
        Tensor::from_f64s(&v, shape, dtype)
    }

    /// 0, 1, ..., n-1.
    pub fn arange(n: usize, dtype: DType) -> Result<Tensor> {
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        Tensor::from_f64s(&v, &[n], dtype)
    }

    // ---------------------------------------------------------------- metadata

    pub fn shape(&self) -> &[usize] {
        &self.0.layout.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.0.layout.strides
    }

    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }

    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }

    pub fn dtype(&self) -> DType {
        self.data().dtype()
    }

    pub fn device(&self) -> Device {
        self.data().device()
    }

    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    /// Size of one axis (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.shape()[layout::resolve_axis("dim", axis, self.rank())?])
    }

    fn data(&self) -> TensorData {
        self.0.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The host storage of a CPU tensor; an error naming `op` for a tensor on a GPU (a CPU
    /// kernel was asked to read device memory: the op lacks a CUDA path or an input is on
    /// the wrong device).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub(crate) fn host_storage(&self, op: &'static str) -> Result<Arc<Storage>> {
        match self.data() {
            TensorData::Host(s) => Ok(s),
            #[cfg(feature = "cuda")]
            TensorData::Device(s) => Err(Error::Device {
                op,
                msg: format!(
                    "a {:?} {} tensor on cuda:{} reached the CPU implementation; move it to the CPU \
                     with .to_device(Device::Cpu), or put every input on the same device",
                    self.shape(),
                    s.dtype(),
                    s.ordinal
                ),
            }),
        }
    }

    // ---------------------------------------------------------------- data access

    /// Row-major elements, borrowed if possible. Fails if `T` is not the tensor's dtype.
    pub fn host_data<T: StorageElement>(&self) -> Result<HostData<T>> {
        let storage = self.host_storage("host_data")?;
        let Some(slice) = T::slice(&storage) else {
            return Err(Error::dtype("host_data", format!("tensor is {}, asked for {}", storage.dtype(), T::DTYPE)));
        };
        let l = &self.0.layout;
        if l.is_contiguous() {
            let (start, len) = (l.offset, l.numel());
            return Ok(HostData { storage, owned: None, start, len });
        }
        let owned = layout::gather_strided(slice, l);
        let len = owned.len();
        Ok(HostData { storage, owned: Some(owned), start: 0, len })
    }

    /// Copies the elements out as `Vec<T>` (T must be the tensor's dtype).
    pub fn to_vec<T: StorageElement>(&self) -> Result<Vec<T>> {
        Ok(self.host_data::<T>()?.to_vec())
    }

    /// Copies the elements out as f64, whatever the dtype (from a GPU tensor: after a
    /// download; empty if that fails — use [`Tensor::to_device`] to see the error).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let Ok(host) = self.to_device(Device::Cpu) else { return Vec::new() };
        any_dispatch!(host.dtype(), T => host.host_data::<T>().map(|d| d.iter().map(|x| x.as_f64()).collect()).unwrap_or_default())
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape("item", format!("tensor of shape {:?} is not a single value", self.shape())));
        }
        let host = self.to_device(Device::Cpu)?;
        Ok(host.to_f64_vec()[0])
    }

    // ---------------------------------------------------------------- autograd

    pub(crate) fn grad_info(&self) -> &GradInfo {
        &self.0.grad
    }

    /// A trainable leaf sharing this tensor's data: ops on it are recorded and
    /// `backward` accumulates into its `grad()`. Only float tensors can be trained.
    pub fn requires_grad(&self) -> Result<Tensor> {
        if !self.dtype().is_compute_float() {
            return Err(Error::dtype(
                "requires_grad",
                format!("only f32/f64 tensors can be trained, got {}", self.dtype()),
            ));
        }
        Ok(self.detach().with_grad_info(GradInfo::Leaf(Arc::new(GradSlot::default()))))
    }

    /// True for parameters and for outputs of recorded ops.
    pub fn is_tracked(&self) -> bool {
        self.0.grad.is_tracked()
    }

    /// The same data, cut from the graph: gradients do not flow through it.
    pub fn detach(&self) -> Tensor {
        self.view_with_layout(self.0.layout.clone())
    }

    /// The accumulated gradient of a leaf (`None` before any backward, or for non-leaves).
    pub fn grad(&self) -> Option<Tensor> {
        match &self.0.grad {
            GradInfo::Leaf(slot) => slot.get(),
            _ => None,
        }
    }

    /// Replaces a leaf's accumulated gradient (gradient clipping, all-reduce).
    pub fn set_grad(&self, g: Option<Tensor>) -> Result<()> {
        match &self.0.grad {
            GradInfo::Leaf(slot) => {
                if let Some(g) = &g {
                    if g.shape() != self.shape() || g.dtype() != self.dtype() {
                        return Err(Error::shape(
                            "set_grad",
                            format!(
                                "gradient {:?} {} for a parameter {:?} {}",
                                g.shape(),
                                g.dtype(),
                                self.shape(),
                                self.dtype()
                            ),
                        ));
                    }
                }
                slot.set(g);
                Ok(())
            }
            _ => Err(Error::Autograd("set_grad: only trainable leaves (requires_grad) hold gradients".into())),
        }
    }

    pub fn zero_grad(&self) {
        if let GradInfo::Leaf(slot) = &self.0.grad {
            slot.set(None);
        }
    }

    /// Back-propagates from this scalar. See [`crate::autograd::backward`].
    pub fn backward(&self) -> Result<()> {
        crate::autograd::backward(self)
    }

    /// Replaces this parameter's values (same shape and dtype), keeping its identity
    /// and gradient slot. Used by optimisers and checkpoint loading.
    pub fn set_data(&self, value: &Tensor) -> Result<()> {
        if value.shape() != self.shape() || value.dtype() != self.dtype() {
            return Err(Error::shape(
                "set_data",
                format!(
                    "new value {:?} {} does not match {:?} {}",
                    value.shape(),
                    value.dtype(),
                    self.shape(),
                    self.dtype()
                ),
            ));
        }
        if !(self.is_contiguous() && self.0.layout.offset == 0 && self.data().len() == self.numel()) {
            return Err(Error::invalid(
                "set_data",
                "only a tensor that owns its whole storage (not a view) can be assigned",
            ));
        }
        if value.device() != self.device() {
            return Err(Error::Device {
                op: "set_data",
                msg: format!("new value is on {:?}, the tensor on {:?}", value.device(), self.device()),
            });
        }
        let new_data = match value.data() {
            TensorData::Host(_) => TensorData::Host(Arc::new(value.contiguous_storage()?)),
            #[cfg(feature = "cuda")]
            TensorData::Device(s)
                if value.is_contiguous() && value.0.layout.offset == 0 && s.len() == value.numel() =>
            {
                // Device storage is never written after its op: sharing it is safe.
                TensorData::Device(s)
            }
            #[cfg(feature = "cuda")]
            TensorData::Device(_) => value.contiguous()?.data(),
        };
        *self.0.data.write().unwrap_or_else(|e| e.into_inner()) = new_data;
        Ok(())
    }

    /// Lets `f` rewrite this host tensor's elements, for optimisers' in-place updates.
    /// The storage is written where it is only when nothing else holds it (no view,
    /// no checkpoint snapshot, no saved input of a live graph); otherwise `f` gets a
    /// copy, which then replaces the storage — what `set_data` does, without a new
    /// buffer per step. Every handle on this tensor (its clones) sees the new values.
    pub(crate) fn update_host<T: StorageElement, R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        const OP: &str = "update_host";
        if !(self.is_contiguous() && self.0.layout.offset == 0 && self.data().len() == self.numel()) {
            return Err(Error::invalid(OP, "only a tensor that owns its whole storage (not a view) can be updated"));
        }
        let dtype = self.dtype(); // read before the write lock below
        let mut data = self.0.data.write().unwrap_or_else(|e| e.into_inner());
        let storage = match &mut *data {
            TensorData::Host(storage) => storage,
            #[cfg(feature = "cuda")]
            TensorData::Device(_) => return Err(Error::Device { op: OP, msg: "the tensor is on a GPU".into() }),
        };
        let slice = T::slice_mut(Arc::make_mut(storage))
            .ok_or_else(|| Error::dtype(OP, format!("tensor is {}, asked for {}", dtype, T::DTYPE)))?;
        Ok(f(slice))
    }

    /// A fresh row-major copy of the elements as host storage (downloaded from a GPU).
    pub(crate) fn contiguous_storage(&self) -> Result<Storage> {
        let host = self.to_device(Device::Cpu)?;
        Ok(any_dispatch!(host.dtype(), T => T::wrap(host.host_data::<T>()?.to_vec())))
    }

    // ---------------------------------------------------------------- devices

    /// The same values on `device` (the tensor itself if it is already there). The copy is
    /// cut from the graph, like `detach`: move inputs and parameters, not intermediate results.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        {
            device_storage::transfer(self, device)
        }
        #[cfg(not(feature = "cuda"))]
        Err(Error::Device {
            op: "to_device",
            msg: format!("this build has no CUDA backend, so {device:?} is not available (build with --features cuda)"),
        })
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vals = self.to_f64_vec();
        let shown: Vec<String> = vals.iter().take(8).map(|v| format!("{v:.4}")).collect();
        write!(
            f,
            "Tensor(shape={:?}, dtype={}, device={:?}, tracked={}, [{}{}])",
            self.shape(),
            self.dtype(),
            self.device(),
            self.is_tracked(),
            shown.join(", "),
            if vals.len() > 8 { ", ..." } else { "" }
        )
    }
}
