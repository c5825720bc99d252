//! Finding the other ranks: who this process is, from the launcher's
//! environment, and how rank 0 hands every other rank a blob (NCCL's unique
//! id, which all ranks need before they can create the communicator).
//!
//! Launchers, in order of precedence:
//! - torchrun (or any launcher following its convention): `RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, all required.
//!   Under torchrun itself (`TORCHELASTIC_RUN_ID` set) its agent's store holds
//!   MASTER_PORT, so rank 0 listens on MASTER_PORT + 1;
//! - SLURM (`srun`): `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; the
//!   master is `MASTER_ADDR` if set, else the first host of
//!   `SLURM_JOB_NODELIST`; the port is `MASTER_PORT` if set, else derived from
//!   `SLURM_JOB_ID` (so two jobs sharing a node do not collide), else 29500.
//!
//! Variables are passed in as a map so tests need no real environment.
//!
//! The id exchange is a few bytes over TCP: rank 0 listens on MASTER_PORT and
//! answers each rank's hello (magic, version, rank, world size) with the blob;
//! the others connect, retrying until the timeout (rank 0 may start later).
//! Mismatched world sizes and duplicate ranks are refused with a message.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const OP: &str = "rendezvous";

/// torchrun's default port, used when nothing else says which.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
}

/// This process's place in a multi-process job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// Index of this process on its node: the GPU it should use.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub launcher: Launcher,
}

fn number(vars: &HashMap<String, String>, name: &str) -> Result<Option<usize>> {
    match vars.get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
            Error::dist(OP, format!("{name}={v:?} is not a whole number; check how the job was launched"))
        }),
    }
}

fn required(vars: &HashMap<String, String>, name: &str, launcher: &str) -> Result<usize> {
    number(vars, name)?.ok_or_else(|| {
        Error::dist(
            OP,
            format!("{launcher} launch: {name} is not set (the launcher sets it; set it by hand otherwise)"),
        )
    })
}

fn port(name: &str, v: &str) -> Result<u16> {
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Error::dist(OP, format!("{name}={v:?} is not a TCP port (1 to 65535)"))),
    }
}

impl DistEnv {
    /// From this process's environment; `None` when no launcher variables are set
    /// (a plain single-process run).
    pub fn from_env() -> Result<Option<DistEnv>> {
        // vars_os: `vars()` panics on a variable that is not UTF-8; such variables are not ours anyway.
        let vars = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        DistEnv::from_vars(&vars.collect())
    }

