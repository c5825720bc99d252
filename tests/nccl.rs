//! The NCCL communicator (feature `nccl`). A GPU machine runs the `#[ignore]`d
//! test: world size 1 through NCCL, every collective and a short training run,
//! which must match one process bitwise (a sum over one rank changes nothing).
//! NCCL allows one rank per GPU, so more ranks need a machine with more GPUs.
#![cfg(feature = "nccl")]

mod common;

use common::temp_dir;

use common::assert_same_weights;
use simclr::backend::cuda::Gpu;
use simclr::config::TrainConfig;
use simclr::data::synthetic::{write_bouncing, BouncingConfig, BouncingDataset};
use simclr::dist::nccl::NcclCommunicator;
use simclr::dist::rendezvous::Launcher;
use simclr::dist::{Communicator, DistEnv};
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
    let comm: Arc<dyn Communicator> = Arc::new(comm);
    let nccl = train(&cfg("nccl"), &TrainOptions { resume: None, verbose: false, comm: Some(comm) }).unwrap();
    assert_same_weights(&plain.final_model, &nccl.final_model);
}
