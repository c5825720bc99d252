//! Ranks as separate processes (one per core group, or per node) talking over
//! TCP: the CPU communicator for multi-process data parallelism, what PyTorch's
//! gloo backend is to NCCL. `simclr-train --ddp --device cpu`, torchrun and
//! SLURM launches use it; it also lets the launch and fault-handling paths run
//! in CI on machines without a GPU.
//!
//! Topology: a star around rank 0. Each other rank keeps one connection to rank
//! 0 (opened by the same hello as the NCCL id exchange, see [`rendezvous`]).
//! Every collective is one round, numbered per rank 0, 1, 2, ...:
//! 1. every rank except 0 sends its entry (round number, collective, tensor);
//! 2. rank 0 reads them in rank order, checks and combines them exactly as the
//!    in-process [`ThreadGroup`](super::ThreadGroup) does (sums in rank order,
//!    so results never depend on timing; mismatched calls are refused);
//! 3. rank 0 sends the outcome (result or error) back to every rank.
//!
//! That moves every tensor through rank 0, fine for the CPU path (the model and
//! a batch of projections are small next to the compute); GPUs use NCCL rings.
//!
//! Faults never hang the job:
//! - a rank whose process exits or crashes closes its socket; whoever waits on
//!   it fails at once: "rank 1 left the job (its process exited or crashed)";
//! - a rank that is alive but silent longer than the timeout fails the round;
//! - after any failure the communicator is broken: later collectives fail with
//!   the first error, so every rank stops instead of waiting on the others.
//!
//! [`rendezvous`]: super::rendezvous

use super::rendezvous::{accept_ranks, connect_to_rank0, DistEnv};
use super::round::{complete, Entry, Kind, Outcome};
use super::{check_all_gather_input, check_all_reduce_input, check_root, through_host, Communicator};
use crate::error::{Error, Result};
use crate::tensor::{DType, Layout, Storage, Tensor};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// The largest tensor a round may carry (a sanity bound on a corrupt length).
const MAX_TENSOR_BYTES: u64 = 1 << 36;
const MAX_RANK: usize = 16;

/// This process's handle on a multi-process job.
pub struct TcpCommunicator {
    rank: usize,
    world_size: usize,
    state: Mutex<State>,
    /// How long a read from a peer may block (see `connect`).
    read_timeout: Duration,
}

struct State {
    /// Rank 0: the streams to ranks 1.. (index = rank − 1). Others: the stream to rank 0.
    links: Vec<TcpStream>,
    /// The next round's number.
    call: u64,
    /// The first failure; once set, every collective fails with it.
    broken: Option<String>,
}

