//! Modules: torchvision-compatible ResNet structure and names, state dicts,
//! train/eval behaviour, and gradients through whole modules.

use simclr::autograd::gradcheck::{gradcheck, GradcheckOptions};
use simclr::nn::mlp::Activation;
use simclr::nn::resnet::{Depth, ResNet, ResNetConfig};
use simclr::nn::temporal::{temporal_slope, TemporalKind, TemporalPooling};
use simclr::nn::{load_state_dict, parameter_count, parameters, state_dict, Mlp, Module, MultiHeadAttention};
use simclr::tensor::safetensors_io::{load_safetensors, save_safetensors};
use simclr::{DType, Rng, Tensor};

fn resnet(depth: Depth, width: f64, small_stem: bool, classes: Option<usize>) -> ResNet {
    ResNet::new(ResNetConfig { depth, width, small_stem, num_classes: classes }, DType::F32, &mut Rng::new(0)).unwrap()
}

#[test]
fn parameter_counts_match_torchvision() {
    // torchvision.models.resnet{18,34,50}(num_classes=1000): sum(p.numel() for p in m.parameters())
    assert_eq!(parameter_count(&resnet(Depth::R18, 1.0, false, Some(1000))), 11_689_512);
    assert_eq!(parameter_count(&resnet(Depth::R34, 1.0, false, Some(1000))), 21_797_672);
    assert_eq!(parameter_count(&resnet(Depth::R50, 1.0, false, Some(1000))), 25_557_032);
}

#[test]
fn state_dict_names_follow_torchvision() {
    let m = resnet(Depth::R18, 1.0, false, Some(1000));
    let sd = state_dict(&m);
    assert_eq!(sd.len(), 122); // len(torchvision.models.resnet18().state_dict())
    let names: Vec<&str> = sd.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "conv1.weight",
        "bn1.running_mean",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.running_var",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.contains(&expected), "missing {expected}");
    }
    let get = |n: &str| sd.iter().find(|(k, _)| k == n).unwrap().1.shape().to_vec();
    assert_eq!(get("conv1.weight"), vec![64, 3, 7, 7]);
    assert_eq!(get("layer3.0.downsample.0.weight"), vec![256, 128, 1, 1]);
    assert_eq!(get("fc.weight"), vec![1000, 512]);
    let r50 = state_dict(&resnet(Depth::R50, 1.0, false, Some(1000)));
    assert_eq!(r50.len(), 320); // len(torchvision.models.resnet50().state_dict())
    assert!(r50.iter().any(|(n, t)| n == "layer1.0.conv3.weight" && t.shape() == [256, 64, 1, 1]));
}

#[test]
fn small_resnet_forward_backward_and_eval() {
    let mut m = resnet(Depth::R18, 0.25, true, None);
    assert_eq!(m.feature_dim(), 128);
    let x = Tensor::randn(&[2, 3, 16, 16], 1.0, DType::F32, &mut Rng::new(1)).unwrap();
    let y = m.forward(&x).unwrap();
    assert_eq!(y.shape(), &[2, 128]);
    y.mul(&y).unwrap().mean_all().unwrap().backward().unwrap();
    for (name, p) in parameters(&m) {
        let g = p.grad().unwrap_or_else(|| panic!("{name} got no gradient"));
        assert!(g.to_f64_vec().iter().all(|v| v.is_finite()), "{name}");
    }
    // Training updated the running statistics and the batch counter; eval uses and keeps them.
    let sd = state_dict(&m);
    let rm = sd.iter().find(|(n, _)| n == "bn1.running_mean").unwrap().1.to_f64_vec();
    assert!(rm.iter().any(|v| *v != 0.0));
    assert_eq!(sd.iter().find(|(n, _)| n == "bn1.num_batches_tracked").unwrap().1.item().unwrap(), 1.0);
    m.set_training(false);
    let e1 = m.forward(&x).unwrap().to_f64_vec();
    let e2 = m.forward(&x).unwrap().to_f64_vec();
    assert_eq!(e1, e2);
    assert_eq!(state_dict(&m).iter().find(|(n, _)| n == "bn1.running_mean").unwrap().1.to_f64_vec(), rm);
    // The standard stem handles 64×64 frames.
    let mut std_stem = resnet(Depth::R18, 0.25, false, None);
    assert_eq!(std_stem.forward(&Tensor::zeros(&[1, 3, 64, 64], DType::F32).unwrap()).unwrap().shape(), &[1, 128]);
}

