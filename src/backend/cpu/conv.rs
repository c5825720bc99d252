//! 2-D convolution on the CPU by im2col + GEMM.
//!
//! im2col unrolls every receptive field into a column, so the convolution
//! becomes one matrix product `W[O, K] · cols[K, G·P]` (K = C·kh·kw, P = OH·OW)
//! that the tuned GEMM runs near peak. Jobs of G images, spread over threads,
//! each with its own buffers and a single-threaded GEMM, G by feature-map size:
//! - large maps (P ≥ `MIN_GEMM_COLS`): G = 1, each output written in place;
//! - small maps: G images side by side in one wider GEMM (many skinny GEMMs waste
//!   the machine), capped so the cols buffer stays within `COLS_BUDGET`.
//!
//! Backward recomputes the unfolded matrix instead of keeping it, from a channels-last
//! copy of each image where the kernel is wider than 1×1 (`channels_last.rs`). Narrow or
//! strided maps unfold by a table of offsets (`tap_table.rs`); maps of 2×2 and 1×1 pixels
//! (ResNet's last stages) skip im2col altogether: `pixel_taps.rs`.
//!
//! In f32 on CPUs with AVX2 + FMA or AVX-512, layers with few output channels (≤ 32 with
//! AVX2, ≤ 64 with AVX-512) skip im2col too: `direct.rs` multiplies the weights into the
//! input where it lies, for the forward pass and — a stride-1 layer's input gradient being
//! itself such a convolution (`ConvGeometry::input_gradient_as_convolution`) — for dX;
//! `direct_weight.rs` does the same for the weight gradient of 7×7 stems (AVX-512).

mod channels_last;
mod direct;
mod direct_weight;
mod pixel_taps;
mod tap_table;

use super::matmul::{gemm_strided, GemmPrecision};
use crate::tensor::Float;
use rayon::prelude::*;
use std::any::{Any, TypeId};

/// Elements of one job's im2col buffer (16 Mi f32 = 64 MiB; each busy thread holds one).
const COLS_BUDGET: usize = 1 << 24;

/// Feature maps with fewer output pixels than this are grouped (measured in
/// benches/cpu_kernels.rs: per-image GEMMs win down to 8×8 maps).
const MIN_GEMM_COLS: usize = 64;

/// When the (pixel, tap) schedule is used: 2×2 and 1×1 output maps over ≥ 16 images.
/// Measured per layer (fwd, fwd + bwd): the demo's 64→64 2×2 conv over 1024 images
/// 7.7 → 2.8 ms, 25 → 8 ms; its 128→128 3×3 conv of 1×1 maps 7.2 → 0.3 ms, 12.8 → 0.9 ms;
/// ResNet-18's 512→512 2×2 over 320 images 43 → 34 ms, 99 → 53 ms. At 4×4 it lost
/// everywhere (256→256 over 320 images 46 → 80 ms; the demo's 32→32 4.9 → 23 ms):
/// its GEMMs read and write strided views, which costs more than im2col there.
/// Under bf16 autocast this schedule stays f32: its operands, packed to bf16 one strided
/// element at a time, cost more than the bf16 products save (ResNet-18's 2×2 layers over 320
/// images, fwd + bwd, 0.74–0.87× f32; AMD EPYC, 2026-12-08).
const PIXEL_TAPS_MAX_PIXELS: usize = 4;
const PIXEL_TAPS_MIN_BATCH: usize = 16;

/// Columns to aim for in a grouped GEMM.
const GROUPED_GEMM_COLS: usize = 256;

/// When im2col gathers by a table of offsets (`tap_table.rs`) rather than copying rows:
/// output rows at most this wide, or any horizontal stride (row copies then step through
/// the input one element at a time). Measured per layer, fwd / fwd + bwd ms, medians of
/// 3–5 alternating runs (2-core Xeon): the demo's 32→32 conv of 4×4 maps over 1024 images
/// 4.6 / 16.8 → 3.4 / 15.1, its 16→32 3×3/2 conv 3.5 / 12.6 → 2.2 / 8.0, its 7×7/2 stem
/// 20.2 / 53.8 → 16.2 / 49.8; ResNet-18's 64→128 3×3/2 on 16×16 maps (320 images)
/// 19.1 / 45.7 → 14.9 / 39.3. Stride 1 on 16×16 maps: no gain (33.7 / 85.5 → 34.6 / 87.0).
const TAP_TABLE_MAX_OW: usize = 8;

