//! The evaluation report: every probe's score for the chance level, the
//! raw-pixel baseline, the random-initialised encoder and the trained one,
//! as an aligned table (stdout) and as JSON (`eval.json`).

use crate::checkpoint::ModelSpec;
use serde::Serialize;

/// How a probe is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Fraction of test clips classified correctly.
    Accuracy,
    /// Coefficient of determination on the test clips, averaged over targets.
    R2,
}

/// One feature set's result on one probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Accuracy, or R² averaged over the targets, on the test split.
    pub test: f64,
    /// The same on the train split (how well the probe fits what it saw).
    pub train: f64,
    /// Regression: test R² of each target, in `ProbeReport::targets` order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_target: Vec<f64>,
    /// The L2 strength chosen on the validation part of the train split (one per target for regression).
    pub lambda: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeReport {
    pub name: String,
    pub metric: Metric,
    /// Class names (classification) or target names (regression).
    pub targets: Vec<String>,
    pub train_clips: usize,
    pub test_clips: usize,
    /// Majority class of the train split scored on the test split; 0 R² (predicting the mean) for regression.
    pub chance: Option<f64>,
    pub pixels: Option<Score>,
    pub random_init: Option<Score>,
    pub trained: Option<Score>,
    /// Why the probe could not be run on this dataset ("n/a" in the table).
    pub missing: Option<String>,
}

impl ProbeReport {
    /// A probe this dataset's labels cannot support.
    pub fn not_available(name: &str, metric: Metric, reason: String) -> ProbeReport {
        ProbeReport {
            name: name.to_string(),
            metric,
            targets: vec![],
            train_clips: 0,
            test_clips: 0,
            chance: None,
            pixels: None,
            random_init: None,
            trained: None,
            missing: Some(reason),
        }
    }
}

/// What was evaluated, on what, and the probes' results.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The checkpoint file, where the model came from one.
    pub checkpoint: Option<String>,
    pub model: ModelSpec,
    /// Epochs the model was trained.
    pub epoch: usize,
    pub dataset: String,
    /// Clips evaluated, and how many of them form the train and test splits.
    pub clips: usize,
    pub train_clips: usize,
    pub test_clips: usize,
    /// The stored frames the model sees of each clip.
    pub frames: Vec<usize>,
    /// Seed of the random-init encoder (the trainer's init stream) and of the split.
    pub seed: u64,
    pub encoder_dim: usize,
    pub pixel_dim: usize,
    /// How the raw-pixel baseline's features are made.
    pub pixel_features: String,
    pub probes: Vec<ProbeReport>,
    pub seconds: f64,
}

fn cell(value: Option<f64>, metric: Metric) -> String {
    match value {
        Some(v) if v.is_finite() => match metric {
            Metric::Accuracy => format!("{:.1} %", 100.0 * v),
            Metric::R2 => format!("{v:.3}"),
        },
        _ => "n/a".to_string(),
    }
}

impl EvalReport {
    /// The aligned results table: one row per probe, accuracy in percent, R² with 3 decimals.
    pub fn table(&self) -> String {
        let header = ["probe", "metric", "chance", "pixels", "random-init", "trained", "train/test"];
        let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
        for p in &self.probes {
            let metric = match p.metric {
                Metric::Accuracy => format!("accuracy ({} classes)", p.targets.len()),
                Metric::R2 => format!("R² ({} targets)", p.targets.len()),
            };
            let score = |s: &Option<Score>| cell(s.as_ref().map(|s| s.test), p.metric);
            let split =
                if p.missing.is_some() { "-".to_string() } else { format!("{}/{}", p.train_clips, p.test_clips) };
            let metric = if p.missing.is_some() { metric_name(p.metric).to_string() } else { metric };
            rows.push([
                p.name.clone(),
                metric,
                cell(p.chance, p.metric),
                score(&p.pixels),
                score(&p.random_init),
                score(&p.trained),
                split,
            ]);
        }
        let widths: Vec<usize> =
            (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, text)| {
                    let pad = " ".repeat(widths[c] - text.chars().count());
                    // Names left-aligned, numbers right-aligned.
                    if c < 2 {
                        format!("{text}{pad}")
                    } else {
                        format!("{pad}{text}")
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        for p in self.probes.iter().filter(|p| p.missing.is_some()) {
            out.push_str(&format!("n/a: {}: {}\n", p.name, p.missing.as_deref().unwrap_or_default()));
        }
        out
    }

    /// The report as JSON (non-finite numbers become null).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Accuracy => "accuracy",
        Metric::R2 => "R²",
    }
}
