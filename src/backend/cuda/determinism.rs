//! Deterministic kernels (on by default), PyTorch's `use_deterministic_algorithms` for this
//! backend.
//!
//! Two kernels would naturally add partial results with f32 atomics, in whatever order the GPU's
//! blocks happen to finish: the convolution weight gradient when its reduction is split over
//! blocks (split-K), and the attention backward's dQ when a head's keys span several blocks.
//! Float addition is not associative, so the bits of dW and dQ — and from them the weights, the
//! loss and a resumed run — would change from run to run. In deterministic mode each block stores
//! its partial result in its own slice of a work buffer, and a second small kernel adds the
//! slices in a fixed order. It costs that buffer (splits × the gradient, in f32) and one pass over
//! it; `simclr-train --deterministic false` turns it off.

use std::sync::atomic::{AtomicBool, Ordering};

static DETERMINISTIC: AtomicBool = AtomicBool::new(true);

/// Whether kernels that would add partial sums with atomics use the fixed-order path instead.
pub fn deterministic() -> bool {
    DETERMINISTIC.load(Ordering::Relaxed)
}

/// Chooses the fixed-order (`true`, the default) or the atomic path for every later launch.
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(on, Ordering::Relaxed);
}
