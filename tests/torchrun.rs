//! A real `torchrun --no-python simclr-train` (tools/cluster/torchrun.sh's way of launching):
//! two CPU ranks started by PyTorch's launcher train bitwise the model that `simclr-train --ddp`
//! trains with its own launcher.
//!
//! It needs PyTorch, which the test command never installs (the wheel is ≈3 GB), so it is
//! ignored there. Run it with:
//!
//!   bash tools/install_torch.sh     # once: PyTorch in ~/.cache/simclr/torch-venv
//!   cargo test --release --test torchrun -- --ignored
//!
//! (`SIMCLR_TORCHRUN=/path/to/torchrun` picks another one.)

mod common;

use common::{s, temp_dir};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

const TRAIN: &str = env!("CARGO_BIN_EXE_simclr-train");

/// `SIMCLR_TORCHRUN`, else the venv of tools/install_torch.sh, else `torchrun` on PATH.
fn torchrun() -> PathBuf {
    if let Ok(p) = std::env::var("SIMCLR_TORCHRUN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let venv = cache.join("simclr/torch-venv/bin/torchrun");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("torchrun")
    }
}

#[test]
#[ignore = "needs PyTorch's torchrun: bash tools/install_torch.sh, then cargo test --release --test torchrun -- --ignored"]
fn torchrun_ranks_train_as_the_ddp_launch_does() {
    let torchrun = torchrun();
    let version = Command::new(&torchrun).arg("--help").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "{} does not run: install PyTorch with bash tools/install_torch.sh",
        torchrun.display()
    );
    let dir = temp_dir("ranks");
    let data = dir.join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_simclr-data"))
        .args(["bouncing", "--out", s(&data), "--clips", "16", "--frames", "2", "--size", "16", "--seed", "8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let flags = |out: &Path| -> Vec<String> {
        [
            "--processed_dir",
            s(&data),
            "--out",
            s(out),
            "--epochs",
            "2",
            "--batch_size",
            "8",
            "--num_frames",
            "1",
            "--image_size",
            "16",
            "--width",
            "0.125",
            "--small_stem",
            "--optimizer",
            "sgd",
            "--seed",
            "4",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ]
        .map(String::from)
        .to_vec()
    };

    let ddp = dir.join("ddp");
    let out = Command::new(TRAIN).args(flags(&ddp)).args(["--ddp", "--num_gpus", "2"]).output().unwrap();
    assert!(out.status.success(), "--ddp: {}", String::from_utf8_lossy(&out.stderr));

    // torchrun's store takes MASTER_PORT; simclr-train's rank 0 listens on MASTER_PORT + 1.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let launched = dir.join("torchrun");
    let out = Command::new(&torchrun)
        .args(["--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"])
        .args(["--master_port", &port.to_string(), "--no-python", TRAIN])
        .args(flags(&launched))
        .output()
        .unwrap();
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "torchrun: {said}");
    assert_eq!(said.matches("trained 2 epochs (4 steps").count(), 1, "one summary, from rank 0: {said}");

    let read = |p: &Path| std::fs::read(p.join("final_model.safetensors")).unwrap();
    assert!(read(&ddp) == read(&launched), "torchrun's ranks trained another model than --ddp's");
    std::fs::remove_dir_all(&dir).ok();
}
