//! Fused flash attention (kernels/attention.cu) against `simclr::ops::attention::
//! scaled_dot_product_attention` in f64 on the same (bf16- or f16-rounded) inputs: the output,
//! the log-sum-exp (computed directly in f64: the CPU op does not return it), and dQ, dK, dV from
//! the CPU op's autograd for loss = Σ O ⊙ G. Head dims 32, 64, 128; lengths that are not multiples
//! of any tile (1 to 200, including ViViT's 11, 65 and 197 on the GPU), batch·heads 1 to 12, and
//! query length ≠ key length both ways.
//!
//! Tolerances. The kernel rounds P to the storage type before P·V (FlashAttention does too), rounds
//! dSᵀ before dQ and dK, and rounds every output; everything else is f32 with the products of
//! rounded inputs exact. A bf16 rounding is at most 2^-9 relative (f16: 2^-12), so each output
//! element is within a few such roundings of the largest term that feeds it: we allow
//! `atol = TOL·max|reference|` and `rtol = TOL` per tensor, with TOL = 2^-6 (bf16) or 2^-9 (f16),
//! several times the rounding error yet far below what a wrong index, a missed tile or a wrong
//! rescaling produces (errors of the size of the values themselves). The LSE is pure f32 (no
//! rounded intermediate): 1e-4.

use crate::common::*;
use half::{bf16, f16};
use simclr::backend::cuda::kernels::attention::{
    flash_attention_backward, flash_attention_forward, AttentionSaved, AttentionShape,
};
use simclr::backend::cuda::kernels::tensor_core_probe::TensorCoreInput;
use simclr::backend::cuda::Gpu;
use simclr::ops::attention::scaled_dot_product_attention;
use simclr::Tensor;

