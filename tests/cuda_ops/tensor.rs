//! Device tensors: transfers, views, contiguous copies, errors.

use super::common::*;
use simclr::backend::Device;
use simclr::{DType, Tensor};

device_test!(round_trip_keeps_values_shape_and_dtype, |device| {
    for dtype in [DType::F32, DType::BF16, DType::F64, DType::U8, DType::I64] {
        let host = Tensor::from_f64s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], dtype).unwrap();
        let dev = host.to_device(device).unwrap();
        assert_eq!((dev.device(), dev.dtype(), dev.shape()), (device, dtype, &[2usize, 3][..]));
        assert_eq!(values(&dev), host.to_f64_vec(), "{dtype}");
    }
});

device_test!(views_are_copied_row_major, |device| {
    let x = randn(&[3, 4, 5], 1);
    let d = x.to_device(device).unwrap();
    // A transpose, a narrow (offset view) and a broadcast: each materialised on the device.
    let cases: Vec<(Tensor, Tensor)> = vec![
        (x.transpose(0, 2).unwrap(), d.transpose(0, 2).unwrap()),
        (x.narrow(1, 1, 2).unwrap(), d.narrow(1, 1, 2).unwrap()),
        (
            x.narrow(0, 2, 1).unwrap().broadcast_to(&[2, 1, 4, 5]).unwrap(),
            d.narrow(0, 2, 1).unwrap().broadcast_to(&[2, 1, 4, 5]).unwrap(),
        ),
    ];
    for (i, (want, got)) in cases.iter().enumerate() {
        let c = got.contiguous().unwrap();
        assert!(c.is_contiguous() && c.device() == device);
        assert_eq!(values(&c), want.contiguous().unwrap().to_f64_vec(), "case {i}");
        // Downloading a view gathers it too.
        assert_eq!(values(got), want.to_f64_vec(), "case {i} download");
    }
});

device_test!(mixed_devices_and_host_reads_are_refused, |device| {
    let a = randn(&[2, 2], 1);
    let d = a.to_device(device).unwrap();
    let err = a.add(&d).unwrap_err().to_string();
    assert!(err.contains("same device"), "{err}");
    let err = d.host_data::<f32>().err().expect("a device tensor has no host data").to_string();
    assert!(err.contains("cuda:0"), "{err}");
    // f64 has no kernels: a clear dtype error, not a wrong answer.
    let d64 = Tensor::ones(&[2], DType::F64).unwrap().to_device(device).unwrap();
    let err = d64.exp().unwrap_err().to_string();
    assert!(err.contains("f32 or bf16"), "{err}");
    // An op without a CUDA path says so.
    let err = d.pow(2.0).unwrap_err().to_string();
    assert!(err.contains("no CUDA implementation"), "{err}");
});

device_test!(parameters_keep_identity_when_assigned_on_device, |device| {
    let p = randn(&[3], 1).to_device(device).unwrap().requires_grad().unwrap();
    let v = randn(&[3], 2).to_device(device).unwrap();
    p.set_data(&v).unwrap();
    assert_eq!(values(&p), values(&v));
    assert!(p.is_tracked());
    let err = p.set_data(&randn(&[3], 3)).unwrap_err().to_string();
    assert!(err.contains("Cpu"), "{err}");
});

#[test]
fn device_output_reaches_cpu_scalar() {
    simclr::backend::cuda::devices::use_emulator();
    let d = randn(&[4], 5).to_device(Device::Cuda(0)).unwrap();
    let want: f64 = randn(&[4], 5).to_f64_vec().iter().sum();
    assert!((d.sum_all().unwrap().item().unwrap() - want).abs() < 1e-5);
}

device_test!(copies_of_views_with_many_dims, |device| {
    // ViViT's tubelet split: [B, T/2, 2, 3, H/16, 16, W/16, 16] permuted to put each tubelet's
    // pixels last leaves 7 dims that no two neighbours merge — more than the copy kernels index.
    let x = randn(&[2, 2, 2, 3, 2, 4, 2, 4], 21);
    let perm = [0, 1, 4, 6, 2, 3, 5, 7];
    for dtype in [simclr::DType::F32, simclr::DType::BF16, simclr::DType::F64] {
        let host = x.to_dtype(dtype).unwrap();
        let want = host.permute(&perm).unwrap().contiguous().unwrap().to_f64_vec();
        let got = host.to_device(device).unwrap().permute(&perm).unwrap().contiguous().unwrap();
        assert_eq!(values(&got), want, "{dtype}");
    }
    check_op("contiguous of a 7-dim permute", device, &[x], |t| t[0].permute(&perm)?.contiguous(), 0.0);
});
