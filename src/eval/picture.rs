//! `eval.png`: the evaluation at a glance, beside `eval.json`.
//!
//! Top: one group of bars per probe — chance, raw pixels, the random-init
//! encoder and each trained model — with the probe's metric (accuracy, ROC
//! AUC or R², all "higher is better", 1 at best) and a whisker of ± one sd
//! over the splits. An R² below 0 is drawn as a stub at 0 with its value.
//! (Bar heights are the table's numbers; read exact values there.)
//! Bottom: the first trained model's features projected on their two
//! principal components, coloured by ball count (left) and by speed (right):
//! whether the representation is organised by the physics, not just
//! separable by a probe.

use super::evaluate::Evaluation;
use super::features::Features;
use super::report::{Metric, Score};
use super::targets::Target;
use crate::data::contact_sheet::encode_png;
use crate::error::Result;
use crate::plot::canvas::Canvas;
use crate::plot::font;
use crate::plot::{colours, Rgb};
use std::path::Path;

const WIDTH: usize = 1280;
const BARS_HEIGHT: usize = 420;
const SCATTER_HEIGHT: usize = 380;
const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [25, 25, 25];
const GRID: Rgb = [225, 225, 225];
/// Bar colours: chance, pixels, random-init, then the trained models.
const SET_COLOURS: [Rgb; 7] =
    [[190, 190, 190], [150, 120, 90], [120, 170, 210], [200, 60, 40], [40, 110, 180], [40, 150, 80], [140, 80, 170]];
/// Ball counts 1, 2, 3, … in the scatter: the line plots' series colours, then grey.
const COUNT_COLOURS: [Rgb; 6] =
    [colours::BLUE, colours::ORANGE, colours::GREEN, colours::RED, colours::PURPLE, [90, 90, 90]];

/// Renders the picture of `evaluation` and writes it to `path` (atomically).
pub fn write_eval_picture(path: &Path, evaluation: &Evaluation) -> Result<()> {
    let png = eval_picture(evaluation)?;
    crate::atomic_file::write_atomic(path, &png)
}

/// The picture of `evaluation` as PNG bytes.
pub fn eval_picture(evaluation: &Evaluation) -> Result<Vec<u8>> {
    let mut canvas = Canvas::new(WIDTH, BARS_HEIGHT + SCATTER_HEIGHT, WHITE);
    draw_bars(&mut canvas, evaluation);
    if let Some(features) = evaluation.features.first() {
        let points = principal_components(features);
        let label = evaluation.report.models.first().map_or("trained".to_string(), |m| m.label.clone());
        let half = WIDTH as i64 / 2;
        let top = BARS_HEIGHT as i64;
        let count = evaluation.targets.iter().find(|t| t.name.ends_with("count")).and_then(|t| t.target.as_ref().ok());
        let speed = evaluation.targets.iter().find(|t| t.name == "speed").and_then(|t| t.target.as_ref().ok());
        let count_colours: Vec<Option<Rgb>> = match count {
            Some(Target::Classes { labels, .. }) => {
                labels.iter().map(|l| l.map(|c| COUNT_COLOURS[c.min(COUNT_COLOURS.len() - 1)])).collect()
            }
            _ => vec![None; points.len()],
        };
        let speed_colours: Vec<Option<Rgb>> = match speed {
            Some(Target::Values { values, .. }) => {
                // By rank, so that the colours spread evenly however the speeds are distributed.
                let mut sorted: Vec<f64> = values.iter().flatten().map(|v| v[0]).collect();
                sorted.sort_by(f64::total_cmp);
                let rank = |v: f64| sorted.partition_point(|&s| s < v) as f64 / (sorted.len().max(2) - 1) as f64;
                values.iter().map(|v| v.as_ref().map(|v| ramp(rank(v[0])))).collect()
            }
            _ => vec![None; points.len()],
        };
        let count_names: Vec<String> = match count {
            Some(Target::Classes { class_names, .. }) => class_names.clone(),
            _ => vec![],
        };
        let title = format!("{label}: features, first two principal components, by ball count");
        draw_scatter(&mut canvas, (0, top, half, top + SCATTER_HEIGHT as i64), &title, &points, &count_colours);
        let legend: Vec<(String, Rgb)> = count_names
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{n} ball{}", if n == "1" { "" } else { "s" }), COUNT_COLOURS[i.min(5)]))
            .collect();
        draw_legend(&mut canvas, 16, top + 28, &legend);
        let title = format!("{label}: the same, by speed (blue slowest, red fastest, by rank)");
        let right = (half, top, WIDTH as i64, top + SCATTER_HEIGHT as i64);
        draw_scatter(&mut canvas, right, &title, &points, &speed_colours);
    }
    encode_png(canvas.width, canvas.height, &canvas.rgb)
}

