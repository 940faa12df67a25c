//! A run directory: what is in it, and writing each file atomically (temporary file + rename).
use std::path::{Path, PathBuf};

use anyhow::Context;
use fmnist_data::Normalizer;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::schedule::Plateau;
use crate::scoring::Score;

/// The resolved configuration of a run and everything needed to rebuild and feed its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub train: TrainConfig,
    pub normalizer: Normalizer,
    pub class_names: Vec<String>,
    pub param_count: usize,
    /// The CPU threads or the device the run used (bit-for-bit repeatability depends on them).
    pub device: String,
    pub threads: usize,
    /// The CPU kernels the run used (`fused` or `generic`).
    #[serde(default)]
    pub kernels: fmnist_models::Kernels,
    pub fmnist_version: String,
    /// The commit the training binary was built from (absent in runs of older binaries).
    #[serde(default)]
    pub commit: Option<String>,
}

/// Where training stands after a completed epoch (what `--resume` continues from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub epochs_done: usize,
    pub steps: u64,
    pub best_epoch: usize,
    pub best_val: Option<Score>,
    pub epochs_since_best: usize,
    pub plateau: Plateau,
    pub train_seconds: f64,
}

/// One row of `history.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// The outcome of a finished run (`summary.json`): the best epoch on validation, and the test
/// set scored once with that checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub model: fmnist_models::ModelKind,
    pub seed: u64,
    pub param_count: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub val: Score,
    pub test: Score,
    pub train_seconds: f64,
    pub train_images_per_second: f64,
}

/// The files of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// The checkpoint with the best validation accuracy (what evaluation and predict use).
    pub fn best_model(&self) -> PathBuf {
        self.root.join("model.safetensors")
    }
    /// The checkpoint of the last completed epoch (what `--resume` continues from).
    pub fn last_model(&self) -> PathBuf {
        self.root.join("last.safetensors")
    }
    pub fn optimizer(&self) -> PathBuf {
        self.root.join("optimizer.safetensors")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn history(&self) -> PathBuf {
        self.root.join("history.csv")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    pub fn read_config(&self) -> anyhow::Result<RunConfig> {
        read_json(&self.config())
    }

    pub fn read_history(&self) -> anyhow::Result<Vec<EpochRecord>> {
        let path = self.history();
        let mut reader =
            csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
        reader
            .deserialize()
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: not a history file", path.display()))
    }

    pub fn write_history(&self, history: &[EpochRecord]) -> anyhow::Result<()> {
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in history {
            w.serialize(r)?;
        }
        write_atomic(&self.history(), &w.into_inner()?)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so the
/// file is either the old one or the new one, never half-written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads a JSON file, naming it in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: unexpected content", path.display()))
}
