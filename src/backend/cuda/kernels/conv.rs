//! 2-D convolution as implicit GEMM (kernels/conv.cu), without cuDNN: forward, input gradient
//! and weight gradient, on tensor cores for bf16/f16 storage (f32 accumulation) and as a
//! shared-memory-tiled SIMT GEMM for f32. Groups = 1, no dilation, square stride and padding
//! (everything ResNet uses).
//!
//! **Layouts.** Activations are NHWC (`[n][h][w][c]`), weights KRSC (`[k][r][s][c]`: out
//! channel, filter row, filter column, in channel). With channels innermost, the reduction
//! index of every GEMM below is contiguous in 8-element (16-byte) pieces when the channel counts
//! are multiples of 8, so each shared-memory operand tile is filled by 16-byte `cp.async` copies
//! (one per pixel and 8 channels), and a padded pixel is one zero-filling copy. In NCHW the same
//! pieces would be gathers with a stride of H·W elements. This is also the layout cuDNN's
//! tensor-core kernels prefer (PyTorch's `channels_last`).
//!
//! **The three GEMMs.** With P = ⌊(H + 2·pad − R)/stride⌋ + 1 (Q likewise) and
//! X̃[(n,p,q)][(r,s,c)] = X[n][p·stride + r − pad][q·stride + s − pad][c] (zero outside the image):
//! - forward: `Y[(n,p,q)][k] = Σ_(r,s,c) X̃[(n,p,q)][(r,s,c)] · W[k][(r,s,c)]`
//!   (M = N·P·Q, N = K, reduction R·S·C); the epilogue applies an optional per-channel scale and
//!   bias and an optional ReLU ([`ConvEpilogue`]), so a conv + bias, or a conv followed by an
//!   inference-mode (folded) batch norm and ReLU, is one kernel. Training-mode batch norm needs
//!   the batch statistics of the whole output first, so it is not fused.
//! - input gradient: `dX[n][h][w][c] = Σ_(k,r,s) dY[n][p][q][k] · W[k][r][s][c]` over the taps
//!   with h = p·stride + r − pad. Stride decomposition: the dX pixels split into stride² phases
//!   (h mod stride, w mod stride); in a phase only the taps r ≡ (h + pad) (mod stride) contribute,
//!   with p = (h + pad − r)/stride, so each phase is a dense implicit GEMM (M = its pixels,
//!   N = C, reduction over its valid (r, s) × K) — no multiply is spent on taps the stride skips.
//!   A phase no tap reaches (a 1×1 stride-2 filter's odd pixels) gets zeros.
//! - weight gradient: `dW[k][(r,s,c)] = Σ_(n,p,q) dY[(n,p,q)][k] · X̃[(n,p,q)][(r,s,c)]`
//!   (M = K, N = R·S·C, reduction N·P·Q: long). The reduction is split over grid.z so small
//!   layers still fill the GPU. By default ([`crate::backend::cuda::deterministic`]) each split
//!   stores its partial tile in its own slice of an f32 work buffer and a second kernel adds the
//!   slices in split order, so dW has the same bits every run; otherwise the splits add into dW
//!   (zeroed first) with f32 atomics, in whatever order blocks finish. One split stores straight
//!   into dW. dW is always f32 (the master weights are).
//!
//! **Tensor-core tiling.** 256 threads (8 warps), block tiles 128×128 (2 cp.async stages) or
//! 128×64 / 64×128 (3 stages, for 64-channel layers) × 32 of reduction, warp tiles of 64×32 or
//! 32×32 built from `mma.sync.m16n8k16`. Shared tiles are stored with the global-contiguous axis
//! innermost and rows padded by 8 elements, so `ldmatrix` (transposed where the tile is stored
//! MN-major) reads them without bank conflicts; everything stays within the 48 KiB of static
//! shared memory a kernel gets without an opt-in (the runtime has no opt-in for more). The
//! loaders keep their gather coordinates incrementally, so the main loop has no divisions.
//! When c (or k, for the gradients) is not a multiple of 8 — the RGB stem, c = 3 — the same
//! kernels fill the tiles element by element instead (`*_scalar` kernels).
//!
//! **f32.** A SIMT implicit GEMM: 64×64 block tiles, 16 of reduction, 4×4 outputs per thread,
//! operands gathered element by element into shared memory. It is the correctness path for f32
//! training, not a fast one.

