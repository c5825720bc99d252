//! Data parallelism on the CPU: ranks are threads joined by `ThreadGroup`.
//!
//! - collectives: values, rank order, determinism, and faults (a rank that
//!   leaves, a rank that hangs, ranks that disagree) failing within the timeout;
//! - global-negative NT-Xent: the loss and gradients of W ranks equal the
//!   single-process ones on the concatenated batch (f64, 1e-12);
//! - synchronised batch norm against batch norm over the concatenated batch;
//! - a small SimCLR ResNet trained a few AdamW steps on 1, 2 and 4 ranks with
//!   the same global batch: same gradients and weights (f64, 1e-9) with
//!   `--sync_bn`; with per-rank batch norm (the default) the statistics, and so
//!   the gradients, differ by design;
//! - gradient all-reduce overlapped with backward: bitwise the after-backward
//!   result (tied and unused parameters, sync batch norm), buckets launched
//!   during backward, and a rank that fails or stalls mid-backward failing the
//!   others with a clear error within the timeout;
//! - rendezvous: torchrun/SLURM variables, node lists, the TCP id exchange.

use simclr::dist::rendezvous::{expand_nodelist, fetch_blob, first_host, serve_blob, share_from_rank0, Launcher};
use simclr::dist::{
    all_gather, broadcast_from_rank0, convert_sync_batch_norm, global_nt_xent, sync_batch_norm_2d, CommWorker,
    Communicator, DistEnv, GradientBuckets, SingleProcess, TcpCommunicator, ThreadGroup,
};
use simclr::nn::simclr::{Encoder, SimClr};
use simclr::nn::temporal::TemporalKind;
use simclr::nn::{parameters, state_dict, Linear, Module};
use simclr::ops::batchnorm::{batch_norm_2d, RunningStats};
use simclr::ops::loss::nt_xent;
use simclr::optim::AdamW;
use simclr::{DType, Error, Rng, Tensor};
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// How the ranks of a test talk: threads of this process, or TCP connections
/// (each rank still a thread here, but joined only through sockets, exactly as
/// separate processes are).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Threads,
    Tcp,
}

const TRANSPORTS: [Transport; 2] = [Transport::Threads, Transport::Tcp];

/// A port nobody listens on right now (the OS picks it; the small race with
/// other processes does not matter in a test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `f(comm)` on `world` threads, one rank each; results in rank order.
fn run_ranks<R: Send>(world: usize, timeout: Duration, f: impl Fn(Arc<dyn Communicator>) -> R + Sync) -> Vec<R> {
    run_over(Transport::Threads, world, timeout, f)
}

