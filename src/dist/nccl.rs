//! NCCL between GPU ranks (feature `nccl`): the communicator multi-GPU training
//! uses, through cudarc's bindings to `libnccl` (loaded at run time).
//!
//! Start-up: rank 0 asks NCCL for a unique id and hands it to every other rank
//! over the TCP rendezvous ([`share_from_rank0`]); every rank then joins the
//! NCCL communicator on its own GPU (`LOCAL_RANK`).
//!
//! Two levels:
//! - device collectives on [`DeviceBuffer`]s (`all_reduce_sum_buffer`, ...),
//!   queued on the GPU's stream: what the GPU training loop calls;
//! - the [`Communicator`] trait: tensors on this rank's GPU go to NCCL as they
//!   are (what GPU training sends: gradient buckets, projections, sync batch
//!   norm statistics); host tensors are copied up and back down, so CPU code
//!   and tests run through NCCL unchanged.
//!
//! A dead peer makes NCCL collectives wait forever, so every wait polls:
//! between polls NCCL's asynchronous error state is checked (a peer that closed
//! its connection shows up there), and after the timeout the communicator is
//! aborted. Either way the error names the collective and every later call
//! fails with it, as with the other communicators.
//!
//! NCCL sums in its own order (rings, trees): results are identical on every
//! rank, but not bitwise the rank-order sums of the CPU communicators.

use super::rendezvous::{share_from_rank0, DistEnv};
use super::{check_all_gather_input, check_all_reduce_input, check_root, Communicator};
use crate::any_dispatch;
use crate::backend::cuda::gpu::Backend;
use crate::backend::cuda::{DeviceBuffer, DeviceElement, Gpu};
use crate::error::{Error, Result};
use crate::tensor::{DType, Layout, Storage, Tensor};
use cudarc::nccl::{result as nccl, sys};
use std::sync::Mutex;
use std::time::Duration;

/// Element types NCCL reduces.
pub trait NcclElement: DeviceElement {
    const NCCL: sys::ncclDataType_t;
}
impl NcclElement for f32 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;
}
impl NcclElement for f64 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat64;
}
impl NcclElement for half::bf16 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclBfloat16;
}
impl NcclElement for u8 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclUint8;
}

pub struct NcclCommunicator {
    rank: usize,
    world_size: usize,
    gpu: Gpu,
    timeout: Duration,
    state: Mutex<State>,
}

struct State {
    comm: sys::ncclComm_t,
    /// The first failure; once set, every collective fails with it.
    broken: Option<String>,
}

// SAFETY: the NCCL communicator handle is only used under the mutex.
unsafe impl Send for NcclCommunicator {}
unsafe impl Sync for NcclCommunicator {}

fn nccl_error(op: &str, e: nccl::NcclError) -> String {
    format!("{op}: NCCL error {:?}", e.0)
}

/// Whether `libnccl` can be loaded (cudarc panics on a missing library otherwise).
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

impl NcclCommunicator {
    /// Joins the NCCL communicator of the job `env` describes, on `gpu` (the GPU at this
    /// rank's `LOCAL_RANK`). `timeout` bounds the id exchange and every wait in a collective.
    pub fn connect(env: &DistEnv, gpu: Gpu, timeout: Duration) -> Result<NcclCommunicator> {
        const OP: &str = "nccl init";
        let driver = match gpu.backend() {
            Backend::Driver(d) => d,
            Backend::Emulator(_) => return Err(Error::invalid(OP, "NCCL needs a real GPU, not the kernel emulator")),
        };
        if !nccl_present() {
            return Err(Error::dist(
                OP,
                "the NCCL library (libnccl.so) was not found: install NCCL, or put the directory holding \
                 libnccl.so on LD_LIBRARY_PATH (pip's nvidia-nccl wheel ships libnccl.so.2: link it as libnccl.so)",
            ));
        }
        let id_bytes = share_from_rank0(env, timeout, || {
            let id = nccl::get_uniqueid().map_err(|e| Error::dist(OP, nccl_error("ncclGetUniqueId", e)))?;
            Ok(id.internal.iter().map(|&c| c as u8).collect())
        })?;
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        if id_bytes.len() != id.internal.len() {
            return Err(Error::dist(OP, format!("rank 0 sent a {}-byte NCCL id, not 128", id_bytes.len())));
        }
        for (dst, &src) in id.internal.iter_mut().zip(&id_bytes) {
            *dst = src as core::ffi::c_char;
        }
        // NCCL takes the device from the calling thread's current context.
        driver.bind()?;
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; every rank passes the same id and world size.
        unsafe { nccl::comm_init_rank(&mut comm, env.world_size as i32, id, env.rank as i32) }
            .map_err(|e| Error::dist(OP, nccl_error("ncclCommInitRank", e)))?;
        Ok(NcclCommunicator {
            rank: env.rank,
            world_size: env.world_size,
            gpu,
            timeout,
            state: Mutex::new(State { comm, broken: None }),
        })
    }

