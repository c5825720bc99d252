//! "Nice" axis ticks: steps of 1, 2 or 5 × 10^k, and labels printed with just
//! the digits the step needs.

/// An axis range widened to whole steps, and the tick values on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    /// The axis runs from `lo` to `hi`: the data range rounded outwards to whole steps.
    pub lo: f64,
    pub hi: f64,
    /// Distance between ticks: `mantissa × 10^exponent`, mantissa 1, 2 or 5.
    pub step: f64,
    pub mantissa: u32,
    pub exponent: i32,
    /// Tick positions from `lo` to `hi` inclusive.
    pub values: Vec<f64>,
}

/// Ticks for data spanning `lo..=hi`, about `target` intervals (at least 1).
/// Non-finite bounds, a reversed range, or a range of one value still give a
/// usable axis: a missing range becomes 0..1 and a single value `v` becomes
/// `v ± 10%` (`±1` for 0), so empty and single-point plots have ticks too.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let (mut lo, mut hi) = match (lo.is_finite(), hi.is_finite()) {
        (true, true) => (lo.min(hi), lo.max(hi)),
        (true, false) => (lo, lo),
        (false, true) => (hi, hi),
        (false, false) => (0.0, 1.0),
    };
    // Keep steps representable: spans must not overflow, and 10^k must not underflow to 0.
    let representable = |v: f64| if v.abs() < 1e-200 { 0.0 } else { v.clamp(-1e300, 1e300) };
    (lo, hi) = (representable(lo), representable(hi));
    let magnitude = lo.abs().max(hi.abs());
    if hi - lo <= magnitude * 1e-9 {
        let half = if magnitude == 0.0 { 1.0 } else { magnitude * 0.1 };
        let mid = lo / 2.0 + hi / 2.0;
        (lo, hi) = (mid - half, mid + half);
    }
    let (mantissa, exponent, first, last) = nice_step(lo, hi, target.max(1));
    let step = scaled(mantissa as f64, exponent);
    let values: Vec<f64> = (first..=last).map(|i| scaled(i as f64 * mantissa as f64, exponent)).collect();
    Ticks { lo: values[0], hi: values[values.len() - 1], step, mantissa, exponent, values }
}

/// Of the 1/2/5 × 10^k steps near `(hi - lo) / target`, the one whose rounded-out
/// axis has the number of intervals closest to `target` (the wider step on a tie).
/// Returns (mantissa, exponent, first, last): ticks are `i × step` for i in first..=last.
fn nice_step(lo: f64, hi: f64, target: usize) -> (u32, i32, i64, i64) {
    let raw = (hi / 2.0 - lo / 2.0) / (target as f64 / 2.0);
    let base = raw.log10().floor() as i32;
    let mut best = (1, base, 0, 1);
    let mut best_miss = usize::MAX;
    for exponent in base - 1..=base + 1 {
        for mantissa in [1u32, 2, 5] {
            let step = scaled(mantissa as f64, exponent);
            // Round outwards to whole steps, forgiving float error so that a bound
            // already on a multiple of the step does not gain a whole extra step.
            let (qlo, qhi) = (lo / step, hi / step);
            let first = (qlo + 1e-9 * qlo.abs().max(1.0)).floor();
            let last = (qhi - 1e-9 * qhi.abs().max(1.0)).ceil().max(first + 1.0);
            let intervals = last - first;
            if intervals > 1000.0 {
                continue;
            }
            let miss = (intervals as usize).abs_diff(target);
            if miss <= best_miss {
                (best, best_miss) = ((mantissa, exponent, first as i64, last as i64), miss);
            }
        }
    }
    best
}

/// `units × 10^exponent`, dividing for negative exponents so that e.g. 3 × 10^-4 is exactly the float 0.0003.
fn scaled(units: f64, exponent: i32) -> f64 {
    if exponent >= 0 {
        units * 10f64.powi(exponent)
    } else {
        units / 10f64.powi(-exponent)
    }
}

impl Ticks {
    /// The text for tick `v`: fixed-point with as many decimals as the step has
    /// ("0.25", "1500"), or scientific with one exponent per axis for very large or very
    /// small values ("0.5e-4", "1.0e-4", "2e6").
    pub fn label(&self, v: f64) -> String {
        // Snap float noise (e.g. 3 × 0.1 = 0.30000000000000004) and negative zero away.
        let v = if v.abs() < self.step * 1e-6 { 0.0 } else { v };
        let largest = self.lo.abs().max(self.hi.abs());
        let scientific = self.exponent >= 6 || (self.exponent <= -4 && largest < 1e-2);
        if !scientific {
            let decimals = (-self.exponent).max(0) as usize;
            return format!("{v:.decimals$}");
        }
        if v == 0.0 {
            return "0".to_string();
        }
        // One exponent for the whole axis (the largest value's), so labels line up:
        // "0.5e-4", "1.0e-4", "1.5e-4"; mantissa digits down to the step's exponent.
        let axis_exponent = (largest.log10() + 1e-9).floor() as i32;
        let digits = (axis_exponent - self.exponent).max(0) as usize;
        let mantissa = v / 10f64.powi(axis_exponent);
        format!("{mantissa:.digits$}e{axis_exponent}")
    }

    /// The labels of all tick values.
    pub fn labels(&self) -> Vec<String> {
        self.values.iter().map(|&v| self.label(v)).collect()
    }
}
