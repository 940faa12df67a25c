//! Evaluating one run directory: its best checkpoint scored on the train, validation and test
//! parts, with the test predictions, the confusion matrix and calibration.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle::Device;
use fmnist_data::FashionMnist;
use fmnist_models::Model;
use fmnist_train::run::RunDir;
use fmnist_train::scoring::{argmax, logits, score};
use fmnist_train::{EpochRecord, RunConfig, RunSummary, Score};
use serde::Serialize;

use crate::metrics::{calibration, softmax_rows, Calibration, ConfusionMatrix};

/// Loss and accuracy on each part of the data: the train/val/test gap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gap {
    pub train: Score,
    pub val: Score,
    pub test: Score,
}

/// Everything measured about one run.
pub struct Evaluation {
    /// The run's path relative to the results folder (e.g. `cnn`, `cnn-best/seed-43`).
    pub name: String,
    pub dir: PathBuf,
    pub config: RunConfig,
    pub summary: Option<RunSummary>,
    pub history: Vec<EpochRecord>,
    pub gap: Gap,
    /// Test-set probabilities, row-major `[10000 x classes]`.
    pub test_probs: Vec<f32>,
    pub test_predictions: Vec<usize>,
    pub test_labels: Vec<usize>,
    pub confusion: ConfusionMatrix,
    pub calibration: Calibration,
    pub inference_images_per_second: f64,
    pub model: Model,
}

/// Loads the run in `dir` and its best checkpoint (`model.safetensors`), checking they fit.
pub fn load_run(dir: &Path, device: &Device) -> anyhow::Result<(RunConfig, Model)> {
    let run = RunDir::new(dir);
    if !run.config().exists() {
        bail!("{} is not a run directory (no config.json): train one with `cargo run --release -p fmnist-train -- --model cnn`", dir.display());
    }
    let config = run.read_config()?;
    let checkpoint = run.best_model();
    if !checkpoint.exists() {
        bail!(
            "{}: no checkpoint model.safetensors (the run never finished an epoch?)",
            dir.display()
        );
    }
    let mut model = Model::new(
        config.train.model,
        config.train.seed,
        config.train.init,
        device,
    )?;
    model.load(&checkpoint)?;
    Ok((config, model))
}

/// Scores the run in `dir` on `data`.
pub fn evaluate_run(
    dir: &Path,
    name: &str,
    data: &FashionMnist,
    device: &Device,
) -> anyhow::Result<Evaluation> {
    let (config, model) = load_run(dir, device)?;
    if config.class_names.len() != data.num_classes() {
        bail!(
            "{}: the run was trained on {} classes, the data has {}",
            dir.display(),
            config.class_names.len(),
            data.num_classes()
        );
    }
    let run = RunDir::new(dir);
    let summary = fmnist_train::run::read_json::<RunSummary>(&run.summary()).ok();
    let history = run.read_history().unwrap_or_default();
    let prepared = fmnist_train::prepare(&config.train, data)
        .with_context(|| format!("{}: rebuilding the split", dir.display()))?;
    let norm = config.normalizer;
    let tta = config.train.mirror_tta;
    let train = score(
        &logits(&model, &prepared.train, norm, tta, device)?,
        &prepared.train.labels,
    );
    let val = score(
        &logits(&model, &prepared.val, norm, tta, device)?,
        &prepared.val.labels,
    );
    let start = Instant::now();
    let test_logits = logits(&model, &data.test, norm, tta, device)?;
    let inference_images_per_second = data.test.len() as f64 / start.elapsed().as_secs_f64();
    let test = score(&test_logits, &data.test.labels);
    let k = data.num_classes();
    let test_probs = softmax_rows(&test_logits, k);
    let test_predictions: Vec<usize> = test_logits.chunks_exact(k).map(argmax).collect();
    let test_labels: Vec<usize> = data.test.labels.iter().map(|&l| l as usize).collect();
    let confusion = ConfusionMatrix::new(k, &test_labels, &test_predictions);
    let calibration = calibration(&test_probs, k, &test_labels, 15);
    Ok(Evaluation {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        config,
        summary,
        history,
        gap: Gap { train, val, test },
        test_probs,
        test_predictions,
        test_labels,
        confusion,
        calibration,
        inference_images_per_second,
        model,
    })
}

/// Every run directory under `root` (a folder with `config.json` and `model.safetensors`),
/// with its name relative to `root`, sorted by name.
pub fn find_runs(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
        if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
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
