//! The shard format: round trip, resumable writing, and every kind of damage
//! a reader must refuse with a clear error.

use simclr::data::shards::{read_manifest, write_dataset, ShardContent, ShardDataset, ShardSpec};
use simclr::Error;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("simclr-shards-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const SPEC: ShardSpec = ShardSpec { clips: 7, frames: 2, height: 3, width: 4, clips_per_shard: 3 };

/// Clip i is filled with the byte i·10 + frame, so contents are checkable.
fn make(calls: &std::cell::Cell<usize>) -> impl Fn(usize, std::ops::Range<usize>) -> simclr::Result<ShardContent> + '_ {
    move |_, range| {
        calls.set(calls.get() + 1);
        let mut bytes = Vec::new();
        let mut labels = Vec::new();
        for i in range {
            for f in 0..SPEC.frames {
                bytes.extend(std::iter::repeat_n((i * 10 + f) as u8, SPEC.height * SPEC.width * 3));
            }
            labels.push(serde_json::json!({ "clip": i, "ball_count": 1 + i % 3 }));
        }
        Ok(ShardContent { bytes, labels })
    }
}

fn write(dir: &Path) -> usize {
    let calls = std::cell::Cell::new(0);
    write_dataset(dir, SPEC, serde_json::json!({"generator": "test"}), make(&calls), |_| {}).unwrap();
    calls.get()
}

