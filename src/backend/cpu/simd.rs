//! Wider vectors for the simple loops, chosen at run time.
//!
//! The crate is built for baseline x86-64 (SSE2: 4 f32 lanes), so binaries run on
//! any x86-64 CPU. [`vectorized`] runs a loop compiled again with AVX2 (8 lanes)
//! when the CPU has it: the closure is inlined into a function with the feature
//! enabled, where the compiler vectorises it wider. Same IEEE operations per
//! element, so results are bitwise the same on either path (no FMA contraction:
//! Rust never fuses `a * b + c` unless asked with `mul_add`).

/// Runs `body` (a loop over slices) with AVX2 code generation where the CPU
/// supports it, else as built.
#[inline(always)]
pub fn vectorized<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { with_avx2(body) };
        }
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wide path computes what the baseline build does, bit for bit.
    #[test]
    fn vectorized_loops_give_the_scalar_results() {
        let xs: Vec<f32> = (0..10_001).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let f = |x: f32| crate::backend::cpu::fast_math::erf_f32(x) * x + 0.5 / (1.0 + x * x);
        let scalar: Vec<f32> = xs.iter().map(|&x| f(x)).collect();
        let mut wide = vec![0.0f32; xs.len()];
        vectorized(|| wide.iter_mut().zip(&xs).for_each(|(o, &x)| *o = f(x)));
        assert!(scalar.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
