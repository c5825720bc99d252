//! One round of a collective: what each rank brought, checked for agreement and
//! combined into the result every rank receives. Shared by the communicators
//! that compute collectives on the CPU (in-process threads, TCP processes), so
//! both sum in rank order and refuse mismatched calls with the same message.

use crate::any_dispatch;
use crate::error::Result;
use crate::float_dispatch;
use crate::tensor::{DType, Float, StorageElement, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    AllReduceSum,
    AllGather,
    Broadcast { root: usize },
    Barrier,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::AllReduceSum => "all_reduce_sum",
            Kind::AllGather => "all_gather",
            Kind::Broadcast { .. } => "broadcast",
            Kind::Barrier => "barrier",
        }
    }
}

/// What one rank brought to a round.
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    pub(crate) tensor: Option<Tensor>,
}

impl Entry {
    pub(crate) fn describe(&self) -> String {
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
pub(crate) type Outcome = std::result::Result<Option<Tensor>, String>;

/// Checks that every rank called the same collective on the same shapes, then
/// computes the result. Runs once per round, on the last rank to arrive.
pub(crate) fn complete(entries: &[Option<Entry>], call: u64) -> Outcome {
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
