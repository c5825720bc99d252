//! Evaluation of a trained encoder with linear probes (`simclr-eval`).
//!
//! Frozen features of each clip's un-augmented view (`features`), probe
//! targets from the dataset's labels (`targets`), logistic and ridge probes
//! (`probes`), compared against chance, raw pixels and the random-initialised
//! encoder (`report`); `evaluate` ties them together. `npy` exports features
//! for NumPy; `picture` draws `eval.png`; `cache` picks the directory generated datasets are kept in,
//! where `default_set` puts the bouncing-ball set used without a dataset.

pub mod cache;
pub mod default_set;
pub mod evaluate;
pub mod features;
pub mod npy;
pub mod picture;
pub mod probes;
pub mod report;
pub mod targets;

pub use cache::cache_dir;
pub use default_set::{ensure_default_eval_set, EVAL_DATA_SEED};
pub use evaluate::{evaluate, Candidate, EvalOptions, Evaluation, MIN_EVAL_CLIPS, MODEL_INIT_STREAM};
pub use features::{encode_dataset, pixel_features, Features};
pub use report::EvalReport;