/// Shapes of one convolution: batch, channels, image, kernel, stride, padding, output.
#[derive(Clone, Copy, Debug)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeometry {
    /// The geometry of N images of C×H×W through O kernels of kh×kw at `stride` and
    /// `padding`; the output size follows. The caller checks that the kernel fits the
    /// padded image and the stride is at least 1 (`ops::conv2d` does, with clear errors).
    pub fn new(
        n: usize,
        c: usize,
        (h, w): (usize, usize),
        o: usize,
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        (ph, pw): (usize, usize),
    ) -> ConvGeometry {
        let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
        ConvGeometry { n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow }
    }
    /// Rows of the cols matrix: one per (input channel, kernel row, kernel column).
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output pixels per image (columns of one image's cols block).
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn image(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Tiny output maps over a batch large enough to be a GEMM's wide side: the
    /// (pixel, tap) schedule of `pixel_taps.rs`.
    fn pixel_taps(&self) -> bool {
        self.p() <= PIXEL_TAPS_MAX_PIXELS && self.n >= PIXEL_TAPS_MIN_BATCH
    }
    /// Whether backward unfolds through a channels-last copy (`channels_last.rs`): every
    /// kernel wider than 1×1. Measured per layer, fwd + bwd ms (dX and dW), medians of 3
    /// alternating runs (2-core Xeon): the demo's 16→16 conv of 8×8 maps over 1024 images
    /// 16.7 → 12.8, 32→32 on 4×4 13.6 → 9.2, 16→32 3×3/2 9.1 → 7.0, its 7×7/2 stem (dW only)
    /// 28 → 24; ResNet-18 over 320 images, 64→64 on 16×16 101 → 81, 128→128 on 8×8 77 → 61.
    /// A 1×1 kernel unfolds to a transpose, which lost (ResNet-18's 1×1/2: 17 → 23).
    fn channels_last(&self) -> bool {
        self.kh * self.kw > 1
    }
    /// For stride 1 (and padding below the kernel size), the input gradient is itself a
    /// convolution: dX[c, y, x] = Σ_{o, i, j} dY[o, y + ph − i, x + pw − j] · W[o, c, i, j],
    /// i.e. dY (O channels) convolved with the kernel flipped in both axes and its channel
    /// axes swapped, padded by kh − 1 − ph and kw − 1 − pw. Its geometry, where that holds.
    fn input_gradient_as_convolution(&self) -> Option<ConvGeometry> {
        (self.sh == 1 && self.sw == 1 && self.ph < self.kh && self.pw < self.kw).then(|| {
            let padding = (self.kh - 1 - self.ph, self.kw - 1 - self.pw);
            ConvGeometry::new(self.n, self.o, (self.oh, self.ow), self.c, (self.kh, self.kw), (1, 1), padding)
        })
    }
    /// Images per GEMM (1 = the per-image schedule).
    fn group(&self) -> usize {
        if self.p() >= MIN_GEMM_COLS {
            return 1;
        }
        let wanted = GROUPED_GEMM_COLS.div_ceil(self.p().max(1));
        let affordable = COLS_BUDGET / (self.k() * self.p()).max(1);
        wanted.min(affordable).clamp(1, self.n.max(1))
    }
}

/// How im2col and col2im move the data: row copies, or a gather by a table of offsets.
enum Unfold {
    Rows,
    Table(tap_table::TapTable),
}

impl Unfold {
    fn for_geometry(g: &ConvGeometry) -> Self {
        // The table holds u32 offsets into the padded plane.
        let fits = (g.h + 2 * g.ph) * (g.w + 2 * g.pw) <= u32::MAX as usize;
        if fits && (g.ow <= TAP_TABLE_MAX_OW || g.sw > 1) {
            Unfold::Table(tap_table::TapTable::new(g))
        } else {
            Unfold::Rows
        }
    }

    fn im2col<T: Float>(&self, x: &[T], g: &ConvGeometry, cols: &mut [T], ld: usize) {
        match self {
            Unfold::Rows => im2col(x, g, cols, ld),
            Unfold::Table(table) => table.im2col(x, g, cols, ld),
        }
    }

    fn col2im<T: Float>(&self, cols: &[T], ld: usize, g: &ConvGeometry, dx: &mut [T]) {
        match self {
            Unfold::Rows => col2im(cols, ld, g, dx),
            Unfold::Table(table) => table.col2im(cols, ld, g, dx),
        }
    }
}

// ---- entry points: pick a schedule by feature-map size

/// y = conv(x, w) + bias. `x`: [N, C, H, W], `w`: [O, K], both row-major; returns [N, O, OH, OW].
/// `precision` is how the GEMM schedules (im2col, channels-last) multiply (`Bf16`: bf16
/// autocast). The other schedules stay f32 under bf16, as they are chosen where they beat
/// the GEMMs: the direct kernels (small channel counts; the demo's forward convolutions ran
/// 36–47 ms in f32 against 52–57 ms through bf16 im2col) and pixel taps (see
/// `PIXEL_TAPS_MAX_PIXELS`).
pub fn conv2d_forward<T: Float>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    g: &ConvGeometry,
    precision: GemmPrecision,
) -> Vec<T> {
    if g.pixel_taps() {
        return pixel_taps::forward(x, w, bias, g);
    }
    if let (Some(xf), Some(wf)) = (as_f32(x), as_f32(w)) {
        if direct::chosen_for(g) {
            let bf = bias.map(|b| as_f32(b).expect("the bias has the input's type"));
            return from_f32(direct::forward(xf, wf, bf, g));
        }
    }
    forward_im2col(x, w, bias, g, g.group(), &Unfold::for_geometry(g), precision)
}