fn run_over<R: Send>(
    transport: Transport,
    world: usize,
    timeout: Duration,
    f: impl Fn(Arc<dyn Communicator>) -> R + Sync,
) -> Vec<R> {
    let port = free_port();
    let connect = move |rank: usize| -> Arc<dyn Communicator> {
        let env = DistEnv {
            rank,
            world_size: world,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            launcher: Launcher::Torchrun,
        };
        Arc::new(TcpCommunicator::connect(&env, timeout).unwrap())
    };
    let mut threads = match transport {
        Transport::Threads => ThreadGroup::new(world, timeout).unwrap().into_iter().map(Some).collect(),
        Transport::Tcp => Vec::new(),
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let f = &f;
                let thread_comm = threads.get_mut(rank).and_then(Option::take);
                s.spawn(move || {
                    let comm: Arc<dyn Communicator> = match thread_comm {
                        Some(c) => Arc::new(c),
                        None => connect(rank),
                    };
                    f(comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank panicked")).collect()
    })
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, DType::F64, &mut Rng::new(seed)).unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
}

fn dist_err_msg<T: std::fmt::Debug>(r: simclr::Result<T>) -> String {
    match r {
        Err(e @ Error::Dist { .. }) => e.to_string(),
        other => panic!("expected a distributed error, got {other:?}"),
    }
}

// ------------------------------------------------------------------ collectives

#[test]
fn collectives_give_rank_ordered_values_on_2_and_4_ranks() {
    for (world, transport) in [2, 4].into_iter().flat_map(|w| TRANSPORTS.map(|t| (w, t))) {
        let results = run_over(transport, world, TIMEOUT, |comm| {
            let r = comm.rank() as f64;
            let mine = Tensor::from_f64s(&[r, 10.0 * r, 100.0 + r], &[3], DType::F32).unwrap();
            let sum = comm.all_reduce_sum(&mine).unwrap();
            // A strided view (transposed) gathers in row-major order.
            let m = Tensor::from_f64s(&[r, r + 0.5, r + 0.25, r + 0.75], &[2, 2], DType::F64).unwrap().t().unwrap();
            let gathered = comm.all_gather(&m).unwrap();
            let root = world - 1;
            let b = comm.broadcast(&Tensor::full(&[2], r, DType::F64).unwrap(), root).unwrap();
            comm.barrier().unwrap();
            (sum, gathered, b)
        });
        let w = world as f64;
        let total: f64 = (0..world).map(|r| r as f64).sum();
        for (rank, (sum, gathered, b)) in results.iter().enumerate() {
            assert_eq!(sum.dtype(), DType::F32);
            assert_eq!(sum.to_f64_vec(), vec![total, 10.0 * total, 100.0 * w + total], "rank {rank} {transport:?}");
            assert_eq!(gathered.shape(), &[2 * world, 2]);
            let expect: Vec<f64> =
                (0..world).flat_map(|r| [r as f64, r as f64 + 0.25, r as f64 + 0.5, r as f64 + 0.75]).collect();
            assert_eq!(gathered.to_f64_vec(), expect, "rank order, rank {rank}");
            assert_eq!(b.to_f64_vec(), vec![(world - 1) as f64; 2]);
            assert!(!sum.is_tracked() && !gathered.is_tracked());
        }
    }
}

#[test]
fn all_reduce_is_deterministic_bitwise_identical_and_summed_in_rank_order() {
    let world = 4;
    // Values of very different magnitudes, where the order of f32 additions matters.
    let input = |rank: usize| {
        let v: Vec<f64> = (0..1000)
            .map(|i| {
                let x = Rng::new((rank * 1000 + i) as u64).normal();
                x * 10f64.powi(((i + rank) % 9) as i32 - 4)
            })
            .collect();
        Tensor::from_f64s(&v, &[10, 100], DType::F32).unwrap()
    };
    let run = |t| run_over(t, world, TIMEOUT, |comm| comm.all_reduce_sum(&input(comm.rank())).unwrap());
    let (first, second) = (run(Transport::Threads), run(Transport::Tcp));
    // Rank-order sum, accumulated in f64, rounded once.
    let expect: Vec<f64> = (0..1000)
        .map(|i| {
            let acc: f64 = (0..world).map(|r| input(r).to_f64_vec()[i]).sum();
            acc as f32 as f64
        })
        .collect();
    for r in 0..world {
        assert_eq!(bits(&first[r]), bits(&first[0]), "rank {r} differs from rank 0");
        assert_eq!(bits(&first[r]), bits(&second[r]), "rank {r} differs between threads and TCP");
    }
    assert_eq!(first[0].to_f64_vec(), expect);
}

#[test]
fn a_rank_that_leaves_fails_the_others_with_its_rank_in_the_message() {
    for transport in TRANSPORTS {
        let timeout = Duration::from_secs(5);
        let start = Instant::now();
        let results = run_over(transport, 3, timeout, |comm| {
            if comm.rank() == 2 {
                return None; // the thread returns: its communicator (and, over TCP, its socket) is dropped
            }
            let x = Tensor::ones(&[4], DType::F64).unwrap();
            Some((dist_err_msg(comm.all_reduce_sum(&x)), dist_err_msg(comm.barrier())))
        });
        let elapsed = start.elapsed();
        for (first, later) in results.into_iter().flatten() {
            // "left the group" for threads, "left the job (its process exited or crashed)" over TCP.
            assert!(first.contains("rank 2 left the") && first.contains("all_reduce_sum"), "{first}");
            assert!(later.contains("already failed") && later.contains("rank 2 left"), "{later}");
        }
        // Detected when the rank leaves, well before the timeout.
        assert!(elapsed < timeout, "{transport:?} took {elapsed:?}");
    }
}

#[test]
fn a_rank_that_panics_fails_the_others() {
    let comms = ThreadGroup::new(2, Duration::from_secs(5)).unwrap();
    let mut it = comms.into_iter();
    let (c0, c1) = (it.next().unwrap(), it.next().unwrap());
    std::thread::scope(|s| {
        let survivor = s.spawn(move || {
            let t = Tensor::ones(&[2], DType::F64).unwrap();
            c0.all_reduce_sum(&t).unwrap(); // both ranks make this one
            dist_err_msg(c0.all_gather(&t))
        });
        let doomed = s.spawn(move || {
            c1.all_reduce_sum(&Tensor::ones(&[2], DType::F64).unwrap()).unwrap();
            panic!("rank 1 fails on purpose (test)");
        });
        assert!(doomed.join().is_err());
        let msg = survivor.join().unwrap();
        assert!(msg.contains("rank 1 left the group") && msg.contains("all_gather"), "{msg}");
    });
}

#[test]
fn a_stuck_rank_times_out_with_a_clear_error() {
    for transport in TRANSPORTS {
        let timeout = Duration::from_millis(500);
        let results = run_over(transport, 2, timeout, |comm| {
            let start = Instant::now();
            if comm.rank() == 1 {
                std::thread::sleep(Duration::from_millis(1200)); // stuck past the timeout
                return (dist_err_msg(comm.barrier()), start.elapsed());
            }
            (dist_err_msg(comm.all_reduce_sum(&Tensor::ones(&[3], DType::F32).unwrap())), start.elapsed())
        });
        let (msg0, waited) = &results[0];
        assert!(msg0.contains("timed out after 0.5 s waiting for rank 1 in all_reduce_sum"), "{msg0}");
        assert!(*waited >= timeout && *waited < Duration::from_millis(1100), "rank 0 waited {waited:?}");
        // Threads: the group is already broken when rank 1 arrives. TCP: rank 0's answer to the
        // round rank 1 missed is waiting on its socket and carries the same message.
        assert!(results[1].0.contains("timed out after 0.5 s waiting for rank 1"), "{}", results[1].0);
    }
}

#[test]
fn mismatched_collectives_and_shapes_are_errors_on_every_rank() {
    for transport in TRANSPORTS {
        // Different collectives.
        let msgs = run_over(transport, 2, TIMEOUT, |comm| {
            let t = Tensor::ones(&[2, 3], DType::F64).unwrap();
            let first = if comm.rank() == 0 { comm.all_gather(&t) } else { comm.all_reduce_sum(&t) };
            (dist_err_msg(first), dist_err_msg(comm.barrier()))
        });
        for (first, later) in &msgs {
            assert!(first.contains("rank 0 called all_gather of [2, 3] f64, rank 1 called all_reduce_sum"), "{first}");
            assert!(later.contains("already failed"), "{later}");
        }
        // Same collective, different shapes, dtypes or roots.
        type Call = fn(&dyn Communicator) -> simclr::Result<Tensor>;
        let cases: [(Call, &str); 3] = [
            (|c| c.all_gather(&Tensor::ones(&[1 + c.rank(), 3], DType::F64).unwrap()), "[2, 3] f64"),
            (
                |c| c.all_reduce_sum(&Tensor::ones(&[3], if c.rank() == 0 { DType::F64 } else { DType::F32 }).unwrap()),
                "[3] f32",
            ),
            (|c| c.broadcast(&Tensor::ones(&[3], DType::F64).unwrap(), c.rank()), "broadcast from rank 1"),
        ];
        for (call, needle) in cases {
            let msgs = run_over(transport, 2, TIMEOUT, |comm| dist_err_msg(call(&*comm)));
            for m in msgs {
                assert!(m.contains("ranks disagree") && m.contains(needle), "{transport:?}: {m}");
            }
        }
    }
}

#[test]
fn bad_arguments_are_typed_errors_at_any_world_size() {
    let single = SingleProcess;
    let ints = Tensor::from_vec(vec![1i64, 2], &[2]).unwrap();
    assert!(matches!(single.all_reduce_sum(&ints), Err(Error::DType { .. })));
    assert!(matches!(single.all_gather(&Tensor::scalar(1.0, DType::F64).unwrap()), Err(Error::Shape { .. })));
    assert!(matches!(single.broadcast(&ints, 1), Err(Error::InvalidArgument { .. })));
    assert!(ThreadGroup::new(0, TIMEOUT).is_err());
    assert!(ThreadGroup::new(2, Duration::ZERO).is_err());
    let comms = ThreadGroup::new(2, TIMEOUT).unwrap();
    assert!(matches!(comms[0].all_reduce_sum(&ints), Err(Error::DType { .. })));
    assert!(matches!(comms[1].broadcast(&ints, 2), Err(Error::InvalidArgument { .. })));
    // Any dtype can be gathered and broadcast.
    let out = run_ranks(2, TIMEOUT, |c| c.all_gather(&Tensor::from_vec(vec![c.rank() as u8], &[1]).unwrap()).unwrap());
    assert_eq!(out[1].to_vec::<u8>().unwrap(), vec![0, 1]);
}

// ------------------------------------------------------------------ global negatives

/// Rows of this rank's shard of a global [2B, D] batch: its b clips of view 1, then of view 2.
fn shard_rows(global_rows: usize, world: usize, rank: usize) -> Vec<usize> {
    let (half, b) = (global_rows / 2, global_rows / 2 / world);
    (rank * b..(rank + 1) * b).chain(half + rank * b..half + (rank + 1) * b).collect()
}

#[test]
fn global_nt_xent_equals_nt_xent_on_the_concatenated_batch() {
    let (batch, d, tau) = (8, 6, 0.2);
    let z = randn(&[2 * batch, d], 11);
    let z_leaf = z.requires_grad().unwrap();
    let reference = nt_xent(&z_leaf, tau).unwrap();
    reference.backward().unwrap();
    let ref_grad = z_leaf.grad().unwrap();
    for world in [1, 2, 4] {
        let results = run_ranks(world, TIMEOUT, |comm| {
            let rows = shard_rows(2 * batch, world, comm.rank());
            let z_local = z.index_select(0, &rows).unwrap().requires_grad().unwrap();
            let loss = global_nt_xent(&z_local, tau, &comm).unwrap();
            loss.backward().unwrap();
            (rows, loss.item().unwrap(), z_local.grad().unwrap())
        });
        for (rank, (rows, loss, grad)) in results.iter().enumerate() {
            let rel = (loss - reference.item().unwrap()).abs() / reference.item().unwrap();
            assert!(rel < 1e-12, "W={world} rank {rank}: loss {loss} vs {}", reference.item().unwrap());
            // GatherLayer convention: each rank holds W x its rows of the global gradient.
            let expect = ref_grad.index_select(0, rows).unwrap().mul_scalar(world as f64).unwrap();
            assert!(max_rel_diff(grad, &expect) < 1e-12, "W={world} rank {rank}");
        }
    }
}

#[test]
fn global_negatives_with_averaged_gradients_match_one_process() {
    // A linear projection of fixed inputs: the averaged parameter gradients of W
    // ranks must equal the gradient of NT-Xent over the whole batch.
    let (batch, din, dout, tau) = (8, 5, 4, 0.5);
    let x = randn(&[2 * batch, din], 21);
    let make = || Linear::new(din, dout, true, DType::F64, &mut Rng::new(22)).unwrap();
    let mut single = make();
    nt_xent(&single.forward(&x).unwrap(), tau).unwrap().backward().unwrap();
    let reference: Vec<Tensor> = parameters(&single).iter().map(|(_, p)| p.grad().unwrap()).collect();
    for world in [2, 4] {
        let results = run_ranks(world, TIMEOUT, |comm| {
            let mut lin = make();
            let params: Vec<Tensor> = parameters(&lin).into_iter().map(|(_, p)| p).collect();
            let buckets = GradientBuckets::new(&params, 25.0).unwrap();
            let local = x.index_select(0, &shard_rows(2 * batch, world, comm.rank())).unwrap();
            let loss = global_nt_xent(&lin.forward(&local).unwrap(), tau, &comm).unwrap();
            loss.backward().unwrap();
            buckets.all_reduce_mean(&*comm).unwrap();
            params.iter().map(|p| p.grad().unwrap()).collect::<Vec<_>>()
        });
        for (rank, grads) in results.iter().enumerate() {
            for (i, (g, r)) in grads.iter().zip(&reference).enumerate() {
                let d = max_rel_diff(g, r);
                assert!(d < 1e-12, "W={world} rank {rank}: relative gradient difference {d:.2e}");
                assert_eq!(bits(g), bits(&results[0][i]), "W={world}: rank {rank} differs from rank 0");
            }
        }
    }
}

#[test]
fn gradient_buckets_fill_in_reverse_order_and_average_over_ranks() {
    let world = 2;
    let results = run_ranks(world, TIMEOUT, |comm| {
        let r = comm.rank() as f64;
        // Registration order: a [2, 3] weight, a [3] bias, a [4] (no gradient on rank 1), a [5] (never).
        let params: Vec<Tensor> = [vec![2, 3], vec![3], vec![4], vec![5]]
            .iter()
            .map(|s| Tensor::zeros(s, DType::F64).unwrap().requires_grad().unwrap())
            .collect();
        // 10 f64 elements = 80 bytes per bucket.
        let buckets = GradientBuckets::new(&params, 80.0 / (1024.0 * 1024.0)).unwrap();
        params[0].set_grad(Some(Tensor::full(&[2, 3], 1.0 + r, DType::F64).unwrap())).unwrap();
        params[1].set_grad(Some(Tensor::from_f64s(&[r, 2.0 * r, 3.0], &[3], DType::F64).unwrap())).unwrap();
        if comm.rank() == 0 {
            params[2].set_grad(Some(Tensor::full(&[4], 8.0, DType::F64).unwrap())).unwrap();
        }
        buckets.all_reduce_mean(&*comm).unwrap();
        (buckets.bucket_numels(), params.iter().map(|p| p.grad()).collect::<Vec<_>>())
    });
    for (numels, grads) in results {
        // Reverse order: [5] + [4] fill the first bucket (9 elements); [3] does not fit
        // there and opens the second, which [2, 3] joins (9).
        assert_eq!(numels, vec![9, 9]);
        assert_eq!(grads[0].as_ref().unwrap().to_f64_vec(), vec![1.5; 6]);
        assert_eq!(grads[1].as_ref().unwrap().to_f64_vec(), vec![0.5, 1.0, 3.0]);
        assert_eq!(grads[2].as_ref().unwrap().to_f64_vec(), vec![4.0; 4], "a missing gradient counts as zeros");
        assert!(grads[3].is_none(), "a parameter no rank touched keeps no gradient");
    }
    let p = Tensor::zeros(&[2], DType::F64).unwrap();
    assert!(GradientBuckets::new(&[p], 1.0).is_err(), "an untracked tensor is not a parameter");
}

// ------------------------------------------------------------------ synchronised batch norm

#[test]
fn sync_batch_norm_matches_batch_norm_on_the_concatenated_batch() {
    let (n, c, h, w) = (8, 3, 3, 2);
    let x = randn(&[n, c, h, w], 31).mul_scalar(2.0).unwrap().add_scalar(0.7).unwrap();
    let upstream = randn(&[n, c, h, w], 32); // weights of the scalar Σ R ⊙ y
    let gamma = Tensor::from_f64s(&[0.5, 1.5, -1.0], &[c], DType::F64).unwrap();
    let beta = Tensor::from_f64s(&[0.1, 0.0, -0.3], &[c], DType::F64).unwrap();

    let (xr, gr, br) = (x.requires_grad().unwrap(), gamma.requires_grad().unwrap(), beta.requires_grad().unwrap());
    let mut ref_stats = RunningStats::new(c, DType::F64).unwrap();
    let y_ref = batch_norm_2d(&xr, Some(&gr), Some(&br), &mut ref_stats, true, 1e-5).unwrap();
    y_ref.mul(&upstream).unwrap().sum_all().unwrap().backward().unwrap();

    for world in [1, 2, 4] {
        let b = n / world;
        let results = run_ranks(world, TIMEOUT, |comm| {
            let rows: Vec<usize> = (comm.rank() * b..(comm.rank() + 1) * b).collect();
            let xl = x.index_select(0, &rows).unwrap().requires_grad().unwrap();
            let (gl, bl) = (gamma.requires_grad().unwrap(), beta.requires_grad().unwrap());
            let mut stats = RunningStats::new(c, DType::F64).unwrap();
            let y = sync_batch_norm_2d(&xl, Some(&gl), Some(&bl), &mut stats, true, 1e-5, &comm).unwrap();
            y.mul(&upstream.index_select(0, &rows).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            // Parameter gradients are per rank; summed over ranks they are the global ones.
            let dgamma = comm.all_reduce_sum(&gl.grad().unwrap()).unwrap();
            let dbeta = comm.all_reduce_sum(&bl.grad().unwrap()).unwrap();
            (rows, y, xl.grad().unwrap(), dgamma, dbeta, stats)
        });
        for (rank, (rows, y, dx, dgamma, dbeta, stats)) in results.iter().enumerate() {
            let tag = format!("W={world} rank {rank}");
            assert!(max_rel_diff(y, &y_ref.index_select(0, rows).unwrap()) < 1e-12, "{tag}: output");
            assert!(max_rel_diff(dx, &xr.grad().unwrap().index_select(0, rows).unwrap()) < 1e-12, "{tag}: dx");
            assert!(max_rel_diff(dgamma, &gr.grad().unwrap()) < 1e-12, "{tag}: dgamma");
            assert!(max_rel_diff(dbeta, &br.grad().unwrap()) < 1e-12, "{tag}: dbeta");
            assert!(max_rel_diff(&stats.mean, &ref_stats.mean) < 1e-12, "{tag}: running mean");
            assert!(max_rel_diff(&stats.var, &ref_stats.var) < 1e-12, "{tag}: running var");
            assert_eq!(bits(&stats.var), bits(&results[0].5.var), "{tag}: running stats identical on all ranks");
        }
    }
}

#[test]
fn sync_batch_norm_keeps_f32_precision_with_a_large_mean() {
    // Σx² − Mμ² in f32 would lose every digit of a variance of 1e-2 at mean 1e3;
    // the per-rank two-pass moments combined with Chan's formula do not.
    let x64 = randn(&[8, 2, 4, 4], 41).mul_scalar(0.1).unwrap().add_scalar(1000.0).unwrap();
    let x = x64.to_dtype(DType::F32).unwrap();
    let mut s64 = RunningStats::new(2, DType::F64).unwrap();
    let y64 = batch_norm_2d(&x.to_dtype(DType::F64).unwrap(), None, None, &mut s64, true, 1e-5).unwrap();
    let ys = run_ranks(4, TIMEOUT, |comm| {
        let r = comm.rank();
        let mut s = RunningStats::new(2, DType::F32).unwrap();
        sync_batch_norm_2d(&x.narrow(0, 2 * r, 2).unwrap(), None, None, &mut s, true, 1e-5, &comm).unwrap()
    });
    let refs: Vec<&Tensor> = ys.iter().collect();
    let y = Tensor::cat(&refs, 0).unwrap();
    let err = y.to_f64_vec().iter().zip(y64.to_f64_vec()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-3, "f32 sync batch norm is off by {err:.2e} from the f64 reference");
}

#[test]
fn sync_batch_norm_in_eval_mode_needs_no_other_rank() {
    // Eval uses the running statistics: no collective, so a lone rank of a
    // group of 2 must not block.
    let comms = ThreadGroup::new(2, Duration::from_millis(200)).unwrap();
    let comm: Arc<dyn Communicator> = Arc::new(comms.into_iter().next().unwrap());
    let mut stats = RunningStats::new(2, DType::F64).unwrap();
    let x = randn(&[2, 2, 2, 2], 51);
    let y = sync_batch_norm_2d(&x, None, None, &mut stats, false, 1e-5, &comm).unwrap();
    let y_ref = batch_norm_2d(&x, None, None, &mut stats, false, 1e-5).unwrap();
    assert_eq!(bits(&y), bits(&y_ref));
}

// ------------------------------------------------------------------ data-parallel SimCLR

const FRAMES: usize = 2;
const IMAGE: usize = 8;
const GLOBAL_BATCH: usize = 8;
const STEPS: usize = 3;
const TAU: f64 = 0.5;

fn small_simclr() -> SimClr {
    let mut rng = Rng::new(7);
    let encoder =
        Encoder::named("resnet18", FRAMES, IMAGE, 0.125, true, TemporalKind::Mean, DType::F64, &mut rng).unwrap();
    SimClr::new(encoder, 16, TAU, DType::F64, &mut rng).unwrap()
}

/// Ranks whose models were built apart (another seed on rank 1, and a running statistic
/// moved) start from rank 0's weights and buffers after `broadcast_from_rank0`, bitwise; the
/// tensors keep their identity (an optimiser built before still holds them).
#[test]
fn every_rank_starts_from_rank_zeros_weights() {
    let reference = small_simclr();
    let want: Vec<Vec<u64>> = state_dict(&reference).iter().map(|(_, t)| bits(t)).collect();
    let results = run_ranks(2, TIMEOUT, |comm| {
        let mut rng = Rng::new(7 + comm.rank() as u64);
        let encoder =
            Encoder::named("resnet18", FRAMES, IMAGE, 0.125, true, TemporalKind::Mean, DType::F64, &mut rng).unwrap();
        let mut model = SimClr::new(encoder, 16, TAU, DType::F64, &mut rng).unwrap();
        if comm.rank() == 1 {
            model.set_training(true);
            let (v1, v2) = global_views(0);
            model.loss(&v1, &v2).unwrap(); // moves the batch-norm running statistics
        }
        let before: Vec<Tensor> = parameters(&model).into_iter().map(|(_, p)| p).collect();
        let differed = state_dict(&model).iter().zip(&want).filter(|((_, t), w)| bits(t) != **w).count();
        let count = broadcast_from_rank0(&model, comm.as_ref()).unwrap();
        let held_before_now: Vec<Vec<u64>> = before.iter().map(bits).collect();
        let got: Vec<Vec<u64>> = state_dict(&model).iter().map(|(_, t)| bits(t)).collect();
        (differed, count, held_before_now, got)
    });
    let want_params: Vec<Vec<u64>> = parameters(&reference).iter().map(|(_, p)| bits(p)).collect();
    assert_eq!(results[0].0, 0, "rank 0 built the reference model");
    assert!(results[1].0 > 0, "rank 1's model must start different for the test to mean anything");
    for (rank, (_, count, held_before, got)) in results.iter().enumerate() {
        assert_eq!(*count, want.len());
        assert!(held_before == &want_params, "rank {rank}: the parameter handles held before see rank 0's values");
        assert!(got == &want, "rank {rank}: weights or buffers differ from rank 0's after the broadcast");
    }
}

/// Step `step`'s global batch: two views [GLOBAL_BATCH, T, 3, H, W].
fn global_views(step: usize) -> (Tensor, Tensor) {
    let shape = [GLOBAL_BATCH, FRAMES, 3, IMAGE, IMAGE];
    (randn(&shape, 100 + 2 * step as u64), randn(&shape, 101 + 2 * step as u64))
}

struct Run {
    /// Gradients of every step (after averaging), in parameter order.
    grads: Vec<Vec<Tensor>>,
    losses: Vec<f64>,
    /// Parameters and buffers after the last step.
    state: Vec<(String, Tensor)>,
}

fn adamw(model: &SimClr) -> (Vec<Tensor>, AdamW) {
    let params: Vec<Tensor> = parameters(model).into_iter().map(|(_, p)| p).collect();
    let opt = AdamW::new(params.clone(), 1e-2, 1e-4, true).unwrap();
    (params, opt)
}

/// The reference: one process, the model's own loss over the whole batch.
fn train_single_process() -> Run {
    let mut model = small_simclr();
    let (params, mut opt) = adamw(&model);
    let mut run = Run { grads: Vec::new(), losses: Vec::new(), state: Vec::new() };
    for step in 0..STEPS {
        let (v1, v2) = global_views(step);
        let loss = model.loss(&v1, &v2).unwrap();
        loss.backward().unwrap();
        run.losses.push(loss.item().unwrap());
        run.grads.push(params.iter().map(|p| p.grad().unwrap()).collect());
        opt.step().unwrap();
        opt.zero_grad();
    }
    run.state = simclr::nn::state_dict(&model);
    run
}

/// `world` ranks, each with GLOBAL_BATCH / world clips: global-negative loss,
/// gradients averaged in buckets, the same AdamW step on every rank.
fn train_data_parallel(world: usize, sync_bn: bool) -> Vec<Run> {
    let b = GLOBAL_BATCH / world;
    run_ranks(world, TIMEOUT, |comm| {
        let mut model = small_simclr();
        if sync_bn {
            assert_eq!(convert_sync_batch_norm(&mut model, Some(comm.clone())), 20, "ResNet-18 has 20 batch norms");
        }
        let (params, mut opt) = adamw(&model);
        // A small cap so the model is reduced in several buckets.
        let buckets = GradientBuckets::new(&params, 0.05).unwrap();
        assert!(buckets.len() > 1);
        let mut run = Run { grads: Vec::new(), losses: Vec::new(), state: Vec::new() };
        for step in 0..STEPS {
            let (v1, v2) = global_views(step);
            let r = comm.rank();
            let local = Tensor::cat(&[&v1.narrow(0, r * b, b).unwrap(), &v2.narrow(0, r * b, b).unwrap()], 0).unwrap();
            let z = model.forward(&local).unwrap();
            let loss = global_nt_xent(&z, TAU, &comm).unwrap();
            loss.backward().unwrap();
            buckets.all_reduce_mean(&*comm).unwrap();
            run.losses.push(loss.item().unwrap());
            run.grads.push(params.iter().map(|p| p.grad().unwrap()).collect());
            opt.step().unwrap();
            opt.zero_grad();
        }
        run.state = simclr::nn::state_dict(&model);
        run
    })
}

/// Largest relative difference over every step's gradients, and over the final
/// parameters and buffers (ignoring `num_batches_tracked`).
fn compare(a: &Run, b: &Run) -> (f64, f64, f64) {
    let grad = a
        .grads
        .iter()
        .zip(&b.grads)
        .flat_map(|(ga, gb)| ga.iter().zip(gb).map(|(x, y)| max_rel_diff(x, y)))
        .fold(0.0, f64::max);
    let state = a
        .state
        .iter()
        .zip(&b.state)
        .filter(|((n, _), _)| !n.ends_with("num_batches_tracked"))
        .map(|((na, x), (nb, y))| {
            assert_eq!(na, nb);
            max_rel_diff(x, y)
        })
        .fold(0.0, f64::max);
    let loss = a.losses.iter().zip(&b.losses).map(|(x, y)| (x - y).abs() / y.abs()).fold(0.0, f64::max);
    (grad, state, loss)
}

#[test]
fn data_parallel_simclr_with_sync_bn_matches_one_process() {
    let reference = train_single_process();
    for world in [1, 2, 4] {
        let runs = train_data_parallel(world, true);
        for (rank, run) in runs.iter().enumerate() {
            let (grad, state, loss) = compare(run, &reference);
            println!("sync BN, W={world} rank {rank}: max rel. diff grads {grad:.1e}, weights+stats {state:.1e}, loss {loss:.1e}");
            assert!(
                grad < 1e-9 && state < 1e-9 && loss < 1e-12,
                "W={world} rank {rank}: {grad:.2e} {state:.2e} {loss:.2e}"
            );
            // Every rank holds bitwise the same weights and statistics.
            for ((_, x), (_, y)) in run.state.iter().zip(&runs[0].state) {
                assert_eq!(bits(x), bits(y), "W={world} rank {rank}");
            }
        }
    }
}

#[test]
fn per_rank_batch_norm_is_the_default_and_differs_by_design() {
    // Each rank normalises with its own batch's statistics: the gradients are
    // those of a different (per-shard normalised) function, so they differ from
    // one process's; the weights stay identical on every rank (the gradients are
    // averaged), while the running statistics differ between ranks.
    let reference = train_single_process();
    let runs = train_data_parallel(2, false);
    let (grad, _, loss) = compare(&runs[0], &reference);
    println!("per-rank BN, W=2: max rel. diff from one process: grads {grad:.1e}, loss {loss:.1e}");
    assert!(grad > 1e-4 && loss > 1e-6, "per-rank statistics should change the gradients: {grad:.2e} {loss:.2e}");
    let mut params_equal = 0;
    let mut running_differ = 0;
    for ((name, x), (_, y)) in runs[0].state.iter().zip(&runs[1].state) {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            running_differ += usize::from(max_rel_diff(x, y) > 1e-6);
        } else if !name.ends_with("num_batches_tracked") {
            assert_eq!(bits(x), bits(y), "{name} differs between ranks");
            params_equal += 1;
        }
    }
    assert!(
        params_equal > 40 && running_differ == 40,
        "{params_equal} parameters equal, {running_differ} stats differ"
    );
}

// ------------------------------------------------------------------ all-reduce overlapped with backward

/// A small network with the awkward cases: `w_shared` used by two layers (and
/// listed twice, as tied weights are), `rank0_bias` used on rank 0 only,
/// `unused` on no rank, and global NT-Xent, whose backward is a collective.
struct Tied {
    w_in: Tensor,
    b: Tensor,
    w_shared: Tensor,
    rank0_bias: Tensor,
    w_out: Tensor,
    unused: Tensor,
}

impl Tied {
    fn new() -> Tied {
        let p = |shape: &[usize], seed| randn(shape, seed).mul_scalar(0.5).unwrap().requires_grad().unwrap();
        Tied {
            w_in: p(&[5, 6], 61),
            b: p(&[6], 62),
            w_shared: p(&[6, 6], 63),
            rank0_bias: p(&[6], 64),
            w_out: p(&[6, 4], 65),
            unused: p(&[7], 66),
        }
    }

    fn params(&self) -> Vec<Tensor> {
        [&self.w_in, &self.b, &self.w_shared, &self.rank0_bias, &self.w_out, &self.unused, &self.w_shared]
            .map(Tensor::clone)
            .to_vec()
    }

    /// This rank's share of a fixed global batch of 16 rows: (first hidden layer, loss).
    fn forward(&self, comm: &Arc<dyn Communicator>) -> (Tensor, Tensor) {
        let rows = shard_rows(16, comm.world_size(), comm.rank());
        let x = randn(&[16, 5], 67).index_select(0, &rows).unwrap();
        let h1 = x.matmul(&self.w_in).unwrap().add(&self.b).unwrap().tanh().unwrap();
        let mut h = h1.matmul(&self.w_shared).unwrap().tanh().unwrap().matmul(&self.w_shared).unwrap();
        if comm.rank() == 0 {
            h = h.add(&self.rank0_bias).unwrap();
        }
        let loss = global_nt_xent(&h.matmul(&self.w_out).unwrap(), 0.5, comm).unwrap();
        (h1, loss)
    }
}

fn grads_of(params: &[Tensor]) -> Vec<Option<Tensor>> {
    params.iter().map(|p| p.grad()).collect()
}

fn zero_grads(params: &[Tensor]) {
    params.iter().for_each(Tensor::zero_grad);
}

fn assert_bitwise_equal(a: &[Option<Tensor>], b: &[Option<Tensor>], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        match (x, y) {
            (Some(x), Some(y)) => assert_eq!(bits(x), bits(y), "{what}: parameter {i}"),
            (None, None) => {}
            _ => panic!("{what}: parameter {i} has a gradient on one side only"),
        }
    }
}