fn err_text(r: simclr::Result<ShardDataset>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn round_trip() {
    let dir = tmp("rt");
    assert_eq!(write(&dir), 3);
    let ds = ShardDataset::open(&dir).unwrap();
    ds.verify_checksums().unwrap();
    assert_eq!(ds.len(), 7);
    assert_eq!(ds.manifest().shards.len(), 3);
    for i in 0..7 {
        let clip = ds.clip(i).unwrap();
        assert_eq!(clip.len(), 2 * 3 * 4 * 3);
        assert_eq!(clip[0], (i * 10) as u8);
        assert_eq!(clip[clip.len() - 1], (i * 10 + 1) as u8);
        assert_eq!(ds.label(i).unwrap()["clip"], i);
    }
    assert!(matches!(ds.clip(7), Err(Error::Index { .. })));
    // no temporary or per-shard label files are left behind
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp") && !n.contains(".labels.")), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Like `make`, but the writer "dies" (returns an error) when it reaches shard `fail_at`.
fn make_failing(
    calls: &std::cell::Cell<usize>,
    fail_at: usize,
) -> impl Fn(usize, std::ops::Range<usize>) -> simclr::Result<ShardContent> + '_ {
    let inner = make(calls);
    move |s, range| {
        if s == fail_at {
            return Err(Error::invalid("test", "writer killed"));
        }
        inner(s, range)
    }
}

#[test]
fn killed_writer_leaves_no_dataset_and_rerun_resumes() {
    let dir = tmp("resume");
    let calls = std::cell::Cell::new(0);
    let source = serde_json::json!({"generator": "test"});
    assert!(write_dataset(&dir, SPEC, source.clone(), make_failing(&calls, 2), |_| {}).is_err());
    assert_eq!(calls.get(), 2);
    // Shards 0 and 1 are on disk, but without a manifest nothing reads them.
    assert!(dir.join("shard-00001.bin").exists() && !dir.join("manifest.json").exists());
    assert!(err_text(ShardDataset::open(&dir)).contains("manifest.json missing"));
    // A half-written temporary of the killed run is cleaned up, not used.
    std::fs::write(dir.join("shard-00002.bin.999.tmp"), b"partial").unwrap();
    assert_eq!(write(&dir), 1, "only the missing shard is regenerated");
    let ds = ShardDataset::open(&dir).unwrap();
    ds.verify_checksums().unwrap();
    assert_eq!(ds.clip(6).unwrap()[0], 60);
    assert_eq!(ds.label(4).unwrap()["clip"], 4);
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".tmp") && !n.contains(".labels.") && !n.ends_with(".xxh3")),
        "{names:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rerun_after_a_kill_regenerates_a_shard_damaged_since() {
    let dir = tmp("resume-damaged");
    let calls = std::cell::Cell::new(0);
    let source = serde_json::json!({"generator": "test"});
    assert!(write_dataset(&dir, SPEC, source, make_failing(&calls, 2), |_| {}).is_err());
    // Same size, one byte different: only the checksum recorded before the shard can tell.
    let shard = dir.join("shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[3] ^= 0x10;
    std::fs::write(&shard, bytes).unwrap();
    assert_eq!(write(&dir), 2, "shard 0 (damaged) and shard 2 (missing)");
    let ds = ShardDataset::open(&dir).unwrap();
    ds.verify_checksums().unwrap();
    assert_eq!(ds.clip(0).unwrap()[3], 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rerun_of_a_finished_dataset_regenerates_nothing() {
    let dir = tmp("finished");
    write(&dir);
    assert_eq!(write(&dir), 0);
    // ...except a shard whose bytes no longer match its checksum.
    let shard = dir.join("shard-00001.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    assert_eq!(write(&dir), 1);
    ShardDataset::open(&dir).unwrap().verify_checksums().unwrap();
    // Other settings (here the source) in the same directory are refused.
    let calls = std::cell::Cell::new(0);
    let err = write_dataset(&dir, SPEC, serde_json::json!({"generator": "other"}), make(&calls), |_| {}).unwrap_err();
    assert!(err.to_string().contains("already holds a different dataset"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_directory_says_how_to_make_one() {
    let msg = err_text(ShardDataset::open(Path::new("/nonexistent/simclr-data")));
    assert!(msg.contains("simclr-data bouncing --out"), "{msg}");
    let empty = tmp("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(err_text(ShardDataset::open(&empty)).contains("manifest.json missing"));
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn unknown_manifest_version_is_refused() {
    let dir = tmp("version");
    write(&dir);
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"version\": 1", "\"version\": 2");
    std::fs::write(&path, text).unwrap();
    let msg = err_text(ShardDataset::open(&dir));
    assert!(msg.contains("version Some(2) is not supported") && msg.contains("manifest.json"), "{msg}");
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(read_manifest(&dir), Err(Error::Format { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_or_resized_shards_are_refused() {
    for (name, new_len) in [("truncated", 50u64), ("grown", 300)] {
        let dir = tmp(name);
        write(&dir);
        let shard = dir.join("shard-00001.bin");
        let f = std::fs::OpenOptions::new().write(true).open(&shard).unwrap();
        f.set_len(new_len).unwrap();
        let msg = err_text(ShardDataset::open(&dir));
        assert!(msg.contains("shard-00001.bin") && msg.contains("regenerate"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn checksum_mismatch_is_found_on_request() {
    let dir = tmp("checksum");
    write(&dir);
    let shard = dir.join("shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[5] ^= 0xff; // same size, different content
    std::fs::write(&shard, bytes).unwrap();
    let ds = ShardDataset::open(&dir).unwrap(); // sizes are fine
    let msg = ds.verify_checksums().unwrap_err().to_string();
    assert!(msg.contains("checksum mismatch") && msg.contains("shard-00000.bin"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn labels_that_disagree_with_the_clip_count_are_refused() {
    let dir = tmp("labels");
    write(&dir);
    let path = dir.join("labels.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let fewer: Vec<&str> = text.lines().take(5).collect();
    std::fs::write(&path, fewer.join("\n")).unwrap();
    let msg = err_text(ShardDataset::open(&dir));
    assert!(msg.contains("5 label lines for 7 clips") && msg.contains("labels.jsonl"), "{msg}");
    std::fs::write(&path, text.replacen('{', "{{", 1)).unwrap();
    assert!(err_text(ShardDataset::open(&dir)).contains("line 1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_different_dataset_in_the_output_directory_is_not_overwritten() {
    let dir = tmp("clash");
    write(&dir);
    let calls = std::cell::Cell::new(0);
    let other = ShardSpec { clips: 9, ..SPEC };
    let err = write_dataset(&dir, other, serde_json::json!({}), make(&calls), |_| {}).unwrap_err().to_string();
    assert!(err.contains("already holds a different dataset"), "{err}");
    assert_eq!(calls.get(), 0);
    ShardDataset::open(&dir).unwrap().verify_checksums().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_shard_file_is_named() {
    let dir = tmp("missing-shard");
    write(&dir);
    std::fs::remove_file(dir.join("shard-00002.bin")).unwrap();
    let msg = err_text(ShardDataset::open(&dir));
    assert!(msg.contains("shard-00002.bin") && msg.contains("regenerate"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn manifests_with_bad_paths_or_sizes_are_refused_without_panicking() {
    let dir = tmp("bad-manifest");
    write(&dir);
    let path = dir.join("manifest.json");
    let good: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("not a plain file name", Box::new(|m| m["shards"][0]["file"] = "../../etc/passwd".into())),
        ("not a plain file name", Box::new(|m| m["labels"] = "/tmp/labels.jsonl".into())),
        ("overflow", Box::new(|m| m["frames"] = (u64::MAX / 2).into())),
        ("at least 1", Box::new(|m| m["width"] = 0.into())),
        ("do not add up", Box::new(|m| m["clips"] = 8.into())),
        ("not a simclr-shards manifest", Box::new(|m| m["format"] = "something-else".into())),
        ("3-channel u8", Box::new(|m| m["dtype"] = "f32".into())),
    ];
    for (want, edit) in cases {
        let mut m = good.clone();
        edit(&mut m);
        std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        let msg = err_text(ShardDataset::open(&dir));
        assert!(msg.contains(want) && msg.contains("manifest.json"), "want `{want}`: {msg}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
