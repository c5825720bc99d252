//! Stop requests from a scheduler or a person: SIGTERM (preemption, `scancel`, a job's time
//! limit), SIGINT (Ctrl-C) and SIGUSR1 (what SLURM sends ahead of the end with
//! `--signal=USR1@120`).
//!
//! `simclr-train` installs [`install`] before its training loop. The handler only records which
//! signal came; the loop looks at [`received`] after every step, finishes that step, saves a
//! checkpoint (agreed by every rank, written by rank 0) and exits with [`EXIT_STOPPED`], so a
//! requeued job carries on with `--resume auto` and loses at most one step. In a lone process a
//! second signal of the same kind is not caught: a second Ctrl-C ends it at once.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicI32, Ordering};

/// The exit status of a run that a signal stopped after it saved its checkpoint: 75,
/// `EX_TEMPFAIL` ("try again later"). Rerun the same command with `--resume auto`.
pub const EXIT_STOPPED: i32 = 75;

/// The signals that ask training to stop.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

/// The last stop signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Async-signal-safe: one atomic store.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Catches [`STOP_SIGNALS`] for the rest of the process: every time, or — `once` — only the
/// first of each kind (`SA_RESETHAND`: the next one acts as if nothing were installed).
pub fn install(once: bool) -> Result<()> {
    for signal in STOP_SIGNALS {
        // SAFETY: a zeroed sigaction with a handler that only stores an atomic; sigemptyset
        // initialises the mask before use.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART | if once { libc::SA_RESETHAND } else { 0 };
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                let e = std::io::Error::last_os_error();
                return Err(Error::invalid("signals", format!("cannot catch {}: {e}", name(signal))));
            }
        }
    }
    Ok(())
}

/// The stop signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// "SIGTERM" for `libc::SIGTERM`, and so on.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGKILL => "SIGKILL",
        _ => "a signal",
    }
}
