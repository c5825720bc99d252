//! Named tensors to and from `.safetensors` files (the format PyTorch and
//! Hugging Face read), written atomically.

use super::{DType, Storage, Tensor};
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorInfo};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn to_st(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::U8 => StDtype::U8,
        DType::I64 => StDtype::I64,
    }
}

fn from_st(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        StDtype::BF16 => DType::BF16,
        StDtype::F16 => DType::F16,
        StDtype::U8 => DType::U8,
        StDtype::I64 => DType::I64,
        _ => return None,
    })
}

/// A tensor flattened to contiguous bytes for serialisation.
struct Bytes {
    dtype: DType,
    shape: Vec<usize>,
    storage: Storage,
}

/// Serialises named tensors (and optional string metadata) to bytes. The same tensors and
/// metadata always give the same bytes: the layout is the `safetensors` crate's (tensors by
/// descending dtype alignment, then name; the header padded with spaces to a multiple of 8), but
/// the metadata is written in key order (the crate writes a `HashMap` in its random iteration
/// order, so two saves of one checkpoint had different checksums).
pub fn to_safetensors_bytes(tensors: &[(&str, &Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut flat: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((n.to_string(), Bytes { dtype: t.dtype(), shape: t.shape().to_vec(), storage: t.contiguous_storage()? }))
        })
        .collect::<Result<_>>()?;
    let mut names = std::collections::HashSet::new();
    for (n, _) in &flat {
        if !names.insert(n.as_str()) {
            return Err(Error::invalid("save_safetensors", format!("tensor name `{n}` appears twice")));
        }
    }
    flat.sort_by(|(a, x), (b, y)| to_st(y.dtype).cmp(&to_st(x.dtype)).then(a.cmp(b)));

    let bad = |e: serde_json::Error| Error::invalid("save_safetensors", e.to_string());
    let mut header = Vec::new();
    {
        use serde::ser::{SerializeMap, Serializer};
        let mut json = serde_json::Serializer::new(&mut header);
        let mut map = json.serialize_map(Some(flat.len() + metadata.is_some() as usize)).map_err(bad)?;
        if let Some(metadata) = metadata {
            let sorted: BTreeMap<String, String> = metadata.into_iter().collect();
            map.serialize_entry("__metadata__", &sorted).map_err(bad)?;
        }
        let mut offset = 0;
        for (name, bytes) in &flat {
            let n = bytes.storage.as_bytes().len();
            let info = TensorInfo {
                dtype: to_st(bytes.dtype),
                shape: bytes.shape.clone(),
                data_offsets: (offset, offset + n),
            };
            map.serialize_entry(name, &info).map_err(bad)?;
            offset += n;
        }
        map.end().map_err(bad)?;
    }
    header.resize(header.len().next_multiple_of(8), b' ');
    let data_len: usize = flat.iter().map(|(_, b)| b.storage.as_bytes().len()).sum();
    let mut out = Vec::with_capacity(8 + header.len() + data_len);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    for (_, bytes) in &flat {
        out.extend(bytes.storage.as_bytes());
    }
    Ok(out)
}

/// Writes named tensors to `path` atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = to_safetensors_bytes(tensors, metadata)?;
    crate::atomic_file::write_atomic(path, &bytes)
}

/// Reads every tensor in a safetensors file, with the file's string metadata.
pub fn load_safetensors(path: &Path) -> Result<(Vec<(String, Tensor)>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("corrupt safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let dtype = from_st(view.dtype())
            .ok_or_else(|| Error::format(path, format!("tensor `{name}` has unsupported dtype {:?}", view.dtype())))?;
        let storage = Storage::from_bytes(dtype, view.data()).ok_or_else(|| {
            Error::format(path, format!("tensor `{name}` has a byte length that does not fit {dtype}"))
        })?;
        let t = Tensor::from_parts(storage, super::Layout::contiguous(view.shape()));
        out.push((name.to_string(), t));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
