//! The evaluation report: every probe's score for the chance level, the
//! raw-pixel baseline, the random-initialised encoder and each trained model,
//! as an aligned table (stdout) and as JSON (`eval.json`).

use crate::checkpoint::ModelSpec;
use serde::Serialize;

/// How a probe is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Fraction of test clips classified correctly (several classes).
    Accuracy,
    /// Area under the ROC curve of the yes-score on the test clips (two classes): 0.5 is
    /// chance whatever the class balance, where accuracy would reward always saying "no".
    RocAuc,
    /// Coefficient of determination on the test clips, averaged over targets.
    R2,
}

/// One feature set's result on one probe, over the random train/test splits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    /// The probe's metric on the test split, mean over the splits.
    pub test: f64,
    /// Its standard deviation over the splits (n − 1; 0 for one split).
    pub test_sd: f64,
    /// The metric on each split's test part.
    pub per_split: Vec<f64>,
    /// The same on the train split (how well the probe fits what it saw), mean over the splits.
    pub train: f64,
    /// Classification: mean recall per class on the test split (mean and sd over the splits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balanced_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balanced_accuracy_sd: Option<f64>,
    /// Regression: test R² of each target (mean over the splits), in `ProbeReport::targets` order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_target: Vec<f64>,
    /// The L2 strength chosen on the validation part of the first split's train part (one per
    /// target for regression).
    pub lambda: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeReport {
    pub name: String,
    pub metric: Metric,
    /// Class names (classification) or target names (regression).
    pub targets: Vec<String>,
    /// Clips in the first split's train and test parts.
    pub train_clips: usize,
    pub test_clips: usize,
    /// Accuracy: the train part's majority class scored on the test part (mean over the
    /// splits); ROC AUC 0.5; R² 0 (predicting the mean).
    pub chance: Option<f64>,
    pub pixels: Option<Score>,
    pub random_init: Option<Score>,
    /// One score per evaluated model, in `EvalReport::models` order.
    pub trained: Vec<Score>,
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
            trained: vec![],
            missing: Some(reason),
        }
    }
}

/// One evaluated model: where it came from and what it is.
#[derive(Clone, Debug, Serialize)]
pub struct EvaluatedModel {
    /// Its column in the table: "trained", or a name for each of several checkpoints.
    pub label: String,
    /// The checkpoint file, where the model came from one.
    pub checkpoint: Option<String>,
    pub model: ModelSpec,
    /// Epochs the model was trained.
    pub epoch: usize,
    pub encoder_dim: usize,
}

/// What was evaluated, on what, and the probes' results.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub models: Vec<EvaluatedModel>,
    pub dataset: String,
    /// Clips evaluated, and how many of them form the first split's train and test parts.
    pub clips: usize,
    pub train_clips: usize,
    pub test_clips: usize,
    /// Random train/test splits each probe is scored on (mean ± sd in the table).
    pub splits: usize,
    /// The stored frames the models see of each clip.
    pub frames: Vec<usize>,
    /// The stored frame the future probe asks about (`--future_frames` after the last seen one).
    pub future_frame: Option<usize>,
    /// Seed of the random-init encoder (the trainer's init stream, with the first model's
    /// spec) and of the splits.
    pub seed: u64,
    pub pixel_dim: usize,
    /// How the raw-pixel baseline's features are made.
    pub pixel_features: String,
    pub probes: Vec<ProbeReport>,
    pub seconds: f64,
}

fn cell(value: Option<f64>, sd: Option<f64>, metric: Metric) -> String {
    let Some(v) = value.filter(|v| v.is_finite()) else { return "n/a".to_string() };
    let sd = sd.filter(|s| s.is_finite());
    match (metric, sd) {
        (Metric::Accuracy, None) => format!("{:.1} %", 100.0 * v),
        (Metric::Accuracy, Some(sd)) => format!("{:.1} ± {:.1} %", 100.0 * v, 100.0 * sd),
        (_, None) => format!("{v:.3}"),
        (_, Some(sd)) => format!("{v:.3} ± {sd:.3}"),
    }
}

impl EvalReport {
    /// The aligned results table: one row per probe (two for classification: its metric, then
    /// the balanced accuracy), mean ± sd over the splits; accuracy in percent, AUC and R² with
    /// 3 decimals.
    pub fn table(&self) -> String {
        let mut header: Vec<String> = ["probe", "metric", "chance", "pixels", "random-init"].map(String::from).to_vec();
        header.extend(self.models.iter().map(|m| m.label.clone()));
        header.push("train/test".into());
        let mut rows: Vec<Vec<String>> = vec![header.clone()];
        for p in &self.probes {
            let metric = match (p.metric, p.missing.is_some()) {
                (m, true) => metric_name(m).to_string(),
                (Metric::Accuracy, _) => format!("accuracy ({} classes)", p.targets.len()),
                (Metric::RocAuc, _) => "ROC AUC".to_string(),
                (Metric::R2, _) => {
                    format!("R² ({} target{})", p.targets.len(), if p.targets.len() == 1 { "" } else { "s" })
                }
            };
            let score = |s: Option<&Score>| cell(s.map(|s| s.test), s.map(|s| s.test_sd), p.metric);
            let split =
                if p.missing.is_some() { "-".to_string() } else { format!("{}/{}", p.train_clips, p.test_clips) };
            let mut row = vec![p.name.clone(), metric, cell(p.chance, None, p.metric), score(p.pixels.as_ref())];
            row.push(score(p.random_init.as_ref()));
            for k in 0..self.models.len() {
                row.push(if p.missing.is_some() { "n/a".into() } else { score(p.trained.get(k)) });
            }
            row.push(split);
            rows.push(row);
            if p.missing.is_none() && p.metric != Metric::R2 {
                let balanced = |s: Option<&Score>| {
                    cell(s.and_then(|s| s.balanced_accuracy), s.and_then(|s| s.balanced_accuracy_sd), Metric::Accuracy)
                };
                let chance = Some(1.0 / p.targets.len().max(1) as f64);
                let mut row = vec![String::new(), "balanced accuracy".into(), cell(chance, None, Metric::Accuracy)];
                row.push(balanced(p.pixels.as_ref()));
                row.push(balanced(p.random_init.as_ref()));
                row.extend((0..self.models.len()).map(|k| balanced(p.trained.get(k))));
                row.push(String::new());
                rows.push(row);
            }
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
        if self.splits > 1 {
            out.push_str(&format!("mean ± sd over {} random train/test splits\n", self.splits));
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
        Metric::RocAuc => "ROC AUC",
        Metric::R2 => "R²",
    }
}
