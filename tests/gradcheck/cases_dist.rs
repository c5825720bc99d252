//! Data-parallel ops at world size 1 (`SingleProcess`): the all_gather node,
//! NT-Xent over the gathered batch, and synchronised batch norm. Their
//! multi-rank behaviour is checked against these single-process gradients in
//! tests/dist.rs.

use crate::common::*;
use simclr::dist::{all_gather, global_nt_xent, sync_batch_norm_2d, Communicator, SingleProcess};
use simclr::ops::batchnorm::RunningStats;
use simclr::DType;
use std::sync::Arc;

fn single() -> Arc<dyn Communicator> {
    Arc::new(SingleProcess)
}

fn sync_bn_case(
    affine: (bool, bool),
    strided_input: bool,
    seed: u64,
) -> impl Fn() -> simclr::Result<simclr::autograd::gradcheck::GradcheckReport> {
    move || {
        let x = if strided_input {
            rand(&[3, 2, 4, 3], seed).permute(&[0, 1, 3, 2]).unwrap() // [3, 2, 3, 4] view
        } else {
            rand(&[3, 2, 3, 2], seed)
        };
        let mut inputs = vec![x];
        if affine.0 {
            inputs.push(rand_in(&[2], 0.5, 1.5, seed + 1));
        }
        if affine.1 {
            inputs.push(rand(&[2], seed + 2));
        }
        let comm = single();
        check(&inputs, move |x| {
            let mut stats = RunningStats::new(2, DType::F64)?;
            let w = if affine.0 { Some(&x[1]) } else { None };
            let b = if affine.1 { Some(&x[x.len() - 1]) } else { None };
            sync_batch_norm_2d(&x[0], w, b, &mut stats, true, 1e-5, &comm)
        })
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        case("all_gather", "world 1: identity forward, all-reduce + slice backward, strided input", || {
            let comm = single();
            check(&[strided(&[3, 4], 301)], move |x| all_gather(&x[0], &comm)?.mul(&x[0]))
        }),
        case("global_nt_xent", "world 1, 2x3 clips, D = 5, tau = 0.5", || {
            let comm = single();
            check(&[rand(&[6, 5], 302)], move |x| global_nt_xent(&x[0], 0.5, &comm))
        }),
        case("sync_batch_norm_2d", "training, weight and bias", sync_bn_case((true, true), false, 303)),
        case("sync_batch_norm_2d", "training, no affine", sync_bn_case((false, false), false, 306)),
        case("sync_batch_norm_2d", "training, bias only, permuted input", sync_bn_case((false, true), true, 309)),
        case("sync_batch_norm_2d", "training, weight only", sync_bn_case((true, false), false, 312)),
    ]
}
