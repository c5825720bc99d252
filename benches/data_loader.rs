//! Data pipeline benchmark: augmented clips per second through the loader at
//! 20×128×128 clips (two augmented views of every frame per clip),
//! with 1 and 2 worker threads, against the raw rate of reading the clips'
//! bytes from the memory-mapped shards in the same run.
//!
//! Run: `cargo bench --bench data_loader` (tools/bench_data.sh saves the output).

mod common;

use simclr::data::augment::AugmentConfig;
use simclr::data::loader::{Loader, LoaderConfig};
use simclr::data::shards::ShardDataset;
use simclr::data::synthetic::{write_bouncing, BouncingConfig, BouncingDataset};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    common::print_header("data loader benchmark", &["src", "benches/data_loader.rs", "Cargo.toml"]);
    let (clips, frames, size) = (96, 20, 128);
    let dir = std::env::temp_dir().join(format!("simclr-bench-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let clip = BouncingConfig { frames, size, ..Default::default() };
    let start = Instant::now();
    write_bouncing(&dir, &BouncingDataset { clips, seed: 0, clips_per_shard: 32, clip }, |_| {})
        .expect("write dataset");
    let gen = start.elapsed().as_secs_f64();
    println!(
        "# dataset: {clips} clips of {frames}x{size}x{size}x3 u8, generated in {gen:.2} s ({:.0} clips/s)",
        clips as f64 / gen
    );
    let ds = Arc::new(ShardDataset::open(&dir).expect("open"));

    // Reference: touching every byte of every clip (what any loader must at least do).
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..5 {
        for i in 0..ds.len() {
            sum += ds.clip(i).unwrap().iter().map(|&b| b as u64).sum::<u64>();
        }
    }
    let raw = 5.0 * ds.len() as f64 / t.elapsed().as_secs_f64();
    println!("raw read (sum of bytes)            {raw:>9.0} clips/s   (checksum {sum})");

    for out_size in [64, 112] {
        let mut rates = Vec::new();
        for workers in [1, 2] {
            let loader = Loader::new(
                ds.clone(),
                LoaderConfig {
                    batch_size: 16,
                    seed: 1,
                    rank: 0,
                    world: 1,
                    workers,
                    prefetch: 4,
                    augment: AugmentConfig { out_size, ..Default::default() },
                    frames: None,
                },
            )
            .expect("loader");
            let t = Instant::now();
            let mut n = 0;
            for epoch in 0..2 {
                for b in loader.epoch(epoch, 0) {
                    n += b.expect("batch").clips.len();
                }
            }
            let rate = n as f64 / t.elapsed().as_secs_f64();
            rates.push(rate);
            println!(
                "augment -> 2 views of {frames}x3x{out_size}x{out_size}, {workers} worker(s) {rate:>7.1} clips/s  ({:.0} frames/s)",
                rate * 2.0 * frames as f64
            );
        }
        println!(
            "  2 workers / 1 worker = {:.2}x; fraction of raw read rate {:.3}",
            rates[1] / rates[0],
            rates[1] / raw
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
