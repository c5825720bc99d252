//! CLEVRER preprocessing throughput: videos/s and frames/s decoded (every
//! frame of every video is decoded; 20 are kept, scaled to 128×128 and
//! written as shards) on synthetic videos in CLEVRER's format: 480×320,
//! 128 frames at 25 fps, H.264 (and MPEG-4 part 2 for comparison), with 1
//! and 2 rayon threads. Each setting runs REPEATS times; the best and the
//! median are reported, since the cores may be shared.
//!
//! Run: `cargo bench --features video --bench clevrer_decode`
//! (tools/bench_clevrer.sh saves the output under benches/results/).

#[path = "../tests/clevrer/fixture.rs"]
mod fixture;

mod common;

use fixture::{clevrer_like, write_mp4, Codec, VideoSpec};
use simclr::data::clevrer::{preprocess, ClevrerOptions};
use std::path::Path;
use std::time::Instant;

const VIDEOS: usize = 48;
/// Timed runs per setting; the best and the median are reported (the cores may be shared).
const REPEATS: usize = 3;
const SPEC: VideoSpec = VideoSpec {
    width: 480,
    height: 320,
    frames: 128,
    fps: 25,
    codec: Codec::H264,
    faststart: false,
    packet_durations: true,
};

fn header() {
    common::print_header(
        "CLEVRER decode benchmark",
        &["src/data", "benches/clevrer_decode.rs", "tests/clevrer", "Cargo.toml"],
    );
    println!("# ffmpeg: libavcodec {}", ffmpeg_next::codec::version() >> 16);
}

/// Writes the synthetic videos; returns their mean size in kB.
fn make_videos(dir: &Path, codec: Codec) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let spec = VideoSpec { codec, ..SPEC };
    let paint = clevrer_like(spec.width as usize, spec.height as usize);
    let mut bytes = 0;
    for i in 0..VIDEOS {
        // Each video starts at a different point of the motion, so no two are identical.
        let path = dir.join(format!("video_{i:05}.mp4"));
        write_mp4(&path, spec, |f, rgb| paint(f + 7 * i, rgb));
        bytes += std::fs::metadata(&path).unwrap().len();
    }
    bytes as f64 / VIDEOS as f64 / 1e3
}

fn measure(root: &Path, out: &Path, threads: usize) -> (f64, f64, usize) {
    let _ = std::fs::remove_dir_all(out);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let start = Instant::now();
    let summary = pool.install(|| preprocess(&ClevrerOptions::new(root, out), |_| {})).unwrap();
    let total = start.elapsed().as_secs_f64();
    assert_eq!((summary.decoded, summary.skipped.len()), (VIDEOS, 0));
    (summary.decode_seconds, total, summary.frames_decoded)
}

fn main() {
    header();
    let dir = std::env::temp_dir().join(format!("simclr-bench-clevrer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "# {VIDEOS} synthetic videos of {}x{}, {} frames at {} fps (shaded floor, 5 moving discs); \
         output: 20 frames of 128x128 (pad), shards written",
        SPEC.width, SPEC.height, SPEC.frames, SPEC.fps
    );
    println!(
        "# decode = pass 1 (read, demux, decode every frame, scale the 20 kept, write work files); \
         with shard writing = passes 1 and 2"
    );
    for codec in [Codec::H264, Codec::Mpeg4] {
        if !codec.available() {
            println!("{codec:?}: no encoder in this FFmpeg build, skipped");
            continue;
        }
        let root = dir.join(format!("{codec:?}"));
        let kb = make_videos(&root, codec);
        println!("{codec:?}: mean file size {kb:.0} kB");
        let mut rates = Vec::new();
        // One untimed run warms the page cache and the allocator.
        measure(&root, &dir.join("out"), 1);
        for threads in [1, 2] {
            let mut runs: Vec<(f64, f64, usize)> =
                (0..REPEATS).map(|_| measure(&root, &dir.join("out"), threads)).collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (best, median) = (runs[0], runs[REPEATS / 2]);
            let videos_per_s = VIDEOS as f64 / best.0;
            rates.push(videos_per_s);
            println!(
                "  {threads} thread(s): decode best {:5.2} s = {videos_per_s:6.1} videos/s, {:6.0} frames/s \
                 (median {:5.1} videos/s); with shard writing {:6.1} videos/s",
                best.0,
                best.2 as f64 / best.0,
                VIDEOS as f64 / median.0,
                VIDEOS as f64 / best.1
            );
        }
        println!("  2 threads / 1 thread = {:.2}x (best runs)", rates[1] / rates[0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
