//! The kernels' resources as ptxas reports them (build.rs's `SIGNATURES`) and the launch checks
//! built on them (src/backend/cuda/launch_check.rs): a launch with the wrong arguments, or a
//! block that needs more registers or shared memory than an SM has, is an error naming the
//! kernel — on the emulator as on the GPU, where it would otherwise be a silent wrong value or a
//! "too many resources" failure seen first on the hardware.

use simclr::backend::cuda::launch_check::{block_registers, signature, REGISTERS_PER_SM, SHARED_MEMORY_PER_BLOCK};
use simclr::backend::cuda::{Arg, LaunchConfig, SIGNATURES};

/// Kernels allowed to spill registers, with why they are not on a training step's path.
const MAY_SPILL: &[(&str, &str)] = &[
    ("layernorm_bwd_block_vec1_f32", "layer-norm rows longer than 1024 only; ViViT's are at most 768"),
    ("layernorm_bwd_block_vec4_bf16", "layer-norm rows longer than 1024 only; ViViT's are at most 768"),
];

#[test]
fn no_kernel_on_a_training_path_spills_registers() {
    let spilling: Vec<String> = SIGNATURES
        .iter()
        .filter(|s| s.spill_bytes > 0 && !MAY_SPILL.iter().any(|(name, _)| *name == s.name))
        .map(|s| format!("{} ({} registers, {} bytes of spill stores + loads)", s.name, s.registers, s.spill_bytes))
        .collect();
    assert!(spilling.is_empty(), "kernels that spill registers:\n{}", spilling.join("\n"));
}

#[test]
fn every_kernel_fits_the_limits_of_one_block() {
    let mut by_registers: Vec<_> = SIGNATURES.iter().collect();
    by_registers.sort_by_key(|s| std::cmp::Reverse(s.registers));
    eprintln!("largest register counts (registers per thread, static shared bytes, stack bytes):");
    for s in &by_registers[..6] {
        eprintln!("  {:<36} {:>4} {:>6} {:>4}", s.name, s.registers, s.static_smem, s.stack_bytes);
    }
    for s in SIGNATURES {
        assert!(s.registers <= 255, "{}: {} registers", s.name, s.registers);
        assert!(
            s.static_smem <= SHARED_MEMORY_PER_BLOCK,
            "{}: {} bytes of static shared memory",
            s.name,
            s.static_smem
        );
        // Every kernel can run at least one warp.
        assert!(block_registers(s, 32) <= REGISTERS_PER_SM, "{}", s.name);
    }
}

parity_test!(launches_that_do_not_fit_the_kernel_are_errors, |gpu| {
    // attention_bwd_d128_w2_bf16 is built for 64 threads (its __launch_bounds__) at ~245
    // registers: 512 threads would need twice the SM's register file.
    let name = "attention_bwd_d128_w2_bf16";
    let sig = signature(name).unwrap();
    assert!(block_registers(sig, 512) > REGISTERS_PER_SM, "{sig:?}");
    let args: Vec<Arg> = sig
        .params
        .iter()
        .map(|p| match *p {
            "u64" => Arg::Ptr(0),
            "f32" => Arg::F32(1.0),
            _ => Arg::I32(1),
        })
        .collect();
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (512, 1, 1), shared_bytes: 0 };
    let err = gpu.launch(name, cfg, &args).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("registers"), "{err}");

    // 48 KiB of static shared memory already: no room for dynamic shared memory.
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (64, 1, 1), shared_bytes: SHARED_MEMORY_PER_BLOCK };
    let err = gpu.launch(name, cfg, &args).unwrap_err().to_string();
    assert!(err.contains("shared memory"), "{err}");

    // One argument short, and an int where the kernel takes a pointer.
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (64, 1, 1), shared_bytes: 0 };
    let err = gpu.launch(name, cfg, &args[1..]).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains(&format!("takes {}", args.len())), "{err}");
    let mut swapped = args.clone();
    swapped[0] = Arg::I32(0);
    let err = gpu.launch(name, cfg, &swapped).unwrap_err().to_string();
    assert!(err.contains("u32, u64"), "{err}");
});