use super::{as_i32, check_len};
use crate::backend::cuda::{deterministic, Arg, DeviceBuffer, DeviceElement, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::{Error, Result};

const OP_FWD: &str = "cuda conv2d";
const OP_DGRAD: &str = "cuda conv2d backward_input";
const OP_WGRAD: &str = "cuda conv2d backward_weight";

/// Threads of every convolution kernel (`TC_THREADS`, `SIMT_THREADS`).
const THREADS: u32 = 256;
/// Reduction depth of one tensor-core k-tile (`TC_BK`) and of one SIMT k-tile (`SIMT_BK`).
const TC_BK: usize = 32;
const SIMT_BK: usize = 16;
/// The SIMT block tile (`SIMT_BM` = `SIMT_BN`).
const SIMT_TILE: usize = 64;
/// The weight gradient splits its reduction until about this many blocks run (two per SM of an
/// H100/H200 with 132 SMs), but never into pieces shorter than [`MIN_TILES_PER_SPLIT`] k-tiles.
const WGRAD_TARGET_BLOCKS: usize = 264;
const MIN_TILES_PER_SPLIT: usize = 4;

/// Element types the convolution kernels take: bf16 and f16 run on tensor cores, f32 on the
/// SIMT path.
pub trait ConvElement: DeviceElement {
    /// Suffix of the exported kernel names.
    const SUFFIX: &'static str;
    /// Whether the tensor-core kernels serve this type.
    const TENSOR_CORES: bool;
}
impl ConvElement for f32 {
    const SUFFIX: &'static str = "f32";
    const TENSOR_CORES: bool = false;
}
impl ConvElement for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    const TENSOR_CORES: bool = true;
}
impl ConvElement for half::f16 {
    const SUFFIX: &'static str = "f16";
    const TENSOR_CORES: bool = true;
}

/// One convolution: input `n × h × w × c` (NHWC), filter `k × r × s × c` (KRSC), square
/// `stride` and zero `pad`; the output is `n × p × q × k` (NHWC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    /// Output rows: ⌊(h + 2·pad − r)/stride⌋ + 1 (0 if the filter does not fit).
    pub fn p(&self) -> usize {
        (self.h + 2 * self.pad).checked_sub(self.r).map_or(0, |d| d / self.stride.max(1) + 1)
    }
    /// Output columns: ⌊(w + 2·pad − s)/stride⌋ + 1 (0 if the filter does not fit).
    pub fn q(&self) -> usize {
        (self.w + 2 * self.pad).checked_sub(self.s).map_or(0, |d| d / self.stride.max(1) + 1)
    }
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn weight_len(&self) -> usize {
        self.k * self.r * self.s * self.c
    }
    pub fn output_len(&self) -> usize {
        self.n * self.p() * self.q() * self.k
    }
    /// Multiply-adds × 2 of one pass (forward, input gradient and weight gradient are equal).
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.p() * self.q()) as f64 * self.k as f64 * (self.r * self.s * self.c) as f64
    }

    /// Errors unless every size is positive, the filter fits the padded input, and every count
    /// the kernels index with `int` fits in 32 bits.
    fn validate(&self, op: &'static str) -> Result<Geom> {
        let dims = [
            ("n", self.n),
            ("h", self.h),
            ("w", self.w),
            ("c", self.c),
            ("k", self.k),
            ("r", self.r),
            ("s", self.s),
            ("stride", self.stride),
        ];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return Err(Error::shape(op, format!("{name} must be at least 1 in {self:?}")));
        }
        if self.p() == 0 || self.q() == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "the {}x{} filter does not fit the {}x{} input padded by {}",
                    self.r, self.s, self.h, self.w, self.pad
                ),
            ));
        }
        let count = |what: &str, factors: &[usize]| -> Result<i32> {
            let v = factors.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
            as_i32(op, what, v.unwrap_or(usize::MAX))
        };
        count("n·p·q", &[self.n, self.p(), self.q()])?;
        count("n·h·w", &[self.n, self.h, self.w])?;
        count("k·r·s·c", &[self.k, self.r, self.s, self.c])?;
        for len in [self.input_len(), self.output_len()] {
            len.checked_mul(4).ok_or_else(|| Error::shape(op, format!("{self:?} overflows the address space")))?;
        }
        let i = |what, v| as_i32(op, what, v);
        Ok(Geom([
            i("n", self.n)?,
            i("h", self.h)?,
            i("w", self.w)?,
            i("c", self.c)?,
            i("k", self.k)?,
            i("r", self.r)?,
            i("s", self.s)?,
            i("stride", self.stride)?,
            i("pad", self.pad)?,
            i("p", self.p())?,
            i("q", self.q())?,
        ]))
    }

    /// Pixels of the largest dgrad phase (phase (0, 0)): the grid's M extent.
    fn largest_phase_pixels(&self) -> usize {
        self.n * self.h.div_ceil(self.stride) * self.w.div_ceil(self.stride)
    }
}

