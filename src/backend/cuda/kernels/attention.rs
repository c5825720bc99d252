//! Fused scaled-dot-product attention, FlashAttention-2 style (kernels/attention.cu): forward
//! and backward, without ever materialising the L×S score matrix in device memory.
//!
//! For each (batch, head) — the `batch_heads` leading rows of `q: [BH, L, D]`,
//! `k, v: [BH, S, D]`, all contiguous — with scale c (usually 1/√D):
//!   S = c·Q·Kᵀ,  P = softmax_rows(S),  O = P·V,  LSE_i = log Σ_j exp(S_ij).
//! There is no mask: ViViT attends to every token (a masked variant would set scores to −∞
//! before the row max). The forward writes O (like the inputs) and LSE (f32, [BH, L]); the
//! backward recomputes P = exp(S − LSE) tile by tile from Q, K and the saved LSE, and with
//! dO = ∂loss/∂O and delta_i = Σ_d dO_id·O_id (= Σ_j P_ij·dP_ij) forms
//!   dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ⊙ (dP − delta),  dQ = c·dS·K,  dK = c·dSᵀ·Q,
//! the same formulas as the CPU op (src/ops/attention.rs), which keeps P instead.
//!
//! How the kernels are organised, and why:
//! - Everything runs on tensor cores (`mma.sync.m16n8k16`, bf16/f16 in, f32 accumulate) with
//!   operands loaded from shared memory by `ldmatrix` (`.trans` where the product needs the
//!   other orientation) and tiles filled by `cp.async`, 16 bytes per copy. Shared rows are
//!   padded by 16 bytes, which makes every ldmatrix conflict-free. All tiles are static shared
//!   memory of at most 48 KiB, as the runtime has no opt-in for larger dynamic allocations.
//! - Tiles are 16·W rows for W = 4 or 5 warps (64 or 80), whichever pads the sequence less: a
//!   65-token ViViT sequence is then one tile rather than a full one plus a 1-row one that reads
//!   all of K and V again, and 197 tokens are 3 tiles rather than 4. At these lengths attention
//!   is memory-bound (about 30 FLOP per byte for D = 64), so a tile read twice costs real time.
//! - Forward: one block of W warps per 16·W query rows of one head (16 rows per warp, Q held in
//!   registers), looping over the keys in tiles of 16·W. Per tile a warp computes its 16×64 block
//!   of scores, updates the running row max and sum (online softmax in the log2 domain: the
//!   scale is premultiplied by log2 e so every exponential is one `exp2f`), rescales its f32
//!   O accumulator and adds P·V. K and V have one buffer each and overlap as in
//!   FlashAttention-2: V_j loads during Q·K_jᵀ and the softmax, K_{j+1} during P·V_j.
//! - Backward, in three launches: (1) delta = rowsum(dO ⊙ O), which also zeroes an f32 dQ
//!   accumulator; (2) the main kernel, one block per tile of keys of one head (16 keys per
//!   warp), walking the queries in tiles with Q, dO, LSE and delta double buffered: each warp
//!   forms its keys' rows of Pᵀ and dSᵀ in registers, accumulates dV and dK in registers, and
//!   shares dSᵀ through shared memory so the block can form that query tile's dQ = c·dS·K,
//!   which it adds into the accumulator with f32 atomics (every key block of the head
//!   contributes); (3) dQ = T(accumulator). The atomics make dQ's summation order vary from run
//!   to run (f32 rounding only), as in FlashAttention-2; dK and dV are deterministic. When one
//!   block holds all of a head's keys (up to 80: ViViT's 65 tokens) it stores dQ directly and
//!   steps (1)'s zeroing and (3) are skipped, which removes most of the backward's extra traffic.
//! - Arbitrary lengths: tiles past L or S are zero-filled by cp.async; scores of keys past S are
//!   −∞ (P = 0) and rows past L are never stored; 16-row groups entirely past the end skip
//!   their tensor-core work, which matters for ViViT's 65- and 197-token sequences.
//! - Backward tile sizes per head dim (keys per block / queries per step): 64 or 80 / 64 for
//!   D = 32, 64 or 80 / 32 for D = 64 and 32 / 16 for D = 128, the largest that fit double
//!   buffering into 48 KiB.

