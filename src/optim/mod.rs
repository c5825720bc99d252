//! Optimisers. Each owns its per-parameter state and updates parameters in
//! place through `Tensor::set_data`, outside the autograd graph.

pub mod sgd;

pub use sgd::Sgd;
