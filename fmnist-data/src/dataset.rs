//! The loaded dataset: images and labels per split, class names, and the load options.
use std::path::Path;

use crate::error::{DataError, Result};
use crate::idx;
use crate::source::{verify_checksum, Checksums, DataSource, IdxFile, Verify};

/// Fashion-MNIST's ten classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Side of a Fashion-MNIST image.
pub const IMAGE_SIDE: usize = 28;

/// The three sets a model sees: train and validation are carved from the 60,000
/// training images; test is the 10,000 held out, used once at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Images with their labels, in one contiguous `u8` buffer (`len * rows * cols` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// Image `i` (row-major bytes) and its label.
    pub fn get(&self, i: usize) -> Option<(&[u8], u8)> {
        let n = self.image_len();
        let label = *self.labels.get(i)?;
        Some((&self.pixels[i * n..(i + 1) * n], label))
    }

    /// How many images each class has (`num_classes` entries).
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// A new set holding the images at `indices`, in that order.
    pub fn select(&self, indices: &[u32]) -> ImageSet {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let i = i as usize;
            pixels.extend_from_slice(&self.pixels[i * n..(i + 1) * n]);
            labels.push(self.labels[i]);
        }
        ImageSet {
            rows: self.rows,
            cols: self.cols,
            pixels,
            labels,
        }
    }
}

/// How a directory of IDX files is read.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Check SHA-256 against [`LoadOptions::checksums`].
    pub verify: Verify,
    pub checksums: Checksums,
    /// Accept images of any size (Fashion-MNIST and MNIST are 28x28).
    pub allow_any_shape: bool,
    /// Class names, in label order; their count bounds the labels.
    pub class_names: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verify: Verify::Sha256,
            checksums: Checksums::fashion_mnist(),
            allow_any_shape: false,
            class_names: FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// The whole dataset as read from disk: 60,000 training and 10,000 test images for Fashion-MNIST.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    pub source: DataSource,
    pub train: ImageSet,
    pub test: ImageSet,
    pub class_names: Vec<String>,
    /// Whether the checksums were verified (false with `Verify::None`).
    pub verified: bool,
}

impl FashionMnist {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Lower-case hex SHA-256 of the images, labels, image size and class names: what a result
    /// computed from the data depends on, wherever the files were read from.
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for set in [&self.train, &self.test] {
            h.update((set.rows as u64).to_le_bytes());
            h.update((set.cols as u64).to_le_bytes());
            h.update((set.labels.len() as u64).to_le_bytes());
            h.update(&set.pixels);
            h.update(&set.labels);
        }
        for name in &self.class_names {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
        }
        format!("{:x}", h.finalize())
    }

    /// Reads and checks the four files of `source`.
    pub fn load(source: DataSource, options: &LoadOptions) -> Result<Self> {
        let train = read_pair(
            &source.dir,
            IdxFile::TrainImages,
            IdxFile::TrainLabels,
            options,
        )?;
        let test = read_pair(
            &source.dir,
            IdxFile::TestImages,
            IdxFile::TestLabels,
            options,
        )?;
        if (train.rows, train.cols) != (test.rows, test.cols) {
            return Err(DataError::Dimensions {
                path: source.dir.join(IdxFile::TestImages.stem()),
                rows: test.rows,
                cols: test.cols,
                expected_rows: train.rows,
                expected_cols: train.cols,
            });
        }
        Ok(FashionMnist {
            source,
            train,
            test,
            class_names: options.class_names.clone(),
            verified: options.verify == Verify::Sha256,
        })
    }
}

fn read_checked(
    dir: &Path,
    file: IdxFile,
    options: &LoadOptions,
) -> Result<(Vec<u8>, std::path::PathBuf)> {
    let path = idx::find_file(dir, file.stem()).ok_or_else(|| DataError::Missing {
        path: dir.join(file.stem()),
    })?;
    let bytes = idx::read_maybe_gz(&path)?;
    if options.verify == Verify::Sha256 {
        verify_checksum(options.checksums.of(file), &bytes, &path)?;
    }
    Ok((bytes, path))
}

fn read_pair(
    dir: &Path,
    images_file: IdxFile,
    labels_file: IdxFile,
    options: &LoadOptions,
) -> Result<ImageSet> {
    let (bytes, images_path) = read_checked(dir, images_file, options)?;
    let images = idx::parse_images(&bytes, &images_path)?;
    drop(bytes);
    let (bytes, labels_path) = read_checked(dir, labels_file, options)?;
    let labels = idx::parse_labels(&bytes, &labels_path)?;
    if !options.allow_any_shape && (images.rows, images.cols) != (IMAGE_SIDE, IMAGE_SIDE) {
        return Err(DataError::Dimensions {
            path: images_path,
            rows: images.rows,
            cols: images.cols,
            expected_rows: IMAGE_SIDE,
            expected_cols: IMAGE_SIDE,
        });
    }
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            images_path,
            images: images.count,
            labels_path,
            labels: labels.len(),
        });
    }
    let num_classes = options.class_names.len();
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(DataError::LabelOutOfRange {
            path: labels_path,
            index,
            label,
            num_classes,
        });
    }
    Ok(ImageSet {
        rows: images.rows,
        cols: images.cols,
        pixels: images.pixels,
        labels,
    })
}
