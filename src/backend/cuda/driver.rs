//! The real GPU, through the CUDA driver API (cudarc's thin `result` layer).
//!
//! cudarc loads `libcuda.so` at run time, so a binary built with `--features cuda` still
//! starts on a machine without NVIDIA's driver; [`Driver::open`] checks for the library
//! first because cudarc panics when a CUDA call finds it missing.
//!
//! One context (the device's primary context) and one non-blocking stream: every copy,
//! kernel and cuBLAS call is queued on that stream, which is what lets the caching
//! allocator reuse blocks without events.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Mutex;

use cudarc::cublas::{result as cublas, sys as cublas_sys};
use cudarc::driver::{result, sys};

use super::allocator::{RawAllocError, RawMemory};
use super::emulator::unknown_kernel;
use super::kernels_table::MODULES;
use super::launch::{LaunchConfig, PackedArgs};
use crate::error::{Error, Result};

pub(crate) struct Driver {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    /// Kernel name -> function handle, for every entry of every embedded module.
    functions: HashMap<&'static str, sys::CUfunction>,
    cublas: Mutex<Option<cublas_sys::cublasHandle_t>>,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

// SAFETY: the driver API is thread-safe; every call binds the context to the calling thread
// first (`bind`), and the cuBLAS handle is used under its mutex.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}

fn driver_error(op: &'static str, e: result::DriverError) -> Error {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Error::Device { op, msg: format!("{name}: {text}") }
}

/// Whether `libcuda` can be loaded at all (no driver: no GPU use, and no cudarc call may run).
pub(crate) fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

pub(crate) fn device_count() -> Result<usize> {
    if !driver_present() {
        return Ok(0);
    }
    result::init().map_err(|e| driver_error("cuda init", e))?;
    Ok(result::device::get_count().map_err(|e| driver_error("cuda device count", e))? as usize)
}

impl Driver {
    pub fn open(ordinal: usize) -> Result<Driver> {
        let no_device = |msg: String| Error::Device { op: "cuda", msg };
        if !driver_present() {
            return Err(no_device(
                "no CUDA driver found (libcuda.so could not be loaded): this machine has no NVIDIA GPU driver; \
                 use --device cpu"
                    .into(),
            ));
        }
        result::init().map_err(|e| driver_error("cuda init", e))?;
        let count = result::device::get_count().map_err(|e| driver_error("cuda device count", e))? as usize;
        if count == 0 {
            return Err(no_device("no CUDA device: the driver is installed but sees no GPU; use --device cpu".into()));
        }
        if ordinal >= count {
            return Err(no_device(format!("CUDA device {ordinal} does not exist: this machine has {count}")));
        }
        let dev = result::device::get(ordinal as i32).map_err(|e| driver_error("cuda device", e))?;
        let name = result::device::get_name(dev).map_err(|e| driver_error("cuda device name", e))?;
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.map_err(|e| driver_error("cuda device", e));
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        if major < 8 {
            return Err(no_device(format!(
                "{name} has compute capability {major}.{minor}; the kernels are built for 8.0 and newer \
                 (A100, H100, ...)"
            )));
        }
        let total_memory = unsafe { result::device::total_mem(dev) }.map_err(|e| driver_error("cuda device", e))?;
        // SAFETY: dev came from device::get.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(|e| driver_error("cuda context", e))?;
        unsafe { result::ctx::set_current(ctx) }.map_err(|e| driver_error("cuda context", e))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| driver_error("cuda stream", e))?;

        let mut functions = HashMap::new();
        for module in MODULES {
            // cuModuleLoadData reads the image through an aligned pointer: copy it into u64s.
            let mut image = vec![0u64; module.fatbin.len().div_ceil(8) + 1];
            bytemuck::cast_slice_mut::<u64, u8>(&mut image)[..module.fatbin.len()].copy_from_slice(module.fatbin);
            let handle = unsafe { result::module::load_data(image.as_ptr() as *const _) }.map_err(|e| {
                let mut err = driver_error("cuda module load", e);
                if let Error::Device { msg, .. } = &mut err {
                    msg.push_str(&format!(
                        " (kernels/{}.cu on {name}, compute capability {major}.{minor})",
                        module.name
                    ));
                }
                err
            })?;
            for &entry in module.entries {
                let f = unsafe { result::module::get_function(handle, CString::new(entry).unwrap()) }
                    .map_err(|e| driver_error("cuda module", e))?;
                functions.insert(entry, f);
            }
        }
        Ok(Driver {
            ctx,
            stream,
            functions,
            cublas: Mutex::new(None),
            name: format!("{name} (cuda:{ordinal})"),
            compute_capability: (major, minor),
            total_memory,
        })
    }

