//! Fused flash-attention microbenchmark (kernels/attention.cu) at ViViT's training shapes.
//!
//! ViViT's spatial transformer attends within each temporal slice: a batch of 256 clips of 20
//! frames cut into tubelets of 2 frames × 16² pixels gives 256·10 = 2560 sequences of
//! (H/16)² + 1 tokens (65 at 128², 197 at 224²), with 3/6/12 heads of 64 dims (tiny/small/base).
//! Per case it prints the GPU time of the forward and of forward + backward (median of
//! CUDA-event-timed repetitions after warm-up), TFLOP/s counted as FlashAttention does
//! (forward 4·BH·L·S·D, backward 2.5× that; padding and recomputation are not counted), and —
//! where tools/gpu/torch_attention.py measured the same case in the same run and
//! `SIMCLR_TORCH_REFERENCE` names its JSON — the ratio of our throughput to PyTorch's
//! `scaled_dot_product_attention` with the flash backend (above 1: we are faster).
//!
//! Runs on a GPU machine:
//!   python3 tools/gpu/torch_attention.py --out torch_attention.json
//!   SIMCLR_TORCH_REFERENCE=torch_attention.json cargo bench --features cuda --bench attention_kernels
//! `SIMCLR_BENCH_EMULATED=1` runs every case at a tiny size (one head, 17 tokens) on the kernel
//! emulator instead, to check the benchmark itself before GPU time is spent; its timings mean
//! nothing.

mod common;

use common::gpu::GpuBench;

use half::bf16;
use simclr::backend::cuda::kernels::attention::{
    flash_attention_backward, flash_attention_forward, AttentionSaved, AttentionShape,
};
use simclr::backend::cuda::{set_deterministic, DeviceBuffer, Gpu};
use simclr::nn::vivit::VivitConfig;
use simclr::{Result, Rng};

/// Clips per batch and frames per clip of the training runs.
const BATCH: usize = 256;
const FRAMES: usize = 20;
/// The cases, shared with tools/gpu/torch_attention.py (case names must match).
const MODELS: &[&str] = &["vivit_tiny", "vivit_small", "vivit_base"];
const IMAGES: &[usize] = &[128, 224];

type Bench = GpuBench;

impl Bench {
    fn torch_ms(&self, case: &str, key: &str) -> Option<f64> {
        self.torch.get(case)?.get(key)?.as_f64()
    }
}

fn random(gpu: &Gpu, n: usize, seed: u64) -> Result<DeviceBuffer<bf16>> {
    let mut rng = Rng::new(seed);
    let host: Vec<bf16> = (0..n).map(|_| bf16::from_f64(rng.normal())).collect();
    gpu.upload(&host)
}

/// The spatial attention of one model at one clip size: (sequences·heads, tokens, head dim).
fn vivit_shape(model: &str, image: usize) -> Result<AttentionShape> {
    let c = VivitConfig::named(model, FRAMES, image)?;
    let sequences = BATCH * (c.frames / c.tubelet_frames);
    let tokens = (c.image / c.patch).pow(2) + 1; // + CLS
    Ok(AttentionShape { batch_heads: sequences * c.heads, q_len: tokens, kv_len: tokens, head_dim: c.dim / c.heads })
}

fn case(b: &Bench, model: &str, image: usize) -> Result<()> {
    let name = format!("attention/bf16/{model}/{FRAMES}x{image}x{image}");
    let mut shape = vivit_shape(model, image)?;
    if b.emulated {
        shape = AttentionShape { batch_heads: 1, q_len: 17, kv_len: 17, ..shape };
    }
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let gpu = &b.gpu;
    let (q, k, v) =
        (random(gpu, shape.q_elems(), 1)?, random(gpu, shape.kv_elems(), 2)?, random(gpu, shape.kv_elems(), 3)?);
    let dout = random(gpu, shape.q_elems(), 4)?;
    let mut out = gpu.alloc::<bf16>(shape.q_elems())?;
    let mut lse = gpu.alloc::<f32>(shape.lse_elems())?;
    let (mut dq, mut dk, mut dv) = (
        gpu.alloc::<bf16>(shape.q_elems())?,
        gpu.alloc::<bf16>(shape.kv_elems())?,
        gpu.alloc::<bf16>(shape.kv_elems())?,
    );

    let fwd_ms = b.time(|| flash_attention_forward(gpu, shape, scale, &q, &k, &v, &mut out, &mut lse))?;
    let mut fwd_bwd = || {
        flash_attention_forward(gpu, shape, scale, &q, &k, &v, &mut out, &mut lse)?;
        let saved = AttentionSaved { q: &q, k: &k, v: &v, out: &out, lse: &lse };
        flash_attention_backward(gpu, shape, scale, saved, &dout, &mut dq, &mut dk, &mut dv)
    };
    let total_ms = b.time(&mut fwd_bwd)?;
    // Again with dQ summed by atomics: the cost of deterministic mode (the default).
    set_deterministic(false);
    let atomic_ms = b.time(&mut fwd_bwd);
    set_deterministic(true);
    let atomic_ms = atomic_ms?;

    let fwd_flops = 4.0 * (shape.batch_heads * shape.q_len * shape.kv_len * shape.head_dim) as f64;
    let total_flops = 3.5 * fwd_flops;
    let tflops = |flops: f64, ms: f64| flops / ms / 1e9;
    let vs = |key: &str, ms: f64| {
        b.torch_ms(&name, key).map_or("torch -".to_string(), |t| {
            format!(
                "torch {t:8.3} ms {:6.1} TFLOP/s  ours/torch {:5.2}x",
                tflops(if key == "fwd_ms" { fwd_flops } else { total_flops }, t),
                t / ms
            )
        })
    };
    println!("{name:<38} BH {:>6} L {:>4} D {:>3}", shape.batch_heads, shape.q_len, shape.head_dim);
    println!("{:<38} fwd     {fwd_ms:9.3} ms {:6.1} TFLOP/s  {}", "", tflops(fwd_flops, fwd_ms), vs("fwd_ms", fwd_ms));
    println!(
        "{:<38} fwd+bwd {total_ms:9.3} ms {:6.1} TFLOP/s  {}",
        "",
        tflops(total_flops, total_ms),
        vs("ms", total_ms)
    );
    println!(
        "{:<38} fwd+bwd with atomic dQ {atomic_ms:9.3} ms (deterministic {:+5.1} %)",
        "",
        100.0 * (total_ms / atomic_ms - 1.0)
    );
    Ok(())
}

fn main() -> Result<()> {
    common::print_header(
        "flash attention microbenchmark",
        &["kernels", "src/backend/cuda", "benches/attention_kernels.rs"],
    );
    let b = GpuBench::open("tools/gpu/torch_attention.py")?;
    println!("# PyTorch side: SDPA with the flash backend forced");
    println!("# times: median of 20 CUDA-event-timed runs after 3 warm-ups; FLOPs: fwd 4·BH·L²·D, bwd 2.5× fwd");
    println!("# target: fwd+bwd at least 0.80x PyTorch's throughput");
    println!();
    for &model in MODELS {
        for &image in IMAGES {
            case(&b, model, image)?;
        }
    }
    let stats = b.gpu.memory_stats();
    println!();
    println!(
        "# allocator: peak {:.1} MiB in use, {:.1} MiB reserved",
        stats.peak_in_use_bytes as f64 / (1 << 20) as f64,
        stats.peak_reserved_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
