//! `simclr-data`: make and inspect processed datasets.
//!
//!   simclr-data bouncing --out DIR [--clips N --frames T --size S --balls 1-3 --seed S]
//!   simclr-data inspect DIR [--png PATH] [--no-verify]
//!   simclr-data clevrer --clevrer_root DIR --output_dir DIR [--max_videos N --frames 20 --size 128
//!                       --split train|validation|test --fit pad|crop]   (built with --features video)

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use simclr::data::contact_sheet::write_contact_sheet;
use simclr::data::shards::ShardDataset;
use simclr::data::synthetic::{default_clips_per_shard, write_bouncing, BouncingConfig, BouncingDataset, MAX_BALLS};
use simclr::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "simclr-data", about = "Generate and inspect processed clip datasets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the synthetic bouncing-ball dataset (1–3 balls; label = ball count).
    Bouncing {
        /// Output directory (created; an interrupted run resumes where it stopped).
        #[arg(long)]
        out: PathBuf,
        /// Number of clips.
        #[arg(long, default_value_t = 1000)]
        clips: usize,
        /// Frames per clip.
        #[arg(long, default_value_t = 20)]
        frames: usize,
        /// Frame width and height in pixels (1000 clips × 20 frames at 128 px ≈ 1 GB).
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Ball count range, e.g. 1-3 or 2.
        #[arg(long, default_value = "1-3")]
        balls: String,
        /// Random seed: the same seed gives byte-identical data.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Clips per shard file [default: 64, fewer where 64 clips exceed 256 MiB].
        #[arg(long)]
        clips_per_shard: Option<usize>,
    },
    /// Preprocess CLEVRER mp4 videos and annotations into shards (needs a build with --features video).
    Clevrer(ClevrerArgs),
    /// Summarise a dataset, verify its checksums and write a PNG contact sheet.
    Inspect {
        dir: PathBuf,
        /// Where to write the contact sheet (default DIR/contact_sheet.png).
        #[arg(long)]
        png: Option<PathBuf>,
        /// Clips on the contact sheet.
        #[arg(long, default_value_t = 6)]
        sheet_clips: usize,
        /// Skip checksum verification (faster on big datasets).
        #[arg(long)]
        no_verify: bool,
    },
}

#[derive(clap::Args)]
struct ClevrerArgs {
    /// CLEVRER root: ROOT/video_train/video_00000-01000/video_00000.mp4 (+ ROOT/annotation_train/...), or ROOT/*.mp4.
    #[arg(long = "clevrer_root", alias = "clevrer-root")]
    clevrer_root: PathBuf,
    /// Output directory (created; an interrupted run resumes where it stopped).
    #[arg(long = "output_dir", alias = "output-dir")]
    output_dir: PathBuf,
    /// Only the first N videos (in file name order).
    #[arg(long = "max_videos", alias = "max-videos")]
    max_videos: Option<usize>,
    /// Frames per clip, sampled uniformly over each video.
    #[arg(long, default_value_t = 20)]
    frames: usize,
    /// Frame width and height in pixels.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Which official split folder to read (video_<split>); ignored for a flat folder of mp4s.
    #[arg(long, default_value = "train", value_parser = ["train", "validation", "test"])]
    split: String,
    /// Keep the aspect ratio by padding the whole frame with black bands (pad) or by cutting a centre square (crop).
    #[arg(long, default_value = "pad", value_parser = ["pad", "crop"])]
    fit: String,
    /// Clips per shard file [default: 64, fewer where 64 clips exceed 256 MiB].
    #[arg(long = "clips_per_shard", alias = "clips-per-shard")]
    clips_per_shard: Option<usize>,
}

#[cfg(not(feature = "video"))]
fn clevrer(_: ClevrerArgs) -> Result<()> {
    Err(Error::invalid(
        "simclr-data clevrer",
        "this binary was built without video support; rebuild with `cargo build --release --features video` \
         (needs FFmpeg's development files: apt-get install libavcodec-dev libavformat-dev libavutil-dev \
         libswscale-dev libavfilter-dev libavdevice-dev libswresample-dev clang libclang-dev pkg-config)",
    ))
}