/// dX[n] = col2im(Wᵀ · dY[n]).
pub fn conv2d_backward_input<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry, precision: GemmPrecision) -> Vec<T> {
    if g.pixel_taps() {
        return pixel_taps::backward_input(dy, w, g);
    }
    if let (Some(dyf), Some(wf), Some(t)) = (as_f32(dy), as_f32(w), g.input_gradient_as_convolution()) {
        if !t.pixel_taps() && direct::chosen_for(&t) {
            return from_f32(direct::forward(dyf, &flipped_transposed_kernel(wf, g), None, &t));
        }
    }
    if g.channels_last() {
        return channels_last::backward_input(dy, w, g, g.group(), precision);
    }
    backward_input_im2col(dy, w, g, g.group(), &Unfold::for_geometry(g), precision)
}

/// `s` as f32 when `T` is f32: the direct kernels (`direct.rs`) are f32 only.
fn as_f32<T: Float>(s: &[T]) -> Option<&[f32]> {
    // SAFETY: the same type, so the same layout.
    (TypeId::of::<T>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) })
}

/// A result of the f32 kernels as `Vec<T>`, where [`as_f32`] found `T` to be f32.
fn from_f32<T: Float>(v: Vec<f32>) -> Vec<T> {
    *(Box::new(v) as Box<dyn Any>).downcast::<Vec<T>>().expect("called only where T is f32")
}

/// W[o][c][i][j] → W'[c][o][kh − 1 − i][kw − 1 − j]: the kernel of the convolution that is
/// a stride-1 convolution's input gradient (see `ConvGeometry::input_gradient_as_convolution`).
fn flipped_transposed_kernel(w: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let taps = g.kh * g.kw;
    let mut flipped = vec![0.0f32; w.len()];
    for o in 0..g.o {
        for c in 0..g.c {
            let from = &w[(o * g.c + c) * taps..][..taps];
            let to = &mut flipped[(c * g.o + o) * taps..][..taps];
            to.iter_mut().zip(from.iter().rev()).for_each(|(t, &f)| *t = f);
        }
    }
    flipped
}

