//! Multi-process data parallelism through the real binary, on the CPU (ranks
//! talk over TCP): `simclr-train --ddp --num_gpus N` starting its own ranks,
//! ranks started by an outside launcher (SLURM's variables, as srun sets them),
//! and what happens when a rank dies.

mod common;

use common::{s, temp_dir};

use common::max_abs_difference;
use simclr::dist::launch::run_local_ranks;
use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TRAIN: &str = env!("CARGO_BIN_EXE_simclr-train");

fn bouncing(dir: &Path, clips: usize) -> PathBuf {
    let data = dir.join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_simclr-data"))
        .args(["bouncing", "--out", s(&data), "--clips", &clips.to_string(), "--frames", "2", "--size", "16"])
        .args(["--seed", "8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    data
}

/// A tiny model and SGD (see tests/dist_train.rs for why SGD), 2 epochs of 2 steps.
fn flags(data: &Path, out: &Path, lr: f64) -> Vec<String> {
    let mut f: Vec<String> = [
        "--processed_dir",
        s(data),
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
        "--sync_bn",
        "--workers",
        "1",
        "--seed",
        "4",
        "--quiet",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    f.extend(["--lr".to_string(), lr.to_string()]);
    f
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ddp_processes_train_the_model_one_process_trains() {
    let dir = temp_dir("equivalence");
    let data = bouncing(&dir, 16);
    let lr = 0.1;
    let one = dir.join("one");
    check(&Command::new(TRAIN).args(flags(&data, &one, lr)).output().unwrap(), "one process");

    // The learning rate scales with the ranks, so lr/2 on 2 ranks steps as lr on one.
    let two = dir.join("two");
    let out = Command::new(TRAIN).args(flags(&data, &two, lr / 2.0)).args(["--ddp", "--num_gpus", "2"]).output();
    let out = out.unwrap();
    check(&out, "--ddp --num_gpus 2");
    // One summary line, from rank 0; only rank 0 wrote files (the same directory for both).
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("trained 2 epochs (4 steps").count(), 1, "{stdout}");
    // Same tolerance and reasoning as tests/dist_train.rs: f32 sums in another order.
    let diff = max_abs_difference(&one.join("final_model.safetensors"), &two.join("final_model.safetensors"));
    eprintln!("2 processes vs 1: max |difference| {diff:.2e}");
    assert!(diff < 1e-4, "2 ranks differ from one process by {diff:.2e}");

    // Ranks started by a launcher (here: SLURM's variables, as srun sets them) take the same
    // path through the same code: bitwise the --ddp run, given the same threads per rank.
    let slurm = dir.join("slurm");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(TRAIN)
                .args(flags(&data, &slurm, lr / 2.0))
                .env("SLURM_PROCID", rank.to_string())
                .env("SLURM_NTASKS", "2")
                .env("SLURM_LOCALID", rank.to_string())
                .env("SLURM_JOB_NODELIST", "localhost")
                // Ranks on one node share its cores, as under --ddp (results depend on the thread count).
                .env("SLURM_NTASKS_PER_NODE", "2")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        check(&child.wait_with_output().unwrap(), &format!("SLURM rank {rank}"));
    }
    let diff = max_abs_difference(&two.join("final_model.safetensors"), &slurm.join("final_model.safetensors"));
    assert_eq!(diff, 0.0, "the SLURM-launched ranks differ from --ddp");
}

#[test]
fn ddp_refuses_bad_requests_before_starting_ranks() {
    let dir = temp_dir("bad");
    let data = bouncing(&dir, 16);
    let cases: [(&[&str], &str); 7] = [
        (&["--ddp"], "--num_gpus N"),
        (&["--ddp", "--num_gpus", "0"], "at least 1"),
        (&["--ddp", "--num_gpus", "3"], "does not split evenly over 3 ranks"),
        (&["--num_gpus", "2"], "only means something with --ddp"),
        (&["--ddp", "--num_gpus", "2", "--dist_backend", "gloo"], "unknown backend 'gloo': choose auto, nccl or tcp"),
        (&["--dist_backend", "tcp"], "only means something with --ddp or a launcher"),
        // Refused by each rank, which the launcher reports (exit 2 all the same).
        (
            &["--ddp", "--num_gpus", "2", "--device", "cpu", "--dist_backend", "nccl"],
            "nccl is not available: the ranks train on the CPU",
        ),
    ];
    for (extra, needle) in cases {
        let out = Command::new(TRAIN).args(flags(&data, &dir.join("out"), 0.1)).args(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
    let out = Command::new(TRAIN).args(flags(&data, &dir.join("out"), 0.1)).args(["--dist_timeout", "0"]).output();
    assert!(String::from_utf8_lossy(&out.unwrap().stderr).contains("--dist_timeout"));
}

#[test]
fn a_failing_rank_stops_the_others_at_once() {
    // Rank 1 fails at once; rank 0 would run for a minute if nobody stopped it.
    let script = r#"if [ "$RANK" = 1 ]; then echo "rank one gives up" >&2; exit 3; fi; sleep 60"#;
    let args: Vec<OsString> = ["-c", script].iter().map(OsString::from).collect();
    let start = Instant::now();
    let err = run_local_ranks(Path::new("/bin/sh"), &args, 3).unwrap_err().to_string();
    assert!(err.contains("rank 1 exited with status 3") && err.contains("other ranks were stopped"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    // Every rank succeeding is success; each saw torchrun's variables.
    let script = r#"[ "$WORLD_SIZE" = 2 ] && [ "$LOCAL_RANK" = "$RANK" ] && [ "$MASTER_ADDR" = 127.0.0.1 ] && [ -n "$MASTER_PORT" ]"#;
    let args: Vec<OsString> = ["-c", script].iter().map(OsString::from).collect();
    run_local_ranks(Path::new("/bin/sh"), &args, 2).unwrap();
}

#[test]
fn a_rank_killed_mid_training_ends_the_job_with_a_clear_error() {
    let dir = temp_dir("killed");
    let data = bouncing(&dir, 16);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut args = flags(&data, &dir.join("out"), 0.05);
    let epochs = args.iter().position(|a| a == "--epochs").unwrap() + 1;
    args[epochs] = "100000".into(); // far longer than the test
    let spawn = |rank: usize| {
        Command::new(TRAIN)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (rank0, mut rank1) = (spawn(0), spawn(1));
    std::thread::sleep(Duration::from_secs(3)); // both are training by now
    rank1.kill().unwrap();
    let _ = rank1.wait();
    let killed_at = Instant::now();
    let out = rank0.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rank 1 left the job (its process exited or crashed)"), "{stderr}");
    // Noticed through the closed connection, not after the 300 s collective timeout.
    assert!(killed_at.elapsed() < Duration::from_secs(30), "rank 0 took {:?} to stop", killed_at.elapsed());
}

#[test]
fn the_local_launch_script_runs_cpu_ranks() {
    let dir = temp_dir("script");
    let data = bouncing(&dir, 16);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/cluster/train_ddp.sh");
    let out_dir = dir.join("out");
    // The script's own defaults (batch 256, 100 epochs, resnet18) are overridden by later flags.
    let out = Command::new("bash")
        .arg(&script)
        .args(flags(&data, &out_dir, 0.05))
        .args(["--base_model", "resnet18", "--device", "cpu", "--num_gpus", "2"])
        .env("SIMCLR_TRAIN", TRAIN)
        .env("NUM_GPUS", "0") // as on a machine without GPUs, whatever this one has
        .output()
        .unwrap();
    check(&out, "tools/cluster/train_ddp.sh");
    assert!(out_dir.join("final_model.safetensors").exists());
    // Without a GPU and without --num_gpus, it says what to do.
    let out = Command::new("bash").arg(&script).env("SIMCLR_TRAIN", TRAIN).env("NUM_GPUS", "0").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device cpu --num_gpus N"));
}
