//! Typed device memory.

use std::marker::PhantomData;

use super::Gpu;

/// Element types that live in device memory: plain old data, bit-identical on host and GPU.
pub trait DeviceElement: bytemuck::Pod + Send + Sync + std::fmt::Debug + 'static {}
impl DeviceElement for f32 {}
impl DeviceElement for f64 {}
impl DeviceElement for half::bf16 {}
impl DeviceElement for half::f16 {}
impl DeviceElement for u8 {}
impl DeviceElement for i32 {}
impl DeviceElement for u32 {}
impl DeviceElement for i64 {}

/// `len` elements of `T` in device memory, owned: dropping it returns the block to the
/// device's caching allocator. Contents start uninitialised unless made by `Gpu::zeros`
/// or `Gpu::upload`.
pub struct DeviceBuffer<T: DeviceElement> {
    pub(super) gpu: Gpu,
    pub(super) ptr: u64,
    pub(super) len: usize,
    /// The allocator's size class of the block (needed to give it back); `None` for an
    /// alias of part of another buffer, which owns the block.
    pub(super) class_bytes: Option<usize>,
    pub(super) _element: PhantomData<T>,
}

impl<T: DeviceElement> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn size_in_bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The device address (for kernel arguments).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
    /// The address of element `offset` (for kernels that work on a part of a buffer).
    pub fn device_ptr_at(&self, offset: usize) -> u64 {
        assert!(offset <= self.len, "offset {offset} beyond a buffer of {}", self.len);
        self.ptr + (offset * std::mem::size_of::<T>()) as u64
    }
    /// A non-owning alias of `len` elements from `offset` on. Private to the crate: the
    /// caller must keep `self` alive while the alias is used (`BufferView` ties the lifetimes).
    pub(crate) fn alias(&self, offset: usize, len: usize) -> DeviceBuffer<T> {
        assert!(offset + len <= self.len, "alias [{offset}, {}) beyond a buffer of {}", offset + len, self.len);
        DeviceBuffer {
            gpu: self.gpu.clone(),
            ptr: self.device_ptr_at(offset),
            len,
            class_bytes: None,
            _element: PhantomData,
        }
    }
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// Copies the contents to the host (waits for queued work).
    pub fn to_vec(&self) -> crate::Result<Vec<T>> {
        self.gpu.download(self)
    }
}

impl<T: DeviceElement> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if let Some(class_bytes) = self.class_bytes {
            self.gpu.release_block(self.ptr, class_bytes);
        }
    }
}

impl<T: DeviceElement> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>[{}] @ {:#x} on {}", std::any::type_name::<T>(), self.len, self.ptr, self.gpu.name())
    }
}