/// 200 bytes: 25 f64 elements per bucket.
const SMALL_BUCKET_MB: f64 = 200.0 / (1024.0 * 1024.0);

#[test]
fn overlapped_all_reduce_equals_after_backward_bitwise_with_tied_and_unused_parameters() {
    for (world, transport) in [2, 4].into_iter().flat_map(|w| TRANSPORTS.map(|t| (w, t))) {
        let results = run_over(transport, world, TIMEOUT, |comm| {
            let model = Tied::new();
            let params = model.params();
            let buckets = GradientBuckets::new(&params, SMALL_BUCKET_MB).unwrap();

            // The reference: backward, then the buckets one by one on this thread.
            let (_, loss) = model.forward(&comm);
            loss.backward().unwrap();
            buckets.all_reduce_mean(&*comm).unwrap();
            let after = grads_of(&params);
            zero_grads(&params);

            // Overlapped: every collective of the rank through its communication thread.
            let worker = Arc::new(CommWorker::spawn(comm.clone()).unwrap());
            let through_worker: Arc<dyn Communicator> = worker.clone();
            let (_, loss) = model.forward(&through_worker);
            buckets.backward_all_reduce_mean(&loss, &worker).unwrap();
            (buckets.bucket_numels(), after, grads_of(&params))
        });
        for (rank, (numels, after, overlapped)) in results.iter().enumerate() {
            let what = format!("W={world} {transport:?} rank {rank}");
            // Reverse registration order, `w_shared` once: [unused], [w_out], [rank0_bias],
            // [w_shared] (larger than the cap, alone), [b], [w_in].
            assert_eq!(numels, &[7, 24, 6, 36, 6, 30], "{what}");
            assert_bitwise_equal(after, overlapped, &what);
            assert_bitwise_equal(overlapped, &results[0].2, &format!("{what} against rank 0"));
            assert!(overlapped[5].is_none(), "{what}: a parameter no rank used keeps no gradient");
            assert!(overlapped.iter().take(5).all(Option::is_some), "{what}: rank 0's bias is averaged everywhere");
        }
    }
}

