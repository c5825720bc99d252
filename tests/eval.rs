//! simclr-eval: probe math with known answers, probe targets from labels,
//! feature extraction, `.npy` export, and the binary end to end.

mod common;

use common::temp_dir;
use serde_json::{json, Value};
use simclr::checkpoint::{save_model, DatasetIdentity, ModelSpec};
use simclr::data::shards::{write_dataset, ShardContent, ShardDataset, ShardSpec};
use simclr::data::synthetic::{write_bouncing, BouncingConfig, BouncingDataset};
use simclr::eval::default_set::default_eval_config;
use simclr::eval::features::{check_compatible, clip_batch, encode_dataset, pixel_features};
use simclr::eval::npy::{ids_path, read_npy_header, write_npy_f32, write_npy_i64};
use simclr::eval::probes::{
    accuracy, balanced_accuracy, cholesky_solve, classification_probe, fit_logistic, majority_class, r2_scores,
    regression_probe, roc_auc, row_space_coordinates, stratified_split, Matrix, RidgeSolver, Standardizer,
};
use simclr::eval::report::Metric;
use simclr::eval::targets::{probe_targets, targets_from_labels, Target, Window};
use simclr::Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `n` rows of `d` standard-normal features.
fn gaussian(n: usize, d: usize, rng: &mut Rng) -> Matrix {
    Matrix::new(n, d, (0..n * d).map(|_| rng.normal()).collect())
}

// ---------------------------------------------------------------- probe math

/// Three well-separated Gaussian blobs: labels, features.
fn blobs(n: usize, d: usize, rng: &mut Rng) -> (Matrix, Vec<usize>) {
    let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let mut x = gaussian(n, d, rng);
    for (i, &c) in labels.iter().enumerate() {
        x.data[i * d + c] += 6.0;
    }
    (x, labels)
}

fn split_rows(x: &Matrix, y: &[usize], test_fraction: f64, seed: u64) -> (Matrix, Vec<usize>, Matrix, Vec<usize>) {
    let split = stratified_split(y, test_fraction, &mut Rng::new(seed));
    let pick = |idx: &[usize]| idx.iter().map(|&i| y[i]).collect::<Vec<_>>();
    (x.select_rows(&split.train), pick(&split.train), x.select_rows(&split.test), pick(&split.test))
}

#[test]
fn logistic_probe_separates_separable_classes() {
    let (x, y) = blobs(150, 5, &mut Rng::new(1));
    let (tx, ty, vx, vy) = split_rows(&x, &y, 0.3, 2);
    let s = classification_probe(&tx, &ty, &vx, &vy, 3, 7);
    assert!(s.converged);
    assert_eq!(s.train_accuracy, 1.0, "{s:?}");
    assert!(s.test_accuracy >= 0.97, "{s:?}");
}

#[test]
fn logistic_probe_on_random_labels_is_near_chance() {
    let mut rng = Rng::new(3);
    let x = gaussian(600, 10, &mut rng);
    let y: Vec<usize> = (0..600).map(|_| rng.below(3)).collect();
    let (tx, ty, vx, vy) = split_rows(&x, &y, 0.3, 4);
    let s = classification_probe(&tx, &ty, &vx, &vy, 3, 7);
    // 180 test clips: chance is 1/3 with a standard deviation of about 0.035.
    assert!((0.22..=0.45).contains(&s.test_accuracy), "{s:?}");
}

#[test]
fn logistic_fit_is_deterministic_and_minimises_the_loss() {
    let (x, y) = blobs(90, 4, &mut Rng::new(5));
    let z = Standardizer::fit(&x).apply(&x);
    let a = fit_logistic(&z, &y, 3, 1e-2);
    let b = fit_logistic(&z, &y, 3, 1e-2);
    assert!(a.converged && a.iterations > 0);
    assert_eq!(a.weights, b.weights);
    assert_eq!(a.bias, b.bias);
    // At the minimum, nudging any weight raises the regularised loss.
    let objective = |m: &simclr::eval::probes::LogisticModel| {
        m.log_loss(&z, &y) + 0.5 * 1e-2 * m.weights.data.iter().map(|w| w * w).sum::<f64>()
    };
    let best = objective(&a);
    for i in [0, 5, 11] {
        for delta in [-1e-3, 1e-3] {
            let mut nudged = a.clone();
            nudged.weights.data[i] += delta;
            assert!(objective(&nudged) > best, "weight {i} {delta}");
        }
    }
    assert_eq!(accuracy(&a.predict(&z), &y), 1.0);
}

#[test]
fn ridge_probe_recovers_a_linear_target_and_not_noise() {
    let mut rng = Rng::new(6);
    let (n, d) = (400, 8);
    let x = gaussian(n, d, &mut rng);
    let w: Vec<f64> = (0..d).map(|j| j as f64 - 3.5).collect();
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let linear: f64 = x.row(i).iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + 10.0;
            vec![linear + 0.01 * rng.normal(), rng.normal()]
        })
        .collect();
    let y = Matrix::from_rows(&rows);
    let split = stratified_split(&vec![0; n], 0.3, &mut Rng::new(1));
    let s = regression_probe(
        &x.select_rows(&split.train),
        &y.select_rows(&split.train),
        &x.select_rows(&split.test),
        &y.select_rows(&split.test),
        9,
    );
    assert!(s.test_r2[0] > 0.999, "{s:?}");
    assert!((-0.1..0.05).contains(&s.test_r2[1]), "{s:?}");
    // Noise gets the strongest penalty, the clean target a weak one.
    assert!(s.lambdas[1] > s.lambdas[0], "{s:?}");
}

