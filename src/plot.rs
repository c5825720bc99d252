//! Line plots rendered straight to PNG: training curves a person can read
//! without any tooling (`loss.png`, `lr.png` beside `metrics.jsonl`).
//!
//! Why not `plotters`: its bitmap backend draws text only through a font
//! engine. With the `ttf` feature that is font-kit reading the system's fonts,
//! which CI machines do not have; with `ab_glyph` the crate needs a TTF/OTF
//! file registered at run time, so we would ship a font file; with neither,
//! its fallback font can measure text but its `draw` panics ("The font
//! implementation is unable to draw text"). Plots without tick labels are not
//! worth having, so this module draws its own: a raster with anti-aliased
//! thick lines ([`canvas`]), a 5×7 bitmap font embedded in the source
//! ([`font`]), 1/2/5 × 10^k ticks ([`ticks`]), and the `png` crate to encode.
//! No font files, no system libraries.

pub mod canvas;
pub mod font;
pub mod ticks;

use crate::data::contact_sheet::encode_png;
use crate::error::{Error, Result};
pub use canvas::Rgb;
use canvas::{Canvas, Coverage};
pub use ticks::{nice_ticks, Ticks};

/// One curve: points joined by a line `width` pixels thick (0: no line), with a
/// dot of `marker_radius` pixels on each point (0: no dots). Points with a
/// non-finite coordinate are skipped and break the line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub colour: Rgb,
    pub width: f64,
    pub marker_radius: f64,
}

impl Series {
    /// A plain line.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>, colour: Rgb, width: f64) -> Series {
        Series { name: name.into(), points, colour, width, marker_radius: 0.0 }
    }

    /// Unjoined dots.
    pub fn markers(name: impl Into<String>, points: Vec<(f64, f64)>, colour: Rgb, radius: f64) -> Series {
        Series { name: name.into(), points, colour, width: 0.0, marker_radius: radius }
    }
}

/// Colours that stay apart on white and from each other.
pub mod colours {
    use super::Rgb;
    pub const BLUE: Rgb = [31, 90, 180];
    pub const LIGHT_BLUE: Rgb = [160, 192, 232];
    pub const ORANGE: Rgb = [235, 120, 20];
    pub const GREEN: Rgb = [30, 140, 70];
    pub const RED: Rgb = [200, 40, 40];
    pub const PURPLE: Rgb = [120, 70, 170];
}

const BACKGROUND: Rgb = [255, 255, 255];
const INK: Rgb = [25, 25, 25];
const FRAME: Rgb = [90, 90, 90];
const GRID: Rgb = [228, 228, 228];

/// Smallest and largest image sides accepted.
const MIN_SIDE: usize = 160;
const MAX_SIDE: usize = 8192;
/// About this many tick intervals per axis.
const TICK_TARGET: usize = 5;

/// Renders `series` on shared axes as a `width_px` × `height_px` PNG, with a
/// title, axis labels, numeric ticks, and a legend when there is more than one
/// series. Empty series, a single point, or non-finite values still give a valid plot.
pub fn line_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    width_px: usize,
    height_px: usize,
) -> Result<Vec<u8>> {
    let canvas = render(title, x_label, y_label, series, width_px, height_px)?;
    encode_png(canvas.width, canvas.height, &canvas.rgb)
}

/// Where things go: the plot area in pixels and the axes' value ranges.
struct Frame {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
    x_ticks: Ticks,
    y_ticks: Ticks,
}

impl Frame {
    /// Pixel-centre coordinates of data point (x, y); the axis ends map to the area's edge pixels.
    fn to_pixel(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let fx = (x - self.x_ticks.lo) / (self.x_ticks.hi - self.x_ticks.lo);
        let fy = (y - self.y_ticks.lo) / (self.y_ticks.hi - self.y_ticks.lo);
        (
            self.x0 as f64 + fx * (self.x1 - self.x0 - 1) as f64,
            (self.y1 - 1) as f64 - fy * (self.y1 - self.y0 - 1) as f64,
        )
    }
}

