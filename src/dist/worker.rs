//! The rank's communication thread: one thread that makes every collective
//! call of the rank, in the order they were submitted.
//!
//! Overlapping the gradient all-reduce with backward means a collective runs
//! while the training thread goes on computing, so it must run on another
//! thread. But ranks match their collectives by order (call k of every rank
//! forms round k), and backward itself calls collectives: the all-gather of
//! global NT-Xent and synchronised batch norm all-reduce their gradients. If
//! those ran on the training thread while bucket reductions ran elsewhere,
//! each rank could interleave the two differently and the rounds would pair
//! the wrong calls. So everything goes through one queue, as on the single
//! NCCL stream PyTorch's process group uses:
//! - [`CommWorker::submit`] queues a collective and returns at once (a
//!   [`Pending`] to wait on later): gradient buckets;
//! - the worker is itself a [`Communicator`] whose calls queue and wait for
//!   their result: hand it to everything else (global NT-Xent, sync batch norm).
//!
//! The queue's order is the training thread's program order, the same on every
//! rank. Errors are the wrapped communicator's own (a peer left, a timeout,
//! ranks disagreeing), returned to whoever waits on that collective; after one,
//! the communicator's broken state fails every later collective. If the thread
//! itself dies (a collective panicked), every wait and every later call fails
//! with an error that says so instead of hanging.

use super::Communicator;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce(&dyn Communicator) + Send>;

/// A rank's communication thread around its communicator.
pub struct CommWorker {
    rank: usize,
    world_size: usize,
    /// `None` once dropped: closing the queue ends the thread.
    queue: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// The result of a submitted collective, to wait for later.
pub struct Pending<R> {
    op: &'static str,
    rank: usize,
    result: Receiver<Result<R>>,
}

impl<R> Pending<R> {
    /// Blocks until the collective has run (or failed). Bounded by the
    /// communicator's own timeout: no wait here outlives the collective's.
    pub fn wait(self) -> Result<R> {
        self.result.recv().unwrap_or_else(|_| Err(thread_gone(self.op, self.rank)))
    }
}

fn thread_gone(op: &'static str, rank: usize) -> Error {
    Error::dist(
        op,
        format!(
            "the communication thread of rank {rank} stopped before running this collective (a collective \
             panicked; see the panic message above)"
        ),
    )
}

impl CommWorker {
    /// Starts the thread; from now on every collective of this rank should go
    /// through the worker (or none through `comm` directly while it runs).
    pub fn spawn(comm: Arc<dyn Communicator>) -> Result<CommWorker> {
        let (rank, world_size) = (comm.rank(), comm.world_size());
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("simclr-comm-{rank}"))
            .spawn(move || {
                // Ends when the queue closes (the worker was dropped); dropping `comm`
                // then tells the other ranks this one left, as the rank's own drop would.
                for job in rx {
                    job(&*comm);
                }
            })
            .map_err(|e| Error::dist("CommWorker::spawn", format!("cannot start the communication thread: {e}")))?;
        Ok(CommWorker { rank, world_size, queue: Some(tx), thread: Some(thread) })
    }

    /// Queues `job` (one or more collectives on the wrapped communicator) behind
    /// everything submitted before, and returns without waiting.
    pub fn submit<R: Send + 'static>(
        &self,
        op: &'static str,
        job: impl FnOnce(&dyn Communicator) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |comm| {
            // The waiter may have given up (its step failed): nobody to tell then.
            let _ = tx.send(job(comm));
        });
        if let Some(queue) = &self.queue {
            // A send fails only when the thread is gone; the job's dropped sender then
            // makes `wait` report it.
            let _ = queue.send(job);
        }
        Pending { op, rank: self.rank, result: rx }
    }

    fn call<R: Send + 'static>(
        &self,
        op: &'static str,
        job: impl FnOnce(&dyn Communicator) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.submit(op, job).wait()
    }
}

impl Drop for CommWorker {
    /// Closes the queue and waits for the thread: it finishes what was queued
    /// (each collective bounded by its timeout) and drops the communicator.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            // A panic on the thread was already reported to whoever waited on it.
            let _ = thread.join();
        }
    }
}

impl Communicator for CommWorker {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.detach();
        self.call("all_reduce_sum", move |comm| comm.all_reduce_sum(&t))
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.detach();
        self.call("all_gather", move |comm| comm.all_gather(&t))
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let t = t.detach();
        self.call("broadcast", move |comm| comm.broadcast(&t, root))
    }

    fn barrier(&self) -> Result<()> {
        self.call("barrier", |comm| comm.barrier())
    }
}
