//! Elementwise kernels (kernels/elementwise.cu): unary maps and their gradients, binary
//! arithmetic with broadcasting, f32 ↔ bf16 casts, fill and axpby, for f32 and bf16 storage.
//!
//! These ops do a few flops per element and are limited by memory bandwidth only, so each
//! kernel is organised around one 16-byte load per input and one 16-byte store per output for
//! every 4 f32 / 8 bf16 elements (a scalar tail covers the rest), in a grid-stride loop whose
//! grid is capped at [`MAX_BLOCKS`] so large tensors reuse resident threads instead of
//! launching millions of blocks. All arithmetic is f32; bf16 results are rounded once.
//!
//! Broadcasting ([`binary_broadcast`], [`binary_strided`]) goes through one general kernel:
//! the launcher first *collapses* the iteration space — drops size-1 output dims and merges
//! neighbouring dims that both inputs traverse contiguously (`[N, C, H, W] + [1, C, 1, 1]`
//! becomes `[N, C, H·W]` with strides `(C·HW, HW, 1)` and `(0, 1, 0)`) — so the kernel's
//! per-element index arithmetic (one div/mod per remaining dim) is as short as possible; at
//! most [`MAX_DIMS`] dims may remain. Indexing is 32-bit when every index and offset fits
//! (64-bit integer division is several times slower on the GPU), and when the innermost dim
//! is contiguous or broadcast in both inputs with a length that is a multiple of the pack
//! width — the bias-add case `[rows, cols] + [cols]` — each thread handles a whole pack per
//! index decomposition. The gradient of a broadcast operand, [`sum_to_shape`], is a sequence
//! of row and column sums from [`super::reduce`].

use super::{check_len, kernel_name, reduce, KernelFloat};
use crate::backend::cuda::{Arg, DeviceBuffer, Gpu, LaunchConfig};
use crate::cuda_args;
use crate::error::{Error, Result};
use half::bf16;

/// Threads per block of every kernel here.
const BLOCK: u32 = 256;
/// Grid cap of the grid-stride kernels: 1M threads, several waves on any current GPU.
pub const MAX_BLOCKS: usize = 4096;
/// Most dims the broadcasting kernel takes after collapsing.
pub const MAX_DIMS: usize = 6;

/// Π dims, or an error where the product overflows (a shape no buffer can hold).
pub(crate) fn numel(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::shape(op, format!("{dims:?} has more elements than memory can address")))
}

/// Elements per 16-byte pack.
fn pack<T>() -> usize {
    16 / std::mem::size_of::<T>()
}

/// Grid for a grid-stride loop over `n` elements, `per_thread` per iteration.
fn flat_config(n: usize, per_thread: usize) -> LaunchConfig {
    let blocks = n.div_ceil(per_thread).div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS);
    LaunchConfig { grid: (blocks as u32, 1, 1), block: (BLOCK, 1, 1), shared_bytes: 0 }
}

fn check_same_len<A: crate::backend::cuda::DeviceElement, B: crate::backend::cuda::DeviceElement>(
    op: &'static str,
    what: &str,
    a: &DeviceBuffer<A>,
    b: &DeviceBuffer<B>,
) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::shape(op, format!("{what}: {} and {} elements", a.len(), b.len())));
    }
    Ok(())
}

// ---------------------------------------------------------------- unary

/// A pointwise function y = f(x). Formulas as the CPU ops (`Tensor::relu`, `gelu_erf`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    /// max(x, 0)
    Relu,
    /// x·Φ(x), Φ the standard normal CDF (erf form, `torch.nn.GELU()`)
    GeluErf,
    /// ½x(1 + tanh(√(2/π)(x + 0.044715x³))) (`GELU(approximate="tanh")`)
    GeluTanh,
    /// 1/(1 + e⁻ˣ), evaluated without overflow for either sign
    Sigmoid,
    Tanh,
    Exp,
    /// natural logarithm
    Log,
    Sqrt,
    /// −x
    Neg,
    /// |x|
    Abs,
}

impl Unary {
    fn base(self) -> &'static str {
        match self {
            Unary::Relu => "relu_fwd",
            Unary::GeluErf => "gelu_erf_fwd",
            Unary::GeluTanh => "gelu_tanh_fwd",
            Unary::Sigmoid => "sigmoid_fwd",
            Unary::Tanh => "tanh_fwd",
            Unary::Exp => "exp_fwd",
            Unary::Log => "log_fwd",
            Unary::Sqrt => "sqrt_fwd",
            Unary::Neg => "neg_fwd",
            Unary::Abs => "abs_fwd",
        }
    }
}

