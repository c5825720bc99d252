//! Elementwise kernels: unary maps and broadcasting binary maps.

use super::simd::vectorized;
use crate::error::Result;
use crate::tensor::layout::{broadcast_shapes, coalesce, Layout};
use crate::tensor::{Float, StorageElement, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Below this many elements, threading costs more than it saves.
pub(crate) const PAR_MIN: usize = 1 << 14;

/// `f` applied to every element, output row-major.
pub fn unary<T: Float + StorageElement>(x: &Tensor, f: impl Fn(T) -> T + Sync + Send) -> Result<Tensor> {
    let data = x.host_data::<T>()?;
    // Slices of PAR_MIN per rayon job: the inner loop is plain enough to vectorise.
    let run = |(out, xs): (&mut [MaybeUninit<T>], &[T])| {
        vectorized(|| out.iter_mut().zip(xs).for_each(|(o, &v)| _ = o.write(f(v))))
    };
    let out = written_by(data.len(), |out| {
        if data.len() >= PAR_MIN {
            out.par_chunks_mut(PAR_MIN).zip(data.par_chunks(PAR_MIN)).for_each(run);
        } else {
            run((out, &data));
        }
    });
    Tensor::from_vec(out, x.shape())
}

/// A chunk of an output being written and the matching chunk of an input.
type OutAndInput<'a, T> = (&'a mut [MaybeUninit<T>], &'a [T]);

/// `n` elements, every one written by `fill`: no zeroing pass before the real one.
fn written_by<T>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: callers' fills cover the whole slice (chunks zipped with inputs of length n).
    unsafe { v.set_len(n) };
    v
}

/// `f(a, b)` with NumPy broadcasting. Works on strided views directly: each
/// output row is computed from the row starts of both broadcast layouts.
pub fn binary<T: Float + StorageElement>(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(T, T) -> T + Sync + Send,
) -> Result<Tensor> {
    let shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let la = a.layout().broadcast_to(op, &shape)?;
    let lb = b.layout().broadcast_to(op, &shape)?;
    let (sa, sb) = (a.host_storage(op)?, b.host_storage(op)?);
    let (da, db) = (
        T::slice(&sa).ok_or_else(|| crate::error::Error::dtype(op, "dtype mismatch"))?,
        T::slice(&sb).ok_or_else(|| crate::error::Error::dtype(op, "dtype mismatch"))?,
    );
    let n: usize = shape.iter().product();
    if n == 0 {
        return Tensor::from_vec(Vec::<T>::new(), &shape);
    }
    if la.is_contiguous() && lb.is_contiguous() {
        let (xa, xb) = (&da[la.offset..la.offset + n], &db[lb.offset..lb.offset + n]);
        let run = |((out, xa), xb): (OutAndInput<'_, T>, &[T])| {
            vectorized(|| out.iter_mut().zip(xa.iter().zip(xb)).for_each(|(o, (&x, &y))| _ = o.write(f(x, y))))
        };
        let out = written_by(n, |out| {
            if n >= PAR_MIN {
                out.par_chunks_mut(PAR_MIN).zip(xa.par_chunks(PAR_MIN)).zip(xb.par_chunks(PAR_MIN)).for_each(run);
            } else {
                run(((out, xa), xb));
            }
        });
        return Tensor::from_vec(out, &shape);
    }
    let mut out = vec![T::default(); n];
    let [la, lb]: [Layout; 2] = coalesce(&[la, lb]).try_into().expect("two layouts in, two out");
    let (starts_a, row_len, stride_a) = la.row_starts();
    let (starts_b, _, stride_b) = lb.row_starts();
    let body = |(row, (&oa, &ob)): (&mut [T], (&usize, &usize))| {
        for (j, o) in row.iter_mut().enumerate() {
            *o = f(da[oa + j * stride_a], db[ob + j * stride_b]);
        }
    };
    if n >= PAR_MIN {
        out.par_chunks_mut(row_len).zip(starts_a.par_iter().zip(starts_b.par_iter())).for_each(body);
    } else {
        out.chunks_mut(row_len).zip(starts_a.iter().zip(starts_b.iter())).for_each(body);
    }
    Tensor::from_vec(out, &shape)
}

/// Storage offsets of every element of a layout, in row-major order.
pub fn element_offsets(layout: &Layout) -> Vec<usize> {
    let (starts, row_len, stride) = layout.coalesced().row_starts();
    let mut out = Vec::with_capacity(starts.len() * row_len);
    for s in starts {
        for j in 0..row_len {
            out.push(s + j * stride);
        }
    }
    out
}
