//! Optimisers and schedules. Each optimiser owns its per-parameter state and
//! updates parameters in place through `Tensor::set_data`, outside the graph.

pub mod adamw;
pub mod lars;
pub mod schedule;
pub mod sgd;

pub use adamw::AdamW;
pub use lars::Lars;
pub use schedule::{clip_grad_norm, warmup_cosine};
pub use sgd::Sgd;
