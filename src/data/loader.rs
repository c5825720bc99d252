//! Batches of two augmented views, fed by worker threads.
//!
//! Determinism: the clips of batch (epoch, step) come from a permutation
//! seeded by (seed, epoch), and each clip's augmentation RNG is seeded by
//! (seed, epoch, clip, view). Which worker builds a batch, and when, changes
//! nothing — so a run resumed at any step sees exactly the same batches.
//!
//! Distribution: `batch_size` is global. Every step takes the next
//! `batch_size` clips of the epoch's permutation and gives rank r the r-th
//! contiguous slice, so ranks never overlap and all run the same number of
//! steps (a final partial batch is dropped).

use super::augment::{augment_clip, AugmentConfig, ViewParams};
use super::shards::ShardDataset;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Clips per step across all ranks.
    pub batch_size: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Worker threads building batches, and how many finished batches may wait.
    pub workers: usize,
    pub prefetch: usize,
    pub augment: AugmentConfig,
    /// Frames per clip given to the model, spread evenly over the stored clip
    /// (`None`: all of them).
    pub frames: Option<usize>,
}

/// This rank's share of one step: clip indices and their two views, [B, T, 3, S, S] each.
pub struct Batch {
    pub epoch: usize,
    pub step: usize,
    pub clips: Vec<usize>,
    pub view1: Tensor,
    pub view2: Tensor,
}

impl Batch {
    /// `(view1, view2, clip_indices)`.
    pub fn into_parts(self) -> (Tensor, Tensor, Vec<usize>) {
        (self.view1, self.view2, self.clips)
    }
}

/// Which clips each rank gets at each step.
#[derive(Clone, Debug)]
pub struct DistributedSampler {
    pub clips: usize,
    pub batch_size: usize,
    pub rank: usize,
    pub world: usize,
    pub seed: u64,
}

impl DistributedSampler {
    pub fn new(clips: usize, batch_size: usize, rank: usize, world: usize, seed: u64) -> Result<DistributedSampler> {
        if world == 0 || rank >= world {
            return Err(Error::invalid("sampler", format!("rank {rank} is not in a world of {world}")));
        }
        if batch_size == 0 || batch_size % world != 0 {
            return Err(Error::invalid(
                "--batch_size",
                format!("the global batch size {batch_size} must be a positive multiple of the {world} ranks"),
            ));
        }
        if clips < batch_size {
            return Err(Error::invalid(
                "--batch_size",
                format!("batch size {batch_size} is larger than the dataset ({clips} clips)"),
            ));
        }
        Ok(DistributedSampler { clips, batch_size, rank, world, seed })
    }

    pub fn steps_per_epoch(&self) -> usize {
        self.clips / self.batch_size
    }

    /// The epoch's shuffled clip order (the same on every rank): `Rng::fork(seed, epoch)`.
    pub fn permutation(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.clips).collect();
        Rng::fork(self.seed, epoch as u64).shuffle(&mut order);
        order
    }

    /// This rank's clips at `step` of `epoch`.
    pub fn batch(&self, epoch: usize, step: usize) -> Vec<usize> {
        self.batch_from(&self.permutation(epoch), step)
    }

    /// This rank's clips at `step`, given the epoch's permutation (saves reshuffling every step).
    pub fn batch_from(&self, permutation: &[usize], step: usize) -> Vec<usize> {
        let local = self.batch_size / self.world;
        let start = step * self.batch_size + self.rank * local;
        permutation.get(start..start + local).map(<[usize]>::to_vec).unwrap_or_default()
    }
}

/// The augmentation RNG of one clip's view in one epoch.
fn view_rng(seed: u64, epoch: usize, clip: usize, view: usize) -> Rng {
    Rng::fork(seed ^ 0xA06_0E17, ((epoch as u64) << 36) ^ ((clip as u64) << 1) ^ view as u64)
}

/// Mixed into the seed of a reversed twin's views, so they are drawn apart from the forward ones.
const TWIN_SEED: u64 = 0x7E7E_5EED;

/// The temporal-jitter RNG of one clip's view in one epoch (its own stream, so that the
/// spatial transforms are the same with and without jitter).
fn shift_rng(seed: u64, epoch: usize, clip: usize, view: usize) -> Rng {
    Rng::fork(seed ^ 0x7E3_5A1F, ((epoch as u64) << 36) ^ ((clip as u64) << 1) ^ view as u64)
}

/// Builds the batch for (epoch, step): a pure function of its arguments.
pub fn make_batch(
    ds: &ShardDataset,
    sampler: &DistributedSampler,
    cfg: &AugmentConfig,
    epoch: usize,
    step: usize,
) -> Result<Batch> {
    build_batch(ds, sampler.seed, cfg, None, epoch, step, sampler.batch(epoch, step))
}

/// `n` frame indices spread evenly over `total` (the first always included):
/// frame k is ⌊k·total/n⌋.
pub fn evenly_spaced_frames(total: usize, n: usize) -> Vec<usize> {
    (0..n).map(|k| k * total / n).collect()
}

