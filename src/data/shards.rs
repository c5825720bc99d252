//! Processed datasets on disk: memory-mapped clip shards.
//!
//! ```text
//! DIR/manifest.json    format, version, clip geometry, shard list with xxh3 checksums
//! DIR/shard-00000.bin  `clips` clips of T×H×W×3 u8, back to back, no header
//! DIR/labels.jsonl     one JSON object per clip, in clip order
//! ```
//! Writing is resumable and atomic: each shard, with its labels and checksum
//! kept beside it until the end, is written to a temporary name, fsync'd and
//! renamed, so a killed writer leaves only complete shards; a rerun verifies
//! them against their recorded checksum and skips them. The manifest is
//! written last, so a reader never accepts a half-written dataset.

use crate::atomic_file::write_atomic;
use crate::error::{Error, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "simclr-shards";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const LABELS: &str = "labels.jsonl";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub file: String,
    pub clips: usize,
    pub bytes: u64,
    /// xxh3-64 of the file's bytes, 16 hex digits.
    pub xxh3: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub dtype: String,
    pub clips: usize,
    pub shards: Vec<ShardInfo>,
    /// Where the clips came from (generator and its parameters, or source videos).
    pub source: serde_json::Value,
    pub labels: String,
}

impl Manifest {
    pub fn clip_bytes(&self) -> usize {
        self.frames * self.height * self.width * self.channels
    }
}

/// Geometry of a dataset to write.
#[derive(Clone, Copy, Debug)]
pub struct ShardSpec {
    pub clips: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub clips_per_shard: usize,
}