    /// Runs one NCCL call (`call(comm, stream)`) and waits for it, watching for peer failures.
    fn run(&self, op: &'static str, call: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<()>) -> Result<()> {
        let Backend::Driver(driver) = self.gpu.backend() else {
            return Err(Error::invalid(op, "NCCL needs a real GPU"));
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(msg) = &state.broken {
            return Err(Error::dist(op, format!("the job already failed: {msg}")));
        }
        let comm = state.comm;
        let check = || {
            let mut async_error = sys::ncclResult_t::ncclSuccess;
            // SAFETY: `comm` is live; the out-pointer is valid.
            unsafe { sys::ncclCommGetAsyncError(comm, &mut async_error) };
            match async_error {
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => Ok(()),
                e => Err(Error::dist(
                    op,
                    format!(
                        "NCCL reports {e:?}: a rank left the job (its process exited or crashed) or the network failed"
                    ),
                )),
            }
        };
        let outcome = driver.run_polling(|stream| call(comm, stream as sys::cudaStream_t), self.timeout, check);
        if let Err(e) = &outcome {
            let msg = match e {
                Error::Device { op: "cuda wait", .. } => format!(
                    "timed out after {} s in {op}: a rank is stuck or much slower than the others — raise \
                     --dist_timeout if it is only slow",
                    self.timeout.as_secs_f64()
                ),
                other => other.to_string(),
            };
            // The queued collective may never finish: abort the communicator so nothing waits on it.
            // SAFETY: `comm` is live and not used again after this (the state is broken).
            unsafe {
                let _ = nccl::comm_abort(comm);
            }
            state.broken = Some(msg.clone());
            return Err(Error::dist(op, msg));
        }
        Ok(())
    }

    /// Σ over ranks, in place.
    pub fn all_reduce_sum_buffer<T: NcclElement>(&self, buf: &mut DeviceBuffer<T>) -> Result<()> {
        self.all_reduce_ptrs(buf.device_ptr(), buf.device_ptr(), buf.len(), T::NCCL)
    }

    /// Every rank's `send` concatenated in rank order into `recv` (world_size × send.len()).
    pub fn all_gather_buffer<T: NcclElement>(&self, send: &DeviceBuffer<T>, recv: &mut DeviceBuffer<T>) -> Result<()> {
        if recv.len() != send.len() * self.world_size {
            return Err(Error::shape(
                "all_gather",
                format!("receive buffer has {} elements, needs {} × {}", recv.len(), self.world_size, send.len()),
            ));
        }
        self.all_gather_ptrs(send.device_ptr(), recv.device_ptr(), send.len(), T::NCCL)
    }

    /// `root`'s buffer on every rank, in place.
    pub fn broadcast_buffer<T: NcclElement>(&self, buf: &mut DeviceBuffer<T>, root: usize) -> Result<()> {
        check_root(root, self.world_size)?;
        self.broadcast_ptrs(buf.device_ptr(), buf.device_ptr(), buf.len(), T::NCCL, root)
    }

    // The three NCCL calls, on device addresses: `send` and `recv` (the same address for in
    // place) hold `n` elements of `dtype` (all_gather's `recv`: world_size · n) and stay live
    // for the call; the caller makes sure of it.

    fn all_reduce_ptrs(&self, send: u64, recv: u64, n: usize, dtype: sys::ncclDataType_t) -> Result<()> {
        self.run("all_reduce_sum", |comm, stream| {
            // SAFETY: see above; NCCL allows send == recv.
            unsafe { nccl::all_reduce(send as _, recv as _, n, dtype, sys::ncclRedOp_t::ncclSum, comm, stream) }
                .map(drop)
                .map_err(|e| Error::dist("all_reduce_sum", nccl_error("ncclAllReduce", e)))
        })
    }

    fn all_gather_ptrs(&self, send: u64, recv: u64, n: usize, dtype: sys::ncclDataType_t) -> Result<()> {
        self.run("all_gather", |comm, stream| {
            // SAFETY: see above.
            unsafe { nccl::all_gather(send as _, recv as _, n, dtype, comm, stream) }
                .map(drop)
                .map_err(|e| Error::dist("all_gather", nccl_error("ncclAllGather", e)))
        })
    }

    fn broadcast_ptrs(&self, send: u64, recv: u64, n: usize, dtype: sys::ncclDataType_t, root: usize) -> Result<()> {
        self.run("broadcast", |comm, stream| {
            // SAFETY: see above; `send` is read on the root only.
            unsafe { nccl::broadcast(send as _, recv as _, n, dtype, root as i32, comm, stream) }
                .map(drop)
                .map_err(|e| Error::dist("broadcast", nccl_error("ncclBroadcast", e)))
        })
    }

    /// A host tensor's bytes on the GPU.
    fn upload_bytes(&self, t: &Tensor) -> Result<DeviceBuffer<u8>> {
        self.gpu.upload(t.contiguous_storage()?.as_bytes())
    }

    fn download_tensor(&self, buf: &DeviceBuffer<u8>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let bytes = self.gpu.download(buf)?;
        let storage = Storage::from_bytes(dtype, &bytes)
            .ok_or_else(|| Error::dist("nccl", "internal: downloaded bytes do not divide into elements"))?;
        Ok(Tensor::from_parts(storage, Layout::contiguous(shape)))
    }
}

impl Drop for NcclCommunicator {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if state.broken.is_none() {
            // SAFETY: the communicator is live and no collective is in flight (every call waited).
            unsafe {
                let _ = nccl::comm_destroy(state.comm);
            }
        }
    }
}

