//! The Fashion-MNIST models of the studies, in candle: configure one, build it from a seed,
//! train it elsewhere, save it, load it, and classify images with it.
//!
//! - [`ModelConfig`] says what the model is (architecture and its widths, initialization,
//!   input scaling, mirror TTA, CPU kernels) and [`ModelConfig::build`] makes a [`Model`] on a device from a
//!   seed: the same seed gives the same bits on every machine.
//! - [`Checkpoint`] is a model on disk: `config.json` + `model.safetensors`.
//! - [`Classifier`] loads a run folder and returns the ten probabilities for 28x28 images,
//!   and, for CNNs, Grad-CAM maps of where the evidence for a class lies ([`explain`]).
//! - [`photo`] turns a person's image (any size, a dark garment on a light background) into
//!   that input, as `predict` and the HTTP service do ([`Classifier::classify_photo`]);
//!   [`prediction`] ranks the classes; [`similar`] finds the nearest training images in the
//!   model's embedding.
//!
//! Every model maps images `[B, 1, 28, 28]` to logits `[B, 10]` through
//! [`Model::forward_t`], whose `train` flag switches dropout and BatchNorm.
//!
//! The model layer is the files at the top (the registry in [`kind`], the widths in [`size`],
//! the architectures in [`nets`], construction in [`builder`], [`model`], [`checkpoint`],
//! [`classifier`], [`explain`], [`scoring`], [`photo`], [`prediction`], [`similar`]); the
//! operations they run on, CPU and CUDA, are in [`kernels`].
//!
//! ```
//! use fmnist_models::{ModelConfig, ModelKind};
//! # fn main() -> Result<(), fmnist_models::ModelError> {
//! let model = ModelConfig::new(ModelKind::Lstm).build(42, &candle::Device::Cpu)?;
//! assert_eq!(model.param_count(), 82_186);
//! # Ok(()) }
//! ```
pub mod builder;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod error;
pub mod explain;
pub mod kernels;
pub mod kind;
pub mod model;
pub mod nets;
pub mod photo;
pub mod prediction;
pub mod scoring;
pub mod similar;
pub mod size;

#[cfg(feature = "cuda")]
pub use kernels::cuda;
pub use kernels::{conv, norm, recurrent};

/// Classes every model scores.
pub const NUM_CLASSES: usize = 10;

pub use builder::{Builder, Dropout, Init};
pub use checkpoint::{Checkpoint, CheckpointConfig};
pub use classifier::{Classifier, IMAGE_PIXELS};
pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use kernels::{Kernels, MaxPool2};
pub use kind::ModelKind;
pub use model::Model;
pub use scoring::{argmax, mean_std, softmax_rows, Score};
pub use size::{Size, Widths};