/// dW = Σ_n dY[n] · cols(x[n])ᵀ, as [O, K].
pub fn conv2d_backward_weight<T: Float>(x: &[T], dy: &[T], g: &ConvGeometry, precision: GemmPrecision) -> Vec<T> {
    if g.pixel_taps() {
        return pixel_taps::backward_weight(x, dy, g);
    }
    if let (Some(xf), Some(dyf)) = (as_f32(x), as_f32(dy)) {
        if direct_weight::chosen_for(g) {
            return from_f32(direct_weight::backward_weight(xf, dyf, g));
        }
    }
    if g.channels_last() {
        return channels_last::backward_weight(x, dy, g, g.group(), precision);
    }
    backward_weight_im2col(x, dy, g, g.group(), &Unfold::for_geometry(g), precision)
}

// ---- the im2col schedule: jobs of `step` images, one GEMM each

/// Spread jobs over threads (single-threaded GEMMs) when there are enough of
/// them; otherwise give each job's GEMM every thread.
fn job_threads(jobs: usize) -> (bool, usize) {
    if jobs >= threads() {
        (true, 1)
    } else {
        (false, threads())
    }
}

/// Runs `job(buffers, (job index, its chunk of out))` over `out` in chunks of
/// `chunk` elements, in parallel when there are enough jobs; each rayon worker
/// makes its buffers once with `new` and reuses them job after job.
fn for_each_job<T: Send, B>(
    out: &mut [T],
    chunk: usize,
    parallel: bool,
    new: impl Fn() -> B + Sync + Send,
    job: impl Fn(&mut B, (usize, &mut [T])) + Sync + Send,
) {
    if parallel {
        out.par_chunks_mut(chunk).enumerate().for_each_init(new, job);
    } else {
        let mut buffers = new();
        out.chunks_mut(chunk).enumerate().for_each(|item| job(&mut buffers, item));
    }
}

/// cols of images `first..first + count` side by side: [K, count·P] with row stride count·P.
fn group_cols<T: Float>(x: &[T], g: &ConvGeometry, unfold: &Unfold, first: usize, count: usize, cols: &mut [T]) {
    let ld = count * g.p();
    for b in 0..count {
        unfold.im2col(&x[(first + b) * g.image()..][..g.image()], g, &mut cols[b * g.p()..], ld);
    }
}

/// dY of images `first..first + count` as the GEMMs want it: [O, count·P].
fn group_dy<T: Float>(dy: &[T], g: &ConvGeometry, first: usize, count: usize, out: &mut [T]) {
    let (o, p) = (g.o, g.p());
    for oc in 0..o {
        for b in 0..count {
            out[(oc * count + b) * p..][..p].copy_from_slice(&dy[((first + b) * o + oc) * p..][..p]);
        }
    }
}

fn forward_im2col<T: Float>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    g: &ConvGeometry,
    step: usize,
    unfold: &Unfold,
    precision: GemmPrecision,
) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let mut y = vec![T::zero(); g.n * o * p];
    let (parallel, gemm_threads) = job_threads(g.n.div_ceil(step));
    // Buffers per worker: the group's cols [K, count·P] and, for groups, the GEMM's [O, count·P].
    let new = || (vec![T::zero(); k * step * p], vec![T::zero(); if step > 1 { o * step * p } else { 0 }]);
    for_each_job(&mut y, step * o * p, parallel, new, |(cols, out), (j, yg)| {
        let count = yg.len() / (o * p);
        let ld = count * p;
        group_cols(x, g, unfold, j * step, count, cols);
        // One image writes its [O, P] output in place; a group's [O, count, P] is reordered below.
        let dst = if count == 1 { &mut yg[..] } else { &mut out[..o * ld] };
        // SAFETY: dst is [O, count·P], w is [O, K], cols is [K, count·P]; row-major, in bounds.
        unsafe {
            gemm_strided(
                o,
                ld,
                k,
                dst.as_mut_ptr(),
                ld as isize,
                1,
                w.as_ptr(),
                k as isize,
                1,
                cols.as_ptr(),
                ld as isize,
                1,
                false,
                gemm_threads,
                precision,
            );
        }
        if count > 1 {
            // [O, count, P] → [count, O, P]
            for (b, yn) in yg.chunks_mut(o * p).enumerate() {
                for oc in 0..o {
                    yn[oc * p..(oc + 1) * p].copy_from_slice(&out[(oc * count + b) * p..][..p]);
                }
            }
        }
        if let Some(b) = bias {
            yg.chunks_mut(p).enumerate().for_each(|(plane, v)| v.iter_mut().for_each(|v| *v += b[plane % o]));
        }
    });
    y
}