use super::check_len;
use super::tensor_core_probe::TensorCoreInput;
use crate::backend::cuda::{deterministic, Arg, DeviceBuffer, DeviceElement, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::{Error, Result};

const OP_FWD: &str = "cuda flash_attention";
const OP_BWD: &str = "cuda flash_attention backward";

/// Head dimensions the kernels are instantiated for.
pub const HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// Warps (16 rows each) per forward block the kernels are instantiated for.
const FWD_WARPS: [usize; 2] = [4, 5];
/// Rows (warps) per block of the delta kernel (`ATTN_PRE_WARPS`).
const PRE_WARPS: usize = 8;
/// Threads per block of the dQ conversion.
const CONVERT_THREADS: u32 = 256;
/// Most blocks of the grid-stride dQ conversion.
const CONVERT_MAX_BLOCKS: usize = 4096;

/// Warps (16 keys each) per block of the main backward kernel for head dim `d`, as instantiated
/// by `ATTN_BWD_KERNEL` in kernels/attention.cu.
fn bwd_warp_options(d: usize) -> &'static [usize] {
    if d == 128 {
        &[2]
    } else {
        &[4, 5]
    }
}

/// The option whose tiles of 16·warps rows pad `len` least (fewer warps on a tie).
fn pick_warps(len: usize, options: &[usize]) -> usize {
    *options.iter().min_by_key(|&&w| (len.div_ceil(16 * w) * 16 * w, w)).expect("at least one option")
}

/// The problem: `batch_heads` independent attentions of `q_len` queries over `kv_len` keys, head
/// dimension `head_dim`. ViViT's self-attention has `q_len == kv_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Elements of q (and o, dO, dQ).
    pub fn q_elems(&self) -> usize {
        self.batch_heads * self.q_len * self.head_dim
    }
    /// Elements of k and v (and dK, dV).
    pub fn kv_elems(&self) -> usize {
        self.batch_heads * self.kv_len * self.head_dim
    }
    /// Elements of the log-sum-exp: one per query row.
    pub fn lse_elems(&self) -> usize {
        self.batch_heads * self.q_len
    }

    /// Everything the kernels assume: supported head dim, non-empty, 32-bit lengths and grids.
    fn check(&self, op: &'static str) -> Result<()> {
        let AttentionShape { batch_heads, q_len, kv_len, head_dim } = *self;
        if !HEAD_DIMS.contains(&head_dim) {
            return Err(Error::invalid(
                op,
                format!("head dimension {head_dim} is not supported (the kernels exist for {HEAD_DIMS:?})"),
            ));
        }
        if batch_heads == 0 || q_len == 0 || kv_len == 0 {
            return Err(Error::shape(
                op,
                format!("batch·heads ({batch_heads}), query length ({q_len}) and key length ({kv_len}) must be > 0"),
            ));
        }
        let elems = [q_len, kv_len]
            .iter()
            .map(|&len| batch_heads.checked_mul(len).and_then(|r| r.checked_mul(head_dim)))
            .collect::<Option<Vec<usize>>>();
        if elems.is_none() || i32::try_from(q_len.max(kv_len)).is_err() {
            return Err(Error::shape(op, format!("{self:?} overflows the kernels' index range")));
        }
        // The most blocks any launch takes: tiles of at least 32 rows.
        let tiles = q_len.max(kv_len).div_ceil(32);
        let blocks = batch_heads.checked_mul(tiles).map(|b| b.max((batch_heads * q_len).div_ceil(PRE_WARPS)));
        if blocks.is_none_or(|blocks| blocks > i32::MAX as usize) {
            return Err(Error::shape(op, format!("{self:?} needs more than 2^31 − 1 thread blocks")));
        }
        Ok(())
    }
}

fn check_scale(op: &'static str, scale: f32) -> Result<()> {
    if !scale.is_finite() {
        return Err(Error::invalid(op, format!("scale must be finite, got {scale}")));
    }
    Ok(())
}

/// cp.async moves 16 bytes at a time: every operand must start 16-byte aligned.
fn check_aligned<T: DeviceElement>(op: &'static str, what: &str, buf: &DeviceBuffer<T>) -> Result<()> {
    if buf.device_ptr() % 16 != 0 {
        return Err(Error::invalid(op, format!("{what} must start at a 16-byte aligned device address")));
    }
    Ok(())
}

