//! The training loop under data parallelism, with in-process thread ranks:
//! W ranks sharing a global batch train the same model as one process.

mod common;

use common::temp_dir;

use common::max_abs_difference;
use simclr::config::TrainConfig;
use simclr::data::synthetic::{write_bouncing, BouncingConfig, BouncingDataset};
use simclr::dist::{Communicator, ThreadGroup};
use simclr::train::{train, TrainOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Trains on `world` thread ranks; the per-rank learning rate is `lr / world`
/// so that, after the trainer's linear scaling, every run steps with `lr`.
fn train_on(world: usize, data: &Path, out: &Path, lr: f64, sync_bn: bool) -> PathBuf {
    let cfg = TrainConfig {
        processed_dir: data.to_path_buf(),
        epochs: 2,
        batch_size: 8,
        lr: lr / world as f64,
        // SGD: Adam's first steps are ±lr wherever a gradient is ~0, so f32
        // noise there would flip whole steps; SGD keeps differences at the
        // size of the noise.
        optimizer: "sgd".into(),
        num_frames: 1,
        image_size: 16,
        width: 0.125,
        small_stem: true,
        checkpoint_every: 1,
        workers: 1,
        sync_bn,
        seed: 4,
        out: out.to_path_buf(),
        device: "cpu".into(), // CPU ranks even on a GPU machine (`auto` would take its GPUs)
        ..TrainConfig::default()
    };
    let comms = ThreadGroup::new(world, Duration::from_secs(60)).unwrap();
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let comm: Arc<dyn Communicator> = Arc::new(c);
                train(&cfg, &TrainOptions { resume: None, verbose: false, comm: Some(comm) })
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    // Every rank took the same steps; only rank 0 wrote files.
    assert!(outcomes.iter().all(|o| o.global_step == 4 && o.epochs_done == 2));
    outcomes[0].final_model.clone()
}

#[test]
fn two_and_four_ranks_train_the_same_model_as_one() {
    let dir = temp_dir("equivalence");
    let data = dir.join("data");
    let clip = BouncingConfig { frames: 1, size: 16, ..Default::default() };
    write_bouncing(&data, &BouncingDataset { clips: 16, seed: 8, clips_per_shard: 8, clip }, |_| {}).unwrap();

    let one = train_on(1, &data, &dir.join("w1"), 0.1, true);
    for world in [2, 4] {
        let many = train_on(world, &data, &dir.join(format!("w{world}")), 0.1, true);
        // f32 sums in other orders (batch-norm statistics, gathered NT-Xent,
        // averaged gradients) after 4 SGD steps at lr 0.1: agreement to ~1e-5;
        // a wrong split, loss or lr scaling is off by 1e-3 or more.
        let diff = max_abs_difference(&one, &many);
        eprintln!("world {world}: max |difference| from one process {diff:.2e}");
        assert!(diff < 1e-4, "world {world}: weights differ from one process by {diff:.2e}");
        assert!(dir.join(format!("w{world}")).join("metrics.jsonl").metadata().unwrap().len() > 0);
    }
    // Per-rank batch norm (the default) normalises each rank's half on its own,
    // so its weights differ from one process by design — far beyond the above.
    let per_rank = train_on(2, &data, &dir.join("w2-per-rank-bn"), 0.1, false);
    let diff = max_abs_difference(&one, &per_rank);
    eprintln!("per-rank batch norm: {diff:.2e}");
    assert!(diff > 1e-3, "per-rank batch norm should change the result, differs by only {diff:.2e}");
}
