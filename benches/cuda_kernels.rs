//! CUDA kernel microbenchmarks: each hand-written kernel family at training-size shapes.
//!
//! Prints, per case, the GPU time (median of CUDA-event-timed repetitions after warm-up), the
//! bytes it must move at least, the achieved GB/s as a fraction of the device-to-device copy
//! bandwidth measured at the start of the same run, and — where tools/gpu/torch_kernels.py
//! measured the same case in the same call and `SIMCLR_TORCH_REFERENCE` names its JSON — the
//! ratio PyTorch time / our time (above 1: we are faster).
//!
//! Runs on a GPU machine through tools/gpu/run.sh (built here by tools/gpu/prepare.sh):
//!   SIMCLR_TORCH_REFERENCE=torch_kernels.json cargo bench --features cuda --bench cuda_kernels
//! `SIMCLR_BENCH_EMULATED=1` runs every case at tiny sizes on the kernel emulator instead: it
//! checks the benchmark itself works before GPU time is spent on it; its timings mean nothing.

mod common;

use common::gpu::GpuBench;

use half::bf16;
use simclr::backend::cuda::kernels::batchnorm::{self, BatchNormSaved, RunningStats};
use simclr::backend::cuda::kernels::elementwise::{self, Binary, Unary};
use simclr::backend::cuda::kernels::layernorm;
use simclr::backend::cuda::kernels::nt_xent::NtXent;
use simclr::backend::cuda::kernels::optim::{AdamConfig, AdamTensor, FusedAdam, FusedLars, LarsConfig, LarsTensor};
use simclr::backend::cuda::kernels::reduce::{self, RowReduction};
use simclr::backend::cuda::kernels::softmax;
use simclr::backend::cuda::kernels::KernelFloat;
use simclr::backend::cuda::{gemm, DeviceBuffer, GemmShape, Gpu};
use simclr::nn::resnet::{Depth, ResNet, ResNetConfig};
use simclr::{DType, Result, Rng};

/// The shapes, shared with tools/gpu/torch_kernels.py (case names must match).
const LAYER_NORM_SHAPES: &[(usize, usize)] = &[(65536, 192), (32768, 384), (16384, 768), (8192, 1000)];
const SOFTMAX_SHAPES: &[(usize, usize)] = &[(16384, 1024), (65536, 197)];
const NT_XENT_ROWS: &[usize] = &[512, 2048, 8192];
const BATCH_NORM_SHAPES: &[[usize; 4]] = &[[256, 64, 32, 32], [256, 256, 8, 8]];

struct Bench {
    base: GpuBench,
    /// Device-to-device copy bandwidth, measured first: the roofline of the memory-bound kernels.
    copy_gbps: f64,
}

impl std::ops::Deref for Bench {
    type Target = GpuBench;
    fn deref(&self) -> &GpuBench {
        &self.base
    }
}

impl Bench {
    /// Sizes shrink 256-fold on the emulator (it runs one OS thread per CUDA thread).
    fn size(&self, n: usize) -> usize {
        if self.emulated {
            (n / 256).max(2)
        } else {
            n
        }
    }

    fn torch_ms(&self, case: &str, key: &str) -> Option<f64> {
        self.torch.get(case)?.get(key)?.as_f64()
    }

    /// One result line: time, bytes, GB/s, fraction of copy bandwidth, ratio to PyTorch.
    fn report(&self, case: &str, ms: f64, bytes: f64) {
        let gbps = bytes / ms / 1e6;
        let torch = match self.torch_ms(case, "ms") {
            Some(t) => format!("torch {t:8.3} ms  ours/torch speed {:5.2}x", t / ms),
            None => "torch -".into(),
        };
        println!(
            "{case:<34} {ms:9.3} ms  {:8.1} MB  {gbps:7.0} GB/s  {:5.1}% of copy  {torch}",
            bytes / 1e6,
            100.0 * gbps / self.copy_gbps
        );
    }
}

