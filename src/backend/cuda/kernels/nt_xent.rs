//! Fused NT-Xent, the SimCLR loss (kernels/nt_xent.cu), forward and backward.
//!
//! The math is in [`crate::ops::loss::nt_xent`]: for `z: [2N, D]` (view 1 of N clips, then
//! view 2 in the same order), ẑ_i = z_i / max(‖z_i‖, 1e-12), s_ij = ẑ_i·ẑ_j / τ, the positive
//! of row i is p(i) = (i + N) mod 2N, and
//!
//! ```text
//! ℓ_i = log Σ_{j≠i} exp(s_ij) − s_{i,p(i)}        loss = (1/2N) Σ_i ℓ_i
//! D_ij = ∂loss/∂s_ij = (softmax_{j≠i}(s_i)_j − [j = p(i)]) / 2N,  D_ii = 0
//! ∂loss/∂ẑ = (D + Dᵀ) ẑ / τ,   ∂loss/∂z_i = (g_i − ẑ_i⟨g_i, ẑ_i⟩) / ‖z_i‖
//! ```
//!
//! # How the work is split
//!
//! Forward, four launches:
//! 1. `nt_xent_normalize_{f32,bf16}`: one warp per row (D is small: 128 in SimCLR) writes ẑ
//!    (f32, whatever z's type) and the clamped norms, reading the row with 16-byte loads;
//! 2. S = ẑẑᵀ with [`gemm`] (cuBLAS): the only 2N×2N buffer, and the only O(N²D) work;
//! 3. `nt_xent_rows_f32`: one block per row reads S_i once, keeping a running (max, Σexp) per
//!    thread (an online log-sum-exp, so τ = 0.05 with s ≈ 20 cannot overflow) and skipping the
//!    diagonal; it writes ℓ_i and, when a gradient is wanted, re-reads the row (now in cache)
//!    and overwrites S_i in place with D_i. The 2N×2N matrix is thus read once and written once;
//! 4. `nt_xent_mean_f32`: one block sums the ℓ_i in a fixed order (deterministic, no atomics).
//!
//! Backward, three launches: dẑ = (upstream/τ)·D·ẑ, then dẑ += (upstream/τ)·Dᵀ·ẑ (two GEMMs,
//! the second with beta = 1 and D read transposed, which costs less memory traffic than
//! symmetrising D in place first), then `nt_xent_normalize_backward_{f32,bf16}` (one warp per
//! row) maps dẑ to dz. The upstream gradient is folded into the GEMMs' alpha, so the forward
//! pass does not need it.
//!
//! # Memory
//!
//! Forward allocates ẑ (2N·D f32), the norms (2N f32), S (4N² f32), the row losses (2N f32) and
//! the loss (1 f32). With `want_grad` the saved state keeps ẑ, the norms and S-turned-D until
//! [`NtXent::backward`], which allocates dẑ (2N·D f32) and returns dz (2N·D of z's type);
//! without it everything but the loss is freed before `forward` returns.

use std::marker::PhantomData;

use super::{as_i32, check_len, kernel_name, KernelFloat};
use crate::backend::cuda::{gemm, DeviceBuffer, GemmShape, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::{Error, Result};

const OP: &str = "cuda nt_xent";
/// Threads per block of the warp-per-row kernels (8 rows per block).
const ROW_WARPS_BLOCK: u32 = 256;
/// Most threads per block of the softmax pass; rows of 2N ≥ 4096 floats use all of them.
const SOFTMAX_MAX_BLOCK: usize = 256;
/// Most threads of the single-block mean.
const MEAN_MAX_BLOCK: usize = 1024;

/// The fused NT-Xent loss on a device (see the module docs for the design).
#[derive(Debug)]
pub struct NtXent;

/// What [`NtXent::backward`] needs from a forward pass with `want_grad`: ẑ, the clamped norms
/// and D (the similarity buffer, overwritten). `T` is the element type of z (and of dz).
#[derive(Debug)]
pub struct NtXentSaved<T: KernelFloat> {
    zhat: DeviceBuffer<f32>,
    norms: DeviceBuffer<f32>,
    d: DeviceBuffer<f32>,
    rows: usize,
    dim: usize,
    tau: f32,
    _dtype: PhantomData<T>,
}

impl<T: KernelFloat> NtXentSaved<T> {
    /// Rows (2N) and columns (D) of z.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.dim)
    }
    /// Bytes of device memory the saved state holds (dominated by the 2N×2N matrix D).
    pub fn size_in_bytes(&self) -> usize {
        self.zhat.size_in_bytes() + self.norms.size_in_bytes() + self.d.size_in_bytes()
    }
}

impl NtXent {
    /// The NT-Xent loss of `z: [2N, D]` (row-major, `2·n_pairs·dim` elements) at temperature
    /// `tau`: (1/2N) Σ_i [log Σ_{j≠i} exp(ẑ_i·ẑ_j/τ) − ẑ_i·ẑ_{p(i)}/τ]. Waits for the GPU to
    /// read the scalar back; [`NtXent::forward_on_device`] does not. With `want_grad`, also
    /// returns what [`NtXent::backward`] needs.
    pub fn forward<T: KernelFloat>(
        gpu: &Gpu,
        z: &DeviceBuffer<T>,
        n_pairs: usize,
        dim: usize,
        tau: f32,
        want_grad: bool,
    ) -> Result<(f32, Option<NtXentSaved<T>>)> {
        let (loss, saved) = NtXent::forward_on_device(gpu, z, n_pairs, dim, tau, want_grad)?;
        Ok((loss.to_vec()?[0], saved))
    }

