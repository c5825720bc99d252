//! The kernel emulator: the same kernels, compiled for the CPU by build.rs with
//! `kernels/emu/cuda_emu.h`, run one OS thread per CUDA thread. "Device memory" is host
//! memory, so device addresses are ordinary pointers.
//!
//! It exists so that the parity tests execute every kernel on machines without a GPU (CI,
//! laptops). It is slow and says nothing about performance; the same tests run on a real
//! GPU with `cargo test --features cuda -- --ignored`.
//!
//! It is as strict as the GPU where the GPU is unforgiving (kernels/emu/emu_runtime.cpp):
//! shared memory and fresh device memory start as garbage, blocks run in a shuffled order
//! ([`block_order_seed`], `SIMCLR_EMU_BLOCK_SEED`), misaligned vector and tensor-core accesses
//! abort. A panic in a process that used the emulator prints the block-order seed, so a failure
//! that depends on the order can be repeated.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use super::allocator::{RawAllocError, RawMemory};
use super::kernels_table::{emu_tables, EmuKernel};
use super::launch::{LaunchConfig, PackedArgs};
use crate::error::{Error, Result};

extern "C" {
    fn simclr_emu_launch(
        kernel: *const EmuKernel,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        dynamic_smem_bytes: u32,
        args: *mut *mut c_void,
        err: *mut c_char,
        err_len: u32,
    ) -> i32;
    fn simclr_emu_block_seed() -> u64;
    fn simclr_emu_set_block_seed(seed: u64);
}

/// The seed of the order in which the emulator runs a launch's blocks (0: in order x, y, z).
/// Set by `SIMCLR_EMU_BLOCK_SEED`, else random per process.
pub fn block_order_seed() -> u64 {
    // SAFETY: reads an atomic in the emulator runtime.
    unsafe { simclr_emu_block_seed() }
}

/// Changes the block-order seed for the launches that follow (tests of order independence).
pub fn set_block_order_seed(seed: u64) {
    // SAFETY: writes an atomic in the emulator runtime.
    unsafe { simclr_emu_set_block_seed(seed) }
}

/// Once per process: a panic (a failed test) also prints the block-order seed.
fn print_block_order_seed_on_panic() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            eprintln!(
                "kernel emulator: blocks ran in the order of seed {0}; SIMCLR_EMU_BLOCK_SEED={0} repeats it",
                block_order_seed()
            );
            previous(info);
        }));
    });
}

/// Device memory alignment the kernels may assume (vectorised float4 loads need 16).
const ALIGN: usize = 256;

pub(crate) struct Emulator {
    kernels: HashMap<&'static str, &'static EmuKernel>,
    /// Simulated device memory size, so out-of-memory handling can be tested.
    capacity: usize,
    used: AtomicUsize,
}

impl Emulator {
    pub fn new(capacity: usize) -> Emulator {
        let mut kernels = HashMap::new();
        for table in emu_tables() {
            let mut entry: *const EmuKernel = table;
            // SAFETY: build.rs generates each table ending with a null name.
            unsafe {
                while !(*entry).name.is_null() {
                    let name = CStr::from_ptr((*entry).name).to_str().expect("kernel names are ASCII");
                    assert!((*entry).trampoline.is_some(), "emulator table entry {name} has no trampoline");
                    kernels.insert(name, &*entry);
                    entry = entry.add(1);
                }
            }
        }
        print_block_order_seed_on_panic();
        Emulator { kernels, capacity, used: AtomicUsize::new(0) }
    }

    pub fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &mut PackedArgs) -> Result<()> {
        let entry: *const EmuKernel = *self.kernels.get(kernel).ok_or_else(|| unknown_kernel(kernel))?;
        let mut ptrs = args.pointers();
        let mut err = [0 as c_char; 512];
        // SAFETY: the trampoline unpacks exactly the kernel's parameters; the caller (a typed
        // launcher) passes them in order; buffers are host memory owned by live DeviceBuffers.
        let rc = unsafe {
            simclr_emu_launch(
                entry,
                cfg.grid.0,
                cfg.grid.1,
                cfg.grid.2,
                cfg.block.0,
                cfg.block.1,
                cfg.block.2,
                cfg.shared_bytes,
                ptrs.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len() as u32,
            )
        };
        if rc != 0 {
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(Error::Device { op: "cuda launch", msg: format!("{kernel} {cfg:?}: {msg}") });
        }
        Ok(())
    }
}

pub(crate) fn unknown_kernel(kernel: &str) -> Error {
    Error::Device { op: "cuda launch", msg: format!("no kernel named {kernel} in kernels/*.cu") }
}

impl RawMemory for Emulator {
    fn raw_alloc(&self, bytes: usize) -> std::result::Result<u64, RawAllocError> {
        let prev = self.used.fetch_add(bytes, Ordering::SeqCst);
        if prev + bytes > self.capacity {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(RawAllocError::OutOfMemory);
        }
        let layout = Layout::from_size_align(bytes.max(1), ALIGN).map_err(|e| RawAllocError::Other(e.to_string()))?;
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(RawAllocError::OutOfMemory);
        }
        // cudaMalloc'd memory holds whatever was there: all-one bytes (NaN as f32/bf16/f16) make
        // a kernel that reads an output it never wrote, or counts on zeroed memory, fail here too.
        // SAFETY: `ptr` points at `bytes` freshly allocated bytes.
        unsafe { std::ptr::write_bytes(ptr, 0xFF, bytes) };
        Ok(ptr as u64)
    }

    unsafe fn raw_free(&self, ptr: u64, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        std::alloc::dealloc(ptr as *mut u8, Layout::from_size_align_unchecked(bytes.max(1), ALIGN));
    }
}
