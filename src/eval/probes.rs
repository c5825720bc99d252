//! Linear probes on frozen features, in plain f64.
//!
//! A probe asks how much of a label is *linearly* readable from a
//! representation: standardise the features (train statistics only), fit a
//! linear model on the train split, score it on the held-out test split.
//!
//! - Classification: multinomial logistic regression (softmax + L2 on the
//!   weights, bias unpenalised), minimised to convergence with L-BFGS.
//! - Regression: ridge regression in closed form, per target.
//!
//! The L2 strength of either is chosen on a validation part of the train
//! split, then the model is refitted on the whole train split. Everything is
//! deterministic: seeded splits, fixed-order sums.

use crate::rng::Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// A row-major `rows × cols` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Matrix {
        Matrix { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// Panics unless `data.len() == rows * cols` (a programming error, not user input).
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Matrix {
        assert_eq!(data.len(), rows * cols, "matrix data does not match its shape");
        Matrix { rows, cols, data }
    }

    pub fn from_rows(rows: &[Vec<f64>]) -> Matrix {
        let cols = rows.first().map_or(0, Vec::len);
        Matrix::new(rows.len(), cols, rows.iter().flatten().copied().collect())
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn column(&self, j: usize) -> Vec<f64> {
        (0..self.rows).map(|i| self.data[i * self.cols + j]).collect()
    }

    /// The rows `indices`, in that order.
    pub fn select_rows(&self, indices: &[usize]) -> Matrix {
        Matrix::new(indices.len(), self.cols, indices.iter().flat_map(|&i| self.row(i).iter().copied()).collect())
    }

    pub fn transpose(&self) -> Matrix {
        let mut t = Matrix::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        t
    }

    /// `self · other`, rows computed in parallel (each row's sums in a fixed order).
    pub fn matmul(&self, other: &Matrix) -> Matrix {
        assert_eq!(self.cols, other.rows, "matmul: inner sizes differ");
        let k = other.cols;
        let mut out = Matrix::zeros(self.rows, k);
        if k == 0 {
            return out;
        }
        if k <= NARROW {
            // A few output columns (the probes' class scores and gradients): dot products along
            // contiguous rows of `self` and of `otherᵀ` vectorise; the row-update loop below
            // would run k-long inner loops.
            let columns = other.transpose();
            out.data.par_chunks_mut(k).enumerate().for_each(|(i, out_row)| {
                let row = self.row(i);
                for (o, column) in out_row.iter_mut().zip(columns.data.chunks_exact(self.cols.max(1))) {
                    *o = dot4(row, column);
                }
            });
            return out;
        }
        out.data.par_chunks_mut(k).enumerate().for_each(|(i, out_row)| {
            for (a, b_row) in self.row(i).iter().zip(other.data.chunks_exact(k)) {
                if *a != 0.0 {
                    out_row.iter_mut().zip(b_row).for_each(|(o, b)| *o += a * b);
                }
            }
        });
        out
    }
}

/// Up to this many output columns, `matmul` takes dot products.
const NARROW: usize = 8;

/// Σ a·b with four partial sums (lanes j mod 4, then added in order): vectorisable, and
/// the same sum for the same inputs every time.
fn dot4(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4.remainder().iter().zip(b4.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a4.zip(b4) {
        for j in 0..4 {
            lanes[j] += x[j] * y[j];
        }
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

/// Per-feature centring and scaling, fitted on the train split only and then
/// applied unchanged to every split (the test split must not leak into it).
#[derive(Clone, Debug)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    /// Standard deviation; 1 for a feature that is constant on the train split.
    pub scale: Vec<f64>,
}

impl Standardizer {
    pub fn fit(x: &Matrix) -> Standardizer {
        let n = x.rows.max(1) as f64;
        let mut mean = vec![0.0; x.cols];
        for i in 0..x.rows {
            mean.iter_mut().zip(x.row(i)).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; x.cols];
        for i in 0..x.rows {
            var.iter_mut().zip(x.row(i)).zip(&mean).for_each(|((s, v), m)| *s += (v - m) * (v - m));
        }
        let scale = var.iter().map(|s| (s / n).sqrt()).map(|sd| if sd > 1e-12 { sd } else { 1.0 }).collect();
        Standardizer { mean, scale }
    }

    pub fn apply(&self, x: &Matrix) -> Matrix {
        let mut out = x.clone();
        for row in out.data.chunks_exact_mut(x.cols.max(1)) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        out
    }
}

/// Indices of a train/test split, each sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits items `0..strata.len()` so that every stratum (e.g. class) keeps its
/// proportions: about `test_fraction` of each goes to test, at least one item
/// to each side when the stratum has two or more. `rng` fixes the draw.
pub fn stratified_split(strata: &[usize], test_fraction: f64, rng: &mut Rng) -> Split {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &s) in strata.iter().enumerate() {
        groups.entry(s).or_default().push(i);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for members in groups.values_mut() {
        rng.shuffle(members);
        let n = members.len();
        let n_test = if n >= 2 { ((n as f64 * test_fraction).round() as usize).clamp(1, n - 1) } else { 0 };
        test.extend_from_slice(&members[..n_test]);
        train.extend_from_slice(&members[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Split { train, test }
}

/// Fraction of `predicted` equal to `truth` (0 for no items).
pub fn accuracy(predicted: &[usize], truth: &[usize]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    predicted.iter().zip(truth).filter(|(p, t)| p == t).count() as f64 / truth.len() as f64
}

/// Mean over the classes present in `truth` of the fraction of that class predicted as
/// itself (0 for no items). A constant guess scores 1/classes whatever the class sizes.
pub fn balanced_accuracy(predicted: &[usize], truth: &[usize]) -> f64 {
    let mut per_class: BTreeMap<usize, (usize, usize)> = BTreeMap::new(); // class → (hits, members)
    for (p, t) in predicted.iter().zip(truth) {
        let e = per_class.entry(*t).or_default();
        e.0 += usize::from(p == t);
        e.1 += 1;
    }
    if per_class.is_empty() {
        return 0.0;
    }
    per_class.values().map(|&(hits, n)| hits as f64 / n as f64).sum::<f64>() / per_class.len() as f64
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (the Mann–Whitney U statistic over n₊·n₋). 0.5 is
/// chance, 1 a perfect ranking. NaN when `positive` has no positives or no negatives.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over runs of tied scores.
    let mut ranks = vec![0.0; scores.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        order[start..end].iter().for_each(|&i| ranks[i] = rank);
        start = end;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = ranks.iter().zip(positive).filter(|(_, &p)| p).map(|(r, _)| r).sum();
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// The most frequent class of `labels` (the smallest on ties).
pub fn majority_class(labels: &[usize]) -> usize {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    labels.iter().for_each(|&l| *counts.entry(l).or_default() += 1);
    counts.into_iter().fold((0, 0), |best, (l, c)| if c > best.1 { (l, c) } else { best }).0
}

/// Coefficient of determination of each column: 1 − SS_res / SS_tot around the
/// column's own mean. NaN for a column that is constant in `truth`.
pub fn r2_scores(predicted: &Matrix, truth: &Matrix) -> Vec<f64> {
    (0..truth.cols)
        .map(|j| {
            let (y, p) = (truth.column(j), predicted.column(j));
            let mean = y.iter().sum::<f64>() / y.len().max(1) as f64;
            let ss_tot: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
            let ss_res: f64 = y.iter().zip(&p).map(|(v, q)| (v - q).powi(2)).sum();
            if ss_tot > 1e-12 * y.len() as f64 {
                1.0 - ss_res / ss_tot
            } else {
                f64::NAN
            }
        })
        .collect()
}

/// Mean of the finite values (NaN when there are none).
pub fn finite_mean(values: &[f64]) -> f64 {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        f64::NAN
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    }
}

// ---------------------------------------------------------------------------
// Multinomial logistic regression

/// Softmax regression: class scores `x · weights + bias`.
#[derive(Clone, Debug)]
pub struct LogisticModel {
    /// d × k.
    pub weights: Matrix,
    pub bias: Vec<f64>,
    /// L-BFGS iterations used, and whether the gradient fell below tolerance.
    pub iterations: usize,
    pub converged: bool,
}

/// Stop when the largest gradient entry is below this.
const LOGISTIC_GRAD_TOL: f64 = 1e-6;
const LOGISTIC_MAX_ITER: usize = 1000;
/// L-BFGS memory (pairs of steps and gradient changes kept).
const LBFGS_MEMORY: usize = 10;

/// Row-wise softmax of `scores` (n × k), in place, max subtracted first.
fn softmax_rows(scores: &mut Matrix) {
    for row in scores.data.chunks_exact_mut(scores.cols.max(1)) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.iter_mut().for_each(|v| *v = (*v - max).exp());
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= total);
    }
}

/// The training problem: mean cross-entropy + (λ/2)·‖W‖².
struct LogisticObjective<'a> {
    x: &'a Matrix,
    /// xᵀ, kept so the weight gradient is a parallel product over features.
    xt: Matrix,
    y: &'a [usize],
    classes: usize,
    lambda: f64,
}

impl LogisticObjective<'_> {
    /// Parameters are packed as [W (d × k, row-major), b (k)].
    fn unpack<'p>(&self, theta: &'p [f64]) -> (Matrix, &'p [f64]) {
        let wk = self.x.cols * self.classes;
        (Matrix::new(self.x.cols, self.classes, theta[..wk].to_vec()), &theta[wk..])
    }

    fn probabilities(&self, theta: &[f64]) -> Matrix {
        let (w, b) = self.unpack(theta);
        let mut scores = self.x.matmul(&w);
        for row in scores.data.chunks_exact_mut(self.classes) {
            row.iter_mut().zip(b).for_each(|(s, b)| *s += b);
        }
        softmax_rows(&mut scores);
        scores
    }

    /// Loss and gradient at `theta`.
    ///
    /// With P the softmax probabilities and Y the one-hot labels:
    /// ∂L/∂W = xᵀ(P − Y)/n + λW, ∂L/∂b = Σᵢ(P − Y)ᵢ/n.
    fn loss_and_gradient(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        let n = self.x.rows.max(1) as f64;
        let k = self.classes;
        let mut residual = self.probabilities(theta);
        let mut loss = 0.0;
        for (row, &label) in residual.data.chunks_exact_mut(k).zip(self.y) {
            loss -= row[label].max(1e-300).ln();
            row[label] -= 1.0;
        }
        loss /= n;
        let (w, _) = self.unpack(theta);
        loss += 0.5 * self.lambda * w.data.iter().map(|v| v * v).sum::<f64>();
        let mut grad_w = self.xt.matmul(&residual);
        grad_w.data.iter_mut().zip(&w.data).for_each(|(g, w)| *g = *g / n + self.lambda * w);
        let mut grad_b = vec![0.0; k];
        for row in residual.data.chunks_exact(k) {
            grad_b.iter_mut().zip(row).for_each(|(g, r)| *g += r / n);
        }
        grad_w.data.extend(grad_b);
        (loss, grad_w.data)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Minimises a smooth convex function with L-BFGS and a backtracking
/// (Armijo) line search. Returns (θ, iterations, converged).
fn lbfgs(f: impl Fn(&[f64]) -> (f64, Vec<f64>), mut theta: Vec<f64>, max_iter: usize) -> (Vec<f64>, usize, bool) {
    let (mut loss, mut grad) = f(&theta);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default(); // (s, y, 1/yᵀs)
    for iteration in 0..max_iter {
        if max_abs(&grad) < LOGISTIC_GRAD_TOL {
            return (theta, iteration, true);
        }
        // Two-loop recursion: direction = −H·grad with H from the stored pairs.
        let mut q = grad.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(q, y)| *q -= a * y);
            alphas.push(a);
        }
        if let Some((s, y, _)) = history.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(q, s)| *q += (a - b) * s);
        }
        let mut direction: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&grad, &direction);
        if slope >= 0.0 {
            // Not a descent direction (round-off): fall back to steepest descent.
            direction = grad.iter().map(|g| -g).collect();
            slope = -dot(&grad, &grad);
            history.clear();
        }
        // The first step has no curvature estimate: keep it short.
        let mut step = if history.is_empty() { 1.0 / max_abs(&grad).max(1.0) } else { 1.0 };
        let (new_theta, new_loss, new_grad) = loop {
            let candidate: Vec<f64> = theta.iter().zip(&direction).map(|(t, d)| t + step * d).collect();
            let (l, g) = f(&candidate);
            if l <= loss + 1e-4 * step * slope {
                break (candidate, l, g);
            }
            step *= 0.5;
            if step < 1e-20 {
                // No progress possible at this precision: we are at the minimum.
                return (theta, iteration, true);
            }
        };
        let s: Vec<f64> = new_theta.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = new_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let ys = dot(&y, &s);
        if ys > 1e-12 {
            if history.len() == LBFGS_MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / ys));
        }
        let decrease = loss - new_loss;
        (theta, loss, grad) = (new_theta, new_loss, new_grad);
        if decrease.abs() <= 1e-14 * loss.abs().max(1.0) && max_abs(&grad) < 1e3 * LOGISTIC_GRAD_TOL {
            return (theta, iteration + 1, true);
        }
    }
    (theta, max_iter, false)
}

