//! The layout of a run folder, in one place for the checkpoint, training, evaluation and xtask.
//!
//! A run is a folder holding its checkpoint ([`CONFIG`] and [`WEIGHTS`], the best epoch on
//! validation) and what training keeps beside it; the runs of several seeds of one recipe sit
//! in `seed-N` folders of a common folder ([`seed_folder`]). A run is finished once it has a
//! [`SUMMARY`]. This crate names the files (fmnist-train writes and reads them) and reads one
//! figure, a finished run's test accuracy, for programs that link nothing else of fmnist.
use std::path::{Path, PathBuf};

/// The run's configuration (the model's, training's, and provenance).
pub const CONFIG: &str = "config.json";
/// The weights of the best epoch on validation.
pub const WEIGHTS: &str = "model.safetensors";
/// The weights of the last completed epoch (what a resumed run continues from).
pub const LAST_WEIGHTS: &str = "last.safetensors";
/// The optimizer's state after the last completed epoch.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// The loop's state after the last completed epoch (epoch, schedule, generators).
pub const STATE: &str = "state.json";
/// One row per epoch: losses, accuracies, learning rate, time.
pub const HISTORY: &str = "history.csv";
/// Written when the run ends: its best epoch and scores.
pub const SUMMARY: &str = "summary.json";

/// How the folder of each seed of a multi-seed run is named: `seed-42`.
const SEED_PREFIX: &str = "seed-";

/// The folder of seed `seed` in `group`: `group/seed-N`.
pub fn seed_folder(group: &Path, seed: u64) -> PathBuf {
    group.join(seed_name(seed))
}

/// The name of seed `seed`'s folder: `seed-N`.
pub fn seed_name(seed: u64) -> String {
    format!("{SEED_PREFIX}{seed}")
}

/// The seed of a folder named `seed-N`.
pub fn seed_of(name: &str) -> Option<u64> {
    name.strip_prefix(SEED_PREFIX)?.parse().ok()
}

/// Whether the run in `dir` has finished (it has its summary).
pub fn is_finished(dir: &Path) -> bool {
    dir.join(SUMMARY).is_file()
}

/// The test accuracy (a fraction) of the finished run in `dir`, from its summary; `None` for
/// a run without one or a summary that does not hold it.
pub fn test_accuracy(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(SUMMARY)).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["test"]["accuracy"].as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_folders_are_named_and_read_back() {
        assert_eq!(
            seed_folder(Path::new("results/cnn"), 43),
            Path::new("results/cnn/seed-43")
        );
        assert_eq!(seed_of("seed-43"), Some(43));
        assert_eq!(seed_of("seed-x"), None);
        assert_eq!(seed_of("cnn"), None);
    }

    #[test]
    fn the_test_accuracy_comes_from_a_finished_runs_summary() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_finished(dir.path()));
        assert_eq!(test_accuracy(dir.path()), None);
        std::fs::write(
            dir.path().join(SUMMARY),
            r#"{"test": {"loss": 0.3, "accuracy": 0.8864}}"#,
        )
        .unwrap();
        assert!(is_finished(dir.path()));
        assert_eq!(test_accuracy(dir.path()), Some(0.8864));
        std::fs::write(dir.path().join(SUMMARY), "{}").unwrap();
        assert_eq!(test_accuracy(dir.path()), None);
    }
}
