//! NumPy `.npy` files (format version 1.0), written atomically.
//!
//! ```text
//! \x93NUMPY  1 0  <u16 LE header length>  {'descr': '<f4', 'fortran_order': False, 'shape': (N, D), }␣…␣\n
//! <data: row-major, little-endian>
//! ```
//! The header is padded with spaces so the data starts at a multiple of 64
//! bytes, as NumPy itself writes it. `np.load(path)` reads these files.

use crate::atomic_file::write_atomic;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Magic, two version bytes and the u16 header length.
const PREAMBLE: usize = MAGIC.len() + 2 + 2;
const ALIGN: usize = 64;

/// A little-endian array ready to be written.
enum Data<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

impl Data<'_> {
    fn descr(&self) -> &'static str {
        match self {
            Data::F32(_) => "<f4",
            Data::I64(_) => "<i8",
        }
    }
    fn len(&self) -> usize {
        match self {
            Data::F32(d) => d.len(),
            Data::I64(d) => d.len(),
        }
    }
    fn append_le(&self, out: &mut Vec<u8>) {
        match self {
            Data::F32(d) => d.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Data::I64(d) => d.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        }
    }
}

/// Python's tuple syntax: `(N,)` for one axis, `(N, D)` for two.
fn shape_tuple(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    }
}

fn encode(shape: &[usize], data: Data) -> Result<Vec<u8>> {
    let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if expected != Some(data.len()) {
        return Err(Error::shape("npy", format!("{} values do not fill shape {shape:?}", data.len())));
    }
    let dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", data.descr(), shape_tuple(shape));
    // Spaces, then a newline, up to the next multiple of ALIGN.
    let unpadded = PREAMBLE + dict.len() + 1;
    let header_len = dict.len() + 1 + (ALIGN - unpadded % ALIGN) % ALIGN;
    let header_len_u16 = u16::try_from(header_len)
        .map_err(|_| Error::shape("npy", format!("shape {shape:?} makes a header too long for format 1.0")))?;
    let mut out = Vec::with_capacity(PREAMBLE + header_len + data.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len_u16.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(PREAMBLE + header_len - 1, b' ');
    out.push(b'\n');
    data.append_le(&mut out);
    Ok(out)
}

/// Writes a float32 array of `shape` (row-major `data`) to `path`.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_atomic(path, &encode(shape, Data::F32(data))?)
}

/// Writes an int64 array of `shape` (row-major `data`) to `path`.
pub fn write_npy_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    write_atomic(path, &encode(shape, Data::I64(data))?)
}

/// The clip-id file beside an embeddings file: `emb.npy` → `emb.ids.npy`.
pub fn ids_path(embeddings: &Path) -> PathBuf {
    let name = embeddings.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".npy").unwrap_or(&name);
    embeddings.with_file_name(format!("{stem}.ids.npy"))
}

/// What a `.npy` header says: dtype descriptor, shape, and where the data starts.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyHeader {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

/// Parses the header of a version 1.0 `.npy` file (the files this module writes).
pub fn read_npy_header(bytes: &[u8]) -> Result<NpyHeader> {
    let bad = |msg: &str| Error::format("<npy>", msg.to_string());
    if bytes.len() < PREAMBLE || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)"));
    }
    if bytes[6] != 1 || bytes[7] != 0 {
        return Err(bad("only .npy format version 1.0 is read here"));
    }
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let dict = bytes.get(PREAMBLE..PREAMBLE + header_len).ok_or_else(|| bad("header runs past the end"))?;
    let dict = std::str::from_utf8(dict).map_err(|_| bad("header is not text"))?;
    // The value after `'key':`, up to the next `,` at depth 0 or the closing brace.
    let field = |key: &str| -> Result<&str> {
        let start = dict.find(&format!("'{key}':")).ok_or_else(|| bad("header lacks a field"))? + key.len() + 3;
        let rest = &dict[start..];
        let mut depth = 0;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0 && (c == ',' || c == '}')
            })
            .map_or(rest.len(), |(i, _)| i);
        Ok(rest[..end].trim())
    };
    let descr = field("descr")?.trim_matches('\'').to_string();
    let fortran_order = field("fortran_order")? == "True";
    let shape = field("shape")?
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("shape is not a tuple of integers")))
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader { descr, fortran_order, shape, data_offset: PREAMBLE + header_len })
}