fn random<T: KernelFloat>(gpu: &Gpu, n: usize, seed: u64) -> Result<DeviceBuffer<T>> {
    let mut rng = Rng::new(seed);
    let host: Vec<T> = (0..n).map(|_| T::from_f64(rng.normal())).collect();
    gpu.upload(&host)
}

fn uniform(gpu: &Gpu, n: usize, lo: f64, hi: f64, seed: u64) -> Result<DeviceBuffer<f32>> {
    let mut rng = Rng::new(seed);
    let host: Vec<f32> = (0..n).map(|_| rng.uniform_range(lo, hi) as f32).collect();
    gpu.upload(&host)
}

fn copy_bandwidth(b: &mut Bench) -> Result<()> {
    let n = b.size(1 << 28);
    let src = random::<f32>(&b.gpu, n, 1)?;
    let mut dst = b.gpu.alloc::<f32>(n)?;
    let ms = b.time(|| b.gpu.copy(&src, &mut dst))?;
    let bytes = 2.0 * 4.0 * n as f64;
    b.copy_gbps = bytes / ms / 1e6;
    let torch = b.torch_ms("copy", "gbps").map(|g| format!("  (torch copy_: {g:.0} GB/s)")).unwrap_or_default();
    println!("{:<34} {ms:9.3} ms  {:8.1} MB  {:7.0} GB/s{torch}", "copy/f32 (read+write)", bytes / 1e6, b.copy_gbps);
    Ok(())
}

fn gemm_throughput(b: &Bench) -> Result<()> {
    let n = if b.emulated { 64 } else { 8192 };
    let shape = GemmShape { m: n, n, k: n, trans_a: false, trans_b: false };
    let flops = 2.0 * (n as f64).powi(3);
    fn one<T: KernelFloat>(b: &Bench, shape: GemmShape, flops: f64) -> Result<()> {
        let n = shape.m;
        let (x, y) = (random::<T>(&b.gpu, n * n, 2)?, random::<T>(&b.gpu, n * n, 3)?);
        let mut c = b.gpu.alloc::<T>(n * n)?;
        let ms = b.time(|| gemm(&b.gpu, shape, 1.0, &x, &y, 0.0, &mut c))?;
        println!(
            "{:<34} {ms:9.3} ms  {:7.1} TFLOP/s (cuBLAS, the matrix ceiling)",
            format!("gemm/{}/{n}^3", T::SUFFIX),
            flops / ms / 1e9
        );
        Ok(())
    }
    one::<f32>(b, shape, flops)?;
    one::<bf16>(b, shape, flops)
}

fn layer_norm_case<T: KernelFloat>(b: &Bench, rows: usize, cols: usize) -> Result<()> {
    let case = format!("layer_norm/{}/{rows}x{cols}", T::SUFFIX);
    let rows = b.size(rows);
    let n = rows * cols;
    let (x, dy) = (random::<T>(&b.gpu, n, 4)?, random::<T>(&b.gpu, n, 5)?);
    let (gamma, beta) = (uniform(&b.gpu, cols, 0.5, 1.5, 6)?, uniform(&b.gpu, cols, -0.5, 0.5, 7)?);
    let mut y = b.gpu.alloc::<T>(n)?;
    let mut dx = b.gpu.alloc::<T>(n)?;
    let (mut mean, mut rstd) = (b.gpu.alloc::<f32>(rows)?, b.gpu.alloc::<f32>(rows)?);
    let (mut dgamma, mut dbeta) = (b.gpu.alloc::<f32>(cols)?, b.gpu.alloc::<f32>(cols)?);
    let fwd = |y: &mut DeviceBuffer<T>, mean: &mut DeviceBuffer<f32>, rstd: &mut DeviceBuffer<f32>| {
        layernorm::layer_norm_forward(&b.gpu, &x, Some(&gamma), Some(&beta), y, mean, rstd, rows, cols, 1e-5)
    };
    let fwd_ms = b.time(|| fwd(&mut y, &mut mean, &mut rstd))?;
    let bwd_ms = b.time(|| {
        layernorm::layer_norm_backward(
            &b.gpu,
            &x,
            &dy,
            Some(&gamma),
            &mean,
            &rstd,
            &mut dx,
            Some(&mut dgamma),
            Some(&mut dbeta),
            rows,
            cols,
        )
    })?;
    // At least: forward reads x, writes y; backward reads x and dy, writes dx; 8 B of
    // statistics per row each way.
    let es = std::mem::size_of::<T>() as f64;
    let bytes = 5.0 * n as f64 * es + 16.0 * rows as f64;
    b.report(&case, fwd_ms + bwd_ms, bytes);
    let torch = |k| b.torch_ms(&case, k).map(|t| format!("{t:.3}")).unwrap_or("-".into());
    println!(
        "{:<34}   fwd {fwd_ms:.3} ms (torch {}), bwd {bwd_ms:.3} ms (torch {})",
        "",
        torch("fwd_ms"),
        torch("bwd_ms")
    );
    Ok(())
}