/// Fits softmax regression with L2 strength `lambda` on the weights.
/// `y[i] < classes` for every i.
pub fn fit_logistic(x: &Matrix, y: &[usize], classes: usize, lambda: f64) -> LogisticModel {
    fit_logistic_from(x, y, classes, lambda, None, LOGISTIC_MAX_ITER)
}

/// `fit_logistic` starting from `start`'s weights and bias (where their shape fits) instead of
/// zeros. The objective is strictly convex, so the start changes the iterations, not the
/// answer: a fit at a nearby λ, or on nearly the same rows, starts close to it. At most
/// `max_iter` L-BFGS iterations (`converged` says whether the gradient test was met).
pub fn fit_logistic_from(
    x: &Matrix,
    y: &[usize],
    classes: usize,
    lambda: f64,
    start: Option<&LogisticModel>,
    max_iter: usize,
) -> LogisticModel {
    assert!(y.iter().all(|&c| c < classes), "labels must be below the class count");
    let objective = LogisticObjective { x, xt: x.transpose(), y, classes, lambda };
    let start = match start {
        Some(m) if m.weights.rows == x.cols && m.weights.cols == classes && m.bias.len() == classes => {
            m.weights.data.iter().chain(&m.bias).copied().collect()
        }
        _ => vec![0.0; (x.cols + 1) * classes],
    };
    let (theta, iterations, converged) = lbfgs(|t| objective.loss_and_gradient(t), start, max_iter);
    let (weights, bias) = objective.unpack(&theta);
    LogisticModel { weights, bias: bias.to_vec(), iterations, converged }
}

