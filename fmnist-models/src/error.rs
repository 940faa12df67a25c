//! The typed errors of the model library: each names the file or the value at fault.
use std::path::PathBuf;

/// Everything that can go wrong building, saving, loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle::Error),
    /// The data could not be read or batched.
    #[error(transparent)]
    Data(#[from] fmnist_data::DataError),
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A folder holds no run (no `config.json`).
    #[error("{}: not a run folder (no {file}): train one with `cargo run --release -p fmnist-train -- --model cnn`", dir.display())]
    NotARun { dir: PathBuf, file: &'static str },
    /// A run folder has a config but no trained weights.
    #[error("{}: no checkpoint (the run never finished an epoch?)", path.display())]
    NoWeights { path: PathBuf },
    /// A `config.json` that does not describe a model.
    #[error("{}: not a run configuration: {source}", path.display())]
    BadConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A weights file that is not readable safetensors.
    #[error("{}: not a readable safetensors checkpoint: {source}", path.display())]
    BadWeights {
        path: PathBuf,
        source: candle::Error,
    },
    /// A checkpoint lacks a tensor the model has.
    #[error("{}: tensor '{name}' is missing: the checkpoint is not a '{model}' model", path.display())]
    MissingTensor {
        path: PathBuf,
        name: String,
        model: crate::ModelKind,
    },
    /// A checkpoint's tensor has another shape than the model's.
    #[error("{}: tensor '{name}' has shape {found:?}, model '{model}' expects {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        model: crate::ModelKind,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// An input image of the wrong size.
    #[error("image {index}: {found} pixels, the model reads {expected} (28x28)")]
    ImageSize {
        index: usize,
        found: usize,
        expected: usize,
    },
    /// A width out of range, or one the model does not have.
    #[error("{key}: {message}")]
    BadSize { key: &'static str, message: String },
    /// A similarity index whose vectors are not the model's embeddings.
    #[error("the similarity index was built by another model ({index} dimensions; this model's embedding has {model})")]
    IndexOfAnotherModel { index: usize, model: usize },
    /// An unknown model name.
    #[error("unknown model '{name}' (known: {known})")]
    UnknownModel { name: String, known: String },
}

/// A result of the model library.
pub type Result<T> = std::result::Result<T, ModelError>;