    /// From a map of environment variables. `None` when neither torchrun's
    /// `RANK`/`WORLD_SIZE` nor SLURM's `SLURM_PROCID` is present.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Option<DistEnv>> {
        let env = if vars.contains_key("RANK") || vars.contains_key("WORLD_SIZE") {
            let who = "torchrun-style";
            let addr = vars.get("MASTER_ADDR").filter(|a| !a.trim().is_empty()).ok_or_else(|| {
                Error::dist(OP, "torchrun-style launch: MASTER_ADDR is not set (the host name or IP of rank 0)")
            })?;
            let master_port = match vars.get("MASTER_PORT") {
                // torchrun's own agent already listens on MASTER_PORT (its rendezvous store):
                // under torchrun, rank 0 listens on the next port.
                Some(p) if vars.contains_key("TORCHELASTIC_RUN_ID") => {
                    port("MASTER_PORT", p)?.checked_add(1).ok_or_else(|| {
                        Error::dist(OP, "MASTER_PORT=65535 leaves no port above it for rank 0 under torchrun")
                    })?
                }
                Some(p) => port("MASTER_PORT", p)?,
                None => {
                    return Err(Error::dist(
                        OP,
                        "torchrun-style launch: MASTER_PORT is not set (a free port on rank 0's host)",
                    ))
                }
            };
            DistEnv {
                rank: required(vars, "RANK", who)?,
                world_size: required(vars, "WORLD_SIZE", who)?,
                local_rank: required(vars, "LOCAL_RANK", who)?,
                master_addr: addr.trim().to_string(),
                master_port,
                launcher: Launcher::Torchrun,
            }
        } else if vars.contains_key("SLURM_PROCID") {
            let who = "SLURM";
            let world_size = match number(vars, "SLURM_NTASKS")? {
                Some(n) => n,
                None => required(vars, "SLURM_NPROCS", who).map_err(|_| {
                    Error::dist(OP, "SLURM launch: SLURM_NTASKS is not set (launch the ranks with srun --ntasks=N)")
                })?,
            };
            let master_addr = match vars.get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) {
                Some(a) => a.trim().to_string(),
                None => {
                    let list =
                        vars.get("SLURM_JOB_NODELIST").or_else(|| vars.get("SLURM_NODELIST")).ok_or_else(|| {
                            Error::dist(OP, "SLURM launch: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
                        })?;
                    first_host(list)?
                }
            };
            let master_port = match (vars.get("MASTER_PORT"), number(vars, "SLURM_JOB_ID")?) {
                (Some(p), _) => port("MASTER_PORT", p)?,
                (None, Some(job)) => 20000 + (job % 10000) as u16,
                (None, None) => DEFAULT_MASTER_PORT,
            };
            DistEnv {
                rank: required(vars, "SLURM_PROCID", who)?,
                world_size,
                local_rank: required(vars, "SLURM_LOCALID", who)?,
                master_addr,
                master_port,
                launcher: Launcher::Slurm,
            }
        } else {
            return Ok(None);
        };
        env.validate()?;
        Ok(Some(env))
    }

    fn validate(&self) -> Result<()> {
        let (rank_var, world_var) = match self.launcher {
            Launcher::Torchrun => ("RANK", "WORLD_SIZE"),
            Launcher::Slurm => ("SLURM_PROCID", "SLURM_NTASKS"),
        };
        if self.world_size == 0 {
            return Err(Error::dist(OP, format!("{world_var}=0: a job needs at least one rank")));
        }
        if self.rank >= self.world_size {
            return Err(Error::dist(
                OP,
                format!(
                    "{rank_var}={} is not below {world_var}={} (ranks are 0..world size)",
                    self.rank, self.world_size
                ),
            ));
        }
        if self.local_rank >= self.world_size {
            return Err(Error::dist(
                OP,
                format!("local rank {} is not below the world size {}", self.local_rank, self.world_size),
            ));
        }
        Ok(())
    }
}

/// The first host of a SLURM node list (`gpu[03-05,07],cpu01` → `gpu03`).
pub fn first_host(nodelist: &str) -> Result<String> {
    let mut hosts = expand_nodelist(nodelist)?;
    Ok(hosts.swap_remove(0))
}

/// Every host of a SLURM node list, in order: comma-separated items, each a
/// name with bracketed ranges (`n[01-03,7]`, `rack[1-2]-n[1-2]`); a range keeps
/// the zero padding of its first number.
pub fn expand_nodelist(nodelist: &str) -> Result<Vec<String>> {
    let bad = |msg: &str| Error::dist(OP, format!("cannot read SLURM node list {nodelist:?}: {msg}"));
    const MAX_HOSTS: usize = 1 << 20;
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, ch) in nodelist.char_indices() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&nodelist[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(bad("brackets do not match"));
        }
    }
    if depth != 0 {
        return Err(bad("brackets do not match"));
    }
    items.push(&nodelist[start..]);
    let mut hosts = Vec::new();
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("empty host name"));
        }
        // Alternating literal / bracket parts; expand as a cartesian product.
        let mut names = vec![String::new()];
        let mut rest = item;
        while let Some((literal, after)) = rest.split_once('[') {
            names.iter_mut().for_each(|n| n.push_str(literal));
            let (ranges, tail) = after.split_once(']').ok_or_else(|| bad("brackets do not match"))?;
            let values = expand_ranges(ranges).map_err(|m| bad(&m))?;
            if names.len().saturating_mul(values.len()) > MAX_HOSTS {
                return Err(bad("more than a million hosts"));
            }
            names = names.iter().flat_map(|n| values.iter().map(move |v| format!("{n}{v}"))).collect();
            rest = tail;
        }
        names.iter_mut().for_each(|n| n.push_str(rest));
        hosts.extend(names);
    }
    Ok(hosts)
}

