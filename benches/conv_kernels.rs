//! Convolution kernel microbenchmark (kernels/conv.cu, bf16 tensor cores): every distinct conv
//! layer shape of ResNet-18 and ResNet-50 at 128×128 and 224×224 frames, forward, input gradient
//! and weight gradient timed separately, in TFLOP/s and against PyTorch's conv2d (cuDNN, bf16,
//! channels_last, cudnn.benchmark) measured by tools/gpu/torch_conv.py on the same GPU.
//!
//! Batch: the training loop folds frames into the batch (the encoder sees B·T images per view);
//! B = 256 clips × T = 20 frames is far beyond one launch's memory at 224×224, so the benchmark
//! uses 32 clips × 20 frames = 640 images (`SIMCLR_CONV_BATCH` overrides). At the end it prints,
//! per image size, ResNet-18's time-weighted total: Σ over its conv layers (with multiplicity) of
//! fwd + dgrad + wgrad time, ours against cuDNN's — the figure the 80 % target is about.
//!
//! On the GPU machine (built by tools/gpu/prepare.sh):
//!   python3 tools/gpu/torch_conv.py --out torch_conv.json
//!   SIMCLR_TORCH_REFERENCE=torch_conv.json cargo bench --features cuda --bench conv_kernels
//! `SIMCLR_BENCH_EMULATED=1` runs ResNet-18's shapes on 16×16 images, one image, channels ÷ 32, on
//! the kernel emulator: it proves the benchmark runs; its timings mean nothing.

mod common;

use common::gpu::GpuBench;
use std::collections::BTreeMap;

use half::bf16;
use simclr::backend::cuda::kernels::conv::{self, ConvEpilogue, ConvShape};
use simclr::backend::cuda::{set_deterministic, DeviceBuffer, Gpu};
use simclr::{Result, Rng};

/// Images per launch on the GPU: 32 clips × 20 frames (see the module doc).
const DEFAULT_BATCH: usize = 640;
const IMAGE_SIZES: &[usize] = &[128, 224];

/// One conv layer of a ResNet: its shape and how many layers of the network share it.
#[derive(Clone, Copy)]
struct Layer {
    shape: ConvShape,
    count: usize,
}

/// The case name shared with tools/gpu/torch_conv.py: `conv/{h}x{w}x{c}->{k}/{r}x{s}s{stride}/n{n}`.
fn case_name(s: &ConvShape) -> String {
    format!("conv/{}x{}x{}->{}/{}x{}s{}/n{}", s.h, s.w, s.c, s.k, s.r, s.s, s.stride, s.n)
}

/// The conv layers of torchvision's ResNet-18/50 (as src/nn/resnet.rs builds them: stride on the
/// 3×3 of a bottleneck, a 1×1 downsample where the stride or width changes) on `size`² images,
/// channel counts divided by `shrink`, grouped by shape with multiplicities, in network order.
fn resnet_layers(depth: usize, size: usize, batch: usize, shrink: usize) -> Vec<Layer> {
    let (blocks, bottleneck) = match depth {
        18 => ([2, 2, 2, 2], false),
        _ => ([3, 4, 6, 3], true),
    };
    let ch = |c: usize| (c / shrink).max(8);
    let mut layers: Vec<Layer> = Vec::new();
    let mut add = |h: usize, c: usize, k: usize, r: usize, stride: usize, pad: usize| -> usize {
        let shape = ConvShape { n: batch, h, w: h, c, k, r, s: r, stride, pad };
        match layers.iter_mut().find(|l| l.shape == shape) {
            Some(l) => l.count += 1,
            None => layers.push(Layer { shape, count: 1 }),
        }
        shape.p()
    };
    let stem = add(size, 3, ch(64), 7, 2, 3);
    let mut h = (stem + 2 - 3) / 2 + 1; // 3×3/2 max pool, pad 1
    let mut cin = ch(64);
    for (stage, &n_blocks) in blocks.iter().enumerate() {
        let planes = ch(64 << stage);
        for b in 0..n_blocks {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let (out_h, cout) = if bottleneck {
                add(h, cin, planes, 1, 1, 0);
                let o = add(h, planes, planes, 3, stride, 1);
                add(o, planes, 4 * planes, 1, 1, 0);
                (o, 4 * planes)
            } else {
                let o = add(h, cin, planes, 3, stride, 1);
                add(o, planes, planes, 3, 1, 1);
                (o, planes)
            };
            if stride != 1 || cin != cout {
                add(h, cin, cout, 1, stride, 0);
            }
            h = out_h;
            cin = cout;
        }
    }
    layers
}

type Bench = GpuBench;

/// Our and cuDNN's milliseconds for one shape's three passes (cuDNN's where measured).
#[derive(Clone, Copy, Default)]
struct Times {
    ours: [f64; 3],
    torch: Option<[f64; 3]>,
}

const PASSES: [&str; 3] = ["fwd", "dgrad", "wgrad"];

