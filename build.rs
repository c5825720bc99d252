//! Build script: with feature `cuda`, compiles the hand-written kernels in `kernels/*.cu` twice.
//!
//! 1. With nvcc, into one fatbin per file (SASS for sm_80 and sm_90, plus compute_90 PTX the
//!    driver can JIT for newer GPUs) that the crate embeds and loads with `cuModuleLoadData`.
//!    The kernel names come from the PTX's `.entry` lines, so the runtime knows which module
//!    holds which kernel.
//! 2. With the host C++ compiler and `kernels/emu/cuda_emu.h` force-included, into a static
//!    library that runs the same kernels on the CPU (one OS thread per CUDA thread). The parity
//!    tests use it on machines without a GPU, so CI executes every kernel, not just compiles it.
//!
//! 3. A table of every kernel's signature and resources for the launch checks
//!    (src/backend/cuda/launch_check.rs): its parameters from the PTX's `.param` lines, and the
//!    registers, static shared memory and spills that ptxas reports (`-Xptxas -v`) for each GPU
//!    architecture, the largest of them kept.
//!
//! Without feature `cuda` this script does nothing and the build needs no CUDA at all (nor the
//! optional `cc` build dependency, hence the cfg on the emulator step).
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The GPU code each fatbin carries: SASS for A100 (sm_80) and H100/H200 (sm_90), PTX for later ones.
const GENCODE: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "SIMCLR_NVCC_HOME", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = manifest_dir.join("kernels");

    let sources = kernel_sources(&kernel_dir);
    let nvcc = find_nvcc().unwrap_or_else(|| {
        fail(
            "feature `cuda` needs nvcc (the CUDA compiler) and none was found.\n\
             Install one without a CUDA toolkit:   bash tools/install_nvcc.sh\n\
             or point at one:                      NVCC=/path/to/nvcc  (or CUDA_HOME=/usr/local/cuda)\n\
             Builds without `--features cuda` need no CUDA.",
        )
    });

    // nvcc is slow and single-threaded: one thread per source file.
    let modules: Vec<Module> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            sources.iter().map(|src| scope.spawn(|| compile_for_gpu(&nvcc, &kernel_dir, src, &out_dir))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    check_unique_entries(&modules);
    #[cfg(feature = "cuda")]
    compile_emulator(&kernel_dir, &modules, &out_dir);
    write_rust_table(&modules, &out_dir);
}

struct Module {
    /// File stem: `layernorm` for kernels/layernorm.cu.
    stem: String,
    fatbin: PathBuf,
    source: PathBuf,
    entries: Vec<String>,
    /// Per entry (same order): its parameters and what ptxas reported for it.
    signatures: Vec<Signature>,
}

/// One kernel's parameter types (PTX spelling: `u64`, `u32`, `f32`, ...) and resources: the
/// largest over the architectures compiled for.
#[derive(Default)]
struct Signature {
    params: Vec<String>,
    registers: u32,
    static_smem: u32,
    stack_bytes: u32,
    spill_bytes: u32,
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    std::process::exit(1);
}

fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", dir.display())))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    sources
}

/// `NVCC`, then `$CUDA_HOME/bin/nvcc` (or `CUDA_PATH`), then `nvcc` on `PATH`, then the
/// pip-packaged compiler that tools/install_nvcc.sh puts in the user's cache.
fn find_nvcc() -> Option<PathBuf> {
    let works = |p: &Path| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if works(&p) {
            return Some(p);
        }
        fail(&format!("NVCC={} does not run (`nvcc --version` failed)", p.display()));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = PathBuf::from(home).join("bin").join("nvcc");
            if works(&p) {
                return Some(p);
            }
        }
    }
    if works(Path::new("nvcc")) {
        return Some(PathBuf::from("nvcc"));
    }
    let home = env::var_os("SIMCLR_NVCC_HOME").map(PathBuf::from).or_else(|| {
        let cache = env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("simclr").join("nvcc-13.0"))
    })?;
    let lib = home.join("venv").join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    pythons.sort();
    pythons.into_iter().map(|py| py.join("site-packages/nvidia/cu13/bin/nvcc")).find(|p| works(p))
}

/// Runs a compiler step, failing the build with its output if it fails. Returns its stderr and
/// passes its warnings on as cargo warnings (nvcc's are worth seeing), but not ptxas's `-v`
/// resource report (`ptxas info` lines and the indented lines that continue them).
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| fail(&format!("{what}: cannot run {:?}: {e}", cmd.get_program())));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        fail(&format!("{what} failed ({}):\n{}{stderr}", out.status, String::from_utf8_lossy(&out.stdout)));
    }
    let mut in_report = false;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        in_report = line.starts_with("ptxas info") || (in_report && line.starts_with("    "));
        if !in_report {
            println!("cargo:warning={what}: {line}");
        }
    }
    stderr
}

