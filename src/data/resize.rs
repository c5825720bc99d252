//! Antialiased bilinear resampling of a crop (PIL's and torchvision's
//! `antialias=True` resize).
//!
//! Plain bilinear interpolation reads only the 2×2 source pixels nearest each
//! output pixel, so shrinking a crop by 4× skips three pixels in four and thin
//! features flicker in and out between frames. Here the triangle filter is
//! stretched by the shrink factor: each output pixel averages every source
//! pixel under its footprint. When enlarging, the filter is plain bilinear
//! (align_corners = false). The filter is separable, and its taps depend only
//! on the crop, so they are computed once per clip and reused for every frame.

/// For each output pixel along one axis: the first source index and the
/// weights of consecutive source pixels from there (summing to 1).
#[derive(Clone, Debug)]
pub struct Taps {
    pub first: Vec<usize>,
    pub weights: Vec<Vec<f32>>,
}

impl Taps {
    /// Taps that map source pixels `start..start + len` onto `out` pixels.
    /// Requires `len >= 1` and `out >= 1`.
    pub fn new(start: usize, len: usize, out: usize) -> Taps {
        let scale = len as f64 / out as f64;
        let stretch = scale.max(1.0); // the filter widens only when shrinking
        let support = stretch; // triangle of half-width 1, stretched
        let (mut first, mut weights) = (Vec::with_capacity(out), Vec::with_capacity(out));
        for i in 0..out {
            let centre = (i as f64 + 0.5) * scale; // in crop coordinates
            let lo = ((centre - support).floor().max(0.0)) as usize;
            let hi = ((centre + support).ceil() as usize).min(len);
            let mut w: Vec<f64> =
                (lo..hi).map(|j| (1.0 - ((j as f64 + 0.5 - centre) / stretch).abs()).max(0.0)).collect();
            // The source pixel nearest the centre is within half a pixel, so the total is > 0.
            let total: f64 = w.iter().sum::<f64>().max(f64::MIN_POSITIVE);
            w.iter_mut().for_each(|x| *x /= total);
            first.push(start + lo);
            weights.push(w.into_iter().map(|x| x as f32).collect());
        }
        Taps { first, weights }
    }
}

/// Resamples one H×W×3 u8 frame's crop into `out` (S×S RGB in [0, 1]),
/// mirrored left–right when `flip`. `rows`/`cols` come from `Taps::new` over
/// the crop's rows and columns; `scratch` is reused between frames.
pub fn resample_frame(
    frame: &[u8],
    width: usize,
    rows: &Taps,
    cols: &Taps,
    flip: bool,
    scratch: &mut Vec<[f32; 3]>,
    out: &mut [[f32; 3]],
) {
    let s = cols.first.len();
    // Horizontal pass over every source row a vertical tap will read.
    let (row_lo, row_hi) = (
        rows.first.iter().copied().min().unwrap_or(0),
        rows.first.iter().zip(&rows.weights).map(|(f, w)| f + w.len()).max().unwrap_or(0),
    );
    scratch.clear();
    scratch.resize((row_hi - row_lo) * s, [0.0; 3]);
    for y in row_lo..row_hi {
        let src = &frame[y * width * 3..(y + 1) * width * 3];
        let dst = &mut scratch[(y - row_lo) * s..(y - row_lo + 1) * s];
        for (ox, (&x0, w)) in cols.first.iter().zip(&cols.weights).enumerate() {
            let mut acc = [0f32; 3];
            for (k, &wk) in w.iter().enumerate() {
                let p = &src[(x0 + k) * 3..(x0 + k) * 3 + 3];
                for c in 0..3 {
                    acc[c] += wk * p[c] as f32;
                }
            }
            dst[if flip { s - 1 - ox } else { ox }] = acc.map(|v| v / 255.0);
        }
    }
    // Vertical pass.
    for (oy, (&y0, w)) in rows.first.iter().zip(&rows.weights).enumerate() {
        let dst = &mut out[oy * s..(oy + 1) * s];
        dst.iter_mut().for_each(|p| *p = [0.0; 3]);
        for (k, &wk) in w.iter().enumerate() {
            let src = &scratch[(y0 + k - row_lo) * s..(y0 + k - row_lo + 1) * s];
            for (d, p) in dst.iter_mut().zip(src) {
                for c in 0..3 {
                    d[c] += wk * p[c];
                }
            }
        }
        // Weights sum to 1 up to rounding; keep values inside [0, 1].
        dst.iter_mut().for_each(|p| p.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0)));
    }
}