impl ShardSpec {
    pub fn clip_bytes(&self) -> usize {
        self.frames * self.height * self.width * 3
    }
    /// `clip_bytes`, or None where it overflows.
    pub fn clip_bytes_checked(&self) -> Option<usize> {
        [self.frames, self.height, self.width, 3].iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
    pub fn shard_count(&self) -> usize {
        self.clips.div_ceil(self.clips_per_shard.max(1))
    }
    /// The clip indices stored in shard `s`.
    pub fn shard_range(&self, s: usize) -> std::ops::Range<usize> {
        let start = s * self.clips_per_shard;
        start..(start + self.clips_per_shard).min(self.clips)
    }
}

pub fn shard_file_name(s: usize) -> String {
    format!("shard-{s:05}.bin")
}

/// Per-shard side files of an unfinished dataset: the shard's labels and its
/// checksum, written before the shard itself and merged into the manifest and
/// labels.jsonl at the end.
fn shard_labels_name(s: usize) -> String {
    format!("shard-{s:05}.labels.jsonl")
}

fn shard_checksum_name(s: usize) -> String {
    format!("shard-{s:05}.xxh3")
}

/// Removes temporaries a killed writer left behind (`<name>.<pid>.tmp`).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("shard-") || name.starts_with(MANIFEST) || name.starts_with(LABELS);
        if ours && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A shard left by an unfinished run, if it is complete and its bytes match
/// the checksum recorded before it was written: (checksum, label lines).
fn finished_shard(dir: &Path, s: usize, clips: usize, expected_bytes: u64) -> Option<(String, Vec<String>)> {
    let bin = dir.join(shard_file_name(s));
    if std::fs::metadata(&bin).ok()?.len() != expected_bytes {
        return None;
    }
    let recorded = std::fs::read_to_string(dir.join(shard_checksum_name(s))).ok()?;
    let text = std::fs::read_to_string(dir.join(shard_labels_name(s))).ok()?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let sum = checksum(&std::fs::read(&bin).ok()?);
    (lines.len() == clips && sum == recorded.trim()).then_some((sum, lines))
}

pub fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// What the caller produces for one shard: the clips' bytes back to back, and one label per clip.
pub struct ShardContent {
    pub bytes: Vec<u8>,
    pub labels: Vec<serde_json::Value>,
}

/// Writes (or finishes writing) a dataset. `make_shard(s, clip_range)` produces
/// shard `s`; shards already complete on disk are kept, not regenerated.
/// `on_shard(clips_done)` reports progress.
pub fn write_dataset(
    dir: &Path,
    spec: ShardSpec,
    source: serde_json::Value,
    make_shard: impl Fn(usize, std::ops::Range<usize>) -> Result<ShardContent>,
    mut on_shard: impl FnMut(usize),
) -> Result<Manifest> {
    if spec.clips == 0 || spec.frames == 0 || spec.height == 0 || spec.width == 0 || spec.clips_per_shard == 0 {
        return Err(Error::invalid("write_dataset", format!("every size must be at least 1, got {spec:?}")));
    }
    let shard_bytes = spec.clip_bytes_checked().and_then(|c| c.checked_mul(spec.clips_per_shard.min(spec.clips)));
    if shard_bytes.is_none() {
        return Err(Error::invalid("write_dataset", format!("a shard of {spec:?} would not fit in memory")));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    // A finished dataset made with other settings must not be mixed with new shards;
    // one made with the same settings is reused shard by shard (checksums permitting).
    let manifest_path = dir.join(MANIFEST);
    let previous = if manifest_path.exists() {
        let old = read_manifest(dir)?;
        if old.clips != spec.clips
            || old.frames != spec.frames
            || old.height != spec.height
            || old.width != spec.width
            || old.source != source
        {
            return Err(Error::format(
                &manifest_path,
                format!(
                    "{} already holds a different dataset ({} clips of {}x{}x{}, source {}); choose another output directory or delete it",
                    dir.display(),
                    old.clips,
                    old.frames,
                    old.height,
                    old.width,
                    old.source
                ),
            ));
        }
        let text = std::fs::read_to_string(dir.join(&old.labels)).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() == old.clips).then_some((old, lines))
    } else {
        None
    };
    remove_stale_temporaries(dir);
    let mut shards = Vec::with_capacity(spec.shard_count());
    let mut all_labels: Vec<String> = Vec::with_capacity(spec.clips);
    let mut done = 0;
    for s in 0..spec.shard_count() {
        let range = spec.shard_range(s);
        let expected = (range.len() * spec.clip_bytes()) as u64;
        let bin = dir.join(shard_file_name(s));
        // A shard of the finished dataset is kept if its bytes still match the manifest.
        let from_previous = previous.as_ref().and_then(|(old, lines)| {
            let info = old.shards.get(s).filter(|i| i.clips == range.len() && i.bytes == expected)?;
            let bytes = std::fs::read(&bin).ok()?;
            (checksum(&bytes) == info.xxh3).then(|| (info.xxh3.clone(), lines[range.clone()].to_vec()))
        });
        let (sum, labels) = if let Some(kept) = from_previous.or_else(|| finished_shard(dir, s, range.len(), expected))
        {
            kept
        } else {
            let content = make_shard(s, range.clone())?;
            if content.bytes.len() as u64 != expected || content.labels.len() != range.len() {
                return Err(Error::invalid(
                    "write_dataset",
                    format!(
                        "shard {s}: got {} bytes and {} labels, expected {expected} and {}",
                        content.bytes.len(),
                        content.labels.len(),
                        range.len()
                    ),
                ));
            }
            let lines: Vec<String> = content.labels.iter().map(|l| l.to_string()).collect();
            let sum = checksum(&content.bytes);
            // Side files first: a shard counts as finished only once its .bin exists too.
            write_atomic(&dir.join(shard_labels_name(s)), (lines.join("\n") + "\n").as_bytes())?;
            write_atomic(&dir.join(shard_checksum_name(s)), sum.as_bytes())?;
            write_atomic(&bin, &content.bytes)?;
            (sum, lines)
        };
        shards.push(ShardInfo { file: shard_file_name(s), clips: range.len(), bytes: expected, xxh3: sum });
        all_labels.extend(labels);
        done += range.len();
        on_shard(done);
    }
    write_atomic(&dir.join(LABELS), (all_labels.join("\n") + "\n").as_bytes())?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        frames: spec.frames,
        height: spec.height,
        width: spec.width,
        channels: 3,
        dtype: "u8".into(),
        clips: spec.clips,
        shards,
        source,
        labels: LABELS.into(),
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::invalid("write_dataset", e.to_string()))?;
    write_atomic(&manifest_path, text.as_bytes())?;
    for s in 0..spec.shard_count() {
        // Merged into labels.jsonl and the manifest.
        let _ = std::fs::remove_file(dir.join(shard_labels_name(s)));
        let _ = std::fs::remove_file(dir.join(shard_checksum_name(s)));
    }
    Ok(manifest)
}

fn missing_dataset(dir: &Path) -> Error {
    Error::format(
        dir,
        "no processed dataset here (manifest.json missing). Generate one with \
         `simclr-data bouncing --out DIR`, or preprocess CLEVRER videos into DIR",
    )
}