fn compile_for_gpu(nvcc: &Path, kernel_dir: &Path, src: &Path, out_dir: &Path) -> Module {
    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
    let ptx = out_dir.join(format!("{stem}.ptx"));
    let fatbin = out_dir.join(format!("{stem}.fatbin"));
    let common = |cmd: &mut Command| {
        cmd.arg("-std=c++17").arg("-O3").arg("-lineinfo").arg("-I").arg(kernel_dir).arg(src);
    };
    let mut cmd = Command::new(nvcc);
    cmd.arg("-ptx").arg("-arch=compute_80");
    common(&mut cmd);
    run(cmd.arg("-o").arg(&ptx), &format!("nvcc -ptx {}", src.display()));
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin").args(GENCODE).arg("-Xptxas").arg("-v");
    common(&mut cmd);
    let ptxas_report = run(cmd.arg("-o").arg(&fatbin), &format!("nvcc -fatbin {}", src.display()));

    let text = std::fs::read_to_string(&ptx).unwrap();
    let entries = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
        .map(|rest| rest.split('(').next().unwrap().trim().to_string())
        .collect::<Vec<_>>();
    for e in &entries {
        if e.starts_with("_Z") {
            fail(&format!(
                "kernel {e} in {} has a C++-mangled name: declare kernels `extern \"C\" __global__`",
                src.display()
            ));
        }
    }
    let mut params = ptx_params(&text);
    let mut resources = ptxas_resources(&ptxas_report);
    let signatures = entries
        .iter()
        .map(|e| {
            let mut sig = resources
                .remove(e)
                .unwrap_or_else(|| fail(&format!("ptxas -v reported nothing for kernel {e} of {}", src.display())));
            sig.params = params.remove(e).unwrap_or_default();
            sig
        })
        .collect();
    Module { stem, fatbin, source: src.to_path_buf(), entries, signatures }
}

/// Parameter types of each `.entry` of a PTX file: `.param .u64 .ptr .align 1 name_param_0` → `u64`;
/// a by-value struct `.param .align 8 .b8 name_param_3[24]` → `b8[24]`.
fn ptx_params(ptx: &str) -> std::collections::HashMap<String, Vec<String>> {
    let mut all = std::collections::HashMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in ptx.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(".visible .entry ") {
            current = Some((rest.split('(').next().unwrap().trim().to_string(), Vec::new()));
        } else if let Some((_, params)) = current.as_mut() {
            if let Some(rest) = line.strip_prefix(".param ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let ty = words
                    .iter()
                    .find(|w| w.starts_with('.') && *w != &".ptr" && *w != &".align" && !w.starts_with(".global"));
                let ty = ty
                    .unwrap_or_else(|| fail(&format!("cannot read the PTX parameter `{line}`")))
                    .trim_start_matches('.');
                let name = words.last().unwrap().trim_end_matches(',');
                params.push(match name.find('[') {
                    Some(i) => format!("{ty}{}", &name[i..]),
                    None => ty.to_string(),
                });
            } else if line.starts_with(')') {
                let (name, params) = current.take().unwrap();
                all.insert(name, params);
            }
        }
    }
    all
}

/// What `ptxas -v` says of each entry function, the largest value over the architectures:
///   ptxas info    : Compiling entry function 'k' for 'sm_90'
///   ptxas info    : Function properties for k
///       8 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
///   ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
fn ptxas_resources(report: &str) -> std::collections::HashMap<String, Signature> {
    let number_before = |line: &str, unit: &str| -> u32 {
        let at = match line.find(unit) {
            Some(at) => at,
            None => return 0,
        };
        line[..at]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .last()
            .map_or(0, |n| n.parse().unwrap())
    };
    let mut all: std::collections::HashMap<String, Signature> = std::collections::HashMap::new();
    let mut entry: Option<String> = None; // the entry the following lines describe
    let mut properties_of: Option<String> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap().to_string();
            all.entry(name.clone()).or_default();
            entry = Some(name);
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            properties_of = Some(rest.trim().to_string());
        } else if line.contains("bytes stack frame") {
            if let Some(sig) = properties_of.take().and_then(|n| all.get_mut(&n)) {
                sig.stack_bytes = sig.stack_bytes.max(number_before(line, "bytes stack frame"));
                let spills = number_before(line, "bytes spill stores") + number_before(line, "bytes spill loads");
                sig.spill_bytes = sig.spill_bytes.max(spills);
            }
        } else if line.contains("Used ") && line.contains(" registers") {
            if let Some(sig) = entry.as_ref().and_then(|n| all.get_mut(n)) {
                sig.registers = sig.registers.max(number_before(line, " registers"));
                sig.static_smem = sig.static_smem.max(number_before(line, " bytes smem"));
            }
        }
    }
    all
}

fn check_unique_entries(modules: &[Module]) {
    let mut seen = std::collections::HashMap::new();
    for m in modules {
        for e in &m.entries {
            if let Some(other) = seen.insert(e.clone(), m.stem.clone()) {
                fail(&format!("kernel {e} is defined in both {other}.cu and {}.cu", m.stem));
            }
        }
    }
}

