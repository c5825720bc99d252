//! `simclr-data` end to end: generate → inspect → contact sheet, and bad flags.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_simclr-data"))
}

/// `simclr-data bouncing` with the settings this file checks (10 clips, seed 4, 3 shards).
fn generate_ten_clips(dir: &std::path::Path) -> std::process::Output {
    bin()
        .args(["bouncing", "--out", dir.to_str().unwrap(), "--clips", "10", "--frames", "6", "--size", "32"])
        .args(["--seed", "4", "--clips-per-shard", "4"])
        .output()
        .unwrap()
}

#[test]
fn generate_inspect_and_contact_sheet() {
    let dir = std::env::temp_dir().join(format!("simclr-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = generate_ten_clips(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 10 clips (3 shards"));
    let png = dir.join("sheet.png");
    let out = bin().args(["inspect", dir.to_str().unwrap(), "--png", png.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("checksums ok") && text.contains("10 in 3 shards") && text.contains("balls:"), "{text}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // Same seed again into another directory: byte-identical shards.
    let dir2 = dir.with_extension("again");
    let _ = std::fs::remove_dir_all(&dir2);
    let out = generate_ten_clips(&dir2);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(dir.join("shard-00002.bin")).unwrap(),
        std::fs::read(dir2.join("shard-00002.bin")).unwrap()
    );
    // A corrupted shard is reported by inspect, with exit code 2.
    let shard = dir.join("shard-00001.bin");
    let mut b = std::fs::read(&shard).unwrap();
    b[100] ^= 0x55;
    std::fs::write(&shard, b).unwrap();
    let out = bin().args(["inspect", dir.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn bad_flags_and_missing_data_are_clear_errors() {
    let out = bin().args(["bouncing", "--out", "/tmp/x", "--balls", "0-9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--balls"));
    let out = bin().args(["bouncing", "--out", "/tmp/x", "--size", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["bouncing", "--clips", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2)); // clap's own usage error
    let out = bin().args(["bouncing", "--out", "/tmp/x", "--clips-per-shard", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clips-per-shard"));
    let out = bin().args(["bouncing", "--colour", "red"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2)); // unknown flag
    assert!(String::from_utf8_lossy(&out.stderr).contains("--colour"));
    // --help documents the defaults, so `simclr-data bouncing --out DIR` is self-explanatory.
    let out = bin().args(["bouncing", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("[default: 1000]") && help.contains("[default: 128]"), "{help}");
    let out = bin().args(["inspect", "/nonexistent/dataset"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("simclr-data bouncing --out") && !err.contains("panicked"), "{err}");
}