/// y = f(x) elementwise; `x` and `y` have the same length.
pub fn unary<T: KernelFloat>(gpu: &Gpu, op: Unary, x: &DeviceBuffer<T>, y: &mut DeviceBuffer<T>) -> Result<()> {
    check_same_len("cuda unary", "x and y", x, y)?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch(&kernel_name::<T>(op.base()), flat_config(n, pack::<T>()), &cuda_args![x, y, n as i64])
}

/// y = a·x + b elementwise.
pub fn scale_shift<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    a: f32,
    b: f32,
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    check_same_len("cuda scale_shift", "x and y", x, y)?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch(&kernel_name::<T>("scale_shift"), flat_config(n, pack::<T>()), &cuda_args![x, y, n as i64, a, b])
}

/// Which forward tensor a gradient kernel reads besides dy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The op's input x.
    Input,
    /// The op's output y = f(x).
    Output,
}

/// A differentiable [`Unary`] for [`unary_backward`]: dx = dy·f′(x), with f′ evaluated from
/// the input or the output, whichever the CPU op keeps (see [`UnaryGrad::saved`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryGrad {
    /// from y: dx = dy where y > 0, else 0
    Relu,
    /// from x: dx = dy·(Φ(x) + x·φ(x))
    GeluErf,
    /// from x: the derivative of the tanh approximation
    GeluTanh,
    /// from y: dx = dy·y(1 − y)
    Sigmoid,
    /// from y: dx = dy·(1 − y²)
    Tanh,
    /// from y: dx = dy·y
    Exp,
    /// from x: dx = dy / x
    Log,
    /// from y: dx = (dy / y)·½
    Sqrt,
}

impl UnaryGrad {
    /// The tensor [`unary_backward`] takes as `saved`: the output where f′ is cheaper from it.
    pub fn saved(self) -> Saved {
        match self {
            UnaryGrad::GeluErf | UnaryGrad::GeluTanh | UnaryGrad::Log => Saved::Input,
            UnaryGrad::Relu | UnaryGrad::Sigmoid | UnaryGrad::Tanh | UnaryGrad::Exp | UnaryGrad::Sqrt => Saved::Output,
        }
    }

    fn base(self) -> &'static str {
        match self {
            UnaryGrad::Relu => "relu_bwd",
            UnaryGrad::GeluErf => "gelu_erf_bwd",
            UnaryGrad::GeluTanh => "gelu_tanh_bwd",
            UnaryGrad::Sigmoid => "sigmoid_bwd",
            UnaryGrad::Tanh => "tanh_bwd",
            UnaryGrad::Exp => "exp_bwd",
            UnaryGrad::Log => "log_bwd",
            UnaryGrad::Sqrt => "sqrt_bwd",
        }
    }
}

/// dx = dy·f′ elementwise, f′ computed from `saved` (the input or the output of the forward
/// op, as [`UnaryGrad::saved`] says).
pub fn unary_backward<T: KernelFloat>(
    gpu: &Gpu,
    op: UnaryGrad,
    dy: &DeviceBuffer<T>,
    saved: &DeviceBuffer<T>,
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = "cuda unary_backward";
    check_same_len(name, "dy and the saved tensor", dy, saved)?;
    check_same_len(name, "dy and dx", dy, dx)?;
    let n = dy.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch(&kernel_name::<T>(op.base()), flat_config(n, pack::<T>()), &cuda_args![dy, saved, dx, n as i64])
}

// ---------------------------------------------------------------- binary

/// Binary arithmetic y = a ∘ b.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    /// y = a (b is not read): see [`copy_strided`].
    First,
}

impl Binary {
    fn base(self) -> &'static str {
        match self {
            Binary::Add => "binary_add",
            Binary::Sub => "binary_sub",
            Binary::Mul => "binary_mul",
            Binary::Div => "binary_div",
            Binary::First => "binary_first",
        }
    }
}