/// One C++ translation unit per kernel file: the file itself plus a table of trampolines
/// (`simclr_emu_kernels_<stem>`) that unpack a cuLaunchKernel-style argument array, each with the
/// bounds of the file's static shared memory (its own linker section, which the emulator fills
/// with garbage before every block).
#[cfg(feature = "cuda")]
fn compile_emulator(kernel_dir: &Path, modules: &[Module], out_dir: &Path) {
    let emu_dir = kernel_dir.join("emu");
    let header = emu_dir.join("cuda_emu.h");
    let mut build = cc::Build::new();
    if let Some(clang) = emulator_compiler() {
        build.compiler(clang);
    } else {
        println!(
            "cargo:warning=clang++ not found: the kernel emulator is built with the default C++ compiler, which \
             ignores the section attribute on the __shared__ arrays of templates, so those are not refilled with \
             garbage before each block (install clang for the strict emulator)"
        );
    }
    build
        .cpp(true)
        .std("c++20")
        .opt_level(2)
        .debug(false)
        .warnings(false)
        .flag("-pthread")
        .flag("-Wno-unknown-pragmas")
        // Misaligned typed loads/stores call the handler in emu_runtime.cpp (no sanitizer runtime).
        .flag("-fsanitize=alignment")
        .flag("-fsanitize-recover=alignment")
        .flag("-include")
        .flag(header.to_str().unwrap())
        .include(kernel_dir)
        .file(emu_dir.join("emu_runtime.cpp"));
    for m in modules {
        let section = format!("simclr_emu_shared_{}", m.stem);
        let mut unit = format!(
            "#undef SIMCLR_EMU_SHARED_SECTION\n#define SIMCLR_EMU_SHARED_SECTION \"{section}\"\n#include \"{}\"\n",
            m.source.display()
        );
        writeln!(unit, "SIMCLR_EMU_SHARED_BOUNDS({section})").unwrap();
        writeln!(unit, "extern \"C\" const simclr_emu_kernel simclr_emu_kernels_{}[] = {{", m.stem).unwrap();
        for e in &m.entries {
            writeln!(unit, "    {{\"{e}\", &simclr_emu_trampoline_for<&{e}>, __start_{section}, __stop_{section}}},")
                .unwrap();
        }
        unit.push_str("    {nullptr, nullptr, nullptr, nullptr}};\n");
        let path = out_dir.join(format!("emu_{}.cpp", m.stem));
        write_if_changed(&path, &unit);
        build.file(path);
    }
    build.compile("simclr_cuda_emu");
}

/// `SIMCLR_EMU_CXX`, else `clang++` when it runs: the emulator's static shared memory check
/// needs a compiler that honours `section` on template static locals (GCC drops it).
#[cfg(feature = "cuda")]
fn emulator_compiler() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=SIMCLR_EMU_CXX");
    if let Some(cxx) = env::var_os("SIMCLR_EMU_CXX") {
        return Some(PathBuf::from(cxx));
    }
    let clang = PathBuf::from("clang++");
    Command::new(&clang).arg("--version").output().is_ok_and(|o| o.status.success()).then_some(clang)
}

fn write_rust_table(modules: &[Module], out_dir: &Path) {
    let mut rs =
        String::from("// Generated by build.rs: the embedded kernel modules and the emulator's kernel tables.\n\n");
    rs.push_str("pub const MODULES: &[KernelModule] = &[\n");
    for m in modules {
        writeln!(
            rs,
            "    KernelModule {{ name: {:?}, fatbin: include_bytes!({:?}), entries: &{:?} }},",
            m.stem,
            m.fatbin.display().to_string(),
            m.entries
        )
        .unwrap();
    }
    rs.push_str("];\n\nextern \"C\" {\n");
    for m in modules {
        writeln!(rs, "    static simclr_emu_kernels_{}: EmuKernel;", m.stem).unwrap();
    }
    rs.push_str("}\n\n/// The first entry of each module's emulator table (a table ends at a null name).\n");
    rs.push_str("pub fn emu_tables() -> Vec<*const EmuKernel> {\n    vec![");
    for m in modules {
        write!(rs, "&raw const simclr_emu_kernels_{}, ", m.stem).unwrap();
    }
    rs.push_str("]\n}\n");

    // Sorted by name for binary search.
    let mut signatures: Vec<(&String, &Signature)> =
        modules.iter().flat_map(|m| m.entries.iter().zip(&m.signatures)).collect();
    signatures.sort_by(|a, b| a.0.cmp(b.0));
    rs.push_str("\n/// Every kernel's parameters and resources (ptxas), sorted by name.\n");
    rs.push_str("pub const SIGNATURES: &[KernelSignature] = &[\n");
    for (name, sig) in signatures {
        let params: Vec<String> = sig.params.iter().map(|p| format!("{p:?}")).collect();
        writeln!(
            rs,
            "    KernelSignature {{ name: {name:?}, params: &[{}], registers: {}, static_smem: {}, stack_bytes: {}, spill_bytes: {} }},",
            params.join(", "),
            sig.registers,
            sig.static_smem,
            sig.stack_bytes,
            sig.spill_bytes
        )
        .unwrap();
    }
    rs.push_str("];\n");
    write_if_changed(&out_dir.join("cuda_kernels.rs"), &rs);
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap();
    }
}
