//! Clip-consistent SimCLR augmentations.
//!
//! SimCLR's image recipe — random resized crop, horizontal flip, colour jitter,
//! random grayscale — applied to video: the parameters are drawn once per clip
//! per view and the same transform is applied to every frame, so motion stays
//! physically consistent inside a view while the two views differ.
//!
//! The crop is resized with an antialiased bilinear filter (`resize.rs`), as
//! torchvision's `RandomResizedCrop(antialias=True)` and PIL do.
//!
//! Colour operations follow torchvision's definitions on [0, 1] RGB:
//! brightness scales, contrast blends with the mean grey level (here the mean
//! over the whole clip, so every frame gets the same affine map), saturation
//! blends with the pixel's grey, hue rotates H in HSV; the four are applied in
//! a random order. Grey = 0.299 R + 0.587 G + 0.114 B.

use super::resize::{resample_frame, Taps};
use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct AugmentConfig {
    /// Output frames are `out_size`×`out_size`.
    pub out_size: usize,
    /// Crop area as a fraction of the frame, and crop aspect ratio range.
    pub crop_scale: (f64, f64),
    pub crop_ratio: (f64, f64),
    pub flip_p: f64,
    /// Probability of applying colour jitter at all, and its strengths.
    pub jitter_p: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    pub grayscale_p: f64,
    /// Temporal jitter: each view's frames are shifted later by its own random 0..=this many
    /// stored frames (as far as the clip has frames after the last one chosen), so the two
    /// views show the same motion at slightly different moments. 0 (the baseline): both
    /// views see the same frames.
    pub temporal_jitter: usize,
    /// Reversed twins: every clip of a batch also enters it played backwards, as an instance
    /// of its own (both of its views reversed, augmented independently). Telling a clip from
    /// its twin needs the order of the frames, so the loss rewards encoding the direction of
    /// motion, which nothing else in SimCLR asks for. Doubles the instances per step.
    pub reversed_twins: bool,
    /// Normalisation (ImageNet statistics by default).
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            out_size: 64,
            crop_scale: (0.08, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            grayscale_p: 0.2,
            temporal_jitter: 0,
            reversed_twins: false,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

impl AugmentConfig {
    /// Checks every parameter's range (the ranges torchvision accepts).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("augment", msg));
        let (s0, s1) = self.crop_scale;
        let (r0, r1) = self.crop_ratio;
        if self.out_size == 0 {
            return bad("out_size must be at least 1".into());
        }
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return bad(format!("crop scale must satisfy 0 < min <= max <= 1, got ({s0}, {s1})"));
        }
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return bad(format!("crop ratio must satisfy 0 < min <= max, got ({r0}, {r1})"));
        }
        for (name, p) in [("flip_p", self.flip_p), ("jitter_p", self.jitter_p), ("grayscale_p", self.grayscale_p)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} is a probability, got {p}"));
            }
        }
        for (name, v) in [("brightness", self.brightness), ("contrast", self.contrast), ("saturation", self.saturation)]
        {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{name} must be a non-negative strength, got {v}"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return bad(format!("hue must be in [0, 0.5], got {}", self.hue));
        }
        if !self.std.iter().all(|s| *s > 0.0 && s.is_finite()) || !self.mean.iter().all(|m| m.is_finite()) {
            return bad(format!(
                "normalisation needs finite means and positive stds, got {:?} / {:?}",
                self.mean, self.std
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColourOp {
    Brightness(f64),
    Contrast(f64),
    Saturation(f64),
    Hue(f64),
}

/// One view's transform, shared by all frames of the clip.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewParams {
    /// Crop rectangle in source pixels: top, left, height, width.
    pub crop: (usize, usize, usize, usize),
    pub flip: bool,
    /// Colour operations in the order applied (empty when jitter was not drawn).
    pub colour: Vec<ColourOp>,
    pub grayscale: bool,
}

impl ViewParams {
    /// torchvision's RandomResizedCrop.get_params, then flip / jitter / grayscale draws.
    pub fn sample(cfg: &AugmentConfig, height: usize, width: usize, rng: &mut Rng) -> ViewParams {
        let area = (height * width) as f64;
        let (lr0, lr1) = (cfg.crop_ratio.0.ln(), cfg.crop_ratio.1.ln());
        let mut crop = None;
        for _ in 0..10 {
            let target = area * rng.uniform_range(cfg.crop_scale.0, cfg.crop_scale.1);
            let ratio = rng.uniform_range(lr0, lr1).exp();
            let w = (target * ratio).sqrt().round() as usize;
            let h = (target / ratio).sqrt().round() as usize;
            if w > 0 && h > 0 && w <= width && h <= height {
                crop = Some((rng.below(height - h + 1), rng.below(width - w + 1), h, w));
                break;
            }
        }
        // Fallback: the largest centre crop whose ratio is within range.
        let crop = crop.unwrap_or_else(|| {
            let in_ratio = width as f64 / height as f64;
            let (h, w) = if in_ratio < cfg.crop_ratio.0 {
                ((width as f64 / cfg.crop_ratio.0).round() as usize, width)
            } else if in_ratio > cfg.crop_ratio.1 {
                (height, (height as f64 * cfg.crop_ratio.1).round() as usize)
            } else {
                (height, width)
            };
            ((height - h) / 2, (width - w) / 2, h, w)
        });
        let flip = rng.uniform() < cfg.flip_p;
        let mut colour = Vec::new();
        if rng.uniform() < cfg.jitter_p {
            let factor = |rng: &mut Rng, s: f64| rng.uniform_range((1.0 - s).max(0.0), 1.0 + s);
            let ops = [
                ColourOp::Brightness(factor(rng, cfg.brightness)),
                ColourOp::Contrast(factor(rng, cfg.contrast)),
                ColourOp::Saturation(factor(rng, cfg.saturation)),
                ColourOp::Hue(rng.uniform_range(-cfg.hue, cfg.hue)),
            ];
            let mut order = [0, 1, 2, 3];
            rng.shuffle(&mut order);
            colour = order.iter().map(|&i| ops[i]).collect();
        }
        let grayscale = rng.uniform() < cfg.grayscale_p;
        ViewParams { crop, flip, colour, grayscale }
    }
}

pub fn grey(p: [f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// RGB in [0, 1] → HSV with H in [0, 1) (torchvision's _rgb2hsv).
pub fn rgb_to_hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let cr = maxc - minc;
    let s = if maxc > 0.0 { cr / maxc } else { 0.0 };
    let h = if cr == 0.0 {
        0.0
    } else if maxc == r {
        (g - b) / cr
    } else if maxc == g {
        2.0 + (b - r) / cr
    } else {
        4.0 + (r - g) / cr
    };
    [(h / 6.0).rem_euclid(1.0), s, maxc]
}

/// HSV (H in [0, 1)) → RGB.
pub fn hsv_to_rgb([h, s, v]: [f32; 3]) -> [f32; 3] {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Applies one colour operation to every pixel of a clip (RGB triples in [0, 1]).
pub fn apply_colour(op: ColourOp, pixels: &mut [[f32; 3]]) {
    let clamp = |v: f32| v.clamp(0.0, 1.0);
    match op {
        ColourOp::Brightness(b) => pixels.iter_mut().for_each(|p| p.iter_mut().for_each(|c| *c = clamp(*c * b as f32))),
        ColourOp::Contrast(c) => {
            let mean = pixels.iter().map(|&p| grey(p) as f64).sum::<f64>() as f32 / pixels.len().max(1) as f32;
            let c = c as f32;
            pixels.iter_mut().for_each(|p| p.iter_mut().for_each(|v| *v = clamp(c * *v + (1.0 - c) * mean)));
        }
        ColourOp::Saturation(s) => {
            let s = s as f32;
            pixels.iter_mut().for_each(|p| {
                let g = grey(*p);
                p.iter_mut().for_each(|v| *v = clamp(s * *v + (1.0 - s) * g));
            })
        }
        ColourOp::Hue(shift) => pixels.iter_mut().for_each(|p| {
            let [h, s, v] = rgb_to_hsv(*p);
            *p = hsv_to_rgb([h + shift as f32, s, v]);
        }),
    }
}

/// Augments one clip (T×H×W×3 u8) into `out` as f32 [T, 3, S, S] (S = cfg.out_size).
pub fn augment_clip(
    clip: &[u8],
    frames: usize,
    height: usize,
    width: usize,
    params: &ViewParams,
    cfg: &AugmentConfig,
    out: &mut [f32],
) -> Result<()> {
    cfg.validate()?;
    let s = cfg.out_size;
    if height < s || width < s {
        return Err(Error::invalid(
            "augment",
            format!("frames are {height}x{width}, smaller than the {s}x{s} crop output; use a smaller crop size or regenerate the data with a larger --size"),
        ));
    }
    if clip.len() != frames * height * width * 3 || out.len() != frames * 3 * s * s {
        return Err(Error::shape(
            "augment",
            format!("clip of {} bytes / output of {} floats for {frames}x{height}x{width}", clip.len(), out.len()),
        ));
    }
    let (top, left, ch, cw) = params.crop;
    if ch == 0 || cw == 0 || top + ch > height || left + cw > width {
        return Err(Error::invalid(
            "augment",
            format!("crop (top {top}, left {left}, {ch}x{cw}) does not fit in a {height}x{width} frame"),
        ));
    }
    // 1. Crop + antialiased bilinear resize (+ flip) of every frame into [T][S·S] RGB pixels.
    let mut pixels = vec![[0f32; 3]; frames * s * s];
    let (rows, cols) = (Taps::new(top, ch, s), Taps::new(left, cw, s));
    let mut scratch = Vec::new();
    let frame_bytes = height * width * 3;
    for (frame, out) in clip.chunks_exact(frame_bytes).zip(pixels.chunks_exact_mut(s * s)) {
        resample_frame(frame, width, &rows, &cols, params.flip, &mut scratch, out);
    }
    // 2. Colour jitter and grayscale, each one map over the whole clip.
    for &op in &params.colour {
        apply_colour(op, &mut pixels);
    }
    if params.grayscale {
        pixels.iter_mut().for_each(|p| *p = [grey(*p); 3]);
    }
    // 3. Normalise and write channels-first.
    for f in 0..frames {
        for c in 0..3 {
            let plane = &mut out[(f * 3 + c) * s * s..(f * 3 + c + 1) * s * s];
            for (o, p) in plane.iter_mut().zip(&pixels[f * s * s..(f + 1) * s * s]) {
                *o = (p[c] - cfg.mean[c]) / cfg.std[c];
            }
        }
    }
    Ok(())
}
