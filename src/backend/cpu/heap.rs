//! Keeping freed memory for the next tensor instead of handing it back to the OS.
//!
//! glibc's malloc serves blocks above its mmap threshold (dynamic, at most 32 MiB) with
//! fresh mappings and unmaps them on free, so every op that makes a large tensor pays
//! a page fault and a kernel-zeroed page per 4 KiB: ResNet-18's first activations are
//! 84 MB at 320 frames of 64², ~20 ms of faults per op. Training allocates the same
//! sizes step after step, so the binaries raise the threshold (blocks up to 1 GiB come
//! from the heap and are reused) and stop trimming the heap top. The process keeps its
//! peak heap, which a training step reaches every step anyway. Measured on full-width
//! ResNet-18 (benches/train_step): ReLU forward 83 → 50 ms, the whole step ×1.05.

/// Call once at the start of a binary (a no-op where the C library is not glibc).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // From glibc's malloc.h.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only sets allocator parameters; called before threads allocate.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