/// `03-05,7` → ["03", "04", "05", "7"].
fn expand_ranges(ranges: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in ranges.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("`{part}` is not a number or a range like 03-05"));
        }
        let (a, b): (u64, u64) =
            (lo.parse().map_err(|_| "number too large")?, hi.parse().map_err(|_| "number too large")?);
        if a > b || b - a >= 1 << 20 {
            return Err(format!("range `{part}` is empty or too long"));
        }
        out.extend((a..=b).map(|v| format!("{v:0width$}", width = lo.len())));
    }
    Ok(out)
}

// ------------------------------------------------------------------ id exchange

const MAGIC: &[u8; 8] = b"SIMCLRID";
const VERSION: u32 = 1;
/// NCCL's id is 128 bytes; anything far larger is a protocol error.
const MAX_BLOB: usize = 1 << 20;

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::dist(OP, format!("{what}: {e}"))
}

fn write_reply(stream: &mut TcpStream, ok: bool, payload: &[u8]) -> std::io::Result<()> {
    let mut msg = vec![if ok { 0u8 } else { 1u8 }];
    msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    msg.extend_from_slice(payload);
    stream.write_all(&msg)?;
    stream.flush()
}

/// Reads a rank's hello: (rank, world size). `None` for anything that is not
/// one (a port scanner, a stray client), which is ignored.
fn read_hello(stream: &mut TcpStream) -> Option<(usize, usize)> {
    let mut buf = [0u8; 20];
    stream.read_exact(&mut buf).ok()?;
    if &buf[..8] != MAGIC || u32::from_le_bytes(buf[8..12].try_into().ok()?) != VERSION {
        return None;
    }
    let rank = u32::from_le_bytes(buf[12..16].try_into().ok()?) as usize;
    let world = u32::from_le_bytes(buf[16..20].try_into().ok()?) as usize;
    Some((rank, world))
}

/// Rank 0's side: answers ranks 1..world_size with `blob` on `listener`, and
/// returns once each has been served, or fails after `timeout` naming the
/// ranks that never came.
pub fn serve_blob(listener: &TcpListener, world_size: usize, blob: &[u8], timeout: Duration) -> Result<()> {
    if blob.len() > MAX_BLOB {
        return Err(Error::invalid(OP, format!("blob of {} bytes is larger than {MAX_BLOB}", blob.len())));
    }
    accept_ranks(listener, world_size, blob, timeout).map(drop)
}

