//! The caching allocator: device memory is expensive to allocate (`cuMemAlloc` synchronises
//! the device and takes tens of microseconds), and a training step allocates the same sizes
//! every step. So freed blocks are kept in per-size-class free lists and handed out again.
//!
//! Reuse is safe without events because the backend issues all work on one stream: a kernel
//! that writes a reused block is queued after every kernel that used its previous owner.
//!
//! When the device runs out of memory, the cache is released and the allocation retried once;
//! if that fails too the caller gets [`Error::OutOfMemory`], which tells the user to reduce
//! `--batch_size`.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// The smallest block: keeps every block 512-byte aligned, like the CUDA driver's own.
const MIN_BLOCK: usize = 512;

/// How the device (or the emulator) hands out raw memory.
pub(crate) trait RawMemory {
    fn raw_alloc(&self, bytes: usize) -> std::result::Result<u64, RawAllocError>;
    /// # Safety
    /// `ptr` came from `raw_alloc(bytes)` and is freed once.
    unsafe fn raw_free(&self, ptr: u64, bytes: usize);
}

#[derive(Debug)]
pub(crate) enum RawAllocError {
    OutOfMemory,
    Other(String),
}

/// Counters for one device, as `torch.cuda.memory_stats` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in blocks currently owned by buffers (rounded to size classes).
    pub in_use_bytes: usize,
    pub peak_in_use_bytes: usize,
    /// Bytes obtained from the device: in use plus cached.
    pub reserved_bytes: usize,
    pub peak_reserved_bytes: usize,
    /// Buffer allocations served, and how many of them came from the cache.
    pub allocations: u64,
    pub cache_hits: u64,
    /// Times the cache was emptied to satisfy an allocation the device refused.
    pub oom_retries: u64,
}

/// Rounds a request up to its size class: 512 B minimum, then four classes per power of
/// two (at most 25 % waste), so a block is reused for any request of the same class.
pub(crate) fn size_class(bytes: usize) -> usize {
    if bytes <= MIN_BLOCK {
        return MIN_BLOCK;
    }
    let pow = bytes.next_power_of_two();
    let step = (pow / 8).max(MIN_BLOCK);
    bytes.div_ceil(step) * step
}

#[derive(Default)]
pub(crate) struct CachingAllocator {
    /// Free blocks by size class.
    free: HashMap<usize, Vec<u64>>,
    stats: MemoryStats,
}

impl CachingAllocator {
    /// Returns a block of at least `bytes` and its size class (which `release` needs back).
    pub fn allocate(&mut self, raw: &dyn RawMemory, bytes: usize, device: &str) -> Result<(u64, usize)> {
        let class = size_class(bytes);
        self.stats.allocations += 1;
        let ptr = if let Some(ptr) = self.free.get_mut(&class).and_then(Vec::pop) {
            self.stats.cache_hits += 1;
            ptr
        } else {
            let ptr = match raw.raw_alloc(class) {
                Ok(ptr) => ptr,
                Err(RawAllocError::OutOfMemory) => {
                    // Cached blocks of other sizes may be what stands in the way.
                    self.stats.oom_retries += 1;
                    self.release_cache(raw);
                    match raw.raw_alloc(class) {
                        Ok(ptr) => ptr,
                        Err(RawAllocError::OutOfMemory) => return Err(self.out_of_memory(bytes, device)),
                        Err(RawAllocError::Other(msg)) => return Err(alloc_error(device, msg)),
                    }
                }
                Err(RawAllocError::Other(msg)) => return Err(alloc_error(device, msg)),
            };
            self.stats.reserved_bytes += class;
            self.stats.peak_reserved_bytes = self.stats.peak_reserved_bytes.max(self.stats.reserved_bytes);
            ptr
        };
        self.stats.in_use_bytes += class;
        self.stats.peak_in_use_bytes = self.stats.peak_in_use_bytes.max(self.stats.in_use_bytes);
        Ok((ptr, class))
    }

    /// Puts a block back in its free list (it stays reserved on the device).
    pub fn release(&mut self, ptr: u64, class: usize) {
        self.stats.in_use_bytes -= class;
        self.free.entry(class).or_default().push(ptr);
    }

    /// Returns every cached block to the device.
    pub fn release_cache(&mut self, raw: &dyn RawMemory) {
        for (class, ptrs) in self.free.drain() {
            for ptr in ptrs {
                // SAFETY: cached blocks came from raw_alloc(class) and are owned by no buffer.
                unsafe { raw.raw_free(ptr, class) };
                self.stats.reserved_bytes -= class;
            }
        }
    }

    pub fn stats(&self) -> MemoryStats {
        self.stats
    }