fn render(title: &str, x_label: &str, y_label: &str, series: &[Series], width: usize, height: usize) -> Result<Canvas> {
    for (name, side) in [("width", width), ("height", height)] {
        if !(MIN_SIDE..=MAX_SIDE).contains(&side) {
            return Err(Error::invalid(
                "line_plot",
                format!("image {name} {side} px is outside {MIN_SIDE}..={MAX_SIDE}; pick a size in that range"),
            ));
        }
    }
    // Text grows with the image so labels stay legible on large plots.
    let scale = if width.min(height) >= 400 { 2 } else { 1 };
    let title_scale = scale + 1;
    let pad = 5 * scale as i64;
    let tick_len = 3 * scale as i64;
    let text_h = font::text_height(scale) as i64;

    let finite = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x_min, x_max) =
        (finite().map(|p| p.0).fold(f64::INFINITY, f64::min), finite().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max));
    // Fewer x ticks on narrow images, so that labels keep a gap between them (about
    // 3/4 of the width is plot area).
    let x_ticks = (2..=TICK_TARGET)
        .rev()
        .map(|target| nice_ticks(x_min, x_max, target))
        .find(|t| {
            let labels_w: usize =
                t.labels().iter().map(|l| font::text_width(l, scale) + 3 * font::ADVANCE * scale).sum();
            labels_w <= width * 3 / 4
        })
        .unwrap_or_else(|| nice_ticks(x_min, x_max, 1));
    let y_ticks = nice_ticks(
        finite().map(|p| p.1).fold(f64::INFINITY, f64::min),
        finite().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        TICK_TARGET,
    );
    let x_labels = x_ticks.labels();
    let y_labels = y_ticks.labels();
    let y_labels_w = y_labels.iter().map(|l| font::text_width(l, scale)).max().unwrap_or(0) as i64;
    let last_x_label_w = x_labels.last().map_or(0, |l| font::text_width(l, scale)) as i64;

    let title_h = if title.is_empty() { 0 } else { font::text_height(title_scale) as i64 + pad };
    let y_label_h = if y_label.is_empty() { 0 } else { text_h + pad };
    let x_label_h = if x_label.is_empty() { 0 } else { text_h + pad };
    let frame = Frame {
        x0: pad + y_label_h + y_labels_w + pad / 2 + tick_len,
        // Room for half of the top y tick label above the plot area.
        y0: pad + title_h + text_h / 2,
        x1: width as i64 - (last_x_label_w / 2 + pad).max(2 * pad),
        y1: height as i64 - (tick_len + pad / 2 + text_h + pad + x_label_h),
        x_ticks,
        y_ticks,
    };
    let (plot_w, plot_h) = (frame.x1 - frame.x0, frame.y1 - frame.y0);
    if plot_w < 40 || plot_h < 40 {
        return Err(Error::invalid(
            "line_plot",
            format!(
                "a {width}x{height} image leaves a {plot_w}x{plot_h} px plot area after labels; make the image larger"
            ),
        ));
    }

    let mut canvas = Canvas::new(width, height, BACKGROUND);
    draw_grid_and_ticks(&mut canvas, &frame, &x_labels, &y_labels, scale, tick_len, pad);

    // `drawn` remembers all series ink, to keep the legend off it.
    let mut drawn = Coverage::new(frame.x0, frame.y0, plot_w as usize, plot_h as usize);
    for s in series {
        draw_series(&mut canvas, &frame, s, &mut drawn);
    }
    canvas.outline_rect(frame.x0 - 1, frame.y0 - 1, frame.x1 + 1, frame.y1 + 1, FRAME);
    if finite().next().is_none() {
        let note = "no data";
        let w = font::text_width(note, scale) as i64;
        canvas.text((frame.x0 + frame.x1 - w) / 2, (frame.y0 + frame.y1 - text_h) / 2, note, scale, FRAME);
    }

    if !title.is_empty() {
        let w = font::text_width(title, title_scale) as i64;
        let x = ((frame.x0 + frame.x1) / 2 - w / 2).clamp(0, (width as i64 - w).max(0));
        canvas.text(x, pad, title, title_scale, INK);
    }
    if !x_label.is_empty() {
        let w = font::text_width(x_label, scale) as i64;
        let x = ((frame.x0 + frame.x1) / 2 - w / 2).clamp(0, (width as i64 - w).max(0));
        canvas.text(x, height as i64 - pad - text_h, x_label, scale, INK);
    }
    if !y_label.is_empty() {
        let h = font::text_width(y_label, scale) as i64;
        let y = ((frame.y0 + frame.y1) / 2 - h / 2).clamp(0, (height as i64 - h).max(0));
        canvas.text_vertical(pad, y, y_label, scale, INK);
    }
    if series.len() > 1 {
        draw_legend(&mut canvas, &frame, series, &drawn, scale, pad);
    }
    Ok(canvas)
}

