//! The bytes behind a CUDA tensor: one typed buffer in device memory (feature `cuda`).
//!
//! Like host [`Storage`](super::Storage), device storage is immutable once an op has
//! written it and is shared through `Arc`; views differ only in their `Layout`. Kernels
//! take whole [`DeviceBuffer`]s, so a view that starts inside a buffer (a `narrow`) is
//! handed to them as a [`DeviceSlice`]: an alias of the elements from its offset on.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::dtype::DType;
use super::{Layout, Tensor, TensorData};
use crate::any_dispatch;
use crate::backend::cuda::{devices, DeviceBuffer, DeviceElement, Gpu};
use crate::backend::Device;
use crate::error::{Error, Result};
use half::{bf16, f16};

/// A device buffer of one of the tensor dtypes.
#[derive(Debug)]
pub enum DeviceData {
    F32(DeviceBuffer<f32>),
    F64(DeviceBuffer<f64>),
    BF16(DeviceBuffer<bf16>),
    F16(DeviceBuffer<f16>),
    U8(DeviceBuffer<u8>),
    I64(DeviceBuffer<i64>),
}

/// Device storage: the buffer and the ordinal of the device that holds it.
#[derive(Debug)]
pub struct DeviceStorage {
    pub(crate) data: DeviceData,
    pub(crate) ordinal: usize,
}

/// Converts between `DeviceBuffer<T>` and [`DeviceData`] for every element type.
pub trait DeviceStorageElement: DeviceElement + super::StorageElement {
    fn wrap_device(buf: DeviceBuffer<Self>) -> DeviceData;
    fn device_buffer(d: &DeviceData) -> Option<&DeviceBuffer<Self>>;
    fn device_buffer_mut(d: &mut DeviceData) -> Option<&mut DeviceBuffer<Self>>;
}

macro_rules! device_storage_element {
    ($t:ty, $variant:ident) => {
        impl DeviceStorageElement for $t {
            fn wrap_device(buf: DeviceBuffer<Self>) -> DeviceData {
                DeviceData::$variant(buf)
            }
            fn device_buffer(d: &DeviceData) -> Option<&DeviceBuffer<Self>> {
                match d {
                    DeviceData::$variant(b) => Some(b),
                    _ => None,
                }
            }
            fn device_buffer_mut(d: &mut DeviceData) -> Option<&mut DeviceBuffer<Self>> {
                match d {
                    DeviceData::$variant(b) => Some(b),
                    _ => None,
                }
            }
        }
    };
}

device_storage_element!(f32, F32);
device_storage_element!(f64, F64);
device_storage_element!(bf16, BF16);
device_storage_element!(f16, F16);
device_storage_element!(u8, U8);
device_storage_element!(i64, I64);

/// Runs `$body` with `$b` bound to the typed buffer of a [`DeviceData`].
macro_rules! with_buffer {
    ($data:expr, $b:ident => $body:expr) => {
        match $data {
            DeviceData::F32($b) => $body,
            DeviceData::F64($b) => $body,
            DeviceData::BF16($b) => $body,
            DeviceData::F16($b) => $body,
            DeviceData::U8($b) => $body,
            DeviceData::I64($b) => $body,
        }
    };
}

