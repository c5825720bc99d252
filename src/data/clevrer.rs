//! CLEVRER preprocessing (feature `video`): mp4 videos and their annotation
//! JSON → a shard dataset (`shards.rs` format), one clip per video.
//!
//! Two passes, both resumable:
//!
//! 1. **decode** — every video, in parallel across videos (rayon), into
//!    `OUT/clevrer-work/`: the clip's bytes and its label, or the reason the
//!    video was skipped. A rerun skips videos already recorded there.
//! 2. **write** — the usable clips, in video order, into shards with
//!    `write_dataset`. A shard's work files are deleted when the next shard
//!    starts (by then the shard is on disk), the work folder when the manifest is.
//!
//! The clip count is known only after pass 1 (bad videos are skipped), so
//! shards are not written while decoding. The manifest's `source` records the
//! settings, a fingerprint of the input files and every skipped video with its
//! reason; a rerun on the same inputs re-verifies the shards and decodes only
//! the videos of a shard that is missing or damaged.

pub mod annotations;
pub mod decode;
pub mod discover;

pub use decode::{decode_clip, sample_indices, BadVideo, DecodedClip, Fit, VideoInfo};
pub use discover::{discover, Layout, Split, VideoEntry, EXPECTED_LAYOUTS};

use super::shards::{read_manifest, write_dataset, Manifest, ShardContent, ShardSpec, MANIFEST};
use super::synthetic::SHARD_BYTES_TARGET;
use crate::atomic_file::write_atomic;
use crate::error::{Error, Result};
use annotations::{read_annotation, AnnotationLabels};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Pass 1's results, inside the output directory.
pub const WORK_DIR: &str = "clevrer-work";

#[derive(Clone, Debug)]
pub struct ClevrerOptions {
    pub root: PathBuf,
    pub output_dir: PathBuf,
    pub split: Split,
    /// Frames per clip, sampled uniformly over each video.
    pub frames: usize,
    /// Clip frames are `size`×`size`.
    pub size: usize,
    pub fit: Fit,
    /// Only the first N videos (in path order).
    pub max_videos: Option<usize>,
    /// Default: 64, fewer where 64 clips would exceed 256 MiB.
    pub clips_per_shard: Option<usize>,
}

impl ClevrerOptions {
    /// The baseline's defaults: train split, 20 frames of 128×128.
    pub fn new(root: impl Into<PathBuf>, output_dir: impl Into<PathBuf>) -> ClevrerOptions {
        ClevrerOptions {
            root: root.into(),
            output_dir: output_dir.into(),
            split: Split::Train,
            frames: 20,
            size: 128,
            fit: Fit::Pad,
            max_videos: None,
            clips_per_shard: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.frames) {
            return Err(Error::invalid("--frames", format!("1 to 10000 frames per clip, got {}", self.frames)));
        }
        if !(8..=1024).contains(&self.size) {
            return Err(Error::invalid("--size", format!("frame size must be 8 to 1024 pixels, got {}", self.size)));
        }
        if self.max_videos == Some(0) || self.clips_per_shard == Some(0) {
            return Err(Error::invalid("clevrer", "--max_videos and --clips_per_shard must be at least 1"));
        }
        Ok(())
    }

    fn clip_bytes(&self) -> usize {
        self.frames * self.size * self.size * 3
    }
}

/// A video left out of the dataset, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedVideo {
    pub video: String,
    pub reason: String,
}

/// Reported once per video during pass 1 (from any thread), after `Found`.
#[derive(Clone, Copy, Debug)]
pub enum VideoEvent<'a> {
    /// Sent first: how many videos there are.
    Found { videos: usize },
    /// Decoded in this run.
    Decoded { video: &'a str },
    /// Done by an earlier run.
    Reused { video: &'a str },
    /// Left out (in this run or an earlier one).
    Skipped { video: &'a str, reason: &'a str },
}

#[derive(Debug)]
pub struct ClevrerSummary {
    pub manifest: Manifest,
    pub layout: Layout,
    /// Videos found (after `max_videos`).
    pub videos: usize,
    /// Clips whose label holds annotation data.
    pub annotated: usize,
    /// Videos decoded by this run, and their frames (all frames, not just the sampled ones).
    pub decoded: usize,
    pub frames_decoded: usize,
    /// Seconds spent in pass 1.
    pub decode_seconds: f64,
    /// Videos whose clip came from an earlier run.
    pub reused: usize,
    pub skipped: Vec<SkippedVideo>,
}

/// One clip's label (plus `clip`, its index, added when the shard is written).
#[derive(Serialize)]
struct ClipLabel<'a> {
    source: &'a str,
    annotation: Option<String>,
    video: &'a VideoInfo,
    fit: &'static str,
    frame_indices: &'a [usize],
    #[serde(flatten)]
    physics: Option<AnnotationLabels>,
}