impl LogisticModel {
    pub fn scores(&self, x: &Matrix) -> Matrix {
        let mut s = x.matmul(&self.weights);
        for row in s.data.chunks_exact_mut(self.bias.len().max(1)) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
        }
        s
    }

    /// The highest-scoring class of each row (the first on ties).
    pub fn predict(&self, x: &Matrix) -> Vec<usize> {
        let s = self.scores(x);
        s.data
            .chunks_exact(s.cols.max(1))
            .map(|row| row.iter().enumerate().fold(0, |best, (c, v)| if *v > row[best] { c } else { best }))
            .collect()
    }

    /// Mean cross-entropy of the true labels.
    pub fn log_loss(&self, x: &Matrix, y: &[usize]) -> f64 {
        let mut p = self.scores(x);
        softmax_rows(&mut p);
        let total: f64 = p.data.chunks_exact(p.cols.max(1)).zip(y).map(|(row, &c)| -row[c].max(1e-300).ln()).sum();
        total / y.len().max(1) as f64
    }
}

/// L2 strengths tried for the logistic probe, strongest first. (1e-5 was tried too: on
/// 1400 clips it was never chosen over 1e-4 by more than noise, and near-separable classes
/// took it 1000 iterations.)
pub const LOGISTIC_LAMBDAS: [f64; 5] = [1.0, 1e-1, 1e-2, 1e-3, 1e-4];
/// Iterations of each fit on the validation part while choosing λ: enough to rank the λs
/// (the weak ones would otherwise run to `LOGISTIC_MAX_ITER` on near-separable classes);
/// the final fit runs to convergence.
const VALIDATION_MAX_ITER: usize = 200;
/// L2 strengths tried for ridge (per sample: the penalty is n·λ‖w‖²).
pub const RIDGE_LAMBDAS: [f64; 9] = [1e2, 1e1, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6];
/// Part of the train split held out to choose λ.
pub const VALIDATION_FRACTION: f64 = 0.25;