#[test]
fn state_dict_round_trips_through_safetensors() {
    let mut a = resnet(Depth::R18, 0.125, true, Some(3));
    a.forward(&Tensor::randn(&[2, 3, 8, 8], 1.0, DType::F32, &mut Rng::new(2)).unwrap()).unwrap(); // move running stats
    let path = std::env::temp_dir().join(format!("simclr-nn-{}.safetensors", std::process::id()));
    let sd = state_dict(&a);
    let refs: Vec<(&str, &Tensor)> = sd.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(&path, &refs, None).unwrap();
    let b = ResNet::new(
        ResNetConfig { depth: Depth::R18, width: 0.125, small_stem: true, num_classes: Some(3) },
        DType::F32,
        &mut Rng::new(99),
    )
    .unwrap();
    let (loaded, _) = load_safetensors(&path).unwrap();
    load_state_dict(&b, &loaded, true).unwrap();
    for ((na, ta), (nb, tb)) in state_dict(&a).iter().zip(state_dict(&b).iter()) {
        assert_eq!(na, nb);
        assert_eq!(ta.to_f64_vec(), tb.to_f64_vec(), "{na}");
    }
    // Strict loading reports missing, unexpected and mis-shaped tensors.
    let mut partial = loaded.clone();
    partial.retain(|(n, _)| n != "fc.bias");
    partial.push(("extra.weight".into(), Tensor::zeros(&[1], DType::F32).unwrap()));
    let i = partial.iter().position(|(n, _)| n == "conv1.weight").unwrap();
    partial[i].1 = Tensor::zeros(&[1, 2, 3], DType::F32).unwrap();
    let err = load_state_dict(&b, &partial, true).unwrap_err().to_string();
    assert!(
        err.contains("missing `fc.bias`")
            && err.contains("unexpected `extra.weight`")
            && err.contains("`conv1.weight`"),
        "{err}"
    );
    assert!(load_state_dict(&b, &loaded[..10], false).is_ok());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn attention_and_mlp_modules_have_correct_gradients() {
    let mut rng = Rng::new(3);
    let mha = std::cell::RefCell::new(MultiHeadAttention::new(4, 2, DType::F64, &mut rng).unwrap());
    let x = Tensor::randn(&[2, 3, 4], 1.0, DType::F64, &mut rng).unwrap();
    assert_eq!(mha.borrow_mut().forward(&x).unwrap().shape(), &[2, 3, 4]);
    gradcheck(&[x], |x| mha.borrow_mut().forward(&x[0]), GradcheckOptions::default()).unwrap();
    let names: Vec<String> = parameters(&*mha.borrow()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]);

    let mlp = std::cell::RefCell::new(Mlp::new(&[5, 7, 3], Activation::Gelu, DType::F64, &mut rng).unwrap());
    let x = Tensor::randn(&[4, 5], 1.0, DType::F64, &mut rng).unwrap();
    gradcheck(&[x], |x| mlp.borrow_mut().forward(&x[0]), GradcheckOptions::default()).unwrap();
    let names: Vec<String> = parameters(&*mlp.borrow()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]);
    assert!(Mlp::new(&[3], Activation::Relu, DType::F32, &mut rng).is_err());
    assert!(MultiHeadAttention::new(6, 4, DType::F32, &mut rng).is_err());
}

