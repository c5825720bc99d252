//! Finding CLEVRER videos and their annotation files on disk.
//!
//! Two layouts are accepted (the ones the PyTorch baseline reads):
//!
//! ```text
//! official   ROOT/video_train/video_00000-01000/video_00000.mp4
//!            ROOT/annotation_train/annotation_00000-01000/annotation_00000.json   (optional; or under
//!            ROOT/annotations/train/, where CLEVRER's README puts them)
//! flat       ROOT/video_00000.mp4                                                  (any *.mp4 name)
//!            ROOT/annotation_00000.json or ROOT/video_00000.json                   (optional)
//! ```
//! The official layout wins when `ROOT/video_<split>` exists. Videos are
//! sorted by their path relative to ROOT, so clip order is the same on every
//! run and every machine.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which part of CLEVRER to read (`video_<split>` in the official layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Result<Split> {
        Split::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| Error::invalid("--split", format!("expected train, validation or test, got `{s}`")))
    }

    fn video_dir(self) -> String {
        format!("video_{}", self.name())
    }

    /// Where the official layout's annotations may be, relative to ROOT.
    fn annotation_dirs(self) -> [PathBuf; 2] {
        [PathBuf::from(format!("annotation_{}", self.name())), Path::new("annotations").join(self.name())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Official,
    Flat,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Official => "official",
            Layout::Flat => "flat",
        }
    }
}

/// One video to process.
#[derive(Clone, Debug)]
pub struct VideoEntry {
    /// Path relative to ROOT with `/` separators: the video's name in labels and the manifest.
    pub id: String,
    pub path: PathBuf,
    /// The annotation file for this video, if there is one.
    pub annotation: Option<PathBuf>,
    /// The NNNNN of `video_NNNNN.mp4`, which the annotation's `scene_index` must match.
    pub number: Option<u64>,
}

/// What the error messages show so a user can fix the root.
pub const EXPECTED_LAYOUTS: &str = "expected one of two layouts:\n  \
     official: ROOT/video_train/video_00000-01000/video_00000.mp4 (also video_validation, video_test), with \
     optional annotations in ROOT/annotation_train/annotation_00000-01000/annotation_00000.json (or \
     ROOT/annotations/train/...)\n  \
     flat:     ROOT/*.mp4, with optional annotations beside them (ROOT/annotation_00000.json for \
     video_00000.mp4, or ROOT/<video name>.json)";

fn is_mp4(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mp4"))
}

fn is_json(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// `annotation_NNNNN.json` files by NNNNN; the first one wins if a number repeats.
fn annotations_by_number(files: Vec<PathBuf>) -> HashMap<u64, PathBuf> {
    let mut by_number = HashMap::new();
    for path in files {
        if let Some(n) = number_after(&path, "annotation_") {
            by_number.entry(n).or_insert(path);
        }
    }
    by_number
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Entries of `dir`, sorted; unreadable entries are left out.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| !is_hidden(p)).collect();
    paths.sort();
    Ok(paths)
}

/// Files under `dir` and in its immediate sub-folders (the official `xxxxx-yyyyy` chunks).
fn files_two_deep(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in list(dir)? {
        if path.is_dir() {
            out.extend(list(&path)?.into_iter().filter(|p| keep(p)));
        } else if keep(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

/// The number in `<prefix>NNNNN.<ext>`, e.g. 42 for `video_00042.mp4` with prefix `video_`.
fn number_after(path: &Path, prefix: &str) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    let digits = stem.strip_prefix(prefix)?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

fn relative_id(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Finds the videos of `split` under `root` (see the module docs for the layouts).
/// A missing root, or one with no videos, is an error that shows the expected layouts.
pub fn discover(root: &Path, split: Split) -> Result<(Layout, Vec<VideoEntry>)> {
    if !root.is_dir() {
        return Err(Error::invalid(
            "--clevrer_root",
            format!("{} is not a directory; {EXPECTED_LAYOUTS}", root.display()),
        ));
    }
    let official = root.join(split.video_dir());
    let (layout, videos) = if official.is_dir() {
        (Layout::Official, files_two_deep(&official, is_mp4)?)
    } else {
        (Layout::Flat, list(root)?.into_iter().filter(|p| is_mp4(p)).collect())
    };
    if videos.is_empty() {
        let where_ = match layout {
            Layout::Official => format!("{} holds no .mp4 files", official.display()),
            Layout::Flat => format!("{} has no {} folder and no .mp4 files", root.display(), split.video_dir()),
        };
        let others: Vec<String> = Split::ALL
            .into_iter()
            .filter(|s| *s != split && root.join(s.video_dir()).is_dir())
            .map(|s| format!("{} (pass --split {})", s.video_dir(), s.name()))
            .collect();
        let hint = if others.is_empty() { String::new() } else { format!("; found {}", others.join(", ")) };
        return Err(Error::invalid("--clevrer_root", format!("no videos found: {where_}{hint}; {EXPECTED_LAYOUTS}")));
    }
    // Annotation files by scene number (the test split has none).
    let annotations = match layout {
        Layout::Official => {
            let mut files = Vec::new();
            for dir in split.annotation_dirs().map(|d| root.join(d)).iter().filter(|d| d.is_dir()) {
                files.extend(files_two_deep(dir, is_json)?);
            }
            annotations_by_number(files)
        }
        Layout::Flat => annotations_by_number(list(root)?.into_iter().filter(|p| is_json(p)).collect()),
    };
    let entries = videos
        .into_iter()
        .map(|path| {
            let number = number_after(&path, "video_");
            let by_stem = (layout == Layout::Flat).then(|| path.with_extension("json")).filter(|p| p.is_file());
            let annotation = number.and_then(|n| annotations.get(&n).cloned()).or(by_stem);
            VideoEntry { id: relative_id(root, &path), path, annotation, number }
        })
        .collect();
    Ok((layout, entries))
}

/// `path` relative to `root` for labels and messages (the full path if it lies elsewhere).
pub fn display_relative(root: &Path, path: &Path) -> String {
    relative_id(root, path)
}
