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
