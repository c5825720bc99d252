//! Checkpoints: model weights in safetensors (torchvision names, so a ResNet
//! encoder loads into `torchvision.models.resnetNN`), and beside them the
//! training state needed to continue exactly.
//!
//! ```text
//! checkpoint_epoch_N.safetensors        model: encoder.* + projector.*, metadata
//!                                       {"format": "simclr-model", "model": ModelSpec, "epoch": N}
//! checkpoint_epoch_N.state.safetensors  optimiser buffers + metadata {"state": TrainState}
//! checkpoint_step_G.safetensors (+ .state)  the same, taken in the middle of an epoch after
//!                                       global step G (--checkpoint_every_steps/_minutes, signals)
//! final_model.safetensors               model at the end of training
//! ```
//!
//! The state file is written first and the model file last (each atomically),
//! so a model file whose state file exists is a complete checkpoint; a run
//! killed in between leaves the previous checkpoint untouched.
//!
//! Devices: the files hold host tensors. Saving a model or optimiser that lives
//! on a GPU downloads it; loading fills each tensor on the device it is on
//! (`nn::load_state_dict`, `Optimizer::load_state`), so a model moved to the GPU
//! before `load_weights_into` gets its weights, and its optimiser its state, there.
//!
//! Data position: batch (epoch, step) is a pure function of the seed (`data::loader`), so the
//! epochs done and the steps done of the next epoch are the whole data state: a resumed run
//! trains that epoch's remaining batches, in the same order. The seed is in the saved config.
//!
//! [`latest_checkpoint`] finds the newest complete checkpoint of a directory (`--resume auto`).

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::nn::simclr::SimClr;
pub use crate::nn::spec::ModelSpec;
use crate::nn::{load_state_dict, state_dict};
use crate::optim::OptimizerState;
use crate::rng::Rng;
use crate::tensor::safetensors_io::{load_safetensors, save_safetensors};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MODEL_FORMAT: &str = "simclr-model";
const STATE_FORMAT: &str = "simclr-train-state";

/// Where training stands after `epochs_done` epochs (and `epoch_steps_done` steps of the next).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub epochs_done: usize,
    pub global_step: u64,
    /// Steps of epoch `epochs_done + 1` already trained: 0 at an epoch boundary (and in the
    /// checkpoints of earlier versions).
    #[serde(default)]
    pub epoch_steps_done: usize,
    /// The sum of those steps' losses, so that the epoch's mean loss comes out as without the
    /// interruption.
    #[serde(default)]
    pub epoch_loss_sum: f64,
    pub config: TrainConfig,
    /// The dataset trained on (clip count and geometry), to refuse resuming on another.
    pub dataset: DatasetIdentity,
    /// [`STATE_VERSION`] when saved (0: before it was recorded).
    #[serde(default)]
    pub version: u32,
}

/// The training state's version: 1 since `--precision auto`. Before it, the default
/// `precision = "bf16"` meant bf16 on a GPU and f32 on the CPU — what `auto` means now, while
/// `bf16` now also means bf16 on the CPU — so [`load_train_state`] reads a version-0 `bf16` as
/// `auto`, and an old CPU run resumes in f32, as it trained.
pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatasetIdentity {
    pub clips: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

pub fn checkpoint_path(out: &Path, epoch: usize) -> PathBuf {
    out.join(format!("checkpoint_epoch_{epoch}.safetensors"))
}

/// `checkpoint_epoch_N` at an epoch boundary, `checkpoint_step_G` in the middle of an epoch.
pub fn checkpoint_path_for(out: &Path, state: &TrainState) -> PathBuf {
    if state.epoch_steps_done == 0 {
        checkpoint_path(out, state.epochs_done)
    } else {
        out.join(format!("checkpoint_step_{}.safetensors", state.global_step))
    }
}

/// The newest complete checkpoint in `out` (the most global steps), for `--resume auto`; `None`
/// when there is none (or no `out`). A checkpoint is complete when its model file exists (it is
/// written last) and its state file reads; anything else — a kill between the two files, a
/// temporary file, a damaged state — is passed over, with a warning on stderr for the damaged.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("list", out, e)),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let path = entry.map_err(|e| Error::io("list", out, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let is_model =
            name.starts_with("checkpoint_") && name.ends_with(".safetensors") && !name.ends_with(".state.safetensors");
        if !is_model {
            continue;
        }
        match load_train_state(&path) {
            Ok((state, _)) if best.as_ref().is_none_or(|(steps, _)| state.global_step > *steps) => {
                best = Some((state.global_step, path));
            }
            Ok(_) => {}
            Err(e) => eprintln!("warning: --resume auto passes over {}: {e}", path.display()),
        }
    }
    Ok(best.map(|(_, path)| path))
}

pub fn final_model_path(out: &Path) -> PathBuf {
    out.join("final_model.safetensors")
}

/// `x.safetensors` → `x.state.safetensors`.
pub fn state_path(model_path: &Path) -> PathBuf {
    let name = model_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".safetensors").unwrap_or(&name);
    model_path.with_file_name(format!("{stem}.state.safetensors"))
}

