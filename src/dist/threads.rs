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

use super::round::{complete, Entry, Kind, Outcome};
use super::{check_all_gather_input, check_all_reduce_input, check_root, through_host, Communicator};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
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

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world_size
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
            check_root(root, self.group.world_size)?;
            self.tensor_collective(Kind::Broadcast { root }, t)
        })
    }

    fn barrier(&self) -> Result<()> {
        self.collective(Kind::Barrier, None).map(|_| ())
    }
}