/// One series through its own coverage mask (clipped to the plot area), then composited once.
fn draw_series(canvas: &mut Canvas, frame: &Frame, s: &Series, drawn: &mut Coverage) {
    let mut mask = Coverage::new(frame.x0, frame.y0, drawn.width, drawn.height);
    let finite_at = |i: usize| s.points.get(i).is_some_and(|p| p.0.is_finite() && p.1.is_finite());
    let mut previous: Option<(f64, f64)> = None;
    for (i, &p) in s.points.iter().enumerate() {
        if !finite_at(i) {
            previous = None;
            continue;
        }
        let here = frame.to_pixel(p);
        if s.width > 0.0 {
            match previous {
                Some(before) => mask.segment(before, here, s.width),
                // A point with no neighbour to join would vanish as a line: show it as a dot.
                None if !finite_at(i + 1) => mask.dot(here, s.width.max(2.5)),
                None => {}
            }
        }
        if s.marker_radius > 0.0 {
            mask.dot(here, s.marker_radius);
        }
        previous = Some(here);
    }
    mask.composite(canvas, s.colour);
    for (d, m) in drawn.alpha.iter_mut().zip(&mask.alpha) {
        *d = d.max(*m);
    }
}

/// Grid lines across the plot area at each tick, tick marks outside it, and the tick labels.
fn draw_grid_and_ticks(
    canvas: &mut Canvas,
    frame: &Frame,
    x_labels: &[String],
    y_labels: &[String],
    scale: usize,
    tick_len: i64,
    pad: i64,
) {
    for (&v, label) in frame.x_ticks.values.iter().zip(x_labels) {
        let x = frame.to_pixel((v, frame.y_ticks.lo)).0.round() as i64;
        canvas.fill_rect(x, frame.y0, x + 1, frame.y1, GRID);
        canvas.fill_rect(x, frame.y1, x + 1, frame.y1 + tick_len, FRAME);
        let w = font::text_width(label, scale) as i64;
        let left = (x - w / 2).clamp(0, (canvas.width as i64 - w).max(0));
        canvas.text(left, frame.y1 + tick_len + pad / 2, label, scale, INK);
    }
    for (&v, label) in frame.y_ticks.values.iter().zip(y_labels) {
        let y = frame.to_pixel((frame.x_ticks.lo, v)).1.round() as i64;
        canvas.fill_rect(frame.x0, y, frame.x1, y + 1, GRID);
        canvas.fill_rect(frame.x0 - tick_len, y, frame.x0, y + 1, FRAME);
        let w = font::text_width(label, scale) as i64;
        // Centre on the tick by the glyphs' cap height (7 of the 9 rows).
        let top = y - (7 * scale as i64) / 2;
        canvas.text(frame.x0 - tick_len - pad / 2 - w, top, label, scale, INK);
    }
}

/// A boxed key of series names and swatches, in the plot corner with the least ink.
fn draw_legend(canvas: &mut Canvas, frame: &Frame, series: &[Series], drawn: &Coverage, scale: usize, pad: i64) {
    let text_h = font::text_height(scale) as i64;
    let row_h = text_h + 2 * scale as i64;
    let swatch_w = 12 * scale as i64;
    let names_w = series.iter().map(|s| font::text_width(&s.name, scale)).max().unwrap_or(0) as i64;
    let (box_w, box_h) = (pad + swatch_w + pad + names_w + pad, pad + row_h * series.len() as i64 + pad / 2);
    let inset = pad;
    let corners = [
        (frame.x1 - inset - box_w, frame.y0 + inset),
        (frame.x0 + inset, frame.y0 + inset),
        (frame.x1 - inset - box_w, frame.y1 - inset - box_h),
        (frame.x0 + inset, frame.y1 - inset - box_h),
    ];
    let (bx, by) =
        corners.into_iter().min_by_key(|&(x, y)| drawn.count_covered(x, y, x + box_w, y + box_h)).unwrap_or(corners[0]);

    for y in by..by + box_h {
        for x in bx..bx + box_w {
            canvas.blend(x, y, BACKGROUND, 0.9);
        }
    }
    canvas.outline_rect(bx, by, bx + box_w, by + box_h, FRAME);
    for (i, s) in series.iter().enumerate() {
        let top = by + pad + row_h * i as i64;
        let mid = (top + (7 * scale as i64) / 2) as f64;
        let mut mask = Coverage::new(bx + pad, top, swatch_w as usize, row_h as usize);
        let (left, right) = ((bx + pad) as f64 + 1.0, (bx + pad + swatch_w) as f64 - 2.0);
        if s.width > 0.0 {
            mask.segment((left, mid), (right, mid), s.width);
        }
        if s.marker_radius > 0.0 {
            mask.dot(((left + right) / 2.0, mid), s.marker_radius);
        }
        mask.composite(canvas, s.colour);
        canvas.text(bx + pad + swatch_w + pad, top, &s.name, scale, INK);
    }
}