fn backward_input_im2col<T: Float>(
    dy: &[T],
    w: &[T],
    g: &ConvGeometry,
    step: usize,
    unfold: &Unfold,
    precision: GemmPrecision,
) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let mut dx = vec![T::zero(); g.n * g.image()];
    let (parallel, gemm_threads) = job_threads(g.n.div_ceil(step));
    // Buffers per worker: dcols [K, count·P] (the GEMM overwrites it) and, for groups, dY [O, count·P].
    let new = || (vec![T::zero(); k * step * p], vec![T::zero(); if step > 1 { o * step * p } else { 0 }]);
    for_each_job(&mut dx, step * g.image(), parallel, new, |(dcols, dyg), (j, dxg)| {
        let (first, count) = (j * step, dxg.len() / g.image());
        let ld = count * p;
        let dy_group = if count == 1 {
            &dy[first * o * p..][..o * p]
        } else {
            group_dy(dy, g, first, count, dyg);
            &dyg[..o * ld]
        };
        // dcols = Wᵀ · dY, Wᵀ as a strided view of W (row stride 1, column stride K).
        // SAFETY: dcols is [K, count·P], dy_group [O, count·P], w [O, K]; in bounds.
        unsafe {
            gemm_strided(
                k,
                ld,
                o,
                dcols.as_mut_ptr(),
                ld as isize,
                1,
                w.as_ptr(),
                1,
                k as isize,
                dy_group.as_ptr(),
                ld as isize,
                1,
                false,
                gemm_threads,
                precision,
            );
        }
        for (b, dxn) in dxg.chunks_mut(g.image()).enumerate() {
            unfold.col2im(&dcols[b * p..], ld, g, dxn);
        }
    });
    dx
}

fn backward_weight_im2col<T: Float>(
    x: &[T],
    dy: &[T],
    g: &ConvGeometry,
    step: usize,
    unfold: &Unfold,
    precision: GemmPrecision,
) -> Vec<T> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let groups = g.n.div_ceil(step);
    // dW += dY_group · colsᵀ for group j (colsᵀ as a strided view: row stride 1, column stride count·P).
    let accumulate = |acc: &mut [T], (cols, dyg): &mut (Vec<T>, Vec<T>), j: usize, gemm_threads: usize| {
        let (first, count) = (j * step, step.min(g.n - j * step));
        let ld = count * p;
        group_cols(x, g, unfold, first, count, cols);
        let dy_group = if count == 1 {
            &dy[first * o * p..][..o * p]
        } else {
            group_dy(dy, g, first, count, dyg);
            &dyg[..o * ld]
        };
        // SAFETY: acc is [O, K], dy_group [O, count·P], cols [K, count·P]; in bounds.
        unsafe {
            gemm_strided(
                o,
                k,
                ld,
                acc.as_mut_ptr(),
                k as isize,
                1,
                dy_group.as_ptr(),
                ld as isize,
                1,
                cols.as_ptr(),
                1,
                ld as isize,
                true,
                gemm_threads,
                precision,
            );
        }
    };
    let new = || (vec![T::zero(); k * step * p], vec![T::zero(); if step > 1 { o * step * p } else { 0 }]);
    sum_over_groups(groups, o * k, new, accumulate)
}

