//! Which device a rank trains on, and what the console and the metrics say about it.

use crate::backend::Device;
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use serde_json::json;

/// The device this process trains on: the CPU, or for `--device cuda` the GPU of its local
/// rank (0 without a launcher), opened here so that a missing driver or GPU fails before any work.
/// With `--device auto`, also why that device (for the console).
pub fn training_device(cfg: &TrainConfig) -> Result<(Device, Option<String>)> {
    let local_rank = crate::dist::DistEnv::from_env()?.map_or(0, |env| env.local_rank);
    let (wanted, reason) = match cfg.device.as_str() {
        "auto" => {
            let (device, reason) = auto_device(local_rank)?;
            (device, Some(reason))
        }
        "cuda" => (Device::Cuda(local_rank), None),
        _ => (Device::Cpu, None),
    };
    if wanted == Device::Cpu {
        return Ok((Device::Cpu, reason));
    }
    #[cfg(feature = "cuda")]
    {
        crate::backend::cuda::devices::gpu(local_rank)?;
        crate::backend::cuda::set_deterministic(cfg.deterministic);
        Ok((wanted, reason))
    }
    #[cfg(not(feature = "cuda"))]
    Err(Error::invalid("--device", "this build has no CUDA backend (build with --features cuda); use --device cpu"))
}

/// Whether the steps run under bf16 autocast (`--precision`): `auto` means on a GPU only, as
/// the CPU is the f32 reference; `bf16` on a CPU without AVX512-BF16 is refused here, before
/// any work, with the reason.
pub(super) fn autocast_bf16(cfg: &TrainConfig, device: Device) -> Result<bool> {
    match (cfg.precision.as_str(), device) {
        ("f32", _) | ("auto", Device::Cpu) => Ok(false),
        ("bf16", Device::Cpu) if !crate::backend::cpu::gemm_bf16::supported() => {
            Err(Error::invalid("--precision", crate::ops::autocast::BF16_CPU_UNSUPPORTED))
        }
        _ => Ok(true),
    }
}

/// `--device auto`: the GPU of this rank's local rank when the machine has GPUs (and this build
/// the CUDA backend), else the CPU; with the reason.
fn auto_device(local_rank: usize) -> Result<(Device, String)> {
    #[cfg(feature = "cuda")]
    {
        match crate::backend::cuda::devices::device_count() {
            Ok(0) => Ok((Device::Cpu, "no CUDA device on this machine".into())),
            Ok(n) if local_rank < n => Ok((Device::Cuda(local_rank), format!("{n} CUDA device(s) on this machine"))),
            Ok(n) => Err(Error::invalid(
                "--device",
                format!("auto: this is local rank {local_rank}, but the machine has only {n} CUDA device(s)"),
            )),
            Err(e) => Ok((Device::Cpu, format!("no usable CUDA driver: {e}"))),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = local_rank;
        Ok((Device::Cpu, "this build has no CUDA backend (build with --features cuda for GPUs)".into()))
    }
}

/// "NVIDIA H100 80GB HBM3 (cuda:0)" (the emulator says it is one), for the console; `None` on the CPU.
pub(super) fn device_name(device: Device) -> Option<String> {
    match device {
        Device::Cpu => None,
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => crate::backend::cuda::devices::gpu(i).ok().map(|g| format!("{} (cuda:{i})", g.name())),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => None,
    }
}

/// Peak GPU memory so far in MiB: (held by tensors, reserved by the caching allocator); `None` on the CPU.
pub(super) fn gpu_memory(device: Device) -> Option<(f64, f64)> {
    match device {
        Device::Cpu => None,
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            let stats = crate::backend::cuda::devices::gpu(i).ok()?.memory_stats();
            let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
            Some((mib(stats.peak_in_use_bytes), mib(stats.peak_reserved_bytes)))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => None,
    }
}

/// Adds the GPU memory peaks to a metrics record (nothing on the CPU).
pub(super) fn add_gpu_memory(record: &mut serde_json::Value, device: Device) {
    if let Some((peak, reserved)) = gpu_memory(device) {
        record["gpu_peak_mib"] = json!(peak);
        record["gpu_reserved_peak_mib"] = json!(reserved);
    }
}
