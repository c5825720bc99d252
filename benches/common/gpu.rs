//! What every CUDA benchmark shares: the device (GPU 0, or the kernel emulator at tiny sizes
//! with `SIMCLR_BENCH_EMULATED=1`, to check a benchmark works before GPU time is spent on
//! it), the PyTorch reference timings measured in the same run (`SIMCLR_TORCH_REFERENCE` =
//! the JSON a tools/gpu/torch_*.py script wrote), and the timing rule.

use simclr::backend::cuda::Gpu;
use simclr::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct GpuBench {
    pub gpu: Gpu,
    pub emulated: bool,
    /// Case name -> PyTorch's figures, plus "device" and "torch" (its version).
    pub torch: BTreeMap<String, serde_json::Value>,
}

impl GpuBench {
    /// Opens the device and the reference, printing which (after `common::print_header`).
    /// `reference_script` names the tools/gpu script whose JSON is expected.
    pub fn open(reference_script: &str) -> Result<GpuBench> {
        let emulated = std::env::var_os("SIMCLR_BENCH_EMULATED").is_some_and(|v| v != "0");
        let gpu = if emulated { Gpu::emulated() } else { Gpu::open(0)? };
        if let Ok(commit) = std::fs::read_to_string(".gpu/commit") {
            println!("# binaries built from: {}", commit.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        println!(
            "# device: {}, compute capability {:?}, {:.1} GiB",
            gpu.name(),
            gpu.compute_capability(),
            gpu.total_memory().unwrap_or(0) as f64 / (1u64 << 30) as f64
        );
        let torch: BTreeMap<String, serde_json::Value> = match std::env::var_os("SIMCLR_TORCH_REFERENCE") {
            Some(path) => {
                let path = PathBuf::from(path);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| simclr::Error::io("read the PyTorch reference", path.clone(), e))?;
                serde_json::from_str(&text).map_err(|e| simclr::Error::format(path, e.to_string()))?
            }
            None => BTreeMap::new(),
        };
        match torch.get("device") {
            Some(dev) => println!(
                "# PyTorch reference from the same run: {dev} torch {}",
                torch.get("torch").cloned().unwrap_or_default()
            ),
            None => println!("# no PyTorch reference (set SIMCLR_TORCH_REFERENCE to {reference_script}'s JSON)"),
        }
        if emulated {
            println!("# EMULATED: tiny sizes on the CPU kernel emulator; the timings mean nothing");
        }
        Ok(GpuBench { gpu, emulated, torch })
    }

    /// Median GPU milliseconds of `f` over 20 CUDA-event-timed runs after 3 warm-ups (one
    /// run on the emulator).
    pub fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let (warmup, reps) = if self.emulated { (0, 1) } else { (3, 20) };
        for _ in 0..warmup {
            f()?;
        }
        self.gpu.synchronize()?;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            times.push(self.gpu.time_ms(&mut f)? as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[reps / 2])
    }
}