    /// Makes our context current on the calling thread (threads start with none).
    pub(crate) fn bind(&self) -> Result<()> {
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| driver_error("cuda context", e))
    }

    pub fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &mut PackedArgs) -> Result<()> {
        let f = *self.functions.get(kernel).ok_or_else(|| unknown_kernel(kernel))?;
        self.bind()?;
        let mut ptrs = args.pointers();
        // SAFETY: the typed launcher passes the kernel's parameters in order; buffers are live
        // allocations of this context; the argument values are copied at launch.
        unsafe { result::launch_kernel(f, cfg.grid, cfg.block, cfg.shared_bytes, self.stream, &mut ptrs) }.map_err(
            |e| {
                let mut err = driver_error("cuda launch", e);
                if let Error::Device { msg, .. } = &mut err {
                    msg.push_str(&format!(" ({kernel} {cfg:?})"));
                }
                err
            },
        )
    }

    pub fn copy_to_device(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // Synchronous with respect to the host buffer: `src` may be freed as soon as we return.
        unsafe {
            result::memcpy_htod_async(dst, src, self.stream).map_err(|e| driver_error("cuda copy to device", e))?;
            result::stream::synchronize(self.stream).map_err(|e| driver_error("cuda copy to device", e))
        }
    }

    pub fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        unsafe {
            result::memcpy_dtoh_async(dst, src, self.stream).map_err(|e| driver_error("cuda copy to host", e))?;
            result::stream::synchronize(self.stream).map_err(|e| driver_error("cuda copy to host", e))
        }
    }

    pub fn copy_device_to_device(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream) }.map_err(|e| driver_error("cuda copy", e))
    }

    pub fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        unsafe { result::memset_d8_async(dst, 0, bytes, self.stream) }.map_err(|e| driver_error("cuda memset", e))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        unsafe { result::stream::synchronize(self.stream) }.map_err(|e| driver_error("cuda synchronize", e))
    }

    /// Runs `f` with the cuBLAS handle (created on first use, bound to our stream).
    pub fn with_cublas<R>(&self, f: impl FnOnce(cublas_sys::cublasHandle_t) -> Result<R>) -> Result<R> {
        self.bind()?;
        let mut guard = self.cublas.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            if !unsafe { cublas_sys::is_culib_present() } {
                return Err(Error::Device {
                    op: "cublas",
                    msg: "libcublas.so could not be loaded: install the CUDA runtime libraries (cuBLAS 13)".into(),
                });
            }
            let handle = cublas::create_handle().map_err(|e| Error::Device { op: "cublas", msg: format!("{e:?}") })?;
            unsafe { cublas::set_stream(handle, self.stream as _) }
                .map_err(|e| Error::Device { op: "cublas", msg: format!("{e:?}") })?;
            *guard = Some(handle);
        }
        f(guard.unwrap())
    }

    /// Milliseconds of GPU time `work` queues, measured with CUDA events on our stream.
    pub fn time_ms(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<f32> {
        self.bind()?;
        let err = |e| driver_error("cuda event", e);
        let start = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(err)?;
        let end = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(err)?;
        let timed = (|| {
            unsafe { result::event::record(start, self.stream) }.map_err(err)?;
            work()?;
            unsafe { result::event::record(end, self.stream) }.map_err(err)?;
            unsafe { result::event::synchronize(end) }.map_err(err)?;
            unsafe { result::event::elapsed(start, end) }.map_err(err)
        })();
        unsafe {
            let _ = result::event::destroy(start);
            let _ = result::event::destroy(end);
        }
        timed
    }
}

impl Driver {
    /// Runs `enqueue` (which queues work on our stream) and waits for that work by polling an
    /// event, calling `check` between polls; gives up after `timeout`. For work that may never
    /// finish — a collective whose peer died — where a blocking synchronise would hang forever.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn run_polling(
        &self,
        enqueue: impl FnOnce(sys::CUstream) -> Result<()>,
        timeout: std::time::Duration,
        mut check: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        self.bind()?;
        let err = |e| driver_error("cuda event", e);
        let done = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(err)?;
        let waited = (|| {
            enqueue(self.stream)?;
            unsafe { result::event::record(done, self.stream) }.map_err(err)?;
            let deadline = std::time::Instant::now() + timeout;
            loop {
                match unsafe { result::event::query(done) } {
                    Ok(()) => return Ok(()),
                    Err(result::DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => {}
                    Err(e) => return Err(err(e)),
                }
                check()?;
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Device {
                        op: "cuda wait",
                        msg: format!("the queued work did not finish within {} s", timeout.as_secs_f64()),
                    });
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })();
        unsafe {
            let _ = result::event::destroy(done);
        }
        waited
    }
}

impl RawMemory for Driver {
    fn raw_alloc(&self, bytes: usize) -> std::result::Result<u64, RawAllocError> {
        self.bind().map_err(|e| RawAllocError::Other(e.to_string()))?;
        // cuMemAlloc is stream-ordered with respect to nothing: blocks are owned by the cache
        // from here on, and only ever used on our stream.
        match unsafe { result::malloc_sync(bytes) } {
            Ok(ptr) => Ok(ptr),
            Err(result::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => Err(RawAllocError::OutOfMemory),
            Err(e) => Err(RawAllocError::Other(driver_error("cuda alloc", e).to_string())),
        }
    }

    unsafe fn raw_free(&self, ptr: u64, _bytes: usize) {
        // Freeing waits for the device: only the cache-release path calls it.
        if self.bind().is_ok() {
            let _ = result::stream::synchronize(self.stream);
            let _ = result::free_sync(ptr);
        }
    }
}
