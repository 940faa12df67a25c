//! Inference from any Rust program: a trained run folder in, ten probabilities per image out.
use std::path::Path;

use candle::{Device, Tensor};
use fmnist_data::{ImageSet, Normalizer, IMAGE_SIDE};

use crate::checkpoint::{Checkpoint, CheckpointConfig};
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::photo;
use crate::scoring::softmax_rows;
use crate::NUM_CLASSES;

/// Pixels of one input image (28 x 28, row-major, one byte each).
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;

/// A trained model ready to classify images as its run scored them: the run's own input
/// scaling, and mirror TTA where the run used it.
///
/// ```
/// use fmnist_models::{argmax, Classifier};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))?;
/// let classifier = Classifier::load("results/resnet-best", &candle::Device::Cpu)?;
/// // 28x28 grey levels, the item light on black as in Fashion-MNIST: here a bright block.
/// let image: Vec<u8> = (0..784).map(|i| if (i / 28) % 27 > 6 { 200 } else { 0 }).collect();
/// let probabilities = classifier.classify(&image)?;
/// let best = argmax(&probabilities);
/// println!("{}: {:.1}%", classifier.class_names()[best], 100.0 * probabilities[best]);
/// assert!((probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
/// # Ok(()) }
/// ```
pub struct Classifier {
    model: Model,
    config: CheckpointConfig,
    device: Device,
}

impl Classifier {
    /// Loads the run (or checkpoint) folder `dir`: its `config.json` and `model.safetensors`.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let (config, model) = Checkpoint::new(dir.as_ref()).load(device)?;
        Ok(Classifier {
            model,
            config,
            device: device.clone(),
        })
    }

    /// The model underneath.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// What the checkpoint says about the model and its inputs.
    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    /// The classes, in the order of the probabilities.
    pub fn class_names(&self) -> &[String] {
        &self.config.class_names
    }

    /// The input scaling the run was trained with.
    pub fn normalizer(&self) -> Normalizer {
        self.config.normalizer
    }

    /// The probabilities of the classes for one image of [`IMAGE_PIXELS`] grey levels.
    pub fn classify(&self, image: &[u8]) -> Result<[f32; NUM_CLASSES]> {
        let mut all = self.classify_all(&[image])?;
        Ok(all.remove(0))
    }

    /// The probabilities of the classes for a person's image of any size, fitted to the
    /// model's input as [`photo::fit`] does (inverted per `invert`), and whether it was
    /// inverted: the answer `predict` and the HTTP service give for the same file.
    pub fn classify_photo(
        &self,
        image: &image::DynamicImage,
        invert: photo::Invert,
    ) -> Result<([f32; NUM_CLASSES], bool)> {
        let (input, inverted) = photo::fit(image, invert);
        Ok((self.classify(input.as_raw())?, inverted))
    }

    /// The normalized batch `[B, 1, 28, 28]` of `images`, each of [`IMAGE_PIXELS`] grey levels.
    fn batch(&self, images: &[&[u8]]) -> Result<Tensor> {
        let mut pixels = Vec::with_capacity(images.len() * IMAGE_PIXELS);
        for (index, image) in images.iter().enumerate() {
            if image.len() != IMAGE_PIXELS {
                return Err(ModelError::ImageSize {
                    index,
                    found: image.len(),
                    expected: IMAGE_PIXELS,
                });
            }
            pixels.extend(image.iter().map(|&p| self.config.normalizer.apply(p)));
        }
        let shape = (images.len(), 1, IMAGE_SIDE, IMAGE_SIDE);
        Ok(Tensor::from_vec(pixels, shape, &self.device)?)
    }

    /// Grad-CAM maps (28x28, row-major, values in [0, 1]) of `classes[i]` for `images[i]`:
    /// where a convolutional model found the evidence for that class (the image as given;
    /// mirror TTA plays no part). `None` for a model without convolutions.
    pub fn grad_cam(&self, images: &[&[u8]], classes: &[usize]) -> Result<Option<Vec<Vec<f32>>>> {
        let x = self.batch(images)?;
        let classes: Vec<u32> = classes.iter().map(|&c| c as u32).collect();
        Ok(self.model.grad_cam(&x, &classes)?)
    }

    /// The probabilities of the classes for each image, in one batch.
    pub fn classify_all(&self, images: &[&[u8]]) -> Result<Vec<[f32; NUM_CLASSES]>> {
        let x = self.batch(images)?;
        let logits = self
            .model
            .eval_logits(&x)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(softmax_rows(&logits, NUM_CLASSES)
            .chunks_exact(NUM_CLASSES)
            .map(|row| {
                let mut p = [0f32; NUM_CLASSES];
                p.copy_from_slice(row);
                p
            })
            .collect())
    }

    /// The model's embedding of each image ([`Model::embedding`]; the image as given, without
    /// mirror TTA), in one batch.
    pub fn embed_all(&self, images: &[&[u8]]) -> Result<Vec<Vec<f32>>> {
        let x = self.batch(images)?;
        Ok(self.model.embedding(&x)?.to_vec2::<f32>()?)
    }

    /// Logits `[N x 10]`, row-major, of every image of `set` (in chunks).
    pub fn logits(&self, set: &ImageSet) -> Result<Vec<f32>> {
        crate::scoring::logits(&self.model, set, self.config.normalizer, &self.device)
    }
}