impl TcpCommunicator {
    /// Joins the job `env` describes: rank 0 listens on all interfaces at
    /// `master_port` until every other rank has connected, the others connect to
    /// `master_addr:master_port`. `timeout` bounds the handshake and every later
    /// wait on another rank: set it above the longest a rank computes between two
    /// collectives (the first collective also waits for the slowest start-up).
    pub fn connect(env: &DistEnv, timeout: Duration) -> Result<TcpCommunicator> {
        const OP: &str = "rendezvous";
        if timeout.is_zero() {
            return Err(Error::invalid(OP, "the timeout must be longer than zero"));
        }
        let links = if env.world_size == 1 {
            Vec::new()
        } else if env.rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", env.master_port)).map_err(|e| {
                Error::dist(
                    OP,
                    format!("rank 0 cannot listen on port {} (is MASTER_PORT already in use?): {e}", env.master_port),
                )
            })?;
            // The answer to each hello is empty: "you are in".
            accept_ranks(&listener, env.world_size, &[], timeout)?
        } else {
            vec![connect_to_rank0(&env.master_addr, env.master_port, env.rank, env.world_size, timeout)?.0]
        };
        // Rank 0 waits `timeout` for each rank; the others wait for rank 0 twice as long, so that
        // when some rank is stuck they receive rank 0's message naming it instead of timing out
        // at the same moment with a vaguer one.
        let read_timeout = if env.rank == 0 { timeout } else { 2 * timeout };
        for stream in &links {
            let prepared = stream
                .set_nodelay(true) // rounds are request/response: never wait to coalesce small messages
                .and_then(|_| stream.set_read_timeout(Some(read_timeout)))
                .and_then(|_| stream.set_write_timeout(Some(timeout)));
            prepared.map_err(|e| Error::dist(OP, format!("cannot configure a connection: {e}")))?;
        }
        Ok(TcpCommunicator {
            rank: env.rank,
            world_size: env.world_size,
            state: Mutex::new(State { links, call: 0, broken: None }),
            read_timeout,
        })
    }

    fn collective(&self, kind: Kind, tensor: Option<&Tensor>) -> Result<Option<Tensor>> {
        let op = kind.name();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(msg) = &state.broken {
            return Err(Error::dist(op, format!("the job already failed: {msg}")));
        }
        let call = state.call;
        state.call += 1;
        let entry = Entry { kind, tensor: tensor.map(Tensor::detach) };
        let outcome = if self.world_size == 1 {
            complete(&[Some(entry)], call)
        } else if self.rank == 0 {
            self.serve_round(&mut state.links, entry, call)
        } else {
            self.join_round(&mut state.links[0], &entry, call)
        };
        if let Err(msg) = &outcome {
            state.broken = Some(msg.clone());
        }
        outcome.map_err(|msg| Error::dist(op, msg))
    }

    /// Rank 0: collects every rank's entry, combines, answers everyone.
    fn serve_round(&self, links: &mut [TcpStream], own: Entry, call: u64) -> Outcome {
        let op = own.kind.name();
        let mut entries = vec![Some(own)];
        let mut failure = None;
        for (i, stream) in links.iter_mut().enumerate() {
            let rank = i + 1;
            match read_entry(stream) {
                Ok((their_call, entry)) if their_call == call => entries.push(Some(entry)),
                Ok((their_call, entry)) => {
                    failure = Some(format!(
                        "ranks are out of step: rank 0 is at collective #{call} ({op}), rank {rank} at #{their_call} \
                         ({}); every rank must call the same collectives in the same order",
                        entry.describe()
                    ));
                    break;
                }
                Err(e) => {
                    failure = Some(self.wait_failure(e, rank, op, call));
                    break;
                }
            }
        }
        let outcome = match failure {
            Some(msg) => Err(msg),
            None => complete(&entries, call),
        };
        // Answer every rank still reachable, so all of them stop with the same message.
        let mut send_failure = None;
        for (i, stream) in links.iter_mut().enumerate() {
            if let Err(e) = write_outcome(stream, call, &outcome) {
                send_failure.get_or_insert(format!(
                    "rank {} left the job (its process exited or crashed) during {op} (collective #{call}): {e}",
                    i + 1
                ));
            }
        }
        match (outcome, send_failure) {
            (Ok(_), Some(msg)) => Err(msg),
            (outcome, _) => outcome,
        }
    }

    /// A rank other than 0: sends its entry and waits for rank 0's answer.
    fn join_round(&self, stream: &mut TcpStream, entry: &Entry, call: u64) -> Outcome {
        let op = entry.kind.name();
        write_entry(stream, call, entry).map_err(|e| self.wait_failure(e, 0, op, call))?;
        let (their_call, outcome) = read_outcome(stream).map_err(|e| self.wait_failure(e, 0, op, call))?;
        if their_call != call {
            return Err(format!("rank 0 answered collective #{their_call} while rank {} is at #{call}", self.rank));
        }
        outcome
    }

    /// The message for an I/O failure while waiting on `peer`.
    fn wait_failure(&self, e: std::io::Error, peer: usize, op: &str, call: u64) -> String {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                "timed out after {} s waiting for rank {peer} in {op} (collective #{call}); a rank is stuck or much \
                 slower than the others — raise the timeout (--dist_timeout) if it is only slow",
                self.read_timeout.as_secs_f64()
            ),
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => format!(
                "rank {peer} left the job (its process exited or crashed) before finishing {op} (collective \
                 #{call}); see that rank's own error"
            ),
            _ => format!("talking to rank {peer} in {op} (collective #{call}) failed: {e}"),
        }
    }
}

impl Communicator for TcpCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        through_host(t, |t| {
            check_all_reduce_input(t)?;
            self.tensor_collective(Kind::AllReduceSum, t)
        })
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        through_host(t, |t| {
            check_all_gather_input(t)?;
            self.tensor_collective(Kind::AllGather, t)
        })
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        through_host(t, |t| {
            check_root(root, self.world_size)?;
            self.tensor_collective(Kind::Broadcast { root }, t)
        })
    }

    fn barrier(&self) -> Result<()> {
        self.collective(Kind::Barrier, None).map(|_| ())
    }
}

impl TcpCommunicator {
    fn tensor_collective(&self, kind: Kind, t: &Tensor) -> Result<Tensor> {
        self.collective(kind, Some(t))?
            .ok_or_else(|| Error::dist(kind.name(), "internal: a tensor collective produced no tensor"))
    }
}

// ------------------------------------------------------------------ wire format
//
// entry:   call u64 | kind u8 | root u32 | tensor
// outcome: call u64 | status u8 (0 = no tensor, 1 = tensor, 2 = error) | tensor or (len u32, UTF-8)
// tensor:  has u8 | dtype u8 | rank u8 | dims u64 × rank | bytes u64 | data (little-endian, row-major)

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, msg)
}

fn read_u8(r: &mut impl Read) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn kind_code(kind: Kind) -> (u8, u32) {
    match kind {
        Kind::AllReduceSum => (0, 0),
        Kind::AllGather => (1, 0),
        Kind::Broadcast { root } => (2, root as u32),
        Kind::Barrier => (3, 0),
    }
}

