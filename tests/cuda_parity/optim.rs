//! Fused multi-tensor optimiser steps (kernels/optim.cu) against `simclr::optim::{AdamW, Lars}`:
//! three steps on the same parameters and gradients, then parameters and state compared.

use crate::common::*;
use simclr::backend::cuda::kernels::optim::{
    AdamConfig, AdamTensor, FusedAdam, FusedLars, LarsConfig, LarsTensor, CHUNK_ELEMS,
};
use simclr::backend::cuda::{DeviceBuffer, Gpu};
use simclr::optim::{AdamW, Lars, Optimizer};
use simclr::Tensor;

/// Parameter shapes: odd sizes (scalar tails), a small matrix, and a weight of several chunks.
const SHAPES: &[&[usize]] = &[&[1], &[3], &[100], &[1000], &[4099], &[7, 13], &[200, 250]];
const STEPS: u64 = 3;

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn initial_params(shapes: &[&[usize]]) -> Vec<Vec<f32>> {
    shapes.iter().enumerate().map(|(i, s)| normal(numel(s), 0.5, 100 + i as u64)).collect()
}

/// The gradient of tensor `i` at `step`: different every step.
fn gradient(shape: &[usize], i: usize, step: u64) -> Vec<f32> {
    normal(numel(shape), 0.1, 1000 * step + i as u64)
}

fn cpu_params(values: &[Vec<f32>], shapes: &[&[usize]]) -> Vec<Tensor> {
    values.iter().zip(shapes).map(|(v, s)| Tensor::from_vec(v.clone(), s).unwrap().requires_grad().unwrap()).collect()
}

fn set_cpu_grads(params: &[Tensor], shapes: &[&[usize]], step: u64) {
    for (i, (p, s)) in params.iter().zip(shapes).enumerate() {
        p.set_grad(Some(Tensor::from_vec(gradient(s, i, step), s).unwrap())).unwrap();
    }
}

fn upload_grads(gpu: &Gpu, shapes: &[&[usize]], step: u64) -> Vec<DeviceBuffer<f32>> {
    shapes.iter().enumerate().map(|(i, s)| gpu.upload(&gradient(s, i, step)).unwrap()).collect()
}

fn zeros_like(gpu: &Gpu, shapes: &[&[usize]]) -> Vec<DeviceBuffer<f32>> {
    shapes.iter().map(|s| gpu.zeros::<f32>(numel(s)).unwrap()).collect()
}

/// `state.buffers` entry `{name}.{i}` as f32.
fn state_buffer(opt: &dyn Optimizer, name: &str, i: usize) -> Vec<f32> {
    let key = format!("{name}.{i}");
    let state = opt.state();
    let (_, t) = state.buffers.iter().find(|(n, _)| *n == key).unwrap_or_else(|| panic!("no {key}"));
    t.to_vec::<f32>().unwrap()
}

/// Same operations in the same order as the CPU: equal up to a few f32 roundings.
const ATOL: f32 = 1e-7;
const RTOL: f32 = 1e-6;

fn check_adam(gpu: &Gpu, config: AdamConfig) {
    let shapes = SHAPES;
    let init = initial_params(shapes);
    let params = cpu_params(&init, shapes);
    let mut cpu = AdamW::new(params.clone(), config.lr, config.weight_decay, config.decoupled).unwrap();
    cpu.betas = config.betas;
    cpu.eps = config.eps;

    let mut w: Vec<DeviceBuffer<f32>> = init.iter().map(|v| gpu.upload(v).unwrap()).collect();
    let (mut m, mut v) = (zeros_like(gpu, shapes), zeros_like(gpu, shapes));
    let mut fused = FusedAdam::new(config).unwrap();
    for step in 1..=STEPS {
        set_cpu_grads(&params, shapes, step);
        cpu.step().unwrap();
        let grads = upload_grads(gpu, shapes, step);
        let mut tensors: Vec<AdamTensor> = w
            .iter_mut()
            .zip(&grads)
            .zip(m.iter_mut().zip(v.iter_mut()))
            .map(|((param, grad), (m, v))| AdamTensor { param, grad, m, v })
            .collect();
        if step == STEPS {
            tensors.reverse(); // a different table: the cached one must be replaced
        }
        fused.step(gpu, &mut tensors, step).unwrap();
    }
    for (i, p) in params.iter().enumerate() {
        let what = |b: &str| format!("{config:?} {b} of {:?}", shapes[i]);
        assert_close(&what("param"), &w[i].to_vec().unwrap(), &p.to_vec::<f32>().unwrap(), ATOL, RTOL);
        assert_close(&what("m"), &m[i].to_vec().unwrap(), &state_buffer(&cpu, "m", i), ATOL, RTOL);
        assert_close(&what("v"), &v[i].to_vec().unwrap(), &state_buffer(&cpu, "v", i), ATOL * 1e-2, RTOL);
    }
}

parity_test!(adamw_matches_the_cpu, |gpu| {
    assert!(numel(SHAPES[SHAPES.len() - 1]) > 3 * CHUNK_ELEMS, "the big weight must span several chunks");
    check_adam(gpu, AdamConfig::adamw(0.05, 0.1));
    check_adam(gpu, AdamConfig { betas: (0.8, 0.99), eps: 1e-6, ..AdamConfig::adamw(0.02, 0.0) });
});

parity_test!(adam_with_l2_decay_matches_the_cpu, |gpu| {
    check_adam(gpu, AdamConfig::adam(0.05, 0.05));
    check_adam(gpu, AdamConfig::adam(0.01, 0.0));
});