/// The kernels' `CONV_GEOM_PARAMS`: n, h, w, c, k, r, s, stride, pad, p, q.
struct Geom([i32; 11]);

impl Geom {
    fn args(&self) -> impl Iterator<Item = Arg> + '_ {
        self.0.iter().map(|&v| Arg::I32(v))
    }
}

/// What the forward kernel does to each output after the convolution:
/// `y = relu?(acc · scale[k] + bias[k])`, absent scale = 1, absent bias = 0. Both are f32 per
/// output channel.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvEpilogue<'a> {
    pub scale: Option<&'a DeviceBuffer<f32>>,
    pub bias: Option<&'a DeviceBuffer<f32>>,
    pub relu: bool,
}

/// Whether every buffer starts 16-byte aligned (the 16-byte cp.async copies need it; the
/// allocator's buffers always do, offsets into them might not).
fn aligned16(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p % 16 == 0)
}

fn grid_dim(op: &'static str, what: &str, v: usize, max: usize) -> Result<u32> {
    if v > max {
        return Err(Error::invalid(op, format!("{what} = {v} blocks exceeds the grid limit {max}")));
    }
    Ok(v as u32)
}

/// Forward convolution: `y` (NHWC, `n × p × q × k`) from `x` (NHWC) and `w` (KRSC), with the
/// epilogue applied in the same kernel.
pub fn conv2d_forward<T: ConvElement>(
    gpu: &Gpu,
    shape: &ConvShape,
    x: &DeviceBuffer<T>,
    w: &DeviceBuffer<T>,
    epilogue: ConvEpilogue<'_>,
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    let geom = shape.validate(OP_FWD)?;
    check_len(OP_FWD, "x", x, shape.input_len())?;
    check_len(OP_FWD, "w", w, shape.weight_len())?;
    check_len(OP_FWD, "y", y, shape.output_len())?;
    if let Some(s) = epilogue.scale {
        check_len(OP_FWD, "scale", s, shape.k)?;
    }
    if let Some(b) = epilogue.bias {
        check_len(OP_FWD, "bias", b, shape.k)?;
    }
    let m = shape.n * shape.p() * shape.q();
    let (name, bm, bn) = if !T::TENSOR_CORES {
        ("conv_fprop".to_string(), SIMT_TILE, SIMT_TILE)
    } else if shape.c % 8 == 0 && aligned16(&[x.device_ptr(), w.device_ptr()]) {
        if shape.k > 64 {
            ("conv_fprop_128x128".to_string(), 128, 128)
        } else {
            ("conv_fprop_128x64".to_string(), 128, 64)
        }
    } else {
        ("conv_fprop_scalar".to_string(), 128, 64)
    };
    let cfg = LaunchConfig {
        grid: (
            grid_dim(OP_FWD, "pixel tiles", m.div_ceil(bm), i32::MAX as usize)?,
            grid_dim(OP_FWD, "channel tiles", shape.k.div_ceil(bn), 65535)?,
            1,
        ),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    };
    let opt = |b: Option<&DeviceBuffer<f32>>| Arg::Ptr(b.map_or(0, |b| b.device_ptr()));
    let args: Vec<Arg> = [Arg::from(x), Arg::from(w), opt(epilogue.scale), opt(epilogue.bias), Arg::from(&mut *y)]
        .into_iter()
        .chain(geom.args())
        .chain(cuda_args![epilogue.relu as i32])
        .collect();
    gpu.launch(&format!("{name}_{}", T::SUFFIX), cfg, &args)
}

