//! CLEVRER preprocessing on small mp4s made here (no downloaded data): both
//! layouts, frame sampling, pixel content after scaling, annotation labels,
//! every kind of bad input, resuming, and the CLI.

#![cfg(feature = "video")]

#[path = "clevrer/fixture.rs"]
mod fixture;

mod common;

use common::temp_dir;
use fixture::{bars_and_index, frame_grey, write_mp4, Codec, VideoSpec, BARS};
use simclr::data::clevrer::{preprocess, ClevrerOptions, ClevrerSummary, Fit, Split, VideoEvent};
use simclr::data::shards::ShardDataset;
use std::path::Path;
use std::sync::Mutex;

const W: usize = 96;
const H: usize = 64;
const FRAMES: usize = 30;
/// Clip geometry used throughout: 6 frames of 32×32.
const T: usize = 6;
const S: usize = 32;
/// floor(i·29/5) for i in 0..6.
const SAMPLED: [usize; T] = [0, 5, 11, 17, 23, 29];

fn spec(frames: usize) -> VideoSpec {
    VideoSpec {
        width: W as u32,
        height: H as u32,
        frames,
        fps: 25,
        codec: Codec::Mpeg4,
        faststart: false,
        packet_durations: true,
    }
}

fn video(path: &Path, spec: VideoSpec) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_mp4(path, spec, bars_and_index(spec.width as usize, spec.height as usize));
}

fn write_json(path: &Path, value: &serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

fn truncate(path: &Path, fraction: f64) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..(bytes.len() as f64 * fraction) as usize]).unwrap();
}

/// Collisions in the fixture annotations.
const COLLISIONS: [((i64, i64), usize); 2] = [((0, 1), 12), ((1, 2), 20)];

/// The official layout with three good videos and one of each kind of bad input.
/// Returns the expected skips: (video id, part of the reason).
fn official_fixture(root: &Path) -> Vec<(&'static str, &'static str)> {
    let videos = root.join("video_train/video_00000-01000");
    let notes = root.join("annotation_train/annotation_00000-01000");
    let v = |n: u32| videos.join(format!("video_{n:05}.mp4"));
    let a = |n: u32| notes.join(format!("annotation_{n:05}.json"));
    // Good: annotated, not annotated, and one in a second chunk folder.
    video(&v(0), spec(FRAMES));
    write_json(&a(0), &fixture::annotation(0, FRAMES, 3, &COLLISIONS));
    video(&v(1), spec(FRAMES));
    let v1000 = root.join("video_train/video_01000-02000/video_01000.mp4");
    video(&v1000, spec(FRAMES));
    write_json(
        &root.join("annotations/train/annotation_01000-02000/annotation_01000.json"), // CLEVRER README's place
        &fixture::annotation(1000, FRAMES, 4, &[]),
    );
    // Bad videos.
    std::fs::write(v(2), b"").unwrap();
    video(&v(3), spec(FRAMES));
    truncate(&v(3), 0.5); // the index (moov) is at the end: gone
    video(&v(4), VideoSpec { faststart: true, ..spec(FRAMES) });
    truncate(&v(4), 0.5); // index first: demuxes silently to fewer frames
    let noise: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(v(5), noise).unwrap();
    video(&v(6), spec(4)); // shorter than --frames
                           // Good videos with bad annotations.
    video(&v(7), spec(FRAMES));
    std::fs::write(a(7), b"{\"object_property\": [").unwrap();
    video(&v(8), spec(FRAMES));
    write_json(&a(8), &fixture::annotation(8, 20, 2, &[])); // 20 frames of trajectory for a 30-frame video
    video(&v(9), spec(FRAMES));
    write_json(&a(9), &fixture::annotation(9, FRAMES, 2, &[((0, 5), 3)])); // object 5 does not exist
    video(&v(10), spec(FRAMES));
    write_json(&a(10), &fixture::annotation(11, FRAMES, 2, &[])); // another video's annotation
    vec![
        ("video_train/video_00000-01000/video_00002.mp4", "zero-byte file"),
        ("video_train/video_00000-01000/video_00003.mp4", "not a readable video"),
        ("video_train/video_00000-01000/video_00004.mp4", "truncated or corrupt: decoded"),
        ("video_train/video_00000-01000/video_00005.mp4", "not a readable video"),
        ("video_train/video_00000-01000/video_00006.mp4", "4 frames, fewer than --frames 6"),
        ("video_train/video_00000-01000/video_00007.mp4", "is not valid CLEVRER annotation JSON"),
        ("video_train/video_00000-01000/video_00008.mp4", "trajectories for 20 frames, the video has 30"),
        ("video_train/video_00000-01000/video_00009.mp4", "mentions object_id 5, not in object_property"),
        ("video_train/video_00000-01000/video_00010.mp4", "it is for video_00011.mp4, not video_00010.mp4"),
    ]
}