#[test]
fn ridge_dual_form_matches_the_primal_solution() {
    // More features than samples: the solver takes the n × n (dual) system.
    let mut rng = Rng::new(8);
    let (n, d, lambda) = (12, 30, 0.1);
    let x = gaussian(n, d, &mut rng);
    let y = gaussian(n, 2, &mut rng);
    let model = RidgeSolver::new(&x, &y).fit(lambda);
    // Primal: centre, then (XᵀX + nλI) W = XᵀY.
    let centre = |m: &Matrix| {
        let mean = Standardizer::fit(m).mean;
        let mut c = m.clone();
        c.data.chunks_exact_mut(m.cols).for_each(|r| r.iter_mut().zip(&mean).for_each(|(v, mu)| *v -= mu));
        c
    };
    let (xc, yc) = (centre(&x), centre(&y));
    let mut a = xc.transpose().matmul(&xc);
    (0..d).for_each(|i| a.data[i * d + i] += n as f64 * lambda);
    let w = cholesky_solve(&a, &xc.transpose().matmul(&yc)).unwrap();
    for (got, want) in model.weights.data.iter().zip(&w.data) {
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    }
    // The intercept makes predictions of the mean row equal the mean target.
    let mean_x = Matrix::new(1, d, Standardizer::fit(&x).mean);
    let p = model.predict(&mean_x);
    let mean_y = Standardizer::fit(&y).mean;
    assert!((p.data[0] - mean_y[0]).abs() < 1e-9 && (p.data[1] - mean_y[1]).abs() < 1e-9);
}

#[test]
fn row_space_coordinates_change_nothing_but_the_cost() {
    // 25 train rows of 60 features: the same logistic model, in 25 coordinates.
    let mut rng = Rng::new(12);
    let (x, y) = blobs(40, 60, &mut rng);
    let z = Standardizer::fit(&x).apply(&x);
    let (train, test) = (z.select_rows(&(0..25).collect::<Vec<_>>()), z.select_rows(&(25..40).collect::<Vec<_>>()));
    let (coords, others) = row_space_coordinates(&train, &[&test]).unwrap();
    assert_eq!((coords.rows, coords.cols, others[0].rows, others[0].cols), (25, 25, 15, 25));
    // Inner products between rows are kept: (Qᵀa)·(Qᵀb) = a·b for a, b in the row space.
    let (gram, mapped_gram) = (train.matmul(&train.transpose()), coords.matmul(&coords.transpose()));
    gram.data.iter().zip(&mapped_gram.data).for_each(|(a, b)| assert!((a - b).abs() < 1e-6 * (1.0 + a.abs())));
    let cross = test.matmul(&train.transpose());
    let mapped_cross = others[0].matmul(&coords.transpose());
    cross.data.iter().zip(&mapped_cross.data).for_each(|(a, b)| assert!((a - b).abs() < 1e-6 * (1.0 + a.abs())));
    // The fitted models score every clip alike (up to the fits' convergence tolerance).
    let labels = &y[..25];
    let (full, reduced) = (fit_logistic(&train, labels, 3, 1e-2), fit_logistic(&coords, labels, 3, 1e-2));
    let (a, b) = (full.scores(&test), reduced.scores(&others[0]));
    a.data.iter().zip(&b.data).for_each(|(p, q)| assert!((p - q).abs() < 1e-3 * (1.0 + p.abs()), "{p} vs {q}"));
    assert!(row_space_coordinates(&test.transpose(), &[]).is_none(), "fewer features than rows: nothing to do");
}

#[test]
fn cholesky_solves_a_known_system() {
    // [[4, 2], [2, 3]] x = [2, 5] → x = [-0.5, 2].
    let a = Matrix::new(2, 2, vec![4.0, 2.0, 2.0, 3.0]);
    let x = cholesky_solve(&a, &Matrix::new(2, 1, vec![2.0, 5.0])).unwrap();
    assert!((x.data[0] + 0.5).abs() < 1e-12 && (x.data[1] - 2.0).abs() < 1e-12);
    assert!(cholesky_solve(&Matrix::new(2, 2, vec![1.0, 2.0, 2.0, 1.0]), &Matrix::zeros(2, 1)).is_none());
}

#[test]
fn r2_and_majority_class_known_values() {
    let truth = Matrix::new(4, 2, vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 4.0, 5.0]);
    let exact = r2_scores(&truth, &truth);
    assert_eq!(exact[0], 1.0);
    assert!(exact[1].is_nan(), "a constant target has no R²");
    let mean = Matrix::new(4, 2, vec![2.5, 5.0, 2.5, 5.0, 2.5, 5.0, 2.5, 5.0]);
    assert!(r2_scores(&mean, &truth)[0].abs() < 1e-12);
    assert_eq!(majority_class(&[2, 0, 2, 1, 0, 2]), 2);
    assert_eq!(majority_class(&[1, 0]), 0, "ties go to the smallest class");
}