/// Input gradient: `dx` (NHWC, `n × h × w × c`) from `dy` (NHWC, `n × p × q × k`) and `w` (KRSC).
/// Every element of `dx` is written (pixels no filter tap reaches get 0).
pub fn conv2d_backward_input<T: ConvElement>(
    gpu: &Gpu,
    shape: &ConvShape,
    dy: &DeviceBuffer<T>,
    w: &DeviceBuffer<T>,
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    let geom = shape.validate(OP_DGRAD)?;
    check_len(OP_DGRAD, "dy", dy, shape.output_len())?;
    check_len(OP_DGRAD, "w", w, shape.weight_len())?;
    check_len(OP_DGRAD, "dx", dx, shape.input_len())?;
    let (name, bm, bn) = if !T::TENSOR_CORES {
        ("conv_dgrad".to_string(), SIMT_TILE, SIMT_TILE)
    } else if shape.c % 8 == 0 && shape.k % 8 == 0 && aligned16(&[dy.device_ptr(), w.device_ptr()]) {
        if shape.c > 64 {
            ("conv_dgrad_128x128".to_string(), 128, 128)
        } else {
            ("conv_dgrad_128x64".to_string(), 128, 64)
        }
    } else {
        ("conv_dgrad_scalar".to_string(), 128, 64)
    };
    let phases = shape.stride * shape.stride;
    let cfg = LaunchConfig {
        grid: (
            grid_dim(OP_DGRAD, "pixel tiles", shape.largest_phase_pixels().div_ceil(bm), i32::MAX as usize)?,
            grid_dim(OP_DGRAD, "channel tiles", shape.c.div_ceil(bn), 65535)?,
            grid_dim(OP_DGRAD, "stride phases (stride²)", phases, 65535)?,
        ),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    };
    let args: Vec<Arg> = [Arg::from(dy), Arg::from(w), Arg::from(&mut *dx)].into_iter().chain(geom.args()).collect();
    gpu.launch(&format!("{name}_{}", T::SUFFIX), cfg, &args)
}