fn kernel<T: TensorCoreInput>(base: &str, d: usize, warps: usize) -> String {
    format!("attention_{base}_d{d}_w{warps}_{}", T::SUFFIX)
}

/// Forward: `out = softmax(scale·q·kᵀ)·v` per (batch, head), and `lse` = the natural log of each
/// row's softmax denominator (f32, `shape.lse_elems()`), which the backward needs.
/// `q`/`out` hold `shape.q_elems()` elements, `k`/`v` `shape.kv_elems()`, contiguous
/// `[batch_heads, len, head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_forward<T: TensorCoreInput>(
    gpu: &Gpu,
    shape: AttentionShape,
    scale: f32,
    q: &DeviceBuffer<T>,
    k: &DeviceBuffer<T>,
    v: &DeviceBuffer<T>,
    out: &mut DeviceBuffer<T>,
    lse: &mut DeviceBuffer<f32>,
) -> Result<()> {
    shape.check(OP_FWD)?;
    check_scale(OP_FWD, scale)?;
    check_len(OP_FWD, "q", q, shape.q_elems())?;
    check_len(OP_FWD, "k", k, shape.kv_elems())?;
    check_len(OP_FWD, "v", v, shape.kv_elems())?;
    check_len(OP_FWD, "out", out, shape.q_elems())?;
    check_len(OP_FWD, "lse", lse, shape.lse_elems())?;
    for (what, buf) in [("q", q), ("k", k), ("v", v), ("out", &*out)] {
        check_aligned(OP_FWD, what, buf)?;
    }
    let warps = pick_warps(shape.q_len, &FWD_WARPS);
    let q_tiles = shape.q_len.div_ceil(16 * warps);
    let cfg = LaunchConfig {
        grid: ((shape.batch_heads * q_tiles) as u32, 1, 1),
        block: (32 * warps as u32, 1, 1),
        shared_bytes: 0,
    };
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    gpu.launch(
        &kernel::<T>("fwd", shape.head_dim, warps),
        cfg,
        &cuda_args![q, k, v, out, lse, shape.q_len as i32, shape.kv_len as i32, scale_log2, q_tiles as i32],
    )
}

/// The forward's inputs and outputs the backward reads.
pub struct AttentionSaved<'a, T: DeviceElement> {
    pub q: &'a DeviceBuffer<T>,
    pub k: &'a DeviceBuffer<T>,
    pub v: &'a DeviceBuffer<T>,
    pub out: &'a DeviceBuffer<T>,
    pub lse: &'a DeviceBuffer<f32>,
}

