//! The bytes behind a CUDA tensor: one typed buffer in device memory (feature `cuda`).
//!
//! Like host [`Storage`](super::Storage), device storage is immutable once an op has
//! written it and is shared through `Arc`; views differ only in their `Layout`. Kernels
//! take whole [`DeviceBuffer`]s, so a view that starts inside a buffer (a `narrow`) is
//! handed to them as a [`DeviceSlice`]: an alias of the elements from its offset on.

use std::ops::Deref;
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

    /// Waits for queued work and copies the whole buffer to host storage.
    pub fn download(&self) -> crate::Result<super::Storage> {
        use super::StorageElement;
        Ok(with_buffer!(&self.data, b => StorageElement::wrap(b.to_vec()?)))
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