/// Appends the tensor's header to `head` and returns its data (contiguous, little-endian).
fn encode_tensor(head: &mut Vec<u8>, t: Option<&Tensor>) -> std::io::Result<Option<Storage>> {
    let Some(t) = t else {
        head.push(0);
        return Ok(None);
    };
    // Only a GPU tensor whose download fails can make this fail.
    let storage = t.contiguous_storage().map_err(|e| std::io::Error::other(e.to_string()))?;
    let dtype = DType::ALL.iter().position(|&d| d == t.dtype()).expect("every dtype is in DType::ALL") as u8;
    head.extend_from_slice(&[1, dtype, t.rank() as u8]);
    for &d in t.shape() {
        head.extend_from_slice(&(d as u64).to_le_bytes());
    }
    head.extend_from_slice(&(storage.as_bytes().len() as u64).to_le_bytes());
    Ok(Some(storage))
}

fn send(w: &mut impl Write, head: &[u8], data: Option<&Storage>) -> std::io::Result<()> {
    w.write_all(head)?;
    if let Some(s) = data {
        w.write_all(s.as_bytes())?;
    }
    w.flush()
}

fn read_tensor(r: &mut impl Read) -> std::io::Result<Option<Tensor>> {
    if read_u8(r)? == 0 {
        return Ok(None);
    }
    let dtype_code = read_u8(r)? as usize;
    let dtype = *DType::ALL.get(dtype_code).ok_or_else(|| invalid(format!("unknown dtype code {dtype_code}")))?;
    let rank = read_u8(r)? as usize;
    if rank > MAX_RANK {
        return Err(invalid(format!("a tensor of rank {rank}")));
    }
    let mut shape = Vec::with_capacity(rank);
    for _ in 0..rank {
        shape.push(read_u64(r)? as usize);
    }
    let bytes = read_u64(r)?;
    let want = shape.iter().try_fold(dtype.size_in_bytes() as u64, |acc, &d| acc.checked_mul(d as u64));
    if bytes > MAX_TENSOR_BYTES || want != Some(bytes) {
        return Err(invalid(format!("{bytes} bytes for a {shape:?} {dtype} tensor")));
    }
    let mut data = vec![0u8; bytes as usize];
    r.read_exact(&mut data)?;
    let storage = Storage::from_bytes(dtype, &data).ok_or_else(|| invalid("tensor bytes do not divide".into()))?;
    Ok(Some(Tensor::from_parts(storage, Layout::contiguous(&shape))))
}

fn write_entry(w: &mut impl Write, call: u64, entry: &Entry) -> std::io::Result<()> {
    let (code, root) = kind_code(entry.kind);
    let mut head = call.to_le_bytes().to_vec();
    head.push(code);
    head.extend_from_slice(&root.to_le_bytes());
    let data = encode_tensor(&mut head, entry.tensor.as_ref())?;
    send(w, &head, data.as_ref())
}

fn read_entry(r: &mut impl Read) -> std::io::Result<(u64, Entry)> {
    let call = read_u64(r)?;
    let code = read_u8(r)?;
    let root = read_u32(r)? as usize;
    let kind = match code {
        0 => Kind::AllReduceSum,
        1 => Kind::AllGather,
        2 => Kind::Broadcast { root },
        3 => Kind::Barrier,
        _ => return Err(invalid(format!("unknown collective code {code}"))),
    };
    Ok((call, Entry { kind, tensor: read_tensor(r)? }))
}

fn write_outcome(w: &mut impl Write, call: u64, outcome: &Outcome) -> std::io::Result<()> {
    let mut head = call.to_le_bytes().to_vec();
    match outcome {
        Ok(t) => {
            head.push(if t.is_some() { 1 } else { 0 });
            let data = encode_tensor(&mut head, t.as_ref())?;
            send(w, &head, data.as_ref())
        }
        Err(msg) => {
            head.push(2);
            head.extend_from_slice(&(msg.len() as u32).to_le_bytes());
            head.extend_from_slice(msg.as_bytes());
            send(w, &head, None)
        }
    }
}

fn read_outcome(r: &mut impl Read) -> std::io::Result<(u64, Outcome)> {
    let call = read_u64(r)?;
    let outcome = match read_u8(r)? {
        0 | 1 => Ok(read_tensor(r)?),
        2 => {
            let len = read_u32(r)? as usize;
            if len > 1 << 20 {
                return Err(invalid(format!("an error message of {len} bytes")));
            }
            let mut msg = vec![0u8; len];
            r.read_exact(&mut msg)?;
            Err(String::from_utf8_lossy(&msg).into_owned())
        }
        s => return Err(invalid(format!("unknown outcome status {s}"))),
    };
    Ok((call, outcome))
}