fn softmax_case<T: KernelFloat>(b: &Bench, rows: usize, cols: usize) -> Result<()> {
    let case = format!("softmax/{}/{rows}x{cols}", T::SUFFIX);
    let rows = b.size(rows);
    let n = rows * cols;
    let (x, dy) = (random::<T>(&b.gpu, n, 8)?, random::<T>(&b.gpu, n, 9)?);
    let (mut y, mut dx) = (b.gpu.alloc::<T>(n)?, b.gpu.alloc::<T>(n)?);
    let fwd_ms = b.time(|| softmax::softmax_forward(&b.gpu, &x, rows, cols, &mut y))?;
    let bwd_ms = b.time(|| softmax::softmax_backward(&b.gpu, &dy, &y, rows, cols, &mut dx))?;
    b.report(&case, fwd_ms + bwd_ms, 5.0 * n as f64 * std::mem::size_of::<T>() as f64);
    Ok(())
}

fn nt_xent_case(b: &Bench, rows: usize, dim: usize) -> Result<()> {
    let case = format!("nt_xent/f32/{rows}x{dim}");
    let rows = if b.emulated { (rows / 64).max(2) } else { rows };
    let z = random::<f32>(&b.gpu, rows * dim, 10)?;
    let ms = b.time(|| {
        let (_loss, saved) = NtXent::forward_on_device(&b.gpu, &z, rows / 2, dim, 0.5, true)?;
        NtXent::backward(saved.expect("asked for the gradient"), 1.0).map(drop)
    })?;
    // Bytes are not what bounds it: the 2N×2N matrix is written and read a few times, and two
    // GEMMs of 2N·2N·D multiply-adds each run on cuBLAS.
    let torch = |k| b.torch_ms(&case, k);
    let vs = |t: Option<f64>| t.map(|t| format!("{t:8.3} ms ({:5.2}x)", t / ms)).unwrap_or("-".into());
    println!(
        "{case:<34} {ms:9.3} ms  fwd+bwd   torch eager {}  torch.compile {}",
        vs(torch("ms")),
        vs(torch("compiled_ms"))
    );
    Ok(())
}

fn batch_norm_case(b: &Bench, shape: [usize; 4]) -> Result<()> {
    let case = format!("batch_norm/f32/{}", shape.map(|d| d.to_string()).join("x"));
    let shape = if b.emulated { [2, shape[1].min(8), shape[2], shape[3]] } else { shape };
    let c = shape[1];
    let n: usize = shape.iter().product();
    let (x, dy) = (random::<f32>(&b.gpu, n, 11)?, random::<f32>(&b.gpu, n, 12)?);
    let (gamma, beta) = (uniform(&b.gpu, c, 0.5, 1.5, 13)?, uniform(&b.gpu, c, -0.5, 0.5, 14)?);
    let (mut run_mean, mut run_var) = (b.gpu.zeros::<f32>(c)?, uniform(&b.gpu, c, 1.0, 1.0, 0)?);
    let (mut y, mut dx) = (b.gpu.alloc::<f32>(n)?, b.gpu.alloc::<f32>(n)?);
    let (mut mean, mut rstd) = (b.gpu.alloc::<f32>(c)?, b.gpu.alloc::<f32>(c)?);
    let (mut dgamma, mut dbeta) = (b.gpu.alloc::<f32>(c)?, b.gpu.alloc::<f32>(c)?);
    let ms = b.time(|| {
        let running = RunningStats { mean: &mut run_mean, var: &mut run_var, momentum: 0.1 };
        batchnorm::batch_norm_forward_train(
            &b.gpu,
            shape,
            &x,
            Some(&gamma),
            Some(&beta),
            1e-5,
            Some(running),
            &mut y,
            &mut mean,
            &mut rstd,
        )?;
        batchnorm::batch_norm_backward(
            &b.gpu,
            shape,
            &x,
            &dy,
            Some(&gamma),
            BatchNormSaved::Batch { mean: &mean, rstd: &rstd },
            &mut dx,
            Some(&mut dgamma),
            Some(&mut dbeta),
        )
    })?;
    // Forward reads x (statistics) and writes y; backward reads x and dy, writes dx.
    b.report(&case, ms, 5.0 * 4.0 * n as f64);
    Ok(())
}

