//! Layer normalisation over rows (kernels/layernorm.cu): forward, and a fused backward.
//!
//! Per row of `cols` elements: μ = mean(x), σ² = mean((x − μ)²) (biased, as PyTorch),
//! r = 1/√(σ² + eps), x̂ = (x − μ)·r, y = γ·x̂ + β. The forward saves μ and r per row (f32);
//! the backward recomputes x̂ from x and produces, with ĝ = dy·γ,
//! dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), dγ = Σ_rows dy·x̂ and dβ = Σ_rows dy.
//! x, y, dy and dx are `T` (f32 or bf16); γ, β, μ, r, dγ and dβ are always f32.
//!
//! How the kernels are organised, and why:
//! - Rows of up to 1024 elements (every ViViT width) are handled by one warp each: the row is
//!   loaded once into registers (16-byte f32 / 8-byte bf16 vector loads when `cols % 4 == 0`),
//!   and the mean, the variance (two passes over the registers, so no E[x²] − E[x]² cancellation)
//!   and the output all come from those registers. Warp shuffles do the reductions, so the forward
//!   has no barriers and no shared memory. The kernels are compiled for several register budgets
//!   (4 to 32 elements per lane); the launcher picks the smallest that holds a row, so short
//!   rows keep occupancy high.
//! - Longer rows get a block each (up to 512 threads, 16 elements per thread in registers in the
//!   forward, 8 in the backward; anything beyond is re-read from memory, so any length works).
//! - The backward writes dx and, in the same pass, accumulates dγ/dβ per block over its rows
//!   (per-warp accumulators in shared memory, added in warp order) into one row pair of a
//!   `[blocks, 2, cols]` partial buffer; a second small kernel adds the partial rows column by
//!   column. Both are fixed-order sums: no atomics, reproducible bit for bit. Each warp handles
//!   at least two rows and the grid is capped at [`BWD_MAX_BLOCKS`], so the partial buffer stays
//!   small (a few MB at most) and the grid is a single wave of resident blocks.

use super::{as_i32, check_len, kernel_name, KernelFloat};
use crate::backend::cuda::{Arg, DeviceBuffer, Gpu, LaunchConfig};
use crate::error::{Error, Result};

const OP_FWD: &str = "cuda layer_norm";
const OP_BWD: &str = "cuda layer_norm backward";

/// Rows up to this length take the warp-per-row kernels.
const WARP_MAX_COLS: usize = 1024;
/// Register budgets (elements per lane) the warp kernels are compiled for.
const WARP_TIERS: [usize; 5] = [4, 8, 16, 24, 32];
/// Warps (= rows) per block of the warp-per-row forward.
const FWD_WARPS: u32 = 8;
/// Warps per block of the warp-per-row backward (`LN_BWD_WARPS` in the kernel file).
const BWD_WARPS: u32 = 4;
/// Elements per thread kept in registers by the block-per-row kernels (`LN_BLOCK_E`, `LN_BLOCK_E_BWD`).
const BLOCK_FWD_ELEMS: usize = 16;
const BLOCK_BWD_ELEMS: usize = 8;
/// Largest block of the block-per-row kernels (their `__launch_bounds__`).
const BLOCK_MAX_THREADS: usize = 512;
/// Most blocks of the backward: about 4 resident blocks per SM of an H100 (132 SMs), so the
/// grid is one wave; each block's warps loop over their rows.
pub const BWD_MAX_BLOCKS: usize = 528;
/// Each backward warp (or block, for long rows) handles at least this many rows, so that few
/// rows do not spread over many blocks that each add a partial row.
const BWD_MIN_ROWS_PER_GROUP: usize = 2;
/// The dγ/dβ column sums: blocks of 32 columns × up to `RED_Y` partial rows at a time
/// (`LN_RED_Y`), enough blocks that each reads about `RED_VALUES_PER_BLOCK` partial values.
const RED_Y: usize = 16;
const RED_VALUES_PER_BLOCK: usize = 16 * 1024;

/// Null when absent.
fn ptr_or_null<T: crate::backend::cuda::DeviceElement>(b: Option<&DeviceBuffer<T>>) -> Arg {
    Arg::Ptr(b.map_or(0, |b| b.device_ptr()))
}