#[test]
fn standardisation_uses_train_statistics_only() {
    let train = Matrix::new(3, 2, vec![0.0, 10.0, 2.0, 10.0, 4.0, 10.0]);
    let s = Standardizer::fit(&train);
    assert_eq!(s.mean, vec![2.0, 10.0]);
    assert!((s.scale[0] - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
    assert_eq!(s.scale[1], 1.0, "a constant feature keeps scale 1");
    let test = Matrix::new(1, 2, vec![102.0, 11.0]);
    assert_eq!(s.apply(&test).data, vec![100.0 / s.scale[0], 1.0]);

    // A probe whose test split is shifted far away: standardised with its own
    // statistics it would be perfectly separable; with the train statistics
    // every test clip lands on the same side.
    let (x, y) = blobs(300, 3, &mut Rng::new(11));
    let (tx, ty, mut vx, vy) = split_rows(&x, &y, 0.3, 2);
    vx.data.iter_mut().for_each(|v| *v += 1000.0);
    let s = classification_probe(&tx, &ty, &vx, &vy, 3, 7);
    assert_eq!(s.train_accuracy, 1.0);
    assert!(s.test_accuracy < 0.5, "{s:?}");
}

#[test]
fn stratified_split_is_seeded_disjoint_and_proportional() {
    let strata: Vec<usize> = (0..100)
        .map(|i| {
            if i < 70 {
                0
            } else if i < 97 {
                1
            } else {
                2
            }
        })
        .collect();
    let a = stratified_split(&strata, 0.3, &mut Rng::new(1));
    assert_eq!(a, stratified_split(&strata, 0.3, &mut Rng::new(1)));
    assert_ne!(a, stratified_split(&strata, 0.3, &mut Rng::new(2)));
    let mut all: Vec<usize> = a.train.iter().chain(&a.test).copied().collect();
    all.sort();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    let in_test = |s: usize| a.test.iter().filter(|&&i| strata[i] == s).count();
    assert_eq!((in_test(0), in_test(1), in_test(2)), (21, 8, 1));
}

// ---------------------------------------------------------------- targets

fn bouncing_set(dir: &Path, clips: usize, frames: usize, size: usize) -> ShardDataset {
    let clip = BouncingConfig { frames, size, min_balls: 1, max_balls: 3, ..Default::default() };
    write_bouncing(dir, &BouncingDataset { clips, seed: 21, clips_per_shard: 16, clip }, |_| {}).unwrap();
    ShardDataset::open(dir).unwrap()
}

fn classes(t: &Result<Target, String>) -> (Vec<String>, Vec<Option<usize>>) {
    match t {
        Ok(Target::Classes { class_names, labels }) => (class_names.clone(), labels.clone()),
        other => panic!("expected classes, got {other:?}"),
    }
}

fn values(t: &Result<Target, String>) -> Vec<Option<Vec<f64>>> {
    match t {
        Ok(Target::Values { values, .. }) => values.clone(),
        other => panic!("expected values, got {other:?}"),
    }
}

const PROBES: [&str; 9] = [
    "ball count",
    "centroid",
    "speed",
    "velocity",
    "gravity",
    "elastic",
    "collision",
    "wall bounce",
    "future centroid (+0)",
];

#[test]
fn targets_of_a_generated_bouncing_set_agree_with_its_labels() {
    let dir = temp_dir("targets");
    let ds = bouncing_set(&dir, 24, 10, 16);
    let ids: Vec<usize> = (0..24).collect();
    // All 10 frames seen: no future to ask about.
    let window = Window::new(10, 10, None).unwrap();
    assert_eq!((window.seen.len(), window.future), (10, None));
    let targets = probe_targets(&ds, &ids, &window).unwrap();
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, PROBES);
    let metrics: Vec<Metric> = targets.iter().map(|t| t.metric).collect();
    use Metric::{Accuracy, RocAuc, R2};
    assert_eq!(metrics, [Accuracy, R2, R2, R2, RocAuc, RocAuc, RocAuc, RocAuc, R2]);
    let (class_names, counts) = classes(&targets[0].target);
    let centroid = values(&targets[1].target);
    let speed = values(&targets[2].target);
    let velocity = values(&targets[3].target);
    let (_, gravity) = classes(&targets[4].target);
    let (_, elastic) = classes(&targets[5].target);
    let (_, collision) = classes(&targets[6].target);
    let (_, wall) = classes(&targets[7].target);
    assert!(targets[8].target.is_err(), "every frame is seen");
    for i in ids {
        let label = ds.label(i).unwrap();
        let count = label["ball_count"].as_u64().unwrap() as usize;
        assert_eq!(class_names[counts[i].unwrap()], count.to_string());
        // Centroid at the first frame, and at the last (frame 9).
        for (slot, frame) in [(0, 0), (4, 9)] {
            let balls = label["positions"][frame].as_array().unwrap();
            let x = balls.iter().map(|b| b[0].as_f64().unwrap()).sum::<f64>() / count as f64;
            let y = balls.iter().map(|b| b[1].as_f64().unwrap()).sum::<f64>() / count as f64;
            let p = centroid[i].as_ref().unwrap();
            assert!((p[slot] - x).abs() < 1e-12 && (p[slot + 1] - y).abs() < 1e-12);
        }
        // Speed: mean |v| over balls and all 10 frames; velocity: mean v at the middle (frame 5).
        let mut speeds = Vec::new();
        for frame in 0..10 {
            for v in label["velocities"][frame].as_array().unwrap() {
                speeds.push(v[0].as_f64().unwrap().hypot(v[1].as_f64().unwrap()));
            }
        }
        assert!((speed[i].as_ref().unwrap()[0] - speeds.iter().sum::<f64>() / speeds.len() as f64).abs() < 1e-12);
        let vx = label["velocities"][5].as_array().unwrap().iter().map(|v| v[0].as_f64().unwrap()).sum::<f64>();
        assert!((velocity[i].as_ref().unwrap()[0] - vx / count as f64).abs() < 1e-12);
        assert_eq!(gravity[i], Some(usize::from(label["gravity"].as_f64().unwrap() > 0.0)));
        assert_eq!(elastic[i], Some(usize::from(label["restitution"].as_f64().unwrap() == 1.0)));
        // With every frame seen, every event counts.
        let events = label["collisions"].as_array().unwrap();
        let ball_events = events.iter().any(|e| e["kind"] == "ball" && e["frame"].as_u64().unwrap() >= 1);
        assert_eq!(collision[i], Some(usize::from(ball_events)), "clip {i}");
        let wall_events = events.iter().any(|e| e["kind"] == "wall" && e["frame"].as_u64().unwrap() >= 1);
        assert_eq!(wall[i], Some(usize::from(wall_events)), "clip {i}");
        if count == 1 {
            assert_eq!(collision[i], Some(0));
        }
    }
    assert!(class_names.len() >= 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A bouncing-style label with 2 balls over `frames` frames and ball–ball events at `event_frames`.
fn hand_label(frames: usize, event_frames: &[usize]) -> Value {
    let positions: Vec<Value> = (0..frames).map(|f| json!([[0.1 * f as f64, 0.2], [0.3, 0.4]])).collect();
    let velocities: Vec<Value> = (0..frames).map(|_| json!([[3.0, 0.0], [0.0, -4.0]])).collect();
    let mut events: Vec<Value> = event_frames
        .iter()
        .map(|&f| json!({"time": f as f64 * 0.05, "frame": f, "kind": "ball", "a": 0, "b": 1}))
        .collect();
    events.push(json!({"time": 0.01, "frame": 1, "kind": "wall", "ball": 0, "wall": "left"}));
    json!({"ball_count": 2, "gravity": 0.0, "restitution": 0.8, "positions": positions, "velocities": velocities,
           "collisions": events})
}

#[test]
fn targets_follow_the_frames_the_model_sees() {
    // 10 stored frames, 4 seen: frames 0, 2, 5, 7 (middle = 5); the future probe asks about
    // frame 9, the last.
    let late = hand_label(10, &[8]);
    let inside = hand_label(10, &[3]);
    let at_start = hand_label(10, &[0]);
    let none = hand_label(10, &[]);
    let labels = [&late, &inside, &at_start, &none];
    let window = Window::new(10, 4, None).unwrap();
    assert_eq!((window.seen.clone(), window.future), (vec![0, 2, 5, 7], Some(9)));
    let t = targets_from_labels(&labels, 10, &window);
    assert_eq!(t[8].name, "future centroid (+2)");
    let (_, collision) = classes(&t[6].target);
    assert_eq!(collision, vec![Some(0), Some(1), Some(0), Some(0)], "wall contacts never count");
    let (_, wall) = classes(&t[7].target);
    assert_eq!(wall, vec![Some(1); 4], "the wall contact at frame 1 is inside every clip");
    let p = values(&t[1].target)[0].clone().unwrap();
    // Centroid x at frames 0, 5, 7 of balls at (0.1 f, 0.2) and (0.3, 0.4).
    let expect = [0.15, 0.3, 0.4, 0.3, 0.5, 0.3];
    p.iter().zip(expect).for_each(|(a, b)| assert!((a - b).abs() < 1e-12, "{p:?}"));
    assert_eq!(values(&t[2].target)[0].clone().unwrap(), vec![3.5]);
    assert_eq!(values(&t[3].target)[0].clone().unwrap(), vec![1.5, -2.0]);
    assert_eq!(classes(&t[4].target).1, vec![Some(0); 4], "no gravity");
    assert_eq!(classes(&t[5].target).1, vec![Some(0); 4], "restitution 0.8 is inelastic");
    let future = values(&t[8].target)[0].clone().unwrap();
    assert!((future[0] - 0.6).abs() < 1e-12 && (future[1] - 0.3).abs() < 1e-12, "{future:?}");
    // Seeing all 10 frames brings the frame-8 event inside, and leaves no future.
    let all = targets_from_labels(&labels, 10, &Window::new(10, 10, None).unwrap());
    assert_eq!(classes(&all[6].target).1, vec![Some(1), Some(1), Some(0), Some(0)]);
    let e = all[8].target.clone().unwrap_err();
    assert!(e.contains("--future_frames"), "{e}");
    // Further than the unseen tail: the model sees the clip minus its last 4 frames.
    let far = Window::new(10, 4, Some(4)).unwrap();
    assert_eq!((far.seen.clone(), far.future), (vec![0, 1, 3, 4], Some(8)));
    let e = Window::new(10, 4, Some(7)).unwrap_err().to_string();
    assert!(e.contains("--future_frames") && e.contains("3 of the clips' 10 frames"), "{e}");
}

#[test]
fn clevrer_style_and_unknown_labels_give_what_exists_and_na_for_the_rest() {
    let clevrer = |collision_frame: usize, source: Option<Vec<usize>>| {
        let mut v = json!({
            "object_count": 3,
            "locations": [[[1.0, 2.0, 0.2], null, [3.0, 4.0, 0.2]], [[1.0, 2.0, 0.2], [2.0, 0.0, 0.2], null]],
            "velocities": [[[0.5, 0.0, 0.0], null, null], [[0.0, 0.0, 0.0], [0.3, 0.4, 0.0], null]],
            "collisions": [{"objects": [0, 1], "frame": collision_frame, "location": null}],
        });
        if let Some(s) = source {
            v["source_frames"] = json!(s);
        }
        v
    };
    let both = Window::new(2, 2, None).unwrap();
    let without_source = clevrer(40, None);
    let t = targets_from_labels(&[&without_source], 2, &both);
    assert_eq!(t[0].name, "object count");
    assert_eq!(classes(&t[0].target), (vec!["3".to_string()], vec![Some(0)]));
    // Frame 0: objects 0 and 2; frame 1 (middle and last): objects 0 and 1.
    assert_eq!(values(&t[1].target)[0].clone().unwrap(), vec![2.0, 3.0, 1.5, 1.0, 1.5, 1.0]);
    // Speeds 0.5 (frame 0), 0 and 0.5 (frame 1); the mean velocity at frame 1.
    assert!((values(&t[2].target)[0].clone().unwrap()[0] - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(values(&t[3].target)[0].clone().unwrap(), vec![0.15, 0.2]);
    for (k, needle) in [(4, "gravity"), (5, "restitution"), (7, "wall"), (8, "--future_frames")] {
        let e = t[k].target.clone().unwrap_err();
        assert!(e.contains(needle), "{}: {e}", t[k].name);
    }
    assert!(t[6].target.is_err(), "collision frames cannot be placed without source frames");
    // Nested under another key, with source frames: the collision is placed.
    let nested_in = json!({"video": "video_00001.mp4", "annotation": clevrer(40, Some(vec![10, 50]))});
    let nested_out = json!({"video": "video_00002.mp4", "annotation": clevrer(60, Some(vec![10, 50]))});
    let (_, c) = classes(&targets_from_labels(&[&nested_in, &nested_out], 2, &both)[6].target);
    assert_eq!(c, vec![Some(1), Some(0)]);
    // Labels with none of it: every probe n/a, nothing panics.
    let bare = json!({"source": "somewhere"});
    assert!(targets_from_labels(&[&bare, &bare], 5, &Window::new(5, 3, None).unwrap())
        .iter()
        .all(|t| t.target.is_err()));
}

#[test]
fn roc_auc_and_balanced_accuracy_known_values() {
    // Perfect, reversed and tied rankings.
    assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
    assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
    assert_eq!(roc_auc(&[0.5; 4], &[false, true, false, true]), 0.5);
    // Of the 2×2 (yes, no) pairs three are ordered and one tied: (3 + 0.5) / 4.
    assert_eq!(roc_auc(&[0.1, 0.5, 0.5, 0.9], &[false, true, false, true]), 0.875);
    assert!(roc_auc(&[0.1, 0.2], &[true, true]).is_nan());
    // Always "no" on 9 no + 1 yes: accuracy 90 %, balanced accuracy 50 %.
    let truth = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(accuracy(&[0; 10], &truth), 0.9);
    assert_eq!(balanced_accuracy(&[0; 10], &truth), 0.5);
    assert_eq!(balanced_accuracy(&truth, &truth), 1.0);
    // Three classes, recalls 1, 1/2, 0.
    assert!((balanced_accuracy(&[0, 1, 0, 0], &[0, 1, 1, 2]) - 0.5).abs() < 1e-12);
}

// ---------------------------------------------------------------- features

fn tiny_spec() -> ModelSpec {
    ModelSpec {
        base_model: "resnet18".into(),
        num_frames: 2,
        image_size: 16,
        width: 0.125,
        small_stem: true,
        temporal: "mean".into(),
        projection_dim: 16,
        temperature: 0.5,
    }
}

/// One-clip datasets of solid colour: every pixel of every frame is `rgb`.
fn solid_dataset(dir: &Path, frames: usize, size: usize, rgb: [u8; 3], clips: usize) -> ShardDataset {
    let spec = ShardSpec { clips, frames, height: size, width: size, clips_per_shard: clips };
    write_dataset(
        dir,
        spec,
        json!({"generator": "solid"}),
        |_, range| {
            Ok(ShardContent {
                bytes: rgb.iter().copied().cycle().take(range.len() * frames * size * size * 3).collect(),
                labels: range.map(|i| json!({"clip": i})).collect(),
            })
        },
        |_| {},
    )
    .unwrap();
    ShardDataset::open(dir).unwrap()
}

#[test]
fn model_inputs_and_pixel_features_of_a_solid_clip() {
    let dir = temp_dir("solid");
    let ds = solid_dataset(&dir, 3, 20, [255, 0, 51], 2);
    let spec = tiny_spec();
    let x = clip_batch(&ds, &[0, 1], &spec).unwrap();
    assert_eq!(x.shape(), [2, 2, 3, 16, 16]);
    let data = x.to_vec::<f32>().unwrap();
    let want = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225];
    for (i, v) in data.iter().enumerate() {
        let c = (i / 256) % 3;
        assert!((v - want[c]).abs() < 1e-5, "element {i}: {v} vs {}", want[c]);
    }
    let p = pixel_features(&ds, &[1], &[0, 1]).unwrap();
    assert_eq!((p.ids.clone(), p.dim), (vec![1], 2 * 8 * 8 * 3));
    for (i, v) in p.data.iter().enumerate() {
        assert!((v - [1.0, 0.0, 0.2][i % 3]).abs() < 1e-6);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn encoded_features_have_the_right_shape_and_are_deterministic() {
    let dir = temp_dir("features");
    let ds = bouncing_set(&dir.join("data"), 5, 4, 20);
    let spec = tiny_spec();
    let path = dir.join("model.safetensors");
    save_model(&path, &spec.build(&mut Rng::new(1)).unwrap(), &spec, 3).unwrap();
    let (mut model, loaded, epoch) = simclr::checkpoint::load_model(&path).unwrap();
    assert_eq!((loaded.clone(), epoch), (spec.clone(), 3));
    let ids = [4, 0, 2, 1, 3];
    let a = encode_dataset(&mut model.encoder, &ds, &ids, &spec, 2).unwrap();
    assert_eq!(a.ids, ids);
    assert_eq!(a.dim, model.encoder.feature_dim());
    assert_eq!(a.data.len(), 5 * a.dim);
    assert!(a.data.iter().all(|v| v.is_finite()));
    let again = encode_dataset(&mut model.encoder, &ds, &ids, &spec, 2).unwrap();
    assert_eq!(a, again, "same clips, same batches: identical features");
    // Evaluation mode: a clip's features do not depend on its batch.
    let whole = encode_dataset(&mut model.encoder, &ds, &ids, &spec, 5).unwrap();
    for (x, y) in a.data.iter().zip(&whole.data) {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
    }
    let single = encode_dataset(&mut model.encoder, &ds, &[2], &spec, 1).unwrap();
    for (x, y) in single.row(0).iter().zip(a.row(2)) {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()));
    }
    // Clips shorter than the model's input are refused with a message.
    let mut long = spec.clone();
    long.num_frames = 6;
    let err = check_compatible(&ds, &long).unwrap_err().to_string();
    assert!(err.contains("4 frames per clip") && err.contains("takes 6"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- npy

fn python_has_numpy() -> bool {
    Command::new("python3").args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn npy_files_have_a_valid_header_and_data() {
    let dir = temp_dir("npy");
    let (f32_path, i64_path) = (dir.join("emb.npy"), dir.join("ids.npy"));
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    write_npy_f32(&f32_path, &[3, 4], &values).unwrap();
    write_npy_i64(&i64_path, &[5], &[7, 0, -3, 1 << 40, 2]).unwrap();
    assert!(write_npy_f32(&dir.join("bad.npy"), &[5, 4], &values).is_err());
    assert!(!dir.join("bad.npy").exists());

    let bytes = std::fs::read(&f32_path).unwrap();
    let h = read_npy_header(&bytes).unwrap();
    assert_eq!((h.descr.as_str(), h.fortran_order, h.shape.clone()), ("<f4", false, vec![3, 4]));
    assert_eq!(h.data_offset % 64, 0);
    assert_eq!(bytes[h.data_offset - 1], b'\n');
    assert_eq!(bytes.len(), h.data_offset + 12 * 4);
    let back: Vec<f32> =
        bytes[h.data_offset..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(back, values);

    let bytes = std::fs::read(&i64_path).unwrap();
    let h = read_npy_header(&bytes).unwrap();
    assert_eq!((h.descr.as_str(), h.shape.clone()), ("<i8", vec![5]));
    let text = std::str::from_utf8(&bytes[10..h.data_offset]).unwrap();
    assert!(text.contains("'shape': (5,)"), "one-axis shapes are Python 1-tuples: {text}");
    assert_eq!(i64::from_le_bytes(bytes[h.data_offset + 24..h.data_offset + 32].try_into().unwrap()), 1 << 40);
    assert_eq!(ids_path(Path::new("out/emb.npy")), Path::new("out/emb.ids.npy"));

    if python_has_numpy() {
        let script = format!(
            "import numpy as np\na = np.load('{}')\nb = np.load('{}')\n\
             assert a.dtype == np.float32 and a.shape == (3, 4) and a[2, 3] == 4.5, a\n\
             assert b.dtype == np.int64 and b.tolist() == [7, 0, -3, 1 << 40, 2], b\n",
            f32_path.display(),
            i64_path.display()
        );
        let out = Command::new("python3").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "np.load: {}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("python3 with numpy not found: np.load check skipped");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- the binary

fn simclr_eval(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simclr-eval")).args(args).env("SIMCLR_CACHE", cache).output().unwrap()
}

fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let spec = tiny_spec();
    let path = dir.join("final_model.safetensors");
    save_model(&path, &spec.build(&mut Rng::new(4)).unwrap(), &spec, 2).unwrap();
    path
}

#[test]
fn binary_evaluates_a_checkpoint_writes_json_and_exports_embeddings() {
    let dir = temp_dir("bin");
    let checkpoint = tiny_checkpoint(&dir);
    let data = dir.join("data");
    bouncing_set(&data, 40, 4, 16);
    let (json_path, emb) = (dir.join("report.json"), dir.join("emb.npy"));
    let out = simclr_eval(
        &[
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--processed_dir",
            data.to_str().unwrap(),
            "--out",
            json_path.to_str().unwrap(),
            "--export-embeddings",
            emb.to_str().unwrap(),
            "--seed",
            "3",
        ],
        &dir.join("cache"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    for needle in ["chance", "pixels", "random-init", "trained", "balanced accuracy", "± "] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
    for probe in PROBES.iter().take(8) {
        assert!(stdout.contains(probe), "{probe} missing from:\n{stdout}");
    }
    // 4 stored frames, 2 seen (0 and 2): the future probe asks about frame 3.
    assert!(stdout.contains("future centroid (+1)"), "{stdout}");
    assert!(stdout.contains("40 clips ("), "{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["clips"], 40);
    assert_eq!(report["seed"], 3);
    assert_eq!(report["splits"], 3);
    assert_eq!(report["models"][0]["epoch"], 2);
    assert_eq!(report["models"][0]["label"], "trained");
    assert_eq!(report["models"][0]["model"]["base_model"], "resnet18");
    assert_eq!(report["frames"], json!([0, 2]));
    assert_eq!(report["future_frame"], 3);
    let probes = report["probes"].as_array().unwrap();
    let count = &probes[0];
    assert_eq!(count["name"], "ball count");
    assert_eq!(count["metric"], "accuracy");
    assert_eq!(count["train_clips"].as_u64().unwrap() + count["test_clips"].as_u64().unwrap(), 40);
    for score in [&count["pixels"], &count["random_init"], &count["trained"][0]] {
        let acc = score["test"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{score}");
        let per_split: Vec<f64> = score["per_split"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(per_split.len(), 3);
        assert!((per_split.iter().sum::<f64>() / 3.0 - acc).abs() < 1e-12, "{score}");
        assert!(score["test_sd"].as_f64().unwrap() >= 0.0 && score["balanced_accuracy"].as_f64().is_some());
    }
    let chance = count["chance"].as_f64().unwrap();
    assert!((0.2..=0.7).contains(&chance), "{chance}");
    let centroid = &probes[1];
    assert_eq!(centroid["name"], "centroid");
    assert_eq!(centroid["metric"], "r2");
    assert_eq!(centroid["targets"].as_array().unwrap().len(), 6);
    assert_eq!(centroid["trained"][0]["per_target"].as_array().unwrap().len(), 6);
    assert_eq!(centroid["chance"], 0.0);
    let binary: Vec<&Value> = probes.iter().filter(|p| p["metric"] == "roc_auc" && p["missing"].is_null()).collect();
    assert!(!binary.is_empty(), "{probes:?}");
    for p in binary {
        assert_eq!(p["chance"], 0.5, "{p}");
    }
    // The picture beside the report: a PNG.
    let png = std::fs::read(dir.join("report.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    let bytes = std::fs::read(&emb).unwrap();
    let h = read_npy_header(&bytes).unwrap();
    assert_eq!(h.descr, "<f4");
    assert_eq!(h.shape, vec![40, report["models"][0]["encoder_dim"].as_u64().unwrap() as usize]);
    let ids = std::fs::read(dir.join("emb.ids.npy")).unwrap();
    let hi = read_npy_header(&ids).unwrap();
    assert_eq!((hi.descr.as_str(), hi.shape.clone()), ("<i8", vec![40]));
    let ids: Vec<i64> =
        ids[hi.data_offset..].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(ids, (0..40).collect::<Vec<i64>>());

    // Same run again: the same report, apart from the time taken.
    let again = dir.join("again.json");
    let out = simclr_eval(
        &[
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--processed_dir",
            data.to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
            "--seed",
            "3",
        ],
        &dir.join("cache"),
    );
    assert!(out.status.success());
    let mut second: Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    let mut first = report.clone();
    first["seconds"] = json!(0);
    second["seconds"] = json!(0);
    assert_eq!(first, second);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn default_set_matches_the_training_clips_where_known() {
    let spec = tiny_spec();
    let unknown = default_eval_config(&spec, None);
    assert_eq!((unknown.clips, unknown.seed, unknown.clip.frames, unknown.clip.size), (600, 1_000_003, 20, 16));
    let trained_on = DatasetIdentity { clips: 100, frames: 8, height: 48, width: 48 };
    let matched = default_eval_config(&spec, Some(&trained_on));
    assert_eq!((matched.clip.frames, matched.clip.size), (8, 48));
    // A training set the model could not have used is ignored.
    let odd = DatasetIdentity { clips: 100, frames: 1, height: 8, width: 8 };
    let fallback = default_eval_config(&spec, Some(&odd));
    assert_eq!((fallback.clip.frames, fallback.clip.size), (20, 16));
}

#[test]
fn binary_without_a_dataset_generates_the_default_set_once() {
    let dir = temp_dir("default");
    let checkpoint = tiny_checkpoint(&dir);
    // The run's config beside the checkpoint gives the training seed and data.
    let train = dir.join("train");
    bouncing_set(&train, 4, 6, 24);
    std::fs::write(dir.join("config.toml"), format!("seed = 5\nprocessed_dir = {:?}\n", train.to_str().unwrap()))
        .unwrap();
    let cache = dir.join("cache");
    let args = ["--checkpoint", checkpoint.to_str().unwrap(), "--max_clips", "30"];
    let out = simclr_eval(&args, &cache);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("seed 5") && stdout.contains("30 clips"), "{stdout}");
    let set = cache.join("eval-bouncing-seed1000003-600clips-6x24px");
    let manifest = std::fs::read_to_string(set.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"clips\": 600"), "{manifest}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["dataset"], set.display().to_string());
    assert_eq!(report["frames"], json!([0, 3]), "2 of the 6 frames, evenly spaced");
    // A second run reuses the set as it is.
    let modified = std::fs::metadata(set.join("manifest.json")).unwrap().modified().unwrap();
    let out = simclr_eval(&args, &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(set.join("manifest.json")).unwrap().modified().unwrap(), modified);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn binary_rejects_bad_input_with_exit_code_2_and_one_line() {
    let dir = temp_dir("bad");
    let cache = dir.join("cache");
    let checkpoint = tiny_checkpoint(&dir);
    let ck = checkpoint.to_str().unwrap().to_string();
    let pth = dir.join("model.pth");
    std::fs::write(&pth, b"not a pickle").unwrap();
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let short = dir.join("short");
    bouncing_set(&short, 25, 1, 16); // 1 frame per clip; the model takes 2
    let few = dir.join("few");
    bouncing_set(&few, 8, 4, 16); // 8 clips, fewer than the probes need
    let small = dir.join("small");
    bouncing_set(&small, 25, 4, 8); // 8×8 frames, the model takes 16×16
    let short_future = dir.join("short_future");
    bouncing_set(&short_future, 25, 4, 16); // 4 frames: 3 held out leave 1 to see, the model takes 2
    let small16 = dir.join("small16");
    bouncing_set(&small16, 25, 4, 16);
    let three_frames = dir.join("three").join("final_model.safetensors");
    std::fs::create_dir_all(three_frames.parent().unwrap()).unwrap();
    let spec3 = ModelSpec { num_frames: 3, ..tiny_spec() };
    save_model(&three_frames, &spec3.build(&mut Rng::new(4)).unwrap(), &spec3, 1).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--checkpoint".into(), p(&dir.join("missing.safetensors"))], "no such file"),
        (vec!["--checkpoint".into(), p(&pth)], "PyTorch"),
        (vec!["--checkpoint".into(), p(&corrupt)], "corrupt.safetensors"),
        (vec!["--checkpoint".into(), ck.clone(), "--processed_dir".into(), p(&short)], "frames per clip"),
        (vec!["--checkpoint".into(), ck.clone(), "--processed_dir".into(), p(&few)], "at least 20"),
        (vec!["--checkpoint".into(), ck.clone(), "--processed_dir".into(), p(&small)], "8x8 frames"),
        (vec!["--checkpoint".into(), ck.clone(), "--processed_dir".into(), p(&dir.join("nowhere"))], "manifest.json"),
        (vec!["--checkpoint".into(), ck.clone(), "--max_clips".into(), "0".into()], "--max_clips"),
        (vec!["--checkpoint".into(), ck.clone(), "--max_clips".into(), "many".into()], "many"),
        (vec!["--checkpoint".into(), ck.clone(), "--batch_size".into(), "0".into()], "--batch_size"),
        (vec!["--checkpoint".into(), ck.clone(), "--export-embeddings".into(), "emb.txt".into()], ".npy"),
        (vec!["--checkpoint".into(), ck.clone(), "--frobnicate".into()], "frobnicate"),
        (vec![], "--checkpoint"),
        (vec!["--checkpoint".into(), ck.clone(), "--splits".into(), "0".into()], "--splits"),
        (
            vec![
                "--checkpoint".into(),
                ck.clone(),
                "--processed_dir".into(),
                p(&short_future),
                "--future_frames".into(),
                "3".into(),
            ],
            "--future_frames",
        ),
        (
            vec![
                "--checkpoint".into(),
                ck.clone(),
                "--checkpoint".into(),
                p(&three_frames),
                "--processed_dir".into(),
                p(&small16),
            ],
            "same frames",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = simclr_eval(&args, &cache);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: `{needle}` not in {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error"), "{args:?}: {stderr}");
    }
    assert!(!cache.exists(), "bad input must not generate the default set");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn binary_compares_several_checkpoints_in_one_table() {
    let dir = temp_dir("compare");
    let data = dir.join("data");
    bouncing_set(&data, 30, 4, 16);
    let mut paths = Vec::new();
    for temporal in ["mean", "transformer"] {
        let path = dir.join(format!("run-{temporal}")).join("final_model.safetensors");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let spec = ModelSpec { temporal: temporal.into(), ..tiny_spec() };
        save_model(&path, &spec.build(&mut Rng::new(4)).unwrap(), &spec, 1).unwrap();
        paths.push(path);
    }
    let out_json = dir.join("both.json");
    let args = [
        "--checkpoint",
        paths[0].to_str().unwrap(),
        "--checkpoint",
        paths[1].to_str().unwrap(),
        "--processed_dir",
        data.to_str().unwrap(),
        "--out",
        out_json.to_str().unwrap(),
        "--splits",
        "2",
    ];
    let out = simclr_eval(&args, &dir.join("cache"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let header = stdout.lines().find(|l| l.starts_with("probe")).unwrap();
    assert!(header.contains("run-mean") && header.contains("run-transformer"), "{header}");
    assert!(stdout.contains("temporal transformer"), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    let labels: Vec<&str> = report["models"].as_array().unwrap().iter().map(|m| m["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["run-mean", "run-transformer"]);
    assert_eq!(report["models"][1]["model"]["temporal"], "transformer");
    for p in report["probes"].as_array().unwrap().iter().filter(|p| p["missing"].is_null()) {
        assert_eq!(p["trained"].as_array().unwrap().len(), 2, "{p}");
        assert_eq!(p["trained"][1]["per_split"].as_array().unwrap().len(), 2, "{p}");
    }
    assert!(dir.join("both.png").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
