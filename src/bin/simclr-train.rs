//! `simclr-train`: with no arguments, a quick CPU demo of SimCLR's core loop.
//!
//! The demo: unlabeled 32×32 images of 1–3 soft coloured discs; two random
//! augmentations of each image; a small conv encoder + projection MLP trained
//! with NT-Xent so the two views of an image land close together and away from
//! every other image in the batch. It then reports, for the random-init and the
//! trained encoder: how often a view's nearest neighbour is its partner view,
//! and a linear probe's accuracy at counting the discs (chance ≈ 33 %).
//!
//! Training from processed video shards with the baseline's flags
//! (`--processed_dir`, `--base_model`, ...) is the next milestone; until it
//! lands, passing flags gives an error that says so.

use simclr::autograd::no_grad;
use simclr::ops::batchnorm::{batch_norm_2d, RunningStats};
use simclr::ops::conv2d::conv2d;
use simclr::ops::loss::{cross_entropy, nt_xent};
use simclr::ops::matmul::linear;
use simclr::ops::pool::{global_avg_pool2d, max_pool2d};
use simclr::optim::Sgd;
use simclr::{DType, Result, Rng, Tensor};
use std::time::Instant;

const SIZE: usize = 32;
const BATCH: usize = 64;
const STEPS: usize = 300;
const TEMPERATURE: f64 = 0.5;

/// One synthetic image: 1–3 soft discs of random colour on a grey background.
fn draw_image(rng: &mut Rng) -> (Vec<f32>, usize) {
    let count = 1 + rng.below(3);
    let bg = rng.uniform_range(0.1, 0.4) as f32;
    let mut img = vec![bg; 3 * SIZE * SIZE];
    for _ in 0..count {
        let r = rng.uniform_range(3.0, 6.0);
        let (cx, cy) = (rng.uniform_range(r, SIZE as f64 - r), rng.uniform_range(r, SIZE as f64 - r));
        let colour = [rng.uniform_range(0.3, 1.0), rng.uniform_range(0.3, 1.0), rng.uniform_range(0.3, 1.0)];
        for y in 0..SIZE {
            for x in 0..SIZE {
                let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
                let cover = (r - d + 0.5).clamp(0.0, 1.0) as f32; // anti-aliased edge
                for c in 0..3 {
                    let p = &mut img[c * SIZE * SIZE + y * SIZE + x];
                    *p = *p * (1.0 - cover) + colour[c] as f32 * cover;
                }
            }
        }
    }
    (img, count)
}

/// A random view: shift (zero padded), horizontal flip, brightness/contrast jitter, noise.
fn augment(img: &[f32], rng: &mut Rng) -> Vec<f32> {
    let (dx, dy) = (rng.below(9) as isize - 4, rng.below(9) as isize - 4);
    let flip = rng.uniform() < 0.5;
    let (brightness, contrast) = (rng.uniform_range(-0.2, 0.2) as f32, rng.uniform_range(0.7, 1.3) as f32);
    let mut out = vec![0f32; img.len()];
    for c in 0..3 {
        for y in 0..SIZE {
            for x in 0..SIZE {
                let sx = if flip { SIZE - 1 - x } else { x } as isize + dx;
                let sy = y as isize + dy;
                let v = if (0..SIZE as isize).contains(&sx) && (0..SIZE as isize).contains(&sy) {
                    img[c * SIZE * SIZE + sy as usize * SIZE + sx as usize]
                } else {
                    0.0
                };
                let noise = rng.normal() as f32 * 0.03;
                out[c * SIZE * SIZE + y * SIZE + x] = ((v - 0.5) * contrast + 0.5 + brightness + noise - 0.5) / 0.25;
            }
        }
    }
    out
}

/// Conv encoder (3 conv-BN-ReLU stages) and a 2-layer projection head.
struct Model {
    convs: Vec<(Tensor, RunningStats, Tensor, Tensor)>, // weight, running stats, bn gamma, bn beta
    head: [(Tensor, Tensor); 2],
}