#[test]
fn vivit_forward_gradients_and_sizes() {
    use simclr::nn::vivit::{Vivit, VivitConfig};
    let cfg = VivitConfig {
        dim: 8,
        heads: 2,
        spatial_depth: 1,
        temporal_depth: 1,
        tubelet_frames: 2,
        patch: 4,
        frames: 4,
        image: 8,
    };
    let model = std::cell::RefCell::new(Vivit::new(cfg, DType::F64, &mut Rng::new(5)).unwrap());
    let x = Tensor::randn(&[2, 4, 3, 8, 8], 1.0, DType::F64, &mut Rng::new(6)).unwrap();
    let y = model.borrow_mut().forward(&x).unwrap();
    assert_eq!(y.shape(), &[2, 8]);
    y.mul(&y).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, p) in parameters(&*model.borrow()) {
        assert!(p.grad().is_some(), "{name} got no gradient");
    }
    // End-to-end gradient with respect to the clip, against finite differences.
    let small = Tensor::randn(&[1, 4, 3, 8, 8], 1.0, DType::F64, &mut Rng::new(7)).unwrap();
    gradcheck(&[small], |x| model.borrow_mut().forward(&x[0]), GradcheckOptions { eps: 1e-6, atol: 1e-6, rtol: 1e-4 })
        .unwrap();
    // Named sizes and their errors.
    let small_cfg = VivitConfig::named("vivit_small", 20, 128).unwrap();
    assert_eq!((small_cfg.dim, small_cfg.heads, small_cfg.dim / small_cfg.heads), (384, 6, 64));
    assert!(VivitConfig::named("vivit_huge", 20, 128).is_err());
    let bad = VivitConfig { frames: 5, ..cfg };
    assert!(Vivit::new(bad, DType::F32, &mut Rng::new(0)).is_err());
    let wrong_input = Tensor::zeros(&[1, 4, 3, 16, 16], DType::F64).unwrap();
    assert!(model.borrow_mut().forward(&wrong_input).is_err());
}

#[test]
fn simclr_model_trains_on_two_views() {
    use simclr::nn::simclr::{Encoder, SimClr};
    use simclr::optim::AdamW;
    let mut rng = Rng::new(8);
    let encoder = Encoder::named("resnet18", 3, 16, 0.125, true, TemporalKind::Mean, DType::F32, &mut rng).unwrap();
    assert_eq!(encoder.feature_dim(), 64);
    let mut model = SimClr::new(encoder, 16, 0.5, DType::F32, &mut rng).unwrap();
    let names: Vec<String> = parameters(&model).into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"encoder.layer1.0.conv1.weight".to_string())
            && names.contains(&"projector.layers.1.bias".to_string())
    );
    // Four clips; the second view is the first plus a little noise.
    let v1 = Tensor::randn(&[4, 3, 3, 16, 16], 1.0, DType::F32, &mut rng).unwrap();
    let v2 = v1.add(&Tensor::randn(&[4, 3, 3, 16, 16], 0.1, DType::F32, &mut rng).unwrap()).unwrap();
    let mut opt = AdamW::new(parameters(&model).into_iter().map(|(_, p)| p).collect(), 1e-3, 0.0, true).unwrap();
    let mut losses = Vec::new();
    for _ in 0..15 {
        opt.zero_grad();
        let loss = model.loss(&v1, &v2).unwrap();
        losses.push(loss.item().unwrap());
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    assert!(losses[14] < losses[0] - 0.1, "loss should fall on a fixed batch: {losses:?}");
    assert!(Encoder::named("alexnet", 3, 16, 1.0, false, TemporalKind::Mean, DType::F32, &mut rng).is_err());
    assert!(model.loss(&v1, &v2.narrow(0, 0, 2).unwrap()).is_err());
    let vivit = Encoder::named("vivit_tiny", 4, 32, 1.0, false, TemporalKind::Mean, DType::F32, &mut rng).unwrap();
    assert_eq!(vivit.feature_dim(), 192);
}

/// Frame features [B, T, F] with the frame order reversed.
fn reversed_frames(x: &Tensor) -> Tensor {
    let t = x.shape()[1];
    let frames: Vec<Tensor> = (0..t).rev().map(|i| x.narrow(1, i, 1).unwrap()).collect();
    Tensor::cat(&frames.iter().collect::<Vec<_>>(), 1).unwrap()
}

fn max_abs_difference(a: &Tensor, b: &Tensor) -> f64 {
    a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max)
}

