//! The bytes behind a tensor: one typed vector on the host.
//!
//! Storage is immutable once built and shared through `Arc`; views (transpose,
//! narrow, broadcast) share it and differ only in their `Layout`. The one writer
//! is `Tensor::update_host` (optimisers), and only to storage nothing else holds.

use super::dtype::{DType, Element};
use half::{bf16, f16};

#[derive(Debug, Clone)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U8(Vec<u8>),
    I64(Vec<i64>),
}

/// Converts between `Vec<T>`/`&[T]` and `Storage` for every element type.
pub trait StorageElement: Element {
    fn wrap(v: Vec<Self>) -> Storage;
    fn slice(s: &Storage) -> Option<&[Self]>;
    fn slice_mut(s: &mut Storage) -> Option<&mut [Self]>;
}

macro_rules! storage_element {
    ($t:ty, $variant:ident) => {
        impl StorageElement for $t {
            fn wrap(v: Vec<Self>) -> Storage {
                Storage::$variant(v)
            }
            fn slice(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut Storage) -> Option<&mut [Self]> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

storage_element!(f32, F32);
storage_element!(f64, F64);
storage_element!(bf16, BF16);
storage_element!(f16, F16);
storage_element!(u8, U8);
storage_element!(i64, I64);

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::U8(_) => DType::U8,
            Storage::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::U8(v) => v.len(),
            Storage::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> Storage {
        match dtype {
            DType::F32 => Storage::F32(vec![0.0; n]),
            DType::F64 => Storage::F64(vec![0.0; n]),
            DType::BF16 => Storage::BF16(vec![bf16::ZERO; n]),
            DType::F16 => Storage::F16(vec![f16::ZERO; n]),
            DType::U8 => Storage::U8(vec![0; n]),
            DType::I64 => Storage::I64(vec![0; n]),
        }
    }

    /// Raw little-endian bytes (for safetensors).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Storage::F32(v) => bytemuck::cast_slice(v),
            Storage::F64(v) => bytemuck::cast_slice(v),
            Storage::BF16(v) => bytemuck::cast_slice(v),
            Storage::F16(v) => bytemuck::cast_slice(v),
            Storage::U8(v) => v,
            Storage::I64(v) => bytemuck::cast_slice(v),
        }
    }

    /// Builds storage from little-endian bytes; `None` if the length does not divide.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<Storage> {
        if bytes.len() % dtype.size_in_bytes() != 0 {
            return None;
        }
        // pod_collect_to_vec copies, so unaligned input is fine.
        Some(match dtype {
            DType::F32 => Storage::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F64 => Storage::F64(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => Storage::BF16(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => Storage::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::U8 => Storage::U8(bytes.to_vec()),
            DType::I64 => Storage::I64(bytemuck::pod_collect_to_vec(bytes)),
        })
    }
}