/// Pass 1's record of one video.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Clip { label: serde_json::Value },
    Skipped { reason: String },
}

/// A video turned into a clip: its pixels, its label, and the frames decoded.
struct Processed {
    pixels: Vec<u8>,
    label: serde_json::Value,
    frames: usize,
}

/// Decodes one video and checks its annotation; the error is the reason to skip it.
fn process_video(entry: &VideoEntry, opts: &ClevrerOptions) -> std::result::Result<Processed, String> {
    let annotation_name = entry.annotation.as_ref().map(|p| discover::display_relative(&opts.root, p));
    let annotation = match (&entry.annotation, &annotation_name) {
        (Some(path), Some(name)) => Some(read_annotation(path).map_err(|e| format!("annotation {name} {e}"))?),
        _ => None,
    };
    let clip = decode_clip(&entry.path, opts.frames, opts.size, opts.fit).map_err(|BadVideo(reason)| reason)?;
    let file_name = entry.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let physics = match (annotation, &annotation_name) {
        (Some(a), Some(name)) => Some(
            a.labels(&file_name, entry.number, clip.info.frames, &clip.frame_indices)
                .map_err(|e| format!("annotation {name} disagrees with the video: {e}"))?,
        ),
        _ => None,
    };
    let label = ClipLabel {
        source: &entry.id,
        annotation: annotation_name,
        video: &clip.info,
        fit: opts.fit.name(),
        frame_indices: &clip.frame_indices,
        physics,
    };
    let label = serde_json::to_value(label).map_err(|e| format!("cannot encode the labels ({e})"))?;
    Ok(Processed { pixels: clip.bytes, label, frames: clip.info.frames })
}

/// What identifies a dataset: the settings and a fingerprint of the input files.
fn settings(opts: &ClevrerOptions, layout: Layout, entries: &[VideoEntry]) -> serde_json::Value {
    let mut inputs = String::new();
    for e in entries {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let annotation = e.annotation.as_ref().map(|p| (discover::display_relative(&opts.root, p), size(p)));
        inputs += &format!("{}\t{}\t{:?}\n", e.id, size(&e.path), annotation);
    }
    serde_json::json!({
        "dataset": "clevrer",
        "layout": layout.name(),
        // The flat layout has no splits.
        "split": if layout == Layout::Official { opts.split.name() } else { "none" },
        "frames": opts.frames,
        "size": opts.size,
        "fit": opts.fit.name(),
        "sampling": "uniform: frame i of T is source frame floor(i*(N-1)/(T-1))",
        "videos": entries.len(),
        "inputs_xxh3": super::shards::checksum(inputs.as_bytes()),
    })
}

/// Pass 1's files for video `i`.
struct WorkFiles {
    dir: PathBuf,
}

impl WorkFiles {
    fn pixels(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{i:06}.rgb"))
    }
    fn record(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{i:06}.json"))
    }

    /// Empties the folder unless it holds work done with exactly these settings and inputs.
    fn prepare(&self, settings: &serde_json::Value) -> Result<()> {
        let path = self.dir.join("settings.json");
        let recorded: Option<serde_json::Value> =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if recorded.as_ref() == Some(settings) {
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("create directory", &self.dir, e))?;
        let text = serde_json::to_vec_pretty(settings).map_err(|e| Error::invalid("clevrer", e.to_string()))?;
        write_atomic(&path, &text)
    }

    /// The recorded outcome of video `i`, if complete (a clip's pixels must be there too).
    fn load(&self, i: usize, clip_bytes: usize) -> Option<Outcome> {
        let outcome: Outcome = serde_json::from_slice(&std::fs::read(self.record(i)).ok()?).ok()?;
        if let Outcome::Clip { .. } = outcome {
            if std::fs::metadata(self.pixels(i)).ok()?.len() != clip_bytes as u64 {
                return None;
            }
        }
        Some(outcome)
    }

    /// Pixels first: the record marks the video as done.
    fn save(&self, i: usize, pixels: Option<&[u8]>, outcome: &Outcome) -> Result<()> {
        if let Some(bytes) = pixels {
            write_atomic(&self.pixels(i), bytes)?;
        }
        let text = serde_json::to_vec(outcome).map_err(|e| Error::invalid("clevrer", e.to_string()))?;
        write_atomic(&self.record(i), &text)
    }

    fn remove(&self, i: usize) {
        let _ = std::fs::remove_file(self.pixels(i));
        let _ = std::fs::remove_file(self.record(i));
    }
}

/// Videos decoded by this run (either pass), and their frames.
#[derive(Default)]
struct Counters {
    videos: AtomicUsize,
    frames: AtomicUsize,
}