/// 4 when every row starts 4-element aligned and each buffer is aligned for a 4-element load
/// (16 bytes of f32, 8 of bf16), else 1.
fn vec_width<T: KernelFloat>(cols: usize, data: &[u64], params: &[u64]) -> usize {
    let data_ok = data.iter().all(|p| p % (4 * std::mem::size_of::<T>()) as u64 == 0);
    let params_ok = params.iter().all(|p| p % 16 == 0);
    if cols % 4 == 0 && data_ok && params_ok {
        4
    } else {
        1
    }
}

/// The smallest register budget of the warp kernels that holds a row of `cols` in chunks of `vec`.
fn warp_tier(cols: usize, vec: usize) -> usize {
    let per_lane = cols.div_ceil(32 * vec) * vec;
    WARP_TIERS.into_iter().find(|&e| e >= per_lane).expect("rows of at most WARP_MAX_COLS fit the largest tier")
}

/// Threads of a block-per-row kernel: enough that `elems` per thread cover the row, a multiple
/// of 32, between 64 and [`BLOCK_MAX_THREADS`].
fn block_threads(cols: usize, elems: usize) -> u32 {
    (cols.div_ceil(elems).next_multiple_of(32)).clamp(64, BLOCK_MAX_THREADS) as u32
}

/// Errors unless an optional per-column buffer, when given, holds `cols` elements.
fn check_opt(op: &'static str, what: &str, buf: Option<&DeviceBuffer<f32>>, cols: usize) -> Result<()> {
    buf.map_or(Ok(()), |b| check_len(op, what, b, cols))
}

fn check_shape(op: &'static str, rows: usize, cols: usize) -> Result<(i32, i32)> {
    if cols == 0 {
        return Err(Error::shape(op, "rows must have at least one element (cols = 0)"));
    }
    let (r, c) = (as_i32(op, "rows", rows)?, as_i32(op, "cols", cols)?);
    rows.checked_mul(cols).ok_or_else(|| Error::shape(op, format!("{rows} × {cols} elements overflow")))?;
    Ok((r, c))
}

/// Layer norm forward over `rows` rows of `cols` contiguous elements of `x`:
/// y = γ·(x − μ)·r + β with μ the row mean and r = 1/√(σ² + eps) for the biased row variance σ².
/// Writes `y` (like `x`), and μ and r per row into `mean` and `rstd`. `gamma`/`beta` (length
/// `cols`) are optional: absent means γ = 1 / β = 0.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    gamma: Option<&DeviceBuffer<f32>>,
    beta: Option<&DeviceBuffer<f32>>,
    y: &mut DeviceBuffer<T>,
    mean: &mut DeviceBuffer<f32>,
    rstd: &mut DeviceBuffer<f32>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    let (rows_i, cols_i) = check_shape(OP_FWD, rows, cols)?;
    check_len(OP_FWD, "x", x, rows * cols)?;
    check_len(OP_FWD, "y", y, rows * cols)?;
    check_len(OP_FWD, "mean", mean, rows)?;
    check_len(OP_FWD, "rstd", rstd, rows)?;
    check_opt(OP_FWD, "gamma", gamma, cols)?;
    check_opt(OP_FWD, "beta", beta, cols)?;
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::invalid(OP_FWD, format!("eps must be a positive number, got {eps}")));
    }
    if rows == 0 {
        return Ok(());
    }
    let params: Vec<u64> = [gamma, beta].into_iter().flatten().map(|b| b.device_ptr()).collect();
    let vec = vec_width::<T>(cols, &[x.device_ptr(), y.device_ptr()], &params);
    let (g, b) = (ptr_or_null(gamma), ptr_or_null(beta));
    if cols <= WARP_MAX_COLS {
        let name = kernel_name::<T>(&format!("layernorm_fwd_warp{}_vec{vec}", warp_tier(cols, vec)));
        let blocks = rows.div_ceil(FWD_WARPS as usize);
        let cfg = LaunchConfig { grid: (blocks as u32, 1, 1), block: (32 * FWD_WARPS, 1, 1), shared_bytes: 0 };
        let args = [Arg::from(x), g, b, Arg::from(&mut *y), Arg::from(&mut *mean), Arg::from(&mut *rstd)];
        let args: Vec<Arg> = args.into_iter().chain(crate::cuda_args![rows_i, cols_i, eps]).collect();
        gpu.launch(&name, cfg, &args)
    } else {
        let name = kernel_name::<T>(&format!("layernorm_fwd_block_vec{vec}"));
        let cfg = LaunchConfig::per_row(rows, block_threads(cols, BLOCK_FWD_ELEMS));
        let args = [Arg::from(x), g, b, Arg::from(&mut *y), Arg::from(&mut *mean), Arg::from(&mut *rstd)];
        let args: Vec<Arg> = args.into_iter().chain(crate::cuda_args![cols_i, eps]).collect();
        gpu.launch(&name, cfg, &args)
    }
}