/// Blue (0) → red (1) through grey.
fn ramp(t: f64) -> Rgb {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    [mix(40.0, 210.0), mix(90.0, 50.0), mix(200.0, 40.0)]
}

fn metric_short(metric: Metric) -> &'static str {
    match metric {
        Metric::Accuracy => "acc",
        Metric::RocAuc => "AUC",
        Metric::R2 => "R2",
    }
}

fn draw_bars(canvas: &mut Canvas, evaluation: &Evaluation) {
    let report = &evaluation.report;
    let probes: Vec<_> = report.probes.iter().filter(|p| p.missing.is_none()).collect();
    let mut sets: Vec<String> = vec!["chance".into(), "pixels".into(), "random-init".into()];
    sets.extend(report.models.iter().map(|m| m.label.clone()));
    let (left, right, top, bottom) = (56i64, WIDTH as i64 - 16, 56i64, BARS_HEIGHT as i64 - 56);
    canvas.text(16, 12, "probe scores on held-out clips (mean +- sd over the splits; 1 is perfect)", 2, INK);
    let mut x = 16;
    for (i, name) in sets.iter().enumerate() {
        canvas.fill_rect(x, 36, x + 12, 46, SET_COLOURS[i.min(SET_COLOURS.len() - 1)]);
        canvas.text(x + 16, 38, name, 1, INK);
        x += 16 + font::text_width(name, 1) as i64 + 20;
    }
    let to_y = |v: f64| bottom - ((bottom - top) as f64 * v.clamp(0.0, 1.0)).round() as i64;
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        canvas.fill_rect(left, to_y(v), right, to_y(v) + 1, GRID);
        canvas.text(left - 30, to_y(v) - 3, &format!("{v:.2}"), 1, INK);
    }
    if probes.is_empty() {
        canvas.text(left + 10, (top + bottom) / 2, "no probe could be run on this dataset", 2, INK);
        return;
    }
    let group = (right - left) / probes.len() as i64;
    let bar = ((group - 12) / sets.len() as i64).max(2);
    for (g, p) in probes.iter().enumerate() {
        let gx = left + g as i64 * group + 6;
        let scores: Vec<Option<&Score>> =
            [None, p.pixels.as_ref(), p.random_init.as_ref()].into_iter().chain(p.trained.iter().map(Some)).collect();
        for (i, s) in scores.iter().enumerate() {
            let (value, sd) = match (i, s) {
                (0, _) => (p.chance.unwrap_or(f64::NAN), 0.0),
                (_, Some(s)) => (s.test, s.test_sd),
                _ => continue,
            };
            if !value.is_finite() {
                continue;
            }
            let bx = gx + i as i64 * bar;
            let colour = SET_COLOURS[i.min(SET_COLOURS.len() - 1)];
            let y = to_y(value).min(bottom - 2);
            canvas.fill_rect(bx, y, bx + bar - 1, bottom, colour);
            if value < -0.005 {
                canvas.text(bx, bottom - 12, &format!("{value:.2}"), 1, INK);
            }
            if sd > 0.0 && value >= 0.0 {
                let mid = bx + bar / 2;
                canvas.fill_rect(mid, to_y(value + sd), mid + 1, to_y(value - sd) + 1, INK);
            }
        }
        let name = format!("{} ({})", p.name, metric_short(p.metric));
        let words: Vec<&str> = name.split(' ').collect();
        // Up to two lines under the group.
        let (mut line, mut lines) = (String::new(), Vec::new());
        for w in words {
            if !line.is_empty() && font::text_width(&format!("{line} {w}"), 1) as i64 > group - 4 {
                lines.push(std::mem::take(&mut line));
            }
            line = if line.is_empty() { w.to_string() } else { format!("{line} {w}") };
        }
        lines.push(line);
        for (l, text) in lines.iter().take(3).enumerate() {
            canvas.text(gx, bottom + 8 + 11 * l as i64, text, 1, INK);
        }
    }
}

fn draw_legend(canvas: &mut Canvas, x: i64, y: i64, entries: &[(String, Rgb)]) {
    let mut x = x;
    for (name, colour) in entries {
        canvas.fill_rect(x, y, x + 10, y + 8, *colour);
        canvas.text(x + 14, y, name, 1, INK);
        x += 14 + font::text_width(name, 1) as i64 + 16;
    }
}

