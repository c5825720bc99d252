//! Elementwise arithmetic, pointwise functions and reductions on the device vs the CPU.

use super::common::*;

device_test!(binary_ops_broadcast_and_views, |device| {
    let (a, b, c) = (randn(&[4, 3, 5], 1), randn(&[3, 1], 2), randn(&[5, 3], 3));
    check_op("add", device, &[a.clone(), b.clone()], |t| t[0].add(&t[1]), 1e-5);
    check_op("sub", device, &[a.clone(), b.clone()], |t| t[0].sub(&t[1]), 1e-5);
    check_op("mul", device, &[a.clone(), b.clone()], |t| t[0].mul(&t[1]), 1e-5);
    let pos = b.abs().unwrap().add_scalar(0.5).unwrap();
    check_op("div", device, &[a.clone(), pos], |t| t[0].div(&t[1]), 1e-4);
    // A transposed view as an operand.
    check_op("add of a transpose", device, &[a.clone(), c], |t| t[0].add(&t[1].t()?), 1e-5);
});

device_test!(pointwise_functions_and_their_gradients, |device| {
    let x = randn(&[7, 33], 4);
    let pos = x.abs().unwrap().add_scalar(0.1).unwrap();
    check_op("neg", device, &[x.clone()], |t| t[0].neg(), 1e-6);
    check_op("exp", device, &[x.clone()], |t| t[0].exp(), 1e-5);
    check_op("log", device, &[pos.clone()], |t| t[0].log(), 1e-5);
    check_op("sqrt", device, &[pos], |t| t[0].sqrt(), 1e-5);
    check_op("add_scalar", device, &[x.clone()], |t| t[0].add_scalar(1.5), 1e-6);
    check_op("mul_scalar", device, &[x.clone()], |t| t[0].mul_scalar(-0.25), 1e-6);
    check_op("relu", device, &[x.clone()], |t| t[0].relu(), 1e-6);
    check_op("gelu_erf", device, &[x.clone()], |t| t[0].gelu_erf(), 1e-5);
    check_op("gelu_tanh", device, &[x.clone()], |t| t[0].gelu_tanh(), 1e-5);
    check_op("sigmoid", device, &[x.clone()], |t| t[0].sigmoid(), 1e-5);
    check_op("tanh", device, &[x], |t| t[0].tanh(), 1e-5);
});

device_test!(sums_and_means_over_axes, |device| {
    let x = randn(&[3, 4, 5], 5);
    check_op("sum axis 1", device, &[x.clone()], |t| t[0].sum(&[1], false), 1e-5);
    check_op("sum axes 0,2 keepdim", device, &[x.clone()], |t| t[0].sum(&[0, 2], true), 1e-5);
    check_op("mean last", device, &[x.clone()], |t| t[0].mean(&[-1], false), 1e-5);
    check_op("mean all", device, &[x.clone()], |t| t[0].mean_all(), 1e-5);
    check_op("var", device, &[x], |t| t[0].var(&[1], 1, false), 1e-4);
});

device_test!(dense_views_keep_their_layout, |device| {
    // A channels-last image batch: NCHW shape over NHWC memory, as the device conv returns.
    let nhwc = randn(&[2, 5, 3, 4], 11);
    let (x, other) = (nhwc.permute(&[0, 3, 1, 2]).unwrap(), randn(&[2, 5, 3, 4], 12).permute(&[0, 3, 1, 2]).unwrap());
    // Uploads are row-major: build the channels-last views on the device.
    let (dx, dother) = (
        nhwc.to_device(device).unwrap().permute(&[0, 3, 1, 2]).unwrap(),
        randn(&[2, 5, 3, 4], 12).to_device(device).unwrap().permute(&[0, 3, 1, 2]).unwrap(),
    );
    let relu = dx.relu().unwrap();
    let sum = dx.add(&dother).unwrap();
    for (got, want) in [(&relu, x.relu().unwrap()), (&sum, x.add(&other).unwrap())] {
        assert_eq!(got.strides(), dx.strides(), "the result keeps the channels-last strides");
        assert_eq!(values(got), want.to_f64_vec());
    }
    check_op("relu on channels-last", device, &[nhwc], |t| t[0].permute(&[0, 3, 1, 2])?.relu(), 1e-6);
});
