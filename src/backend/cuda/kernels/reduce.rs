//! Reductions (kernels/reduce.cu) with f32 results, for f32 and bf16 inputs: over the last
//! axis of a `[rows, cols]` matrix (sum, mean, max), over the middle axis of
//! `[batch, rows, cols]` (column sums: bias gradients, broadcast backward), and over a whole
//! buffer (sum, sum of squares: gradient norms). Accumulation is f32.
//!
//! - Row reductions give each row one warp when it is short (≤ [`WARP_MAX_COLS`]: eight rows
//!   per block, shuffles only, no barriers) and a whole block when it is long, so a thread
//!   always has several elements to read; rows are read in 16-byte packs when their length
//!   keeps every row start aligned.
//! - Column sums must not use atomics (float addition order would then change from run to
//!   run), so they are two-stage: stage 1 splits the rows into chunks and each block sums one
//!   chunk of a 32-column tile — a warp reads 32 neighbouring columns of a row, one coalesced
//!   line — into a partial `[batch, chunks, cols]`; stage 2 sums the partials of each column
//!   in chunk order. The chunk count depends only on the shape.
//! - Whole-buffer sums: stage 1 writes one partial per block (a grid-stride loop over 16-byte
//!   packs, then a block tree), stage 2 sums those partials in one block. The block count is a
//!   function of the length alone, so a gradient norm is bitwise reproducible across runs and
//!   GPUs.

use super::elementwise::numel;
use super::{as_i32, check_len, kernel_name, KernelFloat};
use crate::backend::cuda::{Arg, DeviceBuffer, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::{Error, Result};

/// Rows up to this long get one warp each; longer rows one block.
pub const WARP_MAX_COLS: usize = 1024;
/// Threads per block of the row kernels in warp mode (8 rows per block) and of the whole-buffer kernel.
const BLOCK: u32 = 256;
/// Columns per block of the column-sum kernel (one warp wide) and its warps (rows in flight).
const COLS_TILE: usize = 32;
const COLS_WARPS: u32 = 8;
/// Column sums: aim for about this many blocks in stage 1 (a full wave on an H100), with at
/// least [`COLS_MIN_CHUNK_ROWS`] rows per chunk (16 loads per thread) so that the partials
/// stay a small fraction of the input.
const COLS_TARGET_BLOCKS: usize = 1024;
const COLS_MIN_CHUNK_ROWS: usize = 128;
/// Whole-buffer sums: at most this many stage-1 blocks (= partials), each thread at least
/// [`ALL_MIN_PACKS`] 16-byte packs.
const ALL_MAX_BLOCKS: usize = 1024;
const ALL_MIN_PACKS: usize = 8;

/// A reduction over the last axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowReduction {
    /// Σⱼ x[i, j]
    Sum,
    /// Σⱼ x[i, j] / cols
    Mean,
    /// maxⱼ x[i, j] (needs cols ≥ 1)
    Max,
}

impl RowReduction {
    fn base(self) -> &'static str {
        match self {
            RowReduction::Sum => "reduce_sum_rows",
            RowReduction::Mean => "reduce_mean_rows",
            RowReduction::Max => "reduce_max_rows",
        }
    }
}

/// out[i] = the reduction of row i of `x` (`[rows, cols]`, row-major), in f32. A sum over an
/// empty row is 0 (mean: NaN, as 0/0); the max of an empty row is an error.
pub fn reduce_rows<T: KernelFloat>(
    gpu: &Gpu,
    op: RowReduction,
    x: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    out: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let name = "cuda reduce_rows";
    check_len(name, "x", x, numel(name, &[rows, cols])?)?;
    check_len(name, "out", out, rows)?;
    if op == RowReduction::Max && cols == 0 && rows > 0 {
        return Err(Error::shape(name, "cannot take the max of rows of length 0"));
    }
    let (rows_i, cols_i) = (as_i32(name, "rows", rows)?, as_i32(name, "cols", cols)?);
    if rows == 0 {
        return Ok(());
    }
    // (threads per row, block size): a warp per short row, a block per long one, bigger
    // blocks for very long rows so each thread still reads only a few hundred elements.
    let (tpr, block) = match cols {
        c if c <= WARP_MAX_COLS => (32u32, BLOCK),
        c if c <= 8192 => (BLOCK, BLOCK),
        c if c <= 32768 => (512, 512),
        _ => (1024, 1024),
    };
    let rows_per_block = (block / tpr) as usize;
    let cfg = LaunchConfig::per_row(rows.div_ceil(rows_per_block), block);
    gpu.launch(&kernel_name::<T>(op.base()), cfg, &cuda_args![x, out, rows_i, cols_i, tpr as i32])
}

