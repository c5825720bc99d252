//! The runtime under the kernels: copies, the caching allocator, cuBLAS GEMM, errors.

use crate::common::*;
use half::bf16;
use simclr::backend::cuda::{gemm, GemmShape, Gpu};
use simclr::{Error, Tensor};

parity_test!(copies_round_trip, |gpu| {
    let data = uniform(1000, -3.0, 3.0, 1);
    let buf = gpu.upload(&data).unwrap();
    assert_eq!(buf.to_vec().unwrap(), data);
    let mut other = gpu.alloc::<f32>(1000).unwrap();
    gpu.copy(&buf, &mut other).unwrap();
    assert_eq!(other.to_vec().unwrap(), data);
    let z = gpu.zeros::<bf16>(77).unwrap();
    assert!(z.to_vec().unwrap().iter().all(|x| x.to_f32() == 0.0));
    let err = gpu.copy(&buf, &mut gpu.alloc::<f32>(999).unwrap()).unwrap_err();
    assert!(err.to_string().contains("1000"), "{err}");
});

parity_test!(allocator_reuses_blocks, |gpu| {
    let before = gpu.memory_stats();
    for _ in 0..5 {
        let a = gpu.alloc::<f32>(300_000).unwrap();
        drop(a);
    }
    let after = gpu.memory_stats();
    assert_eq!(after.allocations - before.allocations, 5);
    assert!(after.cache_hits - before.cache_hits >= 4, "{before:?} -> {after:?}");
    assert_eq!(after.in_use_bytes, before.in_use_bytes);
});

parity_test!(unknown_kernel_is_an_error, |gpu| {
    let cfg = simclr::backend::cuda::LaunchConfig::for_elements(10, 128);
    let err = gpu.launch("no_such_kernel", cfg, &[]).unwrap_err();
    assert!(err.to_string().contains("no_such_kernel"), "{err}");
});

/// Row-major reference: C = op(A)·op(B) with the CPU backend in f64.
fn reference(s: GemmShape, a: &[f32], b: &[f32]) -> Vec<f32> {
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let a_shape = if s.trans_a { [s.k, s.m] } else { [s.m, s.k] };
    let b_shape = if s.trans_b { [s.n, s.k] } else { [s.k, s.n] };
    let a = Tensor::from_vec(f64s(a), &a_shape).unwrap();
    let b = Tensor::from_vec(f64s(b), &b_shape).unwrap();
    let a = if s.trans_a { a.t().unwrap() } else { a };
    let b = if s.trans_b { b.t().unwrap() } else { b };
    a.matmul(&b).unwrap().to_f64_vec().iter().map(|&x| x as f32).collect()
}

parity_test!(gemm_f32_and_bf16_match_the_cpu, |gpu| {
    for (m, n, k) in [(1, 1, 1), (7, 5, 3), (33, 65, 17), (128, 96, 200)] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let s = GemmShape { m, n, k, trans_a, trans_b };
            let a = uniform(m * k, -1.0, 1.0, 10 + m as u64);
            let b = uniform(k * n, -1.0, 1.0, 20 + n as u64);
            let want = reference(s, &a, &b);
            let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            let mut dc = gpu.zeros::<f32>(m * n).unwrap();
            gemm(gpu, s, 1.0, &da, &db, 0.0, &mut dc).unwrap();
            assert_close(&format!("f32 {s:?}"), &dc.to_vec().unwrap(), &want, 1e-5, 1e-4);

            // beta accumulates into C: C = 2·AB + 1·C.
            gemm(gpu, s, 2.0, &da, &db, 1.0, &mut dc).unwrap();
            let want3: Vec<f32> = want.iter().map(|x| 3.0 * x).collect();
            assert_close(&format!("f32 beta {s:?}"), &dc.to_vec().unwrap(), &want3, 3e-5, 3e-4);

            let (ra, rb) = (round_bf16(&a), round_bf16(&b));
            let want = reference(s, &ra, &rb);
            let (da, db) = (gpu.upload(&to_bf16(&a)).unwrap(), gpu.upload(&to_bf16(&b)).unwrap());
            let mut dc = gpu.zeros::<bf16>(m * n).unwrap();
            gemm(gpu, s, 1.0, &da, &db, 0.0, &mut dc).unwrap();
            // f32 accumulation, one bf16 rounding of the result.
            assert_close(&format!("bf16 {s:?}"), &from_bf16(&dc.to_vec().unwrap()), &want, 1e-3, 8e-3);
        }
    }
    let s = GemmShape { m: 4, n: 4, k: 4, trans_a: false, trans_b: false };
    let small = gpu.zeros::<f32>(15).unwrap();
    let mut c = gpu.zeros::<f32>(16).unwrap();
    assert!(matches!(gemm(gpu, s, 1.0, &small, &small, 0.0, &mut c), Err(Error::Shape { .. })));
});

#[test]
fn emulated_out_of_memory_says_reduce_batch_size() {
    let gpu = Gpu::emulated_with_memory(8 << 20);
    let a = gpu.alloc::<f32>(1 << 20).unwrap(); // 4 MiB
    let err = gpu.alloc::<f32>(2 << 20).unwrap_err(); // 8 MiB more
    let msg = err.to_string();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{msg}");
    assert!(msg.contains("reduce --batch_size") && msg.contains("8.0 MiB"), "{msg}");
    // The failure cost nothing: the live buffer is intact and freed memory is usable again.
    drop(a);
    let b = gpu.alloc::<f32>((2 << 20) - 1000).unwrap();
    assert_eq!(b.len(), (2 << 20) - 1000);
}

#[test]
fn open_without_a_driver_or_device_is_a_clear_error() {
    match Gpu::device_count() {
        Ok(0) | Err(_) => {
            let err = Gpu::open(0).unwrap_err().to_string();
            assert!(err.contains("no CUDA"), "{err}");
            assert!(err.contains("--device cpu"), "{err}");
        }
        Ok(n) => {
            let err = Gpu::open(n).unwrap_err().to_string();
            assert!(err.contains("does not exist"), "{err}");
        }
    }
}