    /// As [`NtXent::forward`], with the loss left in a one-element device buffer, so a training
    /// step can queue the backward pass without waiting for the GPU.
    pub fn forward_on_device<T: KernelFloat>(
        gpu: &Gpu,
        z: &DeviceBuffer<T>,
        n_pairs: usize,
        dim: usize,
        tau: f32,
        want_grad: bool,
    ) -> Result<(DeviceBuffer<f32>, Option<NtXentSaved<T>>)> {
        if n_pairs == 0 || dim == 0 {
            return Err(Error::shape(
                OP,
                format!("need N >= 1 pairs (2N rows) and D >= 1 columns, got N = {n_pairs}, D = {dim}"),
            ));
        }
        if !(tau > 0.0 && tau.is_finite()) {
            return Err(Error::invalid(OP, format!("temperature must be a finite number > 0, got {tau}")));
        }
        let rows = n_pairs.checked_mul(2).ok_or_else(|| Error::invalid(OP, "row count overflows"))?;
        let rows_i = as_i32(OP, "2N (rows of z)", rows)?;
        let dim_i = as_i32(OP, "D (columns of z)", dim)?;
        let numel = rows.checked_mul(dim).ok_or_else(|| Error::invalid(OP, "2N·D overflows"))?;
        check_len(OP, "z (2N·D)", z, numel)?;
        let square = rows.checked_mul(rows).ok_or_else(|| Error::invalid(OP, "(2N)² overflows"))?;

        // 1. ẑ and the clamped norms.
        let mut zhat = gpu.alloc::<f32>(numel)?;
        let mut norms = gpu.alloc::<f32>(rows)?;
        gpu.launch(
            &kernel_name::<T>("nt_xent_normalize"),
            warp_per_row(rows),
            &cuda_args![z, &mut zhat, &mut norms, rows_i, dim_i],
        )?;

        // 2. S = ẑẑᵀ.
        let mut s = gpu.alloc::<f32>(square)?;
        let shape = GemmShape { m: rows, n: rows, k: dim, trans_a: false, trans_b: true };
        gemm(gpu, shape, 1.0, &zhat, &zhat, 0.0, &mut s)?;

        // 3. Row losses, and S → D in place when a gradient is wanted.
        let mut row_loss = gpu.alloc::<f32>(rows)?;
        // float4 (float2) loads; about four of them per thread, so short rows (2N = 512: 32
        // threads) do not spend more on the block reduction than on the row.
        let vec = if rows % 4 == 0 { 4 } else { 2 };
        let threads = (rows / vec).div_ceil(4 * 32).clamp(1, SOFTMAX_MAX_BLOCK / 32) * 32;
        let grad_scale = 1.0 / rows as f32;
        gpu.launch(
            "nt_xent_rows_f32",
            LaunchConfig::per_row(rows, threads as u32),
            &cuda_args![&mut s, &mut row_loss, rows_i, 1.0 / tau, grad_scale, want_grad as i32],
        )?;

        // 4. The mean.
        let mut loss = gpu.alloc::<f32>(1)?;
        let threads = rows.div_ceil(32).clamp(1, MEAN_MAX_BLOCK / 32) * 32;
        gpu.launch(
            "nt_xent_mean_f32",
            LaunchConfig::per_row(1, threads as u32),
            &cuda_args![&row_loss, &mut loss, rows_i, 1.0 / rows as f32],
        )?;

        let saved = want_grad.then(|| NtXentSaved { zhat, norms, d: s, rows, dim, tau, _dtype: PhantomData::<T> });
        Ok((loss, saved))
    }

    /// dz = upstream · ∂loss/∂z for the forward pass that produced `saved`: with D from the
    /// softmax pass, dẑ = (upstream/τ)(D + Dᵀ)ẑ and dz_i = (dẑ_i − ẑ_i⟨dẑ_i, ẑ_i⟩)/‖z_i‖
    /// (dẑ_i/1e-12 where the norm was clamped). Returns [2N, D] in z's element type.
    pub fn backward<T: KernelFloat>(saved: NtXentSaved<T>, upstream: f32) -> Result<DeviceBuffer<T>> {
        let NtXentSaved { zhat, norms, d, rows, dim, tau, .. } = saved;
        let gpu = zhat.gpu().clone();
        let alpha = upstream / tau;
        let mut dzhat = gpu.alloc::<f32>(rows * dim)?;
        let shape = GemmShape { m: rows, n: dim, k: rows, trans_a: false, trans_b: false };
        gemm(&gpu, shape, alpha, &d, &zhat, 0.0, &mut dzhat)?;
        gemm(&gpu, GemmShape { trans_a: true, ..shape }, alpha, &d, &zhat, 1.0, &mut dzhat)?;
        drop(d); // back to the cache for the kernel below and whatever comes next

        let mut dz = gpu.alloc::<T>(rows * dim)?;
        gpu.launch(
            &kernel_name::<T>("nt_xent_normalize_backward"),
            warp_per_row(rows),
            &cuda_args![&dzhat, &zhat, &norms, &mut dz, rows as i32, dim as i32],
        )?;
        Ok(dz)
    }
}

/// One warp per row, 8 rows per block.
fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig::per_row(rows.div_ceil((ROW_WARPS_BLOCK / 32) as usize), ROW_WARPS_BLOCK)
}