/// out[j] = Σᵢ x[i, j] over the rows of `x` (`[rows, cols]`): column sums, in f32.
pub fn sum_cols<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    out: &mut DeviceBuffer<f32>,
) -> Result<()> {
    sum_middle(gpu, x, 1, rows, cols, out)
}

/// out[b, j] = Σᵢ x[b, i, j] for `x` of shape `[batch, rows, cols]`: the sum over the middle
/// axis (a batch of independent column sums), in f32, deterministic (two stages, no atomics).
pub fn sum_middle<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    batch: usize,
    rows: usize,
    cols: usize,
    out: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let name = "cuda sum_middle";
    check_len(name, "x", x, numel(name, &[batch, rows, cols])?)?;
    check_len(name, "out", out, numel(name, &[batch, cols])?)?;
    let (rows_i, cols_i) = (as_i32(name, "rows", rows)?, as_i32(name, "cols", cols)?);
    if batch == 0 || cols == 0 {
        return Ok(());
    }
    let tiles = cols.div_ceil(COLS_TILE);
    let grid_x = as_i32(name, "column tiles × batch", tiles * batch)? as u32;
    // Enough chunks to fill the GPU, but never chunks so short that stage 2 reads as much as
    // stage 1. Recomputed from the chunk length so that no chunk is empty.
    let want = COLS_TARGET_BLOCKS.div_ceil(tiles * batch).max(1);
    let chunks = want.min(rows.div_ceil(COLS_MIN_CHUNK_ROWS)).max(1);
    let chunk_rows = rows.div_ceil(chunks).max(1);
    let chunks = rows.div_ceil(chunk_rows).max(1);
    let cfg = |chunks: usize| LaunchConfig {
        grid: (grid_x, chunks as u32, 1),
        block: (COLS_TILE as u32, COLS_WARPS, 1),
        shared_bytes: 0,
    };
    if chunks == 1 {
        let args = cuda_args![x, out, rows_i, cols_i, chunk_rows as i32];
        return gpu.launch(&kernel_name::<T>("reduce_sum_cols"), cfg(1), &args);
    }
    let partial = gpu.alloc::<f32>(batch * chunks * cols)?;
    let args = cuda_args![x, &partial, rows_i, cols_i, chunk_rows as i32];
    gpu.launch(&kernel_name::<T>("reduce_sum_cols"), cfg(chunks), &args)?;
    // Stage 2: the partials are [batch, chunks, cols]; one chunk covering all their rows.
    let args = cuda_args![&partial, out, chunks as i32, cols_i, chunks as i32];
    gpu.launch("reduce_sum_cols_f32", cfg(1), &args)
}

/// out[at] = Σ x (every element), in f32, deterministic.
pub fn sum_all<T: KernelFloat>(gpu: &Gpu, x: &DeviceBuffer<T>, out: &mut DeviceBuffer<f32>, at: usize) -> Result<()> {
    whole_buffer(gpu, "reduce_sum_all", x, out, at)
}

/// out[at] = Σ x² (every element), in f32, deterministic: the squared L2 norm, e.g. of a
/// gradient. Writing at an index lets one buffer collect the norms of many tensors.
pub fn sum_squares_all<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    out: &mut DeviceBuffer<f32>,
    at: usize,
) -> Result<()> {
    whole_buffer(gpu, "reduce_sumsq_all", x, out, at)
}

fn whole_buffer<T: KernelFloat>(
    gpu: &Gpu,
    base: &'static str,
    x: &DeviceBuffer<T>,
    out: &mut DeviceBuffer<f32>,
    at: usize,
) -> Result<()> {
    let name = "cuda sum_all";
    if at >= out.len() {
        return Err(Error::index(name, format!("result index {at} in a buffer of {} elements", out.len())));
    }
    let n = x.len();
    let pack = 16 / std::mem::size_of::<T>();
    let blocks = n.div_ceil(BLOCK as usize * pack * ALL_MIN_PACKS).clamp(1, ALL_MAX_BLOCKS);
    let target = Arg::Ptr(out.device_ptr_at(at));
    let cfg = |blocks: usize| LaunchConfig { grid: (blocks as u32, 1, 1), block: (BLOCK, 1, 1), shared_bytes: 0 };
    if blocks == 1 {
        return gpu.launch(&kernel_name::<T>(base), cfg(1), &[Arg::from(x), Arg::I64(n as i64), target]);
    }
    let partial = gpu.alloc::<f32>(blocks)?;
    gpu.launch(&kernel_name::<T>(base), cfg(blocks), &cuda_args![x, n as i64, &partial])?;
    // Stage 2: a plain sum of the partials (also for sums of squares: they are squared already).
    gpu.launch("reduce_sum_all_f32", cfg(1), &[Arg::from(&partial), Arg::I64(blocks as i64), target])
}