#[derive(Clone, Debug, PartialEq)]
pub struct ClassificationScores {
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// Mean recall over the classes present in the test split: 1/classes for a constant guess,
    /// however unequal the classes are.
    pub test_balanced_accuracy: f64,
    /// Two classes only: the area under the ROC curve of the class-1 score on the test split
    /// (NaN where the test split holds one class).
    pub test_roc_auc: Option<f64>,
    pub lambda: f64,
    pub converged: bool,
}

/// The logistic probe: standardise on train (and, with more features than
/// train clips, change to row-space coordinates), choose λ on a stratified
/// validation part of train (balanced accuracy, then log-loss on ties:
/// plain accuracy would favour the λ that predicts the majority class),
/// refit on all of train, score on test. `seed` fixes the validation split.
pub fn classification_probe(
    train_x: &Matrix,
    train_y: &[usize],
    test_x: &Matrix,
    test_y: &[usize],
    classes: usize,
    seed: u64,
) -> ClassificationScores {
    let val = stratified_split(train_y, VALIDATION_FRACTION, &mut Rng::fork(seed, VALIDATION_STREAM));
    let (lambda, start) = if val.test.is_empty() || val.train.is_empty() {
        (LOGISTIC_LAMBDAS[LOGISTIC_LAMBDAS.len() / 2], None)
    } else {
        // Standardised with the fitting part's own statistics, as the final fit is.
        let (fit_y, val_y) = (pick(train_y, &val.train), pick(train_y, &val.test));
        let (fit_z, val_z) = prepare(&train_x.select_rows(&val.train), &[&train_x.select_rows(&val.test)]);
        let mut best: Option<(f64, f64, f64, LogisticModel)> = None; // (balanced accuracy, log-loss, λ, fit)
                                                                     // Strongest λ first, each fit starting from the previous one's solution (a warm-started
                                                                     // path: the weak-λ fits, which take the most iterations from zero, start nearby).
        let mut previous: Option<LogisticModel> = None;
        for &lambda in &LOGISTIC_LAMBDAS {
            let model = fit_logistic_from(&fit_z, &fit_y, classes, lambda, previous.as_ref(), VALIDATION_MAX_ITER);
            let predicted = model.predict(&val_z[0]);
            let (acc, loss) = (balanced_accuracy(&predicted, &val_y), model.log_loss(&val_z[0], &val_y));
            if best.as_ref().is_none_or(|(a, l, _, _)| acc > *a || (acc == *a && loss < *l)) {
                best = Some((acc, loss, lambda, model.clone()));
            }
            previous = Some(model);
        }
        best.map_or((LOGISTIC_LAMBDAS[0], None), |b| (b.2, Some(b.3)))
    };
    let (train_z, test_z) = prepare(train_x, &[test_x]);
    // The final fit starts from the chosen validation fit (three quarters of the same rows).
    let model = fit_logistic_from(&train_z, train_y, classes, lambda, start.as_ref(), LOGISTIC_MAX_ITER);
    let predicted = model.predict(&test_z[0]);
    let test_roc_auc = (classes == 2).then(|| {
        // The class-1 margin orders the clips as P(class 1) does.
        let scores = model.scores(&test_z[0]);
        let margin: Vec<f64> = scores.data.chunks_exact(2).map(|s| s[1] - s[0]).collect();
        roc_auc(&margin, &test_y.iter().map(|&y| y == 1).collect::<Vec<_>>())
    });
    ClassificationScores {
        train_accuracy: accuracy(&model.predict(&train_z), train_y),
        test_accuracy: accuracy(&predicted, test_y),
        test_balanced_accuracy: balanced_accuracy(&predicted, test_y),
        test_roc_auc,
        lambda,
        converged: model.converged,
    }
}

