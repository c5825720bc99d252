//! The GPU session kit (tools/gpu/run.sh) finds the CUDA libraries of the GPU machine's python
//! wheels and says where: tried here on a fake library folder laid out as pip lays them out
//! (nvidia/cu13/lib, nvidia/nccl/lib), since this machine has no GPU.

use std::path::Path;
use std::process::Command;

#[test]
fn run_sh_puts_the_wheel_libraries_on_the_path_and_reports_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fake = std::env::temp_dir().join(format!("simclr_gpu_kit_{}", std::process::id()));
    let (cu13, nccl) = (fake.join("nvidia/cu13/lib"), fake.join("nvidia/nccl/lib"));
    for dir in [&cu13, &nccl] {
        std::fs::create_dir_all(dir).unwrap();
    }
    for lib in [cu13.join("libcublas.so.13"), cu13.join("libcublasLt.so.13"), nccl.join("libnccl.so.2")] {
        std::fs::write(lib, b"not a real library").unwrap();
    }
    let out = Command::new("bash")
        .arg(root.join("tools/gpu/run.sh"))
        .arg("facts")
        .env("SIMCLR_CUDA_LIB_DIRS", format!("{}:{}", cu13.display(), nccl.display()))
        .env("OUT", fake.join("out"))
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run bash tools/gpu/run.sh facts");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = |lib: &str| text.lines().find(|l| l.starts_with(&format!("library {lib}:"))).unwrap_or("").to_string();
    assert!(line("libcublas.so").contains(&cu13.join("libcublas.so.13").display().to_string()), "{text}");
    assert!(line("libcublasLt.so").contains(&cu13.join("libcublasLt.so.13").display().to_string()), "{text}");
    // cudarc opens libnccl.so: run.sh links it to the wheel's libnccl.so.2.
    assert!(line("libnccl.so").contains(&nccl.join("libnccl.so.2").display().to_string()), "{text}");
    assert!(line("libcuda.so").contains("NOT FOUND") || line("libcuda.so").contains("libcuda.so"), "{text}");
    let path = text.lines().find(|l| l.starts_with("LD_LIBRARY_PATH=")).unwrap_or("");
    assert!(path.contains(&cu13.display().to_string()) && path.contains(&nccl.display().to_string()), "{text}");
    // The same lines are kept in $OUT/facts.txt.
    let facts = std::fs::read_to_string(fake.join("out/facts.txt")).unwrap();
    assert!(facts.contains("library libcublas.so:"), "{facts}");
    std::fs::remove_dir_all(&fake).ok();
}
