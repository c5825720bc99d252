//! The training metrics log: one JSON object per line in `OUT/metrics.jsonl`
//! (step records and epoch records), and its plots `OUT/loss.png` and `OUT/lr.png`.
//!
//! A resumed run truncates the log to the checkpoint's step, so every line
//! describes training that the checkpoint contains: no duplicates from steps
//! run twice, no orphans from steps lost in a crash.

use crate::atomic_file::write_atomic;
use crate::error::{Error, Result};
use crate::plot::{colours, line_plot, Series};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LOG_FILE: &str = "metrics.jsonl";
pub const LOSS_PLOT: &str = "loss.png";
pub const LR_PLOT: &str = "lr.png";
const PLOT_SIZE: (usize, usize) = (960, 540);

pub struct MetricsLog {
    out_dir: PathBuf,
    path: PathBuf,
    file: File,
    records: Vec<Value>,
}

impl MetricsLog {
    /// Opens `out_dir/metrics.jsonl`, creating `out_dir` if needed.
    /// `resume_step: None` starts a fresh log (an existing file is replaced, atomically).
    /// `Some(s)`: a resumed run — keeps only the records whose "step" <= s (rewritten atomically).
    /// Unparseable lines (e.g. a torn last line from a killed run) are dropped with a warning on stderr.
    pub fn open(out_dir: &Path, resume_step: Option<u64>) -> Result<MetricsLog> {
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io("create output directory", out_dir, e))?;
        let path = out_dir.join(LOG_FILE);
        let mut kept_lines = Vec::new();
        let mut records = Vec::new();
        if let Some(last_step) = resume_step {
            let text = match std::fs::read(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(Error::io("read", &path, e)),
            };
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(line).ok().and_then(|v| step_of(&v).map(|s| (v, s))) {
                    Some((record, step)) => {
                        if step <= last_step {
                            kept_lines.push(line.to_string());
                            records.push(record);
                        }
                    }
                    None => eprintln!(
                        "warning: {}: dropping line {} (not a JSON object with an integer \"step\"; \
                         a run killed mid-write leaves such a line): {:.80}",
                        path.display(),
                        number + 1,
                        line
                    ),
                }
            }
        }
        let mut contents = kept_lines.join("\n");
        if !contents.is_empty() {
            contents.push('\n');
        }
        write_atomic(&path, contents.as_bytes())?;
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| Error::io("open for append", &path, e))?;
        Ok(MetricsLog { out_dir: out_dir.to_path_buf(), path, file, records })
    }

    /// Appends one JSON object as one line and flushes. The record must have an
    /// unsigned integer "step". (JSON has no NaN: serde_json stores a non-finite float as null.)
    pub fn append(&mut self, record: &Value) -> Result<()> {
        if step_of(record).is_none() {
            let shown: String = record.to_string().chars().take(200).collect();
            return Err(Error::invalid(
                "MetricsLog::append",
                format!("a metrics record must be a JSON object with an unsigned integer \"step\"; got {shown}"),
            ));
        }
        let mut line = serde_json::to_string(record)
            .map_err(|e| Error::invalid("MetricsLog::append", format!("record does not serialise: {e}")))?;
        line.push('\n');
        // One write per line, so a kill leaves at most the last line torn.
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io("append to", &self.path, e))?;
        self.file.flush().map_err(|e| Error::io("flush", &self.path, e))?;
        self.records.push(record.clone());
        Ok(())
    }

    /// The records so far, oldest first.
    pub fn records(&self) -> &[Value] {
        &self.records
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `OUT/loss.png` (per-step "loss" as a thin light line, its moving
    /// average as a thick line, per-epoch "epoch_loss" as dots) and `OUT/lr.png`
    /// ("lr" against step), each atomically. Records lacking a field, or whose
    /// value is not a finite number, are left out of that curve.
    pub fn write_plots(&self) -> Result<()> {
        let (w, h) = PLOT_SIZE;
        write_atomic(
            &self.out_dir.join(LOSS_PLOT),
            &line_plot("Training loss", "step", "loss", &self.loss_series(), w, h)?,
        )?;
        let lr = Series::line("lr", self.field_points("lr"), colours::GREEN, 2.0);
        write_atomic(&self.out_dir.join(LR_PLOT), &line_plot("Learning rate", "step", "lr", &[lr], w, h)?)?;
        Ok(())
    }

    /// The curves of the loss plot; ones with no points are left out so the legend lists only what is drawn.
    fn loss_series(&self) -> Vec<Series> {
        let raw = self.field_points("loss");
        let window = moving_average_window(raw.len());
        let smooth = moving_average(&raw, window);
        let epochs = self.field_points("epoch_loss");
        let mut series = vec![
            Series::line("loss per step", raw, colours::LIGHT_BLUE, 1.0),
            Series::line(format!("mean of last {window} steps"), smooth, colours::BLUE, 3.0),
            Series::markers("epoch mean", epochs, colours::ORANGE, 4.0),
        ];
        series.retain(|s| !s.points.is_empty());
        series
    }

    /// (step, record[field]) for every record where both are finite numbers.
    fn field_points(&self, field: &str) -> Vec<(f64, f64)> {
        self.records
            .iter()
            .filter_map(|r| Some((step_of(r)? as f64, r.get(field)?.as_f64()?)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    }
}

/// The record's "step", when it is a JSON object with an unsigned integer "step".
fn step_of(record: &Value) -> Option<u64> {
    record.as_object()?.get("step")?.as_u64()
}

/// About 1/25 of the run, between 1 and 500 steps: smooth enough to see the
/// trend through per-batch noise, short enough to follow it.
pub fn moving_average_window(points: usize) -> usize {
    (points / 25).clamp(1, 500)
}

/// Trailing moving average: point i becomes the mean y of points max(0, i+1-window)..=i.
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= window {
            sum -= points[i - window].1;
        }
        out.push((x, sum / (i + 1).min(window) as f64));
    }
    out
}