/// RNG stream of the validation split inside a probe's train split.
const VALIDATION_STREAM: u64 = 0x7a11;

fn pick<T: Copy>(values: &[T], indices: &[usize]) -> Vec<T> {
    indices.iter().map(|&i| values[i]).collect()
}

// ---------------------------------------------------------------------------
// Ridge regression

/// The Cholesky factor of a symmetric positive-definite `a` (n × n): the
/// lower-triangular L with a = L·Lᵀ, row-major. None if `a` is not positive definite.
fn cholesky(a: &Matrix) -> Option<Vec<f64>> {
    let n = a.rows;
    assert_eq!(a.cols, n, "cholesky: the matrix is not square");
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let sum = a.data[i * n + j] - dot(&l[i * n..i * n + j], &l[j * n..j * n + j]);
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves L·z = b in place for lower-triangular `l` (n × n) and one vector `b`.
fn forward_substitute(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        b[i] = (b[i] - dot(&l[i * n..i * n + i], &b[..i])) / l[i * n + i];
    }
}

/// Solves `a · x = b` for symmetric positive-definite `a` (n × n) by Cholesky
/// factorisation; `b` is n × k. None if `a` is not positive definite.
pub fn cholesky_solve(a: &Matrix, b: &Matrix) -> Option<Matrix> {
    let n = a.rows;
    assert!(b.rows == n, "cholesky_solve: shapes do not fit");
    let l = cholesky(a)?;
    let mut x = b.clone();
    let k = b.cols;
    let mut column = vec![0.0; n];
    for c in 0..k {
        // L·z = b (forward), then Lᵀ·x = z (backward).
        (0..n).for_each(|i| column[i] = b.data[i * k + c]);
        forward_substitute(&l, n, &mut column);
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|j| l[j * n + i] * column[j]).sum();
            column[i] = (column[i] - s) / l[i * n + i];
        }
        (0..n).for_each(|i| x.data[i * k + c] = column[i]);
    }
    Some(x)
}