#[test]
fn temporal_transformer_sees_frame_order_and_has_correct_gradients() {
    let (frames, dim) = (4, 8);
    let x = Tensor::randn(&[3, frames, dim], 1.0, DType::F64, &mut Rng::new(11)).unwrap();

    // The mean cannot tell a clip from the clip played backwards; the transformers can.
    let mut mean = TemporalPooling::new(TemporalKind::Mean, frames, dim, DType::F64, &mut Rng::new(0)).unwrap();
    assert!(max_abs_difference(&mean.forward(&x).unwrap(), &mean.forward(&reversed_frames(&x)).unwrap()) < 1e-12);
    assert!(parameters(&mean).is_empty(), "the mean has nothing to learn");
    for (kind, width) in [(TemporalKind::Transformer, dim), (TemporalKind::Motion, 2 * dim)] {
        let pooling =
            std::cell::RefCell::new(TemporalPooling::new(kind, frames, dim, DType::F64, &mut Rng::new(12)).unwrap());
        assert_eq!(pooling.borrow().output_dim(dim), width);
        let y = pooling.borrow_mut().forward(&x).unwrap();
        assert_eq!(y.shape(), &[3, width]);
        let backwards = pooling.borrow_mut().forward(&reversed_frames(&x)).unwrap();
        assert!(max_abs_difference(&y, &backwards) > 1e-3, "{kind:?}: reversing the frames should change the output");

        // Every parameter is reached by the loss, under PyTorch-style names.
        y.mul(&y).unwrap().sum_all().unwrap().backward().unwrap();
        let params = parameters(&*pooling.borrow());
        for (name, p) in &params {
            assert!(p.grad().is_some(), "{kind:?}: {name} got no gradient");
        }
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"positions") && names.contains(&"blocks.1.mlp.layers.1.bias"), "{names:?}");

        // Gradients with respect to the frame features and to the positional embeddings, in f64.
        let positions = Tensor::randn(&[1, frames, dim], 0.1, DType::F64, &mut Rng::new(13)).unwrap();
        let x = x.narrow(0, 0, 2).unwrap().contiguous().unwrap();
        let report = gradcheck(
            &[x, positions],
            |inputs| {
                let mut p = pooling.borrow_mut();
                if let TemporalPooling::Transformer(t) | TemporalPooling::Motion(t) = &mut *p {
                    t.positions = inputs[1].clone();
                }
                p.forward(&inputs[0])
            },
            GradcheckOptions { eps: 1e-6, atol: 1e-6, rtol: 1e-4 },
        )
        .unwrap();
        assert!(report.ops.contains(&"multi_head_attention"), "{:?}", report.ops); // attention, fused on the CPU

        // A clip of another length is a clear error.
        let wrong = Tensor::zeros(&[1, frames + 1, dim], DType::F64).unwrap();
        let e = pooling.borrow_mut().forward(&wrong).unwrap_err().to_string();
        assert!(e.contains("[B, 4, 8]"), "{kind:?}: {e}");
    }

    // `motion`'s first half attends over what changes: a still clip (every frame the same) comes
    // out as its frame plus an offset that is the same for every still clip, and a slope of 0.
    let mut motion = TemporalPooling::new(TemporalKind::Motion, frames, dim, DType::F64, &mut Rng::new(14)).unwrap();
    let still_frames = Tensor::randn(&[2, 1, dim], 1.0, DType::F64, &mut Rng::new(15)).unwrap();
    let still = Tensor::cat(&vec![&still_frames; frames], 1).unwrap();
    let y = motion.forward(&still).unwrap();
    let offset = y.narrow(1, 0, dim).unwrap().sub(&still_frames.reshape(&[2, dim]).unwrap()).unwrap();
    let (first, second) = (offset.narrow(0, 0, 1).unwrap(), offset.narrow(0, 1, 1).unwrap());
    assert!(max_abs_difference(&first, &second) < 1e-12, "{:?}", offset.to_f64_vec());
    assert!(first.to_f64_vec().iter().any(|v| v.abs() > 1e-6), "the blocks add a learned offset");
    assert!(y.narrow(1, dim, dim).unwrap().to_f64_vec().iter().all(|v| v.abs() < 1e-12), "a still clip has no slope");

    // The second half is the least-squares slope: frames a + b·t give b, played backwards −b.
    let (a, b) = (
        Tensor::randn(&[2, 1, dim], 1.0, DType::F64, &mut Rng::new(16)).unwrap(),
        Tensor::randn(&[2, 1, dim], 1.0, DType::F64, &mut Rng::new(17)).unwrap(),
    );
    let moving: Vec<Tensor> = (0..frames).map(|t| a.add(&b.mul_scalar(t as f64).unwrap()).unwrap()).collect();
    let moving = Tensor::cat(&moving.iter().collect::<Vec<_>>(), 1).unwrap();
    let b = b.reshape(&[2, dim]).unwrap();
    assert!(max_abs_difference(&temporal_slope(&moving).unwrap(), &b) < 1e-12);
    assert!(max_abs_difference(&temporal_slope(&reversed_frames(&moving)).unwrap(), &b.neg().unwrap()) < 1e-12);
    let y = motion.forward(&moving).unwrap();
    assert!(max_abs_difference(&y.narrow(1, dim, dim).unwrap(), &b) < 1e-12, "motion's second half is the slope");
    let e = temporal_slope(&b).unwrap_err().to_string();
    assert!(e.contains("[B, T, F]"), "{e}");

    // Clear errors: an unknown kind, a ViViT with an added transformer.
    assert!(TemporalKind::parse("gru").is_err());
    for kind in [TemporalKind::Transformer, TemporalKind::Motion] {
        let e = simclr::nn::simclr::Encoder::named("vivit_tiny", 4, 32, 1.0, false, kind, DType::F32, &mut Rng::new(0));
        let e = e.err().expect("vivit + transformer is refused").to_string();
        assert!(e.contains("--temporal") && e.contains("vivit_tiny"), "{e}");
    }
}

