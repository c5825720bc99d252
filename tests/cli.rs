//! `simclr-train`'s command-line contract: every bad flag or missing file is
//! a one-line error with exit code 2, never a panic, and nothing is written.

mod common;

use common::temp_dir;
use std::path::Path;
use std::process::{Command, Output};

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simclr-train")).args(args).output().expect("run simclr-train")
}

/// A tiny bouncing-ball dataset (16 clips of 2×16×16).
fn tiny_dataset(dir: &Path, clips: usize) {
    let out = Command::new(env!("CARGO_BIN_EXE_simclr-data"))
        .args(["bouncing", "--out", dir.to_str().unwrap(), "--clips", &clips.to_string()])
        .args(["--frames", "2", "--size", "16", "--seed", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

const TINY: &[&str] =
    &["--num_frames", "2", "--image_size", "16", "--width", "0.125", "--small_stem", "--quiet", "--workers", "1"];

fn assert_fails(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in: {err}");
    }
}

#[test]
fn bad_flags_name_the_flag() {
    let dir = temp_dir("flags");
    let data = dir.join("data");
    tiny_dataset(&data, 16);
    let d = data.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--epochs", "0"], &["--epochs"]),
        (&["--batch_size", "1"], &["--batch_size", "negatives"]),
        (&["--lr", "-1"], &["--lr"]),
        (&["--lr", "nan"], &["--lr"]),
        (&["--base_model", "resnet99"], &["--base_model", "resnet18"]),
        (&["--temperature", "0"], &["--temperature"]),
        (&["--temporal", "lstm"], &["--temporal", "`lstm`", "mean, transformer"]),
        (&["--base_model", "vivit_tiny", "--temporal", "transformer"], &["--temporal", "vivit_tiny", "its own"]),
        (&["--optimizer", "rmsprop"], &["--optimizer", "lars"]),
        (&["--device", "tpu"], &["--device"]),
        (&["--device", "cuda"], &["CUDA", "--device cpu"]),
        (&["--ddp"], &["--ddp"]),
        (&["--num_frames", "9"], &["--num_frames", "2 frames"]),
        (&["--image_size", "64"], &["smaller than the 64x64"]),
        (&["--batch_size", "32"], &["--batch_size", "16 clips"]),
        (&["--grad_clip", "0"], &["--grad_clip"]),
        (&["--warmup_fraction", "1.5"], &["--warmup_fraction"]),
        (&["--threads", "0"], &["--threads"]),
        (&["--precision", "f16"], &["--precision", "auto, bf16 or f32"]),
    ];
    for (i, (flags, needles)) in cases.iter().enumerate() {
        let out_dir = dir.join(format!("out{i}"));
        let mut args = vec!["--processed_dir", d, "--out", out_dir.to_str().unwrap(), "--batch_size", "8"];
        args.extend_from_slice(TINY);
        args.extend_from_slice(flags);
        assert_fails(&train(&args), needles);
        assert!(!out_dir.join("final_model.safetensors").exists(), "case {flags:?} wrote a model");
    }
    // clap's own errors (unknown flag, a word where a number goes) exit 2 too.
    assert_fails(&train(&["--processed_dir", d, "--epochz", "3"]), &["--epochz"]);
    assert_fails(&train(&["--processed_dir", d, "--epochs", "three"]), &["three"]);
}

#[test]
fn missing_dataset_says_how_to_make_one() {
    let dir = temp_dir("missing");
    let out = train(&["--processed_dir", dir.join("nope").to_str().unwrap(), "--epochs", "1"]);
    assert_fails(&out, &["simclr-data bouncing"]);
}

#[test]
fn config_files_are_checked() {
    let dir = temp_dir("config");
    let data = dir.join("data");
    tiny_dataset(&data, 16);
    let bad_key = dir.join("bad_key.toml");
    std::fs::write(&bad_key, "epochz = 3\n").unwrap();
    assert_fails(&train(&["--config", bad_key.to_str().unwrap()]), &["epochz"]);
    let bad_type = dir.join("bad_type.toml");
    std::fs::write(&bad_type, "epochs = \"three\"\n").unwrap();
    assert_fails(&train(&["--config", bad_type.to_str().unwrap()]), &["epochs"]);
    let not_toml = dir.join("not.toml");
    std::fs::write(&not_toml, "[[[").unwrap();
    assert_fails(&train(&["--config", not_toml.to_str().unwrap()]), &["not.toml"]);
    assert_fails(&train(&["--config", dir.join("absent.toml").to_str().unwrap()]), &["absent.toml"]);
    // A valid file whose value a flag overrides: the flag wins (epochs 0 would fail).
    let good = dir.join("good.toml");
    std::fs::write(&good, format!("epochs = 0\nprocessed_dir = {:?}\n", data.to_str().unwrap())).unwrap();
    let out_dir = dir.join("out");
    let mut args = vec!["--config", good.to_str().unwrap(), "--epochs", "1", "--batch_size", "8"];
    args.extend_from_slice(&["--out", out_dir.to_str().unwrap()]);
    args.extend_from_slice(TINY);
    let out = train(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved = std::fs::read_to_string(out_dir.join("config.toml")).unwrap();
    assert!(saved.contains("epochs = 1"), "{saved}");
    // The default device is `auto` (kept as such in the saved config, so that a resume on a GPU
    // node uses its GPU); here, with no CUDA driver, it is the CPU, and the run says why.
    assert!(saved.contains("device = \"auto\""), "{saved}");
    let verbose: Vec<&str> = args.iter().copied().filter(|a| *a != "--quiet").collect();
    let out = train(&verbose);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--device auto: the CPU ("), "{stdout}");
}

#[test]
fn bad_resume_targets_are_errors() {
    let dir = temp_dir("resume");
    let pth = dir.join("checkpoint_epoch_50.pth");
    std::fs::write(&pth, b"not really").unwrap();
    assert_fails(&train(&["--resume", pth.to_str().unwrap()]), &["checkpoint_epoch_50"]);
    assert_fails(&train(&["--resume", dir.join("gone.safetensors").to_str().unwrap()]), &["gone"]);
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap();
    assert_fails(&train(&["--resume", junk.to_str().unwrap()]), &["junk"]);
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let dir = temp_dir("nan");
    let data = dir.join("data");
    tiny_dataset(&data, 8);
    let out_dir = dir.join("out");
    // One step per epoch; SGD at lr 1e30 blows the weights up after the first step.
    let mut args = vec!["--processed_dir", data.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
    args.extend_from_slice(&["--batch_size", "8", "--epochs", "5", "--checkpoint_every", "1"]);
    args.extend_from_slice(&["--optimizer", "sgd", "--lr", "1e30", "--warmup_fraction", "0"]);
    args.extend_from_slice(TINY);
    let out = train(&args);
    assert_fails(&out, &["NaN", "checkpoint_epoch_1.safetensors", "--lr"]);
    assert!(out_dir.join("checkpoint_epoch_1.safetensors").exists());
    assert!(out_dir.join("checkpoint_epoch_1.state.safetensors").exists());
    assert!(!out_dir.join("checkpoint_epoch_2.safetensors").exists());
    assert!(!out_dir.join("final_model.safetensors").exists());
}

/// `--precision bf16` on the CPU: trains with bf16 matmul operands where the CPU has
/// AVX512-BF16 (so its weights differ from the f32 run's) and resumes exactly, else refuses
/// with the reason.
#[test]
fn cpu_bf16_trains_where_the_cpu_can_and_says_why_not_elsewhere() {
    let dir = temp_dir("cpu_bf16");
    let data = dir.join("data");
    tiny_dataset(&data, 8);
    let run = |precision: &str| {
        let out_dir = dir.join(precision);
        let mut args = vec!["--processed_dir", data.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
        args.extend_from_slice(&["--batch_size", "8", "--epochs", "2", "--checkpoint_every", "1"]);
        args.extend_from_slice(&["--device", "cpu", "--precision", precision]);
        args.extend_from_slice(TINY);
        (train(&args), out_dir)
    };
    let (out, bf16_dir) = run("bf16");
    if !simclr::backend::cpu::gemm_bf16::supported() {
        assert_fails(&out, &["--precision", "AVX512-BF16", "--precision f32"]);
        assert!(!bf16_dir.join("final_model.safetensors").exists());
        return;
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (out, f32_dir) = run("f32");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let final_of = |d: &Path| std::fs::read(d.join("final_model.safetensors")).unwrap();
    let (bf16, f32) = (final_of(&bf16_dir), final_of(&f32_dir));
    assert_eq!(bf16.len(), f32.len());
    assert_ne!(bf16, f32, "the bf16 run's weights should differ from the f32 run's");

    // Epoch 2 again from epoch 1's checkpoint, in bf16 as saved: the same bytes.
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    for f in ["checkpoint_epoch_1.safetensors", "checkpoint_epoch_1.state.safetensors"] {
        std::fs::copy(bf16_dir.join(f), resumed.join(f)).unwrap();
    }
    let ckpt = resumed.join("checkpoint_epoch_1.safetensors");
    let out = train(&["--resume", ckpt.to_str().unwrap(), "--out", resumed.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(final_of(&resumed) == bf16, "a resumed bf16 run differs from the straight one");
}

/// A training state saved before `--precision auto` holds the old default `bf16`, which then
/// meant f32 on the CPU: it resumes as `auto` (f32 here), so the resumed run still equals an
/// uninterrupted one, also on a CPU with AVX512-BF16.
#[test]
fn a_state_from_before_precision_auto_resumes_in_f32_on_the_cpu() {
    use simclr::tensor::safetensors_io::{load_safetensors, save_safetensors};
    let dir = temp_dir("old_precision");
    let data = dir.join("data");
    tiny_dataset(&data, 8);
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["--processed_dir", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(&["--batch_size", "8", "--epochs", "2", "--device", "cpu", "--seed", "4"]);
        args.extend_from_slice(TINY);
        args.extend_from_slice(extra);
        let out = train(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let straight = dir.join("straight");
    run(&straight, &["--checkpoint_every", "1"]);

    // Epoch 1's state as an older version wrote it: no version, precision "bf16".
    let state_file = straight.join("checkpoint_epoch_1.state.safetensors");
    let (tensors, mut meta) = load_safetensors(&state_file).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
    assert_eq!(state["version"], 1);
    state.as_object_mut().unwrap().remove("version");
    state["config"]["precision"] = "bf16".into();
    meta.insert("state".into(), state.to_string());
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let named: Vec<(&str, &simclr::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(&resumed.join("checkpoint_epoch_1.state.safetensors"), &named, Some(meta)).unwrap();
    std::fs::copy(straight.join("checkpoint_epoch_1.safetensors"), resumed.join("checkpoint_epoch_1.safetensors"))
        .unwrap();

    let old = resumed.join("checkpoint_epoch_1.safetensors");
    assert_eq!(simclr::checkpoint::load_train_state(&old).unwrap().0.config.precision, "auto");
    let out = train(&["--resume", old.to_str().unwrap(), "--out", resumed.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let final_of = |d: &Path| std::fs::read(d.join("final_model.safetensors")).unwrap();
    assert!(final_of(&straight) == final_of(&resumed), "the resumed run differs from the straight one");
}
