//! Frozen features of a dataset's clips: the encoder's representation h of
//! each clip's un-augmented view, and the raw-pixel baseline.
//!
//! The un-augmented view is what the encoder saw in training minus the
//! randomness: the same `spec.num_frames` evenly spaced frames
//! (`data::loader::evenly_spaced_frames`), the *whole* frame (no crop, no
//! flip, no colour change) resized to `spec.image_size` with the same
//! antialiased filter (`data::resize`), normalised with ImageNet statistics.

use crate::autograd::no_grad;
use crate::checkpoint::ModelSpec;
use crate::data::augment::AugmentConfig;
use crate::data::loader::evenly_spaced_frames;
use crate::data::resize::{resample_frame, Taps};
use crate::data::shards::ShardDataset;
use crate::error::{Error, Result};
use crate::nn::simclr::Encoder;
use crate::nn::Module;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// One feature row per clip: `data[r * dim..(r + 1) * dim]` belongs to clip `ids[r]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    pub ids: Vec<usize>,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }
}

/// Side of the raw-pixel baseline's frames: each selected frame becomes 8×8 RGB.
pub const PIXEL_SIZE: usize = 8;

/// Refuses a dataset the model cannot be evaluated on: fewer frames per clip
/// than the model takes, or frames smaller than its input.
pub fn check_compatible(ds: &ShardDataset, spec: &ModelSpec) -> Result<()> {
    let m = ds.manifest();
    if m.frames < spec.num_frames {
        return Err(Error::invalid(
            "--processed_dir",
            format!(
                "{} has {} frames per clip; the model takes {} — use a dataset with at least {} frames",
                ds.dir().display(),
                m.frames,
                spec.num_frames,
                spec.num_frames
            ),
        ));
    }
    if m.height < spec.image_size || m.width < spec.image_size {
        return Err(Error::invalid(
            "--processed_dir",
            format!(
                "{} has {}x{} frames, smaller than the model's {}x{} input — use a dataset with larger frames",
                ds.dir().display(),
                m.height,
                m.width,
                spec.image_size,
                spec.image_size
            ),
        ));
    }
    Ok(())
}

/// Resizes the selected frames of one clip (T×H×W×3 u8) to `size`×`size`
/// RGB in [0, 1]: `[frame][pixel] = [r, g, b]`, frames in `frames` order.
fn resized_frames(clip: &[u8], height: usize, width: usize, frames: &[usize], size: usize) -> Vec<[f32; 3]> {
    let (rows, cols) = (Taps::new(0, height, size), Taps::new(0, width, size));
    let frame_bytes = height * width * 3;
    let mut out = vec![[0f32; 3]; frames.len() * size * size];
    let mut scratch = Vec::new();
    for (&f, dst) in frames.iter().zip(out.chunks_exact_mut(size * size)) {
        resample_frame(&clip[f * frame_bytes..(f + 1) * frame_bytes], width, &rows, &cols, false, &mut scratch, dst);
    }
    out
}

/// The un-augmented views of `clips` as one `[B, T, 3, S, S]` f32 tensor: the
/// `spec.num_frames` evenly spaced frames the model trained on.
pub fn clip_batch(ds: &ShardDataset, clips: &[usize], spec: &ModelSpec) -> Result<Tensor> {
    clip_batch_of_frames(ds, clips, &evenly_spaced_frames(ds.manifest().frames, spec.num_frames), spec.image_size)
}

/// The un-augmented views of stored frames `frames` of `clips`, `s`×`s`, as `[B, T, 3, s, s]`.
pub fn clip_batch_of_frames(ds: &ShardDataset, clips: &[usize], frames: &[usize], s: usize) -> Result<Tensor> {
    let m = ds.manifest();
    let t = frames.len();
    if let Some(f) = frames.iter().find(|&&f| f >= m.frames) {
        return Err(Error::index("clip_batch", format!("frame {f} of clips with {} frames", m.frames)));
    }
    let norm = AugmentConfig::default();
    let per_clip = t * 3 * s * s;
    let bytes: Vec<&[u8]> = clips.iter().map(|&c| ds.clip(c)).collect::<Result<_>>()?;
    let mut data = vec![0f32; clips.len() * per_clip];
    data.par_chunks_mut(per_clip.max(1)).zip(&bytes).for_each(|(out, clip)| {
        let pixels = resized_frames(clip, m.height, m.width, frames, s);
        // Channels first, normalised: out[f][c][y][x].
        for (f, frame) in pixels.chunks_exact(s * s).enumerate() {
            for c in 0..3 {
                let plane = &mut out[(f * 3 + c) * s * s..(f * 3 + c + 1) * s * s];
                for (o, p) in plane.iter_mut().zip(frame) {
                    *o = (p[c] - norm.mean[c]) / norm.std[c];
                }
            }
        }
    });
    Tensor::from_vec(data, &[clips.len(), t, 3, s, s])
}