#[cfg(feature = "video")]
fn clevrer(args: ClevrerArgs) -> Result<()> {
    use simclr::data::clevrer::{preprocess, ClevrerOptions, Fit, Split, VideoEvent};
    let opts = ClevrerOptions {
        root: args.clevrer_root,
        output_dir: args.output_dir,
        split: Split::parse(&args.split)?,
        frames: args.frames,
        size: args.size,
        fit: if args.fit == "crop" { Fit::Crop } else { Fit::Pad },
        max_videos: args.max_videos,
        clips_per_shard: args.clips_per_shard,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} videos  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let summary = preprocess(&opts, |event| match event {
        VideoEvent::Found { videos } => bar.set_length(videos as u64),
        VideoEvent::Decoded { .. } | VideoEvent::Reused { .. } => bar.inc(1),
        VideoEvent::Skipped { video, reason } => {
            bar.suspend(|| eprintln!("warning: skipping {video}: {reason}"));
            bar.inc(1);
        }
    });
    bar.finish_and_clear();
    let s = summary?;
    let m = &s.manifest;
    let split = m.source.get("split").and_then(|v| v.as_str()).unwrap_or("none");
    println!(
        "found    {} videos ({} layout, split {split}); {} clips have annotation labels",
        s.videos,
        s.layout.name(),
        s.annotated
    );
    let rate = |n: usize| n as f64 / s.decode_seconds.max(1e-9);
    println!(
        "decoded  {} videos ({} frames) in {:.1} s: {:.1} videos/s, {:.0} frames/s on {} threads; {} reused from an earlier run",
        s.decoded,
        s.frames_decoded,
        s.decode_seconds,
        rate(s.decoded),
        rate(s.frames_decoded),
        rayon::current_num_threads(),
        s.reused
    );
    if !s.skipped.is_empty() {
        println!("skipped  {} videos (all listed in manifest.json, source.skipped):", s.skipped.len());
        for v in s.skipped.iter().take(20) {
            println!("  {}: {}", v.video, v.reason);
        }
        if s.skipped.len() > 20 {
            println!("  ... and {} more", s.skipped.len() - 20);
        }
    }
    println!(
        "wrote {} clips ({} shards, {:.1} MB) to {} in {:.1} s",
        m.clips,
        m.shards.len(),
        (m.clips * m.clip_bytes()) as f64 / 1e6,
        opts.output_dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn parse_balls(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::invalid(
            "--balls",
            format!("expected a count like 2 or a range like 1-3 (1 to {MAX_BALLS} balls), got `{s}`"),
        )
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if lo == 0 || lo > hi || hi > MAX_BALLS {
        return Err(bad());
    }
    Ok((lo, hi))
}

#[allow(clippy::too_many_arguments)]
fn bouncing(
    out: PathBuf,
    clips: usize,
    frames: usize,
    size: usize,
    balls: &str,
    seed: u64,
    clips_per_shard: Option<usize>,
) -> Result<()> {
    let (min_balls, max_balls) = parse_balls(balls)?;
    if clips == 0 || frames == 0 || clips_per_shard == Some(0) {
        return Err(Error::invalid(
            "simclr-data bouncing",
            "--clips, --frames and --clips-per-shard must be at least 1",
        ));
    }
    if frames > 10_000 {
        return Err(Error::invalid("--frames", format!("at most 10000 frames per clip, got {frames}")));
    }
    if !(8..=1024).contains(&size) {
        return Err(Error::invalid("--size", format!("frame size must be 8 to 1024 pixels, got {size}")));
    }
    let clip = BouncingConfig { frames, size, min_balls, max_balls, ..Default::default() };
    let clips_per_shard = clips_per_shard.unwrap_or_else(|| default_clips_per_shard(&clip));
    let bar = ProgressBar::new(clips as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} clips  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let dataset = BouncingDataset { clips, seed, clips_per_shard, clip };
    let manifest = write_bouncing(&out, &dataset, |n| bar.inc(n as u64));
    bar.finish_and_clear();
    let manifest = manifest?;
    println!(
        "wrote {} clips ({} shards, {:.1} MB) to {} in {:.1} s",
        manifest.clips,
        manifest.shards.len(),
        (manifest.clips * manifest.clip_bytes()) as f64 / 1e6,
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn inspect(dir: PathBuf, png: Option<PathBuf>, sheet_clips: usize, no_verify: bool) -> Result<()> {
    let ds = ShardDataset::open(&dir)?;
    let m = ds.manifest();
    println!("dataset   {}", dir.display());
    println!("format    {} v{}", m.format, m.version);
    println!(
        "clips     {} in {} shards, {} frames of {}x{}x{} {}",
        m.clips,
        m.shards.len(),
        m.frames,
        m.height,
        m.width,
        m.channels,
        m.dtype
    );
    println!("source    {}", m.source);
    if no_verify {
        println!("checksums not verified (--no-verify)");
    } else {
        ds.verify_checksums()?;
        println!("checksums ok ({} shards, xxh3)", m.shards.len());
    }
    // Label statistics (fields present in bouncing-ball labels; others are skipped).
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    let (mut collisions, mut speed_min, mut speed_max, mut with_gravity) = (Vec::new(), f64::INFINITY, 0f64, 0);
    for i in 0..ds.len() {
        let l = ds.label(i)?;
        if let Some(c) = l.get("ball_count").and_then(|v| v.as_u64()) {
            *counts.entry(c).or_default() += 1;
        }
        if let Some(c) = l.get("collisions").and_then(|v| v.as_array()) {
            collisions.push(c.len());
        }
        if l.get("gravity").and_then(|v| v.as_f64()).is_some_and(|g| g > 0.0) {
            with_gravity += 1;
        }
        for frame in l.get("velocities").and_then(|v| v.as_array()).into_iter().flatten() {
            for v in frame.as_array().into_iter().flatten() {
                if let (Some(x), Some(y)) = (v.get(0).and_then(|x| x.as_f64()), v.get(1).and_then(|y| y.as_f64())) {
                    let s = (x * x + y * y).sqrt();
                    speed_min = speed_min.min(s);
                    speed_max = speed_max.max(s);
                }
            }
        }
    }
    if !counts.is_empty() {
        let hist: Vec<String> = counts.iter().map(|(k, v)| format!("{k} balls: {v}")).collect();
        println!("counts    {}", hist.join(", "));
    }
    if !collisions.is_empty() {
        let mean = collisions.iter().sum::<usize>() as f64 / collisions.len() as f64;
        println!("collisions per clip: mean {mean:.1}, max {}", collisions.iter().max().unwrap_or(&0));
        println!("speed     {speed_min:.3} to {speed_max:.3} box/s; {with_gravity} clips with gravity");
    }
    let png = png.unwrap_or_else(|| dir.join("contact_sheet.png"));
    let (w, h) = write_contact_sheet(&ds, &png, sheet_clips, 10)?;
    println!("contact sheet {} ({w}x{h})", png.display());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bouncing { out, clips, frames, size, balls, seed, clips_per_shard } => {
            bouncing(out, clips, frames, size, &balls, seed, clips_per_shard)
        }
        Command::Inspect { dir, png, sheet_clips, no_verify } => inspect(dir, png, sheet_clips, no_verify),
        Command::Clevrer(args) => clevrer(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
