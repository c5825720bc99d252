//! Preemption-safe training through the real binary: SIGTERM at random moments, each run
//! continued with `--resume auto`, ends bitwise where an uninterrupted run ends; mid-epoch
//! checkpoints (`--checkpoint_every_steps`) resume exactly; `--resume auto` passes over
//! half-written checkpoints and refuses another model's or dataset's, naming the file.

mod common;

use common::{s, temp_dir};

use common::assert_same_weights;
use simclr::Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TRAIN: &str = env!("CARGO_BIN_EXE_simclr-train");

fn dataset(dir: &Path, clips: usize, seed: u64) -> PathBuf {
    let data = dir.join(format!("data{seed}"));
    let out = Command::new(env!("CARGO_BIN_EXE_simclr-data"))
        .args(["bouncing", "--out", s(&data), "--clips", &clips.to_string(), "--frames", "2", "--size", "16"])
        .args(["--seed", &seed.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    data
}

/// 3 epochs of 4 steps of a tiny ResNet.
fn flags(data: &Path, out: &Path) -> Vec<String> {
    [
        "--processed_dir",
        s(data),
        "--out",
        s(out),
        "--epochs",
        "3",
        "--batch_size",
        "4",
        "--num_frames",
        "2",
        "--image_size",
        "16",
        "--width",
        "0.125",
        "--small_stem",
        "--lr",
        "1e-3",
        "--seed",
        "3",
        "--workers",
        "1",
        "--device",
        "cpu",
    ]
    .map(String::from)
    .to_vec()
}

fn run(args: &[String]) -> Output {
    Command::new(TRAIN).args(args).output().expect("run simclr-train")
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn steps_logged(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

/// Steps logged so far in a metrics.jsonl another process is writing (complete lines only).
fn steps_logged_so_far(out: &Path) -> usize {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter(|l| l.contains("\"loss\":")).count()
}

/// Runs `args`, sends SIGTERM at a random moment, and returns how the run ended and when the
/// signal went. The moment is either right after the start (`early`: usually before the handler
/// is installed, which kills the process with nothing saved) or a random instant after the run
/// has logged a step of its own, so that the signal lands in the middle of training whatever the
/// machine's speed.
fn run_and_signal(args: &[String], out: &Path, early: bool, rng: &mut Rng) -> (Output, String) {
    let before = steps_logged_so_far(out);
    let mut child = Command::new(TRAIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let moment = if early {
        std::thread::sleep(Duration::from_millis((rng.uniform() * 30.0) as u64));
        format!("{} ms after the start", started.elapsed().as_millis())
    } else {
        while steps_logged_so_far(out) <= before
            && child.try_wait().unwrap().is_none()
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis((rng.uniform() * 50.0) as u64));
        format!("{} ms in, after step {}", started.elapsed().as_millis(), steps_logged_so_far(out))
    };
    if child.try_wait().unwrap().is_none() {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    }
    (child.wait_with_output().unwrap(), moment)
}

/// Runs `args` (which resume with `--resume auto`) again and again, each time stopped by a SIGTERM
/// at a random moment ([`run_and_signal`]), until a run finishes; every third attempt (not the
/// first) signals right at the start. Each stopped run exits with 75 and says `stop_message`; at
/// least one must have been stopped.
fn signal_until_done(args: &[String], out: &Path, rng: &mut Rng, what: &str, stop_message: &str) {
    let (mut stops, mut signals) = (0, Vec::new());
    for attempt in 0..40 {
        let (run, moment) = run_and_signal(args, out, attempt % 3 == 2, rng);
        signals.push(moment);
        match run.status.code() {
            Some(0) => {
                assert!(stops > 0, "{what}: no run was stopped by the signal (signals {signals:?})");
                eprintln!("{what}: {stops} stops, signals {signals:?}");
                return;
            }
            Some(75) => {
                stops += 1;
                assert!(text(&run).contains(stop_message), "{what}: {}", text(&run));
            }
            // Killed before the handler was installed (the first instants of the process):
            // nothing saved, the next attempt resumes from the previous checkpoint.
            None => {}
            Some(code) => panic!("{what}: exit status {code} (signals {signals:?}):\n{}", text(&run)),
        }
    }
    panic!("{what}: not finished after 40 attempts (signals {signals:?})");
}

#[test]
fn sigterm_at_random_moments_then_resume_auto_is_bitwise_an_uninterrupted_run() {
    let dir = temp_dir("sigterm");
    let data = dataset(&dir, 16, 8);
    let straight = dir.join("straight");
    let mut args = flags(&data, &straight);
    args.extend(["--checkpoint_every_steps", "5", "--quiet"].map(String::from));
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    // Steps 5 and 10 fall inside epochs 2 and 3: mid-epoch checkpoints beside the epoch ones.
    for f in ["checkpoint_step_5.safetensors", "checkpoint_step_10.state.safetensors", "checkpoint_epoch_3.safetensors"]
    {
        assert!(straight.join(f).exists(), "{f} missing");
    }

    // A mid-epoch checkpoint resumes exactly, in a fresh process and directory.
    let from_step = dir.join("from_step_5");
    std::fs::create_dir_all(&from_step).unwrap();
    for f in ["checkpoint_step_5.safetensors", "checkpoint_step_5.state.safetensors", "metrics.jsonl"] {
        std::fs::copy(straight.join(f), from_step.join(f)).unwrap();
    }
    let resume = ["--resume", s(&from_step.join("checkpoint_step_5.safetensors")), "--out", s(&from_step), "--quiet"]
        .map(String::from);
    let out = run(&resume);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_weights(&straight.join("final_model.safetensors"), &from_step.join("final_model.safetensors"));
    assert_eq!(steps_logged(&from_step), (1..=12).collect::<Vec<_>>());

    // SIGTERM after a random delay, again and again, each time resuming with --resume auto.
    let mut rng = Rng::new(20261207);
    for round in 0..3 {
        let out_dir = dir.join(format!("interrupted{round}"));
        let mut args = flags(&data, &out_dir);
        args.extend(["--resume", "auto"].map(String::from));
        signal_until_done(&args, &out_dir, &mut rng, &format!("round {round}"), "stopped by SIGTERM");
        assert_same_weights(&straight.join("final_model.safetensors"), &out_dir.join("final_model.safetensors"));
        assert_eq!(steps_logged(&out_dir), (1..=12).collect::<Vec<_>>(), "round {round}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_auto_passes_over_broken_checkpoints_and_refuses_foreign_ones() {
    let dir = temp_dir("auto");
    let data = dataset(&dir, 16, 8);
    let out_dir = dir.join("out");
    let mut args = flags(&data, &out_dir);
    args.extend(["--epochs", "1", "--resume", "auto"].map(String::from));
    // Nothing there yet: a fresh start, said so.
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no checkpoint in"), "{}", text(&out));

    // Debris of killed runs: a state file whose model file never came, a damaged model file
    // (newer by its name), a temporary file. --resume auto takes checkpoint_epoch_1.
    std::fs::copy(
        out_dir.join("checkpoint_epoch_1.state.safetensors"),
        out_dir.join("checkpoint_step_7.state.safetensors"),
    )
    .unwrap();
    std::fs::write(out_dir.join("checkpoint_step_9.safetensors"), b"half a file").unwrap();
    std::fs::write(out_dir.join("checkpoint_step_8.safetensors.tmp"), b"half a file").unwrap();
    args.extend(["--epochs", "2"].map(String::from));
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("--resume auto: ") && said.contains("checkpoint_epoch_1.safetensors"), "{said}");
    assert!(said.contains("passes over") && said.contains("checkpoint_step_9.safetensors"), "{said}");
    assert_eq!(steps_logged(&out_dir), (1..=8).collect::<Vec<_>>());

    // Another model, another dataset: refused, naming the checkpoint.
    let mut other_model = args.clone();
    other_model.extend(["--epochs", "3", "--base_model", "resnet34"].map(String::from));
    let out = run(&other_model);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("checkpoint_epoch_2.safetensors"), "{}", text(&out));
    let other_data = dataset(&dir, 12, 9);
    let mut other_dataset = args.clone();
    other_dataset.extend(["--epochs", "3", "--processed_dir", s(&other_data)].map(String::from));
    let out = run(&other_dataset);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("checkpoint_epoch_2.safetensors") && text(&out).contains("different dataset"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Two CPU ranks under `--ddp`: SIGTERM to the launcher reaches both ranks, which stop at the
/// same step; rank 0 writes the checkpoint, the launcher exits with 75, and `--resume auto`
/// finishes bitwise as the uninterrupted two-rank run.
#[test]
fn sigterm_to_a_ddp_launch_stops_every_rank_at_one_checkpoint() {
    let dir = temp_dir("ddp");
    let data = dataset(&dir, 16, 8);
    let ddp = ["--ddp", "--num_gpus", "2", "--optimizer", "sgd", "--quiet"].map(String::from);
    let straight = dir.join("straight");
    let mut args = flags(&data, &straight);
    args.extend(ddp.clone());
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));

    let out_dir = dir.join("interrupted");
    let mut args = flags(&data, &out_dir);
    args.extend(ddp);
    args.extend(["--resume", "auto"].map(String::from));
    let stop_message = "the ranks stopped on a signal after saving a checkpoint";
    signal_until_done(&args, &out_dir, &mut Rng::new(7), "--ddp", stop_message);
    assert_same_weights(&straight.join("final_model.safetensors"), &out_dir.join("final_model.safetensors"));
    assert_eq!(steps_logged(&out_dir), (1..=12).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).ok();
}
