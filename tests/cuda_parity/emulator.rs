//! The kernel emulator's own self-test (kernels/emu/selftest*.{cu,cpp}): barriers with
//! early-returning threads, warp shuffles and votes, dynamic shared memory, atomics, bf16/f16
//! bit patterns, 2-D grids, and broken kernels aborting instead of hanging. Every other parity
//! test trusts the emulator to model CUDA faithfully; this checks that it does.

use std::path::Path;
use std::process::Command;

#[test]
fn emulator_selftest_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::temp_dir().join(format!("simclr_emu_selftest_{}", std::process::id()));
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let build = Command::new(&compiler)
        .current_dir(root)
        .args(["-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas", "-x", "c++", "-include"])
        .args(["kernels/emu/cuda_emu.h", "kernels/emu/selftest.cu", "-x", "none"])
        .args(["kernels/emu/selftest_main.cpp", "kernels/emu/emu_runtime.cpp", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{compiler}`: {e}"));
    assert!(build.status.success(), "selftest build failed:\n{}", String::from_utf8_lossy(&build.stderr));
    let run = Command::new(&exe).output().expect("run the emulator selftest");
    let _ = std::fs::remove_file(&exe);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains("checks passed"),
        "emulator selftest failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
}