/// y = a ∘ b for same-length contiguous buffers (the fast path: no index arithmetic).
pub fn binary<T: KernelFloat>(
    gpu: &Gpu,
    op: Binary,
    a: &DeviceBuffer<T>,
    b: &DeviceBuffer<T>,
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    check_same_len("cuda binary", "a and b", a, b)?;
    check_same_len("cuda binary", "a and y", a, y)?;
    let n = a.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch(&kernel_name::<T>(op.base()), flat_config(n, pack::<T>()), &cuda_args![a, b, y, n as i64])
}

/// The shape two shapes broadcast to (NumPy rules: align right, sizes equal or 1).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(Error::shape("cuda broadcast", format!("shapes {a:?} and {b:?} do not broadcast"))),
        })
        .collect()
}

/// Element strides of a contiguous tensor of `shape` read as `out` (right-aligned, rank of
/// `out`): 0 on the dims where it is broadcast. `shape` must broadcast to `out`.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let lead = out.len() - shape.len();
    let mut strides = vec![0; out.len()];
    let mut step = 1;
    for i in (0..shape.len()).rev() {
        if shape[i] != 1 {
            strides[lead + i] = step;
        }
        step *= shape[i];
    }
    strides
}

/// y = a ∘ b with NumPy broadcasting; `a` and `b` are contiguous row-major tensors of shapes
/// `a_shape` and `b_shape`, `y` the contiguous output. Returns the output shape.
pub fn binary_broadcast<T: KernelFloat>(
    gpu: &Gpu,
    op: Binary,
    a: &DeviceBuffer<T>,
    a_shape: &[usize],
    b: &DeviceBuffer<T>,
    b_shape: &[usize],
    y: &mut DeviceBuffer<T>,
) -> Result<Vec<usize>> {
    let name = "cuda binary_broadcast";
    check_len(name, "a", a, numel(name, a_shape)?)?;
    check_len(name, "b", b, numel(name, b_shape)?)?;
    let out = broadcast_shape(a_shape, b_shape)?;
    let (sa, sb) = (broadcast_strides(a_shape, &out), broadcast_strides(b_shape, &out));
    binary_strided(gpu, op, a, &sa, b, &sb, &out, y)?;
    Ok(out)
}

/// The collapsed iteration space of a broadcast: dims (outermost first) and each input's
/// element strides along them.
#[derive(Debug, PartialEq, Eq)]
struct Collapsed {
    dims: Vec<usize>,
    sa: Vec<usize>,
    sb: Vec<usize>,
}

/// Drops size-1 dims and merges dim i into dim i+1 wherever both inputs step across the pair
/// as across one dim (stride_i = stride_{i+1}·dim_{i+1} for both; broadcast pairs, 0 = 0·d,
/// merge too). The element order is unchanged, so the output stays the same contiguous buffer.
fn collapse(dims: &[usize], sa: &[usize], sb: &[usize]) -> Collapsed {
    let mut c = Collapsed { dims: Vec::new(), sa: Vec::new(), sb: Vec::new() };
    // Built innermost-first, reversed at the end.
    for i in (0..dims.len()).rev() {
        if dims[i] == 1 {
            continue;
        }
        if let (Some(&d), Some(&a), Some(&b)) = (c.dims.last(), c.sa.last(), c.sb.last()) {
            if sa[i] == a * d && sb[i] == b * d {
                *c.dims.last_mut().unwrap() *= dims[i];
                continue;
            }
        }
        c.dims.push(dims[i]);
        c.sa.push(sa[i]);
        c.sb.push(sb[i]);
    }
    c.dims.reverse();
    c.sa.reverse();
    c.sb.reverse();
    c
}

