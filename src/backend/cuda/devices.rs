//! Which [`Gpu`] a `Device::Cuda(ordinal)` tensor lives on: one handle per ordinal, opened
//! on first use and shared by every tensor on that device (so they share its allocator).
//!
//! With `SIMCLR_CUDA_EMULATOR=1` in the environment (or after [`use_emulator`]), every
//! ordinal is the CPU emulator of the kernels instead: the whole device path — tensors,
//! ops, autograd, training — then runs, slowly, on a machine without a GPU, which is how
//! the test suite checks it against the CPU backend. `SIMCLR_CUDA_EMULATOR_MEMORY_MIB` sets
//! the emulator's device memory (default 4 GiB), so a test can make a run exhaust it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::Gpu;
use crate::error::{Error, Result};

/// The environment variable that turns every CUDA device into the emulator.
pub const EMULATOR_ENV: &str = "SIMCLR_CUDA_EMULATOR";
/// The emulator's memory per device in MiB (out-of-memory tests of whole runs).
pub const EMULATOR_MEMORY_ENV: &str = "SIMCLR_CUDA_EMULATOR_MEMORY_MIB";
/// How many devices the emulator says the machine has (default 1): `--ddp --device cuda` with
/// several GPU ranks, tested on a machine without any.
pub const EMULATOR_DEVICES_ENV: &str = "SIMCLR_CUDA_EMULATOR_DEVICES";

fn registry() -> &'static Mutex<HashMap<usize, Gpu>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Gpu>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn emulator_requested() -> &'static std::sync::atomic::AtomicBool {
    static FLAG: OnceLock<std::sync::atomic::AtomicBool> = OnceLock::new();
    FLAG.get_or_init(|| {
        let on = std::env::var(EMULATOR_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        std::sync::atomic::AtomicBool::new(on)
    })
}

/// Makes every CUDA ordinal not yet opened in this process the CPU emulator (tests).
pub fn use_emulator() {
    emulator_requested().store(true, std::sync::atomic::Ordering::SeqCst);
}

/// True when CUDA devices of this process are (or will be) the emulator.
pub fn emulated() -> bool {
    emulator_requested().load(std::sync::atomic::Ordering::SeqCst)
}

/// The handle of CUDA device `ordinal`, opening it on first use.
pub fn gpu(ordinal: usize) -> Result<Gpu> {
    let mut devices = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = devices.get(&ordinal) {
        return Ok(g.clone());
    }
    let g = if emulated() {
        match emulator_memory()? {
            Some(bytes) => Gpu::emulated_with_memory(bytes),
            None => Gpu::emulated(),
        }
    } else {
        Gpu::open(ordinal)?
    };
    devices.insert(ordinal, g.clone());
    Ok(g)
}

/// The emulator memory asked for in the environment, in bytes (`None`: the default).
fn emulator_memory() -> Result<Option<usize>> {
    let Ok(v) = std::env::var(EMULATOR_MEMORY_ENV) else { return Ok(None) };
    match v.trim().parse::<usize>() {
        Ok(mib) if mib > 0 => Ok(Some(mib << 20)),
        _ => Err(Error::invalid(EMULATOR_MEMORY_ENV, format!("{v:?} is not a positive number of MiB"))),
    }
}

/// Makes device `ordinal` of this process an emulator with `bytes` of memory (tests of the
/// out-of-memory path, beside devices of the default size). An error if it is already open.
pub fn insert_emulated(ordinal: usize, bytes: usize) -> Result<Gpu> {
    let mut devices = registry().lock().unwrap_or_else(|p| p.into_inner());
    if devices.contains_key(&ordinal) {
        return Err(Error::invalid("insert_emulated", format!("CUDA device {ordinal} is already open")));
    }
    let g = Gpu::emulated_with_memory(bytes);
    devices.insert(ordinal, g.clone());
    Ok(g)
}

/// How many CUDA devices training can use: the driver's count, or 1 on the emulator (which
/// stands in for any ordinal, but one is what a run without a GPU should assume).
pub fn device_count() -> Result<usize> {
    if emulated() {
        match std::env::var(EMULATOR_DEVICES_ENV) {
            Err(_) => Ok(1),
            Ok(v) => v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                Error::invalid(EMULATOR_DEVICES_ENV, format!("`{v}` is not a positive number of devices"))
            }),
        }
    } else {
        Gpu::device_count()
    }
}
