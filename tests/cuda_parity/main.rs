//! Parity of every CUDA kernel with the CPU reference op.
//!
//! Each check runs twice: on the CPU emulator of the kernels (always, so CI executes every
//! kernel) and on GPU 0 (`#[ignore]`d: run on a GPU machine with
//! `cargo test --release --features cuda --test cuda_parity -- --ignored`).
#![cfg(feature = "cuda")]

#[macro_use]
mod common;

mod attention;
mod batchnorm;
mod conv;
mod determinism;
mod elementwise;
mod emulator;
mod layernorm;
mod nt_xent;
mod optim;
mod pool;
mod reduce;
mod resources;
mod runtime;
mod softmax;
mod tensor_core_probe;
