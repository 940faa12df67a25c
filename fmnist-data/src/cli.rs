//! The command-line flags that say where the data is and how to read it, shared by every binary.
use std::path::PathBuf;

use crate::dataset::{FashionMnist, LoadOptions};
use crate::error::Result;
use crate::source::{Locator, Verify};

/// Where the data is and how it is checked (flattened into every fmnist command line).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// Folder holding the four IDX files, gzipped or raw. Without it: $FMNIST_DATA_DIR,
    /// then data/fashion-mnist/ in the workspace, then /usr/share/datasets/fashion-mnist/
    /// (apt-get install dataset-fashion-mnist), then a download into data/fashion-mnist/.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Check the files against Fashion-MNIST's SHA-256 sums; `none` for another IDX dataset
    /// (MNIST, KMNIST), whose classes are then named 0..9 unless --class-names says otherwise.
    #[arg(long, value_enum, default_value_t, global = true)]
    pub verify: Verify,
    /// Never download: fail if the data is not found locally.
    #[arg(long, global = true)]
    pub no_download: bool,
    /// Accept images of a size other than 28x28 (another IDX dataset).
    #[arg(long, global = true)]
    pub allow_any_shape: bool,
    /// Comma-separated class names in label order, for another IDX dataset.
    #[arg(long, value_delimiter = ',', value_name = "NAMES", global = true)]
    pub class_names: Option<Vec<String>>,
    /// Fetch Fashion-MNIST from the Hugging Face Hub (zalando-datasets/fashion_mnist, through
    /// candle-datasets; HF_ENDPOINT and HF_HOME are honoured) and write it as IDX files into the
    /// data folder (--data-dir, else $FMNIST_DATA_DIR, else data/fashion-mnist/) before loading.
    #[cfg(feature = "hub")]
    #[arg(long, global = true)]
    pub from_hub: bool,
}

impl DataArgs {
    /// The load options these flags describe.
    pub fn options(&self) -> LoadOptions {
        let mut options = LoadOptions {
            verify: self.verify,
            allow_any_shape: self.allow_any_shape,
            ..LoadOptions::default()
        };
        if let Some(names) = &self.class_names {
            options.class_names = names.clone();
        } else if self.verify == Verify::None {
            options.class_names = (0..10).map(|i| i.to_string()).collect();
        }
        options
    }

    /// Finds (or downloads), verifies and reads the dataset.
    pub fn load(&self) -> Result<FashionMnist> {
        let mut locator = Locator::from_env(self.data_dir.clone());
        locator.download = !self.no_download;
        #[cfg(feature = "hub")]
        if self.from_hub {
            let dir = (locator.flag_dir.clone())
                .or_else(|| locator.env_dir.clone())
                .unwrap_or_else(|| locator.workspace_dir.clone());
            eprintln!(
                "fetching {} from the Hugging Face Hub into {}",
                crate::hub::HUB_DATASET,
                dir.display()
            );
            crate::hub::fetch_from_hub(&dir)?;
        }
        let source = locator.locate()?;
        FashionMnist::load(source, &self.options())
    }
}