impl DeviceStorage {
    pub fn dtype(&self) -> DType {
        match &self.data {
            DeviceData::F32(_) => DType::F32,
            DeviceData::F64(_) => DType::F64,
            DeviceData::BF16(_) => DType::BF16,
            DeviceData::F16(_) => DType::F16,
            DeviceData::U8(_) => DType::U8,
            DeviceData::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        with_buffer!(&self.data, b => b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn gpu(&self) -> &Gpu {
        with_buffer!(&self.data, b => b.gpu())
    }

    /// The device address of element `offset` (for libraries that take raw pointers: NCCL).
    pub(crate) fn device_ptr_at(&self, offset: usize) -> u64 {
        with_buffer!(&self.data, b => b.device_ptr_at(offset))
    }

    /// Waits for queued work and copies the whole buffer to host storage.
    pub fn download(&self) -> crate::Result<super::Storage> {
        self.download_range(0, self.len())
    }

    /// Waits for queued work and copies elements `offset..offset + len` to host storage.
    pub fn download_range(&self, offset: usize, len: usize) -> crate::Result<super::Storage> {
        use super::StorageElement;
        Ok(with_buffer!(&self.data, b => StorageElement::wrap(b.alias(offset, len).to_vec()?)))
    }
}

/// The elements of a contiguous device tensor, usable wherever a kernel launcher takes
/// `&DeviceBuffer<T>`: an alias of its buffer from the tensor's offset on, holding the
/// storage alive while a launch uses it. It never returns memory to the allocator (the
/// storage does, once the last tensor and slice are gone).
pub struct DeviceSlice<T: DeviceElement> {
    alias: DeviceBuffer<T>,
    _owner: Arc<DeviceStorage>,
}

impl<T: DeviceStorageElement> DeviceSlice<T> {
    /// `len` elements from `offset` on; `None` if the storage does not hold `T`.
    pub(crate) fn new(owner: Arc<DeviceStorage>, offset: usize, len: usize) -> Option<DeviceSlice<T>> {
        let alias = T::device_buffer(&owner.data)?.alias(offset, len);
        Some(DeviceSlice { alias, _owner: owner })
    }
}

impl<T: DeviceElement> Deref for DeviceSlice<T> {
    type Target = DeviceBuffer<T>;
    fn deref(&self) -> &DeviceBuffer<T> {
        &self.alias
    }
}

/// Copies `t` to `device` (host ↔ GPU, or GPU → GPU through the host), row-major.
pub(crate) fn transfer(t: &Tensor, device: Device) -> Result<Tensor> {
    match device {
        Device::Cpu => {
            let TensorData::Device(s) = t.data() else { return Ok(t.clone()) };
            if t.is_contiguous() {
                // A row-major view (a whole tensor, or a `narrow` of its first axis): just its elements.
                let storage = s.download_range(t.layout().offset, t.numel())?;
                return Ok(Tensor::from_data(TensorData::Host(Arc::new(storage)), Layout::contiguous(t.shape())));
            }
            // Download the whole buffer, then let the host view gather the tensor's elements.
            let host = Tensor::from_data(TensorData::Host(Arc::new(s.download()?)), t.layout().clone());
            host.contiguous_copy()
        }
        Device::Cuda(ordinal) => {
            let gpu = devices::gpu(ordinal)?;
            let host = t.to_device(Device::Cpu)?;
            let data = any_dispatch!(host.dtype(), T => T::wrap_device(gpu.upload(&host.host_data::<T>()?)?));
            let storage = DeviceStorage { data, ordinal };
            Ok(Tensor::from_data(TensorData::Device(Arc::new(storage)), Layout::contiguous(t.shape())))
        }
    }
}

impl Tensor {
    /// A tensor owning `buf` (on device `ordinal`), row-major with `shape`.
    pub fn from_device_buffer<T: DeviceStorageElement>(
        buf: DeviceBuffer<T>,
        shape: &[usize],
        ordinal: usize,
    ) -> Result<Tensor> {
        let n = super::layout::numel(shape);
        if buf.len() != n {
            return Err(Error::shape(
                "from_device_buffer",
                format!("{} elements cannot fill shape {shape:?} ({n} elements)", buf.len()),
            ));
        }
        let storage = DeviceStorage { data: T::wrap_device(buf), ordinal };
        Ok(Tensor::from_data(TensorData::Device(Arc::new(storage)), Layout::contiguous(shape)))
    }

    /// The device this tensor's elements live on, with its ordinal; `None` for a CPU tensor.
    pub fn gpu(&self) -> Option<(Gpu, usize)> {
        match self.data() {
            TensorData::Device(s) => Some((s.gpu().clone(), s.ordinal)),
            TensorData::Host(_) => None,
        }
    }

    /// The elements of a contiguous device tensor of dtype `T`, for a kernel launch; an
    /// error naming `op` for a CPU tensor, another dtype, or a strided view (call
    /// `contiguous()` first).
    pub fn cuda_slice<T: DeviceStorageElement>(&self, op: &'static str) -> Result<DeviceSlice<T>> {
        let TensorData::Device(s) = self.data() else {
            return Err(Error::Device { op, msg: format!("expected a CUDA tensor, got a CPU one {:?}", self.shape()) });
        };
        if !self.is_contiguous() {
            return Err(Error::invalid(
                op,
                format!("a strided {:?} view reached a kernel that needs row-major data", self.shape()),
            ));
        }
        let dtype = s.dtype();
        let (offset, len) = (self.layout().offset, self.numel());
        DeviceSlice::new(s, offset, len)
            .ok_or_else(|| Error::dtype(op, format!("tensor is {dtype}, the kernel wants {}", T::DTYPE)))
    }

    /// The storage and layout of a device tensor (strided kernels read views directly).
    pub(crate) fn device_storage(&self, op: &'static str) -> Result<Arc<DeviceStorage>> {
        match self.data() {
            TensorData::Device(s) => Ok(s),
            TensorData::Host(_) => Err(Error::Device { op, msg: "expected a CUDA tensor, got a CPU one".into() }),
        }
    }
}

// ---------------------------------------------------------------- models and optimisers on a device

/// Write access to the whole device buffer of a tensor, from [`Tensor::device_buffer_mut`]. It
/// holds the tensor's data lock: nothing else can read the tensor (or share its storage) until
/// it drops, so the buffer stays this tensor's alone while kernels are queued on it.
pub struct DeviceBufferMut<'a, T: DeviceStorageElement> {
    guard: std::sync::RwLockWriteGuard<'a, TensorData>,
    _element: PhantomData<T>,
}

impl<T: DeviceStorageElement> Deref for DeviceBufferMut<'_, T> {
    type Target = DeviceBuffer<T>;
    fn deref(&self) -> &DeviceBuffer<T> {
        match &*self.guard {
            TensorData::Device(s) => T::device_buffer(&s.data).expect("dtype checked when the guard was made"),
            TensorData::Host(_) => unreachable!("device placement checked when the guard was made"),
        }
    }
}

impl<T: DeviceStorageElement> DerefMut for DeviceBufferMut<'_, T> {
    fn deref_mut(&mut self) -> &mut DeviceBuffer<T> {
        match &mut *self.guard {
            TensorData::Device(s) => {
                // Unique since the guard was made: sharing the storage needs the lock we hold.
                let s = Arc::get_mut(s).expect("storage made unique when the guard was made");
                T::device_buffer_mut(&mut s.data).expect("dtype checked when the guard was made")
            }
            TensorData::Host(_) => unreachable!("device placement checked when the guard was made"),
        }
    }
}

