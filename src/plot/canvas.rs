//! An RGB8 raster to draw plots on: filled rectangles, bitmap text, and
//! anti-aliased thick polylines and dots through a coverage mask.

use super::font;

pub type Rgb = [u8; 3];

/// Pixels are stored row-major, 3 bytes each, top row first.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Canvas {
        Canvas { width, height, rgb: background.repeat(width * height) }
    }

    /// Mixes `colour` into pixel (x, y) with opacity `alpha` in [0, 1]; pixels outside are ignored.
    pub fn blend(&mut self, x: i64, y: i64, colour: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height || alpha <= 0.0 {
            return;
        }
        let a = alpha.min(1.0);
        let i = (y as usize * self.width + x as usize) * 3;
        for (dst, &src) in self.rgb[i..i + 3].iter_mut().zip(&colour) {
            *dst = (*dst as f32 * (1.0 - a) + src as f32 * a).round() as u8;
        }
    }

    /// Fills the pixels x0..x1, y0..y1 (clipped to the canvas).
    pub fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: Rgb) {
        for y in y0.max(0)..y1.min(self.height as i64) {
            for x in x0.max(0)..x1.min(self.width as i64) {
                self.blend(x, y, colour, 1.0);
            }
        }
    }

    /// A 1-pixel outline just inside x0..x1, y0..y1.
    pub fn outline_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: Rgb) {
        self.fill_rect(x0, y0, x1, y0 + 1, colour);
        self.fill_rect(x0, y1 - 1, x1, y1, colour);
        self.fill_rect(x0, y0, x0 + 1, y1, colour);
        self.fill_rect(x1 - 1, y0, x1, y1, colour);
    }

    /// Draws `text` left to right with its cell's top-left corner at (x, y).
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, colour: Rgb) {
        self.glyphs(text, scale, colour, |gx, gy| (x + gx, y + gy));
    }

    /// Draws `text` turned 90° anticlockwise (reading bottom to top); (x, y) is the
    /// top-left corner of the turned block, which is `text_height` wide and `text_width` tall.
    pub fn text_vertical(&mut self, x: i64, y: i64, text: &str, scale: usize, colour: Rgb) {
        let len = font::text_width(text, scale) as i64;
        // Unturned (u, v) lands at (x + v, y + len - 1 - u).
        self.glyphs(text, scale, colour, |u, v| (x + v, y + len - 1 - u));
    }

    /// Inks every scaled glyph pixel of `text`, placing unturned offsets (u, v) with `place`.
    fn glyphs(&mut self, text: &str, scale: usize, colour: Rgb, place: impl Fn(i64, i64) -> (i64, i64)) {
        for (i, c) in text.chars().enumerate() {
            let g = font::glyph_or_placeholder(c);
            for gy in 0..font::GLYPH_HEIGHT {
                for gx in 0..font::GLYPH_WIDTH {
                    if !font::is_inked(&g, gx, gy) {
                        continue;
                    }
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let u = ((i * font::ADVANCE + gx) * scale + sx) as i64;
                            let v = (gy * scale + sy) as i64;
                            let (px, py) = place(u, v);
                            self.blend(px, py, colour, 1.0);
                        }
                    }
                }
            }
        }
    }
}

/// How much of each pixel of a rectangular region a shape covers, in [0, 1].
/// Shapes take the maximum, so overlapping segments of one line do not darken
/// where they meet; the mask is composited onto the canvas once per series.
pub struct Coverage {
    pub x0: i64,
    pub y0: i64,
    pub width: usize,
    pub height: usize,
    pub alpha: Vec<f32>,
}

impl Coverage {
    /// An empty mask over the pixels x0..x0+width, y0..y0+height.
    pub fn new(x0: i64, y0: i64, width: usize, height: usize) -> Coverage {
        Coverage { x0, y0, width, height, alpha: vec![0.0; width * height] }
    }

    /// A segment from `a` to `b` (pixel-centre coordinates) `line_width` pixels thick, round-capped.
    pub fn segment(&mut self, a: (f64, f64), b: (f64, f64), line_width: f64) {
        let reach = line_width / 2.0 + 0.5;
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        self.cover_box(
            a.0.min(b.0) - reach,
            a.1.min(b.1) - reach,
            a.0.max(b.0) + reach,
            a.1.max(b.1) + reach,
            |px, py| {
                // Distance from the pixel centre to the nearest point of the segment.
                let t = if len2 > 0.0 { (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let (cx, cy) = (a.0 + t * dx, a.1 + t * dy);
                let d = ((px - cx).powi(2) + (py - cy).powi(2)).sqrt();
                reach - d
            },
        );
    }

    /// A filled disc of `radius` pixels centred on `c`.
    pub fn dot(&mut self, c: (f64, f64), radius: f64) {
        let reach = radius + 0.5;
        self.cover_box(c.0 - reach, c.1 - reach, c.0 + reach, c.1 + reach, |px, py| {
            reach - ((px - c.0).powi(2) + (py - c.1).powi(2)).sqrt()
        });
    }

    /// Raises each pixel in the box (clipped to the mask) to `coverage(centre_x, centre_y)` clamped to [0, 1].
    fn cover_box(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, coverage: impl Fn(f64, f64) -> f64) {
        if !(x0.is_finite() && y0.is_finite() && x1.is_finite() && y1.is_finite()) {
            return;
        }
        let col0 = (x0.floor() as i64).max(self.x0);
        let col1 = (x1.ceil() as i64).min(self.x0 + self.width as i64 - 1);
        let row0 = (y0.floor() as i64).max(self.y0);
        let row1 = (y1.ceil() as i64).min(self.y0 + self.height as i64 - 1);
        for py in row0..=row1 {
            for px in col0..=col1 {
                let c = coverage(px as f64, py as f64).clamp(0.0, 1.0) as f32;
                let i = (py - self.y0) as usize * self.width + (px - self.x0) as usize;
                if c > self.alpha[i] {
                    self.alpha[i] = c;
                }
            }
        }
    }

    /// Blends `colour` onto `canvas` with each pixel's coverage as its opacity.
    pub fn composite(&self, canvas: &mut Canvas, colour: Rgb) {
        for row in 0..self.height {
            for col in 0..self.width {
                let a = self.alpha[row * self.width + col];
                if a > 0.0 {
                    canvas.blend(self.x0 + col as i64, self.y0 + row as i64, colour, a);
                }
            }
        }
    }

    /// How many pixels in x0..x1, y0..y1 are at least half covered.
    pub fn count_covered(&self, x0: i64, y0: i64, x1: i64, y1: i64) -> usize {
        let mut n = 0;
        for py in y0.max(self.y0)..y1.min(self.y0 + self.height as i64) {
            for px in x0.max(self.x0)..x1.min(self.x0 + self.width as i64) {
                if self.alpha[(py - self.y0) as usize * self.width + (px - self.x0) as usize] >= 0.5 {
                    n += 1;
                }
            }
        }
        n
    }
}