fn check_lars(gpu: &Gpu, config: LarsConfig) {
    // One extra weight matrix that starts at zero: ‖w‖ = 0 gives trust ratio 1.
    let mut shapes = SHAPES.to_vec();
    shapes.push(&[5, 6]);
    let mut init = initial_params(&shapes);
    init.last_mut().unwrap().fill(0.0);
    let params = cpu_params(&init, &shapes);
    let mut cpu = Lars::new(params.clone(), config.lr, config.momentum, config.weight_decay, config.eta).unwrap();

    let mut w: Vec<DeviceBuffer<f32>> = init.iter().map(|v| gpu.upload(v).unwrap()).collect();
    let mut u = zeros_like(gpu, &shapes);
    let mut fused = FusedLars::new(config).unwrap();
    for step in 1..=STEPS {
        set_cpu_grads(&params, &shapes, step);
        cpu.step().unwrap();
        let grads = upload_grads(gpu, &shapes, step);
        let mut tensors: Vec<LarsTensor> = w
            .iter_mut()
            .zip(&grads)
            .zip(u.iter_mut())
            .zip(&shapes)
            .map(|(((param, grad), momentum), s)| LarsTensor { param, grad, momentum, adapt: s.len() > 1 })
            .collect();
        fused.step(gpu, &mut tensors).unwrap();
    }
    for (i, p) in params.iter().enumerate() {
        let what = |b: &str| format!("{config:?} {b} of {:?}", shapes[i]);
        assert_close(&what("param"), &w[i].to_vec().unwrap(), &p.to_vec::<f32>().unwrap(), ATOL, RTOL);
        assert_close(&what("momentum"), &u[i].to_vec().unwrap(), &state_buffer(&cpu, "momentum", i), ATOL, RTOL);
    }
}

parity_test!(lars_matches_the_cpu, |gpu| {
    check_lars(gpu, LarsConfig { lr: 0.5, momentum: 0.9, weight_decay: 1e-2, eta: 0.02 });
    check_lars(gpu, LarsConfig { lr: 0.1, momentum: 0.0, weight_decay: 0.0, eta: 0.001 });
});

parity_test!(empty_tensors_and_empty_lists_are_fine, |gpu| {
    // An empty tensor owns no chunk: the blocks of its neighbours must still find their tensor.
    let init = [normal(5, 1.0, 1), vec![], normal(9, 1.0, 2)];
    let mut w: Vec<DeviceBuffer<f32>> = init.iter().map(|v| gpu.upload(v).unwrap()).collect();
    let grads: Vec<DeviceBuffer<f32>> = init.iter().map(|v| gpu.upload(&vec![0.5; v.len()]).unwrap()).collect();
    let mut u: Vec<DeviceBuffer<f32>> = init.iter().map(|v| gpu.zeros::<f32>(v.len()).unwrap()).collect();
    let mut fused = FusedLars::new(LarsConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0, eta: 1.0 }).unwrap();
    let mut tensors: Vec<LarsTensor> = w
        .iter_mut()
        .zip(&grads)
        .zip(u.iter_mut())
        .map(|((param, grad), momentum)| LarsTensor { param, grad, momentum, adapt: false })
        .collect();
    fused.step(gpu, &mut tensors).unwrap();
    fused.step(gpu, &mut []).unwrap();
    for (i, v) in init.iter().enumerate() {
        let want: Vec<f32> = v.iter().map(|x| x - 0.5 * 0.1f32).collect();
        assert_close(&format!("tensor {i}"), &w[i].to_vec().unwrap(), &want, 0.0, 1e-7);
    }
    FusedAdam::new(AdamConfig::adamw(1e-3, 0.0)).unwrap().step(gpu, &mut [], 1).unwrap();
});

parity_test!(optimizers_reject_bad_input, |gpu| {
    let mut w = gpu.zeros::<f32>(10).unwrap();
    let short = gpu.zeros::<f32>(9).unwrap();
    let (mut m, mut v) = (gpu.zeros::<f32>(10).unwrap(), gpu.zeros::<f32>(10).unwrap());
    let mut adam = FusedAdam::new(AdamConfig::adamw(1e-3, 0.0)).unwrap();
    let mut t = [AdamTensor { param: &mut w, grad: &short, m: &mut m, v: &mut v }];
    let err = adam.step(gpu, &mut t, 1).unwrap_err();
    assert!(err.to_string().contains("grad has 9 elements"), "{err}");
    let grad = gpu.zeros::<f32>(10).unwrap();
    let mut t = [AdamTensor { param: &mut w, grad: &grad, m: &mut m, v: &mut v }];
    assert!(adam.step(gpu, &mut t, 0).unwrap_err().to_string().contains("step"));
    adam.config.betas = (0.9, 1.0);
    assert!(adam.step(gpu, &mut t, 1).unwrap_err().to_string().contains("betas"));
    assert!(FusedAdam::new(AdamConfig::adamw(-1.0, 0.0)).is_err());
    assert!(FusedAdam::new(AdamConfig::adam(1e-3, f64::NAN)).is_err());

    let mut lars = FusedLars::new(LarsConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0, eta: 1e-3 }).unwrap();
    let mut mom = gpu.zeros::<f32>(9).unwrap();
    let mut t = [LarsTensor { param: &mut w, grad: &grad, momentum: &mut mom, adapt: true }];
    let err = lars.step(gpu, &mut t).unwrap_err();
    assert!(err.to_string().contains("momentum has 9 elements"), "{err}");
    for bad in [
        LarsConfig { lr: 0.1, momentum: 1.0, weight_decay: 0.0, eta: 1e-3 },
        LarsConfig { lr: 0.1, momentum: 0.9, weight_decay: -1.0, eta: 1e-3 },
        LarsConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0, eta: 0.0 },
        LarsConfig { lr: f64::INFINITY, momentum: 0.9, weight_decay: 0.0, eta: 1e-3 },
    ] {
        assert!(FusedLars::new(bad).is_err(), "{bad:?}");
    }
});
