//! One error type for the whole crate.
//!
//! Every failure a user can cause (a wrong shape, a bad flag, a missing file)
//! comes back as an `Error` that says what happened and, where there is one,
//! what to do about it. Library code never panics on user input.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit together (the op, and a sentence on why).
    #[error("shape error in {op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// A dtype the op does not accept, or two inputs whose dtypes differ.
    #[error("dtype error in {op}: {msg}")]
    DType { op: &'static str, msg: String },

    /// An axis or element index outside the tensor.
    #[error("index error in {op}: {msg}")]
    Index { op: &'static str, msg: String },

    /// Tensors on different devices, or a device this build cannot use.
    #[error("device error in {op}: {msg}")]
    Device { op: &'static str, msg: String },

    /// An argument outside its valid range (probabilities, kernel sizes, ...).
    #[error("invalid argument to {op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    /// Autograd misuse: backward from a non-scalar, a graph already consumed, ...
    #[error("autograd: {0}")]
    Autograd(String),

    /// A feature that is planned but not built yet. Says so rather than faking it.
    #[error("not implemented: {0}")]
    NotImplemented(String),

    /// A file that could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file whose contents are not what we expect (corrupt, wrong version, ...).
    #[error("bad file {path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// The loss became NaN or infinite.
    #[error("non-finite value: {0}")]
    NonFinite(String),

    /// The GPU ran out of memory even after the caching allocator released its cache.
    #[error(
        "CUDA out of memory on {device}: could not allocate {requested_mib:.1} MiB \
         ({in_use_mib:.1} MiB in use by tensors, {reserved_mib:.1} MiB reserved in total): \
         reduce --batch_size (or --num_frames / --image_size)."
    )]
    OutOfMemory { device: String, requested_mib: f64, in_use_mib: f64, reserved_mib: f64 },

    /// A distributed collective or rendezvous failed: a rank left, timed out,
    /// or called a different collective (see `dist`).
    #[error("distributed {op}: {msg}")]
    Dist { op: &'static str, msg: String },
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn dtype(op: &'static str, msg: impl Into<String>) -> Self {
        Error::DType { op, msg: msg.into() }
    }
    pub fn index(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Index { op, msg: msg.into() }
    }
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, msg: msg.into() }
    }
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
    pub fn dist(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Dist { op, msg: msg.into() }
    }
}
