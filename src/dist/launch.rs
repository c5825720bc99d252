//! `--ddp` without a launcher: this process starts one copy of itself per
//! rank on this machine, as torchrun would, and watches them.
//!
//! Each child gets torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR=127.0.0.1`, `MASTER_PORT` = a free port),
//! so it takes the launched path (see [`DistEnv`](super::DistEnv)) and never
//! spawns again. Rank 0 keeps this terminal (progress bar, per-epoch lines);
//! the other ranks' stderr is forwarded with a `[rank r]` prefix, so an error
//! says which rank it came from.
//!
//! A rank that fails must not leave the others hanging: the first child to
//! exit unsuccessfully (error, crash, signal) stops the rest, and the launch
//! fails naming it. (The survivors would also notice on their own, through
//! their communicator, within its timeout; stopping them is just faster.)
//!
//! A stop signal this process receives (`crate::signals`) is passed on to every rank, which
//! then finish their step, save a checkpoint and exit with `EXIT_STOPPED`; that is not a
//! failure, and the launch ends as [`LaunchEnd::Stopped`].

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

const OP: &str = "--ddp";

/// How often the children are polled for exits.
const POLL: Duration = Duration::from_millis(50);

/// How a launch that did not fail ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LaunchEnd {
    /// Every rank finished its training.
    Finished,
    /// A stop signal ended the ranks after they saved a checkpoint (`--resume auto` continues).
    Stopped,
}

/// Runs `program args` as ranks 0..world_size of one job on this machine and
/// waits for all of them. Ok when every rank exits successfully (or stopped on a signal, after
/// saving a checkpoint); otherwise the other ranks are killed and the error names the first rank
/// that failed.
pub fn run_local_ranks(program: &Path, args: &[OsString], world_size: usize) -> Result<LaunchEnd> {
    if world_size == 0 {
        return Err(Error::invalid(OP, "needs at least one rank"));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::dist(OP, format!("cannot find a free local port for the ranks to meet on: {e}")))?
        .port();
    let mut children: Vec<Child> = Vec::with_capacity(world_size);
    let mut forwarders = Vec::new();
    for rank in 0..world_size {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", world_size.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null());
        if rank > 0 {
            cmd.stderr(Stdio::piped());
        }
        // A rank outliving this process (killed with SIGKILL, say) gets SIGTERM, so it saves a
        // checkpoint and stops instead of training on alone.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe, as pre_exec requires.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut children);
                return Err(Error::dist(OP, format!("cannot start rank {rank} ({}): {e}", program.display())));
            }
        };
        if let Some(stderr) = child.stderr.take() {
            forwarders.push(std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
                    let _ = writeln!(std::io::stderr(), "[rank {rank}] {line}");
                }
            }));
        }
        children.push(child);
    }
    let result = watch(&mut children);
    if result.is_ok() {
        // Every rank exited, so their pipes are closed: wait for the last lines to be printed.
        // After a failure, don't: a killed rank's own children (if any) may hold its pipe open.
        for f in forwarders {
            let _ = f.join();
        }
    }
    result
}

/// Waits until every child has exited successfully (or stopped on a signal), or one has not.
/// Passes a stop signal this process receives on to the children, once; a rank that the
/// forwarded signal ends before it could catch it (it was still starting) counts as stopped too.
fn watch(children: &mut [Child]) -> Result<LaunchEnd> {
    let mut done = vec![false; children.len()];
    let (mut forwarded, mut stopped) = (None, false);
    loop {
        if let (Some(signal), None) = (crate::signals::received(), forwarded) {
            for (rank, child) in children.iter().enumerate() {
                if !done[rank] {
                    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
                    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
                }
            }
            forwarded = Some(signal);
        }
        for (rank, child) in children.iter_mut().enumerate() {
            if done[rank] {
                continue;
            }
            match child.try_wait() {
                Ok(Some(status)) if status.success() => done[rank] = true,
                Ok(Some(status))
                    if status.code() == Some(crate::signals::EXIT_STOPPED) || killed_by(status, forwarded) =>
                {
                    done[rank] = true;
                    stopped = true;
                }
                Ok(Some(status)) => {
                    stop_all(children);
                    return Err(Error::dist(
                        OP,
                        format!(
                            "rank {rank} {}; the other ranks were stopped (rank {rank}'s own error is above)",
                            describe(status)
                        ),
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    stop_all(children);
                    return Err(Error::dist(OP, format!("cannot watch rank {rank}: {e}")));
                }
            }
        }
        if done.iter().all(|&d| d) {
            return Ok(if stopped { LaunchEnd::Stopped } else { LaunchEnd::Finished });
        }
        std::thread::sleep(POLL);
    }
}

/// Kills every child still running and reaps them all.
fn stop_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}

/// Whether `status` is a death by the signal `forwarded` (when there is one).
fn killed_by(status: ExitStatus, forwarded: Option<i32>) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        forwarded.is_some() && status.signal() == forwarded
    }
    #[cfg(not(unix))]
    {
        let _ = (status, forwarded);
        false
    }
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    "ended abnormally".to_string()
}
