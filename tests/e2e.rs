//! End to end through the real binaries: generate data, train, checkpoint,
//! resume, and check a resumed run is bitwise the uninterrupted one.

mod common;

use common::{s, temp_dir};

use common::assert_same_weights;
use std::path::Path;
use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("run binary");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{bin} {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn steps_logged(metrics: &Path) -> Vec<u64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn train_checkpoint_resume_is_exact() {
    let dir = temp_dir("resume");
    let data = dir.join("data");
    run(
        env!("CARGO_BIN_EXE_simclr-data"),
        &["bouncing", "--out", s(&data), "--clips", "24", "--frames", "3", "--size", "20", "--seed", "11"],
    );
    let train = env!("CARGO_BIN_EXE_simclr-train");
    let common = [
        "--processed_dir",
        s(&data),
        "--epochs",
        "4",
        "--batch_size",
        "8",
        "--num_frames",
        "2",
        "--image_size",
        "16",
        "--width",
        "0.125",
        "--small_stem",
        "--lr",
        "1e-3",
        "--checkpoint_every",
        "2",
        "--seed",
        "3",
        "--quiet",
    ];
    // Four epochs straight (this run also leaves checkpoint_epoch_2 behind).
    let straight = dir.join("straight");
    run(train, &[&common[..], &["--out", s(&straight)]].concat());
    for f in ["checkpoint_epoch_2.safetensors", "checkpoint_epoch_4.state.safetensors", "final_model.safetensors"] {
        assert!(straight.join(f).exists(), "{f} missing");
    }
    for f in ["metrics.jsonl", "loss.png", "lr.png", "config.toml"] {
        assert!(straight.join(f).exists(), "{f} missing");
    }
    assert_eq!(steps_logged(&straight.join("metrics.jsonl")), (1..=12).collect::<Vec<_>>());

    // Two epochs, then resume for the other two in a fresh process and directory.
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    for f in ["checkpoint_epoch_2.safetensors", "checkpoint_epoch_2.state.safetensors", "metrics.jsonl"] {
        std::fs::copy(straight.join(f), resumed.join(f)).unwrap();
    }
    let ckpt = resumed.join("checkpoint_epoch_2.safetensors");
    run(train, &["--resume", s(&ckpt), "--out", s(&resumed), "--quiet"]);
    assert_same_weights(&straight.join("final_model.safetensors"), &resumed.join("final_model.safetensors"));
    // Byte for byte, metadata included: identical checkpoints have identical checksums.
    for f in ["final_model.safetensors", "checkpoint_epoch_4.safetensors"] {
        assert!(std::fs::read(straight.join(f)).unwrap() == std::fs::read(resumed.join(f)).unwrap(), "{f} differs");
    }
    // The log carries on where it stopped: no step twice, none missing.
    assert_eq!(steps_logged(&resumed.join("metrics.jsonl")), (1..=12).collect::<Vec<_>>());

    // Evaluate the resumed model through simclr-eval: a table, eval.json, embeddings.
    let eval_json = dir.join("eval.json");
    let embeddings = dir.join("emb.npy");
    let table = run(
        env!("CARGO_BIN_EXE_simclr-eval"),
        &[
            "--checkpoint",
            s(&resumed.join("final_model.safetensors")),
            "--processed_dir",
            s(&data),
            "--out",
            s(&eval_json),
            "--export-embeddings",
            s(&embeddings),
        ],
    );
    assert!(table.contains("ball count") && table.contains("random-init"), "{table}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
    assert!(report.to_string().contains("ball count"), "{report}");
    assert!(embeddings.exists() && dir.join("emb.ids.npy").exists());

    // A resume that asks for a different model is refused.
    let out = Command::new(train).args(["--resume", s(&ckpt), "--base_model", "resnet34", "--quiet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different model"));
}