/// y = a ∘ b over the output shape `out_shape` (contiguous `y`), reading element
/// Σᵢ coordᵢ·a_stridesᵢ of `a` and Σᵢ coordᵢ·b_stridesᵢ of `b`: the general form behind
/// [`binary_broadcast`], which also takes views (transposes: permuted strides; broadcasts:
/// stride 0). At most [`MAX_DIMS`] dims may remain after collapsing.
#[allow(clippy::too_many_arguments)]
pub fn binary_strided<T: KernelFloat>(
    gpu: &Gpu,
    op: Binary,
    a: &DeviceBuffer<T>,
    a_strides: &[usize],
    b: &DeviceBuffer<T>,
    b_strides: &[usize],
    out_shape: &[usize],
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = "cuda binary_strided";
    let rank = out_shape.len();
    if a_strides.len() != rank || b_strides.len() != rank {
        return Err(Error::shape(
            name,
            format!("{} and {} strides for an output of rank {rank}", a_strides.len(), b_strides.len()),
        ));
    }
    let n = numel(name, out_shape)?;
    check_len(name, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    // The furthest element each input is read at must lie inside it.
    let last = |s: &[usize]| {
        out_shape.iter().zip(s).try_fold(0usize, |acc, (&d, &s)| (d - 1).checked_mul(s)?.checked_add(acc))
    };
    let (last_a, last_b) = (last(a_strides), last(b_strides));
    for (what, last, len) in [("a", last_a, a.len()), ("b", last_b, b.len())] {
        if last.is_none_or(|last| last >= len) {
            return Err(Error::shape(
                name,
                format!("{what} has {len} elements but shape {out_shape:?} with its strides reads beyond them"),
            ));
        }
    }
    let (last_a, last_b) = (last_a.unwrap_or(0), last_b.unwrap_or(0));
    let c = collapse(out_shape, a_strides, b_strides);
    let nd = c.dims.len();
    if nd > MAX_DIMS {
        return Err(Error::invalid(
            name,
            format!("{nd} dims remain after merging {out_shape:?}; the kernel takes at most {MAX_DIMS}"),
        ));
    }
    // Same-shape contiguous operands need no index arithmetic at all.
    if nd == 1 && c.sa[0] == 1 && c.sb[0] == 1 {
        return gpu.launch(&kernel_name::<T>(op.base()), flat_config(n, pack::<T>()), &cuda_args![a, b, y, n as i64]);
    }

    let narrow = [n - 1, last_a, last_b].iter().all(|&v| v <= i32::MAX as usize);
    let p = pack::<T>();
    let vec = nd >= 1
        && c.dims[nd - 1] % p == 0
        && c.sa[nd - 1] <= 1
        && c.sb[nd - 1] <= 1
        && c.sa[..nd - 1].iter().chain(&c.sb[..nd - 1]).all(|s| s % p == 0)
        && [a.device_ptr(), b.device_ptr(), y.device_ptr()].iter().all(|ptr| ptr % 16 == 0);
    let flags = narrow as i32 | (vec as i32) << 1;

    // Right-aligned into MAX_DIMS slots; unused leading slots are size 1, stride 0.
    let pad = MAX_DIMS - nd;
    let slot = |v: &[usize], fill: usize| -> Vec<i64> {
        (0..MAX_DIMS).map(|i| if i < pad { fill } else { v[i - pad] } as i64).collect()
    };
    let mut args: Vec<Arg> = cuda_args![a, b, y, n as i64, nd as i32, flags].to_vec();
    for v in [slot(&c.dims, 1), slot(&c.sa, 0), slot(&c.sb, 0)] {
        args.extend(v.into_iter().map(Arg::I64));
    }
    let cfg = flat_config(n, if vec { p } else { 1 });
    gpu.launch(&kernel_name::<T>(&format!("{}_bcast", op.base())), cfg, &args)
}

/// y = x read through `x_strides` over `shape` (y contiguous): makes a strided view
/// (transpose, narrow, broadcast) row-major. The broadcast kernel with [`Binary::First`].
pub fn copy_strided<T: KernelFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    x_strides: &[usize],
    shape: &[usize],
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    let zeros = vec![0; shape.len()];
    binary_strided(gpu, Binary::First, x, x_strides, x, &zeros, shape, y)
}

