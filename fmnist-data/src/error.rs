//! The typed errors of the data layer: every one names the file and what is wrong with it.
use std::path::PathBuf;

/// Everything that can go wrong while finding, downloading or reading the data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: file not found (looked for it with and without .gz)", path.display())]
    Missing { path: PathBuf },
    #[error("{}: corrupt gzip stream: {source}", path.display())]
    Gzip {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: wrong magic number {found:#010x}, expected {expected:#010x} ({what})", path.display())]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
        what: &'static str,
    },
    #[error("{}: truncated: the header promises {expected} bytes, the file has {found}", path.display())]
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("{}: images are {rows}x{cols}, expected {expected_rows}x{expected_cols} (allow other shapes explicitly for another IDX dataset)", path.display())]
    Dimensions {
        path: PathBuf,
        rows: usize,
        cols: usize,
        expected_rows: usize,
        expected_cols: usize,
    },
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },
    #[error("{}: label {label} at index {index} is out of range (expected 0..{num_classes})", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u8,
        num_classes: usize,
    },
    #[error("{}: SHA-256 mismatch (of the decompressed bytes): expected {expected}, got {found}. The file is corrupt or is not Fashion-MNIST: delete it and run again to re-download, or pass `--verify none` for another IDX dataset", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("downloading {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("Fashion-MNIST was not found (looked in: {}) and could not be downloaded: {reason}.\nProvide it in one of these ways:\n  1. point to a folder holding the four IDX files: --data-dir DIR or FMNIST_DATA_DIR=DIR\n  2. install the Debian/Ubuntu package: apt-get install dataset-fashion-mnist (files land in /usr/share/datasets/fashion-mnist)\n  3. run again with network access to download it into {}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), download_dir.display())]
    NotFound {
        tried: Vec<PathBuf>,
        download_dir: PathBuf,
        reason: String,
    },
    #[cfg(feature = "hub")]
    #[error(
        "fetching {dataset} from the Hugging Face Hub at {endpoint} (candle-datasets): {reason}"
    )]
    Hub {
        dataset: &'static str,
        endpoint: String,
        reason: String,
    },
    #[error("invalid split: {0}")]
    Split(String),
    #[error(transparent)]
    Candle(#[from] candle::Error),
}

/// Result alias of the data layer.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