impl Bench {
    fn torch_times(&self, case: &str) -> Option<[f64; 3]> {
        let c = self.torch.get(case)?;
        let get = |k: &str| c.get(format!("{k}_ms"))?.as_f64();
        Some([get("fwd")?, get("dgrad")?, get("wgrad")?])
    }

    fn run_case(&self, s: &ConvShape) -> Result<Times> {
        let x = random(&self.gpu, s.input_len(), 1)?;
        let w = random(&self.gpu, s.weight_len(), 2)?;
        let dy = random(&self.gpu, s.output_len(), 3)?;
        let mut y = self.gpu.alloc::<bf16>(s.output_len())?;
        let mut dx = self.gpu.alloc::<bf16>(s.input_len())?;
        let mut dw = self.gpu.alloc::<f32>(s.weight_len())?;
        let ours = [
            self.time(|| conv::conv2d_forward(&self.gpu, s, &x, &w, ConvEpilogue::default(), &mut y))?,
            self.time(|| conv::conv2d_backward_input(&self.gpu, s, &dy, &w, &mut dx))?,
            self.time(|| conv::conv2d_backward_weight(&self.gpu, s, &x, &dy, &mut dw))?,
        ];
        // The weight gradient again on the atomic path: what deterministic mode (the default,
        // fixed-order split sums) costs.
        set_deterministic(false);
        let wgrad_atomic = self.time(|| conv::conv2d_backward_weight(&self.gpu, s, &x, &dy, &mut dw));
        set_deterministic(true);
        let wgrad_atomic = wgrad_atomic?;
        let case = case_name(s);
        let t = Times { ours, torch: self.torch_times(&case) };
        let flops = s.flops();
        let cols: Vec<String> = (0..3)
            .map(|i| {
                let tf = flops / t.ours[i] / 1e9;
                match t.torch {
                    Some(tt) => {
                        format!("{} {:7.3} ms {:6.1} TF/s ({:4.2}x)", PASSES[i], t.ours[i], tf, tt[i] / t.ours[i])
                    }
                    None => format!("{} {:7.3} ms {:6.1} TF/s (  - )", PASSES[i], t.ours[i], tf),
                }
            })
            .collect();
        println!(
            "{case:<42} {}  wgrad atomic {wgrad_atomic:7.3} ms (deterministic {:+5.1} %)",
            cols.join("  "),
            100.0 * (t.ours[2] / wgrad_atomic - 1.0)
        );
        Ok(t)
    }
}

fn random(gpu: &Gpu, n: usize, seed: u64) -> Result<DeviceBuffer<bf16>> {
    let mut rng = Rng::new(seed);
    let host: Vec<bf16> = (0..n).map(|_| bf16::from_f64(rng.normal())).collect();
    gpu.upload(&host)
}

fn main() -> Result<()> {
    common::print_header("conv kernel microbenchmark", &["kernels", "src/backend/cuda", "benches/conv_kernels.rs"]);
    let b = GpuBench::open("tools/gpu/torch_conv.py")?;
    let emulated = b.emulated;
    let batch = std::env::var("SIMCLR_CONV_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_BATCH);
    println!("conv kernels (bf16 in, f32 accumulate; dW in f32) on {}", b.gpu.name());
    println!("per pass: our median time, TFLOP/s, and cuDNN time / our time (above 1: we are faster)");

    // (depth, image size, batch, channel divisor)
    let configs: Vec<(usize, usize, usize, usize)> = if emulated {
        vec![(18, 16, 1, 32)]
    } else {
        IMAGE_SIZES.iter().flat_map(|&s| [(18, s, batch, 1), (50, s, batch, 1)]).collect()
    };
    let mut measured: BTreeMap<String, Times> = BTreeMap::new();
    for &(depth, size, n, shrink) in &configs {
        println!("\n== ResNet-{depth}, {n} images of {size}x{size}");
        let layers = resnet_layers(depth, size, n, shrink);
        for l in &layers {
            if let std::collections::btree_map::Entry::Vacant(slot) = measured.entry(case_name(&l.shape)) {
                slot.insert(b.run_case(&l.shape)?);
            }
        }
        // Time-weighted total over the network's layers (each shape × its multiplicity).
        let (mut ours, mut theirs, mut flops, mut complete) = (0.0, 0.0, 0.0, true);
        for l in &layers {
            let t = measured[&case_name(&l.shape)];
            ours += l.count as f64 * t.ours.iter().sum::<f64>();
            flops += 3.0 * l.count as f64 * l.shape.flops();
            match t.torch {
                Some(tt) => theirs += l.count as f64 * tt.iter().sum::<f64>(),
                None => complete = false,
            }
        }
        let versus = if complete && theirs > 0.0 {
            format!("cuDNN {theirs:.2} ms: {:.1} % of cuDNN's throughput", 100.0 * theirs / ours)
        } else {
            "cuDNN -".into()
        };
        println!(
            "ResNet-{depth} {size}x{size} all conv layers, fwd+dgrad+wgrad: ours {ours:.2} ms ({:.1} TFLOP/s)  {versus}",
            flops / ours / 1e9
        );
    }
    Ok(())
}
