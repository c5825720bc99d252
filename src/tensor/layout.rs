//! Shape, strides and offset: how a tensor's elements map into its storage.
//!
//! A view (transpose, narrow, broadcast) is a new `Layout` over the same
//! storage. Strides are in elements; a stride of 0 repeats an element, which
//! is how broadcasting works without copying.

use crate::error::{Error, Result};
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

/// Row-major strides for a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        strides[i] = s;
        s *= shape[i];
    }
    strides
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// NumPy broadcasting: align from the right; sizes must match or be 1.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(op, format!("cannot broadcast {a:?} with {b:?}")));
        };
    }
    Ok(out)
}

/// Checks an axis against a rank and returns it as usize. Negative axes count from the end.
pub fn resolve_axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let r = rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(Error::index(op, format!("axis {axis} out of range for a tensor of rank {rank}")));
    }
    Ok(a as usize)
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// True when elements are laid out row-major with no gaps (offset may be non-zero).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] != 1 && self.strides[i] != expected {
                return false;
            }
            expected *= self.shape[i];
        }
        true
    }

    pub fn permute(&self, op: &'static str, perm: &[usize]) -> Result<Layout> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r {
            return Err(Error::shape(op, format!("permutation {perm:?} has {} axes, tensor has {r}", perm.len())));
        }
        for &p in perm {
            if p >= r || seen[p] {
                return Err(Error::index(op, format!("{perm:?} is not a permutation of 0..{r}")));
            }
            seen[p] = true;
        }
        Ok(Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    pub fn narrow(&self, op: &'static str, axis: usize, start: usize, len: usize) -> Result<Layout> {
        if axis >= self.rank() {
            return Err(Error::index(op, format!("axis {axis} out of range for rank {}", self.rank())));
        }
        if start + len > self.shape[axis] {
            return Err(Error::index(
                op,
                format!("range {start}..{} out of bounds for axis {axis} of size {}", start + len, self.shape[axis]),
            ));
        }
        let mut l = self.clone();
        l.shape[axis] = len;
        if len > 0 {
            l.offset += start * self.strides[axis];
        }
        Ok(l)
    }

    /// A view of this layout broadcast to `shape` (stride 0 on repeated axes).
    pub fn broadcast_to(&self, op: &'static str, shape: &[usize]) -> Result<Layout> {
        if shape.len() < self.rank() {
            return Err(Error::shape(op, format!("cannot broadcast {:?} to fewer axes {shape:?}", self.shape)));
        }
        let extra = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for i in 0..self.rank() {
            let (d, t) = (self.shape[i], shape[i + extra]);
            strides[i + extra] = if d == t {
                self.strides[i]
            } else if d == 1 {
                0
            } else {
                return Err(Error::shape(op, format!("cannot broadcast {:?} to {shape:?}", self.shape)));
            };
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }

    /// This layout alone with its axes merged (see [`coalesce`]).
    pub fn coalesced(&self) -> Layout {
        coalesce(std::slice::from_ref(self)).swap_remove(0)
    }

    /// Storage offset of the first element of each row (a row = the last axis),
    /// with the row count; handles rank 0 as one row of one element.
    pub fn row_starts(&self) -> (Vec<usize>, usize, usize) {
        if self.rank() == 0 {
            return (vec![self.offset], 1, 1);
        }
        let r = self.rank();
        let row_len = self.shape[r - 1];
        let row_stride = self.strides[r - 1];
        let rows = numel(&self.shape[..r - 1]);
        let mut starts = Vec::with_capacity(rows);
        let mut idx = vec![0usize; r - 1];
        let mut off = self.offset;
        for _ in 0..rows {
            starts.push(off);
            // Odometer increment over the leading axes.
            for ax in (0..r - 1).rev() {
                idx[ax] += 1;
                off += self.strides[ax];
                if idx[ax] < self.shape[ax] {
                    break;
                }
                off -= self.strides[ax] * self.shape[ax];
                idx[ax] = 0;
            }
        }
        (starts, row_len, row_stride)
    }
}

/// The same elements in the same row-major order, described with as few axes as possible, for
/// several layouts of one shape walked together (a broadcasting op's operands): size-1 axes go,
/// and axes `i`, `i + 1` merge where every layout steps over axis `i` as over a whole run of
/// axis `i + 1` (`stride[i] == stride[i+1] · shape[i+1]`). An `[N, C, H, W]` tensor against a
/// per-channel `[1, C, 1, 1]` one becomes `[N, C, H·W]`: N·C rows of H·W elements instead of
/// N·C·H rows of W, which is what the row walkers below cost on small feature maps.
pub fn coalesce(layouts: &[Layout]) -> Vec<Layout> {
    let Some(first) = layouts.first() else { return Vec::new() };
    let mut shape: Vec<usize> = Vec::with_capacity(first.rank());
    let mut strides: Vec<Vec<usize>> = vec![Vec::with_capacity(first.rank()); layouts.len()];
    for axis in 0..first.rank() {
        let size = first.shape[axis];
        if size == 1 {
            continue;
        }
        let merges =
            !shape.is_empty() && layouts.iter().zip(&strides).all(|(l, s)| s[s.len() - 1] == l.strides[axis] * size);
        if merges {
            *shape.last_mut().expect("not empty") *= size;
            for (l, s) in layouts.iter().zip(&mut strides) {
                *s.last_mut().expect("not empty") = l.strides[axis];
            }
        } else {
            shape.push(size);
            for (l, s) in layouts.iter().zip(&mut strides) {
                s.push(l.strides[axis]);
            }
        }
    }
    layouts.iter().zip(strides).map(|(l, strides)| Layout { shape: shape.clone(), strides, offset: l.offset }).collect()
}

/// Copies the elements a layout describes into a new row-major vector.
pub fn gather_strided<T: Copy + Default + Send + Sync>(src: &[T], layout: &Layout) -> Vec<T> {
    let n = layout.numel();
    if n == 0 {
        return Vec::new();
    }
    if layout.is_contiguous() {
        return src[layout.offset..layout.offset + n].to_vec();
    }
    let (starts, row_len, stride) = layout.coalesced().row_starts();
    let mut out = vec![T::default(); n];
    out.par_chunks_mut(row_len).zip(starts.par_iter()).with_min_len(64).for_each(|(row, &s)| {
        for (j, o) in row.iter_mut().enumerate() {
            *o = src[s + j * stride];
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element's storage offset in row-major order, walked axis by axis (no coalescing).
    fn offsets(l: &Layout) -> Vec<usize> {
        let mut out = vec![l.offset];
        for (&size, &stride) in l.shape.iter().zip(&l.strides) {
            out = out.iter().flat_map(|&o| (0..size).map(move |i| o + i * stride)).collect();
        }
        out
    }

    #[test]
    fn coalescing_keeps_every_element_in_order_with_fewer_axes() {
        let x = Layout::contiguous(&[4, 3, 2, 5]);
        let per_channel = Layout::contiguous(&[1, 3, 1, 1]).broadcast_to("test", &[4, 3, 2, 5]).unwrap();
        let both = coalesce(&[x.clone(), per_channel.clone()]);
        assert_eq!(both[0].shape, [4, 3, 10]);
        assert_eq!((both[0].strides.as_slice(), both[1].strides.as_slice()), (&[30, 10, 1][..], &[0, 1, 0][..]));
        // Transposed (no merge across the swap), narrowed (offset kept), size-1 axes, all broadcast.
        let transposed = x.permute("test", &[0, 2, 1, 3]).unwrap();
        let narrowed = Layout::contiguous(&[6, 1, 4]).narrow("test", 0, 2, 3).unwrap();
        let scalar = Layout::contiguous(&[]).broadcast_to("test", &[2, 3]).unwrap();
        for layouts in
            [vec![x, per_channel], vec![transposed], vec![narrowed], vec![scalar], vec![Layout::contiguous(&[1, 1])]]
        {
            for (before, after) in layouts.iter().zip(coalesce(&layouts)) {
                assert_eq!(offsets(before), offsets(&after), "{before:?} → {after:?}");
                assert!(after.rank() <= before.rank());
            }
        }
        assert_eq!(coalesce(&[Layout::contiguous(&[2, 3, 4])])[0].shape, [24]);
    }
}
