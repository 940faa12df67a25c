//! The registry of model names: what each is, where it comes from.
use serde::{Deserialize, Serialize};

/// A model of the registry, by its command-line name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// The CNN/LSTM study's CNN: conv 32, pool, conv 32, pool, dense 100, dense 10 (90,678 params).
    Cnn,
    /// The CNN/LSTM study's LSTM: 128 units reading the 28 rows, dense 10 (82,186 params).
    Lstm,
    /// The ANN-vs-CNN study's MLP: 784-256-128-10 with dropout 0.2 (235,146 params).
    Mlp,
    /// The depth study's CNN: conv 32, conv 64 (padded), dense 128, dropout 0.5 (421,642 params).
    CnnWide,
    /// Three conv stages 32-64-128 with BatchNorm and dropout (538,346 params).
    CnnDeep,
    /// The ANN-vs-CNN coursework's CNN as read here: three stages 32-64-128 of two padded
    /// conv-BatchNorm-ReLU and a max-pool, dropout 0.1 after each, dense 128 with dropout 0.3
    /// (435,754 params; the coursework's count: 438,000).
    CnnVgg,
    /// A small residual network with BatchNorm, our accuracy flagship.
    Resnet,
    /// The depth study's deeper CNN: conv 32, 64, 128 (padded), dense 256, dropout 0.5
    /// (1,701,130 params).
    #[serde(rename = "cnn-3conv")]
    #[cfg_attr(feature = "clap", value(name = "cnn-3conv"))]
    Cnn3Conv,
    /// The ANN-vs-CNN study's BatchNorm MLP: 784-512-256-128-10, BatchNorm, dropout 0.3
    /// (569,226 params).
    MlpBn,
    /// The R study's first CNN: conv 32 + BatchNorm twice (unpadded, no pooling), dropout,
    /// dense 512 and 128 with BatchNorm and dropout (9,515,562 params).
    CnnBn,
    /// The R study's second CNN: conv 32, 32, pool, conv 64, pool, conv 128, pool (padded,
    /// each with BatchNorm), dense 512 and 128 with BatchNorm and dropout (760,746 params).
    CnnBnPool,
    /// The R study's LSTM: 128 units reading the 28 rows, dropout, dense 128 with ReLU and
    /// dropout, dense 10 (98,698 params).
    LstmDense,
}

impl ModelKind {
    pub const ALL: [ModelKind; 12] = [
        ModelKind::Cnn,
        ModelKind::Lstm,
        ModelKind::LstmDense,
        ModelKind::Mlp,
        ModelKind::MlpBn,
        ModelKind::CnnWide,
        ModelKind::Cnn3Conv,
        ModelKind::CnnDeep,
        ModelKind::CnnVgg,
        ModelKind::CnnBn,
        ModelKind::CnnBnPool,
        ModelKind::Resnet,
    ];

    /// The registry name (`cnn`, `cnn-wide`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Cnn => "cnn",
            ModelKind::Lstm => "lstm",
            ModelKind::Mlp => "mlp",
            ModelKind::CnnWide => "cnn-wide",
            ModelKind::CnnDeep => "cnn-deep",
            ModelKind::CnnVgg => "cnn-vgg",
            ModelKind::Resnet => "resnet",
            ModelKind::Cnn3Conv => "cnn-3conv",
            ModelKind::MlpBn => "mlp-bn",
            ModelKind::CnnBn => "cnn-bn",
            ModelKind::CnnBnPool => "cnn-bn-pool",
            ModelKind::LstmDense => "lstm-dense",
        }
    }

    /// Whether the first layers are convolutions (filters and feature maps can be shown).
    pub fn is_convolutional(self) -> bool {
        matches!(
            self,
            ModelKind::Cnn
                | ModelKind::CnnWide
                | ModelKind::Cnn3Conv
                | ModelKind::CnnDeep
                | ModelKind::CnnVgg
                | ModelKind::CnnBn
                | ModelKind::CnnBnPool
                | ModelKind::Resnet
        )
    }

    /// Whether the network reads the rows as a sequence (an LSTM).
    pub fn is_recurrent(self) -> bool {
        matches!(self, ModelKind::Lstm | ModelKind::LstmDense)
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ModelKind {
    type Err = crate::ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
                crate::ModelError::UnknownModel {
                    name: s.to_string(),
                    known: names.join(", "),
                }
            })
    }
}
