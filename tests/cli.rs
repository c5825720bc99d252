//! The binaries' command-line contract.

use std::process::Command;

#[test]
fn simclr_train_with_flags_says_the_trainer_is_not_built_yet() {
    let out = Command::new(env!("CARGO_BIN_EXE_simclr-train")).args(["--epochs", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not implemented yet") && err.contains("cargo run --release"), "{err}");
}