/// Coordinates in the span of the train rows, for when there are more
/// features than train rows (raw pixels): an exact change of basis that
/// makes L2-regularised linear models much cheaper to fit.
///
/// With X the n × d train rows, the L2-penalised optimum W lies in the span
/// of X's rows (the loss gradient Xᵀ(…) does, and so does every step from
/// W = 0). Factor XXᵀ = L·Lᵀ (Cholesky); Q = XᵀL⁻ᵀ has orthonormal columns
/// spanning that row space, so x ↦ Qᵀx = L⁻¹(Xx) keeps scores and ‖W‖ alike.
/// The train rows themselves map to the rows of L. Returns None when d ≤ n
/// (nothing to gain) or XXᵀ is singular.
pub fn row_space_coordinates(train: &Matrix, others: &[&Matrix]) -> Option<(Matrix, Vec<Matrix>)> {
    let n = train.rows;
    if train.cols <= n || n == 0 {
        return None;
    }
    let xt = train.transpose();
    let mut gram = train.matmul(&xt);
    // A relative 1e-10 on the diagonal keeps duplicate rows from making the factor fail.
    let jitter = 1e-10 * (0..n).map(|i| gram.data[i * n + i]).sum::<f64>() / n as f64;
    (0..n).for_each(|i| gram.data[i * n + i] += jitter);
    let l = cholesky(&gram)?;
    let map = |m: &Matrix| {
        let mut g = m.matmul(&xt); // rows: X·x for each x of m
        g.data.par_chunks_mut(n).for_each(|row| forward_substitute(&l, n, row));
        g
    };
    Some((Matrix::new(n, n, l.clone()), others.iter().map(|m| map(m)).collect()))
}