/// Rank 0's side of the handshake: accepts one connection from each of ranks
/// 1..world_size (checking each hello: same world size, a valid rank nobody
/// else claimed), answers each with `blob` as soon as it is accepted, and
/// returns the connections in rank order (index = rank − 1). Fails after
/// `timeout` naming the ranks that never came.
pub(crate) fn accept_ranks(
    listener: &TcpListener,
    world_size: usize,
    blob: &[u8],
    timeout: Duration,
) -> Result<Vec<TcpStream>> {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    listener.set_nonblocking(true).map_err(|e| io_err("cannot poll the rendezvous socket", e))?;
    let deadline = Instant::now() + timeout;
    let mut streams: Vec<Option<TcpStream>> = (0..world_size).map(|_| None).collect();
    let missing =
        |streams: &[Option<TcpStream>]| -> Vec<usize> { (1..world_size).filter(|&r| streams[r].is_none()).collect() };
    while !missing(&streams).is_empty() {
        let now = Instant::now();
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let per_connection =
                    deadline.saturating_duration_since(now).clamp(Duration::from_millis(50), Duration::from_secs(5));
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(per_connection));
                let _ = stream.set_write_timeout(Some(per_connection));
                let Some((rank, world)) = read_hello(&mut stream) else { continue };
                let refusal = if world != world_size {
                    Some(format!(
                        "rank {rank} (from {peer}) was launched with world size {world}, rank 0 with {world_size}; \
                         launch every rank with the same WORLD_SIZE"
                    ))
                } else if rank == 0 || rank >= world_size {
                    Some(format!("a process at {peer} claims rank {rank}, which is not in 1..{world_size}"))
                } else if streams[rank].is_some() {
                    Some(format!("two processes claim rank {rank} (the second from {peer}); check RANK/SLURM_PROCID"))
                } else {
                    None
                };
                if let Some(msg) = refusal {
                    let _ = write_reply(&mut stream, false, msg.as_bytes());
                    return Err(Error::dist(OP, msg));
                }
                write_reply(&mut stream, true, blob).map_err(|e| io_err(&format!("cannot answer rank {rank}"), e))?;
                streams[rank] = Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if now >= deadline {
                    let missing: Vec<String> = missing(&streams).iter().map(|r| r.to_string()).collect();
                    return Err(Error::dist(
                        OP,
                        format!(
                            "timed out after {} s: rank(s) {} never connected to rank 0 on port {port}; are they \
                             running, with the same MASTER_ADDR/MASTER_PORT, and can they reach this host?",
                            timeout.as_secs_f64(),
                            missing.join(", ")
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err("accepting a rank's connection failed", e)),
        }
    }
    Ok(streams.into_iter().flatten().collect())
}

/// Another rank's side: connects to rank 0 at `host:port` (retrying until
/// `timeout`: rank 0 may not be listening yet) and returns its blob.
pub fn fetch_blob(host: &str, port: u16, rank: usize, world_size: usize, timeout: Duration) -> Result<Vec<u8>> {
    connect_to_rank0(host, port, rank, world_size, timeout).map(|(_, blob)| blob)
}

/// The handshake of [`fetch_blob`], keeping the connection: returns the open
/// stream to rank 0 and rank 0's answer.
pub(crate) fn connect_to_rank0(
    host: &str,
    port: u16,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<(TcpStream, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(10);
    let mut last_error: String;
    let mut stream = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = (host, port).to_socket_addrs().map_err(|e| e.to_string()).and_then(|addrs| {
            let mut err = format!("{host} resolves to no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, remaining.max(Duration::from_millis(10))) {
                    Ok(s) => return Ok(s),
                    Err(e) => err = format!("{a}: {e}"),
                }
            }
            Err(err)
        });
        match attempt {
            Ok(s) => break s,
            Err(e) => last_error = e,
        }
        if Instant::now() >= deadline {
            return Err(Error::dist(
                OP,
                format!(
                    "rank {rank} could not reach rank 0 at {host}:{port} within {} s (last error: {last_error}); \
                     is rank 0 running, and are MASTER_ADDR/MASTER_PORT the same on every rank?",
                    timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
        backoff = (backoff * 2).min(Duration::from_millis(500));
    };
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let _ = stream.set_read_timeout(Some(remaining));
    let _ = stream.set_write_timeout(Some(remaining));
    let mut hello = MAGIC.to_vec();
    for v in [VERSION, rank as u32, world_size as u32] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    let talk =
        |what: &str, e: std::io::Error| io_err(&format!("rank {rank} talking to rank 0 at {host}:{port}: {what}"), e);
    stream.write_all(&hello).map_err(|e| talk("sending", e))?;
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).map_err(|e| talk("no answer", e))?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_BLOB {
        return Err(Error::dist(
            OP,
            format!("rank 0 at {host}:{port} sent a {len}-byte answer; is that really rank 0?"),
        ));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).map_err(|e| talk("truncated answer", e))?;
    if head[0] != 0 {
        return Err(Error::dist(OP, format!("rank 0 refused rank {rank}: {}", String::from_utf8_lossy(&payload))));
    }
    Ok((stream, payload))
}

/// Everyone ends up with rank 0's blob: rank 0 calls `create` (e.g.
/// `ncclGetUniqueId`), listens on all interfaces at `master_port` and serves
/// it; the others fetch it from `master_addr:master_port`.
pub fn share_from_rank0(env: &DistEnv, timeout: Duration, create: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    if env.rank != 0 {
        return fetch_blob(&env.master_addr, env.master_port, env.rank, env.world_size, timeout);
    }
    let blob = create()?;
    if env.world_size > 1 {
        let listener = TcpListener::bind(("0.0.0.0", env.master_port)).map_err(|e| {
            io_err(&format!("rank 0 cannot listen on port {} (is MASTER_PORT already in use?)", env.master_port), e)
        })?;
        serve_blob(&listener, env.world_size, &blob, timeout)?;
    }
    Ok(blob)
}