/// Σ over groups 0..`groups` of `accumulate(acc, buffers, group, gemm threads)` into a
/// `len`-element sum (a weight gradient). With enough groups: a fixed split into one
/// contiguous chunk per thread, each summed in order, then the chunks added in order —
/// the floating-point sum is the same on every run (work stealing must not change
/// results); otherwise one pass with threaded GEMMs.
fn sum_over_groups<T: Float, B>(
    groups: usize,
    len: usize,
    new: impl Fn() -> B + Sync + Send,
    accumulate: impl Fn(&mut [T], &mut B, usize, usize) + Sync + Send,
) -> Vec<T> {
    let (parallel, gemm_threads) = job_threads(groups);
    if parallel {
        let chunk = groups.div_ceil(threads());
        let partial: Vec<Vec<T>> = (0..groups.div_ceil(chunk))
            .into_par_iter()
            .map(|c| {
                let (mut acc, mut buffers) = (vec![T::zero(); len], new());
                (c * chunk..((c + 1) * chunk).min(groups)).for_each(|j| accumulate(&mut acc, &mut buffers, j, 1));
                acc
            })
            .collect();
        let mut total = vec![T::zero(); len];
        for part in &partial {
            total.iter_mut().zip(part).for_each(|(t, v)| *t += *v);
        }
        total
    } else {
        let (mut acc, mut buffers) = (vec![T::zero(); len], new());
        (0..groups).for_each(|j| accumulate(&mut acc, &mut buffers, j, gemm_threads));
        acc
    }
}

// ---- im2col and its adjoint

/// The output columns `ox` whose input column `ox·sw + j − pw` lies inside `0..w`, for kernel
/// column `j`: the others read padding. Computed once per kernel column, so the inner loops
/// below copy without a bounds test per element.
fn valid_columns(g: &ConvGeometry, j: usize) -> std::ops::Range<usize> {
    // ox·sw + j − pw ≥ 0  ⇔  ox ≥ ⌈(pw − j) / sw⌉;   ox·sw + j − pw < w  ⇔  ox < ⌈(w + pw − j) / sw⌉.
    let lo = g.pw.saturating_sub(j).div_ceil(g.sw).min(g.ow);
    let hi = (g.w + g.pw).saturating_sub(j).div_ceil(g.sw).clamp(lo, g.ow);
    lo..hi
}

