//! A PNG contact sheet: a few clips as rows, frames side by side, so a person
//! can look at what a dataset holds.

use super::shards::ShardDataset;
use crate::atomic_file::write_atomic;
use crate::error::{Error, Result};
use std::path::Path;

/// Encodes an RGB8 image as PNG bytes.
pub fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| Error::invalid("encode_png", e.to_string()))?;
        w.write_image_data(rgb).map_err(|e| Error::invalid("encode_png", e.to_string()))?;
    }
    Ok(out)
}

/// Writes `clips` evenly spaced clips, `max_frames` evenly spaced frames each, to `path`.
/// Returns the image size.
pub fn write_contact_sheet(ds: &ShardDataset, path: &Path, clips: usize, max_frames: usize) -> Result<(usize, usize)> {
    let m = ds.manifest();
    let rows = clips.min(ds.len()).max(1);
    let cols = max_frames.min(m.frames).max(1);
    let gap = 2;
    let (w, h) = (cols * (m.width + gap) + gap, rows * (m.height + gap) + gap);
    let mut img = vec![255u8; w * h * 3];
    let frame_bytes = m.width * m.height * 3;
    for r in 0..rows {
        let clip_index = r * ds.len() / rows;
        let clip = ds.clip(clip_index)?;
        for c in 0..cols {
            let f = c * m.frames / cols;
            let frame = &clip[f * frame_bytes..(f + 1) * frame_bytes];
            let (x0, y0) = (gap + c * (m.width + gap), gap + r * (m.height + gap));
            for y in 0..m.height {
                let dst = ((y0 + y) * w + x0) * 3;
                img[dst..dst + m.width * 3].copy_from_slice(&frame[y * m.width * 3..(y + 1) * m.width * 3]);
            }
        }
    }
    write_atomic(path, &encode_png(w, h, &img)?)?;
    Ok((w, h))
}