/// Wraps a communicator and logs every collective (name, elements) in the order it ran.
struct Recording {
    inner: Arc<dyn Communicator>,
    log: Mutex<Vec<(&'static str, usize)>>,
}

impl Recording {
    fn record(&self, op: &'static str, t: Option<&Tensor>) {
        self.log.lock().unwrap().push((op, t.map_or(0, Tensor::numel)));
    }

    fn take(&self) -> Vec<(&'static str, usize)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Communicator for Recording {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_sum(&self, t: &Tensor) -> simclr::Result<Tensor> {
        self.record("all_reduce_sum", Some(t));
        self.inner.all_reduce_sum(t)
    }
    fn all_gather(&self, t: &Tensor) -> simclr::Result<Tensor> {
        self.record("all_gather", Some(t));
        self.inner.all_gather(t)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> simclr::Result<Tensor> {
        self.record("broadcast", Some(t));
        self.inner.broadcast(t, root)
    }
    fn barrier(&self) -> simclr::Result<()> {
        self.record("barrier", None);
        self.inner.barrier()
    }
}

#[test]
fn overlapped_buckets_run_during_backward_between_sync_batch_norm_collectives() {
    // Sync batch norm all-reduces inside backward: those collectives and the buckets
    // share the communication thread, so every rank runs them in the same order.
    for (world, transport) in [(2, Transport::Threads), (4, Transport::Threads), (2, Transport::Tcp)] {
        let b = GLOBAL_BATCH / world;
        let results = run_over(transport, world, TIMEOUT, |comm| {
            let rec = Arc::new(Recording { inner: comm.clone(), log: Mutex::new(Vec::new()) });
            let mut model = small_simclr();
            let (params, _) = adamw(&model);
            let buckets = GradientBuckets::new(&params, 0.05).unwrap();
            let (v1, v2) = global_views(0);
            let r = comm.rank();
            let local = Tensor::cat(&[&v1.narrow(0, r * b, b).unwrap(), &v2.narrow(0, r * b, b).unwrap()], 0).unwrap();
            let step = |comm: Arc<dyn Communicator>, model: &mut SimClr| {
                convert_sync_batch_norm(model, Some(comm.clone()));
                global_nt_xent(&model.forward(&local).unwrap(), TAU, &comm).unwrap()
            };

            let loss = step(rec.clone(), &mut model);
            loss.backward().unwrap();
            buckets.all_reduce_mean(&*rec).unwrap();
            let (after, after_log) = (grads_of(&params), rec.take());
            zero_grads(&params);

            let worker = Arc::new(CommWorker::spawn(rec.clone()).unwrap());
            let loss = step(worker.clone(), &mut model);
            buckets.backward_all_reduce_mean(&loss, &worker).unwrap();
            (after, grads_of(&params), after_log, rec.take(), buckets.len())
        });
        for (rank, (after, overlapped, after_log, overlapped_log, n_buckets)) in results.iter().enumerate() {
            let what = format!("W={world} {transport:?} rank {rank}");
            assert_bitwise_equal(after, overlapped, &what);
            assert_bitwise_equal(overlapped, &results[0].1, &format!("{what} against rank 0"));
            // After backward, the buckets are the last collectives; their sizes (thousands of
            // elements) differ from every other collective's (batch-norm moments, projections).
            let (others, bucket_calls) = after_log.split_at(after_log.len() - n_buckets);
            assert!(bucket_calls.iter().all(|c| !others.contains(c)), "{what}: bucket sizes must be recognisable");
            assert!(others.iter().filter(|c| c.0 == "all_reduce_sum").count() > 20, "{what}: sync BN in backward");
            // Overlapped: the same collectives, the buckets in the same order, but the first
            // bucket runs before backward's last batch-norm all-reduce.
            let mut sorted = (after_log.clone(), overlapped_log.clone());
            sorted.0.sort_unstable();
            sorted.1.sort_unstable();
            assert_eq!(sorted.0, sorted.1, "{what}: the same collectives");
            let positions: Vec<usize> =
                overlapped_log.iter().enumerate().filter(|(_, c)| bucket_calls.contains(c)).map(|(i, _)| i).collect();
            let order: Vec<_> = positions.iter().map(|&i| overlapped_log[i]).collect();
            assert_eq!(order, bucket_calls, "{what}: buckets in bucket order");
            let last_other = (0..overlapped_log.len()).rfind(|i| !positions.contains(i)).unwrap();
            assert!(
                positions[0] < last_other,
                "{what}: the first bucket ran at collective #{} of {}, after backward's last (#{last_other})",
                positions[0],
                overlapped_log.len()
            );
        }
    }
}

#[test]
fn a_rank_that_fails_or_stalls_mid_backward_fails_the_others_within_the_timeout() {
    for transport in TRANSPORTS {
        // Rank 1 fails halfway through backward: the graph below the first hidden layer was
        // already used by another backward. The buckets of the last layers are launched by then.
        let timeout = Duration::from_secs(5);
        let start = Instant::now();
        let results = run_over(transport, 3, timeout, |comm| {
            let model = Tied::new();
            let params = model.params();
            let buckets = GradientBuckets::new(&params, SMALL_BUCKET_MB).unwrap();
            let worker = Arc::new(CommWorker::spawn(comm.clone()).unwrap());
            let (h1, loss) = model.forward(&(worker.clone() as Arc<dyn Communicator>));
            if comm.rank() == 1 {
                h1.sum_all().unwrap().backward().unwrap();
            }
            buckets.backward_all_reduce_mean(&loss, &worker).map(|_| ()).unwrap_err().to_string()
        });
        let elapsed = start.elapsed();
        assert!(results[1].contains("already used by an earlier backward"), "{transport:?}: {}", results[1]);
        for rank in [0, 2] {
            let msg = &results[rank];
            assert!(msg.contains("rank 1 left the") && msg.contains("all_reduce_sum"), "{transport:?} {rank}: {msg}");
        }
        assert!(elapsed < timeout, "{transport:?}: the others learnt of it only after {elapsed:?}");

        // Rank 1 stalls after its forward: the others time out in backward, in the all-reduce of
        // the gathered projections' gradient, which runs on the communication thread.
        let timeout = Duration::from_millis(800);
        let results = run_over(transport, 3, timeout, |comm| {
            let model = Tied::new();
            let params = model.params();
            let buckets = GradientBuckets::new(&params, SMALL_BUCKET_MB).unwrap();
            let worker = Arc::new(CommWorker::spawn(comm.clone()).unwrap());
            let (_, loss) = model.forward(&(worker.clone() as Arc<dyn Communicator>));
            if comm.rank() == 1 {
                std::thread::sleep(Duration::from_millis(2000));
            }
            let start = Instant::now();
            let err = buckets.backward_all_reduce_mean(&loss, &worker).unwrap_err();
            assert!(matches!(err, Error::Dist { .. }), "{err:?}");
            (err.to_string(), start.elapsed())
        });
        for rank in [0, 2] {
            let (msg, waited) = &results[rank];
            assert!(
                msg.contains("timed out after 0.8 s waiting for rank 1") && msg.contains("all_reduce_sum"),
                "{msg}"
            );
            assert!(*waited < timeout + Duration::from_millis(700), "{transport:?} rank {rank} waited {waited:?}");
        }
        // The late rank finds the group broken (threads), or, over TCP, rank 0's process gone
        // (it returned after its error) before it reads rank 0's answer.
        let late = &results[1].0;
        assert!(late.contains("timed out after 0.8 s") || late.contains("rank 0 left the job"), "{late}");
    }
}

/// A communicator whose all-reduce panics (a bug, or a library that aborts).
struct Panicking;

impl Communicator for Panicking {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &Tensor) -> simclr::Result<Tensor> {
        panic!("all_reduce_sum panics on purpose (test)")
    }
    fn all_gather(&self, t: &Tensor) -> simclr::Result<Tensor> {
        SingleProcess.all_gather(t)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> simclr::Result<Tensor> {
        SingleProcess.broadcast(t, root)
    }
    fn barrier(&self) -> simclr::Result<()> {
        Ok(())
    }
}

#[test]
fn a_collective_that_panics_on_the_communication_thread_is_an_error_not_a_hang() {
    let worker = CommWorker::spawn(Arc::new(Panicking)).unwrap();
    let x = Tensor::ones(&[2], DType::F64).unwrap();
    assert_eq!(worker.all_gather(&x).unwrap().to_f64_vec(), [1.0, 1.0], "collectives run on the thread");
    let first = dist_err_msg(worker.all_reduce_sum(&x));
    assert!(first.contains("communication thread of rank 0 stopped") && first.contains("panicked"), "{first}");
    // The thread is gone: later collectives fail the same way instead of waiting forever.
    assert!(dist_err_msg(worker.barrier()).contains("communication thread of rank 0 stopped"));
}

// ------------------------------------------------------------------ rendezvous

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const TORCHRUN: [(&str, &str); 5] =
    [("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "3"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29400")];

#[test]
fn torchrun_variables_give_rank_world_and_master() {
    let env = DistEnv::from_vars(&vars(&TORCHRUN)).unwrap().unwrap();
    assert_eq!(
        env,
        DistEnv {
            rank: 3,
            world_size: 8,
            local_rank: 3,
            master_addr: "node0".into(),
            master_port: 29400,
            launcher: Launcher::Torchrun
        }
    );
    // Under torchrun proper, its agent's store holds MASTER_PORT: rank 0 takes the next one.
    let mut elastic = vars(&TORCHRUN);
    elastic.insert("TORCHELASTIC_RUN_ID".into(), "none".into());
    assert_eq!(DistEnv::from_vars(&elastic).unwrap().unwrap().master_port, 29401);
    // torchrun inside a SLURM job: torchrun's per-process variables win.
    let mut both = vars(&TORCHRUN);
    both.extend(vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "0")]));
    assert_eq!(DistEnv::from_vars(&both).unwrap().unwrap().launcher, Launcher::Torchrun);
    assert_eq!(DistEnv::from_vars(&vars(&[("HOME", "/root")])).unwrap(), None, "no launcher: single process");
}