fn options(root: &Path, out: &Path) -> ClevrerOptions {
    ClevrerOptions { frames: T, size: S, clips_per_shard: Some(2), ..ClevrerOptions::new(root, out) }
}

/// Runs preprocessing and returns the summary and the events it reported, per kind.
fn run(opts: &ClevrerOptions) -> (ClevrerSummary, Vec<String>) {
    let events = Mutex::new(Vec::new());
    let summary = preprocess(opts, |e| {
        let line = match e {
            VideoEvent::Found { videos } => format!("found {videos}"),
            VideoEvent::Decoded { video } => format!("decoded {video}"),
            VideoEvent::Reused { video } => format!("reused {video}"),
            VideoEvent::Skipped { video, reason } => format!("skipped {video}: {reason}"),
        };
        events.lock().unwrap().push(line);
    })
    .unwrap();
    let mut events = events.into_inner().unwrap();
    events.sort();
    (summary, events)
}

fn pixel(clip: &[u8], frame: usize, x: usize, y: usize) -> [u8; 3] {
    let at = ((frame * S + y) * S + x) * 3;
    [clip[at], clip[at + 1], clip[at + 2]]
}

fn assert_close(got: [u8; 3], want: [u8; 3], tolerance: u8, what: &str) {
    let ok = got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= tolerance);
    assert!(ok, "{what}: got {got:?}, expected {want:?} ± {tolerance}");
}

/// serde_json's default float parser may be one ulp off after a round trip.
fn assert_vec3(got: &serde_json::Value, want: [f64; 3], what: &str) {
    let got: Vec<f64> =
        got.as_array().unwrap_or_else(|| panic!("{what}: {got}")).iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(got.len() == 3 && got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12), "{what}: {got:?} vs {want:?}");
}

/// Checks a padded clip of the bars-and-index video: black bands, the bars, and the sampled frames' greys.
fn check_padded_clip(clip: &[u8]) {
    // 96×64 → 32×21 centred: rows 0..5 and 26..32 are padding.
    for (f, &source) in SAMPLED.iter().enumerate() {
        for y in (0..5).chain(26..S) {
            for x in 0..S {
                assert_eq!(pixel(clip, f, x, y), [0, 0, 0], "padding at frame {f} ({x}, {y})");
            }
        }
        // Output column x averages source columns 3x..3x+3; these lie inside bar k.
        for (k, bar) in BARS.iter().enumerate() {
            let x = (16 * k + 8) / 3;
            assert_close(pixel(clip, f, x, 10), *bar, 8, &format!("bar {k} of frame {f}"));
        }
        let grey = frame_grey(source);
        for x in [2, 16, 29] {
            assert_close(pixel(clip, f, x, 22), [grey; 3], 3, &format!("frame index grey of clip frame {f}"));
        }
    }
}