/// Writes the model's parameters and buffers with its spec (atomically).
pub fn save_model(path: &Path, model: &SimClr, spec: &ModelSpec, epoch: usize) -> Result<()> {
    let tensors = state_dict(model);
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = HashMap::from([
        ("format".to_string(), MODEL_FORMAT.to_string()),
        ("model".to_string(), serde_json::to_string(spec).expect("ModelSpec serialises")),
        ("epoch".to_string(), epoch.to_string()),
    ]);
    save_safetensors(path, &named, Some(meta))
}

/// A model file's tensors and spec, with errors that say what the file is.
fn read_model_file(path: &Path) -> Result<(Vec<(String, Tensor)>, ModelSpec, usize)> {
    if path.extension().is_some_and(|e| e == "pth" || e == "pt") {
        return Err(Error::invalid(
            "--checkpoint",
            format!(
                "{}: PyTorch pickles cannot be read; point at a simclr checkpoint such as runs/checkpoint_epoch_50.safetensors",
                path.display()
            ),
        ));
    }
    if !path.exists() {
        return Err(Error::invalid(
            "--checkpoint",
            format!("{}: no such file (simclr-train writes OUT/checkpoint_epoch_N.safetensors and OUT/final_model.safetensors)", path.display()),
        ));
    }
    let (tensors, meta) = load_safetensors(path)?;
    if meta.get("format").map(String::as_str) != Some(MODEL_FORMAT) {
        return Err(Error::format(path, "a safetensors file, but not a simclr-train model (no simclr-model metadata)"));
    }
    let spec: ModelSpec = meta
        .get("model")
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| Error::format(path, "the model description in the metadata is missing or unreadable"))?;
    let epoch = meta.get("epoch").and_then(|e| e.parse().ok()).unwrap_or(0);
    Ok((tensors, spec, epoch))
}

/// Rebuilds a saved model: (model, spec, epochs it was trained).
pub fn load_model(path: &Path) -> Result<(SimClr, ModelSpec, usize)> {
    let (tensors, spec, epoch) = read_model_file(path)?;
    let model = spec.build(&mut Rng::new(0))?;
    load_state_dict(&model, &tensors, true)
        .map_err(|e| Error::format(path, format!("weights do not fit the model: {e}")))?;
    Ok((model, spec, epoch))
}

/// Loads saved weights into an existing model of the same spec.
pub fn load_weights_into(path: &Path, model: &SimClr, expected: &ModelSpec) -> Result<usize> {
    let (tensors, spec, epoch) = read_model_file(path)?;
    if &spec != expected {
        return Err(Error::invalid(
            "--resume",
            format!(
                "{} holds a different model ({spec:?}) than this run asks for ({expected:?}); drop the conflicting flags",
                path.display()
            ),
        ));
    }
    load_state_dict(model, &tensors, true)
        .map_err(|e| Error::format(path, format!("weights do not fit the model: {e}")))?;
    Ok(epoch)
}

/// Writes `checkpoint_epoch_N` or, mid-epoch, `checkpoint_step_G` (state first, then model; each
/// atomic).
pub fn save_checkpoint(
    out: &Path,
    model: &SimClr,
    spec: &ModelSpec,
    optimizer: &OptimizerState,
    state: &TrainState,
) -> Result<PathBuf> {
    let path = checkpoint_path_for(out, state);
    let named: Vec<(&str, &Tensor)> = optimizer.buffers.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = HashMap::from([
        ("format".to_string(), STATE_FORMAT.to_string()),
        ("state".to_string(), serde_json::to_string(state).expect("TrainState serialises")),
        ("optimizer_steps".to_string(), optimizer.steps.to_string()),
    ]);
    save_safetensors(&state_path(&path), &named, Some(meta))?;
    save_model(&path, model, spec, state.epochs_done)?;
    Ok(path)
}

/// The training state saved beside a checkpoint's model file.
pub fn load_train_state(model_path: &Path) -> Result<(TrainState, OptimizerState)> {
    let path = state_path(model_path);
    if !path.exists() {
        return Err(Error::invalid(
            "--resume",
            format!(
                "{} has no training state beside it ({} is missing); resume from a checkpoint_epoch_N.safetensors, not final_model",
                model_path.display(),
                path.display()
            ),
        ));
    }
    let (buffers, meta) = load_safetensors(&path)?;
    if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
        return Err(Error::format(&path, "not a simclr-train state file"));
    }
    let mut state: TrainState =
        meta.get("state").ok_or_else(|| Error::format(&path, "no training state in the metadata")).and_then(|s| {
            serde_json::from_str(s).map_err(|e| Error::format(&path, format!("unreadable training state: {e}")))
        })?;
    if state.version == 0 && state.config.precision == "bf16" {
        state.config.precision = "auto".into();
    }
    let steps = meta.get("optimizer_steps").and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((state, OptimizerState { steps, buffers }))
}