/// The parameter sizes of a full-width ResNet-18 (11.2 M values in 62 tensors, fc dropped).
fn resnet18_sizes(emulated: bool) -> Result<Vec<usize>> {
    let config = ResNetConfig {
        depth: Depth::R18,
        width: if emulated { 0.125 } else { 1.0 },
        small_stem: false,
        num_classes: None,
    };
    let model = ResNet::new(config, DType::F32, &mut Rng::new(0))?;
    Ok(simclr::nn::parameters(&model).iter().map(|(_, p)| p.numel()).collect())
}

fn optimizer_cases(b: &Bench) -> Result<()> {
    let sizes = resnet18_sizes(b.emulated)?;
    let total: usize = sizes.iter().sum();
    let mut bufs = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let seed = 100 + 4 * i as u64;
        bufs.push((
            random::<f32>(&b.gpu, n, seed)?,
            random::<f32>(&b.gpu, n, seed + 1)?,
            b.gpu.zeros::<f32>(n)?,
            b.gpu.zeros::<f32>(n)?,
        ));
    }
    let mut adam = FusedAdam::new(AdamConfig::adamw(1e-3, 1e-4))?;
    let mut step = 0;
    let ms = b.time(|| {
        step += 1;
        let mut tensors: Vec<AdamTensor> =
            bufs.iter_mut().map(|(p, g, m, v)| AdamTensor { param: p, grad: g, m, v }).collect();
        adam.step(&b.gpu, &mut tensors, step)
    })?;
    // Reads w, g, m, v; writes w, m, v.
    b.report("adamw/f32/resnet18", ms, 7.0 * 4.0 * total as f64);
    if let (Some(f), Some(fe)) =
        (b.torch_ms("adamw/f32/resnet18", "fused_ms"), b.torch_ms("adamw/f32/resnet18", "foreach_ms"))
    {
        println!("{:<34}   torch fused {f:.3} ms ({:.2}x), foreach {fe:.3} ms ({:.2}x)", "", f / ms, fe / ms);
    }

    let mut lars = FusedLars::new(LarsConfig { lr: 0.3, momentum: 0.9, weight_decay: 1e-6, eta: 1e-3 })?;
    let ms = b.time(|| {
        let mut tensors: Vec<LarsTensor> = bufs
            .iter_mut()
            .zip(&sizes)
            .map(|((p, g, m, _), &n)| LarsTensor { param: p, grad: g, momentum: m, adapt: n > 4096 })
            .collect();
        lars.step(&b.gpu, &mut tensors)
    })?;
    // Norms read w and g; the update reads w, g, u and writes w, u.
    b.report("lars/f32/resnet18", ms, 7.0 * 4.0 * total as f64);
    Ok(())
}

