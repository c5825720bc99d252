//! Clip-consistent augmentation and the loader.

use simclr::data::augment::{apply_colour, augment_clip, hsv_to_rgb, rgb_to_hsv, AugmentConfig, ColourOp, ViewParams};
use simclr::data::loader::{make_batch, DistributedSampler, Loader, LoaderConfig};
use simclr::data::shards::ShardDataset;
use simclr::data::synthetic::{write_bouncing, BouncingConfig, BouncingDataset};
use simclr::Rng;
use std::path::PathBuf;
use std::sync::Arc;

fn dataset(name: &str, clips: usize, size: usize, frames: usize) -> (PathBuf, Arc<ShardDataset>) {
    let dir = std::env::temp_dir().join(format!("simclr-aug-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let clip = BouncingConfig { frames, size, ..Default::default() };
    write_bouncing(&dir, &BouncingDataset { clips, seed: 1, clips_per_shard: 8, clip }, |_| {}).unwrap();
    let ds = Arc::new(ShardDataset::open(&dir).unwrap());
    (dir, ds)
}

fn loader_config(batch: usize, rank: usize, world: usize, out: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: batch,
        seed: 9,
        rank,
        world,
        workers: 2,
        prefetch: 2,
        augment: AugmentConfig { out_size: out, ..Default::default() },
        frames: None,
    }
}

#[test]
fn every_frame_of_a_clip_gets_the_same_transform() {
    // A clip whose 5 frames are identical must come out with 5 identical frames,
    // whatever transform is drawn (many draws, so jitter/flip/grayscale all occur).
    let (t, h, w, s) = (5, 24, 20, 12);
    let mut rng = Rng::new(1);
    let frame: Vec<u8> = (0..h * w * 3).map(|_| rng.below(256) as u8).collect();
    let clip: Vec<u8> = frame.iter().cycle().take(t * h * w * 3).copied().collect();
    let cfg = AugmentConfig { out_size: s, ..Default::default() };
    for draw in 0..50 {
        let params = ViewParams::sample(&cfg, h, w, &mut Rng::new(draw));
        let mut out = vec![0f32; t * 3 * s * s];
        augment_clip(&clip, t, h, w, &params, &cfg, &mut out).unwrap();
        let per = 3 * s * s;
        for f in 1..t {
            assert_eq!(out[..per], out[f * per..(f + 1) * per], "draw {draw}: frame {f} differs");
        }
    }
}

#[test]
fn hue_and_saturation_follow_the_reference_formulas() {
    // Pure red rotated by a third of the hue circle is pure green, by two thirds pure blue.
    let mut px = vec![[1.0f32, 0.0, 0.0]];
    apply_colour(ColourOp::Hue(1.0 / 3.0), &mut px);
    assert!(px[0].iter().zip([0.0, 1.0, 0.0]).all(|(a, b)| (a - b).abs() < 1e-5), "{:?}", px[0]);
    apply_colour(ColourOp::Hue(1.0 / 3.0), &mut px);
    assert!(px[0].iter().zip([0.0, 0.0, 1.0]).all(|(a, b)| (a - b).abs() < 1e-5), "{:?}", px[0]);
    // HSV of a known colour: (0.2, 0.4, 0.8) has H = 220°/360°, S = 0.75, V = 0.8.
    let hsv = rgb_to_hsv([0.2, 0.4, 0.8]);
    assert!(
        (hsv[0] - 220.0 / 360.0).abs() < 1e-6 && (hsv[1] - 0.75).abs() < 1e-6 && (hsv[2] - 0.8).abs() < 1e-6,
        "{hsv:?}"
    );
    let back = hsv_to_rgb(hsv);
    assert!(back.iter().zip([0.2, 0.4, 0.8]).all(|(a, b)| (a - b).abs() < 1e-6));
    // Saturation 0 gives the grey 0.299 R + 0.587 G + 0.114 B; 0.5 is halfway to it.
    let mut px = [[0.2f32, 0.4, 0.8], [0.2, 0.4, 0.8]];
    let grey = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.8;
    apply_colour(ColourOp::Saturation(0.0), &mut px[..1]);
    apply_colour(ColourOp::Saturation(0.5), &mut px[1..]);
    assert!(px[0].iter().all(|v| (v - grey).abs() < 1e-6));
    assert!((px[1][2] - (0.5 * 0.8 + 0.5 * grey)).abs() < 1e-6);
    // Brightness scales and clamps; contrast 0 collapses to the mean grey.
    let mut px = vec![[0.5f32, 0.9, 0.1]];
    apply_colour(ColourOp::Brightness(1.5), &mut px);
    assert_eq!(px[0], [0.75, 1.0, 0.15]);
    let mut px = vec![[1.0f32, 1.0, 1.0], [0.0, 0.0, 0.0]];
    apply_colour(ColourOp::Contrast(0.0), &mut px);
    assert!(px.iter().all(|p| p.iter().all(|v| (v - 0.5).abs() < 1e-6)));
}

#[test]
fn crop_parameters_respect_scale_and_ratio() {
    let cfg = AugmentConfig::default();
    let mut rng = Rng::new(4);
    for _ in 0..500 {
        let p = ViewParams::sample(&cfg, 100, 80, &mut rng);
        let (top, left, h, w) = p.crop;
        assert!(top + h <= 100 && left + w <= 80 && h > 0 && w > 0);
        let area = (h * w) as f64 / 8000.0;
        assert!(area > 0.07 && area <= 1.0, "area {area}");
    }
}

#[test]
fn views_differ_same_seed_same_batch_and_shapes() {
    let (dir, ds) = dataset("batch", 16, 40, 4);
    let sampler = DistributedSampler::new(16, 8, 0, 1, 9).unwrap();
    let aug = AugmentConfig { out_size: 32, ..Default::default() };
    let a = make_batch(&ds, &sampler, &aug, 0, 1).unwrap();
    assert_eq!(a.view1.shape(), &[8, 4, 3, 32, 32]);
    assert_ne!(a.view1.to_f64_vec(), a.view2.to_f64_vec(), "the two views must differ");
    let b = make_batch(&ds, &sampler, &aug, 0, 1).unwrap();
    assert_eq!(a.view1.to_f64_vec(), b.view1.to_f64_vec());
    assert_eq!(a.clips, b.clips);
    let other_epoch = make_batch(&ds, &sampler, &aug, 1, 1).unwrap();
    assert_ne!(a.clips, other_epoch.clips, "each epoch reshuffles");
    // Values are normalised: roughly zero-centred, not [0, 255].
    let v = a.view1.to_f64_vec();
    assert!(v.iter().all(|x| x.abs() < 3.0) && v.iter().any(|x| *x < 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn distributed_sampler_splits_without_overlap() {
    for world in [1, 2, 4] {
        let samplers: Vec<DistributedSampler> =
            (0..world).map(|r| DistributedSampler::new(50, 8, r, world, 3).unwrap()).collect();
        let steps = samplers[0].steps_per_epoch();
        assert_eq!(steps, 6); // 48 of 50 clips used, the remainder dropped
        let mut seen = std::collections::HashSet::new();
        for step in 0..steps {
            for s in &samplers {
                let b = s.batch(2, step);
                assert_eq!(b.len(), 8 / world);
                for c in b {
                    assert!(seen.insert(c), "clip {c} given twice");
                }
            }
        }
        assert_eq!(seen.len(), 48);
    }
    assert!(DistributedSampler::new(50, 6, 0, 4, 0).is_err(), "batch must divide among ranks");
    assert!(DistributedSampler::new(50, 8, 4, 4, 0).is_err());
    assert!(DistributedSampler::new(5, 8, 0, 1, 0).is_err());
}

#[test]
fn loader_yields_the_pure_batches_in_order_and_resumes() {
    let (dir, ds) = dataset("loader", 24, 36, 3);
    let loader = Loader::new(ds.clone(), loader_config(6, 0, 1, 32)).unwrap();
    let batches: Vec<_> = loader.epoch(0, 0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 4);
    for (i, b) in batches.iter().enumerate() {
        assert_eq!(b.step, i);
        let want =
            make_batch(&ds, loader.sampler(), &AugmentConfig { out_size: 32, ..Default::default() }, 0, i).unwrap();
        assert_eq!(b.view2.to_f64_vec(), want.view2.to_f64_vec());
    }
    // Resuming at step 2 gives exactly the batches an uninterrupted epoch gave.
    let resumed: Vec<_> = loader.epoch(0, 2).map(|b| b.unwrap()).collect();
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[0].view1.to_f64_vec(), batches[2].view1.to_f64_vec());
    // Dropping an iterator early stops its workers (no hang).
    let mut it = loader.epoch(1, 0);
    assert!(it.next().unwrap().is_ok());
    drop(it);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn frames_too_small_for_the_crop_are_a_clear_error() {
    let (dir, ds) = dataset("small", 8, 16, 2);
    let err = Loader::new(ds, loader_config(4, 0, 1, 32)).err().unwrap().to_string();
    assert!(err.contains("16x16") && err.contains("--size") && err.contains(dir.to_str().unwrap()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Plain-values config: no colour changes, identity normalisation.
fn plain(out_size: usize) -> AugmentConfig {
    AugmentConfig { out_size, jitter_p: 0.0, grayscale_p: 0.0, mean: [0.0; 3], std: [1.0; 3], ..Default::default() }
}

#[test]
fn shrinking_is_antialiased_so_thin_lines_do_not_vanish() {
    // A 1-pixel white column at x = 36 of a black 64×64 frame, shrunk 4× to 16×16.
    // Point-sampled bilinear reads only columns 4i+1 and 4i+2 and would lose it;
    // the antialiased filter keeps its mass: each output row sums to 1/4.
    let (h, w, s) = (64, 64, 16);
    let mut clip = vec![0u8; h * w * 3];
    for y in 0..h {
        clip[(y * w + 36) * 3..(y * w + 36) * 3 + 3].copy_from_slice(&[255, 255, 255]);
    }
    let params = ViewParams { crop: (0, 0, h, w), flip: false, colour: vec![], grayscale: false };
    let mut out = vec![0f32; 3 * s * s];
    augment_clip(&clip, 1, h, w, &params, &plain(s), &mut out).unwrap();
    for y in 2..s - 2 {
        let row: f32 = out[y * s..(y + 1) * s].iter().sum();
        assert!((row - 0.25).abs() < 1e-4, "row {y} sums to {row}");
    }
    // Enlarging is plain bilinear (torch's align_corners = false): the 2×2 crop
    // (0, 1 / 1, 0) of a 4×4 frame, at 4×4, has 0 in its corner, 0.375 at (1, 1)
    // (= ¾·¼ + ¼·¾) and 0.625 at (1, 2) (= ¾·¾ + ¼·¼).
    let mut clip = vec![0u8; 4 * 4 * 3];
    for (y, x) in [(0, 1), (1, 0)] {
        clip[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
    }
    let params = ViewParams { crop: (0, 0, 2, 2), flip: false, colour: vec![], grayscale: false };
    let mut out = vec![0f32; 3 * 16];
    augment_clip(&clip, 1, 4, 4, &params, &plain(4), &mut out).unwrap();
    assert_eq!(out[0], 0.0);
    assert!((out[4 + 1] - 0.375).abs() < 1e-6 && (out[4 + 2] - 0.625).abs() < 1e-6, "{:?}", &out[..16]);
}

#[test]
fn flip_mirrors_columns() {
    let (h, w) = (8, 8);
    let clip: Vec<u8> = (0..h * w * 3).map(|i| ((i / 3) % w * 30) as u8).collect(); // brightness grows with x
    let mut a = vec![0f32; 3 * h * w];
    let mut b = vec![0f32; 3 * h * w];
    let mut params = ViewParams { crop: (0, 0, h, w), flip: false, colour: vec![], grayscale: false };
    augment_clip(&clip, 1, h, w, &params, &plain(w), &mut a).unwrap();
    params.flip = true;
    augment_clip(&clip, 1, h, w, &params, &plain(w), &mut b).unwrap();
    for x in 0..w {
        assert_eq!(a[x], b[w - 1 - x]);
    }
    assert!(a[0] < a[w - 1]);
}

#[test]
fn bad_augment_settings_are_clear_errors() {
    let cases: Vec<(&str, AugmentConfig)> = vec![
        ("out_size", AugmentConfig { out_size: 0, ..Default::default() }),
        ("crop scale", AugmentConfig { crop_scale: (0.5, 0.1), ..Default::default() }),
        ("crop ratio", AugmentConfig { crop_ratio: (0.0, 1.0), ..Default::default() }),
        ("flip_p", AugmentConfig { flip_p: 1.5, ..Default::default() }),
        ("contrast", AugmentConfig { contrast: -0.1, ..Default::default() }),
        ("hue", AugmentConfig { hue: 0.7, ..Default::default() }),
        ("std", AugmentConfig { std: [0.2, 0.0, 0.2], ..Default::default() }),
    ];
    for (want, cfg) in cases {
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains(want), "want `{want}`: {msg}");
    }
    AugmentConfig::default().validate().unwrap();
    // A crop outside the frame (hand-built parameters) is an error, not an out-of-bounds panic.
    let params = ViewParams { crop: (10, 0, 30, 30), flip: false, colour: vec![], grayscale: false };
    let mut out = vec![0f32; 3 * 16 * 16];
    let msg = augment_clip(&vec![0u8; 32 * 32 * 3], 1, 32, 32, &params, &plain(16), &mut out).unwrap_err().to_string();
    assert!(msg.contains("does not fit"), "{msg}");
}

#[test]
fn epoch_permutation_is_the_documented_stream() {
    // Epoch e shuffles with Rng::fork(seed, e): anyone can reproduce the order.
    let sampler = DistributedSampler::new(30, 6, 0, 1, 42).unwrap();
    let mut want: Vec<usize> = (0..30).collect();
    Rng::fork(42, 3).shuffle(&mut want);
    assert_eq!(sampler.permutation(3), want);
    assert_eq!(sampler.batch(3, 1), want[6..12].to_vec());
}

/// Clips whose frame f is solid grey level 20·f, so a view's values say which frames it shows.
fn numbered_frames(name: &str, clips: usize, frames: usize, size: usize) -> (PathBuf, ShardDataset) {
    use simclr::data::shards::{write_dataset, ShardContent, ShardSpec};
    let dir = std::env::temp_dir().join(format!("simclr-aug-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = ShardSpec { clips, frames, height: size, width: size, clips_per_shard: clips };
    let clip: Vec<u8> = (0..frames).flat_map(|f| std::iter::repeat_n(20 * f as u8, size * size * 3)).collect();
    write_dataset(
        &dir,
        spec,
        serde_json::json!({"generator": "numbered"}),
        |_, range| {
            Ok(ShardContent {
                bytes: clip.repeat(range.len()),
                labels: range.map(|i| serde_json::json!({"clip": i})).collect(),
            })
        },
        |_| {},
    )
    .unwrap();
    let ds = ShardDataset::open(&dir).unwrap();
    (dir, ds)
}

#[test]
fn temporal_jitter_shifts_each_views_frames_together_within_the_clip() {
    let (dir, ds) = numbered_frames("jitter", 16, 8, 8);
    let ds = Arc::new(ds);
    // 3 of 8 frames: 0, 2, 5. Asked for up to 5, the shift stops at the 2 frames left after 5.
    let config = |jitter: usize| LoaderConfig {
        frames: Some(3),
        augment: AugmentConfig { temporal_jitter: jitter, ..plain(8) },
        ..loader_config(16, 0, 1, 8)
    };
    // Each view's frames, read back from their grey levels: base frames + one shift per view.
    let shifts_of = |view: &simclr::Tensor| -> Vec<usize> {
        let v = view.to_f64_vec();
        let per_frame = 3 * 8 * 8;
        (0..16)
            .map(|clip| {
                let frame = |k: usize| (v[(clip * 3 + k) * per_frame] * 255.0 / 20.0).round() as usize;
                let shift = frame(0);
                assert_eq!([frame(0), frame(1), frame(2)], [shift, 2 + shift, 5 + shift], "clip {clip}");
                shift
            })
            .collect()
    };
    let batch = |jitter: usize| Loader::new(ds.clone(), config(jitter)).unwrap().epoch(0, 0).next().unwrap().unwrap();
    let jittered = batch(5);
    let (a, b) = (shifts_of(&jittered.view1), shifts_of(&jittered.view2));
    assert!(a.iter().chain(&b).all(|&s| s <= 2), "{a:?} {b:?}");
    assert!(a.iter().zip(&b).any(|(x, y)| x != y), "the views should differ in time for some clip: {a:?} {b:?}");
    for shift in 0..=2 {
        assert!(a.iter().chain(&b).any(|&s| s == shift), "shift {shift} never drawn: {a:?} {b:?}");
    }
    // The same batch again: the shifts are a pure function of (seed, epoch, clip, view).
    let again = batch(5);
    assert_eq!(again.view1.to_f64_vec(), jittered.view1.to_f64_vec());
    // Without jitter both views show frames 0, 2, 5.
    let plain_batch = batch(0);
    assert!(shifts_of(&plain_batch.view1).iter().chain(&shifts_of(&plain_batch.view2)).all(|&s| s == 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reversed_twins_follow_the_forward_clips_played_backwards() {
    // Frames 0, 2, 5 of 8 (grey levels 0, 40, 100): forwards in the first 16 instances,
    // backwards in the 16 twins after them.
    let (dir, ds) = numbered_frames("twins", 16, 8, 8);
    let ds = Arc::new(ds);
    let config = |twins: bool| LoaderConfig {
        frames: Some(3),
        augment: AugmentConfig { reversed_twins: twins, ..plain(8) },
        ..loader_config(16, 0, 1, 8)
    };
    let batch = |twins: bool| Loader::new(ds.clone(), config(twins)).unwrap().epoch(0, 0).next().unwrap().unwrap();
    let twinned = batch(true);
    assert_eq!(twinned.view1.shape(), &[32, 3, 3, 8, 8]);
    assert_eq!(twinned.view2.shape(), &[32, 3, 3, 8, 8]);
    assert_eq!(twinned.clips.len(), 16, "the batch still samples 16 clips of the dataset");
    let per_frame = 3 * 8 * 8;
    for view in [&twinned.view1, &twinned.view2] {
        let v = view.to_f64_vec();
        let frames = |instance: usize| -> Vec<usize> {
            (0..3).map(|k| (v[(instance * 3 + k) * per_frame] * 255.0 / 20.0).round() as usize).collect()
        };
        for clip in 0..16 {
            assert_eq!(frames(clip), [0, 2, 5], "forward instance {clip}");
            assert_eq!(frames(16 + clip), [5, 2, 0], "twin of instance {clip}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // On real clips: the forward half is the batch without twins, bit for bit, and each twin
    // is its clip reversed under augmentations of its own.
    let (dir, ds) = dataset("twins-bouncing", 8, 24, 4);
    let config = |twins: bool| LoaderConfig {
        augment: AugmentConfig { reversed_twins: twins, out_size: 16, ..Default::default() },
        ..loader_config(8, 0, 1, 16)
    };
    let batch = |twins: bool| Loader::new(ds.clone(), config(twins)).unwrap().epoch(1, 0).next().unwrap().unwrap();
    let (plain_batch, twinned) = (batch(false), batch(true));
    let per_clip = 4 * 3 * 16 * 16;
    for (single, doubled) in [(&plain_batch.view1, &twinned.view1), (&plain_batch.view2, &twinned.view2)] {
        let (single, doubled) = (single.to_f64_vec(), doubled.to_f64_vec());
        assert_eq!(doubled.len(), 2 * single.len());
        assert_eq!(single, doubled[..single.len()], "twins changed the forward views");
        let reversed_back = |instance: usize| -> Vec<f64> {
            let clip = &doubled[instance * per_clip..(instance + 1) * per_clip];
            clip.chunks(per_clip / 4).rev().flatten().copied().collect()
        };
        let same_draws = (0..8).filter(|&b| reversed_back(8 + b) == single[b * per_clip..(b + 1) * per_clip]).count();
        assert_eq!(same_draws, 0, "a twin reused its forward clip's augmentation");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