/// Dots at `points` (any scale: fitted to the panel), coloured per point (None: not drawn).
fn draw_scatter(
    canvas: &mut Canvas,
    panel: (i64, i64, i64, i64),
    title: &str,
    points: &[[f64; 2]],
    colours: &[Option<Rgb>],
) {
    let (x0, y0, x1, y1) = panel;
    canvas.text(x0 + 16, y0 + 10, title, 1, INK);
    let (px0, py0, px1, py1) = (x0 + 16, y0 + 44, x1 - 16, y1 - 12);
    canvas.outline_rect(px0, py0, px1, py1, GRID);
    let finite: Vec<&[f64; 2]> = points.iter().filter(|p| p[0].is_finite() && p[1].is_finite()).collect();
    if finite.is_empty() {
        return;
    }
    let range = |k: usize| finite.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p[k]), b.max(p[k])));
    let ((xa, xb), (ya, yb)) = (range(0), range(1));
    for (p, c) in points.iter().zip(colours) {
        let Some(colour) = c else { continue };
        if !(p[0].is_finite() && p[1].is_finite()) {
            continue;
        }
        let cx = px0 + 4 + ((p[0] - xa) / (xb - xa).max(1e-12) * (px1 - px0 - 8) as f64).round() as i64;
        let cy = py1 - 4 - ((p[1] - ya) / (yb - ya).max(1e-12) * (py1 - py0 - 8) as f64).round() as i64;
        for dy in -2i64..=2 {
            for dx in -2i64..=2 {
                if dx * dx + dy * dy <= 5 {
                    canvas.blend(cx + dx, cy + dy, *colour, 0.6);
                }
            }
        }
    }
}

/// Each row of `features` projected on the top two principal components (centred data,
/// power iteration with deflation, fixed start: deterministic).
pub fn principal_components(features: &Features) -> Vec<[f64; 2]> {
    let (n, d) = (features.ids.len(), features.dim);
    if n == 0 || d == 0 {
        return vec![];
    }
    let mut mean = vec![0.0; d];
    for r in 0..n {
        mean.iter_mut().zip(features.row(r)).for_each(|(m, v)| *m += *v as f64 / n as f64);
    }
    let centred: Vec<Vec<f64>> =
        (0..n).map(|r| features.row(r).iter().zip(&mean).map(|(v, m)| *v as f64 - m).collect()).collect();
    let mut cov = vec![0.0; d * d];
    for row in &centred {
        for i in 0..d {
            if row[i] != 0.0 {
                let ri = row[i];
                cov[i * d..(i + 1) * d].iter_mut().zip(row).for_each(|(c, v)| *c += ri * v);
            }
        }
    }
    let mut components: Vec<Vec<f64>> = Vec::new();
    for k in 0..2.min(d) {
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + ((i * 7 + k * 3) % 11) as f64 / 11.0).collect();
        for _ in 0..200 {
            let mut w: Vec<f64> = (0..d).map(|i| (0..d).map(|j| cov[i * d + j] * v[j]).sum()).collect();
            for c in &components {
                let dot: f64 = w.iter().zip(c).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm < 1e-300 {
                break;
            }
            v = w.iter().map(|a| a / norm).collect();
        }
        components.push(v);
    }
    centred
        .iter()
        .map(|row| {
            let project = |c: Option<&Vec<f64>>| c.map_or(0.0, |c| row.iter().zip(c).map(|(a, b)| a * b).sum());
            [project(components.first()), project(components.get(1))]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_components_find_the_direction_of_largest_spread() {
        // Points along (1, 1, 0) with a little spread along (1, −1, 0).
        let mut data = Vec::new();
        for i in 0..50 {
            let t = (i as f32 - 24.5) / 10.0; // centred: mean 0
            let s = if i % 2 == 0 { 0.1 } else { -0.1 };
            data.extend([t + s, t - s, 0.0]);
        }
        let f = Features { ids: (0..50).collect(), dim: 3, data };
        let p = principal_components(&f);
        let spread = |k: usize| p.iter().map(|q| q[k] * q[k]).sum::<f64>();
        assert!(spread(0) > 100.0 * spread(1), "{} vs {}", spread(0), spread(1));
        // The first component is the position along (1, 1): |pc1| = √2·|t|, the second the
        // ±0.1 offset along (1, −1) (up to the slight tilt their small correlation gives).
        for (i, q) in p.iter().enumerate() {
            let t = (i as f64 - 24.5) / 10.0;
            assert!((q[0].abs() - 2f64.sqrt() * t.abs()).abs() < 1e-2, "{q:?} at t = {t}");
            assert!((q[1].abs() - 2f64.sqrt() * 0.1).abs() < 2e-2, "{q:?}");
        }
    }
}