/// A storage type with its rounding and its tolerance.
trait Storage: TensorCoreInput {
    const TOL: f32;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl Storage for bf16 {
    const TOL: f32 = 1.0 / 64.0;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
impl Storage for f16 {
    const TOL: f32 = 1.0 / 512.0;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.iter().map(|&a| a as f64).collect::<Vec<f64>>(), shape).unwrap()
}

fn to_f32(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f64>().unwrap().into_iter().map(|v| v as f32).collect()
}

/// |got − want| ≤ TOL·max(max|want|, 0.01) + TOL·|want|. The floor serves tensors that vanish
/// analytically (one key: dQ = 0), where the kernel leaves f32 cancellation noise (~1e-7).
#[track_caller]
fn assert_near<T: Storage>(what: &str, got: &[f32], want: &[f32]) {
    let max = want.iter().fold(0f32, |m, &w| m.max(w.abs()));
    assert_close(what, got, want, T::TOL * max.max(0.01), T::TOL);
}

struct Reference {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// The CPU op in f64 on [1, BH, len, D] tensors; LSE_i = log Σ_j exp(scale·q_i·k_j) directly.
fn reference(s: AttentionShape, scale: f64, q: &[f32], k: &[f32], v: &[f32], g: &[f32]) -> Reference {
    let (bh, l, kl, d) = (s.batch_heads, s.q_len, s.kv_len, s.head_dim);
    let qt = tensor(q, &[1, bh, l, d]).requires_grad().unwrap();
    let kt = tensor(k, &[1, bh, kl, d]).requires_grad().unwrap();
    let vt = tensor(v, &[1, bh, kl, d]).requires_grad().unwrap();
    let out = scaled_dot_product_attention(&qt, &kt, &vt, None, Some(scale)).unwrap();
    out.mul(&tensor(g, &[1, bh, l, d])).unwrap().sum_all().unwrap().backward().unwrap();
    let mut lse = Vec::with_capacity(bh * l);
    for h in 0..bh {
        for i in 0..l {
            let qi = &q[(h * l + i) * d..][..d];
            let scores: Vec<f64> = (0..kl)
                .map(|j| {
                    let kj = &k[(h * kl + j) * d..][..d];
                    scale * qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            lse.push((m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln()) as f32);
        }
    }
    Reference {
        out: to_f32(&out),
        lse,
        dq: to_f32(&qt.grad().unwrap()),
        dk: to_f32(&kt.grad().unwrap()),
        dv: to_f32(&vt.grad().unwrap()),
    }
}

/// Rounded inputs: q with a larger spread than k so some rows' softmax is peaked (the running
/// max matters), v and the output gradient standard normal.
fn rounded<T: Storage>(n: usize, std: f32, seed: u64) -> (Vec<T>, Vec<f32>) {
    let stored: Vec<T> = normal(n, std, seed).into_iter().map(T::from_f32).collect();
    let values = stored.iter().map(|&x| x.to_f32()).collect();
    (stored, values)
}

fn download<T: Storage>(gpu: &Gpu, buf: &simclr::backend::cuda::DeviceBuffer<T>) -> Vec<f32> {
    gpu.download(buf).unwrap().into_iter().map(|x| x.to_f32()).collect()
}

/// Forward and the three gradients of one shape against the CPU op.
fn check_case<T: Storage>(gpu: &Gpu, shape: AttentionShape, seed: u64) {
    let case = format!("{shape:?} {}", T::SUFFIX);
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let (q, qf) = rounded::<T>(shape.q_elems(), 1.5, seed);
    let (k, kf) = rounded::<T>(shape.kv_elems(), 1.0, seed + 1);
    let (v, vf) = rounded::<T>(shape.kv_elems(), 1.0, seed + 2);
    let (dout, gf) = rounded::<T>(shape.q_elems(), 1.0, seed + 3);
    let want = reference(shape, scale as f64, &qf, &kf, &vf, &gf);

    let (dq_, dk_, dv_) = (gpu.upload(&q).unwrap(), gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
    let mut out = gpu.alloc::<T>(shape.q_elems()).unwrap();
    let mut lse = gpu.alloc::<f32>(shape.lse_elems()).unwrap();
    flash_attention_forward(gpu, shape, scale, &dq_, &dk_, &dv_, &mut out, &mut lse).unwrap();
    assert_near::<T>(&format!("{case} out"), &download(gpu, &out), &want.out);
    assert_close(&format!("{case} lse"), &gpu.download(&lse).unwrap(), &want.lse, 1e-4, 1e-4);
    let ddout = gpu.upload(&dout).unwrap();
    let mut dq = gpu.alloc::<T>(shape.q_elems()).unwrap();
    let mut dk = gpu.alloc::<T>(shape.kv_elems()).unwrap();
    let mut dv = gpu.alloc::<T>(shape.kv_elems()).unwrap();
    let saved = AttentionSaved { q: &dq_, k: &dk_, v: &dv_, out: &out, lse: &lse };
    flash_attention_backward(gpu, shape, scale, saved, &ddout, &mut dq, &mut dk, &mut dv).unwrap();
    assert_near::<T>(&format!("{case} dq"), &download(gpu, &dq), &want.dq);
    assert_near::<T>(&format!("{case} dk"), &download(gpu, &dk), &want.dk);
    assert_near::<T>(&format!("{case} dv"), &download(gpu, &dv), &want.dv);
}

fn shape(batch_heads: usize, q_len: usize, kv_len: usize, head_dim: usize) -> AttentionShape {
    AttentionShape { batch_heads, q_len, kv_len, head_dim }
}

// The emulator runs one OS thread per CUDA thread and every mma.sync is a series of warp
// exchanges, so these shapes are the smallest that still take every path: 4- and 5-warp tiles
// (the launcher picks by length: 17 → 64 rows, 70 → 80), several key tiles in the forward
// (online-softmax rescaling), several query steps per backward block (double buffering), several
// key blocks adding into the same dQ rows (atomics), partial tiles and partial 16-row groups on
// both axes, L ≠ S both ways, and batch·heads > 1. The ViViT shapes themselves (65 and 197
// tokens) run on the GPU in `vivit_shapes_on_the_gpu` below.
parity_test!(bf16_head_dim_64, |gpu| {
    check_case::<bf16>(gpu, shape(1, 17, 70, 64), 1); // fwd 4 warps, 2 key tiles; bwd 5 warps
    check_case::<bf16>(gpu, shape(1, 70, 17, 64), 2); // fwd 5 warps; bwd 4 warps, 3 query steps
    check_case::<bf16>(gpu, shape(1, 1, 1, 64), 3);
});

parity_test!(bf16_head_dims_32_and_128, |gpu| {
    check_case::<bf16>(gpu, shape(1, 33, 72, 32), 4); // fwd 4 warps, 2 key tiles; bwd 5 warps
    check_case::<bf16>(gpu, shape(1, 20, 40, 128), 5); // bwd 2 key blocks, 2 query steps
});

parity_test!(f16_all_head_dims, |gpu| {
    check_case::<f16>(gpu, shape(2, 9, 90, 64), 6); // bwd 4 warps, 2 key blocks
                                                    // One key: P = 1 and dQ = 0 exactly; the kernel's dQ is f32 cancellation noise.
    check_case::<f16>(gpu, shape(1, 70, 1, 32), 7); // fwd 5 warps
    check_case::<f16>(gpu, shape(1, 66, 8, 128), 8); // fwd 5 warps; bwd 5 query steps
});

/// Training-size shapes, too slow for the emulator: ViViT's spatial attention (65 tokens at
/// 128², 197 at 224²), its temporal attention (11), and the other head dims at odd lengths.
#[test]
#[ignore = "needs a CUDA GPU: run with --ignored on the GPU machine"]
fn vivit_shapes_on_the_gpu() {
    let gpu = real_gpu();
    let mut seed = 100;
    for (s, f16_too) in [
        (shape(6, 65, 65, 64), true),
        (shape(3, 197, 197, 64), true),
        (shape(12, 11, 11, 64), false),
        (shape(3, 100, 100, 32), true),
        (shape(3, 197, 197, 128), true),
        (shape(2, 65, 200, 64), false),
        (shape(2, 200, 65, 128), false),
    ] {
        check_case::<bf16>(&gpu, s, seed);
        if f16_too {
            check_case::<f16>(&gpu, s, seed + 1);
        }
        seed += 10;
    }
}

parity_test!(bad_arguments_are_errors, |gpu| {
    let s = shape(1, 8, 8, 64);
    let buf = gpu.alloc::<bf16>(s.q_elems()).unwrap();
    let mut out = gpu.alloc::<bf16>(s.q_elems()).unwrap();
    let mut lse = gpu.alloc::<f32>(s.lse_elems()).unwrap();
    let mut err = |shape: AttentionShape, lse: &mut simclr::backend::cuda::DeviceBuffer<f32>| {
        flash_attention_forward(gpu, shape, 0.125, &buf, &buf, &buf, &mut out, lse).unwrap_err().to_string()
    };
    assert!(err(shape(1, 8, 8, 48), &mut lse).contains("head dimension 48"));
    assert!(err(shape(0, 8, 8, 64), &mut lse).contains("must be > 0"));
    assert!(err(shape(1, 8, 9, 64), &mut lse).contains("k has 512 elements, expected 576"));
    let mut short_lse = gpu.alloc::<f32>(7).unwrap();
    assert!(err(s, &mut short_lse).contains("lse has 7 elements"));
    let e = flash_attention_forward(gpu, s, f32::NAN, &buf, &buf, &buf, &mut out, &mut lse).unwrap_err();
    assert!(e.to_string().contains("scale must be finite"));
});