/// Augments `clips` into two views; each clip's transforms depend only on (seed, epoch, clip).
fn build_batch(
    ds: &ShardDataset,
    seed: u64,
    cfg: &AugmentConfig,
    frames: Option<usize>,
    epoch: usize,
    step: usize,
    clips: Vec<usize>,
) -> Result<Batch> {
    if clips.is_empty() {
        return Err(Error::index("batch", format!("step {step} is past the end of epoch {epoch}")));
    }
    let m = ds.manifest();
    let base = frames.map_or_else(|| (0..m.frames).collect(), |n| evenly_spaced_frames(m.frames, n));
    let (t, s) = (base.len(), cfg.out_size);
    // Temporal jitter can shift the frames as far as the clip has frames after the last one.
    let max_shift = cfg.temporal_jitter.min(m.frames - 1 - base.last().copied().unwrap_or(0));
    let per_clip = t * 3 * s * s;
    let frame_bytes = m.height * m.width * 3;
    // Forward instances first, then (with reversed twins) the same clips played backwards.
    let directions: &[bool] = if cfg.reversed_twins { &[false, true] } else { &[false] };
    let instances = clips.len() * directions.len();
    let mut subset = Vec::new();
    let mut views = [vec![0f32; instances * per_clip], vec![0f32; instances * per_clip]];
    for (d, &reversed) in directions.iter().enumerate() {
        // A twin's views have random draws of their own.
        let seed = if reversed { seed ^ TWIN_SEED } else { seed };
        for (b, &clip) in clips.iter().enumerate() {
            let whole = ds.clip(clip)?;
            let instance = d * clips.len() + b;
            for (v, out) in views.iter_mut().enumerate() {
                let shift = if max_shift > 0 { shift_rng(seed, epoch, clip, v).below(max_shift + 1) } else { 0 };
                let bytes = if shift == 0 && t == m.frames && !reversed {
                    whole
                } else {
                    subset.clear();
                    for k in 0..t {
                        let f = base[if reversed { t - 1 - k } else { k }] + shift;
                        subset.extend_from_slice(&whole[f * frame_bytes..(f + 1) * frame_bytes]);
                    }
                    &subset[..]
                };
                let params = ViewParams::sample(cfg, m.height, m.width, &mut view_rng(seed, epoch, clip, v));
                let out = &mut out[instance * per_clip..(instance + 1) * per_clip];
                augment_clip(bytes, t, m.height, m.width, &params, cfg, out)?;
            }
        }
    }
    let shape = [instances, t, 3, s, s];
    let [v1, v2] = views;
    Ok(Batch { epoch, step, clips, view1: Tensor::from_vec(v1, &shape)?, view2: Tensor::from_vec(v2, &shape)? })
}

pub struct Loader {
    ds: Arc<ShardDataset>,
    sampler: DistributedSampler,
    cfg: LoaderConfig,
}

impl Loader {
    pub fn new(ds: Arc<ShardDataset>, cfg: LoaderConfig) -> Result<Loader> {
        let m = ds.manifest();
        let s = cfg.augment.out_size;
        if m.height < s || m.width < s {
            return Err(Error::invalid(
                "loader",
                format!(
                    "{}: frames are {}x{}, smaller than the {s}x{s} crop output; use a smaller crop size or regenerate the data with a larger --size",
                    ds.dir().display(),
                    m.height,
                    m.width
                ),
            ));
        }
        cfg.augment.validate()?;
        if let Some(n) = cfg.frames {
            if n == 0 || n > m.frames {
                return Err(Error::invalid(
                    "--num_frames",
                    format!("{}: clips have {} frames, cannot take {n}", ds.dir().display(), m.frames),
                ));
            }
        }
        if cfg.workers == 0 || cfg.prefetch == 0 {
            return Err(Error::invalid("loader", "workers and prefetch must be at least 1"));
        }
        let sampler = DistributedSampler::new(ds.len(), cfg.batch_size, cfg.rank, cfg.world, cfg.seed)?;
        Ok(Loader { ds, sampler, cfg })
    }

    pub fn sampler(&self) -> &DistributedSampler {
        &self.sampler
    }

    /// Batches `start_step..` of `epoch`, built ahead by the worker threads.
    pub fn epoch(&self, epoch: usize, start_step: usize) -> EpochIter {
        let steps = self.sampler.steps_per_epoch();
        let next = Arc::new(AtomicUsize::new(start_step));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let permutation = Arc::new(self.sampler.permutation(epoch));
        let workers = (0..self.cfg.workers)
            .map(|_| {
                let (ds, sampler, aug, frames) =
                    (self.ds.clone(), self.sampler.clone(), self.cfg.augment.clone(), self.cfg.frames);
                let (next, stop, tx, permutation) = (next.clone(), stop.clone(), tx.clone(), permutation.clone());
                std::thread::spawn(move || loop {
                    let step = next.fetch_add(1, Ordering::SeqCst);
                    if step >= steps || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let clips = sampler.batch_from(&permutation, step);
                    let batch = build_batch(&ds, sampler.seed, &aug, frames, epoch, step, clips);
                    if tx.send((step, batch)).is_err() {
                        break; // the consumer went away
                    }
                })
            })
            .collect();
        EpochIter { rx: Some(rx), pending: BTreeMap::new(), next_step: start_step, steps, stop, workers }
    }
}

/// Yields an epoch's batches in step order, whatever order workers finish them.
pub struct EpochIter {
    rx: Option<Receiver<(usize, Result<Batch>)>>,
    pending: BTreeMap<usize, Result<Batch>>,
    next_step: usize,
    steps: usize,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next_step >= self.steps {
            return None;
        }
        loop {
            if let Some(b) = self.pending.remove(&self.next_step) {
                self.next_step += 1;
                return Some(b);
            }
            match self.rx.as_ref()?.recv() {
                Ok((step, batch)) => {
                    self.pending.insert(step, batch);
                }
                Err(_) => return Some(Err(Error::invalid("loader", "a data worker stopped unexpectedly"))),
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.rx = None; // unblocks workers waiting to send
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
