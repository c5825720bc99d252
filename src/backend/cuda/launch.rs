//! Kernel launch configuration and arguments.
//!
//! Both the CUDA driver (`cuLaunchKernel`) and the emulator take a kernel's arguments as an
//! array of pointers, one per parameter, each pointing at that parameter's value. [`Arg`] is
//! one value; [`PackedArgs`] keeps the values alive and builds that pointer array.

use std::ffi::c_void;

use super::buffer::{DeviceBuffer, DeviceElement};

/// One kernel parameter. Device buffers are passed as their device address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
}

impl<T: DeviceElement> From<&DeviceBuffer<T>> for Arg {
    fn from(b: &DeviceBuffer<T>) -> Arg {
        Arg::Ptr(b.device_ptr())
    }
}
impl<T: DeviceElement> From<&mut DeviceBuffer<T>> for Arg {
    fn from(b: &mut DeviceBuffer<T>) -> Arg {
        Arg::Ptr(b.device_ptr())
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::I32(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::U32(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I64(v)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Arg {
        Arg::F64(v)
    }
}

/// Builds an `&[Arg]` from buffers and scalars: `args![&x, &mut y, n as i32, eps]`.
#[macro_export]
macro_rules! cuda_args {
    ($($a:expr),* $(,)?) => {
        [$($crate::backend::cuda::Arg::from($a)),*]
    };
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// One thread per element, `block` threads per block.
    pub fn for_elements(n: usize, block: u32) -> LaunchConfig {
        let blocks = n.div_ceil(block as usize).max(1);
        LaunchConfig { grid: (blocks as u32, 1, 1), block: (block, 1, 1), shared_bytes: 0 }
    }

    /// One block per row (`rows` blocks of `block` threads): the layout of row-wise
    /// reductions such as softmax and layer_norm.
    pub fn per_row(rows: usize, block: u32) -> LaunchConfig {
        LaunchConfig { grid: (rows.max(1) as u32, 1, 1), block: (block, 1, 1), shared_bytes: 0 }
    }

    pub fn with_shared_bytes(mut self, bytes: u32) -> LaunchConfig {
        self.shared_bytes = bytes;
        self
    }
}

/// The argument values, 8 bytes each (every `Arg` fits), and pointers to them.
pub(crate) struct PackedArgs {
    values: Vec<u64>,
}

impl PackedArgs {
    pub fn new(args: &[Arg]) -> PackedArgs {
        // Little-endian: a 4-byte parameter read at the slot's address sees the low bytes.
        let values = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::I32(v) => v as u32 as u64,
                Arg::U32(v) => v as u64,
                Arg::I64(v) => v as u64,
                Arg::F32(v) => v.to_bits() as u64,
                Arg::F64(v) => v.to_bits(),
            })
            .collect();
        PackedArgs { values }
    }

    /// The `void**` both launchers take. Valid while `self` is alive and not moved.
    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.values.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect()
    }
}