/// A file the manifest names but the directory lacks is damage, not an I/O hiccup.
fn missing_or_io(path: &Path, action: &'static str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::format(path, "missing, but listed in manifest.json; the dataset is incomplete — regenerate it")
    } else {
        Error::io(action, path, e)
    }
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    if !dir.is_dir() {
        return Err(missing_dataset(dir));
    }
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            missing_dataset(dir)
        } else {
            Error::io("read", &path, e)
        }
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(Error::format(&path, format!("not a {FORMAT} manifest")));
    }
    let version = value.get("version").and_then(|v| v.as_u64());
    if version != Some(VERSION as u64) {
        return Err(Error::format(
            &path,
            format!("manifest version {version:?} is not supported (this build reads version {VERSION}); regenerate the dataset with this version of simclr-data"),
        ));
    }
    let m: Manifest = serde_json::from_value(value).map_err(|e| Error::format(&path, format!("bad manifest: {e}")))?;
    if m.channels != 3 || m.dtype != "u8" {
        return Err(Error::format(
            &path,
            format!("expected 3-channel u8 clips, got {} channels of {}", m.channels, m.dtype),
        ));
    }
    if m.shards.iter().try_fold(0usize, |a, s| a.checked_add(s.clips)) != Some(m.clips) {
        return Err(Error::format(&path, "shard clip counts do not add up to `clips`"));
    }
    // Sizes come from a file: check them rather than let arithmetic overflow.
    let too_big = || Error::format(&path, "clip or shard sizes overflow; the manifest is corrupt — regenerate it");
    let clip_bytes = [m.frames, m.height, m.width, m.channels].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let clip_bytes = clip_bytes.ok_or_else(too_big)?;
    if clip_bytes == 0 {
        return Err(Error::format(&path, "frames, height and width must be at least 1"));
    }
    for s in &m.shards {
        s.clips.checked_mul(clip_bytes).ok_or_else(too_big)?;
    }
    // Files named by the manifest must sit in the dataset directory itself.
    for name in m.shards.iter().map(|s| &s.file).chain([&m.labels]) {
        let plain = Path::new(name).file_name().is_some_and(|f| f == name.as_str());
        if !plain {
            return Err(Error::format(
                &path,
                format!("file name `{name}` is not a plain file name in the dataset directory"),
            ));
        }
    }
    Ok(m)
}

/// A processed dataset opened for reading: shards memory-mapped, labels parsed.
pub struct ShardDataset {
    dir: PathBuf,
    manifest: Manifest,
    maps: Vec<Mmap>,
    /// (shard, byte offset) of every clip.
    locations: Vec<(usize, usize)>,
    labels: Vec<serde_json::Value>,
}

impl ShardDataset {
    /// Opens `dir`, checking every shard's size against the manifest and the label count.
    pub fn open(dir: &Path) -> Result<ShardDataset> {
        let manifest = read_manifest(dir)?;
        let clip_bytes = manifest.clip_bytes();
        let mut maps = Vec::with_capacity(manifest.shards.len());
        let mut locations = Vec::with_capacity(manifest.clips);
        for (s, info) in manifest.shards.iter().enumerate() {
            let path = dir.join(&info.file);
            let file = File::open(&path).map_err(|e| missing_or_io(&path, "open shard", e))?;
            let len = file.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
            let expected = (info.clips * clip_bytes) as u64;
            if len != expected || info.bytes != expected {
                return Err(Error::format(
                    &path,
                    format!("shard is {len} bytes, the manifest expects {expected} ({} clips); the dataset is damaged — regenerate it", info.clips),
                ));
            }
            // SAFETY: the file is opened read-only; a concurrent writer would be a
            // user error we cannot rule out, as with any memory-mapped reader.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("memory-map", &path, e))?;
            locations.extend((0..info.clips).map(|c| (s, c * clip_bytes)));
            maps.push(map);
        }
        let labels_path = dir.join(&manifest.labels);
        let text = std::fs::read_to_string(&labels_path).map_err(|e| missing_or_io(&labels_path, "read labels", e))?;
        let labels: Vec<serde_json::Value> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::format(&labels_path, format!("line {}: {e}", i + 1)))
            })
            .collect::<Result<_>>()?;
        if labels.len() != manifest.clips {
            return Err(Error::format(
                &labels_path,
                format!(
                    "{} label lines for {} clips; the dataset is damaged — regenerate it",
                    labels.len(),
                    manifest.clips
                ),
            ));
        }
        Ok(ShardDataset { dir: dir.to_path_buf(), manifest, maps, locations, labels })
    }

    /// Recomputes every shard's xxh3 and compares it with the manifest.
    pub fn verify_checksums(&self) -> Result<()> {
        for (info, map) in self.manifest.shards.iter().zip(&self.maps) {
            let got = checksum(map);
            if got != info.xxh3 {
                return Err(Error::format(
                    self.dir.join(&info.file),
                    format!(
                        "checksum mismatch (manifest {}, file {got}): the shard is corrupt — regenerate the dataset",
                        info.xxh3
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn len(&self) -> usize {
        self.manifest.clips
    }
    pub fn is_empty(&self) -> bool {
        self.manifest.clips == 0
    }

    /// Clip `i` as T×H×W×3 bytes.
    pub fn clip(&self, i: usize) -> Result<&[u8]> {
        let &(s, off) =
            self.locations.get(i).ok_or_else(|| Error::index("clip", format!("clip {i} of {}", self.len())))?;
        Ok(&self.maps[s][off..off + self.manifest.clip_bytes()])
    }

    pub fn label(&self, i: usize) -> Result<&serde_json::Value> {
        self.labels.get(i).ok_or_else(|| Error::index("label", format!("clip {i} of {}", self.len())))
    }
}