#[test]
fn slurm_variables_give_rank_world_and_the_first_node() {
    let slurm = [
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_JOB_NODELIST", "gpu[03-05,07],cpu01"),
        ("SLURM_JOB_ID", "123456"),
    ];
    let env = DistEnv::from_vars(&vars(&slurm)).unwrap().unwrap();
    assert_eq!((env.rank, env.world_size, env.local_rank), (5, 8, 1));
    assert_eq!(env.master_addr, "gpu03");
    assert_eq!(env.master_port, 20000 + 3456, "port derived from the job id");
    assert_eq!(env.launcher, Launcher::Slurm);
    let mut with_master = vars(&slurm);
    with_master.extend(vars(&[("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "12345")]));
    let env = DistEnv::from_vars(&with_master).unwrap().unwrap();
    assert_eq!((env.master_addr.as_str(), env.master_port), ("10.0.0.1", 12345));
}

#[test]
fn node_lists_expand_like_slurm() {
    assert_eq!(expand_nodelist("gpu[03-05,07],cpu01").unwrap(), ["gpu03", "gpu04", "gpu05", "gpu07", "cpu01"]);
    assert_eq!(expand_nodelist("n[8-10]").unwrap(), ["n8", "n9", "n10"]);
    assert_eq!(expand_nodelist("n[08-10]").unwrap(), ["n08", "n09", "n10"]);
    assert_eq!(expand_nodelist("node17").unwrap(), ["node17"]);
    assert_eq!(expand_nodelist("a,b[1-2]-ib").unwrap(), ["a", "b1-ib", "b2-ib"]);
    assert_eq!(expand_nodelist("r[1-2]-n[1-2]").unwrap(), ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]);
    assert_eq!(first_host("cn[100-200]").unwrap(), "cn100");
    for bad in ["", "gpu[03-05", "gpu03]", "gpu[05-03]", "gpu[a-b]", "a,,b", "x[[1]]"] {
        let e = expand_nodelist(bad).expect_err(bad);
        assert!(e.to_string().contains("SLURM node list"), "{bad}: {e}");
    }
}

#[test]
fn inconsistent_launcher_variables_are_clear_errors() {
    let with = |changes: &[(&str, Option<&str>)]| {
        let mut v = vars(&TORCHRUN);
        for (k, val) in changes {
            match val {
                Some(x) => v.insert(k.to_string(), x.to_string()),
                None => v.remove(*k),
            };
        }
        DistEnv::from_vars(&v).unwrap_err().to_string()
    };
    type Change<'a> = &'a [(&'a str, Option<&'a str>)];
    let cases: [(Change, &str); 7] = [
        (&[("RANK", Some("8"))], "RANK=8 is not below WORLD_SIZE=8"),
        (&[("RANK", Some("three"))], "RANK=\"three\" is not a whole number"),
        (&[("WORLD_SIZE", Some("0"))], "WORLD_SIZE=0"),
        (&[("MASTER_ADDR", None)], "MASTER_ADDR is not set"),
        (&[("MASTER_PORT", Some("70000"))], "not a TCP port"),
        (&[("LOCAL_RANK", None)], "LOCAL_RANK is not set"),
        (&[("WORLD_SIZE", None)], "WORLD_SIZE is not set"),
    ];
    for (change, needle) in cases {
        let msg = with(change);
        assert!(msg.contains(needle), "{change:?}: {msg}");
    }
    let slurm_no_host = vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "0")]);
    assert!(DistEnv::from_vars(&slurm_no_host).unwrap_err().to_string().contains("SLURM_JOB_NODELIST"));
    let slurm_bad = vars(&[("SLURM_PROCID", "2"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "0"), ("MASTER_ADDR", "h")]);
    assert!(DistEnv::from_vars(&slurm_bad)
        .unwrap_err()
        .to_string()
        .contains("SLURM_PROCID=2 is not below SLURM_NTASKS=2"));
}

