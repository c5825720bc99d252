//! Draws balls as shaded spheres on a softly textured background.
//!
//! Shading: each pixel inside a ball gets the sphere's surface normal
//! (from its offset to the centre), lit by a fixed light from the upper left:
//! ambient + Lambert diffuse + a small specular highlight. Edges are
//! anti-aliased by the pixel's fractional coverage of the disc, so the images
//! are not binary masks — the encoder must learn shapes, not thresholds.

use crate::rng::Rng;
use std::f32::consts::TAU;

/// Distinct, saturated ball colours (RGB); a clip draws without replacement.
pub const PALETTE: [[f32; 3]; 6] = [
    [0.90, 0.20, 0.20],
    [0.20, 0.70, 0.25],
    [0.25, 0.40, 0.95],
    [0.95, 0.80, 0.15],
    [0.75, 0.30, 0.85],
    [0.15, 0.80, 0.85],
];

/// A background: base colour plus a low-frequency texture (two sinusoids).
#[derive(Clone, Debug)]
pub struct Background {
    pub base: [f32; 3],
    pub amplitude: f32,
    pub freq: [f32; 2],
    pub phase: [f32; 2],
}

impl Background {
    pub fn random(rng: &mut Rng) -> Background {
        let grey = rng.uniform_range(0.15, 0.45) as f32;
        let tint = [
            rng.uniform_range(-0.04, 0.04) as f32,
            rng.uniform_range(-0.04, 0.04) as f32,
            rng.uniform_range(-0.04, 0.04) as f32,
        ];
        // One clip in three is plain; the rest get a faint texture.
        let amplitude = if rng.below(3) == 0 { 0.0 } else { rng.uniform_range(0.02, 0.06) as f32 };
        Background {
            base: [grey + tint[0], grey + tint[1], grey + tint[2]],
            amplitude,
            freq: [rng.uniform_range(2.0, 6.0) as f32, rng.uniform_range(2.0, 6.0) as f32],
            phase: [rng.uniform_range(0.0, 6.3) as f32, rng.uniform_range(0.0, 6.3) as f32],
        }
    }

    fn at(&self, u: f32, v: f32) -> [f32; 3] {
        let t = self.amplitude
            * ((self.freq[0] * u * TAU + self.phase[0]).sin() * (self.freq[1] * v * TAU + self.phase[1]).sin());
        [self.base[0] + t, self.base[1] + t, self.base[2] + t]
    }
}

/// A ball to draw, in box coordinates ([0, 1]², y down).
pub struct Disc {
    pub centre: [f64; 2],
    pub radius: f64,
    pub colour: [f32; 3],
}

/// Renders one `size`×`size` RGB frame (row-major, 3 bytes per pixel) into `out`.
pub fn render_frame(discs: &[Disc], background: &Background, size: usize, out: &mut [u8]) {
    let s = size as f32;
    let mut img = vec![[0f32; 3]; size * size];
    for y in 0..size {
        for x in 0..size {
            img[y * size + x] = background.at((x as f32 + 0.5) / s, (y as f32 + 0.5) / s);
        }
    }
    let light = {
        let l = [-0.5f32, -0.6, 0.62];
        let n = (l[0] * l[0] + l[1] * l[1] + l[2] * l[2]).sqrt();
        [l[0] / n, l[1] / n, l[2] / n]
    };
    for d in discs {
        let (cx, cy, r) = (d.centre[0] as f32 * s, d.centre[1] as f32 * s, d.radius as f32 * s);
        let (x0, x1) = (((cx - r - 1.0).floor().max(0.0)) as usize, ((cx + r + 1.0).ceil() as usize).min(size));
        let (y0, y1) = (((cy - r - 1.0).floor().max(0.0)) as usize, ((cy + r + 1.0).ceil() as usize).min(size));
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let dist = (dx * dx + dy * dy).sqrt();
                let cover = (r - dist + 0.5).clamp(0.0, 1.0);
                if cover <= 0.0 {
                    continue;
                }
                // Surface normal of the sphere under this pixel.
                let (nx, ny) = (dx / r, dy / r);
                let nz = (1.0 - (nx * nx + ny * ny).min(1.0)).sqrt();
                let diffuse = (nx * light[0] + ny * light[1] + nz * light[2]).max(0.0);
                let specular = diffuse.powi(24) * 0.35;
                let shade = 0.3 + 0.7 * diffuse;
                let p = &mut img[y * size + x];
                for (v, colour) in p.iter_mut().zip(d.colour) {
                    let lit = (colour * shade + specular).min(1.0);
                    *v = *v * (1.0 - cover) + lit * cover;
                }
            }
        }
    }
    for (o, p) in out.chunks_mut(3).zip(&img) {
        for c in 0..3 {
            o[c] = (p[c].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
}