/// The gradient of a broadcast operand: sums `g` (contiguous, shape `out_shape`) over every
/// axis along which `shape` was broadcast to `out_shape`, giving f32 values of `shape` in
/// `dst` (dst[j] = Σ over the copies of element j of g). Deterministic: row and column sums
/// of [`super::reduce`], no atomics.
pub fn sum_to_shape<T: KernelFloat>(
    gpu: &Gpu,
    g: &DeviceBuffer<T>,
    out_shape: &[usize],
    shape: &[usize],
    dst: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let name = "cuda sum_to_shape";
    check_len(name, "the gradient", g, numel(name, out_shape)?)?;
    check_len(name, "the result", dst, numel(name, shape)?)?;
    if broadcast_shape(shape, out_shape).ok().as_deref() != Some(out_shape) {
        return Err(Error::shape(name, format!("{shape:?} does not broadcast to {out_shape:?}")));
    }
    if g.is_empty() || dst.is_empty() {
        // Nothing to read (the sums over empty axes are 0) or nothing to write.
        return fill(gpu, dst, 0.0);
    }
    // Groups of neighbouring axes that are all summed (true) or all kept (false); output
    // axes of size 1 are neither and drop out.
    let lead = out_shape.len() - shape.len();
    let mut groups: Vec<(usize, bool)> = Vec::new();
    for (i, &d) in out_shape.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let summed = i < lead || shape[i - lead] == 1;
        match groups.last_mut() {
            Some((size, s)) if *s == summed => *size *= d,
            _ => groups.push((d, summed)),
        }
    }
    if !groups.iter().any(|&(_, s)| s) {
        // Nothing was broadcast: the "sum" is a conversion to f32 (a column sum over one row).
        return reduce::sum_middle(gpu, g, 1, 1, g.len(), dst);
    }
    // Each step removes the innermost summed group: a row sum when it is the last group, a
    // sum over the middle axis of [before, group, after] otherwise. The first step reads g,
    // later ones the previous step's f32 result; the last step writes dst.
    let mut current: Option<DeviceBuffer<f32>> = None;
    loop {
        let i = groups.iter().rposition(|&(_, s)| s).expect("a summed group remains");
        let before: usize = groups[..i].iter().map(|g| g.0).product();
        let after: usize = groups[i + 1..].iter().map(|g| g.0).product();
        let size = groups[i].0;
        groups.remove(i);
        // Kept groups that became neighbours merge.
        if i > 0 && i < groups.len() && !groups[i - 1].1 && !groups[i].1 {
            groups[i - 1].0 *= groups[i].0;
            groups.remove(i);
        }
        let last_step = !groups.iter().any(|&(_, s)| s);
        let mut out = if last_step { None } else { Some(gpu.alloc::<f32>(before * after)?) };
        let target = match out.as_mut() {
            Some(buf) => buf,
            None => &mut *dst,
        };
        match &current {
            None if after == 1 => reduce::reduce_rows(gpu, reduce::RowReduction::Sum, g, before, size, target)?,
            None => reduce::sum_middle(gpu, g, before, size, after, target)?,
            Some(src) if after == 1 => reduce::reduce_rows(gpu, reduce::RowReduction::Sum, src, before, size, target)?,
            Some(src) => reduce::sum_middle(gpu, src, before, size, after, target)?,
        }
        if last_step {
            return Ok(());
        }
        current = out;
    }
}

// ---------------------------------------------------------------- casts, fill, axpby

/// y = bf16(x), rounding to nearest even.
pub fn cast_f32_to_bf16(gpu: &Gpu, x: &DeviceBuffer<f32>, y: &mut DeviceBuffer<bf16>) -> Result<()> {
    check_same_len("cuda cast_f32_to_bf16", "x and y", x, y)?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch("cast_f32_to_bf16", flat_config(n, 8), &cuda_args![x, y, n as i64])
}

/// y = f32(x) (exact).
pub fn cast_bf16_to_f32(gpu: &Gpu, x: &DeviceBuffer<bf16>, y: &mut DeviceBuffer<f32>) -> Result<()> {
    check_same_len("cuda cast_bf16_to_f32", "x and y", x, y)?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch("cast_bf16_to_f32", flat_config(n, 8), &cuda_args![x, y, n as i64])
}

/// Every element of `y` set to `value` (rounded to T).
pub fn fill<T: KernelFloat>(gpu: &Gpu, y: &mut DeviceBuffer<T>, value: f32) -> Result<()> {
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch(&kernel_name::<T>("fill"), flat_config(n, pack::<T>()), &cuda_args![y, n as i64, value])
}

/// y = a·x + b·y in place (gradient accumulation: a = 1, b = 1). With b = 0 the old y is not
/// read, so y may be uninitialised (and NaN in it does not propagate).
pub fn axpby<T: KernelFloat>(gpu: &Gpu, a: f32, x: &DeviceBuffer<T>, b: f32, y: &mut DeviceBuffer<T>) -> Result<()> {
    check_same_len("cuda axpby", "x and y", x, y)?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch(&kernel_name::<T>("axpby"), flat_config(n, pack::<T>()), &cuda_args![x, y, n as i64, a, b])
}

// ---------------------------------------------------------------- clamp_min

