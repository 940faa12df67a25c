//! A built model: its kind, its parameters in a VarMap, and checkpoint save/load.
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use candle::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::builder::{Builder, Init};
use crate::kind::ModelKind;
use crate::nets::{Cnn, CnnDeep, CnnWide, Lstm, Mlp, Net, Resnet};

/// A network of the registry with its parameters.
pub struct Model {
    kind: ModelKind,
    varmap: VarMap,
    net: Box<dyn Net>,
    noise: Arc<Mutex<ChaCha8Rng>>,
}

/// Whether a VarMap entry is state rather than a trained parameter (BatchNorm running statistics).
fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

impl Model {
    /// Builds `kind` with parameters drawn from `seed` by the `init` scheme.
    pub fn new(kind: ModelKind, seed: u64, init: Init, device: &Device) -> anyhow::Result<Self> {
        let mut b = Builder::new(seed, init, device);
        let net: Box<dyn Net> = match kind {
            ModelKind::Cnn => Box::new(Cnn::new(&mut b)?),
            ModelKind::Lstm => Box::new(Lstm::new(&mut b)?),
            ModelKind::Mlp => Box::new(Mlp::new(&mut b)?),
            ModelKind::CnnWide => Box::new(CnnWide::new(&mut b)?),
            ModelKind::CnnDeep => Box::new(CnnDeep::new(&mut b)?),
            ModelKind::Resnet => Box::new(Resnet::new(&mut b)?),
        };
        let (varmap, noise) = b.finish();
        Ok(Model {
            kind,
            varmap,
            net,
            noise,
        })
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Logits `[B, 10]` of images `[B, 1, 28, 28]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        self.net.forward_t(x, train)
    }

    /// The ReLU activations of the first convolution (before pooling), for CNNs.
    pub fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        self.net.first_feature_maps(x)
    }

    /// The first convolution's kernels `[C, 1, k, k]`, for CNNs.
    pub fn first_conv_weight(&self) -> Option<Tensor> {
        let data = self.varmap.data().lock().ok()?;
        ["conv1.weight", "stage1.conv.weight", "stem.conv.weight"]
            .iter()
            .find_map(|n| data.get(*n).map(|v| v.as_tensor().clone()))
    }

    /// Every entry of the VarMap (parameters and BatchNorm statistics), sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The trained parameters, sorted by name (BatchNorm running statistics excluded).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_vars()
            .into_iter()
            .filter(|(n, _)| !is_buffer(n))
            .collect()
    }

    /// Number of trained parameters.
    pub fn param_count(&self) -> usize {
        self.trainable_vars()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Restarts the dropout masks' generator from `seed` (the trainer does it every epoch,
    /// so a resumed run draws the same masks as an uninterrupted one).
    pub fn reseed_dropout(&self, seed: u64) {
        let mut rng = self.noise.lock().expect("dropout generator lock poisoned");
        *rng = ChaCha8Rng::seed_from_u64(seed);
    }

    /// Writes every var to `path` as safetensors, atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("safetensors.tmp");
        self.varmap
            .save(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Loads parameters saved by [`Model::save`], checking that every tensor is present with
    /// this model's shape.
    pub fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let tensors = candle::safetensors::load(path, &Device::Cpu).with_context(|| {
            format!("{}: not a readable safetensors checkpoint", path.display())
        })?;
        for (name, var) in self.named_vars() {
            let Some(t) = tensors.get(&name) else {
                bail!(
                    "{}: tensor '{name}' is missing: the checkpoint is not a '{}' model",
                    path.display(),
                    self.kind
                );
            };
            if t.dims() != var.dims() {
                bail!(
                    "{}: tensor '{name}' has shape {:?}, model '{}' expects {:?}",
                    path.display(),
                    t.dims(),
                    self.kind,
                    var.dims()
                );
            }
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }
}
