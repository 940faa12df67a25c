//! Throughput measurement of one model: a fixed number of training steps after a warm-up,
//! then inference over the test set, with the process's peak memory.
use std::time::Instant;

use candle::Device;
use fmnist_data::{FashionMnist, Loader};
use fmnist_models::scoring::{logits, score};
use fmnist_models::{Kernels, ModelKind};
use serde::{Deserialize, Serialize};

use crate::config::{Preset, TrainConfig};
use crate::optim::Optimizer;
use crate::trainer::{optimizer_config, prepare, train_step};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: ModelKind,
    pub batch_size: usize,
    /// Steps run before the clock starts.
    pub warmup: usize,
    /// Steps timed.
    pub batches: usize,
    /// The CPU kernels measured.
    pub kernels: Kernels,
}

/// One measurement, as `cargo xtask bench` collects them (the PyTorch reference script
/// prints the same fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub implementation: String,
    pub model: String,
    pub threads: usize,
    pub batch_size: usize,
    pub batches: usize,
    pub train_images_per_s: f64,
    /// 48,000 images at the measured training rate.
    pub epoch_seconds: f64,
    pub infer_images_per_s: f64,
    /// Test accuracy after the steps: a check that the steps trained the model.
    pub test_accuracy: f64,
    pub data_load_seconds: f64,
    /// The process's peak resident memory (VmHWM), if the platform reports it.
    pub peak_rss_mb: Option<f64>,
    /// The folder the data was read from.
    pub data_dir: String,
    /// Where and from which commit it was measured.
    pub machine: String,
    pub commit: String,
}

/// Trains `config.model` (study recipe: Adam 1e-3) for `warmup + batches` steps, timing the last
/// `batches`, then scores the test set.
pub fn bench(
    config: &BenchConfig,
    data: &FashionMnist,
    data_load_seconds: f64,
    device: &Device,
) -> anyhow::Result<BenchResult> {
    let mut train_config = TrainConfig::preset(config.model, Preset::Study);
    train_config.batch_size = config.batch_size;
    train_config.model.kernels = config.kernels;
    let prepared = prepare(&train_config, data)?;
    let model = train_config.model.build(train_config.seed, device)?;
    let mut optimizer = Optimizer::new(optimizer_config(&train_config), model.trainable_vars())?;
    let loader = Loader::new(
        &prepared.train,
        prepared.normalizer,
        config.batch_size,
        device,
    );
    let needed = config.warmup + config.batches;
    let mut batches = (0u64..).flat_map(|epoch| loader.epoch(epoch)).take(needed);
    for batch in batches.by_ref().take(config.warmup) {
        train_step(&model, &mut optimizer, &batch?, 0.0)?;
    }
    let (mut images, mut timed) = (0usize, 0f64);
    for batch in batches {
        // Batch assembly is the loader's work and is timed too, as in a real epoch.
        let start = Instant::now();
        let batch = batch?;
        train_step(&model, &mut optimizer, &batch, 0.0)?;
        timed += start.elapsed().as_secs_f64();
        images += batch.len();
    }
    let start = Instant::now();
    let test_logits = logits(&model, &data.test, prepared.normalizer, device)?;
    let infer = start.elapsed().as_secs_f64();
    let test = score(&test_logits, &data.test.labels);
    let rate = images as f64 / timed.max(f64::MIN_POSITIVE);
    Ok(BenchResult {
        implementation: implementation_name(device, config.kernels),
        model: config.model.name().to_string(),
        threads: crate::device::cpu_threads(),
        batch_size: config.batch_size,
        batches: config.batches,
        train_images_per_s: rate,
        epoch_seconds: 48_000.0 / rate,
        infer_images_per_s: data.test.len() as f64 / infer,
        test_accuracy: test.accuracy,
        data_load_seconds,
        peak_rss_mb: peak_rss_mb(),
        data_dir: data.source.dir.display().to_string(),
        machine: crate::device::machine_description(),
        commit: crate::device::git_commit(),
    })
}

/// `candle-fused` or `candle-generic` on the CPU; `candle-cuda` or `candle-metal` on a GPU,
/// where the generic path always runs.
fn implementation_name(device: &Device, kernels: Kernels) -> String {
    match device {
        Device::Cpu => format!("candle-{}", kernels_name(kernels)),
        Device::Cuda(_) => "candle-cuda".into(),
        Device::Metal(_) => "candle-metal".into(),
    }
}

fn kernels_name(k: Kernels) -> &'static str {
    match k {
        Kernels::Fused => "fused",
        Kernels::Generic => "generic",
    }
}

/// The peak resident set size of this process in MiB (Linux: VmHWM of /proc/self/status).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
