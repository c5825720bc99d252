//! Ranks as threads of one process: the communicator the CPU tests use to run
//! 2, 4, ... data-parallel ranks side by side.
//!
//! Every rank numbers its collectives 0, 1, 2, ...; call k of every rank forms
//! round k. A rank puts its input into the round and waits; the last rank to
//! arrive checks that all ranks called the same collective on the same shapes,
//! computes the result once (sums in rank order, so it never depends on which
//! thread came last) and wakes the others, who all get that same result.
//!
//! Faults never hang the group:
//! - a rank whose communicator is dropped (its thread returned or panicked)
//!   fails every round it did not join: "rank 2 left the group";
//! - a rank that waits longer than the timeout fails: "timed out after 30 s
//!   waiting for rank 1 in all_reduce_sum";
//! - ranks that disagree (all_gather against all_reduce, different shapes) fail.
//!
//! After any of these the group is broken: every later collective on every rank
//! returns the first error, so all ranks stop instead of waiting on each other.
//!
//! Run each rank on its own OS thread (`std::thread::scope`), not as a rayon
//! task: a rank blocked in a collective holds its thread, and rayon's few
//! workers could all end up blocked waiting for ranks that never got a worker.

use super::{check_all_gather_input, check_all_reduce_input, check_root, Communicator};
use crate::any_dispatch;
use crate::error::{Error, Result};
use crate::float_dispatch;
use crate::tensor::{DType, Float, StorageElement, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Builds the communicators of an in-process group.
pub struct ThreadGroup;

impl ThreadGroup {
    /// One communicator per rank (index = rank); move each into its own thread.
    /// `timeout` bounds how long any collective waits for the other ranks: set it
    /// above the longest time a rank computes between two collectives.
    #[allow(clippy::new_ret_no_self)] // a group is its ranks' communicators
    pub fn new(world_size: usize, timeout: Duration) -> Result<Vec<ThreadCommunicator>> {
        if world_size == 0 {
            return Err(Error::invalid("ThreadGroup::new", "a group needs at least one rank"));
        }
        if timeout.is_zero() {
            return Err(Error::invalid("ThreadGroup::new", "the timeout must be longer than zero"));
        }
        let group = Arc::new(Group {
            world_size,
            timeout,
            state: Mutex::new(State {
                calls: vec![0; world_size],
                departed: vec![false; world_size],
                rounds: BTreeMap::new(),
                broken: None,
            }),
            changed: Condvar::new(),
        });
        Ok((0..world_size).map(|rank| ThreadCommunicator { rank, group: group.clone() }).collect())
    }
}

/// One rank's handle on the group. Dropping it tells the other ranks this
/// rank is gone.
pub struct ThreadCommunicator {
    rank: usize,
    group: Arc<Group>,
}

struct Group {
    world_size: usize,
    timeout: Duration,
    state: Mutex<State>,
    /// Signalled when a round completes, a rank leaves, or the group breaks.
    changed: Condvar,
}

struct State {
    /// How many collectives each rank has entered (its next round's number).
    calls: Vec<u64>,
    departed: Vec<bool>,
    /// Rounds some rank has entered and not every rank has read yet.
    rounds: BTreeMap<u64, Round>,
    /// The first failure; once set, every collective fails with it.
    broken: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    AllReduceSum,
    AllGather,
    Broadcast { root: usize },
    Barrier,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AllReduceSum => "all_reduce_sum",
            Kind::AllGather => "all_gather",
            Kind::Broadcast { .. } => "broadcast",
            Kind::Barrier => "barrier",
        }
    }
}

/// What one rank brought to a round.
struct Entry {
    kind: Kind,
    tensor: Option<Tensor>,
}

impl Entry {
    fn describe(&self) -> String {
        let what = match self.kind {
            Kind::Broadcast { root } => format!("broadcast from rank {root}"),
            k => k.name().to_string(),
        };
        match &self.tensor {
            Some(t) => format!("{what} of {:?} {}", t.shape(), t.dtype()),
            None => what,
        }
    }
}

/// The result every rank of a round receives (or the reason it failed).
type Outcome = std::result::Result<Option<Tensor>, String>;

