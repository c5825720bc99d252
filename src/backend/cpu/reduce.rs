//! Reductions over any set of axes.
//!
//! The reduced axes are permuted to the end and the view gathered, so every
//! output element reduces one contiguous row. Sums accumulate in f64 so f32
//! results do not drift with row length.

use crate::error::Result;
use crate::tensor::{Float, StorageElement, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Sum,
    Max,
}

/// Reduces over `axes` (already validated, any order), keeping them as size-1 axes.
pub fn reduce<T: Float + StorageElement>(x: &Tensor, axes: &[usize], kind: Reduction) -> Result<Tensor> {
    let rank = x.rank();
    let mut is_reduced = vec![false; rank];
    for &a in axes {
        is_reduced[a] = true;
    }
    let kept: Vec<usize> = (0..rank).filter(|&a| !is_reduced[a]).collect();
    let reduced: Vec<usize> = (0..rank).filter(|&a| is_reduced[a]).collect();
    let leading = reduced.iter().enumerate().all(|(i, &a)| a == i);
    if kind == Reduction::Sum && leading && x.is_contiguous() && !reduced.is_empty() {
        return sum_leading_axes::<T>(x, reduced.len());
    }
    let perm: Vec<usize> = kept.iter().chain(reduced.iter()).copied().collect();
    let permuted = x.view_with_layout(x.layout().permute("reduce", &perm)?);
    let data = permuted.host_data::<T>()?;
    let row: usize = reduced.iter().map(|&a| x.shape()[a]).product();
    let rows: usize = kept.iter().map(|&a| x.shape()[a]).product();
    let out_shape: Vec<usize> = (0..rank).map(|a| if is_reduced[a] { 1 } else { x.shape()[a] }).collect();
    let reduce_row = |r: usize| -> T {
        let xs = &data[r * row..(r + 1) * row];
        match kind {
            Reduction::Sum => T::of_f64(xs.iter().map(|v| v.as_f64()).sum::<f64>()),
            Reduction::Max => {
                xs.iter().copied().fold(T::neg_infinity(), |m, v| if v > m || v.is_nan() { v } else { m })
            }
        }
    };
    let out: Vec<T> = if rows * row >= 1 << 14 {
        (0..rows).into_par_iter().map(reduce_row).collect()
    } else {
        (0..rows).map(reduce_row).collect()
    };
    Tensor::from_vec(out, &out_shape)
}

/// Σ over the first `axes` axes of a row-major `x`: out[c] = Σ_r x[r, c], rows added
/// one after another into f64 accumulators (threads take column blocks).
fn sum_leading_axes<T: Float + StorageElement>(x: &Tensor, axes: usize) -> Result<Tensor> {
    let data = x.host_data::<T>()?;
    let rows: usize = x.shape()[..axes].iter().product();
    let cols: usize = x.shape()[axes..].iter().product();
    let mut out = vec![T::zero(); cols];
    let sum_block = |first: usize, block: &mut [T]| {
        let mut acc = vec![0.0f64; block.len()];
        for r in 0..rows {
            let xs = &data[r * cols + first..][..block.len()];
            acc.iter_mut().zip(xs).for_each(|(a, v)| *a += v.as_f64());
        }
        block.iter_mut().zip(&acc).for_each(|(o, &a)| *o = T::of_f64(a));
    };
    // Blocks of at least 64 columns so each thread streams whole cache lines.
    let block = cols.div_ceil(rayon::current_num_threads()).max(64);
    if rows * cols >= 1 << 14 && cols > block {
        out.par_chunks_mut(block).enumerate().for_each(|(i, b)| sum_block(i * block, b));
    } else if cols > 0 {
        sum_block(0, &mut out);
    }
    let mut out_shape = x.shape().to_vec();
    out_shape[..axes].iter_mut().for_each(|d| *d = 1);
    Tensor::from_vec(out, &out_shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    /// The leading-axes fast path against the general gather path (a permuted view
    /// of the same values takes the general path).
    #[test]
    fn sums_over_leading_axes_match_the_general_path() {
        let mut rng = crate::rng::Rng::new(7);
        for shape in [[3usize, 5, 7], [40, 33, 2], [1, 1, 300], [600, 1, 64]] {
            let x = Tensor::randn(&shape, 1.0, DType::F32, &mut rng).unwrap();
            let fast = reduce::<f32>(&x, &[0, 1], Reduction::Sum).unwrap();
            assert_eq!(fast.shape(), [1, 1, shape[2]]);
            // The same tensor stored transposed: not contiguous, so the general path.
            let xt = x.permute(&[2, 0, 1]).unwrap().contiguous().unwrap().permute(&[1, 2, 0]).unwrap();
            assert!(!xt.is_contiguous() || shape[0] * shape[1] == 1 || shape[2] == 1);
            let general = reduce::<f32>(&xt, &[0, 1], Reduction::Sum).unwrap();
            assert_eq!(fast.to_vec::<f32>().unwrap(), general.to_vec::<f32>().unwrap(), "{shape:?}");
            let first = reduce::<f32>(&x, &[0], Reduction::Sum).unwrap();
            let first_general = reduce::<f32>(&xt, &[0], Reduction::Sum).unwrap();
            assert_eq!(first.to_vec::<f32>().unwrap(), first_general.to_vec::<f32>().unwrap(), "{shape:?}");
        }
    }
}
