//! Evaluating one run directory: its best checkpoint scored on the train, validation and test
//! parts, with the test predictions, the confusion matrix and calibration.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle::Device;
use fmnist_data::FashionMnist;
use fmnist_models::scoring::{argmax, score, softmax_rows};
use fmnist_models::{Classifier, Score};
use fmnist_train::{EpochRecord, RunConfig, RunDir, RunSummary};
use serde::{Deserialize, Serialize};

use crate::metrics::{calibration, Calibration, ConfusionMatrix, GroupMetrics};

/// Loss and accuracy on each part of the data: the train/val/test gap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub train: Score,
    pub val: Score,
    pub test: Score,
}

/// What the test set says of any classifier (a run, or an ensemble of runs): the gap, the
/// test probabilities and predictions, and the metrics computed from them.
pub struct Scores {
    pub class_names: Vec<String>,
    pub gap: Gap,
    /// Test-set probabilities, row-major `[10000 x classes]`.
    pub test_probs: Vec<f32>,
    pub test_predictions: Vec<usize>,
    pub test_labels: Vec<usize>,
    pub confusion: ConfusionMatrix,
    pub calibration: Calibration,
    pub groups: GroupMetrics,
}

impl Scores {
    /// The scores of test logits `[N x classes]` (or log-probabilities) against `labels`, with
    /// the train and validation scores measured beforehand.
    pub fn new(
        class_names: Vec<String>,
        train: Score,
        val: Score,
        test_logits: &[f32],
        labels: &[u8],
    ) -> Self {
        let k = class_names.len();
        let test = score(test_logits, labels);
        let test_probs = softmax_rows(test_logits, k);
        let test_predictions: Vec<usize> = test_logits.chunks_exact(k).map(argmax).collect();
        let test_labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        let confusion = ConfusionMatrix::new(k, &test_labels, &test_predictions);
        let calibration = calibration(&test_probs, k, &test_labels, 15);
        let groups = GroupMetrics::garments(&confusion);
        Scores {
            class_names,
            gap: Gap { train, val, test },
            test_probs,
            test_predictions,
            test_labels,
            confusion,
            calibration,
            groups,
        }
    }
}

/// Everything measured about one run.
pub struct Evaluation {
    /// The run's path relative to the results folder (e.g. `cnn`, `cnn-best/seed-43`).
    pub name: String,
    pub dir: PathBuf,
    pub config: RunConfig,
    pub summary: Option<RunSummary>,
    pub history: Vec<EpochRecord>,
    pub scores: Scores,
    pub classifier: Classifier,
}

/// Scores the run in `dir` on `data`.
pub fn evaluate_run(
    dir: &Path,
    name: &str,
    data: &FashionMnist,
    device: &Device,
) -> anyhow::Result<Evaluation> {
    evaluation(dir, name, data, device, false)
}

/// The evaluation of a run evaluated before from the same inputs
/// ([`crate::inputs::RunInputs`]): its train and validation scores read back from its
/// `metrics.json` (written with every digit), the test set scored again (the same logits, bit
/// for bit: the scores, confusion and calibration are those it wrote).
pub fn reload_run(
    dir: &Path,
    name: &str,
    data: &FashionMnist,
    device: &Device,
) -> anyhow::Result<Evaluation> {
    evaluation(dir, name, data, device, true)
}

/// The `gap` of a `metrics.json`.
#[derive(Deserialize)]
struct RecordedGap {
    gap: Gap,
}

fn evaluation(
    dir: &Path,
    name: &str,
    data: &FashionMnist,
    device: &Device,
    recorded_gap: bool,
) -> anyhow::Result<Evaluation> {
    let run = RunDir::new(dir);
    let classifier = Classifier::load(dir, device)?;
    let config = run.read_config()?;
    check_classes(dir, config.class_names.len(), data)?;
    let summary = run.read_summary().ok();
    let history = run.read_history().unwrap_or_default();
    let (train, val) = if recorded_gap {
        let metrics = dir.join(crate::files::METRICS);
        let RecordedGap { gap } = fmnist_train::run::read_json(&metrics)?;
        (gap.train, gap.val)
    } else {
        let prepared = fmnist_train::prepare(&config.train, data)
            .with_context(|| format!("{}: rebuilding the split", dir.display()))?;
        let train = score(&classifier.logits(&prepared.train)?, &prepared.train.labels);
        let val = score(&classifier.logits(&prepared.val)?, &prepared.val.labels);
        (train, val)
    };
    let test_logits = classifier.logits(&data.test)?;
    let scores = Scores::new(
        config.class_names.clone(),
        train,
        val,
        &test_logits,
        &data.test.labels,
    );
    Ok(Evaluation {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        config,
        summary,
        history,
        scores,
        classifier,
    })
}

/// An error unless a run trained on `classes` classes can be scored on `data`.
pub fn check_classes(dir: &Path, classes: usize, data: &FashionMnist) -> anyhow::Result<()> {
    if classes != data.num_classes() {
        bail!(
            "{}: the run was trained on {} classes, the data has {}",
            dir.display(),
            classes,
            data.num_classes()
        );
    }
    Ok(())
}