fn elementwise_cases(b: &Bench) -> Result<()> {
    let n = b.size(1 << 27);
    let x = random::<f32>(&b.gpu, n, 20)?;
    let mut y = random::<f32>(&b.gpu, n, 21)?;
    let ms = b.time(|| elementwise::unary(&b.gpu, Unary::Relu, &x, &mut y))?;
    b.report("relu/f32/2^27", ms, 8.0 * n as f64);
    let ms = b.time(|| elementwise::unary(&b.gpu, Unary::GeluErf, &x, &mut y))?;
    b.report("gelu_erf/f32/2^27", ms, 8.0 * n as f64);
    let ms = b.time(|| elementwise::axpby(&b.gpu, 0.5, &x, 1.0, &mut y))?;
    b.report("axpby/f32/2^27", ms, 12.0 * n as f64);
    let mut h = b.gpu.alloc::<bf16>(n)?;
    let ms = b.time(|| elementwise::cast_f32_to_bf16(&b.gpu, &x, &mut h))?;
    b.report("cast_f32_to_bf16/2^27", ms, 6.0 * n as f64);

    // A [rows, cols] + [cols] broadcast (bias add) and its backward (column sums).
    let (rows, cols) = (b.size(1 << 17), 1024);
    let a = random::<f32>(&b.gpu, rows * cols, 22)?;
    let bias = random::<f32>(&b.gpu, cols, 23)?;
    let mut out = b.gpu.alloc::<f32>(rows * cols)?;
    let ms = b.time(|| {
        elementwise::binary_broadcast(&b.gpu, Binary::Add, &a, &[rows, cols], &bias, &[cols], &mut out).map(drop)
    })?;
    b.report(&format!("add_bias/f32/{rows}x{cols}"), ms, 8.0 * (rows * cols) as f64);
    let mut colsum = b.gpu.alloc::<f32>(cols)?;
    let ms = b.time(|| reduce::sum_cols(&b.gpu, &a, rows, cols, &mut colsum))?;
    b.report(&format!("sum_cols/f32/{rows}x{cols}"), ms, 4.0 * (rows * cols) as f64);
    let mut rowsum = b.gpu.alloc::<f32>(rows)?;
    let ms = b.time(|| reduce::reduce_rows(&b.gpu, RowReduction::Sum, &a, rows, cols, &mut rowsum))?;
    b.report(&format!("sum_rows/f32/{rows}x{cols}"), ms, 4.0 * (rows * cols) as f64);
    let mut total = b.gpu.alloc::<f32>(1)?;
    let ms = b.time(|| reduce::sum_squares_all(&b.gpu, &x, &mut total, 0))?;
    b.report("sum_squares_all/f32/2^27", ms, 4.0 * n as f64);
    Ok(())
}

fn main() -> Result<()> {
    common::print_header("CUDA kernel microbenchmarks", &["kernels", "src/backend/cuda", "benches/cuda_kernels.rs"]);
    let base = GpuBench::open("tools/gpu/torch_kernels.py")?;
    println!("# times: median of 20 CUDA-event-timed runs after 3 warm-ups; bytes: the least each case must move");
    println!();
    let mut b = Bench { base, copy_gbps: f64::NAN };
    copy_bandwidth(&mut b)?;
    gemm_throughput(&b)?;
    for &(rows, cols) in LAYER_NORM_SHAPES {
        layer_norm_case::<f32>(&b, rows, cols)?;
        layer_norm_case::<bf16>(&b, rows, cols)?;
    }
    for &(rows, cols) in SOFTMAX_SHAPES {
        softmax_case::<f32>(&b, rows, cols)?;
        softmax_case::<bf16>(&b, rows, cols)?;
    }
    for &rows in NT_XENT_ROWS {
        nt_xent_case(&b, rows, 128)?;
    }
    for &shape in BATCH_NORM_SHAPES {
        batch_norm_case(&b, shape)?;
    }
    optimizer_cases(&b)?;
    elementwise_cases(&b)?;
    let stats = b.gpu.memory_stats();
    println!();
    println!(
        "# allocator: peak {:.1} MiB in use, {:.1} MiB reserved, {} allocations, {} from the cache",
        stats.peak_in_use_bytes as f64 / (1 << 20) as f64,
        stats.peak_reserved_bytes as f64 / (1 << 20) as f64,
        stats.allocations,
        stats.cache_hits
    );
    Ok(())
}
