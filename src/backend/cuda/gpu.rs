//! [`Gpu`]: one device (a real GPU or the emulator) with its caching allocator.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use super::allocator::{CachingAllocator, MemoryStats, RawMemory};
use super::buffer::{DeviceBuffer, DeviceElement};
use super::driver::{self, Driver};
use super::emulator::Emulator;
use super::launch::{Arg, LaunchConfig, PackedArgs};
use crate::error::{Error, Result};

/// A handle to one device; cheap to clone (all clones share the device and its allocator).
#[derive(Clone)]
pub struct Gpu(Arc<GpuInner>);

struct GpuInner {
    backend: Backend,
    allocator: Mutex<CachingAllocator>,
    name: String,
}

pub(crate) enum Backend {
    Driver(Driver),
    Emulator(Emulator),
}

/// The emulator's default "device memory": enough for every test, small enough that a
/// runaway test fails with the out-of-memory error instead of exhausting the host.
const EMULATOR_MEMORY: usize = 4 << 30;

impl Gpu {
    /// Opens CUDA device `ordinal`. Fails with a clear message when there is no driver, no
    /// device, or a GPU older than compute capability 8.0.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let driver = Driver::open(ordinal)?;
        let name = driver.name.clone();
        Ok(Gpu::with_backend(Backend::Driver(driver), name))
    }

    /// The CPU emulator of the same kernels (see `emulator.rs`).
    pub fn emulated() -> Gpu {
        Gpu::emulated_with_memory(EMULATOR_MEMORY)
    }

    /// The emulator with `bytes` of simulated device memory (for out-of-memory tests).
    pub fn emulated_with_memory(bytes: usize) -> Gpu {
        Gpu::with_backend(Backend::Emulator(Emulator::new(bytes)), "CPU kernel emulator".into())
    }

    /// How many CUDA devices this machine has (0 without a driver).
    pub fn device_count() -> Result<usize> {
        driver::device_count()
    }

    fn with_backend(backend: Backend, name: String) -> Gpu {
        Gpu(Arc::new(GpuInner { backend, allocator: Mutex::new(CachingAllocator::default()), name }))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// True when both handles are the same device (clones of one `Gpu`).
    pub fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self.0.backend, Backend::Emulator(_))
    }

    /// (major, minor) compute capability of a real GPU; `None` on the emulator.
    pub fn compute_capability(&self) -> Option<(i32, i32)> {
        match &self.0.backend {
            Backend::Driver(d) => Some(d.compute_capability),
            Backend::Emulator(_) => None,
        }
    }

    /// Device memory in bytes of a real GPU; `None` on the emulator.
    pub fn total_memory(&self) -> Option<usize> {
        match &self.0.backend {
            Backend::Driver(d) => Some(d.total_memory),
            Backend::Emulator(_) => None,
        }
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.0.backend
    }

    fn raw(&self) -> &dyn RawMemory {
        match &self.0.backend {
            Backend::Driver(d) => d,
            Backend::Emulator(e) => e,
        }
    }

    fn allocator(&self) -> std::sync::MutexGuard<'_, CachingAllocator> {
        // A panic while holding the lock cannot leave the free lists inconsistent.
        self.0.allocator.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `len` elements, contents undefined.
    pub fn alloc<T: DeviceElement>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let bytes = len * std::mem::size_of::<T>();
        let (ptr, class_bytes) = self.allocator().allocate(self.raw(), bytes, &self.0.name)?;
        Ok(DeviceBuffer { gpu: self.clone(), ptr, len, class_bytes: Some(class_bytes), _element: PhantomData })
    }

    pub fn zeros<T: DeviceElement>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let buf = self.alloc(len)?;
        self.memset_zero(&buf)?;
        Ok(buf)
    }

    pub fn upload<T: DeviceElement>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        let mut buf = self.alloc(data.len())?;
        self.copy_from_host(data, &mut buf)?;
        Ok(buf)
    }

    /// Waits for queued work, then copies the buffer to the host.
    pub fn download<T: DeviceElement>(&self, buf: &DeviceBuffer<T>) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); buf.len()];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        match &self.0.backend {
            Backend::Driver(d) => d.copy_to_host(bytes, buf.device_ptr())?,
            // SAFETY: the emulator's device addresses are live host allocations of this size.
            Backend::Emulator(_) => unsafe {
                std::ptr::copy_nonoverlapping(buf.device_ptr() as *const u8, bytes.as_mut_ptr(), bytes.len())
            },
        }
        Ok(out)
    }

    pub fn copy_from_host<T: DeviceElement>(&self, src: &[T], dst: &mut DeviceBuffer<T>) -> Result<()> {
        check_len("cuda copy to device", src.len(), dst.len())?;
        let bytes: &[u8] = bytemuck::cast_slice(src);
        match &self.0.backend {
            Backend::Driver(d) => d.copy_to_device(dst.device_ptr(), bytes),
            Backend::Emulator(_) => {
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.device_ptr() as *mut u8, bytes.len()) };
                Ok(())
            }
        }
    }

    pub fn copy<T: DeviceElement>(&self, src: &DeviceBuffer<T>, dst: &mut DeviceBuffer<T>) -> Result<()> {
        check_len("cuda copy", src.len(), dst.len())?;
        match &self.0.backend {
            Backend::Driver(d) => d.copy_device_to_device(dst.device_ptr(), src.device_ptr(), src.size_in_bytes()),
            Backend::Emulator(_) => {
                unsafe {
                    std::ptr::copy(src.device_ptr() as *const u8, dst.device_ptr() as *mut u8, src.size_in_bytes())
                };
                Ok(())
            }
        }
    }

    pub fn memset_zero<T: DeviceElement>(&self, buf: &DeviceBuffer<T>) -> Result<()> {
        match &self.0.backend {
            Backend::Driver(d) => d.memset_zero(buf.device_ptr(), buf.size_in_bytes()),
            Backend::Emulator(_) => {
                unsafe { std::ptr::write_bytes(buf.device_ptr() as *mut u8, 0, buf.size_in_bytes()) };
                Ok(())
            }
        }
    }

    /// Queues kernel `kernel` (an `extern "C" __global__` function of kernels/*.cu). The
    /// arguments must match its parameters in number, order and type: the typed launchers
    /// in `kernels/` are the only callers.
    pub fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        super::launch_check::check_launch(kernel, &cfg, args)?;
        let mut packed = PackedArgs::new(args);
        match &self.0.backend {
            Backend::Driver(d) => d.launch(kernel, cfg, &mut packed),
            Backend::Emulator(e) => e.launch(kernel, cfg, &mut packed),
        }
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        match &self.0.backend {
            Backend::Driver(d) => d.synchronize(),
            Backend::Emulator(_) => Ok(()),
        }
    }

    /// GPU milliseconds taken by the work `f` queues (CUDA events; wall time on the emulator).
    pub fn time_ms(&self, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
        match &self.0.backend {
            Backend::Driver(d) => d.time_ms(&mut f),
            Backend::Emulator(_) => {
                let t = std::time::Instant::now();
                f()?;
                Ok(t.elapsed().as_secs_f32() * 1e3)
            }
        }
    }

    pub fn memory_stats(&self) -> MemoryStats {
        self.allocator().stats()
    }

    pub fn reset_peak_memory(&self) {
        self.allocator().reset_peaks()
    }

    /// Returns every cached block to the device (they are allocated again on demand).
    pub fn empty_cache(&self) -> Result<()> {
        self.synchronize()?;
        let raw = self.raw();
        self.allocator().release_cache(raw);
        Ok(())
    }

    pub(crate) fn release_block(&self, ptr: u64, class_bytes: usize) {
        self.allocator().release(ptr, class_bytes)
    }
}

impl Drop for GpuInner {
    fn drop(&mut self) {
        let raw: &dyn RawMemory = match &self.backend {
            Backend::Driver(d) => d,
            Backend::Emulator(e) => e,
        };
        self.allocator.get_mut().unwrap_or_else(|p| p.into_inner()).release_cache(raw);
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.0.name)
    }
}

pub(crate) fn check_len(op: &'static str, a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(Error::shape(op, format!("source has {a} elements, destination {b}")));
    }
    Ok(())
}
