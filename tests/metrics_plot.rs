//! The metrics log (fresh, resumed, torn lines) and the PNG line plots (size,
//! orientation, ticks, degenerate data).

use serde_json::{json, Value};
use simclr::metrics::{moving_average, MetricsLog, LOG_FILE, LOSS_PLOT, LR_PLOT};
use simclr::plot::{colours, font, line_plot, nice_ticks, Rgb, Series};
use simclr::Error;
use std::path::{Path, PathBuf};

/// A fresh, empty directory under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("simclr-metrics-plot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Decodes PNG bytes to (width, height, RGB8 pixels).
fn decode(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut reader = png::Decoder::new(bytes).read_info().expect("valid PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("valid PNG data");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn decode_file(path: &Path) -> (usize, usize, Vec<u8>) {
    decode(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// (x, y) of every pixel of exactly `colour`.
fn pixels_of(width: usize, rgb: &[u8], colour: Rgb) -> Vec<(usize, usize)> {
    rgb.chunks_exact(3).enumerate().filter(|(_, p)| *p == colour).map(|(i, _)| (i % width, i / width)).collect()
}

/// Counts `colour` pixels in the four quadrants of their own bounding box: [upper-left, upper-right, lower-left, lower-right].
fn quadrant_counts(pixels: &[(usize, usize)]) -> [usize; 4] {
    let (x0, x1) = (pixels.iter().map(|p| p.0).min().unwrap(), pixels.iter().map(|p| p.0).max().unwrap());
    let (y0, y1) = (pixels.iter().map(|p| p.1).min().unwrap(), pixels.iter().map(|p| p.1).max().unwrap());
    let (mx, my) = ((x0 + x1) as f64 / 2.0, (y0 + y1) as f64 / 2.0);
    let mut counts = [0; 4];
    for &(x, y) in pixels {
        let (fx, fy) = (x as f64, y as f64);
        // Pixels within 10% of the centre lines are ambiguous (a thick line crosses there).
        if (fx - mx).abs() < (x1 - x0) as f64 * 0.1 || (fy - my).abs() < (y1 - y0) as f64 * 0.1 {
            continue;
        }
        counts[usize::from(fx > mx) + 2 * usize::from(fy > my)] += 1;
    }
    counts
}

#[test]
fn plot_decodes_to_the_requested_size() {
    let s = Series::line("loss", vec![(0.0, 5.0), (50.0, 3.0), (100.0, 2.5)], colours::BLUE, 2.0);
    for (w, h) in [(960, 540), (640, 480), (300, 200), (160, 160), (1600, 400)] {
        let (dw, dh, rgb) =
            decode(&line_plot("Training loss", "step", "loss", std::slice::from_ref(&s), w, h).unwrap());
        assert_eq!((dw, dh), (w, h));
        assert!(!pixels_of(dw, &rgb, colours::BLUE).is_empty(), "{w}x{h}: the series is drawn");
    }
}

#[test]
fn rising_series_goes_from_lower_left_to_upper_right() {
    let rising: Vec<(f64, f64)> = (0..=100).map(|i| (i as f64, i as f64 * 0.5)).collect();
    let png =
        line_plot("rising", "x", "y", &[Series::line("up", rising.clone(), colours::RED, 3.0)], 800, 500).unwrap();
    let (w, h, rgb) = decode(&png);
    let red = pixels_of(w, &rgb, colours::RED);
    let span = red.iter().map(|p| p.0).max().unwrap() - red.iter().map(|p| p.0).min().unwrap();
    assert!(span > w / 2, "the line spans the plot area ({span} of {w} px)");
    assert!(red.iter().map(|p| p.1).max().unwrap() - red.iter().map(|p| p.1).min().unwrap() > h / 2);
    let [upper_left, upper_right, lower_left, lower_right] = quadrant_counts(&red);
    assert!(lower_left > 50 && upper_right > 50, "ink at lower-left {lower_left} and upper-right {upper_right}");
    assert_eq!((upper_left, lower_right), (0, 0), "no ink in the upper-left or lower-right");

    // The same data falling must be mirrored, or the check above proves nothing.
    let falling: Vec<(f64, f64)> = rising.iter().map(|&(x, y)| (x, -y)).collect();
    let png = line_plot("falling", "x", "y", &[Series::line("down", falling, colours::RED, 3.0)], 800, 500).unwrap();
    let (w, _, rgb) = decode(&png);
    let [upper_left, upper_right, lower_left, lower_right] = quadrant_counts(&pixels_of(w, &rgb, colours::RED));
    assert!(upper_left > 50 && lower_right > 50);
    assert_eq!((lower_left, upper_right), (0, 0));
}

#[test]
fn ticks_are_nice_cover_the_data_and_number_about_five() {
    let ranges = [
        (0.0, 1.0),
        (0.0, 63.0),
        (3.7, 9.2),
        (-12.5, 40.0),
        (0.0, 0.0003),
        (1e-5, 3.3e-4),
        (4.2, 5.31),
        (0.0, 100_000.0),
        (1.0001, 1.0002),
        (-3e7, 1e9),
        (123.456, 123.457),
    ];
    for (lo, hi) in ranges {
        let t = nice_ticks(lo, hi, 5);
        assert!([1, 2, 5].contains(&t.mantissa), "{lo}..{hi}: mantissa {}", t.mantissa);
        let step = t.mantissa as f64 * 10f64.powi(t.exponent);
        assert!(
            (t.step - step).abs() <= step * 1e-12,
            "{lo}..{hi}: step {} is {} x 10^{}",
            t.step,
            t.mantissa,
            t.exponent
        );
        assert!((3..=11).contains(&t.values.len()), "{lo}..{hi}: {} ticks {:?}", t.values.len(), t.values);
        for pair in t.values.windows(2) {
            assert!(((pair[1] - pair[0]) / step - 1.0).abs() < 1e-6, "{lo}..{hi}: even spacing {:?}", t.values);
        }
        for &v in &t.values {
            assert!(((v / step) - (v / step).round()).abs() < 1e-6, "{lo}..{hi}: {v} is a multiple of {step}");
        }
        assert!(
            t.lo <= lo && t.hi >= hi && t.lo > lo - step && t.hi < hi + step,
            "{lo}..{hi}: axis {}..{}",
            t.lo,
            t.hi
        );
        assert_eq!((t.values[0], *t.values.last().unwrap()), (t.lo, t.hi));
    }
    // Exactly the decimal floats, not accumulated sums like 0.6000000000000001.
    assert_eq!(nice_ticks(0.0, 1.0, 5).values, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    assert_eq!(nice_ticks(0.0, 0.0003, 3).values, vec![0.0, 0.0001, 0.0002, 0.0003]);
    assert_eq!(nice_ticks(0.0, 63.0, 5).values, vec![0.0, 20.0, 40.0, 60.0, 80.0]);
}

#[test]
fn tick_labels_show_the_digits_the_step_needs() {
    assert_eq!(nice_ticks(0.0, 1.0, 5).labels(), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
    assert_eq!(nice_ticks(0.0, 63.0, 5).labels(), ["0", "20", "40", "60", "80"]);
    assert_eq!(nice_ticks(0.0, 0.0003, 5).labels(), ["0", "0.5e-4", "1.0e-4", "1.5e-4", "2.0e-4", "2.5e-4", "3.0e-4"]);
    assert_eq!(nice_ticks(0.0, 4e6, 5).labels(), ["0", "1e6", "2e6", "3e6", "4e6"]);
    assert_eq!(nice_ticks(2e-5, 9e-5, 5).labels(), ["0.2e-4", "0.4e-4", "0.6e-4", "0.8e-4", "1.0e-4"]);
    assert_eq!(nice_ticks(-1.0, 1.0, 5).labels(), ["-1.0", "-0.5", "0.0", "0.5", "1.0"]);
}

#[test]
fn degenerate_ranges_still_give_finite_ticks() {
    for (lo, hi) in [
        (5.0, 5.0),
        (0.0, 0.0),
        (0.0003, 0.0003),
        (f64::NAN, f64::NAN),
        (f64::INFINITY, f64::NEG_INFINITY),
        (f64::NAN, 2.0),
        (1e-310, 2e-310),
        (-1e308, 1e308),
        (9.0, 1.0),
    ] {
        let t = nice_ticks(lo, hi, 5);
        assert!(t.values.len() >= 2, "{lo}..{hi}: {:?}", t.values);
        assert!(t.values.iter().all(|v| v.is_finite()) && t.step > 0.0 && t.hi > t.lo, "{lo}..{hi}: {t:?}");
        assert!(t.labels().iter().all(|l| !l.contains("NaN") && !l.contains("inf")), "{lo}..{hi}: {:?}", t.labels());
    }
    let single = nice_ticks(5.0, 5.0, 5);
    assert!(single.lo < 5.0 && single.hi > 5.0);
}

#[test]
fn font_covers_printable_ascii_with_distinct_glyphs() {
    assert_eq!(font::malformed_glyphs(), Vec::<char>::new());
    let glyphs: Vec<_> =
        (' '..='~').map(|c| (c, font::glyph(c).unwrap_or_else(|| panic!("no glyph for {c:?}")))).collect();
    for (i, (a, ga)) in glyphs.iter().enumerate() {
        assert_eq!(ga.iter().all(|&r| r == 0), *a == ' ', "only the space is blank ({a:?})");
        for (b, gb) in &glyphs[i + 1..] {
            assert_ne!(ga, gb, "{a:?} and {b:?} look the same");
        }
    }
    assert!(font::glyph('µ').is_none());
    assert_eq!(font::text_width("", 2), 0);
    assert_eq!(font::text_width("ab", 1), 11);
}

#[test]
fn legend_appears_only_with_more_than_one_series() {
    // A series with no finite points shows only through its legend swatch.
    let ghost = Series::markers("ghost", vec![(f64::NAN, 1.0)], colours::PURPLE, 4.0);
    let line = Series::line("line", vec![(0.0, 0.0), (1.0, 1.0)], colours::BLUE, 2.0);
    let (w, _, rgb) = decode(&line_plot("t", "x", "y", &[line.clone(), ghost.clone()], 640, 400).unwrap());
    assert!(pixels_of(w, &rgb, colours::PURPLE).len() > 10, "legend swatch drawn");
    let (w, _, rgb) = decode(&line_plot("t", "x", "y", &[ghost], 640, 400).unwrap());
    assert!(pixels_of(w, &rgb, colours::PURPLE).is_empty(), "no legend for a single series");
}

#[test]
fn degenerate_series_give_valid_plots() {
    let cases: Vec<(&str, Vec<Series>)> = vec![
        ("no series", vec![]),
        ("empty series", vec![Series::line("a", vec![], colours::BLUE, 2.0)]),
        ("single point", vec![Series::line("a", vec![(3.0, 0.5)], colours::BLUE, 2.0)]),
        ("all NaN", vec![Series::line("a", vec![(f64::NAN, f64::NAN), (1.0, f64::INFINITY)], colours::BLUE, 2.0)]),
        (
            "NaN among values",
            vec![Series::line(
                "a",
                vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (f64::NEG_INFINITY, 0.0)],
                colours::BLUE,
                2.0,
            )],
        ),
        ("constant", vec![Series::line("a", vec![(0.0, 2.0), (10.0, 2.0)], colours::BLUE, 2.0)]),
        ("huge", vec![Series::line("a", vec![(0.0, -1e308), (1.0, 1e308)], colours::BLUE, 2.0)]),
    ];
    for (what, series) in cases {
        let png = line_plot("title", "x", "y", &series, 400, 300).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(decode(&png).0, 400, "{what}");
    }
    // A single point is still visible, as a dot.
    let (w, _, rgb) =
        decode(&line_plot("", "", "", &[Series::line("a", vec![(3.0, 0.5)], colours::RED, 4.0)], 400, 300).unwrap());
    assert!(!pixels_of(w, &rgb, colours::RED).is_empty());
}

#[test]
fn bad_image_sizes_are_typed_errors() {
    for (w, h) in [(0, 300), (100, 300), (400, 20_000)] {
        let err = line_plot("t", "x", "y", &[], w, h).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{w}x{h}: {err}");
    }
}

#[test]
fn moving_average_is_trailing_mean() {
    let pts = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 10.0)];
    let ma = moving_average(&pts, 3);
    assert_eq!(ma, vec![(0.0, 1.0), (1.0, 1.5), (2.0, 2.0), (3.0, 3.0), (4.0, 17.0 / 3.0)]);
    assert_eq!(moving_average(&pts, 1), pts.to_vec());
    assert!(moving_average(&[], 5).is_empty());
}

fn step_record(step: u64) -> Value {
    json!({"epoch": step / 10, "step": step, "loss": 6.0 - step as f64 * 0.01, "lr": 3e-4, "clips_per_s": 40.0, "time_s": step as f64 * 0.1})
}

fn steps_of(log: &MetricsLog) -> Vec<u64> {
    log.records().iter().map(|r| r["step"].as_u64().unwrap()).collect()
}

#[test]
fn fresh_log_replaces_an_existing_file() {
    let dir = scratch("fresh");
    std::fs::write(dir.join(LOG_FILE), "{\"step\":1}\n{\"step\":2}\n").unwrap();
    let mut log = MetricsLog::open(&dir, None).unwrap();
    assert!(log.records().is_empty());
    assert_eq!(std::fs::read_to_string(dir.join(LOG_FILE)).unwrap(), "");
    log.append(&step_record(0)).unwrap();
    log.append(&step_record(1)).unwrap();
    let text = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, vec![step_record(0), step_record(1)], "one JSON object per line, flushed");
    assert_eq!(log.records(), lines.as_slice());
    // A new directory is created.
    let nested = dir.join("a/b");
    MetricsLog::open(&nested, None).unwrap();
    assert!(nested.join(LOG_FILE).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_keeps_exactly_the_records_up_to_the_step_and_drops_a_torn_line() {
    let dir = scratch("resume");
    let mut text = String::new();
    for step in 0..12 {
        text += &format!("{}\n", step_record(step));
        if step % 4 == 3 {
            text += &format!("{}\n", json!({"epoch": step / 4, "step": step, "epoch_loss": 5.0, "epoch_time_s": 2.0}));
        }
    }
    text += "\n   \n";
    text += "{\"epoch\":1,\"step\":12,\"loss\":5.8"; // a kill in mid-write
    std::fs::write(dir.join(LOG_FILE), &text).unwrap();

    let mut log = MetricsLog::open(&dir, Some(7)).unwrap();
    assert_eq!(steps_of(&log), vec![0, 1, 2, 3, 3, 4, 5, 6, 7, 7]);
    assert!(log.records()[4].get("epoch_loss").is_some());
    let on_disk: Vec<Value> = std::fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(on_disk, log.records(), "the file is rewritten to the kept records");

    log.append(&step_record(8)).unwrap();
    drop(log);
    let log = MetricsLog::open(&dir, Some(8)).unwrap();
    assert_eq!(steps_of(&log), vec![0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 8]);
    let log = MetricsLog::open(&dir, Some(0)).unwrap();
    assert_eq!(steps_of(&log), vec![0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_drops_malformed_lines_anywhere_and_tolerates_a_missing_file() {
    let dir = scratch("malformed");
    let log = MetricsLog::open(&dir.join("new"), Some(100)).unwrap();
    assert!(log.records().is_empty(), "resuming without a log starts one");
    let text = "{\"step\":0,\"loss\":1.0}\nnot json\n[1,2]\n{\"loss\":2.0}\n{\"step\":-3}\n{\"step\":\"4\"}\n{\"step\":5,\"loss\":null}\n";
    std::fs::write(dir.join(LOG_FILE), text).unwrap();
    let log = MetricsLog::open(&dir, Some(10)).unwrap();
    assert_eq!(steps_of(&log), vec![0, 5]);
    assert_eq!(std::fs::read_to_string(dir.join(LOG_FILE)).unwrap().lines().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn append_rejects_records_without_an_integer_step() {
    let dir = scratch("append");
    let mut log = MetricsLog::open(&dir, None).unwrap();
    for bad in [json!({"loss": 1.0}), json!({"step": 1.5}), json!({"step": -1}), json!([1, 2]), json!("step")] {
        let err = log.append(&bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{bad}: {err}");
    }
    assert!(log.records().is_empty());
    assert_eq!(std::fs::read_to_string(dir.join(LOG_FILE)).unwrap(), "", "nothing written for rejected records");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Both plot files exist and decode at the log's plot size.
fn assert_plots_valid(dir: &Path, what: &str) {
    for name in [LOSS_PLOT, LR_PLOT] {
        let (w, h, _) = decode_file(&dir.join(name));
        assert_eq!((w, h), (960, 540), "{what}: {name}");
    }
}

#[test]
fn plots_of_empty_single_point_and_nan_logs_are_valid_pngs() {
    let dir = scratch("plots");
    let mut log = MetricsLog::open(&dir, None).unwrap();
    log.write_plots().unwrap();
    assert_plots_valid(&dir, "empty log");

    log.append(&step_record(0)).unwrap();
    log.write_plots().unwrap();
    assert_plots_valid(&dir, "one record");

    // JSON has no NaN: serde_json turns it into null. Strings and missing fields are skipped too.
    log.append(&json!({"step": 1, "loss": f64::NAN, "lr": f64::INFINITY})).unwrap();
    log.append(&json!({"step": 2, "loss": "NaN", "lr": 3e-4})).unwrap();
    log.append(&json!({"step": 3})).unwrap();
    log.write_plots().unwrap();
    assert_plots_valid(&dir, "NaN records");
    assert!(dir.read_dir().unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loss_plot_draws_raw_smoothed_and_epoch_curves() {
    let dir = scratch("loss-plot");
    let mut log = MetricsLog::open(&dir, None).unwrap();
    let mut seed = 12345u64;
    for step in 0..600u64 {
        // Decaying loss with per-batch noise from a small LCG.
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.6;
        let warmup = (step as f64 / 60.0).min(1.0);
        let lr = 3e-4 * warmup * (0.5 * (1.0 + (std::f64::consts::PI * step as f64 / 600.0).cos()));
        log.append(&json!({"epoch": step / 100, "step": step, "loss": 5.5 * (-(step as f64) / 300.0).exp() + 1.0 + noise, "lr": lr})).unwrap();
        if step % 100 == 99 {
            log.append(&json!({"epoch": step / 100, "step": step, "epoch_loss": 5.5 * (-(step as f64 - 50.0) / 300.0).exp() + 1.0})).unwrap();
        }
    }
    log.write_plots().unwrap();
    let (w, _, rgb) = decode_file(&dir.join(LOSS_PLOT));
    for (name, colour) in [("raw", colours::LIGHT_BLUE), ("smoothed", colours::BLUE), ("epoch", colours::ORANGE)] {
        assert!(pixels_of(w, &rgb, colour).len() > 30, "{name} curve drawn");
    }
    // The loss falls: smoothed ink starts high on the left and ends low on the right.
    let [upper_left, upper_right, lower_left, _] = quadrant_counts(&pixels_of(w, &rgb, colours::BLUE));
    assert!(upper_left > lower_left && upper_left > upper_right, "{upper_left} {upper_right} {lower_left}");
    let (w, _, rgb) = decode_file(&dir.join(LR_PLOT));
    assert!(pixels_of(w, &rgb, colours::GREEN).len() > 100);
    if let Ok(keep) = std::env::var("SIMCLR_KEEP_PLOTS") {
        for name in [LOSS_PLOT, LR_PLOT] {
            std::fs::copy(dir.join(name), Path::new(&keep).join(name)).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
