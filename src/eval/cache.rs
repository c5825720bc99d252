//! Where generated datasets are kept between runs (the demo's training set,
//! simclr-eval's default evaluation set), so the second run skips generation.

use std::path::PathBuf;

/// `$SIMCLR_CACHE`, else `$XDG_CACHE_HOME/simclr`, else `$HOME/.cache/simclr`,
/// else `simclr-cache` in the system's temporary directory. Empty variables
/// count as unset. The directory is not created here.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("SIMCLR_CACHE") {
        return dir;
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return xdg.join("simclr");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache").join("simclr");
    }
    std::env::temp_dir().join("simclr-cache")
}
