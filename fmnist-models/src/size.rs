//! How big a network is: the widths that define each family, each registry entry's own, and
//! the overrides a configuration (and a sweep's `--set`) gives them.
//!
//! A registry name is a family with its preset widths: `cnn` is the two-convolution CNN with
//! 32 channels and a dense layer of 100, `lstm` the row-reading LSTM with 128 units and no
//! dense head. [`Size`] changes any of them; a run's `config.json` records only what it
//! changes, so the configurations of runs that change nothing read as before.
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::kind::ModelKind;

/// Overrides of a registry entry's widths, each absent for the entry's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    /// Channels of the first convolution; later convolutions keep the entry's ratios to it
    /// (cnn 1:1, cnn-wide 1:2, cnn-3conv and resnet 1:2:4...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// Units of the first dense hidden layer; later dense layers keep the entry's ratios to
    /// it (mlp 256-128, mlp-bn 512-256-128, cnn-bn 512-128). For an LSTM, the dense head
    /// between the recurrence and the output, 0 for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<usize>,
    /// Units of an LSTM's state (per direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    /// Each LSTM layer doubled by one reading the rows bottom to top, the two directions'
    /// states side by side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bidirectional: Option<bool>,
    /// Stacked LSTM layers, each reading the states of the one below at every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// An LSTM read through attention over its 28 states (one per row) instead of its last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<bool>,
}

impl Size {
    /// Whether every width is the entry's own.
    pub fn is_preset(&self) -> bool {
        *self == Size::default()
    }
}

/// The widths a network is built with: its entry's, with a [`Size`]'s overrides applied.
/// Widths a family does not have are 0 (`false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Widths {
    /// Channels of the first convolution.
    pub channels: usize,
    /// Units of the first dense hidden layer (an LSTM's head; 0 for none).
    pub dense: usize,
    /// Units of an LSTM's state per direction.
    pub hidden: usize,
    /// Whether the LSTM reads the rows both ways.
    pub bidirectional: bool,
    /// Stacked LSTM layers (1 for an LSTM, 0 for the other families).
    pub layers: usize,
    /// Whether the LSTM's states are pooled by attention rather than read at the last step.
    pub attention: bool,
}

impl ModelKind {
    /// The entry's own widths.
    pub fn widths(self) -> Widths {
        let (channels, dense, hidden) = match self {
            ModelKind::Cnn => (32, 100, 0),
            ModelKind::Lstm => (0, 0, 128),
            ModelKind::LstmDense => (0, 128, 128),
            ModelKind::Mlp => (0, 256, 0),
            ModelKind::MlpBn => (0, 512, 0),
            ModelKind::CnnWide | ModelKind::CnnVgg => (32, 128, 0),
            ModelKind::Cnn3Conv | ModelKind::CnnDeep => (32, 256, 0),
            ModelKind::CnnBn | ModelKind::CnnBnPool => (32, 512, 0),
            ModelKind::Resnet => (32, 0, 0),
        };
        Widths {
            channels,
            dense,
            hidden,
            bidirectional: false,
            layers: usize::from(self.is_recurrent()),
            attention: false,
        }
    }

    /// How many times its first dense layer the entry's last dense hidden layer is smaller
    /// (mlp 256-128: 2; mlp-bn 512-256-128 and cnn-bn 512-128: 4); 1 where there is one.
    fn dense_ratio(self) -> usize {
        match self {
            ModelKind::Mlp => 2,
            ModelKind::MlpBn | ModelKind::CnnBn | ModelKind::CnnBnPool => 4,
            _ => 1,
        }
    }
}

/// A width of `key` given to `kind`, which does not have it.
fn not_for(key: &'static str, kind: ModelKind, has: &str) -> ModelError {
    ModelError::BadSize {
        key,
        message: format!("{kind} has no {has}"),
    }
}

impl Size {
    /// `kind`'s widths with these overrides, or an error naming the key that is out of
    /// range or that `kind` does not have.
    pub fn resolve(&self, kind: ModelKind) -> Result<Widths> {
        let mut w = kind.widths();
        if let Some(c) = self.channels {
            if !kind.is_convolutional() {
                return Err(not_for("channels", kind, "convolutions"));
            }
            if c == 0 {
                return Err(ModelError::BadSize {
                    key: "channels",
                    message: "must be at least 1".into(),
                });
            }
            w.channels = c;
        }
        if let Some(d) = self.dense {
            if kind == ModelKind::Resnet {
                return Err(not_for("dense", kind, "dense hidden layer"));
            }
            let ratio = kind.dense_ratio();
            if d < ratio && !(kind.is_recurrent() && d == 0) {
                let least = if kind.is_recurrent() {
                    "must be 0 (no dense head) or more".to_string()
                } else if ratio > 1 {
                    format!("must be at least {ratio}: {kind}'s last dense layer has 1/{ratio} of its units")
                } else {
                    "must be at least 1".to_string()
                };
                return Err(ModelError::BadSize {
                    key: "dense",
                    message: least,
                });
            }
            w.dense = d;
        }
        for (key, set) in [
            ("hidden", self.hidden.is_some()),
            ("bidirectional", self.bidirectional.is_some()),
            ("layers", self.layers.is_some()),
            ("attention", self.attention.is_some()),
        ] {
            if set && !kind.is_recurrent() {
                return Err(not_for(key, kind, "LSTM"));
            }
        }
        if let Some(h) = self.hidden {
            if h == 0 {
                return Err(ModelError::BadSize {
                    key: "hidden",
                    message: "must be at least 1".into(),
                });
            }
            w.hidden = h;
        }
        if let Some(b) = self.bidirectional {
            w.bidirectional = b;
        }
        if let Some(l) = self.layers {
            if l == 0 {
                return Err(ModelError::BadSize {
                    key: "layers",
                    message: "must be at least 1".into(),
                });
            }
            w.layers = l;
        }
        if let Some(a) = self.attention {
            w.attention = a;
        }
        Ok(w)
    }

