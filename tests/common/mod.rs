//! Helpers shared by the integration tests (`mod common;` in each; a test uses what it
//! needs): a fresh scratch directory per test, and comparisons of weight files for the tests
//! that train twice and compare.
#![allow(dead_code)]

use simclr::tensor::safetensors_io::load_safetensors;
use std::path::{Path, PathBuf};

/// An empty directory `simclr-<test binary>-<name>-<pid>` under the system temp directory
/// (whatever an earlier run left there is removed first).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("simclr-{}-{name}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as the `&str` a command line takes (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every tensor of a safetensors file, sorted by name, as f64 values.
fn sorted_tensors(path: &Path) -> Vec<(String, Vec<f64>)> {
    let (mut tensors, _) = load_safetensors(path).unwrap();
    tensors.sort_by(|x, y| x.0.cmp(&y.0));
    tensors.into_iter().map(|(name, t)| (name, t.to_f64_vec())).collect()
}

/// Largest |a − b| over every value of every tensor of two weight files with the same tensors.
pub fn max_abs_difference(a: &Path, b: &Path) -> f64 {
    let (ta, tb) = (sorted_tensors(a), sorted_tensors(b));
    assert_eq!(ta.len(), tb.len());
    let mut worst: f64 = 0.0;
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!((na, va.len()), (nb, vb.len()));
        worst = va.iter().zip(vb).fold(worst, |m, (x, y)| m.max((x - y).abs()));
    }
    worst
}

/// Every tensor of two weight files, compared bit for bit.
pub fn assert_same_weights(a: &Path, b: &Path) {
    let (ta, tb) = (sorted_tensors(a), sorted_tensors(b));
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!((na, va.len()), (nb, vb.len()));
        let differing = va.iter().zip(vb).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(differing, 0, "{na}: {differing} of {} values differ", va.len());
    }
}
