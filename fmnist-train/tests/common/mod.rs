//! What the training tests share: the installed data set and a run's history.
use std::path::Path;

use fmnist_data::{DataArgs, FashionMnist};
use fmnist_train::{EpochRecord, RunDir};

/// The canonical data, or `None` (with a message) where it is missing outside CI; with `CI`
/// set a missing data set fails the test.
pub fn installed_data() -> Option<FashionMnist> {
    let args = DataArgs {
        no_download: true,
        ..DataArgs::default()
    };
    match args.load() {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: Fashion-MNIST not installed ({e})");
            None
        }
        Err(e) => panic!("CI is set but Fashion-MNIST is missing: {e}"),
    }
}

/// The history of the run in `dir` without the wall-clock column.
pub fn history(dir: &Path) -> Vec<EpochRecord> {
    RunDir::new(dir)
        .read_history()
        .unwrap()
        .into_iter()
        .map(|r| EpochRecord { seconds: 0.0, ..r })
        .collect()
}