/// Standardises `fit` and `others` with `fit`'s statistics, then moves them
/// to the row-space coordinates of `fit` where that is smaller.
fn prepare(fit: &Matrix, others: &[&Matrix]) -> (Matrix, Vec<Matrix>) {
    let s = Standardizer::fit(fit);
    let (fit_z, others_z): (Matrix, Vec<Matrix>) = (s.apply(fit), others.iter().map(|m| s.apply(m)).collect());
    let refs: Vec<&Matrix> = others_z.iter().collect();
    row_space_coordinates(&fit_z, &refs).unwrap_or((fit_z, others_z))
}

/// Ridge regression `y ≈ x·W + intercept`.
#[derive(Clone, Debug)]
pub struct RidgeModel {
    /// d × k.
    pub weights: Matrix,
    pub intercept: Vec<f64>,
}

impl RidgeModel {
    pub fn predict(&self, x: &Matrix) -> Matrix {
        let mut p = x.matmul(&self.weights);
        for row in p.data.chunks_exact_mut(self.intercept.len().max(1)) {
            row.iter_mut().zip(&self.intercept).for_each(|(v, b)| *v += b);
        }
        p
    }
}

/// Ridge fits of one design matrix for several λ, sharing the Gram matrix.
///
/// Minimises (1/n)‖Y − XW − 1bᵀ‖² + λ‖W‖²: with X and Y centred the
/// intercept is Y's mean and W = (XᵀX + nλI)⁻¹XᵀY; when there are more
/// features than samples the same W is Xᵀ(XXᵀ + nλI)⁻¹Y, a smaller system.
pub struct RidgeSolver {
    x_mean: Vec<f64>,
    y_mean: Vec<f64>,
    /// Centred X and Y.
    xc: Matrix,
    yc: Matrix,
    /// XᵀX (d ≤ n) or XXᵀ (d > n).
    gram: Matrix,
    dual: bool,
}

impl RidgeSolver {
    pub fn new(x: &Matrix, y: &Matrix) -> RidgeSolver {
        assert_eq!(x.rows, y.rows, "ridge: x and y differ in rows");
        let centre = |m: &Matrix| {
            let mean = Standardizer::fit(m).mean;
            let mut c = m.clone();
            for row in c.data.chunks_exact_mut(m.cols.max(1)) {
                row.iter_mut().zip(&mean).for_each(|(v, mu)| *v -= mu);
            }
            (mean, c)
        };
        let ((x_mean, xc), (y_mean, yc)) = (centre(x), centre(y));
        let dual = x.cols > x.rows;
        let gram = if dual { xc.matmul(&xc.transpose()) } else { xc.transpose().matmul(&xc) };
        RidgeSolver { x_mean, y_mean, xc, yc, gram, dual }
    }