/// Layer norm backward: given `dy` for the forward's output and its saved `mean`/`rstd`,
/// writes dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dy·γ and x̂ = (x − μ)·r (per row), and,
/// when asked for, dγ = Σ_rows dy·x̂ and dβ = Σ_rows dy (length `cols`). `gamma` is the forward's
/// (absent: γ = 1).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    dy: &DeviceBuffer<T>,
    gamma: Option<&DeviceBuffer<f32>>,
    mean: &DeviceBuffer<f32>,
    rstd: &DeviceBuffer<f32>,
    dx: &mut DeviceBuffer<T>,
    dgamma: Option<&mut DeviceBuffer<f32>>,
    dbeta: Option<&mut DeviceBuffer<f32>>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (rows_i, cols_i) = check_shape(OP_BWD, rows, cols)?;
    for (what, buf) in [("x", x), ("dy", dy)] {
        check_len(OP_BWD, what, buf, rows * cols)?;
    }
    check_len(OP_BWD, "dx", dx, rows * cols)?;
    check_len(OP_BWD, "mean", mean, rows)?;
    check_len(OP_BWD, "rstd", rstd, rows)?;
    let (dgamma, dbeta) = (dgamma.map(|b| &*b), dbeta.map(|b| &*b));
    check_opt(OP_BWD, "gamma", gamma, cols)?;
    check_opt(OP_BWD, "dgamma", dgamma, cols)?;
    check_opt(OP_BWD, "dbeta", dbeta, cols)?;
    let want_params = dgamma.is_some() || dbeta.is_some();
    if rows == 0 {
        // Empty sums.
        for b in [dgamma, dbeta].into_iter().flatten() {
            gpu.memset_zero(b)?;
        }
        return Ok(());
    }

    let params: Vec<u64> = gamma.iter().map(|b| b.device_ptr()).collect();
    let vec = vec_width::<T>(cols, &[x.device_ptr(), dy.device_ptr(), dx.device_ptr()], &params);
    let (name, cfg) = if cols <= WARP_MAX_COLS {
        let blocks = rows.div_ceil(BWD_WARPS as usize * BWD_MIN_ROWS_PER_GROUP).min(BWD_MAX_BLOCKS);
        // One [2, cols] f32 dγ/dβ accumulator per warp: at most 4·2·1024·4 = 32 KiB.
        let smem = if want_params { BWD_WARPS as usize * 2 * cols * 4 } else { 0 };
        let cfg =
            LaunchConfig { grid: (blocks as u32, 1, 1), block: (32 * BWD_WARPS, 1, 1), shared_bytes: smem as u32 };
        (format!("layernorm_bwd_warp{}_vec{vec}", warp_tier(cols, vec)), cfg)
    } else {
        let blocks = rows.div_ceil(BWD_MIN_ROWS_PER_GROUP).min(BWD_MAX_BLOCKS / 2);
        (format!("layernorm_bwd_block_vec{vec}"), LaunchConfig::per_row(blocks, block_threads(cols, BLOCK_BWD_ELEMS)))
    };
    let blocks = cfg.grid.0 as usize;
    let partial = if want_params { Some(gpu.alloc::<f32>(blocks * 2 * cols)?) } else { None };
    let args = [
        Arg::from(x),
        Arg::from(dy),
        ptr_or_null(gamma),
        Arg::from(mean),
        Arg::from(rstd),
        Arg::from(&mut *dx),
        ptr_or_null(partial.as_ref()),
        Arg::I32(rows_i),
        Arg::I32(cols_i),
    ];
    gpu.launch(&kernel_name::<T>(&name), cfg, &args)?;

    if let Some(partial) = &partial {
        let tiles = cols.div_ceil(32);
        let red_blocks = tiles.min((2 * blocks * cols).div_ceil(RED_VALUES_PER_BLOCK));
        let red_y = blocks.min(RED_Y) as u32;
        let cfg = LaunchConfig { grid: (red_blocks as u32, 1, 1), block: (32, red_y, 1), shared_bytes: 0 };
        let args =
            [Arg::from(partial), Arg::I32(blocks as i32), Arg::I32(cols_i), ptr_or_null(dgamma), ptr_or_null(dbeta)];
        gpu.launch("layernorm_bwd_gamma_beta_f32", cfg, &args)?;
    }
    Ok(())
}