impl Model {
    fn new(rng: &mut Rng) -> Result<Model> {
        let mut convs = Vec::new();
        for (cin, cout) in [(3, 16), (16, 32), (32, 64)] {
            let std = (2.0 / (cin * 9) as f64).sqrt(); // Kaiming normal for ReLU
            let w = Tensor::randn(&[cout, cin, 3, 3], std, DType::F32, rng)?.requires_grad()?;
            let gamma = Tensor::ones(&[cout], DType::F32)?.requires_grad()?;
            let beta = Tensor::zeros(&[cout], DType::F32)?.requires_grad()?;
            convs.push((w, RunningStats::new(cout, DType::F32)?, gamma, beta));
        }
        let lin = |i: usize, o: usize, rng: &mut Rng| -> Result<(Tensor, Tensor)> {
            let bound = 1.0 / (i as f64).sqrt();
            Ok((
                Tensor::uniform(&[o, i], -bound, bound, DType::F32, rng)?.requires_grad()?,
                Tensor::zeros(&[o], DType::F32)?.requires_grad()?,
            ))
        };
        Ok(Model { convs, head: [lin(64, 64, rng)?, lin(64, 32, rng)?] })
    }

    fn params(&self) -> Vec<Tensor> {
        let mut p = Vec::new();
        for (w, _, g, b) in &self.convs {
            p.extend([w.clone(), g.clone(), b.clone()]);
        }
        for (w, b) in &self.head {
            p.extend([w.clone(), b.clone()]);
        }
        p
    }

    /// Image batch [B, 3, 32, 32] → representation h [B, 64].
    fn encode(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, (w, stats, gamma, beta)) in self.convs.iter_mut().enumerate() {
            h = conv2d(&h, w, None, (1, 1), (1, 1))?;
            h = batch_norm_2d(&h, Some(gamma), Some(beta), stats, training, 1e-5)?.relu()?;
            if i < last {
                h = max_pool2d(&h, (2, 2), (2, 2), (0, 0))?;
            }
        }
        global_avg_pool2d(&h)
    }

    /// Representation → projection z [B, 32], where the contrastive loss is applied.
    fn project(&self, h: &Tensor) -> Result<Tensor> {
        let [(w1, b1), (w2, b2)] = &self.head;
        linear(&linear(h, w1, Some(b1))?.relu()?, w2, Some(b2))
    }
}

fn batch_tensor(images: &[Vec<f32>]) -> Result<Tensor> {
    Tensor::from_vec(images.concat(), &[images.len(), 3, SIZE, SIZE])
}

/// Fraction of view-1 embeddings whose most similar view-2 embedding is their own partner.
fn retrieval_accuracy(h1: &Tensor, h2: &Tensor) -> Result<f64> {
    let sim = simclr::ops::normalize::cosine_similarity(h1, h2, 1e-8)?;
    let n = h1.shape()[0];
    let s = sim.to_f64_vec();
    let hits = (0..n)
        .filter(|&i| {
            let row = &s[i * n..(i + 1) * n];
            (0..n).all(|j| j == i || row[j] < row[i])
        })
        .count();
    Ok(hits as f64 / n as f64)
}

/// Trains a linear classifier on frozen features (first half) and tests it on the second half.
fn count_probe(features: &Tensor, counts: &[usize]) -> Result<f64> {
    let n = counts.len();
    let half = n / 2;
    // Standardise features with the training half's statistics.
    let train = features.narrow(0, 0, half)?;
    let mean = train.mean(&[0], true)?;
    let std = train.var(&[0], 0, true)?.add_scalar(1e-6)?.sqrt()?;
    let f = features.sub(&mean)?.div(&std)?;
    let dim = f.shape()[1];
    let w = Tensor::zeros(&[3, dim], DType::F32)?.requires_grad()?;
    let b = Tensor::zeros(&[3], DType::F32)?.requires_grad()?;
    let labels: Vec<i64> = counts.iter().map(|&c| c as i64 - 1).collect();
    let train_y = Tensor::from_vec(labels[..half].to_vec(), &[half])?;
    let mut opt = Sgd::new(vec![w.clone(), b.clone()], 0.1, 0.9, 1e-3)?;
    let train_x = f.narrow(0, 0, half)?;
    for _ in 0..300 {
        opt.zero_grad();
        cross_entropy(&linear(&train_x, &w, Some(&b))?, &train_y)?.backward()?;
        opt.step()?;
    }
    let logits = no_grad(|| linear(&f.narrow(0, half, n - half)?, &w, Some(&b)))?.to_f64_vec();
    let correct = (half..n)
        .filter(|&i| {
            let row = &logits[(i - half) * 3..(i - half + 1) * 3];
            let pred =
                (0..3).max_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap_or(std::cmp::Ordering::Equal)).unwrap_or(0);
            pred as i64 == labels[i]
        })
        .count();
    Ok(correct as f64 / (n - half) as f64)
}

