//! The kernel emulator's own self-test (kernels/emu/selftest*.{cu,cpp}): barriers with
//! early-returning threads, warp shuffles and votes, dynamic shared memory, atomics, bf16/f16
//! bit patterns, 2-D grids, broken kernels aborting instead of hanging, and the planted bugs that
//! only the strict emulator shows (uninitialised static shared memory, block-order dependence,
//! misaligned vector, cp.async, ldmatrix and scalar accesses). Every other parity
//! test trusts the emulator to model CUDA faithfully; this checks that it does.

use std::path::Path;
use std::process::Command;

/// The emulator's compiler, as build.rs picks it: `SIMCLR_EMU_CXX`, else clang++ (the only one
/// that honours the section attribute on templates' `__shared__` arrays), else `CXX` or c++.
fn emulator_compiler() -> String {
    if let Ok(cxx) = std::env::var("SIMCLR_EMU_CXX") {
        return cxx;
    }
    if Command::new("clang++").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return "clang++".into();
    }
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

#[test]
fn emulator_selftest_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("simclr_emu_selftest_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let compiler = emulator_compiler();
    let flags = [
        "-std=c++20",
        "-O1",
        "-pthread",
        "-Wno-unknown-pragmas",
        "-fsanitize=alignment",
        "-fsanitize-recover=alignment",
    ];
    // Compiled with the alignment check, linked without the sanitizer runtime (emu_runtime.cpp
    // has the one handler the check calls).
    let sources: [(&str, &[&str]); 3] = [
        ("kernels/emu/selftest.cu", &["-x", "c++", "-include", "kernels/emu/cuda_emu.h"]),
        ("kernels/emu/selftest_main.cpp", &[]),
        ("kernels/emu/emu_runtime.cpp", &[]),
    ];
    let mut objects = Vec::new();
    for (i, (source, extra)) in sources.iter().enumerate() {
        let object = dir.join(format!("{i}.o"));
        let build = Command::new(&compiler)
            .current_dir(root)
            .args(flags)
            .args(*extra)
            .args(["-c", source, "-o"])
            .arg(&object)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{compiler}`: {e}"));
        assert!(
            build.status.success(),
            "selftest build of {source} failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        objects.push(object);
    }
    let exe = dir.join("emu_selftest");
    let link = Command::new(&compiler).arg("-pthread").args(&objects).arg("-o").arg(&exe).output().unwrap();
    assert!(link.status.success(), "selftest link failed:\n{}", String::from_utf8_lossy(&link.stderr));
    let run = Command::new(&exe).output().expect("run the emulator selftest");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains("checks passed"),
        "emulator selftest failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Every 8- and 16-byte vector access of the kernels goes through `load_vector`/`store_vector`
/// (kernels/common.cuh), where the emulator checks its alignment: a raw `reinterpret_cast` to a
/// vector type would be an aggregate copy that clang's alignment sanitizer does not see.
#[test]
fn kernels_access_vectors_only_through_the_checked_helpers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let vector_types = ["float2", "float4", "uint2", "uint4", "int2", "int4", "double2", "Pack<"];
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|e| e == "cu" || e == "cuh") {
            continue;
        }
        for (i, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
            let code = line.split("//").next().unwrap();
            let Some(at) = code.find("reinterpret_cast<") else { continue };
            let target = &code[at..];
            if vector_types.iter().any(|v| target[..target.find('>').unwrap_or(target.len())].contains(v)) {
                offenders.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "use load_vector/store_vector for vector accesses:\n{}", offenders.join("\n"));
}