impl Counters {
    fn add(&self, frames: usize) {
        self.videos.fetch_add(1, Ordering::Relaxed);
        self.frames.fetch_add(frames, Ordering::Relaxed);
    }
}

/// Which videos become clips (indices into the entries, in order), and the manifest's `source`.
struct Selection {
    good: Vec<usize>,
    skipped: Vec<SkippedVideo>,
    source: serde_json::Value,
    reused: usize,
}

/// The selection of a finished dataset, as its manifest records it.
fn select_finished(
    entries: &[VideoEntry],
    skipped: Vec<SkippedVideo>,
    source: serde_json::Value,
    on_event: &impl Fn(VideoEvent),
) -> Selection {
    let reasons: HashMap<&str, &str> = skipped.iter().map(|s| (s.video.as_str(), s.reason.as_str())).collect();
    let mut good = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        match reasons.get(e.id.as_str()) {
            Some(reason) => on_event(VideoEvent::Skipped { video: &e.id, reason }),
            None => {
                on_event(VideoEvent::Reused { video: &e.id });
                good.push(i);
            }
        }
    }
    let reused = good.len();
    Selection { good, skipped, source, reused }
}

/// Pass 1: every video not yet recorded in the work folder is decoded, in parallel.
fn select_by_decoding(
    opts: &ClevrerOptions,
    entries: &[VideoEntry],
    settings: &serde_json::Value,
    work: &WorkFiles,
    counters: &Counters,
    on_event: &(impl Fn(VideoEvent) + Sync),
) -> Result<Selection> {
    work.prepare(settings)?;
    // Per video: the reason it is skipped (None: it is a clip), and whether an earlier run did the work.
    let outcomes: Vec<(Option<String>, bool)> = (0..entries.len())
        .into_par_iter()
        .map(|i| {
            let video = entries[i].id.as_str();
            match work.load(i, opts.clip_bytes()) {
                Some(Outcome::Clip { .. }) => {
                    on_event(VideoEvent::Reused { video });
                    return Ok((None, true));
                }
                Some(Outcome::Skipped { reason }) => {
                    on_event(VideoEvent::Skipped { video, reason: &reason });
                    return Ok((Some(reason), true));
                }
                None => {}
            }
            match process_video(&entries[i], opts) {
                Ok(Processed { pixels, label, frames }) => {
                    work.save(i, Some(&pixels), &Outcome::Clip { label })?;
                    counters.add(frames);
                    on_event(VideoEvent::Decoded { video });
                    Ok((None, false))
                }
                Err(reason) => {
                    on_event(VideoEvent::Skipped { video, reason: &reason });
                    work.save(i, None, &Outcome::Skipped { reason: reason.clone() })?;
                    Ok((Some(reason), false))
                }
            }
        })
        .collect::<Result<_>>()?;
    let (mut good, mut skipped, mut reused) = (Vec::new(), Vec::new(), 0);
    for (i, (reason, earlier)) in outcomes.into_iter().enumerate() {
        match reason {
            None => {
                good.push(i);
                reused += earlier as usize;
            }
            Some(reason) => skipped.push(SkippedVideo { video: entries[i].id.clone(), reason }),
        }
    }
    let mut source = settings.clone();
    source["skipped"] = serde_json::json!(skipped);
    Ok(Selection { good, skipped, source, reused })
}

/// Pass 2: the selected clips, in order, into shards.
fn write_clips(
    opts: &ClevrerOptions,
    entries: &[VideoEntry],
    selection: &Selection,
    work: &WorkFiles,
    counters: &Counters,
) -> Result<Manifest> {
    let good = &selection.good;
    let clips_per_shard = opts.clips_per_shard.unwrap_or((SHARD_BYTES_TARGET / opts.clip_bytes()).clamp(1, 64));
    let spec =
        ShardSpec { clips: good.len(), frames: opts.frames, height: opts.size, width: opts.size, clips_per_shard };
    write_dataset(
        &opts.output_dir,
        spec,
        selection.source.clone(),
        |s, range| {
            // The previous shard is on disk now; its work files are no longer needed.
            if s > 0 {
                spec.shard_range(s - 1).for_each(|c| work.remove(good[c]));
            }
            let clips: Vec<(Vec<u8>, serde_json::Value)> = range
                .into_par_iter()
                .map(|c| {
                    let (pixels, mut label) = clip_for_shard(opts, &entries[good[c]], work, good[c], counters)?;
                    label["clip"] = serde_json::json!(c);
                    Ok((pixels, label))
                })
                .collect::<Result<_>>()?;
            let mut content =
                ShardContent { bytes: Vec::with_capacity(clips.len() * spec.clip_bytes()), labels: vec![] };
            for (pixels, label) in clips {
                content.bytes.extend_from_slice(&pixels);
                content.labels.push(label);
            }
            Ok(content)
        },
        |_| {},
    )
}

