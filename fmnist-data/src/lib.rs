//! Fashion-MNIST for candle: read IDX files, find or download them, split, normalize, batch.
//!
//! ```no_run
//! use fmnist_data::{DataArgs, Loader, Normalization, Normalizer};
//! # fn main() -> anyhow::Result<()> {
//! let data = DataArgs::default().load()?; // discovery, checksums, parsing
//! let split = fmnist_data::stratified_split(&data.train.labels, 10, 0.2, 42)?;
//! let train = data.train.select(&split.train);
//! let norm = Normalizer::fit(Normalization::Unit, &train);
//! for batch in Loader::new(&train, norm, 256, &candle::Device::Cpu).with_seed(42).epoch(0) {
//!     let batch = batch?; // images [256, 1, 28, 28] f32, labels [256] u32
//! }
//! # Ok(()) }
//! ```
#[cfg(feature = "clap")]
pub mod cli;
pub mod dataset;
pub mod error;
pub mod fs;
#[cfg(feature = "hub")]
pub mod hub;
pub mod idx;
pub mod loader;
pub mod source;
pub mod split;

#[cfg(feature = "clap")]
pub use cli::DataArgs;
pub use dataset::{FashionMnist, ImageSet, LoadOptions, Split, FASHION_MNIST_CLASSES, IMAGE_SIDE};
pub use error::{DataError, Result};
pub use fs::write_atomic;
pub use loader::{Augment, Batch, Batches, Loader, Normalization, Normalizer, ResidentSet};
pub use source::{Checksums, DataSource, IdxFile, Locator, Origin, Verify};
pub use split::{stratified_split, stratified_subset, TrainValSplit};
