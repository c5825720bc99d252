//! Ops on CUDA tensors against the same ops on the CPU: forward values and, through the
//! autograd tape, the gradients of every input.
//!
//! Each check runs on the CPU emulator of the kernels (always; `SIMCLR_CUDA_EMULATOR`
//! semantics via `devices::use_emulator`) and on GPU 0 (`#[ignore]`d: run on the GPU machine
//! with `--ignored`; the two kinds cannot share one process, so never `--include-ignored`).
#![cfg(feature = "cuda")]

#[macro_use]
mod common;

mod conv_pool_bn;
mod elementwise;
mod matmul;
mod tensor;
mod vivit_ops;
