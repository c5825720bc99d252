//! Which communicator a launched rank joins (`simclr-train --dist_backend auto|nccl|tcp`).
//!
//! NCCL is what GPU ranks should use: it moves device tensors GPU to GPU (NVLink,
//! InfiniBand) with no host copy. TCP works everywhere: CPU ranks, and GPU ranks
//! where NCCL is missing or the GPUs are emulated, staging device tensors through
//! host memory. `auto` (the default) picks NCCL when every condition for it holds
//! and says why when it does not; `nccl` insists, with a clear error otherwise.

use super::rendezvous::DistEnv;
use super::{Communicator, TcpCommunicator};
use crate::backend::Device;
use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// `--dist_backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistBackend {
    Auto,
    Nccl,
    Tcp,
}

impl std::str::FromStr for DistBackend {
    type Err = Error;
    fn from_str(s: &str) -> Result<DistBackend> {
        match s {
            "auto" => Ok(DistBackend::Auto),
            "nccl" => Ok(DistBackend::Nccl),
            "tcp" => Ok(DistBackend::Tcp),
            other => {
                Err(Error::invalid("--dist_backend", format!("unknown backend '{other}': choose auto, nccl or tcp")))
            }
        }
    }
}

/// Why NCCL cannot serve ranks training on `device`, or `None` when it can.
fn nccl_unavailable(device: Device) -> Option<String> {
    let Device::Cuda(ordinal) = device else {
        return Some("the ranks train on the CPU".into());
    };
    #[cfg(feature = "nccl")]
    {
        match crate::backend::cuda::devices::gpu(ordinal) {
            Ok(gpu) if gpu.is_emulated() => Some("the GPUs are the kernel emulator".into()),
            Ok(_) if !super::nccl::nccl_present() => {
                Some("libnccl.so was not found (install NCCL or put it on LD_LIBRARY_PATH)".into())
            }
            Ok(_) => None,
            Err(e) => Some(format!("cuda:{ordinal} did not open: {e}")),
        }
    }
    #[cfg(not(feature = "nccl"))]
    {
        let _ = ordinal;
        Some("this build has no NCCL (build with --features nccl)".into())
    }
}

/// Joins the job `env` describes with the communicator `backend` asks for, for a rank that
/// trains on `device`. Returns it with one line saying which and why (for rank 0 to print).
pub fn connect_rank(
    env: &DistEnv,
    backend: DistBackend,
    device: Device,
    timeout: Duration,
) -> Result<(Arc<dyn Communicator>, String)> {
    let tcp = |why: String| -> Result<(Arc<dyn Communicator>, String)> {
        Ok((Arc::new(TcpCommunicator::connect(env, timeout)?), format!("collectives over TCP ({why})")))
    };
    match (backend, nccl_unavailable(device)) {
        (DistBackend::Tcp, _) => tcp("--dist_backend tcp".into()),
        (DistBackend::Auto, Some(why)) => tcp(format!("--dist_backend auto: no NCCL, {why}")),
        (DistBackend::Nccl, Some(why)) => {
            Err(Error::invalid("--dist_backend", format!("nccl is not available: {why}")))
        }
        (_, None) => nccl(env, device, timeout),
    }
}

#[cfg(feature = "nccl")]
fn nccl(env: &DistEnv, device: Device, timeout: Duration) -> Result<(Arc<dyn Communicator>, String)> {
    let Device::Cuda(ordinal) = device else { unreachable!("NCCL is only chosen for GPU ranks") };
    let gpu = crate::backend::cuda::devices::gpu(ordinal)?;
    let comm = super::nccl::NcclCommunicator::connect(env, gpu, timeout)?;
    Ok((Arc::new(comm), "collectives through NCCL, on device buffers".into()))
}

#[cfg(not(feature = "nccl"))]
fn nccl(_: &DistEnv, _: Device, _: Duration) -> Result<(Arc<dyn Communicator>, String)> {
    unreachable!("nccl_unavailable says so without the feature")
}