/// NCCL's name for a tensor dtype.
fn nccl_dtype(dtype: DType) -> sys::ncclDataType_t {
    match dtype {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::F64 => sys::ncclDataType_t::ncclFloat64,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
        DType::U8 => sys::ncclDataType_t::ncclUint8,
        DType::I64 => sys::ncclDataType_t::ncclInt64,
    }
}

impl NcclCommunicator {
    /// Whether `t` lives on this communicator's GPU (then the collective runs on its device
    /// buffer); an error for a tensor on another GPU, which NCCL on this rank cannot reach.
    fn on_this_gpu(&self, op: &'static str, t: &Tensor) -> Result<bool> {
        match t.gpu() {
            None => Ok(false),
            Some((gpu, _)) if gpu.same_device(&self.gpu) => Ok(true),
            Some((_, ordinal)) => Err(Error::invalid(
                op,
                format!("the tensor is on CUDA device {ordinal}, not the GPU this rank's NCCL communicator uses"),
            )),
        }
    }

    /// A collective on a device tensor, with no host copy: `call(send, recv, count, dtype)`
    /// gets the address of `t`'s row-major elements and of a fresh buffer of
    /// `count_out` elements of the same dtype, which becomes the result, shaped `shape`.
    fn on_device(
        &self,
        t: &Tensor,
        shape: &[usize],
        call: impl FnOnce(u64, u64, usize, sys::ncclDataType_t) -> Result<()>,
    ) -> Result<Tensor> {
        let t = crate::autograd::no_grad(|| t.contiguous())?;
        let storage = t.device_storage("nccl")?;
        let ordinal = storage.ordinal;
        let send = storage.device_ptr_at(t.layout().offset);
        any_dispatch!(t.dtype(), T => {
            let recv = self.gpu.alloc::<T>(crate::tensor::layout::numel(shape))?;
            call(send, recv.device_ptr(), t.numel(), nccl_dtype(t.dtype()))?;
            Tensor::from_device_buffer(recv, shape, ordinal)
        })
    }
}

/// Host tensors are copied to the GPU for the collective and back (so CPU training code runs
/// over NCCL unchanged); tensors on this rank's GPU go to NCCL as they are, and the result
/// stays there.
impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        check_all_reduce_input(t)?;
        if self.on_this_gpu("all_reduce_sum", t)? {
            return self.on_device(t, t.shape(), |send, recv, n, dtype| self.all_reduce_ptrs(send, recv, n, dtype));
        }
        let buf = self.upload_bytes(t)?;
        // The byte buffer holds the tensor's elements: reduce them as their float type.
        match t.dtype() {
            DType::F32 | DType::F64 => {
                self.all_reduce_ptrs(buf.device_ptr(), buf.device_ptr(), t.numel(), nccl_dtype(t.dtype()))?
            }
            other => {
                return Err(Error::dtype("all_reduce_sum", format!("the NCCL path sums f32 and f64, not {other}")))
            }
        }
        self.download_tensor(&buf, t.dtype(), t.shape())
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        check_all_gather_input(t)?;
        let mut shape = t.shape().to_vec();
        shape[0] *= self.world_size;
        if self.on_this_gpu("all_gather", t)? {
            return self.on_device(t, &shape, |send, recv, n, dtype| self.all_gather_ptrs(send, recv, n, dtype));
        }
        let send = self.upload_bytes(t)?;
        let mut recv = self.gpu.alloc::<u8>(send.len() * self.world_size)?;
        self.all_gather_buffer(&send, &mut recv)?;
        self.download_tensor(&recv, t.dtype(), &shape)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, self.world_size)?;
        if self.on_this_gpu("broadcast", t)? {
            return self
                .on_device(t, t.shape(), |send, recv, n, dtype| self.broadcast_ptrs(send, recv, n, dtype, root));
        }
        let mut buf = self.upload_bytes(t)?;
        self.broadcast_buffer(&mut buf, root)?;
        self.download_tensor(&buf, t.dtype(), t.shape())
    }

    fn barrier(&self) -> Result<()> {
        let mut one = self.gpu.zeros::<f32>(1)?;
        self.all_reduce_sum_buffer(&mut one)
    }
}