/// Encodes `clip_ids` with `encoder` in evaluation mode, `batch` clips at a
/// time, without recording gradients: the representation h (not the
/// projection). Leaves the encoder in evaluation mode.
pub fn encode_dataset(
    encoder: &mut Encoder,
    ds: &ShardDataset,
    clip_ids: &[usize],
    spec: &ModelSpec,
    batch: usize,
) -> Result<Features> {
    let frames = evenly_spaced_frames(ds.manifest().frames, spec.num_frames);
    encode_dataset_with_progress(encoder, ds, clip_ids, spec, &frames, batch, &mut |_| {})
}

/// `encode_dataset` of stored frames `frames` (`spec.num_frames` of them), calling
/// `on_clips(n)` after each batch of n clips.
pub fn encode_dataset_with_progress(
    encoder: &mut Encoder,
    ds: &ShardDataset,
    clip_ids: &[usize],
    spec: &ModelSpec,
    frames: &[usize],
    batch: usize,
    on_clips: &mut dyn FnMut(usize),
) -> Result<Features> {
    if frames.len() != spec.num_frames {
        return Err(Error::invalid(
            "encode_dataset",
            format!("the model sees {} frames, {} were chosen", spec.num_frames, frames.len()),
        ));
    }
    if batch == 0 {
        return Err(Error::invalid("encode_dataset", "the batch size must be at least 1"));
    }
    check_compatible(ds, spec)?;
    encoder.set_training(false);
    let dim = encoder.feature_dim();
    let mut data = Vec::with_capacity(clip_ids.len() * dim);
    for chunk in clip_ids.chunks(batch) {
        let x = clip_batch_of_frames(ds, chunk, frames, spec.image_size)?;
        let h = no_grad(|| encoder.forward(&x))?;
        if h.shape() != [chunk.len(), dim] {
            return Err(Error::shape(
                "encode_dataset",
                format!(
                    "the encoder gave {:?} for {} clips, expected [{}, {dim}]",
                    h.shape(),
                    chunk.len(),
                    chunk.len()
                ),
            ));
        }
        data.extend_from_slice(&h.host_data::<f32>()?);
        on_clips(chunk.len());
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "the encoder's features of clip {} are not finite; the checkpoint's weights are probably diverged",
            clip_ids[i / dim.max(1)]
        )));
    }
    Ok(Features { ids: clip_ids.to_vec(), dim, data })
}

/// The raw-pixel baseline: each of the clip's stored frames `frames` (those
/// the model sees) resized to 8×8 RGB with the same antialiased filter (at
/// this shrink factor, close to an area average), values in [0, 1], frames
/// concatenated: `frames.len() · 8 · 8 · 3` features per clip.
pub fn pixel_features(ds: &ShardDataset, clip_ids: &[usize], frames: &[usize]) -> Result<Features> {
    let m = ds.manifest();
    if frames.is_empty() || frames.iter().any(|&f| f >= m.frames) {
        return Err(Error::invalid(
            "pixel_features",
            format!("frames {frames:?} asked of clips with {} frames", m.frames),
        ));
    }
    let dim = frames.len() * PIXEL_SIZE * PIXEL_SIZE * 3;
    let bytes: Vec<&[u8]> = clip_ids.iter().map(|&c| ds.clip(c)).collect::<Result<_>>()?;
    let mut data = vec![0f32; clip_ids.len() * dim];
    data.par_chunks_mut(dim).zip(&bytes).for_each(|(out, clip)| {
        let pixels = resized_frames(clip, m.height, m.width, frames, PIXEL_SIZE);
        out.iter_mut().zip(pixels.iter().flatten()).for_each(|(o, v)| *o = *v);
    });
    Ok(Features { ids: clip_ids.to_vec(), dim, data })
}
