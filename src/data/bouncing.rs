//! A 2-D rigid-ball simulator: the physics behind the synthetic dataset.
//!
//! The box is [0, 1] × [0, 1] (y grows downwards, as in images). Between
//! frames the world advances event by event: find the earliest collision
//! (ball–wall or ball–ball) by solving for its time of impact, move every
//! ball exactly to that time, resolve it with an impulse, repeat. Nothing is
//! stepped past a contact, so fast balls cannot tunnel.
//!
//! Impulses along the contact normal n with restitution e:
//!   j = −(1 + e)·(v₂ − v₁)·n / (1/m₁ + 1/m₂),  v₁ −= j n/m₁,  v₂ += j n/m₂.
//! With e = 1 this conserves kinetic energy and (for ball–ball) momentum.
//! Gravity acts on every ball equally, so relative motion between balls stays
//! linear and ball–ball impacts remain a quadratic in t; wall impacts under
//! gravity are quadratic too.

use crate::rng::Rng;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Ball {
    pub pos: [f64; 2],
    pub vel: [f64; 2],
    pub radius: f64,
    pub mass: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Contact {
    Ball { a: usize, b: usize },
    Wall { ball: usize, wall: Wall },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Wall {
    Left,
    Right,
    Top,
    Bottom,
}

/// A resolved collision: when (seconds since the clip began) and what.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub time: f64,
    pub frame: usize,
    #[serde(flatten)]
    pub contact: Contact,
}

pub struct World {
    pub balls: Vec<Ball>,
    /// Downward acceleration (box heights per s²); 0 for none.
    pub gravity: f64,
    /// Coefficient of restitution, 1 = elastic.
    pub restitution: f64,
    pub time: f64,
    pub events: Vec<Event>,
}

/// Safety valve against pathological contact chains within one frame.
const MAX_EVENTS_PER_STEP: usize = 10_000;
/// Impacts closer than this (in seconds) to the current time count as "now".
const EPS_T: f64 = 1e-12;

/// Smallest root t > EPS_T of a·t² + b·t + c = 0 (a may be 0), if any.
fn first_root(a: f64, b: f64, c: f64) -> Option<f64> {
    let roots: Vec<f64> = if a.abs() < 1e-15 {
        if b.abs() < 1e-15 {
            vec![]
        } else {
            vec![-c / b]
        }
    } else {
        let disc = b * b - 4.0 * a * c;
        if disc < 0.0 {
            vec![]
        } else {
            let s = disc.sqrt();
            // Numerically stable pair of roots.
            let q = -0.5 * (b + b.signum() * s);
            let (r1, r2) = if q != 0.0 { (q / a, c / q) } else { ((-b) / (2.0 * a), (-b) / (2.0 * a)) };
            vec![r1, r2]
        }
    };
    roots.into_iter().filter(|&t| t > EPS_T).fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
}

impl World {
    pub fn kinetic_energy(&self) -> f64 {
        self.balls.iter().map(|b| 0.5 * b.mass * (b.vel[0].powi(2) + b.vel[1].powi(2))).sum()
    }

    /// Kinetic plus gravitational potential energy (y grows downwards).
    pub fn energy(&self) -> f64 {
        self.kinetic_energy() - self.balls.iter().map(|b| b.mass * self.gravity * b.pos[1]).sum::<f64>()
    }

    pub fn momentum(&self) -> [f64; 2] {
        let mut p = [0.0; 2];
        for b in &self.balls {
            p[0] += b.mass * b.vel[0];
            p[1] += b.mass * b.vel[1];
        }
        p
    }

    /// Time until ball i reaches wall `wall` while moving towards it.
    fn wall_time(&self, i: usize, wall: Wall) -> Option<f64> {
        let b = &self.balls[i];
        let g = self.gravity;
        let r = b.radius;
        match wall {
            // x(t) = x + vx t  (no horizontal force)
            Wall::Left if b.vel[0] < 0.0 => first_root(0.0, b.vel[0], b.pos[0] - r),
            Wall::Right if b.vel[0] > 0.0 => first_root(0.0, b.vel[0], b.pos[0] - (1.0 - r)),
            // y(t) = y + vy t + g t²/2
            Wall::Top => first_root(0.5 * g, b.vel[1], b.pos[1] - r).filter(|&t| b.vel[1] + g * t < 0.0),
            Wall::Bottom => first_root(0.5 * g, b.vel[1], b.pos[1] - (1.0 - r)).filter(|&t| b.vel[1] + g * t > 0.0),
            _ => None,
        }
    }

    /// Time until balls i and j touch while approaching: |d + v t| = rᵢ + rⱼ.
    fn pair_time(&self, i: usize, j: usize) -> Option<f64> {
        let (a, b) = (&self.balls[i], &self.balls[j]);
        let d = [b.pos[0] - a.pos[0], b.pos[1] - a.pos[1]];
        let v = [b.vel[0] - a.vel[0], b.vel[1] - a.vel[1]];
        let dv = d[0] * v[0] + d[1] * v[1];
        if dv >= 0.0 {
            return None; // separating or sliding: no impact
        }
        let rr = a.radius + b.radius;
        let c = d[0] * d[0] + d[1] * d[1] - rr * rr;
        if c <= 0.0 {
            return Some(0.0); // touching and approaching: resolve now
        }
        first_root(v[0] * v[0] + v[1] * v[1], 2.0 * dv, c)
    }

    fn next_contact(&self) -> Option<(f64, Contact)> {
        let mut best: Option<(f64, Contact)> = None;
        let mut consider = |t: Option<f64>, c: Contact| {
            if let Some(t) = t {
                if best.is_none_or(|(bt, _)| t < bt) {
                    best = Some((t, c));
                }
            }
        };
        for i in 0..self.balls.len() {
            for wall in [Wall::Left, Wall::Right, Wall::Top, Wall::Bottom] {
                consider(self.wall_time(i, wall), Contact::Wall { ball: i, wall });
            }
            for j in i + 1..self.balls.len() {
                consider(self.pair_time(i, j), Contact::Ball { a: i, b: j });
            }
        }
        best
    }

    fn drift(&mut self, dt: f64) {
        let g = self.gravity;
        for b in &mut self.balls {
            b.pos[0] += b.vel[0] * dt;
            b.pos[1] += b.vel[1] * dt + 0.5 * g * dt * dt;
            b.vel[1] += g * dt;
        }
    }

    fn resolve(&mut self, contact: Contact) {
        let e = self.restitution;
        match contact {
            Contact::Wall { ball, wall } => {
                let b = &mut self.balls[ball];
                let (axis, limit) = match wall {
                    Wall::Left => (0, b.radius),
                    Wall::Right => (0, 1.0 - b.radius),
                    Wall::Top => (1, b.radius),
                    Wall::Bottom => (1, 1.0 - b.radius),
                };
                b.pos[axis] = limit; // remove round-off penetration
                b.vel[axis] *= -e;
            }
            Contact::Ball { a, b } => {
                let (pa, pb) = (self.balls[a].clone(), self.balls[b].clone());
                let d = [pb.pos[0] - pa.pos[0], pb.pos[1] - pa.pos[1]];
                let len = (d[0] * d[0] + d[1] * d[1]).sqrt().max(1e-15);
                let n = [d[0] / len, d[1] / len];
                let vn = (pb.vel[0] - pa.vel[0]) * n[0] + (pb.vel[1] - pa.vel[1]) * n[1];
                if vn >= 0.0 {
                    return;
                }
                let j = -(1.0 + e) * vn / (1.0 / pa.mass + 1.0 / pb.mass);
                for (k, nk) in n.into_iter().enumerate() {
                    self.balls[a].vel[k] -= j * nk / pa.mass;
                    self.balls[b].vel[k] += j * nk / pb.mass;
                }
            }
        }
    }

    /// Advances the world by `dt`, resolving every contact on the way.
    /// `frame` labels the events found.
    pub fn step(&mut self, dt: f64, frame: usize) {
        let mut remaining = dt;
        for _ in 0..MAX_EVENTS_PER_STEP {
            match self.next_contact() {
                Some((t, contact)) if t <= remaining => {
                    self.drift(t);
                    self.time += t;
                    remaining -= t;
                    self.resolve(contact);
                    self.events.push(Event { time: self.time, frame, contact });
                }
                _ => break,
            }
        }
        self.drift(remaining);
        self.time += remaining;
        self.clamp_into_box();
    }

    /// Keeps round-off (or a hit event cap) from leaving a ball outside the box.
    fn clamp_into_box(&mut self) {
        for b in &mut self.balls {
            for k in 0..2 {
                b.pos[k] = b.pos[k].clamp(b.radius, 1.0 - b.radius);
            }
        }
    }
}

/// Per-clip physics settings.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClipPhysics {
    pub gravity: f64,
    pub restitution: f64,
}

