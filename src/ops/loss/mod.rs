//! Losses: cross-entropy (for linear probes) and NT-Xent (SimCLR's loss).

pub mod cross_entropy;
pub mod nt_xent;

pub use cross_entropy::cross_entropy;
pub use nt_xent::nt_xent;
