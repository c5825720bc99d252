//! Every launch checked against the kernel as it was built, on the GPU and the emulator alike.
//!
//! A wrong argument list is silent on both: `cuLaunchKernel` copies as many bytes as the kernel's
//! parameters take from whatever the pointers point at, and the emulator's trampolines do the
//! same. A block that needs more registers or shared memory than an SM has fails on the GPU only
//! ("too many resources requested for launch"), after the emulator ran it happily. build.rs reads
//! both facts for every kernel (the PTX's `.param` lines, ptxas's `-v` report) into
//! [`SIGNATURES`]; this module compares each launch with them and names the kernel when they
//! disagree.

use super::kernels_table::{KernelSignature, SIGNATURES};
use super::launch::{Arg, LaunchConfig};
use crate::error::{Error, Result};

/// The register file of one SM on every GPU since Kepler (compute capability 3.x–9.x).
pub const REGISTERS_PER_SM: u32 = 65536;
/// Registers are given to a warp in units of 256 (8 per thread).
const REGISTER_UNIT_PER_THREAD: u32 = 8;
/// Static plus dynamic shared memory a block may use without the opt-in attribute, which this
/// runtime never sets.
pub const SHARED_MEMORY_PER_BLOCK: u32 = 48 * 1024;

/// The built kernel `name`, if there is one.
pub fn signature(name: &str) -> Option<&'static KernelSignature> {
    SIGNATURES.binary_search_by(|s| s.name.cmp(name)).ok().map(|i| &SIGNATURES[i])
}

/// Registers a block of `threads` threads of this kernel takes from the SM's register file.
pub fn block_registers(sig: &KernelSignature, threads: u32) -> u32 {
    let per_thread = sig.registers.div_ceil(REGISTER_UNIT_PER_THREAD) * REGISTER_UNIT_PER_THREAD;
    threads.div_ceil(32) * 32 * per_thread
}

/// Errors when `args` do not match the kernel's parameters, or the block does not fit an SM.
/// (A kernel missing from the table is left to the launcher, which reports it by name.)
pub(crate) fn check_launch(kernel: &str, cfg: &LaunchConfig, args: &[Arg]) -> Result<()> {
    let Some(sig) = signature(kernel) else { return Ok(()) };
    let fail = |msg: String| Err(Error::Device { op: "cuda launch", msg: format!("{kernel}: {msg}") });

    let passed: Vec<&str> = args.iter().map(ptx_type).collect();
    let fits = passed.len() == sig.params.len() && passed.iter().zip(sig.params).all(|(a, p)| same_kind(a, p));
    if !fits {
        return fail(format!(
            "the launcher passes {} arguments ({}) but the kernel takes {} ({})",
            passed.len(),
            passed.join(", "),
            sig.params.len(),
            sig.params.join(", ")
        ));
    }

    let threads = cfg.block.0 * cfg.block.1 * cfg.block.2;
    let registers = block_registers(sig, threads);
    if registers > REGISTERS_PER_SM {
        return fail(format!(
            "a block of {threads} threads at {} registers each needs {registers} registers, more than the \
             {REGISTERS_PER_SM} of an SM (the GPU refuses the launch: too many resources requested)",
            sig.registers
        ));
    }
    let shared = sig.static_smem + cfg.shared_bytes;
    if shared > SHARED_MEMORY_PER_BLOCK {
        return fail(format!(
            "{} bytes of static and {} of dynamic shared memory exceed the {SHARED_MEMORY_PER_BLOCK} bytes a block \
             gets without the opt-in attribute",
            sig.static_smem, cfg.shared_bytes
        ));
    }
    Ok(())
}

/// The PTX type a launch argument fills.
fn ptx_type(arg: &Arg) -> &'static str {
    match arg {
        Arg::Ptr(_) | Arg::I64(_) => "u64",
        Arg::I32(_) | Arg::U32(_) => "u32",
        Arg::F32(_) => "f32",
        Arg::F64(_) => "f64",
    }
}

/// PTX spells the same width and kind several ways (`s32`, `u32`, `b32`).
fn same_kind(passed: &str, declared: &str) -> bool {
    fn normal(t: &str) -> &str {
        match t {
            "u32" | "s32" | "b32" => "u32",
            "u64" | "s64" | "b64" => "u64",
            other => other,
        }
    }
    normal(passed) == normal(declared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_has_a_signature() {
        for module in super::super::MODULES {
            for entry in module.entries {
                assert!(signature(entry).is_some(), "{entry} of {} is missing from SIGNATURES", module.name);
            }
        }
        assert!(SIGNATURES.windows(2).all(|w| w[0].name < w[1].name), "SIGNATURES must be sorted");
    }

    #[test]
    fn wrong_arguments_and_oversized_blocks_are_refused() {
        let name = "conv_wgrad_sum_splits_f32"; // (const float*, float*, long long, int)
        let sig = signature(name).unwrap();
        assert_eq!(sig.params, ["u64", "u64", "u64", "u32"]);
        let cfg = LaunchConfig::for_elements(1000, 256);
        let good = [Arg::Ptr(256), Arg::Ptr(512), Arg::I64(1000), Arg::I32(2)];
        check_launch(name, &cfg, &good).unwrap();
        for bad in [&good[..3], &[Arg::Ptr(256), Arg::Ptr(512), Arg::I32(1000), Arg::I32(2)][..]] {
            let err = check_launch(name, &cfg, bad).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("takes 4 (u64, u64, u64, u32)"), "{err}");
        }
        let big = LaunchConfig { grid: (1, 1, 1), block: (256, 1, 1), shared_bytes: SHARED_MEMORY_PER_BLOCK + 1 };
        let err = check_launch(name, &big, &good).unwrap_err().to_string();
        assert!(err.contains("shared memory"), "{err}");
    }

    #[test]
    fn register_file_arithmetic() {
        let sig =
            KernelSignature { name: "k", params: &[], registers: 255, static_smem: 0, stack_bytes: 0, spill_bytes: 0 };
        assert_eq!(block_registers(&sig, 256), 65536);
        assert_eq!(block_registers(&sig, 257), 65536 + 32 * 256);
        let sig = KernelSignature { registers: 30, ..sig };
        assert_eq!(block_registers(&sig, 1), 32 * 32);
    }
}
