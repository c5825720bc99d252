//! The kernels build.rs compiled: one fatbin per `kernels/*.cu` file with the names of its
//! kernels, and the emulator's trampoline tables.

use std::ffi::{c_char, c_void};

/// One compiled kernel file.
pub struct KernelModule {
    /// The file stem (`layernorm` for kernels/layernorm.cu).
    pub name: &'static str,
    /// SASS for sm_80/sm_90 and PTX, as `cuModuleLoadData` takes it.
    pub fatbin: &'static [u8],
    /// The `extern "C" __global__` functions it defines.
    pub entries: &'static [&'static str],
}

pub(crate) type EmuTrampoline = Option<unsafe extern "C" fn(args: *mut *mut c_void)>;

/// Matches `simclr_emu_kernel` in kernels/emu/cuda_emu.h.
#[repr(C)]
pub(crate) struct EmuKernel {
    pub name: *const c_char,
    pub trampoline: EmuTrampoline,
}

include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));