#[test]
fn official_layout_keeps_good_videos_and_records_every_bad_one() {
    let dir = temp_dir("official");
    let (root, out) = (dir.join("clevrer"), dir.join("out"));
    let expected_skips = official_fixture(&root);
    let (summary, events) = run(&options(&root, &out));

    // Every bad input is skipped with its reason, in the summary, the events and the manifest.
    let skipped: Vec<(&str, &str)> = summary.skipped.iter().map(|s| (s.video.as_str(), s.reason.as_str())).collect();
    assert_eq!(skipped.len(), expected_skips.len(), "{skipped:#?}");
    for ((video, reason), (want_video, want_reason)) in skipped.iter().zip(&expected_skips) {
        assert_eq!(video, want_video);
        assert!(reason.contains(want_reason), "{video}: `{reason}` should say `{want_reason}`");
    }
    let m = &summary.manifest;
    let recorded = m.source["skipped"].as_array().unwrap();
    assert_eq!(recorded.len(), expected_skips.len());
    assert_eq!(recorded[0]["video"], expected_skips[0].0);
    assert_eq!(recorded[0]["reason"], "zero-byte file");
    assert_eq!(m.source["layout"], "official");
    assert_eq!(m.source["split"], "train");
    assert_eq!(events.len(), 1 + 3 + expected_skips.len());
    assert_eq!(events.iter().filter(|e| e.starts_with("decoded")).count(), 3);
    assert!(events.contains(&"found 12".to_string()), "{events:?}");
    assert_eq!((summary.videos, summary.decoded, summary.reused, summary.annotated), (12, 3, 0, 2));
    assert_eq!(summary.frames_decoded, 3 * FRAMES);

    // The three good videos, in path order, as a valid dataset; the work folder is gone.
    assert_eq!((m.clips, m.frames, m.height, m.width, m.shards.len()), (3, T, S, S, 2));
    assert!(!out.join("clevrer-work").exists());
    let ds = ShardDataset::open(&out).unwrap();
    ds.verify_checksums().unwrap();
    let sources: Vec<&str> = (0..3).map(|i| ds.label(i).unwrap()["source"].as_str().unwrap()).collect();
    assert_eq!(
        sources,
        [
            "video_train/video_00000-01000/video_00000.mp4",
            "video_train/video_00000-01000/video_00001.mp4",
            "video_train/video_01000-02000/video_01000.mp4"
        ]
    );
    for i in 0..3 {
        let label = ds.label(i).unwrap();
        assert_eq!(label["clip"], i);
        assert_eq!(label["frame_indices"], serde_json::json!(SAMPLED));
        assert_eq!(label["video"]["frames"], FRAMES);
        assert_eq!((label["video"]["width"].as_u64(), label["video"]["height"].as_u64()), (Some(96), Some(64)));
        assert_eq!(label["video"]["fps"], 25.0);
        assert_eq!(label["fit"], "pad");
        check_padded_clip(ds.clip(i).unwrap());
    }

    // Labels from the annotation: properties, collisions, per-frame states at the sampled frames.
    let l = ds.label(0).unwrap();
    assert_eq!(l["annotation"], "annotation_train/annotation_00000-01000/annotation_00000.json");
    assert_eq!(l["scene_index"], 0);
    assert_eq!(l["object_count"], 3);
    assert_eq!(l["colors"], serde_json::json!(fixture::COLORS[..3]));
    assert_eq!(l["shapes"], serde_json::json!(fixture::SHAPES[..3]));
    assert_eq!(l["materials"], serde_json::json!(fixture::MATERIALS[..3]));
    assert_eq!(l["objects"][1], serde_json::json!({"id": 1, "color": "blue", "material": "metal", "shape": "sphere"}));
    assert_eq!(l["collision_count"], 2);
    assert_eq!(l["collision_frames"], serde_json::json!([12, 20]));
    assert_eq!(l["collisions"][1]["objects"], serde_json::json!([1, 2]));
    for (k, &f) in SAMPLED.iter().enumerate() {
        for j in 0..3 {
            assert_vec3(&l["locations"][k][j], fixture::location(f, j), &format!("location of {j} at frame {f}"));
            assert_vec3(&l["velocities"][k][j], fixture::velocity(j), &format!("velocity of {j} at frame {f}"));
            assert_eq!(l["inside_camera_view"][k][j], f >= j);
        }
    }
    // No annotation: the clip is kept with video labels only.
    let l = ds.label(1).unwrap();
    assert!(l["annotation"].is_null() && l.get("object_count").is_none(), "{l}");
    let l = ds.label(2).unwrap();
    assert_eq!((l["object_count"].as_u64(), l["collision_count"].as_u64()), (Some(4), Some(0)));
    assert_eq!(l["locations"].as_array().unwrap().len(), T);

    // Another split of the same root: its folder is missing, and the error names the one that exists.
    let mut other = options(&root, &dir.join("out-test"));
    other.split = Split::Test;
    let err = preprocess(&other, |_| {}).unwrap_err().to_string();
    assert!(err.contains("no videos found") && err.contains("video_train (pass --split train)"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reruns_skip_finished_work_and_repair_damage() {
    let dir = temp_dir("resume");
    let (root, out) = (dir.join("clevrer"), dir.join("out"));
    official_fixture(&root);
    let opts = options(&root, &out);
    let (first, _) = run(&opts);

    // A finished dataset: nothing is decoded again, the same manifest comes back.
    let (second, events) = run(&opts);
    assert_eq!((second.decoded, second.reused, second.skipped.len()), (0, 3, 9));
    assert_eq!(events.iter().filter(|e| e.starts_with("reused")).count(), 3);
    assert_eq!(second.manifest, first.manifest);

    // A damaged shard: only its video is decoded again, and the bytes come back the same.
    let shard = out.join(&first.manifest.shards[1].file);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let (third, _) = run(&opts);
    assert_eq!((third.decoded, third.frames_decoded), (1, FRAMES));
    assert_eq!(third.manifest, first.manifest);
    ShardDataset::open(&out).unwrap().verify_checksums().unwrap();

    // Other settings into the same directory: refused, the dataset untouched.
    let err = preprocess(&ClevrerOptions { size: 24, ..opts.clone() }, |_| {}).unwrap_err().to_string();
    assert!(err.contains("already holds a different dataset"), "{err}");
    ShardDataset::open(&out).unwrap().verify_checksums().unwrap();

    // Killed after decoding, before the shards: the rerun decodes nothing.
    let out2 = dir.join("out2");
    std::fs::create_dir_all(out2.join("shard-00000.bin")).unwrap(); // a directory: writing the shard fails
    let opts2 = options(&root, &out2);
    assert!(preprocess(&opts2, |_| {}).is_err());
    assert!(out2.join("clevrer-work").is_dir());
    std::fs::remove_dir(out2.join("shard-00000.bin")).unwrap();
    let (resumed, _) = run(&opts2);
    assert_eq!((resumed.decoded, resumed.reused), (0, 3));
    assert_eq!(resumed.manifest.shards, first.manifest.shards);

    // Killed, then rerun with another fit: the work files have the right size but
    // the wrong pixels, so they are dropped, not reused.
    let out3 = dir.join("out3");
    std::fs::create_dir_all(out3.join("shard-00000.bin")).unwrap();
    assert!(preprocess(&options(&root, &out3), |_| {}).is_err());
    std::fs::remove_dir(out3.join("shard-00000.bin")).unwrap();
    let (cropped, _) = run(&ClevrerOptions { fit: Fit::Crop, ..options(&root, &out3) });
    assert_eq!((cropped.decoded, cropped.reused), (3, 0));
    let ds = ShardDataset::open(&out3).unwrap();
    assert!(ds.clip(0).unwrap()[..S * 3].iter().any(|&b| b > 100), "a cropped frame has no black band");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flat_folder_with_centre_crop() {
    let dir = temp_dir("flat");
    let (root, out) = (dir.join("videos"), dir.join("out"));
    video(&root.join("video_00003.mp4"), spec(FRAMES));
    write_json(&root.join("annotation_00003.json"), &fixture::annotation(3, FRAMES, 2, &[((0, 1), 7)]));
    let faststart = VideoSpec { faststart: true, ..spec(FRAMES) };
    video(&root.join("my clip.mp4"), faststart);
    std::fs::write(root.join("notes.txt"), "not a video").unwrap();
    let opts = ClevrerOptions { fit: Fit::Crop, ..options(&root, &out) };
    let (summary, _) = run(&opts);
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    assert_eq!(summary.manifest.source["layout"], "flat");
    let ds = ShardDataset::open(&out).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.label(0).unwrap()["source"], "my clip.mp4");
    let l = ds.label(1).unwrap();
    assert_eq!(
        (l["source"].as_str(), l["annotation"].as_str()),
        (Some("video_00003.mp4"), Some("annotation_00003.json"))
    );
    assert_eq!((l["collision_frames"].clone(), l["fit"].as_str()), (serde_json::json!([7]), Some("crop")));
    for c in 0..2 {
        let clip = ds.clip(c).unwrap();
        for (f, &source) in SAMPLED.iter().enumerate() {
            // The centre 64×64 of the 96×64 frame, halved: bars 1 to 4, 8 columns each, no padding.
            for (k, &bar) in BARS.iter().enumerate().take(5).skip(1) {
                let x = 8 * (k - 1) + 4;
                assert_close(pixel(clip, f, x, 6), bar, 8, &format!("clip {c} frame {f} bar {k}"));
            }
            let grey = frame_grey(source);
            for x in [0, 15, 31] {
                assert_close(pixel(clip, f, x, 26), [grey; 3], 3, &format!("clip {c} frame {f} grey"));
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn h264_videos_decode_like_mpeg4_ones() {
    if !Codec::H264.available() {
        eprintln!("note: this FFmpeg has no H.264 encoder; the H.264 decode check did not run");
        return;
    }
    let dir = temp_dir("h264");
    let (root, out) = (dir.join("videos"), dir.join("out"));
    video(&root.join("video_00000.mp4"), VideoSpec { codec: Codec::H264, ..spec(FRAMES) });
    let (summary, _) = run(&options(&root, &out));
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    let ds = ShardDataset::open(&out).unwrap();
    assert_eq!(ds.label(0).unwrap()["video"]["codec"], "h264");
    check_padded_clip(ds.clip(0).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_edit_list_shorter_than_the_samples_is_not_truncation() {
    // Muxed without packet durations: 30 samples, but the edit list plays 29 frames.
    let dir = temp_dir("editlist");
    let (root, out) = (dir.join("videos"), dir.join("out"));
    video(&root.join("video_00000.mp4"), VideoSpec { packet_durations: false, ..spec(FRAMES) });
    let (summary, _) = run(&options(&root, &out));
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    let ds = ShardDataset::open(&out).unwrap();
    let l = ds.label(0).unwrap();
    assert_eq!(l["video"]["frames"], 29);
    let sampled = [0, 5, 11, 16, 22, 28];
    assert_eq!(l["frame_indices"], serde_json::json!(sampled));
    for (f, &source) in sampled.iter().enumerate() {
        assert_close(pixel(ds.clip(0).unwrap(), f, 16, 22), [frame_grey(source); 3], 3, "frame index grey");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_empty_or_useless_roots_are_clear_errors() {
    let dir = temp_dir("roots");
    let out = dir.join("out");
    let err = |root: &Path| preprocess(&options(root, &out), |_| {}).unwrap_err().to_string();
    let missing = err(&dir.join("nowhere"));
    assert!(missing.contains("is not a directory"), "{missing}");
    for e in [&missing, &err(&dir)] {
        assert!(e.contains("ROOT/video_train/video_00000-01000/video_00000.mp4") && e.contains("flat:"), "{e}");
    }
    assert!(err(&dir).contains("no videos found"));
    // Only bad videos: an error that lists why.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("a.mp4"), b"").unwrap();
    video(&bad.join("b.mp4"), spec(3));
    let e = err(&bad);
    assert!(e.contains("none of the 2 videos could be used") && e.contains("zero-byte") && e.contains("fewer"), "{e}");
    assert!(!out.join("manifest.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_preprocesses_warns_and_summarises() {
    let dir = temp_dir("cli");
    let (root, out) = (dir.join("videos"), dir.join("out"));
    for n in 0..3 {
        video(&root.join(format!("video_{n:05}.mp4")), spec(FRAMES));
    }
    std::fs::write(root.join("video_00001.mp4"), b"").unwrap();
    let cli = |extra: &[&str]| {
        let mut args = vec!["clevrer", "--clevrer_root", root.to_str().unwrap(), "--output_dir", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_simclr-data")).args(args).output().unwrap()
    };
    let o = cli(&["--frames", "6", "--size", "32", "--max_videos", "2"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("warning: skipping video_00001.mp4: zero-byte file"), "{stderr}");
    assert!(stdout.contains("found    2 videos (flat layout"), "{stdout}");
    assert!(stdout.contains("decoded  1 videos (30 frames)") && stdout.contains("skipped  1 videos"), "{stdout}");
    assert!(stdout.contains("wrote 1 clips (1 shards"), "{stdout}");
    let ds = ShardDataset::open(&out).unwrap();
    assert_eq!(ds.len(), 1);
    let o = cli(&["--frames", "6", "--size", "32", "--max_videos", "2"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("decoded  0 videos (0 frames)"));
    let o = cli(&["--split", "bogus"]);
    assert!(!o.status.success());
    let o = cli(&["--frames", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--frames"));
    std::fs::remove_dir_all(&dir).unwrap();
}
