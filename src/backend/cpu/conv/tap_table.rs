//! im2col and col2im for small feature maps, by a table of offsets.
//!
//! The row-copy im2col (`conv.rs`) moves each (channel, tap) row as a few block copies
//! and fills, one per output row. On an 8×8 or 4×4 map those are runs of 4–8 elements,
//! so the calls to memcpy/memset cost more than the data they move: on the demo's
//! 32→32 conv of 4×4 maps, unfolding took longer than the GEMM.
//!
//! Here each channel plane is first copied into a zero-bordered plane, after which
//! every (tap, output pixel) reads one fixed offset of it, the same for every channel
//! and image. The table of those offsets is built once per convolution, and im2col
//! becomes one tight gather per channel (no bounds tests: padding reads the border's
//! zeros); col2im the matching scatter-add into a zeroed padded plane, whose interior
//! is then the channel's dX. Every dX element adds its terms in tap order, as the
//! row-copy col2im does, so both give the same bits.

use super::ConvGeometry;
use crate::backend::cpu::simd::vectorized;
use crate::tensor::Float;

/// For every kernel tap (i, j) and output pixel (oy, ox), in that order, the offset of
/// the input pixel it reads in the plane padded by (ph, pw) on every side.
pub(super) struct TapTable {
    offsets: Vec<u32>,
    padded_w: usize,
    padded_len: usize,
}

impl TapTable {
    pub(super) fn new(g: &ConvGeometry) -> Self {
        let (padded_h, padded_w) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
        let mut offsets = Vec::with_capacity(g.kh * g.kw * g.p());
        for i in 0..g.kh {
            for j in 0..g.kw {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        // The geometry guarantees (oh − 1)·sh + kh ≤ padded_h (and so for columns).
                        offsets.push(((oy * g.sh + i) * padded_w + ox * g.sw + j) as u32);
                    }
                }
            }
        }
        TapTable { offsets, padded_w, padded_len: padded_h * padded_w }
    }

    /// Copies channel plane `src` ([H, W]) into the interior of `padded`.
    fn pad_into<T: Float>(&self, g: &ConvGeometry, src: &[T], padded: &mut [T]) {
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            padded[(y + g.ph) * self.padded_w + g.pw..][..g.w].copy_from_slice(row);
        }
    }

    /// [`super::im2col`]'s result: image `x`'s columns into `cols` (row stride `ld`).
    pub(super) fn im2col<T: Float>(&self, x: &[T], g: &ConvGeometry, cols: &mut [T], ld: usize) {
        let (taps, p) = (g.kh * g.kw, g.p());
        let mut padded = vec![T::zero(); self.padded_len]; // the border stays zero
        for (c, plane) in x.chunks_exact(g.h * g.w).enumerate() {
            self.pad_into(g, plane, &mut padded);
            let padded = &padded[..];
            for (tap, offsets) in self.offsets.chunks_exact(p).enumerate() {
                let row = &mut cols[(c * taps + tap) * ld..][..p];
                // SAFETY: every offset is inside the padded plane (built so in `new`).
                vectorized(|| {
                    row.iter_mut().zip(offsets).for_each(|(d, &at)| *d = unsafe { *padded.get_unchecked(at as usize) })
                });
            }
        }
    }

    /// [`super::col2im`]'s result: adds every column entry into the pixel of `dx` it came from.
    pub(super) fn col2im<T: Float>(&self, cols: &[T], ld: usize, g: &ConvGeometry, dx: &mut [T]) {
        let (taps, p) = (g.kh * g.kw, g.p());
        let mut padded = vec![T::zero(); self.padded_len];
        for (c, plane) in dx.chunks_exact_mut(g.h * g.w).enumerate() {
            padded.fill(T::zero());
            for (tap, offsets) in self.offsets.chunks_exact(p).enumerate() {
                let row = &cols[(c * taps + tap) * ld..][..p];
                row.iter().zip(offsets).for_each(|(&v, &at)| padded[at as usize] += v);
            }
            for (y, out) in plane.chunks_exact_mut(g.w).enumerate() {
                out.iter_mut().zip(&padded[(y + g.ph) * self.padded_w + g.pw..]).for_each(|(d, &v)| *d += v);
            }
        }
    }
}
