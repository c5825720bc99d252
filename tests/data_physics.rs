//! The bouncing-ball simulator: conservation laws, containment, determinism.

use simclr::data::bouncing::{random_world, Ball, Contact, World};
use simclr::data::synthetic::{generate_clip, BouncingConfig};
use simclr::Rng;

fn elastic_worlds() -> Vec<World> {
    let mut worlds = Vec::new();
    let mut seed = 0;
    while worlds.len() < 40 {
        let mut rng = Rng::new(seed);
        seed += 1;
        let w = random_world(&mut rng, 1 + (seed as usize % 3));
        if w.restitution == 1.0 {
            worlds.push(w);
        }
    }
    worlds
}

/// Elastic clips (with or without gravity) keep their total energy to 1e-9 relative,
/// over 200 frames with hundreds of collisions.
#[test]
fn elastic_clips_conserve_energy() {
    let mut collisions = 0;
    for mut w in elastic_worlds() {
        let e0 = w.energy();
        for f in 1..=200 {
            w.step(0.05, f);
        }
        collisions += w.events.len();
        assert!((w.energy() - e0).abs() <= 1e-9 * e0.abs().max(1e-3), "energy {e0} -> {}", w.energy());
    }
    assert!(collisions > 100, "the test should exercise collisions, saw {collisions}");
}

/// Ball–ball impacts conserve momentum (walls do not, so check each impact alone).
#[test]
fn ball_collisions_conserve_momentum() {
    for (e, mass_b) in [(1.0, 1.0), (1.0, 3.5), (0.8, 2.0)] {
        let mut w = World {
            balls: vec![
                Ball { pos: [0.3, 0.5], vel: [0.4, 0.05], radius: 0.1, mass: 1.0 },
                Ball { pos: [0.7, 0.52], vel: [-0.3, 0.0], radius: 0.08, mass: mass_b },
            ],
            gravity: 0.0,
            restitution: e,
            time: 0.0,
            events: vec![],
        };
        let p0 = w.momentum();
        let ke0 = w.kinetic_energy();
        // Gap 0.22 closing at 0.7/s: they meet after ~0.31 s, well before either reaches a wall.
        w.step(0.3, 1);
        w.step(0.3, 2);
        assert!(w.events.iter().any(|ev| matches!(ev.contact, Contact::Ball { .. })), "no impact: {:?}", w.events);
        assert!(
            !w.events.iter().any(|ev| matches!(ev.contact, Contact::Wall { .. })),
            "a wall was hit: {:?}",
            w.events
        );
        let p1 = w.momentum();
        assert!((p1[0] - p0[0]).abs() < 1e-12 && (p1[1] - p0[1]).abs() < 1e-12, "{p0:?} -> {p1:?}");
        let ke1 = w.kinetic_energy();
        if e == 1.0 {
            assert!((ke1 - ke0).abs() < 1e-12);
        } else {
            assert!(ke1 < ke0, "inelastic impact must lose energy");
        }
    }
}

/// No ball leaves the box and no two balls overlap, in any clip, at any frame.
#[test]
fn balls_stay_in_the_box_and_apart() {
    let cfg = BouncingConfig { frames: 60, size: 16, ..Default::default() };
    for i in 0..60 {
        let (_, labels) = generate_clip(11, i, &cfg).unwrap();
        for frame in &labels.positions {
            for (k, p) in frame.iter().enumerate() {
                let r = labels.radii[k];
                assert!(
                    p[0] >= r - 1e-9 && p[0] <= 1.0 - r + 1e-9 && p[1] >= r - 1e-9 && p[1] <= 1.0 - r + 1e-9,
                    "clip {i}: {p:?} r {r}"
                );
                for (m, q) in frame.iter().enumerate().skip(k + 1) {
                    let d = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
                    assert!(d >= r + labels.radii[m] - 1e-9, "clip {i}: balls {k} and {m} overlap ({d})");
                }
            }
        }
    }
}

#[test]
fn same_seed_same_clip_and_labels() {
    let cfg = BouncingConfig { frames: 8, size: 32, ..Default::default() };
    let (a, la) = generate_clip(5, 3, &cfg).unwrap();
    let (b, lb) = generate_clip(5, 3, &cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(serde_json::to_string(&la).unwrap(), serde_json::to_string(&lb).unwrap());
    let (c, _) = generate_clip(6, 3, &cfg).unwrap();
    assert_ne!(a, c, "another seed gives another clip");
    let (d, _) = generate_clip(5, 4, &cfg).unwrap();
    assert_ne!(a, d, "another index gives another clip");
    assert_eq!(a.len(), 8 * 32 * 32 * 3);
    assert!((1..=3).contains(&la.ball_count) && la.positions.len() == 8 && la.velocities[0].len() == la.ball_count);
}

#[test]
fn frames_are_shaded_not_binary() {
    let cfg = BouncingConfig { frames: 1, size: 64, ..Default::default() };
    let (bytes, _) = generate_clip(1, 0, &cfg).unwrap();
    let mut distinct: Vec<u8> = bytes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 40, "only {} distinct byte values", distinct.len());
}

/// The most crowded clips (6 balls) still place every ball without overlap, and
/// their 100 frames keep balls inside and apart; impossible settings are errors.
#[test]
fn crowded_clips_and_bad_ball_counts() {
    let cfg = BouncingConfig { frames: 100, size: 8, min_balls: 6, max_balls: 6, ..Default::default() };
    for i in 0..20 {
        let (_, labels) = generate_clip(3, i, &cfg).unwrap();
        assert_eq!(labels.ball_count, 6);
        for frame in &labels.positions {
            for k in 0..6 {
                for m in k + 1..6 {
                    let d = ((frame[k][0] - frame[m][0]).powi(2) + (frame[k][1] - frame[m][1]).powi(2)).sqrt();
                    assert!(d >= labels.radii[k] + labels.radii[m] - 1e-9, "clip {i}: overlap {d}");
                }
            }
        }
    }
    for (lo, hi) in [(0, 2), (3, 2), (1, 7)] {
        let bad = BouncingConfig { min_balls: lo, max_balls: hi, ..cfg };
        let msg = generate_clip(0, 0, &bad).unwrap_err().to_string();
        assert!(msg.contains("--balls"), "{msg}");
    }
}

/// Collision events are in time order and inside the clip, and every per-ball
/// label has one entry per ball.
#[test]
fn collision_events_are_labelled() {
    let cfg = BouncingConfig { frames: 40, size: 8, ..Default::default() };
    let mut walls = 0;
    for i in 0..10 {
        let (_, l) = generate_clip(8, i, &cfg).unwrap();
        assert_eq!((l.radii.len(), l.masses.len(), l.positions.len()), (l.ball_count, l.ball_count, 40));
        let mut last = 0.0;
        for e in &l.collisions {
            assert!(e.time >= last && e.frame >= 1 && e.frame < 40, "{e:?}");
            last = e.time;
            if let Contact::Wall { .. } = e.contact {
                walls += 1;
            }
        }
    }
    assert!(walls > 0, "40 frames of motion should hit a wall");
}