struct Round {
    entries: Vec<Option<Entry>>,
    outcome: Option<Outcome>,
    /// Ranks that have not picked up the outcome yet; the round is freed at 0.
    unread: usize,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked cannot have left the state half-updated: every
        // update below is complete before the lock is released.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// "0.5 s", "30 s".
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn rank_list(ranks: &[usize]) -> String {
    let names: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    format!("rank{} {}", if ranks.len() > 1 { "s" } else { "" }, names.join(", "))
}

impl ThreadCommunicator {
    /// Joins this rank's next round and waits for its outcome.
    fn collective(&self, kind: Kind, tensor: Option<Tensor>) -> Result<Option<Tensor>> {
        let op = kind.name();
        let group = &*self.group;
        let mut state = group.lock();
        if let Some(msg) = &state.broken {
            return Err(Error::dist(op, format!("the group already failed: {msg}")));
        }
        let call = state.calls[self.rank];
        state.calls[self.rank] += 1;
        let world = group.world_size;
        let round = state.rounds.entry(call).or_insert_with(|| Round {
            entries: (0..world).map(|_| None).collect(),
            outcome: None,
            unread: world,
        });
        round.entries[self.rank] = Some(Entry { kind, tensor: tensor.map(|t| t.detach()) });
        if round.entries.iter().all(Option::is_some) {
            // Computed under the lock: the other ranks of this round are waiting for it anyway.
            let outcome = complete(&round.entries, call);
            round.entries.iter_mut().for_each(|e| *e = None); // inputs are no longer needed
            if let Err(msg) = &outcome {
                state.broken = Some(msg.clone());
            }
            if let Some(round) = state.rounds.get_mut(&call) {
                round.outcome = Some(outcome);
            }
            group.changed.notify_all();
        }
        let deadline = Instant::now() + group.timeout;
        loop {
            let State { rounds, departed, broken, .. } = &mut *state;
            let round = rounds.get_mut(&call).ok_or_else(|| {
                Error::dist(op, format!("internal: round #{call} vanished before rank {} read it", self.rank))
            })?;
            if let Some(outcome) = &round.outcome {
                let outcome = outcome.clone();
                round.unread -= 1;
                if round.unread == 0 {
                    rounds.remove(&call);
                }
                // Each rank gets its own handle on the shared, immutable storage.
                return outcome.map(|t| t.map(|t| t.detach())).map_err(|msg| Error::dist(op, msg));
            }
            if let Some(msg) = broken {
                return Err(Error::dist(op, msg.clone()));
            }
            let missing: Vec<usize> = (0..world).filter(|&r| round.entries[r].is_none()).collect();
            let failure = if let Some(&gone) = missing.iter().find(|&&r| departed[r]) {
                Some(format!(
                    "rank {gone} left the group (its thread returned or panicked) before joining {op} \
                     (collective #{call}); see that rank's own error"
                ))
            } else if Instant::now() >= deadline {
                Some(format!(
                    "timed out after {} waiting for {} in {op} (collective #{call}); a rank is stuck or much \
                     slower than the others — raise the timeout if it is only slow",
                    seconds(group.timeout),
                    rank_list(&missing)
                ))
            } else {
                None
            };
            if let Some(msg) = failure {
                *broken = Some(msg.clone());
                group.changed.notify_all();
                return Err(Error::dist(op, msg));
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            state = group.changed.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl ThreadCommunicator {
    fn tensor_collective(&self, kind: Kind, t: &Tensor) -> Result<Tensor> {
        self.collective(kind, Some(t.clone()))?
            .ok_or_else(|| Error::dist(kind.name(), "internal: a tensor collective produced no tensor"))
    }
}

impl Drop for ThreadCommunicator {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        state.departed[self.rank] = true;
        self.group.changed.notify_all();
    }
}

/// Checks that every rank called the same collective on the same shapes, then
/// computes the result. Runs once per round, on the last rank to arrive.
fn complete(entries: &[Option<Entry>], call: u64) -> Outcome {
    let entries: Vec<&Entry> = entries.iter().flatten().collect();
    let first = entries[0];
    for (rank, e) in entries.iter().enumerate().skip(1) {
        let same_tensor = match (&first.tensor, &e.tensor) {
            (Some(a), Some(b)) => a.shape() == b.shape() && a.dtype() == b.dtype(),
            (None, None) => true,
            _ => false,
        };
        if e.kind != first.kind || !same_tensor {
            return Err(format!(
                "ranks disagree at collective #{call}: rank 0 called {}, rank {rank} called {} (every rank must \
                 call the same collectives in the same order, on tensors of the same shape and dtype)",
                first.describe(),
                e.describe()
            ));
        }
    }
    let tensors: Vec<&Tensor> = entries.iter().filter_map(|e| e.tensor.as_ref()).collect();
    let result = match first.kind {
        Kind::Barrier => return Ok(None),
        Kind::Broadcast { root } => Ok(tensors[root].clone()),
        Kind::AllGather => concat_rows(&tensors),
        Kind::AllReduceSum => sum_in_rank_order(&tensors),
    };
    result.map(Some).map_err(|e| e.to_string())
}

/// Elementwise Σ over ranks, accumulated in f64 in rank order.
fn sum_in_rank_order(tensors: &[&Tensor]) -> Result<Tensor> {
    float_dispatch!("all_reduce_sum", tensors[0].dtype(), T => sum_impl::<T>(tensors))
}

fn sum_impl<T: Float + StorageElement>(tensors: &[&Tensor]) -> Result<Tensor> {
    let datas: Vec<_> = tensors.iter().map(|t| t.host_data::<T>()).collect::<Result<_>>()?;
    let mut out = vec![T::zero(); tensors[0].numel()];
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let start = c * CHUNK;
        for (i, o) in chunk.iter_mut().enumerate() {
            let mut acc = 0.0f64;
            for d in &datas {
                acc += d[start + i].as_f64();
            }
            *o = T::of_f64(acc);
        }
    });
    Tensor::from_vec(out, tensors[0].shape())
}

/// Concatenation along axis 0 in rank order.
fn concat_rows(tensors: &[&Tensor]) -> Result<Tensor> {
    let mut shape = tensors[0].shape().to_vec();
    shape[0] *= tensors.len();
    let dtype: DType = tensors[0].dtype();
    any_dispatch!(dtype, T => {
        let mut out: Vec<T> = Vec::with_capacity(tensors.iter().map(|t| t.numel()).sum());
        for t in tensors {
            out.extend_from_slice(&t.host_data::<T>()?);
        }
        Tensor::from_vec(out, &shape)
    })
}

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        check_all_reduce_input(t)?;
        self.tensor_collective(Kind::AllReduceSum, t)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        check_all_gather_input(t)?;
        self.tensor_collective(Kind::AllGather, t)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, self.group.world_size)?;
        self.tensor_collective(Kind::Broadcast { root }, t)
    }

    fn barrier(&self) -> Result<()> {
        self.collective(Kind::Barrier, None).map(|_| ())
    }
}