/// y = max(x, lo) elementwise (NaN becomes lo, as `f64::max`).
pub fn clamp_min<T: KernelFloat>(gpu: &Gpu, x: &DeviceBuffer<T>, lo: f32, y: &mut DeviceBuffer<T>) -> Result<()> {
    check_same_len("cuda clamp_min", "x and y", x, y)?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch(&kernel_name::<T>("clamp_min"), flat_config(n, pack::<T>()), &cuda_args![x, y, n as i64, lo])
}

/// The gradient of [`clamp_min`]: dx = dy where x > lo, else 0 (`x` the forward's input or
/// output: both exceed lo at the same places).
pub fn clamp_min_backward<T: KernelFloat>(
    gpu: &Gpu,
    dy: &DeviceBuffer<T>,
    x: &DeviceBuffer<T>,
    lo: f32,
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = "cuda clamp_min_backward";
    check_same_len(name, "dy and x", dy, x)?;
    check_same_len(name, "dy and dx", dy, dx)?;
    let n = dy.len();
    if n == 0 {
        return Ok(());
    }
    gpu.launch(&kernel_name::<T>("clamp_min_bwd"), flat_config(n, pack::<T>()), &cuda_args![dy, x, dx, n as i64, lo])
}

// ---------------------------------------------------------------- views, index_select, gather

use crate::backend::cuda::DeviceElement;

/// The suffix of the kernels that only move elements, by element size (they copy bits, so
/// one instantiation serves every dtype of that size).
fn bits_suffix<T: DeviceElement>(op: &'static str) -> Result<&'static str> {
    match std::mem::size_of::<T>() {
        1 => Ok("b1"),
        2 => Ok("b2"),
        4 => Ok("b4"),
        8 => Ok("b8"),
        s => Err(Error::dtype(op, format!("no copy kernel for {s}-byte elements"))),
    }
}

/// The largest element offset Σ (dᵢ − 1)·sᵢ a view of `shape` with `strides` reaches
/// (`None` on overflow); `shape` must have no zero dims.
fn reach(shape: &[usize], strides: &[usize]) -> Option<usize> {
    shape.iter().zip(strides).try_fold(0usize, |acc, (&d, &s)| (d - 1).checked_mul(s)?.checked_add(acc))
}

/// y[y_offset + Σ cᵢ·y_stridesᵢ] = x[Σ cᵢ·x_stridesᵢ] for every coordinate c of `shape`: copies a
/// strided view of `x` into a strided view of `y` (the rest of `y` is left as it is), for any
/// element type. `cat` writes each input into its slab of the output with it; narrow's backward
/// writes the gradient into its window of a zeroed buffer. The destination view must not
/// repeat an element (no stride 0 on a dim longer than 1), or threads would race on it.
pub fn copy_view<T: DeviceElement>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    x_strides: &[usize],
    shape: &[usize],
    y: &mut DeviceBuffer<T>,
    y_offset: usize,
    y_strides: &[usize],
) -> Result<()> {
    let name = "cuda copy_view";
    let suffix = bits_suffix::<T>(name)?;
    let rank = shape.len();
    if x_strides.len() != rank || y_strides.len() != rank {
        return Err(Error::shape(
            name,
            format!("{} and {} strides for a shape of rank {rank}", x_strides.len(), y_strides.len()),
        ));
    }
    let n = numel(name, shape)?;
    if n == 0 {
        return Ok(());
    }
    if shape.iter().zip(y_strides).any(|(&d, &s)| d > 1 && s == 0) {
        return Err(Error::invalid(name, format!("the destination strides {y_strides:?} repeat elements")));
    }
    let (last_x, last_y) = (reach(shape, x_strides), reach(shape, y_strides).and_then(|r| r.checked_add(y_offset)));
    for (what, last, len) in [("x", last_x, x.len()), ("y", last_y, y.len())] {
        if last.is_none_or(|last| last >= len) {
            return Err(Error::shape(
                name,
                format!("{what} has {len} elements but shape {shape:?} with its strides reaches beyond them"),
            ));
        }
    }
    let c = collapse(shape, x_strides, y_strides);
    let nd = c.dims.len();
    if nd > MAX_DIMS {
        return Err(Error::invalid(
            name,
            format!("{nd} dims remain after merging {shape:?}; the kernel takes at most {MAX_DIMS}"),
        ));
    }
    let narrow = [n - 1, last_x.unwrap_or(0), last_y.unwrap_or(0)].iter().all(|&v| v <= i32::MAX as usize);
    let pad = MAX_DIMS - nd;
    let slot = |v: &[usize], fill: usize| -> Vec<i64> {
        (0..MAX_DIMS).map(|i| if i < pad { fill } else { v[i - pad] } as i64).collect()
    };
    let mut args: Vec<Arg> = vec![Arg::from(x), Arg::Ptr(y.device_ptr_at(y_offset))];
    args.extend(cuda_args![n as i64, nd as i32, narrow as i32]);
    for v in [slot(&c.dims, 1), slot(&c.sa, 0), slot(&c.sb, 0)] {
        args.extend(v.into_iter().map(Arg::I64));
    }
    gpu.launch(&format!("view_copy_{suffix}"), flat_config(n, 1), &args)
}

