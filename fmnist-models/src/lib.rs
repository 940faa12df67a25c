//! The Fashion-MNIST models of the studies, in candle, built from a seed.
//!
//! Every model maps images `[B, 1, 28, 28]` to logits `[B, 10]` through
//! [`Model::forward_t`], whose `train` flag switches dropout and BatchNorm.
//! Parameters are drawn from a seeded generator (PyTorch's or Keras' default schemes), so the
//! same seed gives the same network on every machine.
pub mod builder;
pub mod conv;
pub mod kernels;
pub mod kind;
pub mod model;
pub mod nets;
pub mod norm;
pub mod recurrent;

pub use builder::{Builder, Dropout, Init};
pub use kernels::{set_kernels, Kernels};
pub use kind::ModelKind;
pub use model::Model;
