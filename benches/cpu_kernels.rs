//! CPU kernel benchmark: matmul and conv2d (forward, and forward + both
//! backward passes) at ResNet-18 layer shapes on 64×64 frames.
//!
//! Reference measured in the same run: a plain GEMM of the same M×N×K as the
//! convolution's im2col product, so `conv/gemm` shows what im2col, col2im and
//! the layout shuffles cost on top of the arithmetic.
//!
//! Run: `cargo bench --bench cpu_kernels` (tools/bench_cpu.sh saves the output
//! under benches/results/ with the machine, date and commit).

mod common;

use simclr::ops::conv2d::conv2d;
use simclr::{DType, Rng, Tensor};
use std::time::Instant;

/// Median seconds of `f` over enough repetitions to take ~0.5 s (at least 3).
fn time(mut f: impl FnMut()) -> f64 {
    f(); // warm-up: allocator, thread pool
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || (start.elapsed().as_secs_f64() < 0.5 && samples.len() < 50) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

struct ConvShape {
    name: &'static str,
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

const RESNET18_64PX: &[ConvShape] = &[
    ConvShape { name: "conv1 7x7/2", cin: 3, cout: 64, hw: 64, k: 7, stride: 2, pad: 3 },
    ConvShape { name: "layer1 3x3", cin: 64, cout: 64, hw: 16, k: 3, stride: 1, pad: 1 },
    ConvShape { name: "layer2.0 3x3/2", cin: 64, cout: 128, hw: 16, k: 3, stride: 2, pad: 1 },
    ConvShape { name: "layer2.0 down 1x1/2", cin: 64, cout: 128, hw: 16, k: 1, stride: 2, pad: 0 },
    ConvShape { name: "layer2 3x3", cin: 128, cout: 128, hw: 8, k: 3, stride: 1, pad: 1 },
    ConvShape { name: "layer3.0 3x3/2", cin: 128, cout: 256, hw: 8, k: 3, stride: 2, pad: 1 },
    ConvShape { name: "layer3 3x3", cin: 256, cout: 256, hw: 4, k: 3, stride: 1, pad: 1 },
    ConvShape { name: "layer4.0 3x3/2", cin: 256, cout: 512, hw: 4, k: 3, stride: 2, pad: 1 },
    ConvShape { name: "layer4 3x3", cin: 512, cout: 512, hw: 2, k: 3, stride: 1, pad: 1 },
];

fn header() {
    common::print_header("CPU kernel benchmark", &["src", "benches/cpu_kernels.rs", "Cargo.toml"]);
    println!("# dtype f32; times are medians; GFLOP/s counts 2 flops per multiply-add");
}

fn main() {
    header();
    let mut rng = Rng::new(0);

    println!("\n## matmul [m,k] @ [k,n]");
    println!("{:<24} {:>10} {:>10}", "shape (m x k x n)", "ms", "GFLOP/s");
    for &(m, k, n) in
        &[(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 576, 64), (8192, 576, 64), (512, 4608, 32)]
    {
        let a = Tensor::randn(&[m, k], 1.0, DType::F32, &mut rng).unwrap();
        let b = Tensor::randn(&[k, n], 1.0, DType::F32, &mut rng).unwrap();
        let s = time(|| {
            a.matmul(&b).unwrap();
        });
        println!("{:<24} {:>10.3} {:>10.1}", format!("{m} x {k} x {n}"), s * 1e3, 2.0 * (m * k * n) as f64 / s / 1e9);
    }

    println!("\n## conv2d, ResNet-18 layer shapes on 64x64 frames (NCHW, f32)");
    println!("# gemm ref = one GEMM of the conv's im2col size (M=cout, K=cin*k*k, N=batch*oh*ow) in this run");
    println!(
        "{:<22} {:>5} {:>9} {:>9} {:>11} {:>9} {:>13} {:>9}",
        "layer", "batch", "fwd ms", "fwd GF/s", "gemm GF/s", "fwd/gemm", "fwd+bwd ms", "f+b GF/s"
    );
    for &batch in &[8usize, 32] {
        for s in RESNET18_64PX {
            let oh = (s.hw + 2 * s.pad - s.k) / s.stride + 1;
            let flops = 2.0 * (batch * s.cout * oh * oh * s.cin * s.k * s.k) as f64;
            let x = Tensor::randn(&[batch, s.cin, s.hw, s.hw], 1.0, DType::F32, &mut rng).unwrap();
            let w = Tensor::randn(&[s.cout, s.cin, s.k, s.k], 0.1, DType::F32, &mut rng).unwrap();
            let fwd = time(|| {
                conv2d(&x, &w, None, (s.stride, s.stride), (s.pad, s.pad)).unwrap();
            });
            // The same arithmetic as one plain GEMM: [cout, cin·k·k] @ [cin·k·k, batch·oh·ow].
            let ga = Tensor::randn(&[s.cout, s.cin * s.k * s.k], 1.0, DType::F32, &mut rng).unwrap();
            let gb = Tensor::randn(&[s.cin * s.k * s.k, batch * oh * oh], 1.0, DType::F32, &mut rng).unwrap();
            let gemm = time(|| {
                ga.matmul(&gb).unwrap();
            });
            let (xp, wp) = (x.requires_grad().unwrap(), w.requires_grad().unwrap());
            let fb = time(|| {
                let y = conv2d(&xp, &wp, None, (s.stride, s.stride), (s.pad, s.pad)).unwrap();
                y.sum_all().unwrap().backward().unwrap();
                xp.zero_grad();
                wp.zero_grad();
            });
            println!(
                "{:<22} {:>5} {:>9.3} {:>9.1} {:>11.1} {:>9.2} {:>13.3} {:>9.1}",
                s.name,
                batch,
                fwd * 1e3,
                flops / fwd / 1e9,
                flops / gemm / 1e9,
                gemm / fwd,
                fb * 1e3,
                3.0 * flops / fb / 1e9
            );
        }
    }
}
