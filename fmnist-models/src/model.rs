//! A built model: its configuration, its parameters in a VarMap, the forward pass in training
//! and in evaluation, and its weights saved to and loaded from safetensors.
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::builder::Builder;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kind::ModelKind;
use crate::nets::{
    Cnn, Cnn3Conv, CnnBn, CnnBnPool, CnnDeep, CnnVgg, CnnWide, Lstm, Mlp, MlpBn, Net, Resnet,
};

/// A network of the registry with its parameters, built by [`ModelConfig::build`].
pub struct Model {
    config: ModelConfig,
    varmap: VarMap,
    net: Box<dyn Net>,
    noise: Arc<Mutex<ChaCha8Rng>>,
}

/// Whether a VarMap entry is state rather than a trained parameter (BatchNorm running statistics).
fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

impl Model {
    /// Builds `config`'s network at its widths with parameters drawn from `seed` by its init
    /// scheme.
    pub(crate) fn new(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let w = config.widths()?;
        let mut b = Builder::new(seed, config.init, config.kernels, device);
        let net: Box<dyn Net> = match config.kind {
            ModelKind::Cnn => Box::new(Cnn::new(&mut b, &w)?),
            ModelKind::Lstm | ModelKind::LstmDense => Box::new(Lstm::new(&mut b, &w)?),
            ModelKind::Mlp => Box::new(Mlp::new(&mut b, &w)?),
            ModelKind::CnnWide => Box::new(CnnWide::new(&mut b, &w)?),
            ModelKind::CnnDeep => Box::new(CnnDeep::new(&mut b, &w)?),
            ModelKind::CnnVgg => Box::new(CnnVgg::new(&mut b, &w)?),
            ModelKind::Resnet => Box::new(Resnet::new(&mut b, &w)?),
            ModelKind::Cnn3Conv => Box::new(Cnn3Conv::new(&mut b, &w)?),
            ModelKind::MlpBn => Box::new(MlpBn::new(&mut b, &w)?),
            ModelKind::CnnBn => Box::new(CnnBn::new(&mut b, &w)?),
            ModelKind::CnnBnPool => Box::new(CnnBnPool::new(&mut b, &w)?),
        };
        let (varmap, noise) = b.finish();
        Ok(Model {
            config,
            varmap,
            net,
            noise,
        })
    }

    /// What the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The architecture.
    pub fn kind(&self) -> ModelKind {
        self.config.kind
    }

    /// Logits `[B, 10]` of normalized images `[B, 1, 28, 28]`; `train` switches dropout and
    /// BatchNorm's batch statistics, and in evaluation the fused layers record no graph.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        self.net.forward_t(x, train)
    }

    /// Logits `[B, 10]` in evaluation as the configuration scores them: with mirror TTA, the
    /// mean of the logits of each image and of its mirror image.
    pub fn eval_logits(&self, x: &Tensor) -> candle::Result<Tensor> {
        let logits = self.forward_t(x, false)?;
        if !self.config.mirror_tta {
            return Ok(logits);
        }
        let mirrored = self.forward_t(&x.flip(&[3])?, false)?;
        (logits + mirrored)? * 0.5
    }

    /// The embedding `[B, D]` of normalized images in evaluation: what the last dense layer
    /// reads (D = 100 for `cnn`, 128 for `lstm` and `resnet`, 256 for `cnn-3conv`...). Images
    /// the model finds alike lie close; the logits are `output(embedding)`.
    pub fn embedding(&self, x: &Tensor) -> candle::Result<Tensor> {
        self.net.features_t(x, false)
    }

    /// The ReLU activations of the first convolution (before pooling), for CNNs.
    pub fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        self.net.first_feature_maps(x)
    }

    /// The last convolution's activations `[B, C, H, W]` in evaluation, for CNNs.
    pub fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        self.net.last_conv_maps(x)
    }

    /// The evaluation logits from [`Model::last_conv_maps`]' output, differentiable in it.
    pub fn logits_from_last_conv_maps(&self, maps: &Tensor) -> candle::Result<Tensor> {
        self.net.head(maps)
    }

    /// Grad-CAM maps of `classes[b]` for images `x` `[B, 1, H, W]`, each resampled to the
    /// image's `H x W` (row-major, values in [0, 1]); `None` for a network without
    /// convolutions.
    pub fn grad_cam(&self, x: &Tensor, classes: &[u32]) -> candle::Result<Option<Vec<Vec<f32>>>> {
        let Some(maps) = self.net.last_conv_maps(x)? else {
            return Ok(None);
        };
        let (_, _, rows, cols) = x.dims4()?;
        let (_, _, h, w) = maps.dims4()?;
        let cams = crate::explain::grad_cam(&maps, |a| self.net.head(a), classes)?;
        let flat = cams.flatten_from(1)?.to_vec2::<f32>()?;
        Ok(Some(
            flat.iter()
                .map(|m| crate::explain::upsample_bilinear(m, h, w, rows, cols))
                .collect(),
        ))
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
        let data = self
            .varmap
            .data()
            .lock()
            .expect("VarMap lock should not be poisoned");
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
        let mut rng = self
            .noise
            .lock()
            .expect("dropout generator lock should not be poisoned");
        *rng = ChaCha8Rng::seed_from_u64(seed);
    }

    /// Writes every var to `path` as safetensors, atomically. The tensor names are the
    /// layers' (`conv1.weight`, `lstm.weight_ih_l0`, ...), as PyTorch's `state_dict` has them.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let bytes = safetensors::serialize(tensors, None).map_err(|e| ModelError::Write {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        fmnist_data::write_atomic(path, &bytes).map_err(|e| ModelError::Write {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Loads weights saved by [`Model::save`], checking that every tensor is present with
    /// this model's shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        if !path.is_file() {
            return Err(ModelError::NoWeights {
                path: path.to_path_buf(),
            });
        }
        let tensors = candle::safetensors::load(path, &Device::Cpu).map_err(|source| {
            ModelError::BadWeights {
                path: path.to_path_buf(),
                source,
            }
        })?;
        for (name, var) in self.named_vars() {
            let Some(t) = tensors.get(&name) else {
                return Err(ModelError::MissingTensor {
                    path: path.to_path_buf(),
                    name,
                    model: self.kind(),
                });
            };
            if t.dims() != var.dims() {
                return Err(ModelError::ShapeMismatch {
                    path: path.to_path_buf(),
                    name,
                    model: self.kind(),
                    found: t.dims().to_vec(),
                    expected: var.dims().to_vec(),
                });
            }
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }
}