/// Backward of [`flash_attention_forward`] (same `shape` and `scale`): from `dout` = ∂loss/∂out
/// writes `dq`, `dk` and `dv` (shaped like q, k, v). Allocates f32 work buffers from the caching
/// allocator: delta ([BH, L]) and, when the keys of a head span several blocks, the dQ
/// accumulator ([BH, L, D], or one such slice per key block in deterministic mode).
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward<T: TensorCoreInput>(
    gpu: &Gpu,
    shape: AttentionShape,
    scale: f32,
    saved: AttentionSaved<'_, T>,
    dout: &DeviceBuffer<T>,
    dq: &mut DeviceBuffer<T>,
    dk: &mut DeviceBuffer<T>,
    dv: &mut DeviceBuffer<T>,
) -> Result<()> {
    shape.check(OP_BWD)?;
    check_scale(OP_BWD, scale)?;
    let AttentionSaved { q, k, v, out, lse } = saved;
    for (what, buf) in [("q", q), ("out", out), ("dout", dout), ("dq", &*dq)] {
        check_len(OP_BWD, what, buf, shape.q_elems())?;
        check_aligned(OP_BWD, what, buf)?;
    }
    for (what, buf) in [("k", k), ("v", v), ("dk", &*dk), ("dv", &*dv)] {
        check_len(OP_BWD, what, buf, shape.kv_elems())?;
        check_aligned(OP_BWD, what, buf)?;
    }
    check_len(OP_BWD, "lse", lse, shape.lse_elems())?;

    let (rows, d) = (shape.lse_elems(), shape.head_dim);
    let warps = pick_warps(shape.kv_len, bwd_warp_options(d));
    let kv_tiles = shape.kv_len.div_ceil(16 * warps);
    // One key block per head: it alone forms dQ and stores it. Otherwise the blocks add into an
    // f32 accumulator, converted to T at the end: one shared by a head's key blocks (zeroed by
    // the delta kernel; the adds land in whatever order blocks finish), or — deterministic
    // mode — one slice per key block ([BH][key block][L][D], zeroed here), each element added to
    // once, summed in key-block order by the convert kernel.
    let partials = kv_tiles > 1 && deterministic();
    let slices = if partials { kv_tiles } else { 1 };
    let mut dq_accum = if kv_tiles > 1 { Some(gpu.alloc::<f32>(slices * shape.q_elems())?) } else { None };
    if let Some(accum) = dq_accum.as_ref().filter(|_| partials) {
        gpu.memset_zero(accum)?;
    }
    let accum_arg = || dq_accum.as_ref().map_or(Arg::Ptr(0), Arg::from);
    let zeroed_accum_arg = || if partials { Arg::Ptr(0) } else { accum_arg() };
    let mut delta = gpu.alloc::<f32>(rows)?;
    let pre = LaunchConfig {
        grid: (rows.div_ceil(PRE_WARPS) as u32, 1, 1),
        block: (32 * PRE_WARPS as u32, 1, 1),
        shared_bytes: 0,
    };
    let args = cuda_args![out, dout, &mut delta];
    let args = [&args[..], &[zeroed_accum_arg()], &cuda_args![rows as i64, d as i32]].concat();
    gpu.launch(&format!("attention_bwd_preprocess_{}", T::SUFFIX), pre, &args)?;

    let cfg = LaunchConfig {
        grid: ((shape.batch_heads * kv_tiles) as u32, 1, 1),
        block: (32 * warps as u32, 1, 1),
        shared_bytes: 0,
    };
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    let args = [
        &cuda_args![q, k, v, dout, lse, &delta][..],
        &[accum_arg()],
        &cuda_args![
            &mut *dq,
            &mut *dk,
            &mut *dv,
            shape.q_len as i32,
            shape.kv_len as i32,
            scale,
            scale_log2,
            kv_tiles as i32,
            partials as i32
        ],
    ]
    .concat();
    gpu.launch(&kernel::<T>("bwd", d, warps), cfg, &args)?;

    if let Some(accum) = dq_accum.take() {
        let n = shape.q_elems();
        let blocks = n.div_ceil(CONVERT_THREADS as usize).clamp(1, CONVERT_MAX_BLOCKS);
        let cfg = LaunchConfig { grid: (blocks as u32, 1, 1), block: (CONVERT_THREADS, 1, 1), shared_bytes: 0 };
        let head_elems = shape.q_len * shape.head_dim;
        let args = cuda_args![&accum, dq, n as i64, head_elems as i64, slices as i32];
        gpu.launch(&format!("attention_dq_convert_{}", T::SUFFIX), cfg, &args)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(batch_heads: usize, q_len: usize, kv_len: usize, head_dim: usize) -> AttentionShape {
        AttentionShape { batch_heads, q_len, kv_len, head_dim }
    }

    #[test]
    fn tiles_pad_least() {
        assert_eq!(pick_warps(65, &FWD_WARPS), 5); // 80 rather than 128
        assert_eq!(pick_warps(197, &FWD_WARPS), 5); // 240 rather than 256
        assert_eq!(pick_warps(11, &FWD_WARPS), 4);
        assert_eq!(pick_warps(64, &FWD_WARPS), 4);
        assert_eq!(pick_warps(320, &FWD_WARPS), 4); // a tie: the smaller block
        assert_eq!(pick_warps(100, bwd_warp_options(128)), 2);
    }

    #[test]
    fn shapes_are_checked() {
        assert!(shape(2, 65, 65, 64).check(OP_FWD).is_ok());
        assert!(shape(2, 65, 65, 48).check(OP_FWD).unwrap_err().to_string().contains("head dimension 48"));
        assert!(shape(0, 65, 65, 64).check(OP_FWD).is_err());
        assert!(shape(2, 0, 65, 64).check(OP_FWD).is_err());
        assert!(shape(2, 65, 0, 64).check(OP_FWD).is_err());
        assert!(shape(usize::MAX, 65, 65, 64).check(OP_FWD).is_err());
        assert!(shape(1, 1 << 31, 1, 32).check(OP_FWD).is_err());
    }
}
