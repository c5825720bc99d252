//! Per-step cost of the bucketed gradient all-reduce (`dist::GradientBuckets`,
//! 25 MB buckets as PyTorch DDP): a training step's forward + backward with no
//! communication, against the same step with the buckets reduced
//! 1. after backward (`all_reduce_mean`, the reference path), and
//! 2. overlapped with backward (`backward_all_reduce_mean`, each bucket
//!    reduced on the rank's communication thread while backward goes on; what
//!    `src/train.rs` runs),
//!
//! for two models: a full-width ResNet-18 SimCLR on small images (11 M
//! parameters, compute-heavy) and a wide MLP (17 M parameters, little compute
//! per parameter, so communication shows).
//!
//! Communicators:
//! - CPU: two ranks as threads of this process (`ThreadGroup`), sharing the
//!   machine's cores, each with its own model and batch. Every step starts with
//!   a barrier; a step's time is the slower rank's. The baseline runs the same
//!   two ranks with no gradient reduce, so `ratio` is what the reduce adds
//!   under the same contention.
//! - GPU (built with `--features nccl`, on a machine with a GPU and libnccl):
//!   NCCL at world size 1 through the `Communicator` trait (host tensors copied
//!   to the GPU and back). With one rank the sum is the identity, so this
//!   measures the fixed cost of the path: flatten, upload, ncclAllReduce,
//!   download, write-back. Elsewhere it prints why it was skipped.
//!
//! The variants are interleaved step by step (one warm-up round first), so a
//! change of machine load affects all three alike; times are medians.
//!
//! Run: `cargo bench --bench allreduce_buckets` (results under benches/results/).

mod common;

use simclr::checkpoint::ModelSpec;
use simclr::dist::buckets::DEFAULT_BUCKET_MB;
use simclr::dist::{CommWorker, Communicator, GradientBuckets, ThreadGroup};
use simclr::nn::mlp::Activation;
use simclr::nn::{parameter_count, parameters, Mlp, Module};
use simclr::ops::loss::nt_xent;
use simclr::{DType, Result, Rng, Tensor};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    NoCommunication,
    AfterBackward,
    Overlapped,
}

const VARIANTS: [Variant; 3] = [Variant::NoCommunication, Variant::AfterBackward, Variant::Overlapped];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::NoCommunication => "no communication",
            Variant::AfterBackward => "after backward",
            Variant::Overlapped => "overlapped",
        }
    }
}

/// A model and one fixed batch: `loss()` runs its forward pass.
trait Workload {
    fn params(&self) -> Vec<Tensor>;
    fn loss(&mut self) -> Result<Tensor>;
}

struct SimClrStep {
    model: simclr::nn::simclr::SimClr,
    views: (Tensor, Tensor),
}

impl Workload for SimClrStep {
    fn params(&self) -> Vec<Tensor> {
        parameters(&self.model).into_iter().map(|(_, p)| p).collect()
    }
    fn loss(&mut self) -> Result<Tensor> {
        self.model.loss(&self.views.0, &self.views.1)
    }
}

struct MlpStep {
    model: Mlp,
    x: Tensor,
}

impl Workload for MlpStep {
    fn params(&self) -> Vec<Tensor> {
        parameters(&self.model).into_iter().map(|(_, p)| p).collect()
    }
    fn loss(&mut self) -> Result<Tensor> {
        nt_xent(&self.model.forward(&self.x)?, 0.5)
    }
}

struct Case {
    name: &'static str,
    describe: String,
    build: fn(rank: usize) -> Box<dyn Workload>,
    steps: usize,
}

const RESNET_BATCH: usize = 4;
fn resnet_spec() -> ModelSpec {
    ModelSpec {
        base_model: "resnet18".into(),
        num_frames: 1,
        image_size: 64,
        width: 1.0,
        small_stem: false,
        temporal: "mean".into(),
        projection_dim: 128,
        temperature: 0.5,
    }
}
const MLP_SIZES: [usize; 5] = [2048, 2048, 2048, 2048, 2048];
const MLP_ROWS: usize = 64;