    /// The overrides as settings text (`hidden=256 bidirectional=true`), empty for none.
    pub fn settings(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.channels {
            parts.push(format!("channels={c}"));
        }
        if let Some(d) = self.dense {
            parts.push(format!("dense={d}"));
        }
        if let Some(h) = self.hidden {
            parts.push(format!("hidden={h}"));
        }
        if let Some(b) = self.bidirectional {
            parts.push(format!("bidirectional={b}"));
        }
        if let Some(l) = self.layers {
            parts.push(format!("layers={l}"));
        }
        if let Some(a) = self.attention {
            parts.push(format!("attention={a}"));
        }
        parts.join(" ")
    }
}

impl Widths {
    /// The last dense hidden layer's units of `kind` at these widths.
    pub fn last_dense(&self, kind: ModelKind) -> usize {
        self.dense / kind.dense_ratio()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_to_the_families_that_have_them() {
        let size = Size {
            hidden: Some(256),
            bidirectional: Some(true),
            dense: Some(0),
            ..Size::default()
        };
        let w = size.resolve(ModelKind::LstmDense).unwrap();
        assert_eq!((w.hidden, w.bidirectional, w.dense), (256, true, 0));
        let cnn = Size {
            channels: Some(16),
            ..Size::default()
        };
        assert_eq!(cnn.resolve(ModelKind::Cnn).unwrap().channels, 16);
        assert_eq!(cnn.resolve(ModelKind::Cnn).unwrap().dense, 100);
        assert_eq!(
            Size::default().resolve(ModelKind::MlpBn).unwrap().dense,
            512
        );
        assert_eq!(ModelKind::MlpBn.widths().last_dense(ModelKind::MlpBn), 128);
    }

    #[test]
    fn out_of_range_or_foreign_widths_name_the_key() {
        let err = |size: Size, kind| size.resolve(kind).unwrap_err().to_string();
        let hidden0 = Size {
            hidden: Some(0),
            ..Size::default()
        };
        assert_eq!(err(hidden0, ModelKind::Lstm), "hidden: must be at least 1");
        let hidden = Size {
            hidden: Some(64),
            ..Size::default()
        };
        assert_eq!(err(hidden, ModelKind::Cnn), "hidden: cnn has no LSTM");
        let layers0 = Size {
            layers: Some(0),
            ..Size::default()
        };
        assert_eq!(err(layers0, ModelKind::Lstm), "layers: must be at least 1");
        let attention = Size {
            attention: Some(true),
            ..Size::default()
        };
        assert_eq!(err(attention, ModelKind::Mlp), "attention: mlp has no LSTM");
        let channels = Size {
            channels: Some(0),
            ..Size::default()
        };
        assert_eq!(
            err(channels, ModelKind::Cnn),
            "channels: must be at least 1"
        );
        let channels = Size {
            channels: Some(8),
            ..Size::default()
        };
        assert_eq!(
            err(channels, ModelKind::Mlp),
            "channels: mlp has no convolutions"
        );
        let dense = Size {
            dense: Some(64),
            ..Size::default()
        };
        assert_eq!(
            err(dense, ModelKind::Resnet),
            "dense: resnet has no dense hidden layer"
        );
        let dense = Size {
            dense: Some(0),
            ..Size::default()
        };
        assert_eq!(err(dense, ModelKind::Cnn), "dense: must be at least 1");
        let dense = Size {
            dense: Some(3),
            ..Size::default()
        };
        assert_eq!(
            err(dense, ModelKind::MlpBn),
            "dense: must be at least 4: mlp-bn's last dense layer has 1/4 of its units"
        );
    }

    #[test]
    fn settings_name_only_what_changes() {
        assert_eq!(Size::default().settings(), "");
        let size = Size {
            hidden: Some(64),
            bidirectional: Some(true),
            ..Size::default()
        };
        assert_eq!(size.settings(), "hidden=64 bidirectional=true");
        let size = Size {
            layers: Some(2),
            attention: Some(true),
            ..Size::default()
        };
        assert_eq!(size.settings(), "layers=2 attention=true");
    }
}