/// `index_select` along the middle axis of a row-major `x: [outer, size, inner]`:
/// y[o, j, e] = x[o, idx[j], e], `y: [outer, idx.len(), inner]`, any element type. Every index
/// must be below `size` (checked by the caller, who holds the indices on the host; the kernel
/// trusts them).
pub fn index_select<T: DeviceElement>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    idx: &DeviceBuffer<i64>,
    (outer, size, inner): (usize, usize, usize),
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = "cuda index_select";
    let suffix = bits_suffix::<T>(name)?;
    let k = idx.len();
    check_len(name, "x", x, numel(name, &[outer, size, inner])?)?;
    check_len(name, "y", y, numel(name, &[outer, k, inner])?)?;
    if y.is_empty() {
        return Ok(());
    }
    let cfg = flat_config(y.len(), 1);
    let args = cuda_args![x, idx, y, outer as i64, size as i64, k as i64, inner as i64];
    gpu.launch(&format!("index_select_{suffix}"), cfg, &args)
}

/// The gradient of [`index_select`]: dx[o, s, e] = Σ g[o, j, e] over the positions j whose index
/// was s, `g: [outer, k, inner]`, `dx: [outer, size, inner]` (every element written, 0 where
/// nothing was selected). The selections arrive inverted, as CSR: `rows[offsets[s]..offsets[s+1]]`
/// are the j with idx[j] = s, in increasing order, so each sum runs in a fixed order.
pub fn index_add<T: KernelFloat>(
    gpu: &Gpu,
    g: &DeviceBuffer<T>,
    offsets: &DeviceBuffer<i64>,
    rows: &DeviceBuffer<i64>,
    (outer, size, inner): (usize, usize, usize),
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = "cuda index_add";
    let k = rows.len();
    check_len(name, "g", g, numel(name, &[outer, k, inner])?)?;
    check_len(name, "offsets", offsets, size + 1)?;
    check_len(name, "dx", dx, numel(name, &[outer, size, inner])?)?;
    if dx.is_empty() {
        return Ok(());
    }
    let cfg = flat_config(dx.len(), 1);
    let args = cuda_args![g, offsets, rows, dx, outer as i64, size as i64, k as i64, inner as i64];
    gpu.launch(&kernel_name::<T>("index_add"), cfg, &args)
}

/// The shapes of a gather (at most [`MAX_DIMS`] axes): `x` of shape `in_shape` read through
/// `x_strides`, `idx` and the output of shape `out_shape` (row-major), along `axis`.
fn gather_args(
    name: &'static str,
    in_shape: &[usize],
    out_shape: &[usize],
    x_strides: &[usize],
    axis: usize,
) -> Result<Vec<Arg>> {
    let rank = in_shape.len();
    if out_shape.len() != rank || x_strides.len() != rank || axis >= rank {
        return Err(Error::shape(name, format!("shapes {in_shape:?}, {out_shape:?} and axis {axis} do not agree")));
    }
    if rank > MAX_DIMS {
        return Err(Error::invalid(name, format!("rank {rank} exceeds the kernel's {MAX_DIMS} dims")));
    }
    if (0..rank).any(|a| a != axis && out_shape[a] > in_shape[a]) {
        return Err(Error::shape(name, format!("index {out_shape:?} exceeds input {in_shape:?} off axis {axis}")));
    }
    let pad = MAX_DIMS - rank;
    let mut args = vec![Arg::I64(numel(name, out_shape)? as i64), Arg::I32((axis + pad) as i32)];
    for (v, fill) in [(out_shape, 1), (in_shape, 1), (x_strides, 0)] {
        args.extend((0..MAX_DIMS).map(|i| Arg::I64(if i < pad { fill } else { v[i - pad] } as i64)));
    }
    Ok(args)
}