/// Preprocesses the CLEVRER videos under `opts.root` into a shard dataset in
/// `opts.output_dir` (see the module docs). Bad videos are skipped and listed
/// in the summary and the manifest; `on_event` hears about every video.
pub fn preprocess(opts: &ClevrerOptions, on_event: impl Fn(VideoEvent) + Sync) -> Result<ClevrerSummary> {
    opts.validate()?;
    let (layout, mut entries) = discover(&opts.root, opts.split)?;
    entries.truncate(opts.max_videos.unwrap_or(usize::MAX));
    on_event(VideoEvent::Found { videos: entries.len() });
    let settings = settings(opts, layout, &entries);
    let work = WorkFiles { dir: opts.output_dir.join(WORK_DIR) };
    let counters = Counters::default();
    let start = Instant::now();
    let selection = match finished_dataset(opts, &settings, entries.len())? {
        Some((skipped, source)) => select_finished(&entries, skipped, source, &on_event),
        None => select_by_decoding(opts, &entries, &settings, &work, &counters, &on_event)?,
    };
    let decode_seconds = start.elapsed().as_secs_f64();
    if selection.good.is_empty() {
        let skipped = &selection.skipped;
        let reasons: Vec<String> = skipped.iter().take(5).map(|s| format!("{}: {}", s.video, s.reason)).collect();
        return Err(Error::invalid(
            "clevrer",
            format!(
                "none of the {} videos could be used ({}{})",
                entries.len(),
                reasons.join("; "),
                if skipped.len() > 5 { "; ..." } else { "" }
            ),
        ));
    }
    let manifest = write_clips(opts, &entries, &selection, &work, &counters)?;
    let _ = std::fs::remove_dir_all(&work.dir);
    Ok(ClevrerSummary {
        manifest,
        layout,
        videos: entries.len(),
        annotated: selection.good.iter().filter(|&&i| entries[i].annotation.is_some()).count(),
        decoded: counters.videos.load(Ordering::Relaxed),
        frames_decoded: counters.frames.load(Ordering::Relaxed),
        decode_seconds,
        reused: selection.reused,
        skipped: selection.skipped,
    })
}

/// A clip for pass 2: from the work folder, or decoded again when its work
/// files are gone (a damaged shard of a finished dataset, or an interrupted
/// pass 2).
fn clip_for_shard(
    opts: &ClevrerOptions,
    entry: &VideoEntry,
    work: &WorkFiles,
    i: usize,
    counters: &Counters,
) -> Result<(Vec<u8>, serde_json::Value)> {
    if let Some(Outcome::Clip { label }) = work.load(i, opts.clip_bytes()) {
        if let Ok(pixels) = std::fs::read(work.pixels(i)) {
            if pixels.len() == opts.clip_bytes() {
                return Ok((pixels, label));
            }
        }
    }
    let processed = process_video(entry, opts).map_err(|reason| {
        Error::format(
            &entry.path,
            format!(
                "was usable when this dataset was started but not now ({reason}); the inputs changed — \
                 preprocess into a new output directory"
            ),
        )
    })?;
    counters.add(processed.frames);
    Ok((processed.pixels, processed.label))
}

/// The skip list and source of a finished dataset in the output directory made
/// from the same inputs with the same settings; None when there is no manifest;
/// an error when the manifest describes another dataset.
fn finished_dataset(
    opts: &ClevrerOptions,
    settings: &serde_json::Value,
    videos: usize,
) -> Result<Option<(Vec<SkippedVideo>, serde_json::Value)>> {
    let out = &opts.output_dir;
    if !out.join(MANIFEST).exists() {
        return Ok(None);
    }
    let old = read_manifest(out)?;
    let mut old_settings = old.source.clone();
    let skipped = old_settings
        .as_object_mut()
        .and_then(|m| m.remove("skipped"))
        .and_then(|s| serde_json::from_value::<Vec<SkippedVideo>>(s).ok());
    let same = old_settings == *settings
        && old.frames == opts.frames
        && old.height == opts.size
        && old.width == opts.size
        && skipped.as_ref().is_some_and(|s| videos.checked_sub(s.len()) == Some(old.clips));
    match skipped {
        Some(skipped) if same => Ok(Some((skipped, old.source))),
        _ => Err(Error::format(
            out.join(MANIFEST),
            format!(
                "{} already holds a different dataset ({} clips of {}x{}x{}, source {}); the settings or the input \
                 videos differ. Choose another output directory or delete it",
                out.display(),
                old.clips,
                old.frames,
                old.height,
                old.width,
                old.source
            ),
        )),
    }
}
