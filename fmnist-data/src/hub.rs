//! Fashion-MNIST from the Hugging Face Hub (feature `hub`, off by default).
//!
//! candle-datasets downloads the Hub's parquet copy of the data set
//! (`zalando-datasets/fashion_mnist`, through hf-hub, which caches under `HF_HOME` and talks to
//! `HF_ENDPOINT` when it is set) and decodes its PNG images; this module checks what came back
//! and writes it as the four raw IDX files, so that the rest of fmnist reads it like any other
//! copy and checks it against Fashion-MNIST's SHA-256 sums.
use std::path::{Path, PathBuf};

use candle::{DType, Tensor};

use crate::dataset::IMAGE_SIDE;
use crate::error::{DataError, Result};
use crate::fs::write_atomic;
use crate::idx::{encode_images, encode_labels};
use crate::source::IdxFile;

/// The Hub data set that candle-datasets reads.
pub const HUB_DATASET: &str = "zalando-datasets/fashion_mnist";
/// The environment variable that points hf-hub at another Hub (a mirror, or a test server).
pub const HUB_ENDPOINT_ENV: &str = "HF_ENDPOINT";

/// Downloads Fashion-MNIST from the Hub and writes the four raw IDX files into `dir` (created if
/// needed; each file written atomically). Returns the paths written, in [`IdxFile::ALL`] order.
pub fn fetch_from_hub(dir: &Path) -> Result<Vec<PathBuf>> {
    let endpoint =
        std::env::var(HUB_ENDPOINT_ENV).unwrap_or_else(|_| "https://huggingface.co".into());
    let hub_error = |reason: String| DataError::Hub {
        dataset: HUB_DATASET,
        endpoint: endpoint.clone(),
        reason,
    };
    // candle-datasets unwraps the decoding of each image: a file that is not an image panics
    // inside it, and becomes an error here.
    let loaded = std::panic::catch_unwind(candle_datasets::vision::fashion_mnist::load)
        .map_err(|_| hub_error("a parquet file holds an image that does not decode".into()))?
        .map_err(|e| hub_error(e.to_string()))?;
    let image_len = IMAGE_SIDE * IMAGE_SIDE;
    let (train_pixels, train_labels) = (
        pixels(&loaded.train_images, image_len).map_err(&hub_error)?,
        labels(&loaded.train_labels, loaded.labels).map_err(&hub_error)?,
    );
    let (test_pixels, test_labels) = (
        pixels(&loaded.test_images, image_len).map_err(&hub_error)?,
        labels(&loaded.test_labels, loaded.labels).map_err(&hub_error)?,
    );
    for (split, images, labels) in [
        ("train", &train_pixels, &train_labels),
        ("test", &test_pixels, &test_labels),
    ] {
        if images.len() != labels.len() * image_len || labels.is_empty() {
            return Err(hub_error(format!(
                "the {split} split has {} images and {} labels",
                images.len() / image_len,
                labels.len()
            )));
        }
    }
    let files = [
        encode_images(train_labels.len(), IMAGE_SIDE, IMAGE_SIDE, &train_pixels),
        encode_labels(&train_labels),
        encode_images(test_labels.len(), IMAGE_SIDE, IMAGE_SIDE, &test_pixels),
        encode_labels(&test_labels),
    ];
    std::fs::create_dir_all(dir).map_err(|source| DataError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::with_capacity(files.len());
    for (file, bytes) in IdxFile::ALL.into_iter().zip(files) {
        let path = dir.join(file.stem());
        write_atomic(&path, &bytes)?;
        written.push(path);
    }
    Ok(written)
}

/// The images back as bytes: candle-datasets divides each pixel by 255 in f32, which rounds back
/// exactly.
fn pixels(images: &Tensor, image_len: usize) -> std::result::Result<Vec<u8>, String> {
    let dims = images.dims();
    if dims.len() != 2 || dims[1] != image_len {
        return Err(format!(
            "images of shape {dims:?}, expected [N, {image_len}] (28x28 pixels)"
        ));
    }
    let values = images
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    Ok(values
        .into_iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect())
}

/// The labels as bytes, each checked against the number of classes.
fn labels(labels: &Tensor, num_classes: usize) -> std::result::Result<Vec<u8>, String> {
    let values = labels
        .to_dtype(DType::U8)
        .and_then(|t| t.to_vec1::<u8>())
        .map_err(|e| e.to_string())?;
    match values.iter().position(|&l| l as usize >= num_classes) {
        Some(i) => Err(format!(
            "label {} at index {i} is out of range (expected 0..{num_classes})",
            values[i]
        )),
        None => Ok(values),
    }
}