    pub fn fit(&self, lambda: f64) -> RidgeModel {
        let n = self.xc.rows.max(1) as f64;
        let mut a = self.gram.clone();
        // λ floored so the system stays positive definite in floating point.
        let ridge = (n * lambda).max(1e-12 * (1.0 + a.data.iter().fold(0.0f64, |m, v| m.max(v.abs()))));
        for i in 0..a.rows {
            a.data[i * a.cols + i] += ridge;
        }
        let weights = if self.dual {
            let alpha = cholesky_solve(&a, &self.yc).unwrap_or_else(|| Matrix::zeros(self.yc.rows, self.yc.cols));
            self.xc.transpose().matmul(&alpha)
        } else {
            let rhs = self.xc.transpose().matmul(&self.yc);
            cholesky_solve(&a, &rhs).unwrap_or_else(|| Matrix::zeros(rhs.rows, rhs.cols))
        };
        // Undo the centring of x: b = ȳ − x̄·W.
        let shift = Matrix::new(1, self.x_mean.len(), self.x_mean.clone()).matmul(&weights);
        let intercept = self.y_mean.iter().zip(&shift.data).map(|(m, s)| m - s).collect();
        RidgeModel { weights, intercept }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegressionScores {
    /// R² of each target on the test split (NaN where the target is constant there).
    pub test_r2: Vec<f64>,
    pub train_r2: Vec<f64>,
    /// The λ chosen for each target.
    pub lambdas: Vec<f64>,
}

impl RegressionScores {
    pub fn mean_test_r2(&self) -> f64 {
        finite_mean(&self.test_r2)
    }
}

/// The ridge probe: standardise on train, choose λ per target on a validation
/// part of train (highest R²), refit on all of train, score R² on test.
pub fn regression_probe(
    train_x: &Matrix,
    train_y: &Matrix,
    test_x: &Matrix,
    test_y: &Matrix,
    seed: u64,
) -> RegressionScores {
    let standardizer = Standardizer::fit(train_x);
    let (train_z, test_z) = (standardizer.apply(train_x), standardizer.apply(test_x));
    let targets = train_y.cols;
    let val = stratified_split(&vec![0; train_x.rows], VALIDATION_FRACTION, &mut Rng::fork(seed, VALIDATION_STREAM));
    let mut lambdas = vec![1.0; targets];
    if !val.test.is_empty() && val.train.len() >= 2 {
        let fit_x = train_x.select_rows(&val.train);
        let s = Standardizer::fit(&fit_x);
        let solver = RidgeSolver::new(&s.apply(&fit_x), &train_y.select_rows(&val.train));
        let (val_z, val_y) = (s.apply(&train_x.select_rows(&val.test)), train_y.select_rows(&val.test));
        let mut best = vec![f64::NEG_INFINITY; targets];
        for &lambda in &RIDGE_LAMBDAS {
            let r2 = r2_scores(&solver.fit(lambda).predict(&val_z), &val_y);
            for t in 0..targets {
                // NaN (a constant validation target) never beats the first λ.
                if r2[t] > best[t] {
                    (best[t], lambdas[t]) = (r2[t], lambda);
                }
            }
        }
    }
    // One refit per distinct λ; each target takes its own column from the fit with its λ.
    let solver = RidgeSolver::new(&train_z, train_y);
    let (mut test_pred, mut train_pred) = (Matrix::zeros(test_x.rows, targets), Matrix::zeros(train_x.rows, targets));
    let mut distinct = lambdas.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    for lambda in distinct {
        let model = solver.fit(lambda);
        let (te, tr) = (model.predict(&test_z), model.predict(&train_z));
        for t in (0..targets).filter(|&t| lambdas[t] == lambda) {
            (0..te.rows).for_each(|i| test_pred.data[i * targets + t] = te.data[i * targets + t]);
            (0..tr.rows).for_each(|i| train_pred.data[i * targets + t] = tr.data[i * targets + t]);
        }
    }
    RegressionScores { test_r2: r2_scores(&test_pred, test_y), train_r2: r2_scores(&train_pred, train_y), lambdas }
}