struct EvalSet {
    view1: Tensor,
    view2: Tensor,
    clean: Tensor,
    counts: Vec<usize>,
}

fn evaluate(model: &mut Model, set: &EvalSet) -> Result<(f64, f64)> {
    let (h1, h2, hc) = no_grad(|| -> Result<_> {
        Ok((model.encode(&set.view1, false)?, model.encode(&set.view2, false)?, model.encode(&set.clean, false)?))
    })?;
    Ok((retrieval_accuracy(&h1, &h2)?, count_probe(&hc, &set.counts)?))
}

fn run_demo() -> Result<()> {
    println!("simclr demo: SimCLR on synthetic disc images, CPU, {} threads", rayon::current_num_threads());
    println!("  batch {BATCH} images → {} views, {STEPS} steps, NT-Xent temperature {TEMPERATURE}\n", 2 * BATCH);
    let mut rng = Rng::new(42);
    let mut model = Model::new(&mut rng)?;

    // A fixed evaluation set the encoder never trains on.
    let mut eval_rng = Rng::new(7);
    let (mut v1, mut v2, mut clean, mut counts) = (vec![], vec![], vec![], vec![]);
    for _ in 0..600 {
        let (img, count) = draw_image(&mut eval_rng);
        v1.push(augment(&img, &mut eval_rng));
        v2.push(augment(&img, &mut eval_rng));
        clean.push(img.iter().map(|p| (p - 0.5) / 0.25).collect());
        counts.push(count);
    }
    let eval = EvalSet { view1: batch_tensor(&v1)?, view2: batch_tensor(&v2)?, clean: batch_tensor(&clean)?, counts };
    let (ret0, probe0) = evaluate(&mut model, &eval)?;

    let mut opt = Sgd::new(model.params(), 0.05, 0.9, 1e-4)?;
    let start = Instant::now();
    for step in 1..=STEPS {
        let (mut a, mut b) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
        for _ in 0..BATCH {
            let (img, _) = draw_image(&mut rng); // labels are never used for training
            a.push(augment(&img, &mut rng));
            b.push(augment(&img, &mut rng));
        }
        // Both views in one batch: rows 0..B are view 1, rows B..2B their partners.
        let x = Tensor::cat(&[&batch_tensor(&a)?, &batch_tensor(&b)?], 0)?;
        opt.zero_grad();
        let h = model.encode(&x, true)?;
        let z = model.project(&h)?;
        let loss = nt_xent(&z, TEMPERATURE)?;
        let value = loss.item()?;
        if !value.is_finite() {
            return Err(simclr::Error::NonFinite(format!("loss is {value} at step {step}")));
        }
        loss.backward()?;
        opt.step()?;
        if step == 1 || step % 25 == 0 {
            let rate = (step * 2 * BATCH) as f64 / start.elapsed().as_secs_f64();
            println!("  step {step:>4}  loss {value:.4}  ({rate:.0} views/s)");
        }
    }
    let (ret1, probe1) = evaluate(&mut model, &eval)?;
    println!("\n  {:<28} {:>16} {:>22}", "encoder", "view retrieval", "disc-count probe");
    println!("  {:<28} {:>15.1}% {:>21.1}%", "chance", 100.0 / 600.0, 100.0 / 3.0);
    println!("  {:<28} {:>15.1}% {:>21.1}%", "random init", 100.0 * ret0, 100.0 * probe0);
    println!("  {:<28} {:>15.1}% {:>21.1}%", format!("SimCLR-trained ({STEPS} steps)"), 100.0 * ret1, 100.0 * probe1);
    println!("\n  done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        eprintln!(
            "error: simclr-train does not take arguments yet (got {args:?}).\n\
             Training from processed shards with --processed_dir/--base_model/... is not implemented yet; \
             run `cargo run --release` with no arguments for the CPU demo."
        );
        std::process::exit(2);
    }
    if let Err(e) = run_demo() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