    pub fn reset_peaks(&mut self) {
        self.stats.peak_in_use_bytes = self.stats.in_use_bytes;
        self.stats.peak_reserved_bytes = self.stats.reserved_bytes;
    }

    fn out_of_memory(&self, requested: usize, device: &str) -> Error {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        Error::OutOfMemory {
            device: device.to_string(),
            requested_mib: mib(requested),
            in_use_mib: mib(self.stats.in_use_bytes),
            reserved_mib: mib(self.stats.reserved_bytes),
        }
    }
}

fn alloc_error(device: &str, msg: String) -> Error {
    Error::Device { op: "cuda alloc", msg: format!("{device}: {msg}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// A device with a fixed capacity that records what it hands out.
    struct FakeDevice {
        capacity: usize,
        used: Cell<usize>,
        next: Cell<u64>,
        live: RefCell<HashMap<u64, usize>>,
    }

    impl FakeDevice {
        fn new(capacity: usize) -> Self {
            FakeDevice { capacity, used: Cell::new(0), next: Cell::new(1 << 20), live: RefCell::default() }
        }
    }

    impl RawMemory for FakeDevice {
        fn raw_alloc(&self, bytes: usize) -> std::result::Result<u64, RawAllocError> {
            if self.used.get() + bytes > self.capacity {
                return Err(RawAllocError::OutOfMemory);
            }
            self.used.set(self.used.get() + bytes);
            let ptr = self.next.get();
            self.next.set(ptr + bytes as u64);
            self.live.borrow_mut().insert(ptr, bytes);
            Ok(ptr)
        }
        unsafe fn raw_free(&self, ptr: u64, bytes: usize) {
            assert_eq!(self.live.borrow_mut().remove(&ptr), Some(bytes), "freed a block it did not hand out");
            self.used.set(self.used.get() - bytes);
        }
    }

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        for bytes in [1000, 4097, 65_537, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && c % 512 == 0, "{bytes} -> {c}");
            assert!((c - bytes) as f64 <= 0.25 * bytes as f64 + 512.0, "{bytes} -> {c}");
        }
        // Same class for nearby sizes: that is what makes reuse work.
        assert_eq!(size_class(1_000_000), size_class(1_000_100));
    }

    #[test]
    fn freed_blocks_are_reused_and_counted() {
        let dev = FakeDevice::new(1 << 30);
        let mut a = CachingAllocator::default();
        let (p1, c1) = a.allocate(&dev, 10_000, "fake").unwrap();
        a.release(p1, c1);
        let (p2, c2) = a.allocate(&dev, 10_100, "fake").unwrap();
        assert_eq!((p2, c2), (p1, c1), "a request of the same class reuses the cached block");
        let s = a.stats();
        assert_eq!((s.allocations, s.cache_hits), (2, 1));
        assert_eq!(s.in_use_bytes, c1);
        assert_eq!(s.reserved_bytes, c1);
        let (p3, c3) = a.allocate(&dev, 1 << 20, "fake").unwrap();
        assert_ne!(p3, p1);
        assert_eq!(a.stats().peak_in_use_bytes, c1 + c3);
        a.release(p2, c2);
        a.release(p3, c3);
        assert_eq!(a.stats().in_use_bytes, 0);
        a.release_cache(&dev);
        assert_eq!(a.stats().reserved_bytes, 0);
        assert_eq!(dev.used.get(), 0, "every block went back to the device");
    }

    #[test]
    fn out_of_memory_empties_the_cache_then_says_reduce_batch_size() {
        let dev = FakeDevice::new(4 << 20);
        let mut a = CachingAllocator::default();
        // Fill the device with cached 1 MiB blocks.
        let blocks: Vec<_> = (0..4).map(|_| a.allocate(&dev, 1 << 20, "fake").unwrap()).collect();
        for (p, c) in blocks {
            a.release(p, c);
        }
        // A 2 MiB block only fits once the cache is returned.
        let (p, c) = a.allocate(&dev, 2 << 20, "fake").unwrap();
        assert_eq!(a.stats().oom_retries, 1);
        assert_eq!(a.stats().reserved_bytes, c);
        // Now nothing fits: the error names the sizes and the remedy.
        let err = a.allocate(&dev, 3 << 20, "fake GPU").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{msg}");
        assert!(msg.contains("reduce --batch_size"), "{msg}");
        assert!(msg.contains("fake GPU") && msg.contains("3.0 MiB") && msg.contains("2.0 MiB in use"), "{msg}");
        // The failed request left the live block alone.
        a.release(p, c);
        a.release_cache(&dev);
        assert_eq!(dev.used.get(), 0);
    }
}