fn resnet(rank: usize) -> Box<dyn Workload> {
    let spec = resnet_spec();
    let mut model = spec.build(&mut Rng::new(0)).expect("build the ResNet");
    model.set_training(true);
    let mut rng = Rng::new(1 + rank as u64);
    let shape = [RESNET_BATCH, spec.num_frames, 3, spec.image_size, spec.image_size];
    let views = (
        Tensor::randn(&shape, 1.0, DType::F32, &mut rng).unwrap(),
        Tensor::randn(&shape, 1.0, DType::F32, &mut rng).unwrap(),
    );
    Box::new(SimClrStep { model, views })
}

fn mlp(rank: usize) -> Box<dyn Workload> {
    let model = Mlp::new(&MLP_SIZES, Activation::Relu, DType::F32, &mut Rng::new(0)).expect("build the MLP");
    let x = Tensor::randn(&[MLP_ROWS, MLP_SIZES[0]], 1.0, DType::F32, &mut Rng::new(1 + rank as u64)).unwrap();
    Box::new(MlpStep { model, x })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

/// One rank's step times (seconds), per variant, over `steps` interleaved rounds.
fn rank_steps(comm: Arc<dyn Communicator>, case: &Case) -> Result<Vec<Vec<f64>>> {
    let mut work = (case.build)(comm.rank());
    let params = work.params();
    let buckets = GradientBuckets::new(&params, DEFAULT_BUCKET_MB)?;
    let worker = CommWorker::spawn(comm.clone())?;
    let mut times = vec![Vec::new(); VARIANTS.len()];
    for round in 0..=case.steps {
        for (v, &variant) in VARIANTS.iter().enumerate() {
            // The worker is idle between steps (every step waits for its buckets), so the
            // barrier and the reference path may use the communicator directly.
            comm.barrier()?;
            let start = Instant::now();
            params.iter().for_each(Tensor::zero_grad);
            let loss = work.loss()?;
            match variant {
                Variant::NoCommunication => loss.backward()?,
                Variant::AfterBackward => {
                    loss.backward()?;
                    buckets.all_reduce_mean(&*comm)?;
                }
                Variant::Overlapped => buckets.backward_all_reduce_mean(&loss, &worker)?,
            }
            let loss_value = loss.item()?;
            assert!(loss_value.is_finite(), "non-finite loss {loss_value}");
            if round > 0 {
                times[v].push(start.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times)
}

/// Runs `case` on the ranks `comms` (one thread each) and prints the table.
fn bench(case: &Case, comms: Vec<Arc<dyn Communicator>>) -> Result<()> {
    let world = comms.len();
    let per_rank: Vec<Result<Vec<Vec<f64>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms.into_iter().map(|c| s.spawn(move || rank_steps(c, case))).collect();
        handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    });
    let per_rank: Vec<Vec<Vec<f64>>> = per_rank.into_iter().collect::<Result<_>>()?;
    // A step is done when its slowest rank is.
    let slowest = |v: usize| -> Vec<f64> {
        (0..case.steps).map(|i| per_rank.iter().map(|r| r[v][i]).fold(0.0, f64::max)).collect()
    };
    let base = median(&slowest(0));
    println!("{:<18} {:>10} {:>12} {:>10}", "variant", "median ms", "reduce ms", "ratio");
    for (v, variant) in VARIANTS.iter().enumerate() {
        let t = median(&slowest(v));
        println!("{:<18} {:>10.1} {:>12.1} {:>10.3}", variant.name(), t * 1e3, (t - base) * 1e3, t / base);
    }
    println!(
        "# {world} rank(s), {} timed steps per variant; reduce ms = median step minus the no-communication median",
        case.steps
    );
    Ok(())
}

fn describe_buckets(case: &Case) {
    let work = (case.build)(0);
    let params = work.params();
    let buckets = GradientBuckets::new(&params, DEFAULT_BUCKET_MB).expect("bucket plan");
    let mb: Vec<String> =
        buckets.bucket_numels().iter().map(|&n| format!("{:.1}", n as f64 * 4.0 / 1048576.0)).collect();
    let numel: usize = params.iter().map(Tensor::numel).sum();
    println!("\n## {}", case.name);
    println!("# {}", case.describe);
    println!(
        "# {numel} parameters in {} tensors, f32: {} buckets of [{}] MB (cap {DEFAULT_BUCKET_MB} MB)",
        params.len(),
        buckets.len(),
        mb.join(", ")
    );
}

fn cases() -> Vec<Case> {
    let spec = resnet_spec();
    let resnet_params = {
        let model = spec.build(&mut Rng::new(0)).unwrap();
        parameter_count(&model)
    };
    vec![
        Case {
            name: "resnet18 SimCLR, full width",
            describe: format!(
                "{} width {} standard stem, {} frame {}x{}, projection {}, {RESNET_BATCH} clips per rank \
                 ({} images through the encoder), {resnet_params} parameters",
                spec.base_model,
                spec.width,
                spec.num_frames,
                spec.image_size,
                spec.image_size,
                spec.projection_dim,
                2 * RESNET_BATCH * spec.num_frames
            ),
            build: resnet,
            steps: 5,
        },
        Case {
            name: "MLP, parameter-heavy",
            describe: format!("Linear+ReLU {MLP_SIZES:?}, {MLP_ROWS} rows per rank, NT-Xent on the outputs"),
            build: mlp,
            steps: 7,
        },
    ]
}

fn cpu_threads(cases: &[Case]) -> Result<()> {
    println!("\n# ---- CPU: thread communicator, world size 2 (both ranks share the cores)");
    for case in cases {
        describe_buckets(case);
        let comms = ThreadGroup::new(2, Duration::from_secs(600))?;
        bench(case, comms.into_iter().map(|c| Arc::new(c) as Arc<dyn Communicator>).collect())?;
    }
    Ok(())
}

#[cfg(feature = "nccl")]
fn nccl_world_of_one(cases: &[Case]) -> Result<()> {
    use simclr::backend::cuda::Gpu;
    use simclr::dist::nccl::NcclCommunicator;
    use simclr::dist::rendezvous::Launcher;
    use simclr::dist::DistEnv;

    println!("\n# ---- GPU: NCCL communicator, world size 1 (host tensors through the GPU)");
    let gpu = match Gpu::open(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("nccl: skipped: no GPU ({e})");
            return Ok(());
        }
    };
    println!("# device: {}", gpu.name());
    let port = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| simclr::Error::dist("bench", e.to_string()))?;
    let env = DistEnv {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port.local_addr().map_err(|e| simclr::Error::dist("bench", e.to_string()))?.port(),
        launcher: Launcher::Torchrun,
    };
    drop(port);
    let comm: Arc<dyn Communicator> = match NcclCommunicator::connect(&env, gpu, Duration::from_secs(120)) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            println!("nccl: skipped: {e}");
            return Ok(());
        }
    };
    for case in cases {
        describe_buckets(case);
        bench(case, vec![comm.clone()])?;
    }
    Ok(())
}

#[cfg(not(feature = "nccl"))]
fn nccl_world_of_one(_: &[Case]) -> Result<()> {
    println!("\n# ---- GPU: NCCL communicator, world size 1");
    println!("nccl: skipped: built without --features nccl");
    Ok(())
}

fn main() -> Result<()> {
    common::print_header(
        "bucketed gradient all-reduce benchmark",
        &["src", "benches/allreduce_buckets.rs", "Cargo.toml"],
    );
    if let Ok(commit) = std::fs::read_to_string(".gpu/commit") {
        // On the GPU machine (no git there): the commit tools/gpu/prepare.sh built from.
        println!("# binaries built from: {}", commit.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    println!("# per step: zero_grad, forward, backward (+ the bucketed all-reduce); times are medians");
    let cases = cases();
    cpu_threads(&cases)?;
    nccl_world_of_one(&cases)
}
