//! The NCCL communicator (feature `nccl`). A GPU machine runs the `#[ignore]`d
//! test: world size 1 through NCCL, every collective on host and on device
//! tensors, synchronised batch norm, and short training runs on the CPU and the
//! GPU, which must match one process bitwise (a sum over one rank changes nothing).
//! NCCL allows one rank per GPU, so more ranks need a machine with more GPUs.
#![cfg(feature = "nccl")]

mod common;

use common::temp_dir;

use common::assert_same_weights;
use simclr::backend::cuda::Gpu;
use simclr::backend::Device;
use simclr::config::TrainConfig;
use simclr::data::synthetic::{write_bouncing, BouncingConfig, BouncingDataset};
use simclr::dist::nccl::NcclCommunicator;
use simclr::dist::rendezvous::Launcher;
use simclr::dist::{connect_rank, sync_batch_norm_2d, Communicator, DistBackend, DistEnv};
use simclr::ops::batchnorm::{batch_norm_2d, RunningStats};
use simclr::train::{train, TrainOptions};
use simclr::{DType, Rng, Tensor};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

fn world_of_one() -> DistEnv {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    DistEnv {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        launcher: Launcher::Torchrun,
    }
}

#[test]
fn the_kernel_emulator_is_refused_with_a_clear_error() {
    let err = NcclCommunicator::connect(&world_of_one(), Gpu::emulated(), Duration::from_secs(5)).err().unwrap();
    assert!(err.to_string().contains("NCCL needs a real GPU"), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU and libnccl: run with --ignored on the GPU machine"]
fn world_size_one_runs_every_collective_and_training_through_nccl() {
    let gpu = Gpu::open(0).unwrap();
    let comm = NcclCommunicator::connect(&world_of_one(), gpu.clone(), Duration::from_secs(60)).unwrap();
    let x = Tensor::randn(&[3, 5], 1.0, DType::F32, &mut Rng::new(1)).unwrap();
    assert_eq!(comm.all_reduce_sum(&x).unwrap().to_f64_vec(), x.to_f64_vec());
    let x64 = Tensor::randn(&[7], 1.0, DType::F64, &mut Rng::new(2)).unwrap();
    assert_eq!(comm.all_reduce_sum(&x64).unwrap().to_f64_vec(), x64.to_f64_vec());
    let gathered = comm.all_gather(&x.t().unwrap()).unwrap();
    assert_eq!((gathered.shape(), gathered.to_f64_vec()), (&[5usize, 3][..], x.t().unwrap().to_f64_vec()));
    assert_eq!(comm.broadcast(&x, 0).unwrap().to_f64_vec(), x.to_f64_vec());
    comm.barrier().unwrap();
    let mut buf = gpu.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    comm.all_reduce_sum_buffer(&mut buf).unwrap();
    assert_eq!(gpu.download(&buf).unwrap(), vec![1.0, 2.0, 3.0]);
    drop(comm);

    // Device tensors go to NCCL from their own buffers and the results stay on the GPU — what
    // `--dist_backend auto` gives GPU ranks (it must pick NCCL on this machine).
    let cuda = Device::Cuda(0);
    let (comm, which) = connect_rank(&world_of_one(), DistBackend::Auto, cuda, Duration::from_secs(60)).unwrap();
    assert!(which.contains("NCCL"), "{which}");
    let on_gpu = x.to_device(cuda).unwrap();
    let strided = on_gpu.t().unwrap(); // a view: sent as its row-major copy
    for (got, want) in [
        (comm.all_reduce_sum(&on_gpu).unwrap(), &x),
        (comm.all_gather(&strided).unwrap(), &x.t().unwrap()),
        (comm.broadcast(&on_gpu, 0).unwrap(), &x),
        (comm.all_reduce_sum(&on_gpu.narrow(0, 1, 2).unwrap()).unwrap(), &x.narrow(0, 1, 2).unwrap()),
    ] {
        assert_eq!(got.device(), cuda);
        assert_eq!(got.shape(), want.shape());
        assert_eq!(got.to_device(Device::Cpu).unwrap().to_f64_vec(), want.to_f64_vec());
    }
    let bf16 = x.to_dtype(DType::BF16).unwrap();
    let gathered = comm.all_gather(&bf16.to_device(cuda).unwrap()).unwrap();
    assert_eq!(gathered.to_device(Device::Cpu).unwrap().to_f64_vec(), bf16.to_f64_vec());

    // The training loop with the NCCL communicator: the same weights as one plain process.
    let dir = temp_dir("train");
    let data = dir.join("data");
    let clip = BouncingConfig { frames: 1, size: 16, ..Default::default() };
    write_bouncing(&data, &BouncingDataset { clips: 16, seed: 8, clips_per_shard: 8, clip }, |_| {}).unwrap();
    let cfg = |out: &str| TrainConfig {
        processed_dir: data.clone(),
        epochs: 1,
        batch_size: 8,
        num_frames: 1,
        image_size: 16,
        width: 0.125,
        small_stem: true,
        workers: 1,
        seed: 4,
        out: dir.join(out),
        device: "cpu".into(), // host tensors through NCCL (`auto` would train on the GPU)
        ..TrainConfig::default()
    };
    let plain = train(&cfg("plain"), &TrainOptions { resume: None, verbose: false, comm: None }).unwrap();
    let host_comm: Arc<dyn Communicator> =
        Arc::new(NcclCommunicator::connect(&world_of_one(), gpu, Duration::from_secs(60)).unwrap());
    let nccl = train(&cfg("nccl"), &TrainOptions { resume: None, verbose: false, comm: Some(host_comm) }).unwrap();
    assert_same_weights(&plain.final_model, &nccl.final_model);

    // Synchronised batch norm on the device through NCCL: over one rank, batch norm.
    let xb = Tensor::randn(&[4, 3, 5, 5], 2.0, DType::F32, &mut Rng::new(3)).unwrap().to_device(cuda).unwrap();
    let stats = || {
        let mut s = RunningStats::new(3, DType::F32).unwrap();
        s.mean = s.mean.to_device(cuda).unwrap();
        s.var = s.var.to_device(cuda).unwrap();
        s
    };
    let (mut s_sync, mut s_plain) = (stats(), stats());
    let synced = sync_batch_norm_2d(&xb, None, None, &mut s_sync, true, 1e-5, &comm).unwrap();
    let plain = batch_norm_2d(&xb, None, None, &mut s_plain, true, 1e-5).unwrap();
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_f64_vec();
    let worst = host(&synced).iter().zip(host(&plain)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-5, "sync batch norm through NCCL differs from batch norm by {worst}");

    // Training on the GPU: gradient buckets flattened on the device and reduced by NCCL in
    // place (one rank: the sums change nothing, so the weights are bitwise plain GPU training's).
    let on_gpu = |out: &str| TrainConfig { device: "cuda".into(), ..cfg(out) };
    let plain = train(&on_gpu("plain_gpu"), &TrainOptions { resume: None, verbose: false, comm: None }).unwrap();
    let nccl = train(&on_gpu("nccl_gpu"), &TrainOptions { resume: None, verbose: false, comm: Some(comm) });
    assert_same_weights(&plain.final_model, &nccl.unwrap().final_model);
}