#[test]
fn rank0_shares_its_id_with_every_rank_over_tcp() {
    let world = 4;
    let port = free_port();
    let id: Vec<u8> = (0..128u8).collect(); // the size of an NCCL unique id
    let got: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let id = id.clone();
                s.spawn(move || {
                    let env = DistEnv {
                        rank,
                        world_size: world,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        launcher: Launcher::Torchrun,
                    };
                    if rank == 0 {
                        // Start late: the others must retry until rank 0 listens.
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    share_from_rank0(&env, Duration::from_secs(10), || Ok(id)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, blob) in got.iter().enumerate() {
        assert_eq!(blob, &id, "rank {rank}");
    }
}

#[test]
fn the_id_exchange_times_out_and_refuses_mismatches() {
    // Nobody listening: the client gives up after its timeout.
    let start = Instant::now();
    let e = fetch_blob("127.0.0.1", free_port(), 1, 2, Duration::from_millis(300)).unwrap_err().to_string();
    assert!(e.contains("could not reach rank 0") && e.contains("within 0.3 s"), "{e}");
    assert!(start.elapsed() >= Duration::from_millis(300) && start.elapsed() < Duration::from_secs(3));

    // Rank 2 of 3 never comes: the server names it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::scope(|s| {
        let client = s.spawn(move || fetch_blob("127.0.0.1", port, 1, 3, Duration::from_secs(5)));
        let e = serve_blob(&listener, 3, b"id", Duration::from_millis(400)).unwrap_err().to_string();
        assert!(e.contains("rank(s) 2 never connected"), "{e}");
        assert_eq!(client.join().unwrap().unwrap(), b"id");
    });

    // A rank launched with another world size is refused, on both sides.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::scope(|s| {
        let client = s.spawn(move || fetch_blob("127.0.0.1", port, 1, 4, Duration::from_secs(5)));
        let e = serve_blob(&listener, 2, b"id", Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("world size 4, rank 0 with 2"), "{e}");
        let ce = client.join().unwrap().unwrap_err().to_string();
        assert!(ce.contains("rank 0 refused rank 1") && ce.contains("same WORLD_SIZE"), "{ce}");
    });

    // Two processes claiming the same rank.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::scope(|s| {
        let a = s.spawn(move || fetch_blob("127.0.0.1", port, 1, 3, Duration::from_secs(5)));
        let b = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            fetch_blob("127.0.0.1", port, 1, 3, Duration::from_secs(5))
        });
        let e = serve_blob(&listener, 3, b"id", Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("two processes claim rank 1"), "{e}");
        assert!(a.join().unwrap().is_ok());
        assert!(b.join().unwrap().unwrap_err().to_string().contains("two processes claim rank 1"));
    });
}

#[test]
fn differentiable_all_gather_is_on_the_tape_and_untracked_inputs_stay_untracked() {
    let results = run_ranks(2, TIMEOUT, |comm| {
        let x = Tensor::full(&[1, 2], comm.rank() as f64 + 1.0, DType::F64).unwrap();
        let plain = all_gather(&x, &comm).unwrap();
        let leaf = x.requires_grad().unwrap();
        let g = all_gather(&leaf, &comm).unwrap();
        // Rank r's loss weights the gathered rows by (r + 1): Σ_r loss_r weights every row by 3.
        let loss = g.mul_scalar(comm.rank() as f64 + 1.0).unwrap().sum_all().unwrap();
        loss.backward().unwrap();
        (plain.is_tracked(), simclr::autograd::graph_op_names(&g), leaf.grad().unwrap().to_f64_vec())
    });
    for (tracked, ops, grad) in results {
        assert!(!tracked);
        assert_eq!(ops, vec!["all_gather"]);
        assert_eq!(grad, vec![3.0, 3.0], "Σ over ranks of each rank's loss gradient");
    }
}
