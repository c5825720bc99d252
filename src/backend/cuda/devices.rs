//! Which [`Gpu`] a `Device::Cuda(ordinal)` tensor lives on: one handle per ordinal, opened
//! on first use and shared by every tensor on that device (so they share its allocator).
//!
//! With `SIMCLR_CUDA_EMULATOR=1` in the environment (or after [`use_emulator`]), every
//! ordinal is the CPU emulator of the kernels instead: the whole device path — tensors,
//! ops, autograd, training — then runs, slowly, on a machine without a GPU, which is how
//! the test suite checks it against the CPU backend.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::Gpu;
use crate::error::Result;

/// The environment variable that turns every CUDA device into the emulator.
pub const EMULATOR_ENV: &str = "SIMCLR_CUDA_EMULATOR";

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
    let g = if emulated() { Gpu::emulated() } else { Gpu::open(ordinal)? };
    devices.insert(ordinal, g.clone());
    Ok(g)
}
