//! Named tensors to and from `.safetensors` files (the format PyTorch and
//! Hugging Face read), written atomically.

use super::{DType, Storage, Tensor};
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
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

impl View for &Bytes {
    fn dtype(&self) -> StDtype {
        to_st(self.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.storage.as_bytes())
    }
    fn data_len(&self) -> usize {
        self.storage.as_bytes().len()
    }
}

/// Serialises named tensors (and optional string metadata) to bytes.
pub fn to_safetensors_bytes(tensors: &[(&str, &Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let flat: Vec<(String, Bytes)> = tensors
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
    safetensors::serialize(flat.iter().map(|(n, b)| (n.as_str(), b)), metadata)
        .map_err(|e| Error::invalid("save_safetensors", e.to_string()))
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
