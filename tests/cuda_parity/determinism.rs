//! Deterministic mode (backend/cuda/determinism.rs): the two kernels that would add partial sums
//! with float atomics — the convolution weight gradient split over blocks, and attention's dQ
//! when a head's keys span several blocks — give the same bits whatever order the blocks run in.
//!
//! On the emulator the block order is the shuffle seed's, so each check runs the kernel under
//! several seeds: with determinism on, every run must give identical bits; with it off (the
//! atomic path), the same seeds must give at least two different results — which proves the
//! check can see the difference — and still agree with the fixed-order result to rounding. On a
//! GPU the order is the hardware's: identical bits run to run with determinism on.
//!
//! Both switches are process-wide; the other tests of this binary compare with tolerances, so
//! they pass under either path and any block order.

use crate::common::*;
use half::bf16;
use simclr::backend::cuda::kernels::attention::{
    flash_attention_backward, flash_attention_forward, AttentionSaved, AttentionShape,
};
use simclr::backend::cuda::kernels::conv::{self, ConvShape};
use simclr::backend::cuda::{set_block_order_seed, set_deterministic, Gpu};
use std::sync::Mutex;

/// The two switches belong to the whole process: one determinism check at a time.
static SWITCHES: Mutex<()> = Mutex::new(());

const SEEDS: [u64; 3] = [11, 12, 13];

/// Runs `compute` once per block-order seed in each mode and checks the bits as described above;
/// the atomic path must agree with the fixed-order one within `atol` + 1e-4·|value|.
fn check_order_independence(gpu: &Gpu, what: &str, atol: f32, compute: impl Fn() -> Vec<f32>) {
    let _one_at_a_time = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    let runs = |deterministic: bool| -> Vec<Vec<u32>> {
        set_deterministic(deterministic);
        SEEDS
            .iter()
            .map(|&seed| {
                set_block_order_seed(seed);
                compute().iter().map(|x| x.to_bits()).collect()
            })
            .collect()
    };
    let fixed = runs(true);
    let atomic = runs(false);
    set_deterministic(true);
    for (seed, bits) in SEEDS.iter().zip(&fixed) {
        let differing = bits.iter().zip(&fixed[0]).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{what}: deterministic mode changed {differing} values with block-order seed {seed}");
    }
    let values = |bits: &[u32]| bits.iter().map(|&b| f32::from_bits(b)).collect::<Vec<f32>>();
    let want = values(&fixed[0]);
    for bits in &atomic {
        assert_close(&format!("{what} (atomic path)"), &values(bits), &want, atol, 1e-4);
    }
    if gpu.is_emulated() {
        assert!(
            atomic.iter().any(|bits| bits != &atomic[0]),
            "{what}: the atomic path gave the same bits under {} block orders: the check cannot see order dependence",
            SEEDS.len()
        );
    }
}

parity_test!(conv_weight_gradient_is_order_independent, |gpu| {
    // 4 images of 12×12: 576 output pixels = 18 k-tiles of 32, split over 4 blocks of the
    // stem-like scalar kernel (c = 3) and of the vector kernel (c = 8).
    for s in [
        ConvShape { n: 4, h: 12, w: 12, c: 3, k: 8, r: 3, s: 3, stride: 1, pad: 1 },
        ConvShape { n: 4, h: 12, w: 12, c: 8, k: 8, r: 3, s: 3, stride: 1, pad: 1 },
    ] {
        let x: Vec<bf16> = to_bf16(&uniform(s.input_len(), -1.0, 1.0, 1));
        let dy: Vec<bf16> = to_bf16(&uniform(s.output_len(), -1.0, 1.0, 2));
        let (xd, dyd) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
        // Summation-order error of a few f32 ulps of the largest partial sums.
        let atol = 1e-5 * (s.n * s.p() * s.q()) as f32;
        check_order_independence(gpu, &format!("conv wgrad {s:?}"), atol, || {
            let mut dw = gpu.alloc::<f32>(s.weight_len()).unwrap();
            conv::conv2d_backward_weight(gpu, &s, &xd, &dyd, &mut dw).unwrap();
            gpu.download(&dw).unwrap()
        });
    }
});

parity_test!(attention_dq_is_order_independent, |gpu| {
    // 170 keys: three 64-key blocks of the backward (4 warps) add into every dQ row. dQ is bf16,
    // which hides the last-bit differences of an f32 sum taken in another order, so the inputs
    // make the order matter: with Q = 0 every key has P = 1/170 and with equal keys K the blocks'
    // contributions are C_b = (Σ_{j in b} dS_j)·K, dS_j = P·(dO·V_j − δ). V is +w in block 0, −w
    // in block 1 and 2⁻²¹·w in block 2, so C_0 = −C_1 (large) and C_2 is a few ulps of C_0:
    // (C_0 + C_1) + C_2 keeps C_2 whole, (C_0 + C_2) + C_1 rounds it to C_0's ulp.
    let shape = AttentionShape { batch_heads: 2, q_len: 24, kv_len: 170, head_dim: 32 };
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let d = shape.head_dim;
    let w = normal(d, 1.0, 4);
    let v: Vec<f32> = (0..shape.batch_heads * shape.kv_len)
        .flat_map(|row| {
            let key = row % shape.kv_len;
            let factor = if key < 64 {
                1.0
            } else if key < 128 {
                -1.0
            } else {
                (-21f32).exp2()
            };
            w.iter().map(move |x| factor * x)
        })
        .collect();
    let upload = |values: &[f32]| gpu.upload(&to_bf16(values)).unwrap();
    let q = upload(&vec![0.0; shape.q_elems()]);
    let k = upload(&vec![1.0; shape.kv_elems()]);
    let v = upload(&v);
    let dout = upload(&normal(shape.q_elems(), 1.0, 6));
    let mut out = gpu.alloc::<bf16>(shape.q_elems()).unwrap();
    let mut lse = gpu.alloc::<f32>(shape.lse_elems()).unwrap();
    flash_attention_forward(gpu, shape, scale, &q, &k, &v, &mut out, &mut lse).unwrap();
    // The atomic path loses up to an ulp of the largest contribution, |C_0| = scale·64·P·|dO·w|.
    let dout_values = from_bf16(&gpu.download(&dout).unwrap());
    let largest =
        dout_values.chunks(d).map(|row| row.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>().abs()).fold(0f32, f32::max);
    let atol = 2.0 * f32::EPSILON * scale * 64.0 / 170.0 * largest;
    check_order_independence(gpu, "attention dq", atol, || {
        let mut dq = gpu.alloc::<bf16>(shape.q_elems()).unwrap();
        let mut dk = gpu.alloc::<bf16>(shape.kv_elems()).unwrap();
        let mut dv = gpu.alloc::<bf16>(shape.kv_elems()).unwrap();
        let saved = AttentionSaved { q: &q, k: &k, v: &v, out: &out, lse: &lse };
        flash_attention_backward(gpu, shape, scale, saved, &dout, &mut dq, &mut dk, &mut dv).unwrap();
        from_bf16(&gpu.download(&dq).unwrap())
    });
});