#[test]
fn transformer_encoder_checkpoints_and_older_checkpoints_load_as_mean() {
    use simclr::checkpoint::{load_model, save_model, ModelSpec};
    let dir = std::env::temp_dir().join(format!("simclr-temporal-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = ModelSpec {
        base_model: "resnet18".into(),
        num_frames: 3,
        image_size: 16,
        width: 0.125,
        small_stem: true,
        temporal: "transformer".into(),
        projection_dim: 8,
        temperature: 0.5,
    };
    let mut model = spec.build(&mut Rng::new(21)).unwrap();
    model.set_training(false);
    let clips = Tensor::randn(&[2, 3, 3, 16, 16], 1.0, DType::F32, &mut Rng::new(22)).unwrap();
    let want = model.encoder.forward(&clips).unwrap().to_f64_vec();
    let path = dir.join("transformer.safetensors");
    save_model(&path, &model, &spec, 1).unwrap();
    let (mut loaded, loaded_spec, _) = load_model(&path).unwrap();
    assert_eq!(loaded_spec.temporal, "transformer");
    assert!(state_dict(&loaded).iter().any(|(n, _)| n == "encoder.temporal.positions"));
    loaded.set_training(false);
    assert_eq!(loaded.encoder.forward(&clips).unwrap().to_f64_vec(), want);

    // A model file written before --temporal existed: its spec has no `temporal` field.
    let old_spec = ModelSpec { temporal: "mean".into(), ..spec.clone() };
    let old = old_spec.build(&mut Rng::new(23)).unwrap();
    let mut json: serde_json::Value = serde_json::to_value(&old_spec).unwrap();
    json.as_object_mut().unwrap().remove("temporal");
    let tensors = state_dict(&old);
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = std::collections::HashMap::from([
        ("format".to_string(), "simclr-model".to_string()),
        ("model".to_string(), json.to_string()),
        ("epoch".to_string(), "3".to_string()),
    ]);
    let old_path = dir.join("before-temporal.safetensors");
    save_safetensors(&old_path, &named, Some(meta)).unwrap();
    let (_, spec_read, epoch) = load_model(&old_path).unwrap();
    assert_eq!((spec_read.temporal.as_str(), epoch), ("mean", 3));

    // A spec naming an unknown aggregation fails with the choices.
    let e = ModelSpec { temporal: "lstm".into(), ..spec }.build(&mut Rng::new(0)).err().unwrap().to_string();
    assert!(e.contains("mean, transformer"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