/// `torch.gather` along `axis`: y[c] = x[c with c_axis = idx[c]] for every c of `out_shape`
/// (`idx` and `y` row-major of that shape; `x` of `in_shape` read through `x_strides`; off the
/// axis `out_shape` may be smaller than `in_shape`). Any element type. Every index must be in
/// `0..in_shape[axis]` (checked by the caller; the kernel trusts them).
#[allow(clippy::too_many_arguments)]
pub fn gather<T: DeviceElement>(
    gpu: &Gpu,
    x: &DeviceBuffer<T>,
    in_shape: &[usize],
    x_strides: &[usize],
    idx: &DeviceBuffer<i64>,
    out_shape: &[usize],
    axis: usize,
    y: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = "cuda gather";
    let suffix = bits_suffix::<T>(name)?;
    let args = gather_args(name, in_shape, out_shape, x_strides, axis)?;
    let n = numel(name, out_shape)?;
    check_len(name, "idx", idx, n)?;
    check_len(name, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    if numel(name, in_shape)? == 0 || reach(in_shape, x_strides).is_none_or(|r| r >= x.len()) {
        return Err(Error::shape(
            name,
            format!("x ({} elements) does not hold {in_shape:?} with its strides", x.len()),
        ));
    }
    let args = [&cuda_args![x, idx, y][..], &args].concat();
    gpu.launch(&format!("gather_{suffix}"), flat_config(n, 1), &args)
}

/// The gradient of [`gather`]: dx (row-major, `in_shape`) = Σ of the `g` (row-major,
/// `out_shape`) elements gathered from each position, in f32 and in index order (no atomics);
/// 0 where nothing was gathered.
pub fn gather_backward<T: KernelFloat>(
    gpu: &Gpu,
    g: &DeviceBuffer<T>,
    idx: &DeviceBuffer<i64>,
    out_shape: &[usize],
    in_shape: &[usize],
    axis: usize,
    dx: &mut DeviceBuffer<T>,
) -> Result<()> {
    let name = "cuda gather_backward";
    let zeros = vec![0; in_shape.len()];
    let mut args = gather_args(name, in_shape, out_shape, &zeros, axis)?;
    let n = numel(name, in_shape)?;
    check_len(name, "g", g, numel(name, out_shape)?)?;
    check_len(name, "idx", idx, g.len())?;
    check_len(name, "dx", dx, n)?;
    if n == 0 {
        return Ok(());
    }
    args[0] = Arg::I64(n as i64);
    let args = [&cuda_args![g, idx, dx][..], &args].concat();
    gpu.launch(&kernel_name::<T>("gather_backward"), flat_config(n, 1), &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_merges_contiguous_and_broadcast_runs() {
        // [N, C, H, W] + [1, C, 1, 1] → [N, C, H·W].
        let (n, ch, h, w) = (2, 3, 4, 5);
        let out = [n, ch, h, w];
        let sa = broadcast_strides(&out, &out);
        let sb = broadcast_strides(&[1, ch, 1, 1], &out);
        let c = collapse(&out, &sa, &sb);
        assert_eq!(c, Collapsed { dims: vec![n, ch, h * w], sa: vec![ch * h * w, h * w, 1], sb: vec![0, 1, 0] });
        // Same shapes collapse to one contiguous dim; size-1 dims vanish.
        let c = collapse(&[3, 1, 7], &[7, 7, 1], &[7, 7, 1]);
        assert_eq!(c, Collapsed { dims: vec![21], sa: vec![1], sb: vec![1] });
        // A scalar operand: stride 0 everywhere.
        let c = collapse(&[5, 6], &[6, 1], &[0, 0]);
        assert_eq!(c, Collapsed { dims: vec![30], sa: vec![1], sb: vec![0] });
    }

    #[test]
    fn broadcast_shapes_follow_numpy() {
        assert_eq!(broadcast_shape(&[4, 1, 3], &[5, 1]).unwrap(), vec![4, 5, 3]);
        assert_eq!(broadcast_shape(&[], &[2]).unwrap(), vec![2]);
        assert!(broadcast_shape(&[3], &[4]).is_err());
    }
}
