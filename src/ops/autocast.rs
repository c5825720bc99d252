//! bf16 autocast for the GPU: inside [`autocast`], matmul/linear (and the other ops that
//! consult [`is_autocast_enabled`]: convolution, attention) take f32 CUDA tensors, compute
//! in bf16 on the tensor cores with f32 accumulation, and return f32. Parameters stay f32
//! (the optimiser's master weights) and every other op — normalisations, softmax, the loss —
//! stays f32, as with PyTorch's `torch.autocast("cuda", dtype=torch.bfloat16)`.
//!
//! The mode is per thread, like `no_grad`. An op records the mode it ran under and its
//! backward uses the same one, whatever the mode is when `backward()` is called. CPU ops
//! ignore it: the CPU backend is the f32/f64 reference.

use std::cell::Cell;

thread_local! {
    static AUTOCAST: Cell<bool> = const { Cell::new(false) };
}

/// True inside [`autocast`]`(true, …)` on this thread.
pub fn is_autocast_enabled() -> bool {
    AUTOCAST.with(|a| a.get())
}

/// Runs `f` with bf16 autocast on or off (restoring the previous mode afterwards, also on panic).
pub fn autocast<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(AUTOCAST.with(|a| a.replace(enabled)));
    f()
}