/// Writes image `x`'s columns into `cols` (row stride `ld`, this image's block starting at column 0):
/// cols[(c·kh + i)·kw + j, oy·OW + ox] = x[c, oy·sh + i − ph, ox·sw + j − pw] (0 outside).
fn im2col<T: Float>(x: &[T], g: &ConvGeometry, cols: &mut [T], ld: usize) {
    if g.sh == 1 && g.sw == 1 && g.ow == g.w {
        return im2col_shifted(x, g, cols, ld);
    }
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let valid = valid_columns(g, j);
                // Input column of the first valid output column (ix = ox·sw + j − pw).
                let first_ix = (valid.start * g.sw + j).saturating_sub(g.pw);
                let row = (c * g.kh + i) * g.kw + j;
                for oy in 0..g.oh {
                    let iy = (oy * g.sh + i) as isize - g.ph as isize;
                    let dst = &mut cols[row * ld + oy * g.ow..][..g.ow];
                    if iy < 0 || iy >= g.h as isize || valid.is_empty() {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &x[(c * g.h + iy as usize) * g.w..][..g.w];
                    dst[..valid.start].fill(T::zero());
                    dst[valid.end..].fill(T::zero());
                    let inside = &mut dst[valid.clone()];
                    if g.sw == 1 {
                        inside.copy_from_slice(&src[first_ix..][..inside.len()]);
                    } else {
                        inside.iter_mut().zip(src[first_ix..].iter().step_by(g.sw)).for_each(|(d, &v)| *d = v);
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride 1 with outputs as wide as the input (ResNet's 3×3 convolutions with
/// padding 1, except the strided ones): output pixel k of a cols row reads input pixel
/// k + (i − ph)·w + (j − pw) of its channel, so the row is the plane shifted by that much: one
/// block copy over the rows that stay inside the image, then zeros where a shifted row ran
/// over the left or right edge (those entries read padding, not the neighbouring row).
fn im2col_shifted<T: Float>(x: &[T], g: &ConvGeometry, cols: &mut [T], ld: usize) {
    let (w, plane, p) = (g.w, g.h * g.w, g.p());
    for c in 0..g.c {
        let src = &x[c * plane..][..plane];
        for i in 0..g.kh {
            // Output rows whose input row oy + i − ph lies inside the image.
            let (row_lo, row_hi) = (g.ph.saturating_sub(i).min(g.oh), (g.h + g.ph).saturating_sub(i).min(g.oh));
            let row_hi = row_hi.max(row_lo);
            for j in 0..g.kw {
                let dst = &mut cols[((c * g.kh + i) * g.kw + j) * ld..][..p];
                let shift = (i * w + j) as isize - (g.ph * w + g.pw) as isize;
                let (lo, hi) = (row_lo * w, row_hi * w);
                dst[..lo].fill(T::zero());
                dst[hi..].fill(T::zero());
                // Entries whose source falls before or after the plane are edge columns: zeroed below.
                let from = (lo as isize + shift).max(0) as usize;
                let to = ((hi as isize + shift).min(plane as isize)).max(from as isize) as usize;
                if to > from {
                    let start = (from as isize - shift) as usize;
                    dst[start..start + (to - from)].copy_from_slice(&src[from..to]);
                }
                let valid = valid_columns(g, j);
                for oy in row_lo..row_hi {
                    dst[oy * w..oy * w + valid.start].fill(T::zero());
                    dst[oy * w + valid.end..(oy + 1) * w].fill(T::zero());
                }
            }
        }
    }
}

/// The adjoint of im2col: adds every column entry back to the input pixel it came from.
/// (Same loop order as before the fast path: every dx element sums its terms in the same order.)
fn col2im<T: Float>(cols: &[T], ld: usize, g: &ConvGeometry, dx: &mut [T]) {
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let valid = valid_columns(g, j);
                if valid.is_empty() {
                    continue;
                }
                let first_ix = (valid.start * g.sw + j).saturating_sub(g.pw);
                let row = (c * g.kh + i) * g.kw + j;
                for oy in 0..g.oh {
                    let iy = (oy * g.sh + i) as isize - g.ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut dx[(c * g.h + iy as usize) * g.w..][..g.w];
                    let src = &cols[row * ld + oy * g.ow..][valid.clone()];
                    dst[first_ix..].iter_mut().step_by(g.sw).zip(src).for_each(|(d, &v)| *d += v);
                }
            }
        }
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedules are an implementation detail: one image per GEMM, groups of two,
    /// three or all images, im2col by row copies or by a tap table, and the (pixel, tap)
    /// GEMMs must give the same numbers.
    #[test]
    fn schedules_agree() {
        let geometry = ConvGeometry::new;
        let cases = [
            geometry(5, 2, (6, 5), 3, (3, 2), (2, 1), (1, 1)),
            // The stem's shape in small: a 7×7 kernel, stride 2, padding 3; and a strided 1×1.
            geometry(3, 3, (9, 8), 2, (7, 7), (2, 2), (3, 3)),
            geometry(3, 4, (5, 6), 3, (1, 1), (2, 2), (0, 0)),
            // ResNet's last stages: a 3×3 conv of 1×1 maps (eight taps in the padding),
            // a strided one onto 1×1, and 2×2 maps.
            geometry(5, 3, (1, 1), 4, (3, 3), (1, 1), (1, 1)),
            geometry(5, 3, (2, 2), 4, (3, 3), (2, 2), (1, 1)),
            geometry(5, 3, (2, 2), 2, (3, 3), (1, 1), (1, 1)),
            // A 1×1 kernel with padding: the border outputs see only padding (bias alone).
            geometry(5, 2, (2, 3), 3, (1, 1), (1, 1), (1, 1)),
        ];
        for g in &cases {
            let mut rng = crate::rng::Rng::new(3);
            let mut rand = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
            let (x, w, dy) = (rand(g.n * g.image()), rand(g.o * g.k()), rand(g.n * g.o * g.p()));
            let bias = rand(g.o);
            let im2col_in_groups = |step, unfold: &Unfold| {
                (
                    forward_im2col(&x, &w, Some(&bias), g, step, unfold, GemmPrecision::Exact),
                    backward_input_im2col(&dy, &w, g, step, unfold, GemmPrecision::Exact),
                    backward_weight_im2col(&x, &dy, g, step, unfold, GemmPrecision::Exact),
                )
            };
            let (rows, table) = (Unfold::Rows, Unfold::Table(tap_table::TapTable::new(g)));
            let reference = im2col_in_groups(g.n, &rows);
            let by_table = im2col_in_groups(1, &table);
            // The table moves the same values and adds dX's terms in the same order: same bits.
            assert_eq!(by_table, im2col_in_groups(1, &rows), "tap table vs row copies, {g:?}");
            let candidates = [
                ("per image", im2col_in_groups(1, &rows)),
                ("groups of 2", im2col_in_groups(2, &rows)),
                ("groups of 3", im2col_in_groups(3, &rows)),
                ("tap table, groups of 2", im2col_in_groups(2, &table)),
                (
                    "channels-last backward, per image",
                    (
                        reference.0.clone(),
                        channels_last::backward_input(&dy, &w, g, 1, GemmPrecision::Exact),
                        channels_last::backward_weight(&x, &dy, g, 1, GemmPrecision::Exact),
                    ),
                ),
                (
                    "channels-last backward, groups of 2",
                    (
                        reference.0.clone(),
                        channels_last::backward_input(&dy, &w, g, 2, GemmPrecision::Exact),
                        channels_last::backward_weight(&x, &dy, g, 2, GemmPrecision::Exact),
                    ),
                ),
                (
                    "pixel taps",
                    (
                        pixel_taps::forward(&x, &w, Some(&bias), g),
                        pixel_taps::backward_input(&dy, &w, g),
                        pixel_taps::backward_weight(&x, &dy, g),
                    ),
                ),
            ];
            for (name, got) in &candidates {
                for (a, b) in [(&got.0, &reference.0), (&got.1, &reference.1), (&got.2, &reference.2)] {
                    assert_eq!(a.len(), b.len());
                    assert!(a.iter().zip(b.iter()).all(|(p, q)| (p - q).abs() < 1e-12), "{name} {g:?}");
                }
            }
        }
    }

    /// The f32 entry points take the direct kernels where they are chosen (forward, the input
    /// gradient of stride-1 layers as a convolution of dY with the flipped kernel, the weight
    /// gradient); they compute what the f64 schedules do, to f32 rounding.
    #[test]
    fn f32_entry_points_match_the_f64_schedules() {
        let geometry = ConvGeometry::new;
        let cases = [
            geometry(2, 3, (16, 16), 16, (7, 7), (2, 2), (3, 3)), // a stem
            geometry(2, 16, (8, 8), 16, (3, 3), (1, 1), (1, 1)),
            geometry(2, 16, (8, 8), 32, (3, 3), (2, 2), (1, 1)),
            geometry(2, 5, (6, 7), 24, (3, 2), (1, 1), (0, 1)), // unequal kernel sides and paddings
            geometry(2, 20, (9, 5), 12, (5, 5), (1, 1), (2, 2)),
            geometry(2, 8, (4, 4), 40, (1, 1), (1, 1), (0, 0)),
        ];
        for g in &cases {
            let mut rng = crate::rng::Rng::new(5);
            let mut rand = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
            let (x, w, dy, bias) = (rand(g.n * g.image()), rand(g.o * g.k()), rand(g.n * g.o * g.p()), rand(g.o));
            let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (xf, wf, dyf, bf) = (f32s(&x), f32s(&w), f32s(&dy), f32s(&bias));
            let pairs = [
                (
                    "forward",
                    conv2d_forward(&xf, &wf, Some(&bf), g, GemmPrecision::Exact),
                    conv2d_forward(&x, &w, Some(&bias), g, GemmPrecision::Exact),
                    g.k(),
                ),
                (
                    "input gradient",
                    conv2d_backward_input(&dyf, &wf, g, GemmPrecision::Exact),
                    conv2d_backward_input(&dy, &w, g, GemmPrecision::Exact),
                    g.o * g.kh * g.kw,
                ),
                (
                    "weight gradient",
                    conv2d_backward_weight(&xf, &dyf, g, GemmPrecision::Exact),
                    conv2d_backward_weight(&x, &dy, g, GemmPrecision::Exact),
                    g.n * g.p(),
                ),
            ];
            for (what, got, want, terms) in pairs {
                assert_eq!(got.len(), want.len());
                // Sums of `terms` products of unit normals (of f32-rounded inputs).
                let tol = 1e-5 * (terms as f64).sqrt() * 8.0;
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!((a as f64 - b).abs() < tol, "{what} {g:?}: element {i}: {a} vs {b}");
                }
            }
        }
    }
}
