//! Tensor construction, views, dtype conversion, safetensors I/O and the
//! errors bad input gets.

use simclr::tensor::safetensors_io::{load_safetensors, save_safetensors};
use simclr::{DType, Error, Rng, Tensor};

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64s(v, shape, DType::F64).unwrap()
}

#[test]
fn views_share_storage_and_index_correctly() {
    let x = Tensor::arange(24, DType::F32).unwrap().reshape(&[2, 3, 4]).unwrap();
    // permute: element [i, j, k] of x is at [k, i, j]
    let p = x.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    assert!(!p.is_contiguous());
    let pv = p.to_f64_vec();
    assert_eq!(pv[0..6], [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]);
    // narrow along the last axis
    let n = x.narrow(2, 1, 2).unwrap();
    assert_eq!(n.to_f64_vec()[..4], [1.0, 2.0, 5.0, 6.0]);
    // broadcast repeats without copying
    let b = t(&[1.0, 2.0, 3.0], &[3, 1]).broadcast_to(&[2, 3, 2]).unwrap();
    assert_eq!(b.strides(), &[0, 1, 0]);
    assert_eq!(b.to_f64_vec(), vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    // reshape of a strided view copies, of a contiguous one does not change values
    assert_eq!(p.reshape(&[24]).unwrap().to_f64_vec(), pv);
}

#[test]
fn cat_stack_index_select_gather() {
    let a = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = t(&[5.0, 6.0], &[2, 1]);
    assert_eq!(Tensor::cat(&[&a, &b], 1).unwrap().to_f64_vec(), vec![1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
    let s = Tensor::stack(&[&a, &a], 0).unwrap();
    assert_eq!(s.shape(), &[2, 2, 2]);
    assert_eq!(a.index_select(0, &[1, 1, 0]).unwrap().to_f64_vec(), vec![3.0, 4.0, 3.0, 4.0, 1.0, 2.0]);
    let idx = Tensor::from_vec(vec![1i64, 0, 0, 0], &[2, 2]).unwrap();
    assert_eq!(a.gather(1, &idx).unwrap().to_f64_vec(), vec![2.0, 1.0, 3.0, 3.0]);
    // u8 frames can be concatenated and selected too (no arithmetic needed)
    let f = Tensor::from_vec(vec![1u8, 2, 3, 4], &[4]).unwrap();
    assert_eq!(f.index_select(0, &[3, 0]).unwrap().to_vec::<u8>().unwrap(), vec![4, 1]);
}

#[test]
fn dtype_conversions_round_trip() {
    let x = t(&[0.5, -1.25, 3.0, 255.7], &[4]);
    assert_eq!(x.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), vec![0.5, -1.25, 3.0, 255.7]);
    assert_eq!(
        x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F64).unwrap().to_f64_vec(),
        vec![0.5, -1.25, 3.0, 256.0]
    );
    assert_eq!(x.to_dtype(DType::F16).unwrap().to_f64_vec()[..3], [0.5, -1.25, 3.0]);
    assert_eq!(x.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(), vec![1, 0, 3, 255]); // rounds, saturates
    assert_eq!(x.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(), vec![1, -1, 3, 256]);
}

#[test]
fn safetensors_round_trip_every_dtype() {
    let dir = std::env::temp_dir().join(format!("simclr-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    let mut rng = Rng::new(1);
    let a = Tensor::randn(&[3, 4], 1.0, DType::F32, &mut rng).unwrap();
    let b = Tensor::randn(&[2, 2, 2], 1.0, DType::F64, &mut rng).unwrap().permute(&[2, 1, 0]).unwrap(); // a view
    let c = a.to_dtype(DType::BF16).unwrap();
    let d = a.to_dtype(DType::F16).unwrap();
    let e = Tensor::from_vec(vec![0u8, 7, 255], &[3]).unwrap();
    let f = Tensor::from_vec(vec![-3i64, 9], &[2]).unwrap();
    let meta = std::collections::HashMap::from([("epoch".to_string(), "3".to_string())]);
    save_safetensors(&path, &[("a", &a), ("b", &b), ("c", &c), ("d", &d), ("e", &e), ("f", &f)], Some(meta)).unwrap();
    let (loaded, meta) = load_safetensors(&path).unwrap();
    assert_eq!(meta.get("epoch").map(String::as_str), Some("3"));
    let get = |n: &str| loaded.iter().find(|(k, _)| k == n).unwrap().1.clone();
    for (name, orig) in [("a", &a), ("b", &b), ("c", &c), ("d", &d), ("e", &e), ("f", &f)] {
        let l = get(name);
        assert_eq!(l.shape(), orig.shape(), "{name}");
        assert_eq!(l.dtype(), orig.dtype(), "{name}");
        assert_eq!(l.to_f64_vec(), orig.to_f64_vec(), "{name}");
    }
    // No temporary file is left behind by the atomic write.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // A truncated file is a clear format error, not a panic.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(load_safetensors(&path), Err(Error::Format { .. })));
    assert!(matches!(load_safetensors(&dir.join("missing.safetensors")), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same tensors and metadata give the same bytes, whatever order the metadata map iterates in
/// (each `HashMap` has its own random order), so identical checkpoints have identical checksums.
#[test]
fn safetensors_bytes_do_not_depend_on_metadata_order() {
    use simclr::tensor::safetensors_io::to_safetensors_bytes;
    let mut rng = Rng::new(2);
    let w = Tensor::randn(&[5, 3], 1.0, DType::F32, &mut rng).unwrap();
    let steps = Tensor::from_vec(vec![4i64], &[1]).unwrap();
    let half = w.to_dtype(DType::BF16).unwrap();
    let pairs: Vec<(String, String)> = (0..12).map(|i| (format!("key{i}"), format!("value {i}"))).collect();
    let bytes = |reverse: bool| {
        let mut meta = std::collections::HashMap::new();
        let ordered: Vec<_> = if reverse { pairs.iter().rev().cloned().collect() } else { pairs.clone() };
        meta.extend(ordered);
        to_safetensors_bytes(&[("w", &w), ("steps", &steps), ("half", &half)], Some(meta)).unwrap()
    };
    let first = bytes(false);
    for reverse in [false, true, false, true] {
        assert!(bytes(reverse) == first, "two saves of the same tensors and metadata differ");
    }
    // Still a safetensors file the crate reads, with every key.
    let (_, meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap().len(), 12);
}

#[test]
fn bad_shapes_dtypes_and_indices_are_errors_not_panics() {
    let a = t(&[1.0; 6], &[2, 3]);
    let b = t(&[1.0; 4], &[4]);
    assert!(matches!(Tensor::from_vec(vec![1.0f32; 5], &[2, 3]), Err(Error::Shape { .. })));
    assert!(matches!(a.add(&b), Err(Error::Shape { .. })));
    assert!(matches!(a.matmul(&t(&[1.0; 4], &[2, 2])), Err(Error::Shape { .. })));
    assert!(matches!(a.matmul(&b), Err(Error::Shape { .. })));
    assert!(matches!(a.add(&a.to_dtype(DType::F32).unwrap()), Err(Error::DType { .. })));
    assert!(matches!(Tensor::from_vec(vec![1u8; 3], &[3]).unwrap().exp(), Err(Error::DType { .. })));
    assert!(matches!(a.reshape(&[4, 2]), Err(Error::Shape { .. })));
    assert!(matches!(a.permute(&[0, 0]), Err(Error::Index { .. })));
    assert!(matches!(a.permute(&[0]), Err(Error::Shape { .. })));
    assert!(matches!(a.narrow(1, 2, 2), Err(Error::Index { .. })));
    assert!(matches!(a.narrow(2, 0, 1), Err(Error::Index { .. })));
    assert!(matches!(a.index_select(0, &[2]), Err(Error::Index { .. })));
    assert!(matches!(a.sum(&[2], false), Err(Error::Index { .. })));
    assert!(matches!(a.sum(&[-3], false), Err(Error::Index { .. })));
    assert!(matches!(a.sum(&[1, -1], false), Err(Error::InvalidArgument { .. })));
    assert!(matches!(a.broadcast_to(&[3, 3]), Err(Error::Shape { .. })));
    assert!(matches!(Tensor::cat(&[&a, &b], 0), Err(Error::Shape { .. })));
    assert!(matches!(Tensor::cat(&[], 0), Err(Error::InvalidArgument { .. })));
    let bad_idx = Tensor::from_vec(vec![0i64, 3], &[1, 2]).unwrap();
    assert!(matches!(a.gather(1, &bad_idx), Err(Error::Index { .. })));
    assert!(matches!(a.gather(1, &t(&[0.0, 1.0], &[1, 2])), Err(Error::DType { .. })));
    assert!(matches!(a.item(), Err(Error::Shape { .. })));
    assert!(matches!(Tensor::from_vec(vec![1u8], &[1]).unwrap().requires_grad(), Err(Error::DType { .. })));
    assert!(matches!(a.var(&[0], 2, false), Err(Error::Shape { .. })));
    assert!(matches!(a.div_scalar(0.0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(a.to_device(simclr::Device::Cuda(0)), Err(Error::Device { .. })));
    // Messages say what happened.
    let msg = a.add(&b).unwrap_err().to_string();
    assert!(msg.contains("[2, 3]") && msg.contains("[4]"), "{msg}");
}

#[test]
fn f32_and_f64_give_the_same_results() {
    let mut rng = Rng::new(5);
    let a = Tensor::randn(&[17, 33], 1.0, DType::F64, &mut rng).unwrap();
    let b = Tensor::randn(&[33, 9], 1.0, DType::F64, &mut rng).unwrap();
    let r64 = a.matmul(&b).unwrap().gelu_tanh().unwrap().sum(&[0], false).unwrap().to_f64_vec();
    let (a32, b32) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    let r32 = a32.matmul(&b32).unwrap().gelu_tanh().unwrap().sum(&[0], false).unwrap().to_f64_vec();
    for (x, y) in r64.iter().zip(&r32) {
        assert!((x - y).abs() < 1e-3 * (1.0 + x.abs()), "{x} vs {y}");
    }
}

#[test]
fn large_matmul_matches_naive_loop() {
    // Exercises the multithreaded GEMM path and the batched path.
    let mut rng = Rng::new(9);
    let a = Tensor::randn(&[4, 65, 130], 1.0, DType::F64, &mut rng).unwrap();
    let b = Tensor::randn(&[130, 47], 1.0, DType::F64, &mut rng).unwrap();
    let c = a.matmul(&b).unwrap().to_f64_vec();
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    for bi in [0, 3] {
        for i in [0, 31, 64] {
            for j in [0, 20, 46] {
                let want: f64 = (0..130).map(|k| av[bi * 65 * 130 + i * 130 + k] * bv[k * 47 + j]).sum();
                let got = c[bi * 65 * 47 + i * 47 + j];
                assert!((want - got).abs() < 1e-9, "{want} vs {got}");
            }
        }
    }
}