impl Tensor {
    /// True when both handles are the same tensor (not merely equal values or shared storage).
    pub(crate) fn same_tensor(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Moves this tensor's elements to `device` in place (nothing to do if they are there),
    /// keeping its identity: a parameter stays the same leaf with the same gradient slot, and a
    /// gradient it holds moves with it, so the model and optimiser that hold it need nothing
    /// else. This is how a model goes to a GPU; only a tensor owning its whole storage (a
    /// parameter or buffer, not a view) can move. [`Tensor::to_device`] is the copying form.
    pub fn move_to_device(&self, device: Device) -> Result<()> {
        if self.device() == device {
            return Ok(());
        }
        if !(self.is_contiguous() && self.layout().offset == 0 && self.data().len() == self.numel()) {
            return Err(Error::invalid(
                "move_to_device",
                format!("a {:?} view cannot move in place; use to_device for a moved copy", self.shape()),
            ));
        }
        let moved = transfer(self, device)?;
        let grad = self.grad().map(|g| g.to_device(device)).transpose()?;
        *self.0.data.write().unwrap_or_else(|e| e.into_inner()) = moved.data();
        if grad.is_some() {
            self.set_grad(grad)?;
        }
        Ok(())
    }

    /// The device buffer of a whole-storage tensor (a parameter, an optimiser moment), for a
    /// kernel that updates it in place (the fused optimiser steps). Device storage is otherwise
    /// never written after its op, so if anything else shares it — a view, a tensor saved for
    /// backward, an exported optimiser state — the values are first copied to a private
    /// buffer, and those keep the old values, as after [`Tensor::set_data`].
    ///
    /// Until the guard drops, reading this tensor's data on the same thread (`device()`,
    /// `dtype()`, `grad()` of it is fine) would wait for the guard forever: look first, then lock.
    pub fn device_buffer_mut<T: DeviceStorageElement>(&self, op: &'static str) -> Result<DeviceBufferMut<'_, T>> {
        let (whole_view, numel) = (self.is_contiguous() && self.layout().offset == 0, self.numel());
        let mut guard = self.0.data.write().unwrap_or_else(|e| e.into_inner());
        let TensorData::Device(storage) = &mut *guard else {
            return Err(Error::Device { op, msg: format!("expected a CUDA tensor, got a CPU one {:?}", self.shape()) });
        };
        if !(whole_view && storage.len() == numel) {
            return Err(Error::invalid(op, "only a tensor owning its whole storage (not a view) is updated in place"));
        }
        if T::device_buffer(&storage.data).is_none() {
            return Err(Error::dtype(op, format!("tensor is {}, the kernel wants {}", storage.dtype(), T::DTYPE)));
        }
        let private_copy = match Arc::get_mut(storage) {
            Some(_) => None,
            None => {
                let buf = T::device_buffer(&storage.data).expect("dtype checked above");
                let mut copy = buf.gpu().alloc::<T>(buf.len())?;
                buf.gpu().copy(buf, &mut copy)?;
                Some(copy)
            }
        };
        if let Some(copy) = private_copy {
            *storage = Arc::new(DeviceStorage { data: T::wrap_device(copy), ordinal: storage.ordinal });
        }
        Ok(DeviceBufferMut { guard, _element: PhantomData })
    }
}