/// Random clip: `count` non-overlapping balls with random radius, mass and velocity.
/// Half the clips are elastic without gravity, a quarter inelastic, a quarter elastic under gravity.
pub fn random_world(rng: &mut Rng, count: usize) -> World {
    let physics = match rng.below(4) {
        0 | 1 => ClipPhysics { gravity: 0.0, restitution: 1.0 },
        2 => ClipPhysics { gravity: 0.0, restitution: rng.uniform_range(0.7, 0.95) },
        _ => ClipPhysics { gravity: rng.uniform_range(0.5, 1.5), restitution: 1.0 },
    };
    let mut balls: Vec<Ball> = Vec::with_capacity(count);
    let mut attempts = 0;
    while balls.len() < count {
        // Early balls can leave no room for later ones (6 large balls): start the layout over.
        attempts += 1;
        if attempts % 1000 == 0 {
            balls.clear();
        }
        let radius = rng.uniform_range(0.06, 0.12);
        let pos = [rng.uniform_range(radius, 1.0 - radius), rng.uniform_range(radius, 1.0 - radius)];
        let clear = balls.iter().all(|b| {
            let d = ((b.pos[0] - pos[0]).powi(2) + (b.pos[1] - pos[1]).powi(2)).sqrt();
            d > b.radius + radius + 0.01
        });
        if !clear {
            continue; // a few balls of radius ≤ 0.12: rejection sampling ends quickly
        }
        let speed = rng.uniform_range(0.3, 0.9);
        let angle = rng.uniform_range(0.0, 2.0 * std::f64::consts::PI);
        // Mass grows with area (uniform density up to ±25 %).
        let mass = radius * radius * 100.0 * rng.uniform_range(0.75, 1.25);
        balls.push(Ball { pos, vel: [speed * angle.cos(), speed * angle.sin()], radius, mass });
    }
    World { balls, gravity: physics.gravity, restitution: physics.restitution, time: 0.0, events: Vec::new() }
}
