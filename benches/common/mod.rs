//! The header every benchmark prints first: what ran where and when, so a
//! results file under benches/results/ says which machine and commit it
//! measured. Included by each bench with `mod common;`.

use std::process::Command;

#[cfg(feature = "cuda")]
#[allow(dead_code)] // every bench includes this module; only the CUDA ones use it
pub mod gpu;

/// Trimmed stdout of a command, or "" if it cannot run.
pub fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Prints `# simclr {title}`, the CPU model and thread counts, date, commit and
/// load average. `measured` lists the paths whose uncommitted (or untracked)
/// changes are flagged, so a number is never attributed to a commit that did
/// not produce it.
pub fn print_header(title: &str, measured: &[&str]) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let modified = Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .args(measured)
        .status()
        .map(|s| !s.success())
        .unwrap_or(false);
    let untracked = command_output("git", &[&["ls-files", "--others", "--exclude-standard", "--"], measured].concat());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# simclr {title}");
    println!(
        "# machine: {cpu}, nproc {}, {} rayon threads",
        command_output("nproc", &[]),
        rayon::current_num_threads()
    );
    println!(
        "# date: {}  commit: {}{}",
        command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        if modified || !untracked.is_empty() { " + uncommitted changes" } else { "" }
    );
    println!(
        "# load average at start (the cores may be shared): {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}