/// Weight gradient: `dw` (KRSC, f32) = Σ over output pixels of dY ⊗ im2col(X). Overwrites `dw`.
/// With several reduction splits it either allocates a work buffer of one f32 slice per split and
/// sums them in order (deterministic mode, the default) or zeroes `dw` and adds into it.
pub fn conv2d_backward_weight<T: ConvElement>(
    gpu: &Gpu,
    shape: &ConvShape,
    x: &DeviceBuffer<T>,
    dy: &DeviceBuffer<T>,
    dw: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let geom = shape.validate(OP_WGRAD)?;
    check_len(OP_WGRAD, "x", x, shape.input_len())?;
    check_len(OP_WGRAD, "dy", dy, shape.output_len())?;
    check_len(OP_WGRAD, "dw", dw, shape.weight_len())?;
    let rsc = shape.r * shape.s * shape.c;
    let (name, bm, bn, bk) = if !T::TENSOR_CORES {
        ("conv_wgrad".to_string(), SIMT_TILE, SIMT_TILE, SIMT_BK)
    } else if shape.c % 8 == 0 && shape.k % 8 == 0 && aligned16(&[x.device_ptr(), dy.device_ptr()]) {
        if shape.k > 64 {
            ("conv_wgrad_128x128".to_string(), 128, 128, TC_BK)
        } else {
            ("conv_wgrad_64x128".to_string(), 64, 128, TC_BK)
        }
    } else {
        ("conv_wgrad_scalar".to_string(), 64, 128, TC_BK)
    };
    let (mt, nt) = (shape.k.div_ceil(bm), rsc.div_ceil(bn));
    let k_tiles = (shape.n * shape.p() * shape.q()).div_ceil(bk);
    let (tiles_per_split, splits) = wgrad_split(mt * nt, k_tiles);
    let cfg = LaunchConfig {
        grid: (
            grid_dim(OP_WGRAD, "out-channel tiles", mt, i32::MAX as usize)?,
            grid_dim(OP_WGRAD, "filter tiles", nt, 65535)?,
            grid_dim(OP_WGRAD, "reduction splits", splits, 65535)?,
        ),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    };
    let kernel = format!("{name}_{}", T::SUFFIX);
    let tiles_per_split = as_i32(OP_WGRAD, "tiles per split", tiles_per_split)?;
    let launch = |out: Arg, store_partials: bool| {
        let args: Vec<Arg> = [Arg::from(x), Arg::from(dy), out]
            .into_iter()
            .chain(geom.args())
            .chain(cuda_args![tiles_per_split, store_partials as i32])
            .collect();
        gpu.launch(&kernel, cfg, &args)
    };
    if splits == 1 {
        return launch(Arg::from(&mut *dw), true);
    }
    if !deterministic() {
        gpu.memset_zero(dw)?;
        return launch(Arg::from(&mut *dw), false);
    }
    let n = shape.weight_len();
    let partials = gpu.alloc::<f32>(splits * n)?;
    launch(Arg::from(&partials), true)?;
    let blocks = n.div_ceil(SUM_THREADS as usize).clamp(1, SUM_MAX_BLOCKS);
    let cfg = LaunchConfig { grid: (blocks as u32, 1, 1), block: (SUM_THREADS, 1, 1), shared_bytes: 0 };
    gpu.launch("conv_wgrad_sum_splits_f32", cfg, &cuda_args![&partials, &mut *dw, n as i64, splits as i32])
}

/// The split-summing pass: grid-stride, enough blocks to fill a GPU.
const SUM_THREADS: u32 = 256;
const SUM_MAX_BLOCKS: usize = 1024;

/// (k-tiles per split, splits) for a weight gradient with `blocks` output tiles and a reduction
/// of `k_tiles` tiles: enough splits to reach [`WGRAD_TARGET_BLOCKS`] blocks, none shorter than
/// [`MIN_TILES_PER_SPLIT`] tiles (and at least one tile each).
fn wgrad_split(blocks: usize, k_tiles: usize) -> (usize, usize) {
    let wanted = WGRAD_TARGET_BLOCKS.div_ceil(blocks.max(1));
    let affordable = (k_tiles / MIN_TILES_PER_SPLIT).max(1);
    let splits = wanted.clamp(1, affordable);
    let per = k_tiles.div_ceil(splits).max(1);
    (per, k_tiles.div_ceil(per).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_follows_the_convolution_arithmetic() {
        let s = ConvShape { n: 2, h: 224, w: 224, c: 3, k: 64, r: 7, s: 7, stride: 2, pad: 3 };
        assert_eq!((s.p(), s.q()), (112, 112));
        let s = ConvShape { n: 1, h: 7, w: 9, c: 8, k: 8, r: 3, s: 3, stride: 2, pad: 1 };
        assert_eq!((s.p(), s.q()), (4, 5));
        let s = ConvShape { n: 1, h: 2, w: 2, c: 8, k: 8, r: 7, s: 7, stride: 1, pad: 0 };
        assert_eq!(s.p(), 0);
        assert!(s.validate(OP_FWD).is_err());
    }

    #[test]
    fn wgrad_split_covers_the_reduction_once() {
        for (blocks, k_tiles) in [(1, 1), (4, 1000), (264, 50), (2, 17), (1, 8)] {
            let (per, splits) = wgrad_split(blocks, k_tiles);
            assert!(per * splits >= k_tiles && per * (splits - 1) < k_tiles, "{blocks} {k_tiles}: {per} {splits}");
        }
    }
}
