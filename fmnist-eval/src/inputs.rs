//! What an evaluation was computed from, recorded beside what it wrote (`evaluated.json`, in
//! each run folder and in the results folder). An evaluation depends only on a run's files,
//! the data and the evaluation's own code, so a run whose record matches is not evaluated
//! again, and a results folder whose record matches is not written again: evaluating
//! unchanged runs changes no file.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use fmnist_data::source::sha256_hex;
use fmnist_train::run::{read_json, write_json};
use fmnist_train::RunDir;
use serde::{Deserialize, Serialize};

/// The version of what an evaluation writes: raised by every change to the evaluation that
/// changes a file it writes (a metric, a table, a plot), so that the next evaluation redoes
/// every run.
pub const EVALUATION_VERSION: u32 = 6;

/// The version of the files across runs (summary.csv, REPORT.md, their plots), raised by a
/// change to them alone: the next evaluation writes them again and keeps every run's files.
pub const REPORT_VERSION: u32 = 7;

/// The record's file name, in a run folder and in the results folder.
pub const EVALUATED: &str = "evaluated.json";

/// The run files an evaluation reads.
const RUN_FILES: [&str; 4] = [
    fmnist_runs::CONFIG,
    fmnist_runs::WEIGHTS,
    fmnist_runs::HISTORY,
    fmnist_runs::SUMMARY,
];

/// What one run's evaluation was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInputs {
    pub evaluation_version: u32,
    /// [`fmnist_data::FashionMnist::sha256`] of the data it was scored on.
    pub data_sha256: String,
    /// SHA-256 of each file of the run it read (absent files are left out).
    pub files: BTreeMap<String, String>,
    /// Whether its plots were drawn.
    pub plots: bool,
}

impl RunInputs {
    /// The inputs of evaluating the run in `dir` on the data of hash `data_sha256`.
    pub fn of(dir: &Path, data_sha256: &str, plots: bool) -> anyhow::Result<Self> {
        let mut files = BTreeMap::new();
        for name in RUN_FILES {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    files.insert(name.to_string(), sha256_hex(&bytes));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        Ok(RunInputs {
            evaluation_version: EVALUATION_VERSION,
            data_sha256: data_sha256.to_string(),
            files,
            plots,
        })
    }

    /// Whether an evaluation from `self` (recorded) stands for one from `wanted`: the same
    /// files, data and version, with plots if `wanted` asks for them.
    pub fn covers(&self, wanted: &RunInputs) -> bool {
        self.evaluation_version == wanted.evaluation_version
            && self.data_sha256 == wanted.data_sha256
            && self.files == wanted.files
            && (self.plots || !wanted.plots)
    }

    /// The record in run folder `dir`, if there is a readable one.
    pub fn recorded(dir: &Path) -> Option<Self> {
        read_json(&dir.join(EVALUATED)).ok()
    }

    /// Writes the record into the run folder `dir`.
    pub fn record(&self, dir: &Path) -> anyhow::Result<()> {
        write_json(&dir.join(EVALUATED), self)
    }

    /// Whether the run in `dir` was evaluated from these inputs, with its metrics in place.
    pub fn evaluated_in(&self, dir: &Path) -> bool {
        dir.join(crate::files::METRICS).is_file()
            && Self::recorded(dir).is_some_and(|r| r.covers(self))
    }
}

/// What the files of the results folder (summary.csv, REPORT.md, the plots across runs) were
/// computed from: every run's inputs and every ensemble's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultsInputs {
    /// [`REPORT_VERSION`] (0 in records older than it).
    #[serde(default)]
    pub report_version: u32,
    pub runs: BTreeMap<String, RunInputs>,
    /// SHA-256 of each ensemble's `ensemble.json` and `metrics.json`, by folder name.
    pub ensembles: BTreeMap<String, String>,
}

impl ResultsInputs {
    /// The inputs of the results folder `root` holding `runs` (name, inputs).
    pub fn of(root: &Path, runs: &[(String, RunInputs)]) -> anyhow::Result<Self> {
        let mut ensembles = BTreeMap::new();
        for entry in
            std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?
        {
            let dir = entry?.path();
            let record = dir.join(crate::files::ENSEMBLE);
            if !record.is_file() || RunDir::new(&dir).is_run() {
                continue;
            }
            let mut bytes = std::fs::read(&record)?;
            bytes.extend(std::fs::read(dir.join(crate::files::METRICS)).unwrap_or_default());
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            ensembles.insert(name.into_owned(), sha256_hex(&bytes));
        }
        Ok(ResultsInputs {
            report_version: REPORT_VERSION,
            runs: runs.iter().cloned().collect(),
            ensembles,
        })
    }

    /// Whether the results folder `root` was written from these inputs (or from the same with
    /// plots where these have none), with its summary and report in place.
    pub fn written_in(&self, root: &Path) -> bool {
        let Ok(recorded) = read_json::<ResultsInputs>(&root.join(EVALUATED)) else {
            return false;
        };
        root.join(crate::files::SUMMARY_CSV).is_file()
            && root.join(crate::files::REPORT).is_file()
            && recorded.report_version == self.report_version
            && recorded.ensembles == self.ensembles
            && recorded.runs.len() == self.runs.len()
            && (recorded.runs.iter().zip(&self.runs)).all(|((a, r), (b, w))| a == b && r.covers(w))
    }

    pub fn record(&self, root: &Path) -> anyhow::Result<()> {
        write_json(&root.join(EVALUATED), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), [1u8, 2, 3]).unwrap();
        dir
    }

    #[test]
    fn a_record_covers_the_same_inputs_and_fewer_plots_only() {
        let dir = run_folder();
        let with_plots = RunInputs::of(dir.path(), "data", true).unwrap();
        assert_eq!(
            with_plots.files.keys().collect::<Vec<_>>(),
            ["config.json", "model.safetensors"]
        );
        assert_eq!(
            with_plots.files["model.safetensors"],
            sha256_hex(&[1u8, 2, 3])
        );
        let without = RunInputs::of(dir.path(), "data", false).unwrap();
        assert!(with_plots.covers(&without));
        assert!(!without.covers(&with_plots));
        assert!(!with_plots.covers(&RunInputs::of(dir.path(), "other data", true).unwrap()));
        let older = RunInputs {
            evaluation_version: EVALUATION_VERSION - 1,
            ..with_plots.clone()
        };
        assert!(!older.covers(&with_plots));
        // New weights: another key.
        std::fs::write(dir.path().join("model.safetensors"), [1u8, 2, 4]).unwrap();
        assert!(!with_plots.covers(&RunInputs::of(dir.path(), "data", true).unwrap()));
    }

    #[test]
    fn a_run_counts_as_evaluated_only_with_its_record_and_metrics() {
        let dir = run_folder();
        let inputs = RunInputs::of(dir.path(), "data", true).unwrap();
        assert!(!inputs.evaluated_in(dir.path()));
        inputs.record(dir.path()).unwrap();
        assert!(!inputs.evaluated_in(dir.path()), "no metrics.json yet");
        std::fs::write(dir.path().join(crate::files::METRICS), "{}").unwrap();
        assert!(inputs.evaluated_in(dir.path()));
        std::fs::write(dir.path().join(EVALUATED), "not json").unwrap();
        assert!(!inputs.evaluated_in(dir.path()));
    }
}
