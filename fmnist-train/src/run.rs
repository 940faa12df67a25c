//! A run folder's files (named by [`fmnist_runs`]) and the records they hold: configuration,
//! loop state, history, summary; finding the runs under a folder and the best of them.
use std::path::{Path, PathBuf};

use anyhow::Context;
use fmnist_data::{write_atomic, Normalizer};
use fmnist_models::{Checkpoint, Score};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::schedule::Plateau;

/// The resolved configuration of a run and everything needed to rebuild and feed its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub train: TrainConfig,
    pub normalizer: Normalizer,
    pub class_names: Vec<String>,
    pub param_count: usize,
    /// The CPU threads or the device the run used (bit-for-bit repeatability depends on them).
    pub device: String,
    pub threads: usize,
    pub fmnist_version: String,
    /// The commit the training binary was built from (absent in runs of older binaries).
    #[serde(default)]
    pub commit: Option<String>,
}

/// Where training stands after a completed epoch (what `--resume` continues from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub epochs_done: usize,
    pub steps: u64,
    pub best_epoch: usize,
    pub best_val: Option<Score>,
    pub epochs_since_best: usize,
    pub plateau: Plateau,
    pub train_seconds: f64,
}

/// One row of `history.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// The outcome of a finished run (`summary.json`): the best epoch on validation, and the test
/// set scored once with that checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub model: fmnist_models::ModelKind,
    pub seed: u64,
    pub param_count: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub val: Score,
    pub test: Score,
    pub train_seconds: f64,
    pub train_images_per_second: f64,
}

/// Where a run folder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// No run there yet.
    New,
    /// Interrupted after a completed epoch: `--resume` continues it.
    Resumable,
    /// Trained and scored on the test set.
    Finished,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::New => "new",
            RunStatus::Resumable => "resumable",
            RunStatus::Finished => "finished",
        })
    }
}

/// The files of a run folder: the checkpoint ([`Checkpoint`]: `config.json` and
/// `model.safetensors`, the best epoch on validation) and what training keeps beside it.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// The folder of seed `seed` of a multi-seed run in `group`: `group/seed-N`.
    pub fn seed(group: &Path, seed: u64) -> Self {
        RunDir::new(fmnist_runs::seed_folder(group, seed))
    }

    /// The seed of a run folder named `seed-N`.
    pub fn seed_of(name: &str) -> Option<u64> {
        fmnist_runs::seed_of(name)
    }

    /// The run's checkpoint (what evaluation and predict load).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::new(&self.root)
    }
    pub fn config(&self) -> PathBuf {
        self.checkpoint().config_path()
    }
    /// The checkpoint with the best validation accuracy.
    pub fn best_model(&self) -> PathBuf {
        self.checkpoint().weights_path()
    }
    /// The checkpoint of the last completed epoch (what `--resume` continues from).
    pub fn last_model(&self) -> PathBuf {
        self.root.join(fmnist_runs::LAST_WEIGHTS)
    }
    pub fn optimizer(&self) -> PathBuf {
        self.root.join(fmnist_runs::OPTIMIZER)
    }
    pub fn state(&self) -> PathBuf {
        self.root.join(fmnist_runs::STATE)
    }
    pub fn history(&self) -> PathBuf {
        self.root.join(fmnist_runs::HISTORY)
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join(fmnist_runs::SUMMARY)
    }

    /// Finished (a summary), resumable (a state after a completed epoch) or new.
    pub fn status(&self) -> RunStatus {
        if fmnist_runs::is_finished(&self.root) {
            RunStatus::Finished
        } else if self.state().is_file() {
            RunStatus::Resumable
        } else {
            RunStatus::New
        }
    }

    /// Whether the folder holds a run to evaluate (a checkpoint with weights).
    pub fn is_run(&self) -> bool {
        self.checkpoint().exists()
    }

    pub fn read_config(&self) -> anyhow::Result<RunConfig> {
        read_json(&self.config())
    }

    /// The summary of a finished run.
    pub fn read_summary(&self) -> anyhow::Result<RunSummary> {
        read_json(&self.summary())
    }

    pub fn read_history(&self) -> anyhow::Result<Vec<EpochRecord>> {
        let path = self.history();
        let mut reader =
            csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
        reader
            .deserialize()
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: not a history file", path.display()))
    }

    pub fn write_history(&self, history: &[EpochRecord]) -> anyhow::Result<()> {
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in history {
            w.serialize(r)?;
        }
        Ok(write_atomic(&self.history(), &w.into_inner()?)?)
    }
}

