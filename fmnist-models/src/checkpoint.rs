//! A trained model on disk: a folder with `config.json` (what rebuilds and feeds the model)
//! and `model.safetensors` (its weights), written and read by [`Checkpoint`].
use std::path::{Path, PathBuf};

use candle::Device;
use fmnist_data::Normalizer;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::Model;

/// What a checkpoint's `config.json` says about its model. A training run's `config.json`
/// holds more (its training knobs, machine and commit) around these same fields, so every run
/// folder reads as a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// The model's fields sit in the run's `train` section, beside the training knobs.
    #[serde(rename = "train")]
    pub model: ModelConfig,
    /// The input scaling fitted on the training images.
    pub normalizer: Normalizer,
    /// The classes, in label order.
    pub class_names: Vec<String>,
}

/// The folder of a trained model (its file names are the run layout's, [`fmnist_runs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// The configuration file's name.
    pub const CONFIG: &'static str = fmnist_runs::CONFIG;
    /// The weights' file name (the best epoch on validation, for a training run).
    pub const WEIGHTS: &'static str = fmnist_runs::WEIGHTS;

    /// The checkpoint in `dir` (nothing is read yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Checkpoint { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(Self::CONFIG)
    }

    /// Path of `model.safetensors`.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(Self::WEIGHTS)
    }

    /// Whether both files are there.
    pub fn exists(&self) -> bool {
        self.config_path().is_file() && self.weights_path().is_file()
    }

    /// Reads the model's part of `config.json`.
    pub fn read_config(&self) -> Result<CheckpointConfig> {
        let path = self.config_path();
        if !path.is_file() {
            return Err(ModelError::NotARun {
                dir: self.dir.clone(),
                file: Self::CONFIG,
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ModelError::BadConfig { path, source })
    }

    /// The model with its trained weights, on `device`, and its configuration.
    pub fn load(&self, device: &Device) -> Result<(CheckpointConfig, Model)> {
        let config = self.read_config()?;
        // The seed only draws the initial values, which the weights replace.
        let mut model = config.model.build(0, device)?;
        model.load(&self.weights_path())?;
        Ok((config, model))
    }

    /// Writes `config.json` from `record`: a [`CheckpointConfig`], or a larger record (a
    /// training run's) that holds its fields. Returns the checkpoint's part, read back from
    /// what was written, so a record that lacks it is refused before any weights exist.
    pub fn write_config<T: Serialize>(&self, record: &T) -> Result<CheckpointConfig> {
        let path = self.config_path();
        let value = serde_json::to_value(record).map_err(|source| ModelError::BadConfig {
            path: path.clone(),
            source,
        })?;
        let config: CheckpointConfig =
            serde_json::from_value(value.clone()).map_err(|source| ModelError::BadConfig {
                path: path.clone(),
                source,
            })?;
        let mut text =
            serde_json::to_string_pretty(&value).map_err(|source| ModelError::BadConfig {
                path: path.clone(),
                source,
            })?;
        text.push('\n');
        fmnist_data::write_atomic(&path, text.as_bytes()).map_err(|e| ModelError::Write {
            path,
            source: Box::new(e),
        })?;
        Ok(config)
    }

    /// Writes the model's weights to `model.safetensors`, atomically.
    pub fn write_weights(&self, model: &Model) -> Result<()> {
        model.save(&self.weights_path())
    }
}
