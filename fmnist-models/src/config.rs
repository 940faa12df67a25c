//! What shapes a model and its input: the serde [`ModelConfig`] that builds it.
use candle::Device;
use fmnist_data::Normalization;
use serde::{Deserialize, Serialize};

use crate::builder::Init;
use crate::error::Result;
use crate::kernels::Kernels;
use crate::kind::ModelKind;
use crate::model::Model;
use crate::size::{Size, Widths};

/// The network, its initialization, how its inputs are scaled, how it is scored, and which
/// kernels run it. [`ModelConfig::build`] makes the model.
///
/// In a run's `config.json` these fields sit in the `train` section, beside the training
/// knobs (the training configuration flattens this one into it), under the names they had
/// before this type existed: `model` for the kind. Fields added since read as their defaults
/// from older files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The architecture.
    #[serde(rename = "model")]
    pub kind: ModelKind,
    /// Widths that differ from the architecture's own (hidden size, channels...).
    #[serde(flatten)]
    pub size: Size,
    /// The scheme that draws the initial weights; runs from before it existed used PyTorch's.
    #[serde(default)]
    pub init: Init,
    /// How pixel bytes become inputs (the fitted scale and shift are in the checkpoint).
    pub normalization: Normalization,
    /// Score each image as the mean of its logits and its mirror image's; runs from before it
    /// existed scored one view.
    #[serde(default)]
    pub mirror_tta: bool,
    /// The CPU kernels: fused where candle is slow, or candle's generic operations.
    #[serde(default)]
    pub kernels: Kernels,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::new(ModelKind::Cnn)
    }
}

impl ModelConfig {
    /// `kind` at its own widths with PyTorch's initialization, inputs in [0, 1], one view, fused kernels.
    pub fn new(kind: ModelKind) -> Self {
        ModelConfig {
            kind,
            size: Size::default(),
            init: Init::default(),
            normalization: Normalization::default(),
            mirror_tta: false,
            kernels: Kernels::default(),
        }
    }

    /// The widths the network is built with, or an error naming a width out of range or one
    /// the architecture does not have.
    pub fn widths(&self) -> Result<Widths> {
        self.size.resolve(self.kind)
    }

    /// The model on `device`, its parameters drawn from `seed` (the same seed gives the same
    /// bits on every machine).
    pub fn build(&self, seed: u64, device: &Device) -> Result<Model> {
        Model::new(*self, seed, device)
    }
}