/// Every run folder under `root` (one with a checkpoint), with its path relative to `root`
/// (`cnn`, `cnn/seed-43`), sorted by that name.
pub fn find_runs(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
        if RunDir::new(dir).is_run() {
            let name = dir
                .strip_prefix(root)
                .unwrap_or(dir)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((name, dir.to_path_buf()));
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, root, out)?;
            }
        }
        Ok(())
    }
    let mut runs = Vec::new();
    walk(root, root, &mut runs).with_context(|| format!("reading {}", root.display()))?;
    runs.sort();
    Ok(runs)
}

/// The finished run under `results` with the best validation accuracy (from its summary.json),
/// the first in path order among equals. The test set plays no part in the choice.
pub fn best_run(results: &Path) -> anyhow::Result<PathBuf> {
    let runs = if results.is_dir() {
        find_runs(results)?
    } else {
        Vec::new()
    };
    runs.into_iter()
        .filter_map(|(_, dir)| {
            let s = RunDir::new(&dir).read_summary().ok()?;
            Some((s.val.accuracy, dir))
        })
        .reduce(|best, next| if next.0 > best.0 { next } else { best })
        .map(|(_, dir)| dir)
        .with_context(|| format!("no finished run under {} to classify with: train one (`cargo xtask train-all`) or pass --run DIR", results.display()))
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Reads a JSON file, naming it in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: unexpected content", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fmnist_models::Score;

    /// A finished run as `best_run` sees it: checkpoint files and a summary.
    fn fake_run(dir: &std::path::Path, val: f64, test: f64) {
        let run = RunDir::new(dir);
        let checkpoint = run.checkpoint();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(checkpoint.config_path(), "{}").unwrap();
        std::fs::write(checkpoint.weights_path(), "").unwrap();
        let summary = RunSummary {
            model: fmnist_models::ModelKind::Mlp,
            seed: 1,
            param_count: 1,
            epochs_run: 1,
            best_epoch: 1,
            stopped_early: false,
            val: Score {
                loss: 0.5,
                accuracy: val,
            },
            test: Score {
                loss: 0.5,
                accuracy: test,
            },
            train_seconds: 1.0,
            train_images_per_second: 1.0,
        };
        write_json(&run.summary(), &summary).unwrap();
    }

    #[test]
    fn the_default_run_is_chosen_on_validation_never_on_test() {
        let results = tempfile::tempdir().unwrap();
        fake_run(&results.path().join("a"), 0.91, 0.95);
        fake_run(&results.path().join("b/seed-1"), 0.93, 0.90);
        fake_run(&results.path().join("c"), 0.93, 0.99);
        // A run without a summary (one stopped before its end) is passed over.
        fake_run(&results.path().join("d"), 0.99, 0.99);
        std::fs::remove_file(RunDir::new(results.path().join("d")).summary()).unwrap();
        assert_eq!(
            best_run(results.path()).unwrap(),
            results.path().join("b/seed-1")
        );
        let empty = tempfile::tempdir().unwrap();
        let message = best_run(empty.path()).unwrap_err().to_string();
        assert!(message.starts_with("no finished run under "), "{message}");
        // The run layout reads the test accuracy where the summary writes it.
        assert_eq!(
            fmnist_runs::test_accuracy(&results.path().join("c")),
            Some(0.99)
        );
    }
}
